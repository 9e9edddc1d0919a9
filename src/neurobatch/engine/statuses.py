"""The status of every stage of every item of a run, written as it changes, and each run's
record, kept.

Each stage of each item the run processes is

* ``waiting`` until its item enters it (or for good, when an earlier stage errored);
* ``started`` once its item reports entering it (:func:`neurobatch.engine.progress.report`);
* ``done`` or ``skipped`` (committed earlier with the same key) once its item reports
  leaving it, ``errored`` when its item failed in it; when the item finishes, its host,
  worker, start, duration and one-line reason are those of its outcome (its spans);
* ``abandoned`` when its item was still in it after ``engine.item_timeout_s``.

:class:`TaskStatuses` is the driver's recorder. While the run goes on it writes the table
to ``OUT/runs/<run>/tasks.parquet`` when it changed, at most once every
:data:`WRITE_EVERY_S` seconds (less often when a write takes long), and once more at the
end; beside it ``OUT/runs/<run>/run.json`` holds what ``OUT/run.json`` holds, plus the
command, the host and process, the start and end (UTC) and the state:
``running``, ``finished`` or ``interrupted``. Both are written whole (a reader sees the old
file or the new one, on local disk and object stores alike). :func:`read_runs`,
:func:`read_tasks` and :func:`live_run` read them back for ``neurobatch status`` and
``neurobatch history``; a run still ``running`` whose process no longer holds the output
folder's lock (:mod:`neurobatch.io.lock`) was killed.
"""

from __future__ import annotations

import io
import json
import logging
import os
import platform
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

import fsspec
import pandas as pd

from neurobatch import __version__
from neurobatch.engine.item import ItemOutcome
from neurobatch.engine.layout import OutputLayout
from neurobatch.engine.logs import one_line
from neurobatch.engine.progress import listening
from neurobatch.errors import InputNotFoundError
from neurobatch.io import files
from neurobatch.io.lock import live_holder

logger = logging.getLogger(__name__)

__all__ = [
    "COLUMNS",
    "STATUSES",
    "WRITE_EVERY_S",
    "TaskStatuses",
    "live_run",
    "read_record",
    "read_runs",
    "read_tasks",
]

#: The statuses of a stage of an item, in the order of a run.
STATUSES = ("waiting", "started", "done", "skipped", "errored", "abandoned")

#: The columns of a run's table: ``start`` in epoch seconds, ``seconds`` its duration.
COLUMNS = ("item_id", "stage", "status", "host", "worker", "start", "seconds", "reason")

#: The least time between two writes of a run's table while it goes on.
WRITE_EVERY_S = 1.0

#: The reason of a skipped stage.
_SKIPPED = "committed earlier with the same key"

#: One stage of one item: its :data:`COLUMNS` after the item and the stage (status, host,
#: worker, start, seconds, reason).
_Row = list[Any]


def _utc(seconds: float | None) -> str | None:
    return (
        None if seconds is None else datetime.fromtimestamp(seconds, UTC).isoformat("T", "seconds")
    )


def _stopped(error: BaseException) -> str:
    """Why a run stopped, in one line."""
    if isinstance(error, SystemExit):  # neurobatch.cli: a signal's exit status is 128 + it
        code = error.code if isinstance(error.code, int) else 1
        if code - 128 in set(signal.Signals):
            return f"stopped by {signal.Signals(code - 128).name}"
        return f"exited with status {code}"
    if isinstance(error, KeyboardInterrupt):
        return "interrupted (KeyboardInterrupt: Ctrl-C or SIGINT)"
    return one_line(error)


def _outcome_rows(outcome: ItemOutcome, rows: Mapping[str, _Row]) -> dict[str, _Row]:
    """The rows of one item's stages once it has finished, from its outcome (``rows``: its
    rows so far, by stage, in the pipeline's order)."""
    host = outcome.host.get("host")
    spans = {span["stage"]: span for span in outcome.spans}
    new: dict[str, _Row] = {}
    for stage, row in rows.items():
        span = spans.get(stage)
        if span is not None:
            end = span.get("end")
            status = (
                "abandoned"
                if span.get("abandoned")
                else "done"
                if span["status"] == "done"
                else "errored"
            )
            seconds = None if end is None else end - span["start"]
            reason = None if status == "done" else outcome.error
            new[stage] = [status, host, span.get("worker"), span["start"], seconds, reason]
        elif stage in outcome.stages_skipped:  # its check's time, as reported
            new[stage] = ["skipped", host, outcome.worker, row[3], row[4], _SKIPPED]
        elif stage in outcome.stages_run:  # committed earlier in this run, by a lost worker
            new[stage] = [
                "done",
                host,
                outcome.worker,
                row[3],
                None,
                "committed earlier in this run",
            ]
        else:
            new[stage] = list(row)
    if outcome.status != "failed":
        return new
    failed = [s for s, row in new.items() if row[0] in ("errored", "abandoned")]
    if not failed:  # outside a stage's run (its check, the task's death, a refused rate)
        first = next((s for s, row in new.items() if row[0] in ("waiting", "started")), None)
        first = next(iter(new)) if first is None else first
        row = new[first]
        new[first] = ["errored", host, row[2] or outcome.worker, row[3], None, outcome.error]
        failed = [first]
    for stage, row in new.items():
        if row[0] in ("waiting", "started"):
            new[stage] = [
                "waiting",
                None,
                None,
                None,
                None,
                f"not run: {failed[0]} {new[failed[0]][0]}",
            ]
    return new


class TaskStatuses:
    """The driver's record of the status of each stage of each item of one run.

    Use it as a context manager around the run: it writes the run's record (``running``)
    and table on entering, listens to the reports of the items that run in the driver's
    process, writes the table while it changes (from a thread of its own), and on leaving
    writes both for the last time: ``finished``, or ``interrupted`` with the reason when
    the block raised.

    Parameters
    ----------
    layout : neurobatch.engine.layout.OutputLayout
        The output folder.
    run_id : str
        The run.
    items : sequence of str
        The items the run processes, in manifest order (not those it leaves alone).
    stages : sequence of str
        The pipeline's stages, in order.
    name : str
        The pipeline's name.
    command : str
        The command line, secrets masked.
    scrub : callable, optional
        Masks secrets in the text of the run's record.
    every_s : float, default WRITE_EVERY_S
        The least time between two writes of the table.

    Examples
    --------
    >>> import tempfile
    >>> from neurobatch.engine.item import ItemOutcome
    >>> layout = OutputLayout(tempfile.mkdtemp())
    >>> with TaskStatuses(layout, "1a", items=["a", "b"], stages=["ingest", "trials"],
    ...                   name="doc", command="neurobatch run doc.yaml") as statuses:
    ...     statuses.reported({"run": "1a", "item": "a", "stage": "ingest", "worker": "w1",
    ...                        "host": "lab", "time": 100.0, "status": "started"})
    ...     print(statuses.table()[["item_id", "stage", "status"]].to_string(index=False))
    ...     statuses.finished(ItemOutcome("a", "a.csv", status="skipped",
    ...                                   stages_skipped=["ingest", "trials"]))
    item_id  stage  status
          a ingest started
          a trials waiting
          b ingest waiting
          b trials waiting
    >>> read_tasks(layout, "1a")["status"].tolist()
    ['skipped', 'skipped', 'waiting', 'waiting']
    >>> read_record(layout, "1a")["state"], read_record(layout, "1a")["counts"]["skipped"]
    ('finished', 1)
    """

    def __init__(
        self,
        layout: OutputLayout,
        run_id: str,
        *,
        items: Sequence[str],
        stages: Sequence[str],
        name: str,
        command: str,
        scrub: Callable[[str], str] = str,
        every_s: float = WRITE_EVERY_S,
    ) -> None:
        self.layout, self.run_id, self.every_s = layout, run_id, every_s
        self.stages = list(stages)
        self.scrub = scrub
        self._rows: dict[str, dict[str, _Row]] = {
            item: {stage: ["waiting", None, None, None, None, None] for stage in self.stages}
            for item in items
        }
        self._record: dict[str, Any] = {
            "name": name,
            "neurobatch": __version__,
            "run": run_id,
            "n_items": len(self._rows),
        }
        self._facts: dict[str, Any] = {
            "command": command,
            "host": platform.node(),
            "pid": os.getpid(),
            "stages": self.stages,
            "started": _utc(time.time()),
        }
        self._start = time.time()
        self._lock = threading.Lock()
        self._dirty = False
        self._stop = threading.Event()
        self._writer: threading.Thread | None = None
        self._listening = listening(run_id, self.reported)

    def __enter__(self) -> Self:
        self._write_table()  # first: a record says running only beside its table
        self._write_record("running", None)
        self._listening.__enter__()
        self._writer = threading.Thread(
            target=self._write_while_running, name="neurobatch-statuses", daemon=True
        )
        self._writer.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._listening.__exit__(None, None, None)
        self._stop.set()
        if self._writer is not None:
            self._writer.join()
        try:  # the run's own error is the one to report
            self._write_table()
            self._write_record("finished" if exc is None else "interrupted", exc)
        except Exception as failure:  # noqa: BLE001 - the run's outputs are in place anyway
            logger.error("could not write the statuses of run %s: %s", self.run_id, failure)

    def reported(self, message: Mapping[str, Any]) -> None:
        """An item's report that it entered a stage, or is done with it
        (:func:`neurobatch.engine.progress.report`).

        Reports of other runs, and of a stage whose item has finished, are ignored.
        """
        if message.get("run") != self.run_id:
            return
        with self._lock:
            row = self._rows.get(message["item"], {}).get(message["stage"])
            if row is None or row[0] not in ("waiting", "started"):
                return
            status, at = message.get("status", "started"), message["time"]
            if status == "started":
                row[:] = [status, message.get("host"), message["worker"], at, None, None]
            else:
                row[:2] = [status, message.get("host")]
                row[4] = None if row[3] is None else at - row[3]
                row[5] = _SKIPPED if status == "skipped" else None
            self._dirty = True

    def finished(self, outcome: ItemOutcome) -> None:
        """An item's outcome: its stages done, skipped, errored or abandoned."""
        with self._lock:
            rows = self._rows.get(outcome.item_id)
            if rows is None:
                return
            rows.update(_outcome_rows(outcome, rows))
            self._dirty = True

    def ended(self, outcomes: Sequence[ItemOutcome], run: Mapping[str, Any]) -> None:
        """The run's final outcomes (a few may have failed since they finished: refused
        rates) and what ``OUT/run.json`` holds."""
        for outcome in outcomes:
            self.finished(outcome)
        self._record = dict(run)

    def table(self) -> pd.DataFrame:
        """The table now: one row per item and stage (:data:`COLUMNS`)."""
        with self._lock:
            rows = [
                (item, stage, *row)
                for item, stages in self._rows.items()
                for stage, row in stages.items()
            ]
            self._dirty = False
        table = pd.DataFrame(rows, columns=list(COLUMNS))
        return table.astype({"start": "float64", "seconds": "float64"})

    def _write_table(self) -> None:
        buffer = io.BytesIO()
        self.table().to_parquet(buffer, index=False)
        files.write_bytes(
            self.layout.run_tasks(self.run_id),
            buffer.getvalue(),
            storage_options=self.layout.storage_options,
        )

    def _write_while_running(self) -> None:
        """Write the table when it changed, every ``every_s`` or, for a table that takes
        long to write (tens of thousands of rows), 20 times as long as it took: at most 5 %
        of the driver's time."""
        wait_s = self.every_s
        while not self._stop.wait(wait_s):
            if not self._dirty:
                continue
            start = time.perf_counter()
            try:
                self._write_table()
            except Exception as failure:  # noqa: BLE001 - a live view never stops a run
                logger.warning("could not write the statuses of run %s: %s", self.run_id, failure)
            wait_s = max(self.every_s, 20 * (time.perf_counter() - start))

    def _write_record(self, state: str, error: BaseException | None) -> None:
        now = time.time()
        with self._lock:
            counts = _counts(
                [[row[0] for row in stages.values()] for stages in self._rows.values()]
            )
        record = {
            **self._record,
            **self._facts,
            "ended": None if state == "running" else _utc(now),
            "seconds": None if state == "running" else round(now - self._start, 3),
            "state": state,
            "reason": None if error is None else _stopped(error),
            "counts": counts,
        }
        text = self.scrub(json.dumps(record, indent=2, default=str))
        files.write_text(
            self.layout.past_run(self.run_id), text, storage_options=self.layout.storage_options
        )


def _counts(items: Sequence[Sequence[str]]) -> dict[str, int]:
    """How many items (each given by its stages' statuses) are abandoned, failed (a stage
    errored), done (a stage ran), skipped (every stage) or unfinished."""
    counts = dict.fromkeys(("done", "skipped", "failed", "abandoned", "unfinished"), 0)
    for statuses in items:
        if "abandoned" in statuses:
            counts["abandoned"] += 1
        elif "errored" in statuses:
            counts["failed"] += 1
        elif statuses and all(s == "skipped" for s in statuses):
            counts["skipped"] += 1
        elif statuses and all(s in ("done", "skipped") for s in statuses):
            counts["done"] += 1
        else:
            counts["unfinished"] += 1
    return counts


# --- reading ----------------------------------------------------------------------------------


def _read(url: str, storage_options: Mapping[str, Any]) -> bytes | None:
    """A file's bytes, None when it does not exist (transient errors retried)."""
    fs, path = fsspec.core.url_to_fs(url, **dict(storage_options))
    try:
        with files.translated(url, action="reading"):
            return bytes(files.retried(lambda: fs.cat_file(path), url=url, action="reading"))
    except FileNotFoundError:
        return None


def _run_ids(layout: OutputLayout) -> list[str]:
    """The ids of the runs recorded under ``OUT/runs``, newest first."""
    url = layout.runs()
    fs, path = fsspec.core.url_to_fs(url, **dict(layout.storage_options))
    try:
        with files.translated(url, action="listing"):
            found = files.retried(lambda: fs.ls(path, detail=False), url=url, action="listing")
    except FileNotFoundError:
        return []
    ids = [str(entry).rstrip("/").rsplit("/", 1)[-1] for entry in found]
    return sorted(
        (i for i in ids if all(c in "0123456789abcdef" for c in i) and i),
        key=lambda i: int(i, 16),
        reverse=True,
    )


def read_record(layout: OutputLayout, run_id: str, *, holder: Any = ...) -> dict[str, Any]:
    """One run's record, its state judged: a run still ``running`` whose process does not
    hold the output folder's lock any more was ``killed``.

    Parameters
    ----------
    layout : neurobatch.engine.layout.OutputLayout
        The output folder.
    run_id : str
        The run.
    holder : dict or None, optional
        The live holder of the folder's lock (:func:`neurobatch.io.lock.live_holder`);
        read when not given.

    Returns
    -------
    dict
        ``OUT/runs/<run>/run.json``.

    Raises
    ------
    neurobatch.errors.InputNotFoundError
        If the folder has no record of that run.
    """
    record = _judged(layout, run_id, holder)
    if record is None:
        known = _run_ids(layout)
        raise InputNotFoundError(
            f"{layout.url}: no run {run_id!r} in {layout.runs()}; expected one of "
            + (", ".join(known[:10]) + (" ..." if len(known) > 10 else "") if known else "none")
        )
    return record


def _judged(layout: OutputLayout, run_id: str, holder: Any = ...) -> dict[str, Any] | None:
    """:func:`read_record`, or None when the run has no record (yet: it is starting)."""
    text = _read(layout.past_run(run_id), layout.storage_options)
    if text is None:
        return None
    record: dict[str, Any] = json.loads(text)
    if record.get("state") == "running":
        if holder is ...:
            holder = live_holder(layout.url, storage_options=layout.storage_options)
        ours = holder is not None and (holder.get("host"), holder.get("pid")) == (
            record.get("host"),
            record.get("pid"),
        )
        if not ours:
            record["state"] = "killed"
            record["reason"] = "its process died (SIGKILL, a crash): no end recorded"
            content = _read(layout.run_tasks(run_id), layout.storage_options)
            if content is not None:  # as far as its table got
                tasks = pd.read_parquet(io.BytesIO(content))
                record["counts"] = _counts(
                    list(tasks.groupby("item_id", sort=False)["status"].agg(list))
                )
    return record


def read_runs(layout: OutputLayout, *, limit: int | None = None) -> pd.DataFrame:
    """Every recorded run of an output folder, newest first.

    Parameters
    ----------
    layout : neurobatch.engine.layout.OutputLayout
        The output folder.
    limit : int, optional
        Only the newest ``limit`` runs.

    Returns
    -------
    pandas.DataFrame
        ``run``, ``started`` (UTC, ISO 8601), ``seconds`` (NaN while running or when killed),
        ``command``, the items ``done``, ``skipped``, ``failed``, ``abandoned`` and
        ``unfinished``, ``state`` and ``reason``.

    Examples
    --------
    >>> import tempfile
    >>> layout = OutputLayout(tempfile.mkdtemp())
    >>> with TaskStatuses(layout, "1a", items=["a"], stages=["ingest"], name="doc",
    ...                   command="neurobatch run doc.yaml"):
    ...     pass
    >>> read_runs(layout)[["run", "command", "unfinished", "state"]]
      run                  command  unfinished     state
    0  1a  neurobatch run doc.yaml           1  finished
    """
    ids = _run_ids(layout)[:limit]
    holder = live_holder(layout.url, storage_options=layout.storage_options) if ids else None
    rows = []
    for run_id in ids:
        record = _judged(layout, run_id, holder)
        if record is None:  # starting
            continue
        counts = record.get("counts") or {}
        rows.append(
            {
                "run": run_id,
                "started": record.get("started"),
                "seconds": record.get("seconds"),
                "command": record.get("command"),
                **{k: counts.get(k, 0) for k in ("done", "skipped", "failed", "abandoned")},
                "unfinished": counts.get("unfinished", 0),
                "state": record.get("state"),
                "reason": record.get("reason"),
            }
        )
    columns = ["run", "started", "seconds", "command", "done", "skipped", "failed"]
    columns += ["abandoned", "unfinished", "state", "reason"]
    return pd.DataFrame(rows, columns=columns).astype({"seconds": "float64"})


def read_tasks(layout: OutputLayout, run_id: str) -> pd.DataFrame:
    """One run's table of statuses (:data:`COLUMNS`), as last written.

    Raises
    ------
    neurobatch.errors.InputNotFoundError
        If the folder has no such table.
    """
    content = _read(layout.run_tasks(run_id), layout.storage_options)
    if content is None:
        raise InputNotFoundError(
            f"{layout.url}: no table of statuses for run {run_id!r} "
            f"({layout.run_tasks(run_id)}); expected a run id of neurobatch history"
        )
    return pd.read_parquet(io.BytesIO(content))


def live_run(layout: OutputLayout) -> dict[str, Any] | None:
    """The record of the run writing to the output folder now, if any.

    The run that holds the folder's lock, alive, once it has recorded itself (after
    discovering its inputs).

    Parameters
    ----------
    layout : neurobatch.engine.layout.OutputLayout
        The output folder.

    Returns
    -------
    dict or None
        Its ``run.json`` (state ``running``); None when no run holds the folder.
    """
    holder = live_holder(layout.url, storage_options=layout.storage_options)
    if holder is None:
        return None
    for run_id in _run_ids(layout)[:3]:  # the holder's is the newest, or nearly
        record = _judged(layout, run_id, holder)
        if record is not None and record.get("state") == "running":
            return record
    return None
