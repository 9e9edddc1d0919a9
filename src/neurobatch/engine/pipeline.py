"""The photometry batch pipeline: discover -> plan -> submit per item -> collect -> combine.

One future per item on a Dask cluster, a bounded number in flight. Inside its task an item
runs its stages — ingest (input -> ``recording.zarr``), preprocess (``preprocessed.zarr``),
trials (``trials.zarr``) — as lazy dask graphs over its Zarr stores, computed on the
worker's own thread (no round trip to the scheduler per pass of a fit), and commits each
stage's output with a marker written last. A failing item records its one-line error and
traceback and never stops the others. The driver appends the items' trials to the combined
``OUT/trials.zarr`` in manifest order as they finish, so memory stays flat in the number of
items and the combined order does not depend on which worker was faster.
"""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, nullcontext, suppress
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import cloudpickle
import dask
import fsspec
import numpy as np
import pandas as pd
import xarray as xr
from distributed import Client, Future, as_completed, get_worker

from neurobatch.config import PipelineConfig, import_object, load_config, stage_parameters
from neurobatch.engine import stages
from neurobatch.engine.cluster import connect, planned_threads
from neurobatch.engine.ledger import (
    FAILURE_MARKER,
    ITEM_OUTPUTS,
    KIND_STAGES,
    stage_key,
    write_manifest,
)
from neurobatch.engine.monitor import DRIVER, Recorder
from neurobatch.engine.provenance import (
    StageRecord,
    append_processing,
    build_processing,
    machine,
)
from neurobatch.errors import ConfigError, EmptyUnitWarning, NeurobatchError
from neurobatch.io import export, store
from neurobatch.io.discover import discover
from neurobatch.io.loaders import load_recording
from neurobatch.redact import scrub, secrets_in

logger = logging.getLogger(__name__)

__all__ = ["HOOK_NAMES", "ItemOutcome", "Pipeline", "RunError", "RunSummary"]

#: The hooks a run accepts, in the order they are called on an item.
HOOK_NAMES = ("post_load", "id_builder", "post_preprocess", "post_trials")

#: Filtered channels up to this many chunk budgets are kept in the worker's memory for the
#: fit's passes; longer recordings go through a scratch Zarr store instead.
IN_MEMORY_CHUNKS = 8

_PACKAGE_LOGGER = logging.getLogger("neurobatch")
_LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class RunError(NeurobatchError, RuntimeError):
    """Every item of a run failed; :attr:`summary` says how."""

    def __init__(self, message: str, summary: RunSummary) -> None:
        super().__init__(message)
        self.summary = summary


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
    n_trials: int = 0
    n_dropped: int = 0
    dropped: dict[str, str] = field(default_factory=dict)
    sampling_rate: float | None = None
    fit: dict[str, Any] | None = None
    trials_url: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def row(self) -> dict[str, Any]:
        """The outcome as one flat row of the items table."""
        fit = self.fit or {}
        return {
            "item_id": self.item_id,
            "experiment_id": self.experiment_id,
            "url": self.url,
            "status": self.status,
            "error": self.error,
            "stages_run": ",".join(self.stages_run),
            "n_trials": self.n_trials,
            "n_dropped": self.n_dropped,
            "dropped": json.dumps(self.dropped),
            "sampling_rate": self.sampling_rate,
            "fit_method": fit.get("method"),
            "fit_intercept": fit.get("intercept"),
            "fit_slope": fit.get("slope"),
            "fit_r_squared": fit.get("r_squared"),
            "fit_converged": fit.get("converged"),
            "details": json.dumps(self.details),
            "seconds": round(self.seconds, 3),
        }


@dataclass
class RunSummary:
    """The result of :meth:`Pipeline.run`."""

    output_url: str
    items: pd.DataFrame
    n_trials: int
    seconds: float

    @property
    def n_done(self) -> int:
        """Items processed in this run."""
        return int((self.items["status"] == "done").sum())

    @property
    def n_skipped(self) -> int:
        """Items already done with the same inputs and settings."""
        return int((self.items["status"] == "skipped").sum())

    @property
    def n_failed(self) -> int:
        """Items that failed."""
        return int((self.items["status"] == "failed").sum())

    @property
    def failures(self) -> pd.DataFrame:
        """The failed items with their one-line errors."""
        return self.items.loc[self.items["status"] == "failed", ["item_id", "url", "error"]]

    def __str__(self) -> str:
        lines = [
            (
                f"{len(self.items)} item(s): {self.n_done} done, {self.n_skipped} skipped "
                f"(unchanged), {self.n_failed} failed; {self.n_trials} trials; "
                f"{self.seconds:.1f} s"
            ),
            (
                f"outputs in {self.output_url}; what ran and what it used: "
                f"neurobatch provenance {self.output_url}"
            ),
        ]
        lines += [f"  FAILED {row.item_id}: {row.error}" for row in self.failures.itertuples()]
        return "\n".join(lines)


@dataclass
class _ItemJob:
    """Everything one item's task needs; shipped to a worker."""

    item_id: str
    url: str
    fingerprint: str
    format: str
    loader_arguments: dict[str, Any]
    config: PipelineConfig
    hooks: dict[str, Callable[..., Any]]
    output_url: str
    reprocess: bool
    run_id: str
    """Stamped on every commit marker, so that a retried task knows its own run's outputs."""


# --- small I/O helpers -----------------------------------------------------------------------


def _join(url: str, *parts: str) -> str:
    return "/".join([url.rstrip("/"), *parts])


def _write_text(url: str, text: str, storage_options: Mapping[str, Any]) -> None:
    fs, path = fsspec.core.url_to_fs(url, **storage_options)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    fs.pipe_file(path, text.encode())


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return (
        text
        if isinstance(error, ValueError | OSError | KeyError)
        else (f"{type(error).__name__}: {text}")
    )


class _ThreadLog(logging.Handler):
    """Collects the package's log records emitted by one thread (one item, or the driver)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.thread = threading.get_ident()
        self.buffer = io.StringIO()
        self.setFormatter(logging.Formatter(_LOG_FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.buffer.write(self.format(record) + "\n")


@contextmanager
def _captured_log() -> Iterator[_ThreadLog]:
    handler = _ThreadLog()
    if _PACKAGE_LOGGER.level == logging.NOTSET or _PACKAGE_LOGGER.level > logging.INFO:
        _PACKAGE_LOGGER.setLevel(logging.INFO)
    _PACKAGE_LOGGER.addHandler(handler)
    try:
        yield handler
    finally:
        _PACKAGE_LOGGER.removeHandler(handler)


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


# --- one item, on a worker -------------------------------------------------------------------


def _apply_hook(hooks: Mapping[str, Callable[..., Any]], name: str, ds: xr.Dataset) -> xr.Dataset:
    hook = hooks.get(name)
    if hook is None:
        return ds
    logger.info("running hook %s (%s)", name, getattr(hook, "__qualname__", hook))
    result = hook(ds)
    if result is None:
        return ds
    if not isinstance(result, xr.Dataset):
        raise TypeError(
            f"hook {name} returned {type(result).__name__}; expected an xarray.Dataset or None"
        )
    return result


@contextmanager
def _stage(outcome: ItemOutcome, name: str) -> Iterator[None]:
    """Run one stage of an item: noted in ``stages_run``, its span (start, end, worker,
    done or failed) kept for provenance."""
    outcome.stages_run.append(name)
    span = {"stage": name, "start": time.time(), "worker": outcome.worker, "status": "failed"}
    outcome.spans.append(span)
    try:
        yield
        span["status"] = "done"
    finally:
        span["end"] = time.time()


def _passdown(recording: xr.Dataset, keys: Sequence[str], item_id: str) -> dict[str, Any]:
    values = {}
    for key in keys:
        if key not in recording.attrs:
            logger.warning(
                "%s: passdown_metadata %r is not in this recording's metadata (keys: %s); "
                "its column is empty for this item",
                item_id,
                key,
                ", ".join(sorted(recording.attrs)),
            )
        values[key] = recording.attrs.get(key)
    return values


def _persist_policy(job: _ItemJob, scratch_url: str) -> Callable[[xr.Dataset], xr.Dataset]:
    chunk_memory = job.config.engine.chunk_memory
    storage_options = job.config.output.storage_options

    def persist(filtered: xr.Dataset) -> xr.Dataset:
        nbytes = sum(filtered[name].nbytes for name in stages.CHANNELS if name in filtered)
        if nbytes <= IN_MEMORY_CHUNKS * chunk_memory:
            logger.debug("filtered channels (%d bytes) kept in memory for the fit", nbytes)
            return filtered.persist()
        logger.info("filtered channels (%d bytes) go through %s for the fit", nbytes, scratch_url)
        store.write_dataset(
            filtered, scratch_url, chunk_memory=chunk_memory, storage_options=storage_options
        )
        return store.open_dataset(scratch_url, storage_options=storage_options)

    return persist


def _item_url(job: _ItemJob, *parts: str) -> str:
    return _join(job.output_url, "items", job.item_id, *parts)


def _hook_names(job: _ItemJob) -> dict[str, str]:
    return {name: getattr(h, "__qualname__", repr(h)) for name, h in job.hooks.items()}


def _done(
    job: _ItemJob, outcome: ItemOutcome, url: str, key: str, stage: str
) -> dict[str, Any] | None:
    """The commit marker of a stage's output when it carries ``key`` (and no reprocess).

    A stage found done is noted as skipped, unless this same run committed it: then a
    worker finished it but died before handing the item back, Dask reran the item's task,
    and the stage counts as run.
    """
    so = job.config.output.storage_options
    marker = None if job.reprocess else store.read_commit(url, storage_options=so)
    if marker is None or marker.get("key") != key:
        return None
    if marker.get("run") == job.run_id:
        logger.info("%s: committed earlier in this run (by a worker since lost); kept", stage)
        outcome.stages_run.append(stage)
    else:
        outcome.stages_skipped.append(stage)
    return marker


def _commit(job: _ItemJob, url: str, marker: Mapping[str, Any]) -> None:
    """Mark a stage's output complete, stamped with the run that made it.

    Refused for an item abandoned after its timeout: it was recorded as failed.
    """
    if (job.run_id, job.item_id) in _abandoned:
        raise TimeoutError(f"{job.item_id} was abandoned after engine.item_timeout_s")
    store.commit(
        url, {**marker, "run": job.run_id}, storage_options=job.config.output.storage_options
    )


def _ingest(job: _ItemJob, outcome: ItemOutcome) -> tuple[xr.Dataset, str]:
    """The input, whatever its format, becomes the item's Zarr ``recording.zarr``.

    Returns the stored dataset (after the ``post_load`` hook) and the stage key.
    """
    config = job.config
    so = config.output.storage_options
    url = _item_url(job, "recording.zarr")
    key = stage_key(
        "ingest", {"format": job.format, **job.loader_arguments}, upstream=job.fingerprint
    )
    if _done(job, outcome, url, key, "ingest") is None:
        with _stage(outcome, "ingest"):
            logger.info("ingesting %s", job.url)
            recording = load_recording(
                job.url,
                job.loader_arguments,
                format=job.format,
                storage_options=config.input.storage_options,
                chunk_memory=config.engine.chunk_memory,
            )
            # a movie is chunked by frames, which may be large: no minimum chunk length
            dim, minimum = ("time", 4096) if "time" in recording.dims else ("frame", 1)
            store.remove(url, storage_options=so)
            store.write_dataset(
                recording,
                url,
                chunk_memory=config.engine.chunk_memory,
                storage_options=so,
                dim=dim,
                minimum=minimum,
            )
            _commit(job, url, {"key": key, "input": job.url})
    recording = store.open_dataset(url, storage_options=so)
    rate = recording.attrs.get("sampling_rate")
    outcome.sampling_rate = None if rate is None else float(rate)
    recording = _apply_hook(job.hooks, "post_load", recording)
    id_builder = job.hooks.get("id_builder")
    outcome.experiment_id = str(id_builder(recording)) if id_builder else job.item_id
    return recording, key


def _run_photometry(job: _ItemJob, outcome: ItemOutcome) -> None:
    config = job.config
    so = config.output.storage_options
    chunk_memory = config.engine.chunk_memory
    item_url = _item_url(job)
    processed_url = _join(item_url, "preprocessed.zarr")
    trials_url = _join(item_url, "trials.zarr")
    hook_names = _hook_names(job)

    recording, ingest_key = _ingest(job, outcome)
    preprocess_key = stage_key(
        "preprocess",
        {**stage_parameters(config, "preprocess"), "hooks": hook_names},
        upstream=ingest_key,
    )
    trials_key = stage_key(
        "trials",
        {**stage_parameters(config, "trials"), "hooks": hook_names},
        upstream=preprocess_key,
    )

    # preprocess: filter, fit, correct, normalise
    marker = _done(job, outcome, processed_url, preprocess_key, "preprocess")
    if marker is None:
        with _stage(outcome, "preprocess"):
            logger.info(
                "preprocessing (%d samples at %g Hz)",
                recording.sizes["time"],
                outcome.sampling_rate,
            )
            scratch_url = _join(item_url, "filtered.zarr")
            processed = stages.preprocess(
                recording, config.preprocess, persist=_persist_policy(job, scratch_url)
            )
            processed = _apply_hook(job.hooks, "post_preprocess", processed)
            store.remove(processed_url, storage_options=so)
            store.write_dataset(
                processed, processed_url, chunk_memory=chunk_memory, storage_options=so
            )
            store.remove(scratch_url, storage_options=so)
            marker = {"key": preprocess_key, "fit": processed.attrs.get("fit")}
            _commit(job, processed_url, marker)
    outcome.fit = marker.get("fit")
    if outcome.fit:
        logger.info(
            "fit %s: reference = %.6g + %.6g * isosbestic, R² = %.4f",
            outcome.fit["method"],
            outcome.fit["intercept"],
            outcome.fit["slope"],
            outcome.fit["r_squared"],
        )

    trials = None
    if config.trials is not None:
        marker = _done(job, outcome, trials_url, trials_key, "trials")
        if marker is None:
            with _stage(outcome, "trials"):
                processed = store.open_dataset(processed_url, storage_options=so)
                trials, plan = stages.cut_trials(
                    processed,
                    config.trials,
                    item_id=job.item_id,
                    experiment_id=outcome.experiment_id or job.item_id,
                    passdown=_passdown(recording, config.passdown_metadata, job.item_id),
                )
                trials = _apply_hook(job.hooks, "post_trials", trials)
                store.remove(trials_url, storage_options=so)
                trials = trials.compute()
                if trials.sizes["trial"]:
                    store.append_trials(trials, trials_url, storage_options=so)
                dropped = {str(k): v for k, v in plan.dropped.items()}
                n = trials.sizes["trial"]
                marker = {"key": trials_key, "n_trials": n, "dropped": dropped}
                _commit(job, trials_url, marker)
        outcome.n_trials = int(marker["n_trials"])
        outcome.dropped = dict(marker["dropped"])
        outcome.n_dropped = len(outcome.dropped)
        outcome.trials_url = trials_url
        for number, reason in outcome.dropped.items():
            logger.warning("trial candidate %s dropped: %s", number, reason)
        logger.info("%d trials", outcome.n_trials)

    if config.output.dashboards and outcome.stages_run:
        from neurobatch import plots  # matplotlib: imported only when dashboards are asked for

        processed = store.open_dataset(processed_url, storage_options=so)
        if trials is None and outcome.trials_url is not None and outcome.n_trials:
            trials = store.open_trials(outcome.trials_url, storage_options=so)
        path = _join(job.output_url, "dashboards", f"{job.item_id}.{config.output.dashboards}")
        # the title names the experiment and the fit (method, R²): let the dashboard compose it
        processed = processed.assign_attrs(experiment_id=outcome.experiment_id)
        plots.dashboard(processed, trials, path, storage_options=so)
        logger.info("dashboard written to %s", path)


def _run_filter(job: _ItemJob, outcome: ItemOutcome) -> None:
    """Ingest a raw recording, then filter every channel into ``filtered.zarr``."""
    config = job.config
    params = config.filter
    assert params is not None  # the config's cross-checks say so for kind filter
    so = config.output.storage_options
    url = _item_url(job, "filtered.zarr")
    recording, ingest_key = _ingest(job, outcome)
    key = stage_key(
        "filter",
        {**stage_parameters(config, "filter"), "hooks": _hook_names(job)},
        upstream=ingest_key,
    )
    marker = _done(job, outcome, url, key, "filter")
    if marker is None:
        with _stage(outcome, "filter"):
            logger.info(
                "filtering %d channels x %d samples at %g Hz",
                recording.sizes.get("channel", 1),
                recording.sizes["time"],
                outcome.sampling_rate,
            )
            filtered = stages.filter_traces(
                recording, params, chunk_memory=config.engine.chunk_memory
            )
            store.remove(url, storage_options=so)
            store.write_dataset(
                filtered, url, chunk_memory=config.engine.chunk_memory, storage_options=so
            )
            marker = {"key": key, "shape": list(filtered["traces"].shape)}
            _commit(job, url, marker)
    outcome.details = {"filtered_url": url, "shape": marker["shape"]}
    if config.output.dashboards and outcome.stages_run:
        from neurobatch import plots  # matplotlib: imported only when figures are asked for

        path = _join(job.output_url, "dashboards", f"{job.item_id}.{config.output.dashboards}")
        filtered = store.open_dataset(url, storage_options=so)
        plots.trace_snippet(recording, filtered, path, seconds=params.snippet_s, storage_options=so)
        logger.info("filtered-trace figure written to %s", path)


def _run_sta(job: _ItemJob, outcome: ItemOutcome) -> None:
    """Ingest a movie with spikes, then every unit's STA and STRF into ``sta.zarr``."""
    config = job.config
    params = config.sta
    assert params is not None  # the config's cross-checks say so for kind sta
    so = config.output.storage_options
    url = _item_url(job, "sta.zarr")
    movie, ingest_key = _ingest(job, outcome)
    key = stage_key(
        "sta", {**stage_parameters(config, "sta"), "hooks": _hook_names(job)}, upstream=ingest_key
    )
    marker = _done(job, outcome, url, key, "sta")
    if marker is None:
        with _stage(outcome, "sta"):
            logger.info(
                "spike-triggered averages of %d spikes over %d frames, %d lags",
                movie.sizes.get("spike", 0),
                movie.sizes.get("frame", 0),
                params.n_lags,
            )
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", EmptyUnitWarning)
                result = stages.spike_triggered_average(movie, params)
            for warning in caught:
                logger.warning("%s", warning.message)
            store.remove(url, storage_options=so)
            store.write_dataset(
                result,
                url,
                chunk_memory=config.engine.chunk_memory,
                storage_options=so,
                dim="unit",
                minimum=1,
            )
            counts = {
                name: int(result[name].sum())
                for name in ("n_spikes", "n_before", "n_after", "n_too_early")
            }
            marker = {"key": key, "n_units": result.sizes["unit"], **counts}
            _commit(job, url, marker)
    outcome.details = {k: v for k, v in marker.items() if k != "key"} | {"sta_url": url}
    logger.info(
        "%d units; spikes used %d, excluded %d before the movie, %d after it, %d too early "
        "for the window",
        marker["n_units"],
        marker["n_spikes"],
        marker["n_before"],
        marker["n_after"],
        marker["n_too_early"],
    )
    if config.output.dashboards and outcome.stages_run:
        from neurobatch import plots  # matplotlib: imported only when figures are asked for

        result = store.open_dataset(url, storage_options=so)
        folder = _join(job.output_url, "dashboards")
        fmt = config.output.dashboards
        plots.sta_grid(result, _join(folder, f"{job.item_id}.sta.{fmt}"), storage_options=so)
        plots.strf(result["strf"], _join(folder, f"{job.item_id}.strf.{fmt}"), storage_options=so)
        logger.info("STA and STRF figures written to %s", folder)


#: What each kind of pipeline does with an item.
_RUNNERS: dict[str, Callable[[_ItemJob, ItemOutcome], None]] = {
    "photometry": _run_photometry,
    "filter": _run_filter,
    "sta": _run_sta,
}

#: Kinds whose items are larger than a worker: each item's graphs run on the whole cluster.
ON_CLUSTER = frozenset({"filter", "sta"})

#: The "worker" of a stage that ran on the whole cluster.
CLUSTER = "cluster"


def _worker() -> str:
    """The address of the worker this runs on, or :data:`DRIVER` outside one."""
    try:
        return str(get_worker().address)
    except ValueError:
        return DRIVER


def _with_chunk_budget(jobs: list[_ItemJob], client: Client) -> list[_ItemJob]:
    """The jobs with ``engine.chunk_memory`` derived from the workers' memory, unless set.

    The budget follows the smallest memory limit per thread among the workers connected
    now (:meth:`neurobatch.config.EngineConfig.chunk_budget`).
    """
    if not jobs:
        return jobs
    engine = jobs[0].config.engine
    workers = client.scheduler_info()["workers"].values()
    shares = [w["memory_limit"] // max(1, w["nthreads"]) for w in workers if w.get("memory_limit")]
    budget = engine.chunk_budget(min(shares) if shares else None)
    if budget == engine.chunk_memory:
        return jobs
    logger.info("chunk memory %d bytes, from the workers' memory limits", budget)
    config = jobs[0].config.model_copy(
        update={"engine": engine.model_copy(update={"chunk_memory": budget})}
    )
    return [replace(job, config=config) for job in jobs]


#: Items abandoned after their timeout, as (run id, item id): they may not commit.
_abandoned: set[tuple[str, str]] = set()


def process_item(job: _ItemJob) -> ItemOutcome:
    """Run one item's stages; never raises for a problem with the item itself.

    With ``engine.item_timeout_s`` the stages run on a thread of their own, and an item
    that has not finished in time fails with a message. Python cannot stop that thread: it
    is left to end by itself, and anything it would still commit is refused.

    Parameters
    ----------
    job : _ItemJob
        The item and the run's settings.

    Returns
    -------
    ItemOutcome
        ``done`` (something ran), ``skipped`` (everything was already committed with the
        same key) or ``failed`` with the one-line error and the traceback.
    """
    on_cluster = job.config.kind in ON_CLUSTER
    worker = CLUSTER if on_cluster else _worker()
    outcome = ItemOutcome(item_id=job.item_id, url=job.url, worker=worker, host=machine())
    timeout = job.config.engine.item_timeout_s
    if timeout is None:
        return _process(job, outcome, [])
    finished: list[ItemOutcome] = []
    logs: list[_ThreadLog] = []
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
    stage = outcome.stages_run[-1] if outcome.stages_run else "ingest"
    failed = ItemOutcome(
        item_id=job.item_id,
        url=job.url,
        worker=worker,
        host=outcome.host,
        status="failed",
        error=(
            f"{job.url}: still running after {timeout:g} s, in stage {stage} "
            f"(engine.item_timeout_s: {timeout:g}); expected to finish within it"
        ),
        stages_run=list(outcome.stages_run),
        spans=[dict(span) for span in outcome.spans],
        seconds=timeout,
    )
    logger.error("%s failed: %s", job.item_id, failed.error)
    so_far = logs[0].buffer.getvalue() if logs else ""
    secrets = secrets_in(job.config.model_dump())
    _finish_item(job, failed, scrub(so_far + f"{failed.error}\n", secrets), stage)
    return failed


def _process(job: _ItemJob, outcome: ItemOutcome, logs: list[_ThreadLog]) -> ItemOutcome:
    """The body of :func:`process_item`, on the thread that runs the item's stages."""
    on_cluster = job.config.kind in ON_CLUSTER
    secrets = secrets_in(job.config.model_dump())
    start = time.perf_counter()
    # an item of a large kind computes its graphs on the whole cluster; any other item on
    # the thread of the worker that runs it
    with _captured_log() as log, nullcontext() if on_cluster else _synchronous_dask():
        logs.append(log)
        logger.info("item %s from %s", job.item_id, job.url)
        try:
            _RUNNERS[job.config.kind](job, outcome)
        except Exception as error:  # noqa: BLE001 - one item's failure never stops the others
            outcome.status = "failed"
            outcome.error = scrub(_one_line(error), secrets)
            outcome.traceback = scrub(traceback.format_exc(), secrets)
            logger.error("%s failed: %s\n%s", job.item_id, outcome.error, outcome.traceback)
        else:
            outcome.status = "done" if outcome.stages_run else "skipped"
        outcome.seconds = time.perf_counter() - start
        logger.info("item %s %s in %.2f s", job.item_id, outcome.status, outcome.seconds)
    if (job.run_id, job.item_id) not in _abandoned:  # else it was failed and recorded
        stage = outcome.stages_run[-1] if outcome.stages_run else "ingest"
        _finish_item(job, outcome, scrub(log.buffer.getvalue(), secrets), stage)
    return outcome


def _finish_item(job: _ItemJob, outcome: ItemOutcome, log: str, stage: str) -> None:
    """Write the item's log, and its failure marker (or remove an old one)."""
    so = job.config.output.storage_options
    marker = _join(_item_url(job), FAILURE_MARKER)
    try:
        _write_text(_join(job.output_url, "logs", f"{job.item_id}.log"), log, so)
        if outcome.status == "failed":
            failure = {
                "stage": stage,
                "error": outcome.error,
                "run": job.run_id,
                "time": datetime.now(UTC).isoformat(),
            }
            _write_text(marker, json.dumps(failure, indent=2) + "\n", so)
        else:
            fs, path = fsspec.core.url_to_fs(marker, **so)
            with suppress(FileNotFoundError):
                fs.rm_file(path)
    except OSError as error:
        logger.warning("could not write the log or failure marker of %s: %s", job.item_id, error)


# --- the driver ------------------------------------------------------------------------------


class _Hooks(dict[str, Callable[..., Any]]):
    """The run's hooks; they travel to the workers through cloudpickle.

    Dask pickles a task's arguments with the standard pickle first, which stores a function
    by reference; a worker cannot import a hook loaded from a file (or a test module).
    cloudpickle ships those functions by value (see :func:`neurobatch.config.import_object`).
    """

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        return _load_hooks, (cloudpickle.dumps(dict(self)),)


def _load_hooks(payload: bytes) -> _Hooks:
    return _Hooks(cloudpickle.loads(payload))


def _resolve_hooks(
    config: PipelineConfig, overrides: Mapping[str, Callable[..., Any] | None] | None
) -> dict[str, Callable[..., Any]]:
    hooks = _Hooks()
    for name in HOOK_NAMES:
        target = getattr(config.hooks, name)
        if target is not None:
            # a hook from a file is registered to be shipped by value (workers cannot import it)
            hooks[name] = import_object(target)
    for name, hook in (overrides or {}).items():
        if name not in HOOK_NAMES:
            raise NeurobatchError(f"unknown hook {name!r}; expected one of {', '.join(HOOK_NAMES)}")
        if hook is None:
            hooks.pop(name, None)
        else:
            hooks[name] = hook
    return hooks


class _Combiner:
    """Appends finished items' trials to ``OUT/trials.zarr`` in manifest order."""

    def __init__(self, order: Sequence[str], url: str, storage_options: Mapping[str, Any]):
        self.order = list(order)
        self.url = url
        self.storage_options = dict(storage_options)
        self.outcomes: dict[str, ItemOutcome] = {}
        self.next = 0
        self.rel_time: np.ndarray | None = None
        self.grid_item: str | None = None
        self.n_trials = 0
        self.n_items = 0
        self.started: float | None = None
        store.remove(url, storage_options=self.storage_options)

    def add(self, outcome: ItemOutcome) -> None:
        self.outcomes[outcome.item_id] = outcome
        while self.next < len(self.order) and self.order[self.next] in self.outcomes:
            self._append(self.outcomes[self.order[self.next]])
            self.next += 1

    def _append(self, outcome: ItemOutcome) -> None:
        if outcome.status == "failed" or outcome.trials_url is None or not outcome.n_trials:
            return
        if self.started is None:
            self.started = time.time()
        trials = store.open_trials(outcome.trials_url, storage_options=self.storage_options)
        rel_time = trials["rel_time"].to_numpy()
        if self.rel_time is None:
            self.rel_time, self.grid_item = rel_time, outcome.item_id
        elif rel_time.shape != self.rel_time.shape or not np.allclose(
            rel_time, self.rel_time, rtol=0, atol=1e-9
        ):
            logger.warning(
                "%s: its trials (%d points at %g Hz) were resampled onto the common relative "
                "time grid of %s (%d points) by linear interpolation",
                outcome.item_id,
                rel_time.size,
                outcome.sampling_rate,
                self.grid_item,
                self.rel_time.size,
            )
            trials = store.resample_trials(trials, self.rel_time)
        store.append_trials(trials, self.url, storage_options=self.storage_options)
        self.n_trials += outcome.n_trials
        self.n_items += 1


class _Provenance:
    """Appends each finished item's record, and the run's at the end, to processing.json."""

    def __init__(self, config: PipelineConfig, recorder: Recorder) -> None:
        self.config = config
        self.recorder = recorder
        self.outcomes: list[ItemOutcome] = []
        self.hosts: dict[str, dict[str, Any]] = {DRIVER: machine()}
        self.started = time.time()

    def _parameters(self, stage: str, job: _ItemJob | None = None) -> dict[str, Any]:
        config = self.config
        if stage == "combine":
            return config.output.model_dump(mode="json")
        if stage == "ingest" and job is not None:
            return stage_parameters(
                config, "ingest", format=job.format, arguments=job.loader_arguments
            )
        if stage == "ingest":
            return {"input": config.input.model_dump(mode="json")} | stage_parameters(
                config, "ingest"
            )
        return stage_parameters(config, stage)  # type: ignore[arg-type]

    def _build(self, records: list[StageRecord], notes: str | None = None) -> Any:
        samples, _ = self.recorder.poll()
        for record in records:
            if CLUSTER in record.workers:  # every worker that was sampled while it ran
                during = samples[
                    (samples["time"] >= record.start) & (samples["time"] <= record.end)
                ]
                record.workers = sorted(set(during["worker"]) - {DRIVER}) or [DRIVER]
                record.outputs["workers"] = record.workers
        return build_processing(
            records,
            pipeline_name=self.config.name,
            pipeline_parameters=self.config.model_dump(mode="json"),
            samples=samples,
            hosts=self.hosts,
            experimenters=self.config.experimenters,
            notes=notes,
        )

    def item_finished(self, outcome: ItemOutcome, job: _ItemJob, key: str | None) -> None:
        """Append the stages this item ran to ``items/<item>/processing.json``."""
        self.outcomes.append(outcome)
        if outcome.host:
            self.hosts[outcome.worker] = outcome.host
        if not outcome.spans:
            return
        records = []
        for span in outcome.spans:
            stage = span["stage"]
            outputs: dict[str, Any] = {
                "items": {
                    "done": int(span["status"] == "done"),
                    "failed": int(span["status"] == "failed"),
                    "skipped": 0,
                },
                "workers": [span["worker"]],
                "failures": {outcome.item_id: outcome.error} if span["status"] == "failed" else {},
            }
            if key is not None:
                outputs["task"] = key
            if stage == "preprocess" and outcome.fit:
                outputs["fit"] = outcome.fit
            if stage == "trials" and span["status"] == "done":
                outputs["n_trials"] = outcome.n_trials
            records.append(
                StageRecord(
                    stage,
                    span["start"],
                    span["end"],
                    [span["worker"]],
                    self._parameters(stage, job),
                    ITEM_OUTPUTS[stage],
                    outputs,
                    inputs=[job.url] if stage == "ingest" else [],
                )
            )
        url = _join(job.output_url, "items", job.item_id, "processing.json")
        try:
            append_processing(url, self._build(records), storage_options=self._options)
        except Exception as error:  # noqa: BLE001 - one item's record never stops the run
            logger.error("%s: could not write %s: %s", job.item_id, url, _one_line(error))

    @property
    def _options(self) -> dict[str, Any]:
        return self.config.output.storage_options

    def write(self, combiner: _Combiner | None, notes: str | None = None) -> None:
        """Append the run's stages, aggregated over its items, to ``OUT/processing.json``."""
        records = []
        for stage in ITEM_OUTPUTS:
            spans = [(o, span) for o in self.outcomes for span in o.spans if span["stage"] == stage]
            if not spans:
                continue
            failures = {o.item_id: o.error for o, span in spans if span["status"] == "failed"}
            outputs: dict[str, Any] = {
                "items": {
                    "done": len(spans) - len(failures),
                    "failed": len(failures),
                    "skipped": sum(stage in o.stages_skipped for o in self.outcomes),
                },
                "workers": sorted({span["worker"] for _, span in spans}),
                "failures": failures,
            }
            if stage == "trials":
                outputs["n_trials"] = sum(o.n_trials for o, s in spans if s["status"] == "done")
            records.append(
                StageRecord(
                    stage,
                    min(span["start"] for _, span in spans),
                    max(span["end"] for _, span in spans),
                    outputs["workers"],
                    self._parameters(stage),
                    "items",
                    outputs,
                    inputs=[o.url for o, _ in spans] if stage == "ingest" else [],
                )
            )
        if combiner is not None:
            failed = sum(o.status == "failed" for o in self.outcomes)
            outputs = {
                "items": {"done": combiner.n_items, "failed": failed, "skipped": 0},
                "workers": [DRIVER],
                "failures": {},
                "n_trials": combiner.n_trials,
            }
            start = combiner.started or (records[-1].end if records else self.started)
            records.append(
                StageRecord(
                    "combine",
                    start,
                    time.time(),
                    [DRIVER],
                    self._parameters("combine"),
                    "trials.zarr",
                    outputs,
                )
            )
        if records:
            url = _join(self.config.output.url, "processing.json")
            append_processing(url, self._build(records, notes), storage_options=self._options)
            logger.info("provenance appended to %s", url)


class Pipeline:
    """A photometry batch pipeline: one pipeline file, run on a Dask cluster.

    Parameters
    ----------
    config : neurobatch.config.PipelineConfig or mapping
        The validated pipeline file, or a mapping validated into one.

    Examples
    --------
    >>> import tempfile
    >>> from neurobatch import synthetic
    >>> tmp = tempfile.mkdtemp()
    >>> _ = synthetic.write_photometry_batch(f"{tmp}/data", n_items=2, duration_s=120.0, fs=50.0)
    >>> pipeline = Pipeline({
    ...     "name": "doc",
    ...     "input": {"url": f"{tmp}/data", "pattern": "*.csv"},
    ...     "loader": {"format": "photometry-csv", "event_cols": list(synthetic.EVENT_NAMES),
    ...                "annotation": "{stem}.json"},
    ...     "preprocess": {"fit": "ols"},
    ...     "trials": {"align_to": "trial_cue", "bounds_s": [-2, 4]},
    ...     "output": {"url": f"{tmp}/out"},
    ... })
    >>> pipeline.discover()["item_id"].tolist()
    ['experiment_001', 'experiment_002']
    """

    def __init__(self, config: PipelineConfig | Mapping[str, Any]) -> None:
        self.config = (
            config if isinstance(config, PipelineConfig) else PipelineConfig.model_validate(config)
        )

    @classmethod
    def from_file(cls, path: str | Path) -> Pipeline:
        """Read and validate a pipeline file (YAML or TOML).

        Parameters
        ----------
        path : str or pathlib.Path
            The pipeline file.

        Returns
        -------
        Pipeline
        """
        return cls(load_config(path))

    def discover(self) -> pd.DataFrame:
        """The manifest: one row per item (input and loader arguments), sorted.

        Returns
        -------
        pandas.DataFrame
            See :func:`neurobatch.io.discover.discover`.
        """
        return discover(
            self.config.input,
            self.config.loader,
            storage_options=self.config.input.storage_options,
            trials=self.config.trials,
        )

    def run(
        self,
        *,
        client: Client | None = None,
        hooks: Mapping[str, Callable[..., Any] | None] | None = None,
        reprocess: bool = False,
        only: Sequence[str] | None = None,
        progress: bool | None = None,
    ) -> RunSummary:
        """Process every item and combine their trials.

        Parameters
        ----------
        client : distributed.Client, optional
            The cluster to run on; by default one is started from the ``cluster`` section.
        hooks : mapping of str to callable, optional
            ``post_load``, ``id_builder``, ``post_preprocess``, ``post_trials``; each takes
            the item's dataset (``id_builder`` returns the experiment id, the others a
            dataset or None). They override the pipeline file's hooks of the same name.
        reprocess : bool, default False
            Redo every stage of every item, even those already done.
        only : sequence of str, optional
            Process only these item ids.
        progress : bool, optional
            Show a progress bar; by default when stderr is a terminal.

        Returns
        -------
        RunSummary

        Raises
        ------
        neurobatch.errors.ConfigError
            If the manifest is empty or ``only`` names an unknown item.
        RunError
            If every item failed (after writing the logs and the items table).
        """
        config = self.config
        out = config.output.url
        so = config.output.storage_options
        secrets = secrets_in(config.model_dump())
        start = time.perf_counter()
        resolved_hooks = _resolve_hooks(config, hooks)
        with _captured_log() as run_log:
            try:
                discovered = self.discover()
                manifest = self._select(discovered, only)
                # every discovered item (not only those selected), for neurobatch status
                write_manifest(
                    discovered.assign(url=[scrub(url, secrets) for url in discovered["url"]]),
                    out,
                    kind=config.kind,
                    stages=[
                        s
                        for s in KIND_STAGES[config.kind]
                        if s != "trials" or config.trials is not None
                    ],
                    storage_options=so,
                )
                jobs = self._jobs(manifest, resolved_hooks, reprocess, f"{time.time_ns():x}")
                with ExitStack() as stack:
                    if client is None:
                        client = stack.enter_context(connect(config.cluster))
                    jobs = _with_chunk_budget(jobs, client)
                    # the driver's own reads and appends (the combined outputs) compute
                    # locally, not as tasks queued behind the items; set after the client,
                    # which makes itself the default scheduler when it is created
                    stack.enter_context(dask.config.set(scheduler="threads"))
                    provenance = _Provenance(config, stack.enter_context(Recorder(client)))
                    combiner = _Combiner(
                        [job.item_id for job in jobs], _join(out, "trials.zarr"), so
                    )
                    # only photometry items have trials to combine
                    combined = combiner if config.kind == "photometry" else None
                    try:
                        self._submit(client, jobs, combiner, provenance, progress)
                        outcomes = [combiner.outcomes[job.item_id] for job in jobs]
                        summary = self._finish(
                            outcomes, combiner.n_trials, time.perf_counter() - start
                        )
                    except BaseException as error:
                        try:
                            provenance.write(
                                combined,
                                notes=(
                                    f"run interrupted ({type(error).__name__}: {error}) after "
                                    f"{len(provenance.outcomes)} of {len(jobs)} item(s)"
                                ),
                            )
                        except Exception as failure:  # noqa: BLE001 - keep the first error
                            logger.error("could not write the run's provenance: %s", failure)
                        raise
                    provenance.write(combined)
            finally:
                _write_text(
                    _join(out, "logs", "run.log"), scrub(run_log.buffer.getvalue(), secrets), so
                )
        if summary.n_failed == len(summary.items):
            raise RunError(
                f"every item failed ({summary.n_failed}); first error: "
                f"{summary.failures.iloc[0]['item_id']}: {summary.failures.iloc[0]['error']}; "
                f"see {_join(out, 'logs')}",
                summary,
            )
        return summary

    @staticmethod
    def _select(manifest: pd.DataFrame, only: Sequence[str] | None) -> pd.DataFrame:
        if only is None:
            return manifest
        unknown = sorted(set(only) - set(manifest["item_id"]))
        if unknown:
            raise ConfigError(
                f"--only: no item {', '.join(map(repr, unknown))} in the manifest; "
                f"expected one of {', '.join(manifest['item_id'][:10])}"
                + (" ..." if len(manifest) > 10 else "")
            )
        return manifest[manifest["item_id"].isin(only)].reset_index(drop=True)

    def _jobs(
        self,
        manifest: pd.DataFrame,
        hooks: dict[str, Callable[..., Any]],
        reprocess: bool,
        run_id: str,
    ) -> list[_ItemJob]:
        return [
            _ItemJob(
                item_id=str(row["item_id"]),
                url=str(row["url"]),
                fingerprint=str(row["fingerprint"]),
                format=str(row["format"]),
                loader_arguments=dict(row["loader_arguments"]),
                config=self.config,
                hooks=hooks,
                output_url=self.config.output.url,
                reprocess=reprocess,
                run_id=run_id,
            )
            for row in manifest.to_dict("records")
        ]

    def _submit(
        self,
        client: Client,
        jobs: list[_ItemJob],
        combiner: _Combiner,
        provenance: _Provenance,
        progress: bool | None,
    ) -> None:
        config = self.config
        threads = sum(client.nthreads().values()) or 1
        # a task whose workers keep dying is rerun this many times, then fails (KilledWorker)
        retries = config.engine.retries
        client.run_on_scheduler(
            lambda dask_scheduler: setattr(dask_scheduler, "allowed_failures", retries)
        )
        if config.kind in ON_CLUSTER:
            logger.info(
                "%s: %d item(s), one at a time, each on all %d worker thread(s); dashboard %s",
                config.name,
                len(jobs),
                threads,
                client.dashboard_link,
            )
            with dask.config.set(scheduler=client.get), _progress(len(jobs), progress) as advance:
                for job in jobs:
                    finished = process_item(job)
                    if finished.status == "failed":
                        logger.error("%s failed: %s", finished.item_id, finished.error)
                    combiner.add(finished)
                    provenance.item_finished(finished, job, None)
                    advance(finished)
            return
        planned = planned_threads(config.cluster)

        def in_flight_limit() -> int:
            # jobs and pods join while the run goes on: keep twice the threads busy,
            # counting the planned ones so that adaptive clusters see the work to scale to
            now = sum(client.nthreads().values())
            return config.engine.max_in_flight or 2 * max(now, planned or 0, 1)

        logger.info(
            "%s: %d item(s) on %d worker thread(s)%s, at most %d in flight; dashboard %s",
            config.name,
            len(jobs),
            threads,
            f" ({planned} planned)" if planned and planned != threads else "",
            in_flight_limit(),
            client.dashboard_link,
        )
        pending = iter(jobs)
        submitted: dict[Any, _ItemJob] = {}

        def submit_next() -> Future[ItemOutcome] | None:
            job = next(pending, None)
            if job is None:
                return None
            future = client.submit(
                process_item,
                job,
                key=f"item-{job.item_id}-{job.run_id}",
                pure=False,
                retries=config.engine.retries,
            )
            submitted[future.key] = job
            return future

        first = [f for f in (submit_next() for _ in range(in_flight_limit())) if f is not None]
        futures = as_completed(first, loop=client.loop)
        with _progress(len(jobs), progress) as advance:
            for future in futures:
                job = submitted.pop(future.key)
                try:
                    outcome: ItemOutcome = future.result()
                except Exception as error:  # noqa: BLE001 - the task died (e.g. its worker)
                    outcome = ItemOutcome(
                        item_id=job.item_id,
                        url=job.url,
                        status="failed",
                        error=f"the item's task failed: {_one_line(error)}",
                        traceback=traceback.format_exc(),
                    )
                future.release()
                if outcome.status == "failed":
                    logger.error("%s failed: %s", outcome.item_id, outcome.error)
                combiner.add(outcome)
                provenance.item_finished(outcome, job, str(future.key))
                advance(outcome)
                while futures.count() < in_flight_limit():
                    following = submit_next()
                    if following is None:
                        break
                    futures.add(following)

    def _finish(self, outcomes: list[ItemOutcome], n_trials: int, seconds: float) -> RunSummary:
        config = self.config
        out = config.output.url
        so = config.output.storage_options
        items = pd.DataFrame([outcome.row() for outcome in outcomes])
        fs, path = fsspec.core.url_to_fs(_join(out, "items.parquet"), **so)
        with fs.open(path, "wb") as f:
            items.to_parquet(f, index=False)
        trials_url = _join(out, "trials.zarr")
        if n_trials:
            trials = store.open_trials(trials_url, storage_options=so)
            for fmt in ("parquet", "csv"):
                if fmt in config.output.formats:
                    export.write_obs(
                        trials, _join(out, f"trials_obs.{fmt}"), format=fmt, storage_options=so
                    )
            if "h5ad" in config.output.formats:
                export.write_h5ad(trials, _join(out, "trials.h5ad"), storage_options=so)
        run = {
            "name": config.name,
            "neurobatch": version("neurobatch"),
            "n_items": len(items),
            "n_trials": n_trials,
            "seconds": round(seconds, 3),
            "items": [asdict(o) | {"traceback": None} for o in outcomes],
        }
        text = scrub(json.dumps(run, indent=2, default=str), secrets_in(config.model_dump()))
        _write_text(_join(out, "run.json"), text, so)
        summary = RunSummary(output_url=out, items=items, n_trials=n_trials, seconds=seconds)
        logger.info("%s", summary)
        return summary


@contextmanager
def _progress(total: int, enabled: bool | None) -> Iterator[Callable[[ItemOutcome], None]]:
    """A progress bar over items on a terminal (rich); nothing otherwise."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield lambda outcome: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        transient=False,
    ) as bar:
        task = bar.add_task("items", total=total)

        def advance(outcome: ItemOutcome) -> None:
            bar.update(task, advance=1, description=f"{outcome.item_id} {outcome.status}")

        yield advance
