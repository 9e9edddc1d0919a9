"""Watch mode: poll the input URL and run every new or changed item as it appears.

A watch is a loop of cycles, one every ``interval_s`` seconds, measured from each cycle's
start (a cycle that takes longer is followed at once by the next). Each cycle:

1. discovers the inputs (with ``input.ready_flag``, only the complete ones);
2. picks the items to run: on the first cycle every item, as ``neurobatch run`` would
   (done items are skipped by their keys; stale, pending and failed ones run); on later
   cycles the items whose id is new or whose fingerprint changed since the watch last ran
   them;
3. runs them on the watch's cluster with :meth:`~neurobatch.engine.run.Pipeline.run`
   (``only``: the combined outputs keep covering every committed item), under the output
   folder's lock, which is held for that run only: ``neurobatch status`` and a manual
   ``neurobatch run`` get in between, and a cycle that finds the lock held tries again at
   the next interval;
4. logs one line (time, items found, new or changed, done, skipped, failed, seconds) to
   this module's logger and to ``OUT/logs/watch.log``.

A cycle that fails (an unreachable input URL, a storage error, every item failing, an
error in the run) is that one line, and the watch goes on at the next interval. An item
that fails is not retried until its input changes, or until the watch restarts (its first
cycle retries it, as ``neurobatch run`` does); an item that failed because the output's
storage did is retried at the next cycle.

The cluster is started once, at the first cycle with items to run, from the ``cluster``
section (``kind: auto`` sized for the batch found then), and kept for the life of the
watch; one that stopped working is started again at the next cycle.

SIGTERM and SIGINT stop the watch: between cycles at once (:func:`watch` returns the last
cycle); during a cycle by interrupting it the way they interrupt ``neurobatch run``
(``SystemExit(128 + signal)``: the run's provenance is written, marked interrupted, and
its lock released), then the cluster is closed.
"""

from __future__ import annotations

import datetime
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any, Self

import fsspec
import pandas as pd
from distributed import Client
from fsspec.implementations.local import LocalFileSystem

from neurobatch.engine.cluster import connect
from neurobatch.engine.logs import one_line
from neurobatch.engine.placement import resolve_auto
from neurobatch.engine.run import Pipeline, RunError, RunSummary
from neurobatch.engine.stages import KINDS
from neurobatch.errors import ConfigError, NoInputsError
from neurobatch.io import files
from neurobatch.redact import scrub, secrets_in

__all__ = ["Cycle", "watch"]

logger = logging.getLogger(__name__)

#: Lines of ``OUT/logs/watch.log`` kept on an object store, where each cycle rewrites it
#: whole (a local file is appended to and keeps every line).
KEPT_LINES = 10_000


@dataclass
class Cycle:
    """What one cycle of a watch found and did.

    Attributes
    ----------
    number : int
        1 for the watch's first cycle.
    started : datetime.datetime
        When it started (UTC).
    found : int
        Items discovered (0 when no input is there, or ready, yet).
    to_run : int
        Items new or changed since the watch last ran them (every item, the first cycle).
    summary : RunSummary or None
        The run of those items, if one ran (also when every item failed).
    error : Exception or None
        Why the cycle failed, if it did.
    seconds : float
        How long it took.
    """

    number: int
    started: datetime.datetime
    found: int = 0
    to_run: int = 0
    summary: RunSummary | None = None
    error: Exception | None = None
    seconds: float = 0.0

    def line(self) -> str:
        """The cycle as the one line the watch logs.

        Returns
        -------
        str

        Examples
        --------
        >>> when = datetime.datetime(2026, 12, 7, 1, 2, 3, tzinfo=datetime.UTC)
        >>> Cycle(2, when, found=4, to_run=0, seconds=0.04).line()
        '2026-12-07T01:02:03Z cycle 2: found 4, new or changed 0; 0.0 s'
        >>> Cycle(3, when, error=ConfigError("input.url 'x' does not exist")).line()
        "2026-12-07T01:02:03Z cycle 3: failed: input.url 'x' does not exist; 0.0 s"
        """
        text = f"{self.started:%Y-%m-%dT%H:%M:%SZ} cycle {self.number}: "
        if self.found or self.summary is not None or self.error is None:
            text += f"found {self.found}, new or changed {self.to_run}"
        summary = self.summary
        if summary is not None:
            text += (
                f": {summary.n_done} done, {summary.n_skipped} skipped, {summary.n_failed} failed"
            )
            if summary.n_failed:
                first = summary.failures.iloc[0]
                text += f" (first {first['item_id']}: {first['error']})"
        elif self.error is not None:
            text += ": " if self.found else ""
            text += f"failed: {one_line(self.error)}"
        return f"{text}; {self.seconds:.1f} s"


class _Watcher:
    """The state a watch keeps between cycles: what it ran, and its cluster."""

    def __init__(self, pipeline: Pipeline, *, force: bool) -> None:
        self.pipeline, self.force = pipeline, force
        # item -> the fingerprint it was last run with; None until a run went through
        self.known: dict[str, str] | None = None
        self.number = 0
        self.client: Client | None = None
        self.cluster = ExitStack()
        self.secrets = secrets_in(pipeline.config.model_dump())

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cluster.close()

    def cycle(self) -> Cycle:
        """Discover, run what is new or changed, and log the cycle's line."""
        self.number += 1
        cycle = Cycle(self.number, datetime.datetime.now(datetime.UTC))
        start = time.perf_counter()
        try:
            self._run(cycle)
        except RunError as error:  # every item failed: they wait for their input to change
            cycle.summary, cycle.error = error.summary, error
        except Exception as error:  # a failed cycle is a line; the next one may work
            cycle.error = error
            logger.debug("cycle %d failed", cycle.number, exc_info=True)
        cycle.seconds = time.perf_counter() - start
        self._report(cycle)
        return cycle

    def _run(self, cycle: Cycle) -> None:
        try:
            manifest = self.pipeline.discover()
        except NoInputsError as nothing:
            logger.debug("no inputs yet: %s", nothing)
            return
        cycle.found = len(manifest)
        now = dict(zip(manifest["item_id"], manifest["fingerprint"], strict=True))
        only = None
        if self.known is not None:
            only = [item for item, print_ in now.items() if self.known.get(item) != print_]
            if not only:
                return
        cycle.to_run = len(now) if only is None else len(only)
        client = self._client(manifest)
        try:
            cycle.summary = self.pipeline.run(client=client, only=only, progress=False)
        except RunError as error:
            self._remember(error.summary, now)
            raise
        self._remember(cycle.summary, now)

    def _remember(self, summary: RunSummary, fingerprints: Mapping[str, str]) -> None:
        """Note the items a run went through, except those the output's storage failed."""
        known = self.known if self.known is not None else {}
        retry = set(summary.storage_failures["item_id"])
        for item in summary.items["item_id"]:
            if item not in retry and item in fingerprints:
                known[item] = fingerprints[item]
        self.known = known

    def _client(self, manifest: pd.DataFrame) -> Client:
        """The watch's cluster: started at the first run, again if it stopped working."""
        if self.client is not None and self.client.status != "running":
            logger.warning("the cluster stopped (%s): starting it again", self.client.status)
            self.cluster.close()
            self.client = None
        if self.client is None:
            config = self.pipeline.config
            cluster = resolve_auto(
                config.cluster,
                len(manifest),
                float(manifest["size"].mean() or 0),
                blocked=KINDS[config.kind].on_cluster,
            )
            self.client = self.cluster.enter_context(connect(cluster, force=self.force))
        return self.client

    def _report(self, cycle: Cycle) -> None:
        line = scrub(cycle.line(), self.secrets)
        logger.log(logging.WARNING if cycle.error else logging.INFO, "%s", line)
        layout = self.pipeline.layout
        try:
            _append_line(layout.watch_log, line, layout.storage_options)
        except Exception as error:  # noqa: BLE001 - the line is logged; the watch goes on
            logger.warning("could not write %s: %s", layout.watch_log, one_line(error))


def _append_line(url: str, line: str, storage_options: Mapping[str, Any]) -> None:
    """Append a line to a log file: in place on a local disk; elsewhere (an object store,
    which cannot append) by rewriting it whole, with its last :data:`KEPT_LINES` lines."""
    fs, path = fsspec.core.url_to_fs(url, **dict(storage_options))
    if isinstance(fs, LocalFileSystem):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a", encoding="utf-8") as log:
            log.write(line + "\n")
        return
    try:
        earlier = bytes(fs.cat_file(path)).decode()
    except FileNotFoundError:
        earlier = ""
    kept = (earlier + line + "\n").splitlines(keepends=True)[-KEPT_LINES:]
    files.write_text(url, "".join(kept), storage_options=storage_options)


class _Stop:
    """SIGTERM and SIGINT: a stop between cycles, an interruption during one."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.busy = False

    def handler(self, signum: int, frame: FrameType | None) -> None:
        self.requested.set()
        logger.info("%s: stopping", signal.Signals(signum).name)
        if self.busy:  # through the cycle's cleanups, as `neurobatch run` stops
            raise SystemExit(128 + signum)

    @contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # signals reach the main thread only: its handlers stay
            return
        previous = {s: signal.signal(s, self.handler) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    @contextmanager
    def cycle(self) -> Iterator[None]:
        self.busy = True
        try:
            yield
        finally:
            self.busy = False


def watch(
    pipeline: Pipeline, *, interval_s: float = 60.0, once: bool = False, force: bool = False
) -> Cycle:
    """Run every new or changed item of a pipeline as its input appears, until stopped.

    See the module's description for what a cycle does and logs.

    Parameters
    ----------
    pipeline : Pipeline
        The pipeline, its cluster section as the watch should start it.
    interval_s : float, default 60.0
        Seconds from the start of one cycle to the start of the next.
    once : bool, default False
        Run one cycle and return.
    force : bool, default False
        Start a cluster larger than the machine (``local``) or than 10,000 workers.

    Returns
    -------
    Cycle
        The last cycle: with ``once`` the only one; else the one before SIGTERM or SIGINT
        stopped the watch between cycles (during a cycle they raise ``SystemExit(128 +
        signal)`` once it is cleaned up).

    Raises
    ------
    neurobatch.errors.ConfigError
        If ``interval_s`` is not a positive number of seconds.

    Examples
    --------
    >>> import tempfile
    >>> from neurobatch import synthetic
    >>> tmp = tempfile.mkdtemp()
    >>> _ = synthetic.write_photometry_batch(f"{tmp}/data", n_items=2, duration_s=60.0, fs=20.0)
    >>> pipeline = Pipeline({
    ...     "name": "doc-watch",
    ...     "input": {"url": f"{tmp}/data", "pattern": "*.csv"},
    ...     "loader": {"format": "photometry-csv", "event_cols": list(synthetic.EVENT_NAMES)},
    ...     "trials": {"align_to": "trial_cue", "bounds_s": [-2, 4]},
    ...     "output": {"url": f"{tmp}/out"},
    ...     "cluster": {"n_workers": 1, "processes": False, "memory_limit": "1GiB"},
    ... })
    >>> cycle = watch(pipeline, once=True)
    >>> cycle.found, cycle.to_run, cycle.summary.n_done
    (2, 2, 2)
    >>> print(open(f"{tmp}/out/logs/watch.log").read().split(" ", 1)[1], end="")
    cycle 1: found 2, new or changed 2: 2 done, 0 skipped, 0 failed; ... s
    """
    if not (isinstance(interval_s, int | float) and math.isfinite(interval_s) and interval_s > 0):
        raise ConfigError(f"--interval: expected a positive number of seconds, got {interval_s!r}")
    stop = _Stop()
    with stop.installed(), _Watcher(pipeline, force=force) as watcher:
        while True:
            started = time.monotonic()
            with stop.cycle():
                cycle = watcher.cycle()
            if once or stop.requested.wait(max(0.0, started + interval_s - time.monotonic())):
                return cycle
