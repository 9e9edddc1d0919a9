"""The worker side: one generic loop over an item's stages.

For each stage, in order, the runner computes the key its output must carry
(:func:`neurobatch.engine.stages.key_parts`); a stage whose committed record carries that
key and whose arrays are all there (:func:`neurobatch.io.commit.verify`) is skipped,
anything else runs: its inputs are the stored outputs of the stages it needs, its output
is stored in the item's Zarr group under its name and committed, last, with its key and
an inventory of its arrays. A stage that finds a damaged chunk in an input has that input
redone. A failing item records its one-line error, its log and a failure marker, and never
stops the others.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

import dask
import fsspec
import xarray as xr
from distributed import get_worker

from neurobatch.chunking import TRIALS_HANDOFF_MEMORY
from neurobatch.config import PipelineConfig
from neurobatch.engine.hooks import apply_hook
from neurobatch.engine.layout import OutputLayout
from neurobatch.engine.logs import ThreadLog, captured_log, one_line
from neurobatch.engine.monitor import DRIVER
from neurobatch.engine.progress import report, restartable
from neurobatch.engine.provenance import machine
from neurobatch.engine.stages import (
    KINDS,
    FigureContext,
    Stage,
    StageContext,
    StageOutput,
    key_parts,
    stale_reason,
)
from neurobatch.errors import StorageError, StoreDamagedError
from neurobatch.io import files, trials_store
from neurobatch.io.cache import Fetched, fetch_input
from neurobatch.io.commit import commit, read_commit, remove, verify
from neurobatch.io.discover import fingerprints
from neurobatch.io.zarr import ensure_group, open_dataset, write_dataset
from neurobatch.redact import scrub, secrets_in

logger = logging.getLogger(__name__)

__all__ = [
    "CLUSTER",
    "ItemJob",
    "ItemOutcome",
    "expected_keys",
    "process_item",
    "process_items",
    "timed_out",
]

#: The "worker" of a stage that ran on the whole cluster.
CLUSTER = "cluster"

#: What a stage's record holds besides its own facts.
_BOOKKEEPING = ("key", "parts", "run", "sources", "arrays", "stored", "stage")


@dataclass
class ItemJob:
    """Everything one item's task needs; shipped to a worker."""

    item_id: str
    url: str
    fingerprint: str
    format: str
    loader_arguments: dict[str, Any]
    config: PipelineConfig
    stages: list[Stage]
    hooks: dict[str, Callable[..., Any]]
    reprocess: bool
    run_id: str
    """Stamped on every commit record, so that a retried task knows its own run's outputs."""
    size: int = 0
    """The input's size in bytes (the manifest's)."""
    source: str = ""
    """The name of the data source it came from (``""``: the pipeline's one ``input``)."""

    @property
    def input_options(self) -> dict[str, Any]:
        """fsspec options of the input: its source's ``storage_options``."""
        return self.config.source(self.source).storage_options

    @property
    def layout(self) -> OutputLayout:
        """The run's output folder."""
        return OutputLayout(self.config.output.url, self.config.output.storage_options)

    @property
    def identity(self) -> str:
        """The input and how it is loaded: the input part of the first stage's key."""
        arguments = json.dumps(self.loader_arguments, sort_keys=True, default=str)
        return f"{self.fingerprint}|{self.format}|{arguments}"


@dataclass
class ItemOutcome:
    """What happened to one item: returned by its task, one row of ``OUT/items.parquet``."""

    item_id: str
    url: str
    status: str = "pending"  # done | skipped | failed
    experiment_id: str | None = None
    error: str | None = None
    traceback: str | None = None
    stages_run: list[str] = field(default_factory=list)
    stages_skipped: list[str] = field(default_factory=list)
    spans: list[dict[str, Any]] = field(default_factory=list)
    worker: str = DRIVER
    host: dict[str, Any] = field(default_factory=dict)
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Each committed stage's facts (its record without the bookkeeping)."""
    seconds: float = 0.0
    storage_fault: bool = False
    """Whether it failed because the output's storage did (a full disk, a read-only folder:
    :class:`~neurobatch.errors.StorageError`), not because of its input."""
    trials: xr.Dataset | None = field(default=None, repr=False, compare=False)
    """The trials the item committed, in memory, when they are small
    (:data:`~neurobatch.chunking.TRIALS_HANDOFF_MEMORY`); else read from its store."""

    @property
    def n_trials(self) -> int:
        """Trials the item committed."""
        return int(self.records.get("trials", {}).get("n_trials") or 0)

    @property
    def sampling_rate(self) -> float | None:
        """The input's sampling rate, from the stage that read the input (ingest, or a
        filter without a copy)."""
        return next(
            (r["sampling_rate"] for r in self.records.values() if r.get("sampling_rate")), None
        )

    @property
    def fit(self) -> dict[str, Any] | None:
        """The isosbestic fit, when the item has one."""
        return self.records.get("preprocess", {}).get("fit")

    def summary(self) -> dict[str, Any]:
        """The outcome's fields as JSON values, without its trials and traceback."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in ("trials", "traceback")
        } | {"traceback": None}

    def row(self) -> dict[str, Any]:
        """The outcome as one flat row of the items table."""
        fit = self.fit or {}
        dropped = self.records.get("trials", {}).get("dropped") or {}
        details = {
            key: value
            for name, record in self.records.items()
            if name not in ("ingest", "preprocess", "trials")  # those have columns of their own
            for key, value in record.items()
        }
        return {
            "item_id": self.item_id,
            "experiment_id": self.experiment_id,
            "url": self.url,
            "status": self.status,
            "error": self.error,
            "storage_fault": self.storage_fault,
            "stages_run": ",".join(self.stages_run),
            "n_trials": self.n_trials,
            "n_dropped": len(dropped),
            "dropped": json.dumps(dropped),
            "sampling_rate": self.sampling_rate,
            "fit_method": fit.get("method"),
            "fit_intercept": fit.get("intercept"),
            "fit_slope": fit.get("slope"),
            "fit_r_squared": fit.get("r_squared"),
            "fit_converged": fit.get("converged"),
            "details": json.dumps(details, default=str),
            "seconds": round(self.seconds, 3),
        }


# --- computing on the worker's own thread ----------------------------------------------------

_sync_lock = threading.Lock()
_sync_users = 0
_sync_previous: Any = None


@contextmanager
def _synchronous_dask() -> Iterator[None]:
    """Compute dask graphs on the calling thread while any item runs in this process.

    Inside a worker dask would otherwise send every compute of an item (each pass of a fit)
    back to the scheduler. The setting is process-wide, so it is counted: the last item to
    finish restores the previous scheduler.
    """
    global _sync_users, _sync_previous
    with _sync_lock:
        if _sync_users == 0:
            _sync_previous = dask.config.get("scheduler", None)
            dask.config.set(scheduler="synchronous")
        _sync_users += 1
    try:
        yield
    finally:
        with _sync_lock:
            _sync_users -= 1
            if _sync_users == 0:
                dask.config.set(scheduler=_sync_previous)


# --- the stages of one item ------------------------------------------------------------------


@contextmanager
def _span(outcome: ItemOutcome, name: str) -> Iterator[None]:
    """Run one stage: noted in ``stages_run``, its span kept for provenance."""
    outcome.stages_run.append(name)
    span: dict[str, Any] = {
        "stage": name,
        "start": time.time(),
        "worker": outcome.worker,
        "status": "failed",
    }
    outcome.spans.append(span)
    logger.info("stage %s started", name)
    try:
        yield
        span["status"] = "done"
    finally:
        span["end"] = time.time()
        logger.info("stage %s %s in %.2f s", name, span["status"], span["end"] - span["start"])


def _key(
    job: ItemJob, stage: Stage, upstream: Mapping[str, str], sources: Iterable[str] | None
) -> dict[str, Any]:
    """The key parts of a stage's output now, and ``sources``: the fingerprints of the other
    files it read (for the stage that reads the input)."""
    found = fingerprints(list(sources or ()), job.input_options)
    parts: dict[str, Any] = key_parts(
        stage,
        job.config,
        hooks=job.hooks,
        upstream=upstream,
        input_fingerprint=None if stage.needs else job.identity,
        sources=found,
    )
    return parts | {"sources": found}


def expected_keys(job: ItemJob, records: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The key parts each of an item's stages should carry now, given its commit records.

    Parameters
    ----------
    job : ItemJob
        The item, with the pipeline file's stages and hooks.
    records : mapping of str to mapping
        The item's commit records by stage (those that exist): the files its loader read
        are fingerprinted again.

    Returns
    -------
    dict of str to dict
        Stage -> its key parts (:func:`neurobatch.engine.stages.key_parts`).
    """
    keys: dict[str, Any] = {}
    for stage in job.stages:
        upstream = {name: keys[name]["key"] for name in stage.needs}
        sources = (records.get(stage.name) or {}).get("sources")
        keys[stage.name] = _key(job, stage, upstream, sources)
    return keys


class _DamagedInput(Exception):
    """A stage found a damaged chunk in the stored output of a stage it needs."""

    def __init__(self, stage: str, error: StoreDamagedError) -> None:
        super().__init__(str(error))
        self.stage = stage
        self.error = error


class _ItemRun:
    """One pass over an item's stages."""

    def __init__(self, job: ItemJob, outcome: ItemOutcome) -> None:
        self.job = job
        self.outcome = outcome
        self.layout = job.layout
        self.so = dict(job.config.output.storage_options)
        self.stages = {s.name: s for s in job.stages}
        self.records: dict[str, dict[str, Any]] = {}
        self.views: dict[str, xr.Dataset | None] = {}
        self.written: dict[str, xr.Dataset] = {}
        """Stages stored from memory in this pass, as reading them back gives them."""
        self.experiment_id = functools.cache(self._experiment_id)
        self.input_copy = functools.cache(self._input_copy)

    def run(self) -> None:
        for stage in self.job.stages:
            self._report(stage.name, "started")
            upstream = {name: self.records[name]["key"] for name in stage.needs}
            record = self._committed(stage, upstream)
            if record is None:
                with _span(self.outcome, stage.name):
                    record = self._run(stage, upstream)
            self.records[stage.name] = record
            self._report(
                stage.name, "skipped" if stage.name in self.outcome.stages_skipped else "done"
            )
        self.outcome.records = {
            name: {k: v for k, v in record.items() if k not in _BOOKKEEPING}
            for name, record in self.records.items()
        }
        self.outcome.experiment_id = self._recorded_experiment_id()
        kind = KINDS[self.job.config.kind]
        if self.job.config.output.dashboards and self.outcome.stages_run and kind.figures:
            kind.figures(self._figure_context())

    def _report(self, stage: str, status: str) -> None:
        """Tell the driver the stage started, or is done or skipped."""
        timeout = self.job.config.engine.item_timeout_s
        worker = self.outcome.worker
        report(
            self.job.item_id, stage, timeout, status=status, run_id=self.job.run_id, worker=worker
        )

    def _committed(self, stage: Stage, upstream: Mapping[str, str]) -> dict[str, Any] | None:
        """The stage's commit record when its output is done and intact, else None."""
        url = self.layout.stage(self.job.item_id, stage.name)
        record = None if self.job.reprocess else read_commit(url, storage_options=self.so)
        if record is None:
            return None
        reason = stale_reason(record, _key(self.job, stage, upstream, record.get("sources")))
        if reason is not None:
            logger.info("%s is stale (%s): redoing it", stage.name, reason)
            return None
        problems = verify(
            url, record, storage_options=self.so, zarr_format=self.job.config.output.zarr_format
        )
        if problems:  # damaged, or in the other Zarr format
            logger.warning(
                "%s: stage %s at %s cannot be reused (%s): redoing it",
                self.job.item_id,
                stage.name,
                url,
                "; ".join(problems),
            )
            return None
        if record.get("run") == self.job.run_id:
            logger.info(
                "%s: committed earlier in this run (by a worker since lost); kept", stage.name
            )
            self.outcome.stages_run.append(stage.name)
        else:
            logger.info("stage %s skipped: committed with the same key", stage.name)
            self.outcome.stages_skipped.append(stage.name)
        return record

    def _run(self, stage: Stage, upstream: Mapping[str, str]) -> dict[str, Any]:
        job = self.job
        url = self.layout.stage(job.item_id, stage.name)
        scratch = self.layout.scratch(job.item_id, stage.name)
        inputs = {name: self._view(name) for name in stage.needs}
        empty = [name for name, dataset in inputs.items() if dataset is None]
        try:
            if empty:  # e.g. an item without trials: nothing for the stage to work on
                logger.info("stage %s: no input (%s stored nothing)", stage.name, empty[0])
                output = StageOutput(None, record={"no_input": empty[0]})
            else:
                output = stage.run(self._context(stage, inputs, scratch))
            stored, written = self._store(stage, url, output.dataset, output.chunk_dim)
        except StoreDamagedError as error:
            damaged = [n for n in stage.needs if self.layout.stage(job.item_id, n) in str(error)]
            if not damaged:
                raise
            raise _DamagedInput(damaged[0], error) from error
        finally:
            remove(scratch, storage_options=self.so)
        parts = _key(job, stage, upstream, output.sources)
        key, sources = parts.pop("key"), parts.pop("sources")
        record = {
            **output.record,
            "stage": stage.name,
            "key": key,
            "parts": parts,
            "sources": sources,
            "stored": stored,
        }
        if (job.run_id, job.item_id) in _abandoned:
            raise TimeoutError(f"{job.item_id} was abandoned after engine.item_timeout_s")
        commit(url, {**record, "run": job.run_id}, storage_options=self.so, arrays=True)
        self.views.pop(stage.name, None)
        if written is not None:  # later stages see what was stored without reading it
            self.written[stage.name] = written
        return record

    def _context(
        self, stage: Stage, inputs: Mapping[str, xr.Dataset | None], scratch: str
    ) -> StageContext:
        job = self.job
        return StageContext(
            item_id=job.item_id,
            url=job.url,
            format=job.format,
            loader_arguments=job.loader_arguments,
            config=job.config,
            parameters=stage.parameters(job.config),
            inputs={name: dataset for name, dataset in inputs.items() if dataset is not None},
            hooks=job.hooks,
            chunk_memory=job.config.engine.chunk_memory,
            scratch_url=scratch,
            experiment_id=self.experiment_id,
            storage_options=job.input_options,
            input_copy=None if stage.needs else self.input_copy(),
        )

    def _input_copy(self) -> Fetched | None:
        """The input's copy in ``input.cache``, fetched or checked before a stage reads it."""
        job = self.job
        source = job.config.source(job.source)
        if source.cache is None:
            return None
        return fetch_input(
            job.url,
            source.cache,
            fingerprint=job.fingerprint,
            target=source.target,
            loader_arguments=job.loader_arguments,
            storage_options=job.input_options,
        )

    def _store(
        self, stage: Stage, url: str, dataset: xr.Dataset | None, chunk_dim: str | None
    ) -> tuple[bool, xr.Dataset | None]:
        """Write a stage's output under its name in the item's group: whether there was one,
        and, when it was written from memory, what reading it back gives
        (:func:`~neurobatch.io.zarr.write_dataset`)."""
        remove(url, storage_options=self.so)
        if dataset is None:
            return False, None
        zarr_format = self.job.config.output.zarr_format
        ensure_group(
            self.layout.item(self.job.item_id), storage_options=self.so, zarr_format=zarr_format
        )
        if stage.store == "trials":
            if not dataset.sizes["trial"]:
                return False, None
            combined = stage.name == KINDS[self.job.config.kind].trials
            if combined and dataset.nbytes <= TRIALS_HANDOFF_MEMORY:
                dataset = dataset.load()
                self.outcome.trials = dataset
            trials_store.append_trials(
                dataset, url, storage_options=self.so, zarr_format=zarr_format, written_once=True
            )
            return True, None
        # a user's output without a dimension (a summary of scalars) is one chunk
        dim = chunk_dim or stage.chunk_dim or next(map(str, dataset.dims), None)
        written = write_dataset(
            dataset,
            url,
            chunk_memory=self.job.config.engine.chunk_memory,
            storage_options=self.so,
            dim=dim,
            minimum=4096 if dim == "time" else 1,
            zarr_format=zarr_format,
        )
        return True, written

    def _view(self, name: str) -> xr.Dataset | None:
        """A stage's stored output as later stages see it (``post_load`` on the recording)."""
        if name not in self.views:
            stage, record = self.stages[name], self.records[name]
            url = self.layout.stage(self.job.item_id, name)
            opened: xr.Dataset | None = None
            if name in self.written:
                opened = self.written.pop(name)
            elif record.get("stored", True):
                opened = (
                    trials_store.open_trials(url, storage_options=self.so)
                    if stage.store == "trials"
                    else open_dataset(url, storage_options=self.so)
                )
            if opened is not None and stage.view_hook:
                opened = apply_hook(self.job.hooks, stage.view_hook, opened)
            self.views[name] = opened
        return self.views[name]

    def _experiment_id(self) -> str:
        id_builder = self.job.hooks.get("id_builder")
        if id_builder is None:
            return self.job.item_id
        recording = self._view("ingest")
        return str(id_builder(recording))

    def _recorded_experiment_id(self) -> str:
        for record in self.records.values():
            if record.get("experiment_id"):
                return str(record["experiment_id"])
        return self.experiment_id()

    def _figure_context(self) -> FigureContext:
        layout, item, fmt = self.layout, self.job.item_id, self.job.config.output.dashboards
        assert fmt is not None
        return FigureContext(
            open=self._view,
            path=lambda suffix: layout.dashboard(item, suffix, fmt),
            records=self.outcome.records,
            config=self.job.config,
            experiment_id=self.outcome.experiment_id or item,
            storage_options=self.job.input_options,
        )


def _run_item(job: ItemJob, outcome: ItemOutcome) -> None:
    """Every stage of the item; a damaged input is redone once, then the stage again."""
    try:
        _ItemRun(job, outcome).run()
    except _DamagedInput as damaged:
        url = job.layout.stage(job.item_id, damaged.stage)
        logger.warning(
            "%s: stage %s at %s is damaged (%s): redoing it",
            job.item_id,
            damaged.stage,
            url,
            damaged.error,
        )
        remove(url, storage_options=job.config.output.storage_options)
        outcome.stages_run.clear()
        outcome.stages_skipped.clear()
        outcome.spans.clear()
        _ItemRun(job, outcome).run()


# --- one item, on a worker -------------------------------------------------------------------


def _worker() -> str:
    """The address of the worker this runs on, or :data:`DRIVER` outside one."""
    try:
        return str(get_worker().address)
    except ValueError:
        return DRIVER


#: Items abandoned after their timeout, as (run id, item id): they may not commit.
_abandoned: set[tuple[str, str]] = set()


def process_item(job: ItemJob) -> ItemOutcome:
    """Run one item's stages; never raises for a problem with the item itself.

    ``engine.item_timeout_s`` is enforced by whoever can stop the item. On a worker that a
    nanny can restart, the driver does (:class:`neurobatch.engine.tasks.ItemTasks`): the
    item reports each stage it enters (:func:`neurobatch.engine.progress.report`). Anywhere else
    (threads of the driver's own process) the stages run on a thread of their own and an
    item that has not finished in time fails with a message; Python cannot stop that
    thread: it is left to end by itself, and anything it would still commit is refused.

    Parameters
    ----------
    job : ItemJob
        The item and the run's settings.

    Returns
    -------
    ItemOutcome
        ``done`` (something ran), ``skipped`` (everything was already committed with the
        same key) or ``failed`` with the one-line error and the traceback.
    """
    on_cluster = KINDS[job.config.kind].on_cluster
    worker = CLUSTER if on_cluster else _worker()
    outcome = ItemOutcome(item_id=job.item_id, url=job.url, worker=worker, host=machine())
    timeout = job.config.engine.item_timeout_s
    if timeout is None or restartable() is not None:
        return _process(job, outcome, [])
    finished: list[ItemOutcome] = []
    logs: list[ThreadLog] = []
    thread = threading.Thread(
        target=lambda: finished.append(_process(job, outcome, logs)),
        name=f"neurobatch-item-{job.item_id}",
        daemon=True,
    )
    thread.start()
    thread.join(timeout)
    if finished:
        return finished[0]
    _abandoned.add((job.run_id, job.item_id))
    stage = outcome.stages_run[-1] if outcome.stages_run else job.stages[0].name
    return timed_out(job, outcome, stage, log=logs[0].text if logs else "")


def timed_out(
    job: ItemJob, so_far: ItemOutcome, stage: str, *, restarts: int = 0, log: str = ""
) -> ItemOutcome:
    """The failure of an item still running after ``engine.item_timeout_s``, recorded.

    Its log (``log``, then the error) and its failure marker are written as for any
    failed item.

    Parameters
    ----------
    job : ItemJob
        The item.
    so_far : ItemOutcome
        What it did before it was given up: its worker, host, stages and their spans.
    stage : str
        The stage it was in.
    restarts : int, default 0
        How many times its worker was restarted to stop it (by the driver).
    log : str, optional
        What it logged.

    Returns
    -------
    ItemOutcome
        Failed, with one line naming the input, the stage and the setting.
    """
    timeout, now = job.config.engine.item_timeout_s or 0.0, time.time()
    tries = (
        f"; its worker was restarted, {restarts} attempt(s) in all (engine.retries: "
        f"{job.config.engine.retries})"
        if restarts
        else ""
    )
    failed = ItemOutcome(
        item_id=job.item_id,
        url=job.url,
        worker=so_far.worker,
        host=so_far.host,
        status="failed",
        error=(
            f"{job.url}: still running after {timeout:g} s, in stage {stage} "
            f"(engine.item_timeout_s: {timeout:g}){tries}; expected to finish within it"
        ),
        stages_run=list(so_far.stages_run),
        # the stage still running ends here, for the record, abandoned
        spans=[
            span if "end" in span else span | {"end": now, "abandoned": True}
            for span in so_far.spans
        ],
        seconds=timeout,
    )
    secrets = secrets_in(job.config.model_dump())
    _finish_item(job, failed, scrub(log + f"{failed.error}\n", secrets), stage)
    return failed


def process_items(jobs: Sequence[ItemJob]) -> list[ItemOutcome]:
    """Run several items in turn (one task of small items, see
    :func:`neurobatch.engine.tasks.task_groups`).

    Returns
    -------
    list of ItemOutcome
        One per job, in order (:func:`process_item`'s).
    """
    return [process_item(job) for job in jobs]


def _process(job: ItemJob, outcome: ItemOutcome, logs: list[ThreadLog]) -> ItemOutcome:
    """The body of :func:`process_item`, on the thread that runs the item's stages."""
    on_cluster = KINDS[job.config.kind].on_cluster
    secrets = secrets_in(job.config.model_dump())
    start = time.perf_counter()
    # an item of a large kind computes its graphs on the whole cluster; any other item on
    # the thread of the worker that runs it
    with captured_log() as log, nullcontext() if on_cluster else _synchronous_dask():
        logs.append(log)
        logger.info("item %s from %s", job.item_id, job.url)
        try:
            _run_item(job, outcome)
        except Exception as error:  # noqa: BLE001 - one item's failure never stops the others
            outcome.status = "failed"
            outcome.storage_fault = isinstance(error, StorageError)
            outcome.error = scrub(_failure_line(job, outcome, error), secrets)
            outcome.traceback = scrub(traceback.format_exc(), secrets)
            logger.error("%s failed: %s\n%s", job.item_id, outcome.error, outcome.traceback)
        else:
            outcome.status = "done" if outcome.stages_run else "skipped"
        outcome.seconds = time.perf_counter() - start
        logger.info("item %s %s in %.2f s", job.item_id, outcome.status, outcome.seconds)
    if (job.run_id, job.item_id) not in _abandoned:  # else it was failed and recorded
        stage = outcome.stages_run[-1] if outcome.stages_run else job.stages[0].name
        _finish_item(job, outcome, scrub(log.text, secrets), stage)
    return outcome


def _failure_line(job: ItemJob, outcome: ItemOutcome, error: Exception) -> str:
    """An item's error as one line; a user's stage is named, with the input, since its own
    message cannot know them."""
    failing = outcome.stages_run[-1] if outcome.stages_run else None
    stage = next((s for s in job.stages if s.name == failing), None)
    if stage is None or stage.function is None:
        return one_line(error)
    return f"{job.url}: stage {stage.name}: {one_line(error)}"


def _remove_if_present(fs: Any, path: str) -> None:
    with suppress(FileNotFoundError):
        fs.rm_file(path)


def write_failure(layout: OutputLayout, item_id: str, stage: str, error: str, run_id: str) -> None:
    """Write an item's failure marker: the stage, the one-line error, the run and the time."""
    failure = {"stage": stage, "error": error, "run": run_id, "time": datetime.now(UTC).isoformat()}
    text = json.dumps(failure, indent=2) + "\n"
    files.write_text(layout.failure(item_id), text, storage_options=layout.storage_options)


def _finish_item(job: ItemJob, outcome: ItemOutcome, log: str, stage: str) -> None:
    """Write the item's log, and its failure marker (or remove an old one)."""
    layout = job.layout
    so = layout.storage_options
    try:
        files.write_text(layout.item_log(job.item_id), log, storage_options=so)
        if outcome.status == "failed":
            write_failure(layout, job.item_id, stage, outcome.error or "", job.run_id)
        else:  # retried, and absent is fine
            url = layout.failure(job.item_id)
            fs, path = fsspec.core.url_to_fs(url, **so)
            with files.translated(url, action="removing"):
                files.retried(lambda: _remove_if_present(fs, path), url=url, action="removing")
    except OSError as error:
        logger.warning("could not write the log or failure marker of %s: %s", job.item_id, error)
