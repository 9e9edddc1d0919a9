"""``processing.json``: what ran, with which code and parameters, when, where, on what.

Every run leaves an AIND ``Processing`` record (``aind-data-schema`` >= 2.9, < 3): the
pipeline as a ``Code``, one ``DataProcess`` per stage that ran with its validated parameters,
times, output path, counts and a ``ResourceUsage`` whose CPU and RAM series were measured
by the :class:`~neurobatch.engine.monitor.ResourceMonitor` on the workers that ran the
stage. ``OUT/processing.json`` covers the run; ``OUT/items/<item>/processing.json`` the
item. A later run appends to both (``Processing.__add__``), never overwrites, and the
record is written whole or not at all, on any fsspec URL. Credentials are redacted.
"""

from __future__ import annotations

import functools
import getpass
import logging
import os
import platform
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import psutil
from aind_data_schema.components.identifiers import Code, DataAsset
from aind_data_schema.core.processing import (
    DataProcess,
    Processing,
    ProcessName,
    ProcessStage,
    ResourceTimestamped,
    ResourceUsage,
)
from aind_data_schema_models.units import MemoryUnit

from neurobatch import __version__
from neurobatch.engine.provenance_summary import DAMAGED_SUFFIX, read_processing
from neurobatch.errors import InputError
from neurobatch.io import files
from neurobatch.redact import environment_secrets, redact, secrets_in

__all__ = [
    "SOURCE_URL",
    "StageRecord",
    "append_processing",
    "build_processing",
    "machine",
    "resource_usage",
    "set_aside",
]

logger = logging.getLogger(__name__)

#: Where neurobatch's code lives (the ``url`` of every ``Code`` in the record).
SOURCE_URL = "https://github.com/neurobatch/neurobatch"

#: Bytes in aind-data-schema's ``MemoryUnit.GB`` ("Gigabyte": SI, 10**9; it has no GiB).
_GB = 10**9


@dataclass
class StageRecord:
    """One stage as it ran in one run (over all its items) or for one item.

    Parameters
    ----------
    stage : str
        The stage's name (``combine`` for the driver's combined outputs).
    start, end : float
        Epoch seconds.
    workers : list of str
        The addresses of the workers that ran it (``"driver"`` for the driver process).
    parameters : dict
        The stage's validated parameters.
    output_path : str
        Where its outputs are, relative to the folder that holds the record.
    outputs : dict
        Counts: ``items`` (``done``, ``failed``, ``skipped``), ``failures`` (item -> one-line
        error), ``n_trials`` where trials are made.
    inputs : list of str
        The input URLs it read (ingest).
    process : str
        Its AIND process name (a ``ProcessName`` value).
    processing_stage : {"Processing", "Analysis"}
        Its AIND processing stage.
    upstream : list of str
        The stages whose outputs it read.
    version : str, optional
        Its code's version; neurobatch's by default.
    """

    stage: str
    start: float
    end: float
    workers: list[str]
    parameters: dict[str, Any]
    output_path: str
    outputs: dict[str, Any] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)
    process: str = "Analysis"
    processing_stage: str = "Analysis"
    upstream: list[str] = field(default_factory=list)
    version: str | None = None


@functools.cache
def machine() -> dict[str, Any]:
    """This machine: operating system, architecture, CPU model, cores and memory.

    Returns
    -------
    dict
        ``host`` (its name), ``os``, ``architecture``, ``cpu``, ``cpu_cores`` and
        ``system_memory`` (bytes).

    Examples
    --------
    >>> sorted(machine())
    ['architecture', 'cpu', 'cpu_cores', 'host', 'os', 'system_memory']
    """
    return {
        "host": platform.node(),
        "os": platform.platform(),
        "architecture": platform.machine(),
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "system_memory": psutil.virtual_memory().total,
    }


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _timestamp(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch).astimezone()


def resource_usage(
    samples: pd.DataFrame,
    workers: Sequence[str],
    start: float,
    end: float,
    hosts: Mapping[str, Mapping[str, Any]],
) -> ResourceUsage | None:
    """The resources the given workers used between ``start`` and ``end``.

    Parameters
    ----------
    samples : pandas.DataFrame
        The monitor's samples (:data:`neurobatch.engine.monitor.SAMPLE_COLUMNS`).
    workers : sequence of str
        The workers that ran the stage.
    start, end : float
        The stage's span, epoch seconds.
    hosts : mapping
        Worker address -> :func:`machine` of its host.

    Returns
    -------
    aind_data_schema.core.processing.ResourceUsage or None
        The hosts' description; ``cpu_cores`` the workers' threads, ``ram`` their memory
        limits together; at each sample time within the span ``cpu_usage`` is the CPU the
        workers used as a percent of their threads and ``ram_usage`` their memory as a
        percent of their limits (of their host's memory where unlimited). None when no
        sample of these workers exists. A span shorter than the sampling interval gets the
        first sample after it starts.

    Examples
    --------
    >>> samples = pd.DataFrame({"time": [0.0, 0.0, 0.5, 0.5], "worker": ["a", "b"] * 2,
    ...     "cpu": [100.0, 0.0, 50.0, 50.0], "memory": [1e9, 1e9, 2e9, 2e9],
    ...     "memory_limit": [4e9] * 4, "nthreads": [1, 1, 1, 1]})
    >>> usage = resource_usage(samples, ["a", "b"], 0.0, 0.5, {"a": machine(), "b": machine()})
    >>> [u.usage for u in usage.cpu_usage], [u.usage for u in usage.ram_usage]
    ([50.0, 50.0], [25.0, 50.0])
    """
    # plain NumPy (no DataFrame indexing): this runs for every stage of every item, on the
    # driver
    times = samples["time"].to_numpy(dtype=float)
    theirs = np.isin(samples["worker"].to_numpy(), list(workers))
    if not theirs.any():
        return None
    inside = theirs & (times >= start) & (times <= end)
    if not inside.any():
        later = times[theirs & (times >= start)]
        nearest = later.min() if later.size else times[theirs].max()
        inside = theirs & (times == nearest)

    def column(name: str) -> Any:
        return samples[name].to_numpy()[inside]

    host_memory = {w: float(hosts.get(w, {}).get("system_memory") or np.nan) for w in workers}
    memory_limit = column("memory_limit").astype(float)
    workers_of_rows = column("worker")
    unlimited = np.array([host_memory.get(w, np.nan) for w in workers_of_rows], dtype=float)
    limit = np.where(memory_limit > 0, memory_limit, unlimited)
    row_times = times[inside]
    tick_times, tick = np.unique(row_times, return_inverse=True)

    def per_tick(values: Any) -> Any:
        return np.bincount(tick, weights=np.asarray(values, dtype=float))

    nthreads = column("nthreads").astype(float)
    cpu = per_tick(column("cpu")) / per_tick(nthreads)  # psutil's percent: 100 per busy core
    # as pandas sums: missing figures are skipped, a tick with none at all has no value
    ram = np.where(
        per_tick(np.isfinite(limit)) > 0,
        100
        * per_tick(np.nan_to_num(column("memory").astype(float)))
        / per_tick(np.nan_to_num(limit)),
        np.nan,
    )
    # each worker's last sample (its threads, its memory limit)
    order = np.argsort(row_times, kind="stable")
    last = np.array(list(dict(zip(workers_of_rows[order], order, strict=True)).values()))
    described = [hosts[w] for w in workers if w in hosts] or [machine()]
    distinct = {h["host"]: h for h in described}  # one description per host
    return ResourceUsage(
        os="; ".join(sorted({h["os"] for h in described})),
        architecture="; ".join(sorted({h["architecture"] for h in described})),
        cpu="; ".join(sorted({h["cpu"] for h in described if h.get("cpu")})) or None,
        cpu_cores=int(nthreads[last].sum()),
        system_memory=round(sum(h["system_memory"] for h in distinct.values()) / _GB, 3),
        system_memory_unit=MemoryUnit.GB,
        ram=round(float(np.nansum(limit[last])) / _GB, 3),
        ram_unit=MemoryUnit.GB,
        cpu_usage=[
            ResourceTimestamped(timestamp=_timestamp(float(t)), usage=round(float(v), 2))
            for t, v in zip(tick_times, cpu, strict=True)
        ],
        ram_usage=[
            ResourceTimestamped(timestamp=_timestamp(float(t)), usage=round(float(v), 2))
            for t, v in zip(tick_times, ram, strict=True)
            if np.isfinite(v)
        ],
    )


def _code(
    name: str,
    parameters: Mapping[str, Any],
    inputs: Sequence[str] = (),
    code_version: str | None = None,
    secrets: Iterable[str] = (),
) -> Code:
    return Code(
        url=SOURCE_URL,
        name=name,
        version=code_version or __version__,
        language="Python",
        language_version=platform.python_version(),
        parameters=redact(dict(parameters), secrets=secrets),
        input_data=[DataAsset(url=redact(url, secrets=secrets)) for url in inputs] or None,
    )


def build_processing(
    records: Sequence[StageRecord],
    *,
    pipeline_name: str,
    pipeline_parameters: Mapping[str, Any],
    samples: pd.DataFrame,
    hosts: Mapping[str, Mapping[str, Any]],
    experimenters: Sequence[str] = (),
    notes: str | None = None,
) -> Processing:
    """The record of one run (or of one item in a run).

    Parameters
    ----------
    records : sequence of StageRecord
        The stages that ran, in order.
    pipeline_name : str
        The pipeline file's ``name``.
    pipeline_parameters : mapping
        The whole validated pipeline file. Its credentials, and the environment's, are
        hidden wherever they appear in the record (:func:`neurobatch.redact.redact`).
    samples : pandas.DataFrame
        The monitor's samples over the run.
    hosts : mapping
        Worker address -> :func:`machine` of its host.
    experimenters : sequence of str, optional
        The people responsible; by default the user running neurobatch.
    notes : str, optional
        Said of the whole run (e.g. that it was interrupted).

    Returns
    -------
    aind_data_schema.core.processing.Processing
        Validated; ``dependency_graph`` links each stage to its upstream stage when that
        ran too (:func:`append_processing` links it to an earlier run's otherwise).

    Examples
    --------
    >>> import time
    >>> now = time.time()
    >>> record = StageRecord("combine", now, now + 1, ["driver"], {"formats": ["zarr"]},
    ...                      "trials.zarr", {"items": {"done": 2, "failed": 0, "skipped": 0}})
    >>> processing = build_processing([record], pipeline_name="demo", pipeline_parameters={},
    ...                               samples=pd.DataFrame(), hosts={}, experimenters=["ann"])
    >>> processing.data_processes[0].name, processing.dependency_graph
    ('combine', {'combine': []})
    """
    people = list(experimenters) or [getpass.getuser()]
    secrets = secrets_in(dict(pipeline_parameters)) | environment_secrets()
    processes = []
    for record in records:
        processes.append(
            DataProcess(
                process_type=ProcessName(record.process),
                name=record.stage,
                stage=ProcessStage(record.processing_stage),
                code=_code(
                    f"neurobatch.{record.stage}",
                    record.parameters,
                    record.inputs,
                    record.version,
                    secrets,
                ),
                experimenters=people,
                pipeline_name=pipeline_name,
                start_date_time=_timestamp(record.start),
                end_date_time=_timestamp(record.end),
                output_path=record.output_path,
                output_parameters=redact(record.outputs, secrets=secrets),
                resources=(
                    resource_usage(samples, record.workers, record.start, record.end, hosts)
                    if len(samples)
                    else None
                ),
            )
        )
    names = {r.stage for r in records}
    graph = {r.stage: [u for u in r.upstream if u in names] for r in records}
    return Processing(
        data_processes=processes,
        pipelines=[_code(pipeline_name, pipeline_parameters, secrets=secrets)],
        dependency_graph=graph,
        notes=None if notes is None else redact(notes, secrets=secrets),
    )


def _stage_of(process: DataProcess) -> str:
    name = process.code.name or process.name
    return name.removeprefix("neurobatch.")


def _unique(name: str, taken: set[str]) -> str:
    """AIND's renaming of a repeated process: ``trials`` -> ``trials_1`` -> ``trials_2``."""
    base, candidate, number = re.sub(r"_\d+$", "", name), name, 1
    while candidate in taken:
        candidate, number = f"{base}_{number}", number + 1
    return candidate


def set_aside(url: str, *, storage_options: Mapping[str, Any] | None = None) -> str:
    """Move a damaged record out of the way, beside itself, and return where it went.

    Parameters
    ----------
    url : str
        The record, any fsspec URL.
    storage_options : mapping, optional
        For fsspec.

    Returns
    -------
    str
        ``<url>.damaged-<UTC time>`` (``YYYYmmddTHHMMSSffffffZ``).

    Examples
    --------
    >>> import tempfile
    >>> url = f"{tempfile.mkdtemp()}/processing.json"
    >>> _ = open(url, "w").write("{cut sh")
    >>> aside = set_aside(url)
    >>> os.path.exists(url), open(aside).read(), DAMAGED_SUFFIX in aside
    (False, '{cut sh', True)
    """
    fs, path = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    fs.mv(path, f"{path}{DAMAGED_SUFFIX}{stamp}")
    return f"{url}{DAMAGED_SUFFIX}{stamp}"


def append_processing(
    url: str,
    processing: Processing,
    *,
    upstream: Mapping[str, Sequence[str]] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Processing:
    """Add a run's processes to the record at ``url`` and write it atomically.

    The earlier record's entries are kept as they are. A record that cannot be read (cut
    short, edited by hand) is moved aside (:func:`set_aside`) with a warning, and a new one
    is started: ``neurobatch provenance`` still reads what it can of the old one. A repeated stage is renamed the way
    ``Processing.__add__`` does (``trials`` -> ``trials_1``), and each new process depends on
    its upstream stages from this run or, for one that did not run (its output was
    reused), on the latest earlier process of that stage.

    Parameters
    ----------
    url : str
        The ``processing.json`` to extend (created when missing), any fsspec URL.
    processing : aind_data_schema.core.processing.Processing
        The new run's record (:func:`build_processing`).
    upstream : mapping of str to sequence of str, optional
        Each stage's upstream stages (by default those in ``processing``'s graph).
    storage_options : mapping, optional
        For fsspec.

    Returns
    -------
    aind_data_schema.core.processing.Processing
        What was written.

    Examples
    --------
    >>> import tempfile, time
    >>> url = f"{tempfile.mkdtemp()}/processing.json"
    >>> def run(*stages):
    ...     now = time.time()
    ...     return build_processing(
    ...         [StageRecord(s, now, now + 1, [], {}, "items", upstream=list(UPSTREAM[s]))
    ...          for s in stages],
    ...         pipeline_name="demo", pipeline_parameters={}, samples=pd.DataFrame(), hosts={},
    ...         experimenters=["ann"])
    >>> UPSTREAM = {"ingest": [], "preprocess": ["ingest"], "trials": ["preprocess"]}
    >>> _ = append_processing(url, run("ingest", "preprocess", "trials"), upstream=UPSTREAM)
    >>> append_processing(url, run("trials"), upstream=UPSTREAM).dependency_graph
    {'ingest': [], 'preprocess': ['ingest'], 'trials': ['preprocess'], 'trials_1': ['preprocess']}
    """
    so = dict(storage_options or {})
    try:
        existing = read_processing(url, storage_options=so)
    except InputError as error:
        aside = set_aside(url, storage_options=so)
        logger.warning("%s; moved it to %s and started a new record", error, aside)
        existing = None
    if existing is None:
        merged = processing
    else:
        new = processing.model_copy(deep=True)
        taken = set(existing.process_names)
        renames: dict[str, str] = {}
        for process in new.data_processes:
            renames[process.name] = _unique(process.name, taken)
            taken.add(renames[process.name])
        for old, name in renames.items():
            if old != name:
                new.rename_process(old, name)
        links = dict(upstream or processing.dependency_graph or {})
        latest = {_stage_of(p): p.name for p in existing.data_processes}  # ordered by start
        latest |= {_stage_of(p): p.name for p in new.data_processes}
        graph = {}
        for process in new.data_processes:
            before = links.get(_stage_of(process), [])
            graph[process.name] = [latest[name] for name in before if name in latest]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # repeated names: renamed above
            merged = existing + new
        merged.dependency_graph = {**(merged.dependency_graph or {}), **graph}
        pipelines = {p.model_dump_json(): p for p in merged.pipelines or []}
        merged.pipelines = list(pipelines.values()) or None
        merged = Processing.model_validate(merged.model_dump())
    files.write_text(url, merged.model_dump_json(indent=2), storage_options=so)
    return merged
