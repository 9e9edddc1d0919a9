"""Reading a ``processing.json`` back and summarising it: one row per data process.

The records are written by :mod:`neurobatch.engine.provenance`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import fsspec
import numpy as np
import numpy.typing as npt
import pandas as pd
import pydantic
from aind_data_schema.core.processing import DataProcess, Processing, ResourceTimestamped

from neurobatch.errors import InputError

__all__ = [
    "read_processing",
    "read_records",
    "salvage_processing",
    "summary",
]

#: The columns of :func:`summary`, in order.
SUMMARY_COLUMNS: tuple[str, ...] = (
    "name",
    "process_type",
    "start",
    "seconds",
    "items_done",
    "items_failed",
    "items_skipped",
    "n_trials",
    "workers",
    "cpu_mean",
    "cpu_max",
    "ram_max",
    "samples",
)


def read_processing(
    url: str, *, storage_options: Mapping[str, Any] | None = None
) -> Processing | None:
    """Read and validate a ``processing.json`` file.

    Parameters
    ----------
    url : str
        The file's URL on any fsspec filesystem, e.g. ``"out/processing.json"`` or
        ``"s3://bucket/out/processing.json"``.
    storage_options : mapping, optional
        Passed to fsspec to open ``url``.

    Returns
    -------
    Processing or None
        The validated record, or ``None`` when the file does not exist.

    Raises
    ------
    InputError
        If the file is not a valid ``Processing`` record; the one-line message names the
        file and the first validation problem.

    See Also
    --------
    summary : one row per data process of the record.

    Examples
    --------
    >>> read_processing("memory://docs/nothing-here/processing.json") is None
    True
    """
    fs, path = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    try:
        raw = fs.cat_file(path)
    except FileNotFoundError:
        return None
    try:
        return Processing.model_validate_json(raw)
    except pydantic.ValidationError as error:
        raise InputError(
            f"{url}: not a valid processing record: {_first_problem(error)}"
        ) from error


#: The suffix of a damaged record moved aside (:func:`neurobatch.engine.provenance.set_aside`):
#: ``processing.json.damaged-<UTC time>``.
DAMAGED_SUFFIX = ".damaged-"


def read_records(
    url: str, *, storage_options: Mapping[str, Any] | None = None
) -> tuple[list[Processing], list[str]]:
    """Everything that can be read of an output folder's provenance, damaged or not.

    Parameters
    ----------
    url : str
        The ``processing.json``, any fsspec URL.
    storage_options : mapping, optional
        For fsspec.

    Returns
    -------
    tuple of (list of Processing, list of str)
        The records, oldest first: the readable processes of each damaged record moved
        aside by an earlier run (``processing.json.damaged-*``), then the record itself (in
        whole, or what :func:`salvage_processing` reads of it); and one line for each
        record read only in part or not at all (which file, what was lost).

    Examples
    --------
    >>> records, problems = read_records("memory://docs/nothing-here/processing.json")
    >>> records, problems
    ([], [])
    """
    fs, path = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    aside = sorted(fs.glob(f"{path}{DAMAGED_SUFFIX}*"))
    records: list[Processing] = []
    problems: list[str] = []
    for name in [*aside, path]:
        shown = url if name == path else f"{url}{name[len(path) :]}"
        try:
            raw = fs.cat_file(name)
        except FileNotFoundError:
            continue
        try:
            records.append(Processing.model_validate_json(raw))
            continue
        except pydantic.ValidationError as error:
            problem = _first_problem(error)
        record, held = salvage_processing(raw)
        kept = 0 if record is None else len(record.data_processes)
        problems.append(
            f"{shown}: not a valid processing record ({problem}); read {kept} of the "
            f"{held} data process(es) it holds before the damage"
        )
        if record is not None:
            records.append(record)
    return records, problems


def salvage_processing(raw: bytes) -> tuple[Processing | None, int]:
    """What can be read of a damaged ``processing.json``: its valid data processes.

    A record that is cut short (a full disk, a killed copy), holds a process that does not
    validate, or is not a record at all still holds its earlier processes: each is read on
    its own, in order, until the text stops parsing.

    Parameters
    ----------
    raw : bytes
        The file's content.

    Returns
    -------
    tuple of (Processing or None, int)
        A record of the processes that validate (its dependency graph limited to them, its
        pipelines and notes when they validate too), or None when none does; and how many
        processes the text held in all, readable or not (those after a cut are not
        counted).

    Examples
    --------
    >>> good = '{"name": "ingest", "process_type": "Other", "stage": "Processing", '
    >>> good += '"experimenters": ["ann"], "code": {"url": "x", "version": "1"}, '
    >>> good += '"start_date_time": "2026-01-01T00:00:00Z"}'
    >>> text = '{"data_processes": [' + good + ', {"name": 1}, ' + good[:40]
    >>> record, held = salvage_processing(text.encode())
    >>> [p.name for p in record.data_processes], held
    (['ingest'], 2)
    """
    text = raw.decode("utf-8", errors="replace")
    decoder = json.JSONDecoder()
    found = text.find('"data_processes"')
    position = text.find("[", found) + 1 if found >= 0 else 0
    entries: list[Any] = []
    while 0 < position < len(text):
        position = len(text) - len(text[position:].lstrip(" \t\r\n,"))
        if text.startswith("]", position):
            break
        try:
            entry, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError:
            break
        entries.append(entry)
    processes = []
    for entry in entries:
        try:
            processes.append(DataProcess.model_validate(entry))
        except pydantic.ValidationError:
            continue
    if not processes:
        return None, len(entries)
    names = {p.name for p in processes}
    rest: dict[str, Any] = {}
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = {}
    graph = whole.get("dependency_graph") if isinstance(whole, dict) else None
    if isinstance(graph, dict):
        rest["dependency_graph"] = {
            name: [u for u in upstream if u in names]
            for name, upstream in graph.items()
            if name in names and isinstance(upstream, list)
        }
    for field in ("pipelines", "notes"):
        if isinstance(whole, dict) and whole.get(field) is not None:
            rest[field] = whole[field]
    try:
        return Processing(data_processes=processes, **rest), len(entries)
    except pydantic.ValidationError:
        return Processing(data_processes=processes), len(entries)


def _first_problem(error: pydantic.ValidationError) -> str:
    """The first problem of a validation error, on one line: ``location: message``."""
    problems = error.errors(include_url=False)
    if not problems:
        return " ".join(str(error).split())
    first = problems[0]
    location = ".".join(str(part) for part in first.get("loc", ()))
    message = " ".join(str(first.get("msg", "")).split())
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"{location}: {message}{more}" if location else f"{message}{more}"


def _usage(points: Sequence[ResourceTimestamped] | None) -> npt.NDArray[np.float64]:
    """The usage values of a sampled series, float64 (empty when it was not sampled)."""
    return np.asarray([p.usage for p in points or ()], dtype=np.float64)


def _row(process: DataProcess) -> dict[str, Any]:
    parameters: dict[str, Any] = (
        process.output_parameters.model_dump() if process.output_parameters is not None else {}
    )
    items = parameters.get("items") or {}
    workers = parameters.get("workers") or []
    n_trials = parameters.get("n_trials")
    start = pd.Timestamp(process.start_date_time).tz_convert("UTC")
    end = process.end_date_time
    seconds = (
        (pd.Timestamp(end).tz_convert("UTC") - start).total_seconds() if end is not None else np.nan
    )
    resources = process.resources
    cpu = _usage(resources.cpu_usage if resources is not None else None)
    ram = _usage(resources.ram_usage if resources is not None else None)
    process_type = process.process_type
    return {
        "name": process.name,
        "process_type": str(getattr(process_type, "value", process_type)),
        "start": start,
        "seconds": float(seconds),
        "items_done": int(items.get("done", 0)),
        "items_failed": int(items.get("failed", 0)),
        "items_skipped": int(items.get("skipped", 0)),
        "n_trials": pd.NA if n_trials is None else int(n_trials),
        "workers": len(workers),
        "cpu_mean": float(cpu.mean()) if cpu.size else np.nan,
        "cpu_max": float(cpu.max()) if cpu.size else np.nan,
        "ram_max": float(ram.max()) if ram.size else np.nan,
        "samples": int(cpu.size),
    }


def summary(processing: Processing) -> pd.DataFrame:
    """Summarise a processing record: one row per data process, in order.

    Parameters
    ----------
    processing : Processing
        The record, e.g. from :func:`read_processing`.

    Returns
    -------
    pandas.DataFrame
        One row per :class:`~aind_data_schema.core.processing.DataProcess`, with columns

        - ``name`` (str) and ``process_type`` (str, the process name's value, e.g.
          ``"Analysis"``);
        - ``start`` (``datetime64[ns, UTC]``): when it started;
        - ``seconds`` (float): how long it ran, NaN when it has no end time;
        - ``items_done``, ``items_failed``, ``items_skipped`` (int): from
          ``output_parameters["items"]``, 0 when absent;
        - ``n_trials`` (``Int64``): from ``output_parameters["n_trials"]``, ``<NA>`` when
          absent;
        - ``workers`` (int): how many workers ran it (``output_parameters["workers"]``);
        - ``cpu_mean``, ``cpu_max``, ``ram_max`` (float, percent): over the sampled
          ``resources.cpu_usage`` and ``resources.ram_usage``, NaN when there are none;
        - ``samples`` (int): how many CPU usage samples were taken.

    See Also
    --------
    read_processing : read the record of an output folder.

    Examples
    --------
    >>> from datetime import datetime, timedelta, timezone
    >>> from aind_data_schema.components.identifiers import Code
    >>> from aind_data_schema.core.processing import (
    ...     DataProcess, ProcessStage, ResourceTimestamped, ResourceUsage)
    >>> from aind_data_schema_models.process_names import ProcessName
    >>> from aind_data_schema_models.units import MemoryUnit
    >>> t0 = datetime(2025, 1, 1, 12, 0, tzinfo=timezone.utc)
    >>> def point(s, usage):
    ...     return ResourceTimestamped(timestamp=t0 + timedelta(seconds=s), usage=usage)
    >>> ingest = DataProcess(
    ...     name="ingest",
    ...     process_type=ProcessName.FILE_FORMAT_CONVERSION,
    ...     stage=ProcessStage.PROCESSING,
    ...     code=Code(url="https://example.org/neurobatch", name="neurobatch.ingest",
    ...               version="0.1.0"),
    ...     experimenters=[],
    ...     start_date_time=t0,
    ...     end_date_time=t0 + timedelta(seconds=4),
    ...     output_parameters={"items": {"done": 3, "failed": 1, "skipped": 0},
    ...                        "workers": ["tcp://127.0.0.1:40001", "tcp://127.0.0.1:40002"]},
    ...     resources=ResourceUsage(
    ...         os="Linux", architecture="x86_64", ram=16.0, ram_unit=MemoryUnit.GB,
    ...         cpu_usage=[point(1, 50.0), point(2, 100.0), point(3, 30.0)],
    ...         ram_usage=[point(1, 20.0), point(2, 25.0), point(3, 22.0)]),
    ... )
    >>> trials = ingest.model_copy(update={
    ...     "name": "trials", "process_type": ProcessName.ANALYSIS,
    ...     "start_date_time": t0 + timedelta(seconds=4), "end_date_time": None,
    ...     "output_parameters": None, "resources": None})
    >>> table = summary(Processing(data_processes=[ingest, trials]))
    >>> table[["name", "seconds", "items_done", "items_failed", "workers", "n_trials"]]
         name  seconds  items_done  items_failed  workers  n_trials
    0  ingest      4.0           3             1        2      <NA>
    1  trials      NaN           0             0        0      <NA>
    >>> table[["cpu_mean", "cpu_max", "ram_max", "samples"]]
       cpu_mean  cpu_max  ram_max  samples
    0      60.0    100.0     25.0        3
    1       NaN      NaN      NaN        0
    >>> table["start"].iloc[1]
    Timestamp('2025-01-01 12:00:04+0000', tz='UTC')
    """
    rows = [_row(process) for process in processing.data_processes]
    table = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    return table.astype(
        {
            "name": object,
            "process_type": object,
            "start": "datetime64[ns, UTC]",
            "seconds": np.float64,
            "items_done": np.int64,
            "items_failed": np.int64,
            "items_skipped": np.int64,
            "n_trials": "Int64",
            "workers": np.int64,
            "cpu_mean": np.float64,
            "cpu_max": np.float64,
            "ram_max": np.float64,
            "samples": np.int64,
        }
    )
