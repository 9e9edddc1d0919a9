"""The catalog: one DuckDB database of an output folder's tables, for SQL (``OUT/catalog.duckdb``).

Built from what is committed under OUT, never from a run's memory, so that
``neurobatch catalog OUT`` rebuilds the same database the run left:

=============  ==================================================  ==========================
table          one row per                                         key
=============  ==================================================  ==========================
``subject``    subject named by an item's metadata (``subject``)   ``subject_id``
``session``    session named by an item's metadata (``session``)   ``session_id``
``item``       item of ``manifest.parquet``                        ``item_id``
``stage_run``  stage of each item, with its state and record       ``(item_id, stage)``
``trial``      row of the obs table, plus per-trial summaries      ``(item_id, trial_num)``
``unit``       unit of each item's committed STA (kind ``sta``)    ``(item_id, unit)``
=============  ==================================================  ==========================

The keys are PRIMARY KEYs and the ``item_id`` (``subject_id``, ``session_id``) columns
FOREIGN KEYs, which DuckDB enforces as the rows go in. The metadata come from the
attributes of each item's first stage (the loader's, with its sidecar): ``subject`` and
``session`` name the rows; ``sex``, ``species``, ``genotype``, ``strain`` and
``date_of_birth`` go to the subject (the first item's value), ``age`` and
``session_start_time`` to the session. A ``session_id`` is ``<subject>/<session>`` when the
subject is known (the same session name under two subjects is two sessions), else the
session's name; the plain name is the column ``session``.

``trial`` is the obs table (``trials_obs.parquet``, or the per-trial columns of
``trials.zarr`` when the run wrote no Parquet) with, for each signal variable ``<var>`` of
``trials.zarr`` (``dff``, ...), ``peak_<var>`` (its largest value over ``rel_time``) and
``mean_<var>`` (its mean), missing values skipped. ``unit`` holds each unit's spike counts
and the strength of its STA: ``sta_peak`` is the largest absolute deviation of
``sta(lag, y, x)`` from its own mean, ``sta_z`` that deviation over the STA's standard
deviation (a z-like ratio: large for a localised receptive field, about 3 to 4 for noise),
and ``peak_lag``, ``peak_y``, ``peak_x`` where it lies. Missing numbers are SQL NULL.

Memory is bounded: the obs table and the windows are read in blocks of trials
(:data:`_BLOCK_MEMORY`), the STAs in blocks of units, never whole. The database is built
aside (a temporary file beside it, or a local one for an object store) and moved in whole
(uploaded in one PUT): a query from another process sees the old catalog or the new one,
never a part, and never waits on DuckDB's lock. Queries: :mod:`neurobatch.engine.catalog_query`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import xarray as xr
from fsspec.implementations.local import LocalFileSystem

from neurobatch.engine.catalog_query import TABLES
from neurobatch.engine.layout import ITEMS_TABLE, TRIALS, OutputLayout
from neurobatch.engine.ledger import _read_all, item_states, read_manifest, read_records
from neurobatch.errors import InputError
from neurobatch.io import files
from neurobatch.io.export import trials_obs
from neurobatch.io.trials_store import REL_TIME, TRIAL_DIM, open_trials
from neurobatch.io.zarr import damage_reported, open_dataset, zarr_store

logger = logging.getLogger(__name__)

__all__ = ["TABLES", "build_catalog", "refresh_catalog", "sta_strength"]

_OBS_TABLE = "trials_obs.parquet"
"""The obs table the combiner writes (``output.formats`` with ``parquet``)."""

_TRIAL_KEYS = "PRIMARY KEY (item_id, trial_num), FOREIGN KEY (item_id) REFERENCES item (item_id)"
_NO_TRIALS = f"CREATE TABLE trial (item_id VARCHAR, trial_num BIGINT, {_TRIAL_KEYS})"
"""The ``trial`` table of an output folder without trials (the filter and sta kinds)."""

_BLOCK_MEMORY = 32 * 2**20
"""Bytes of windows (or STAs) read at once while the catalog is built."""

_SUBJECT_FIELDS = ("sex", "species", "genotype", "strain", "date_of_birth")
_SESSION_FIELDS = ("age", "session_start_time")
_RECORD_FIELDS = ("stage", "key", "run", "parts", "sources", "stored", "arrays")
"""Fields of a commit record that the ``stage_run`` table has as columns (or leaves out);
the others, the stage's own (``n_trials``, ``dropped``...), go to ``details``."""


# --- building --------------------------------------------------------------------------------


def build_catalog(layout: OutputLayout) -> dict[str, int]:
    """Build ``OUT/catalog.duckdb`` from what is committed under OUT, and move it in whole.

    Parameters
    ----------
    layout : OutputLayout
        The output folder of a run (any fsspec URL, with its storage options).

    Returns
    -------
    dict of str to int
        The rows of each table of :data:`TABLES`.

    Raises
    ------
    neurobatch.errors.InputNotFoundError
        If OUT holds no ``manifest.parquet`` (no run wrote there).
    neurobatch.errors.StorageError
        If what it holds, or the catalog, cannot be read or written (after the retries).

    Examples
    --------
    >>> from neurobatch.engine.catalog_query import query
    >>> from neurobatch.engine.ledger import write_manifest
    >>> out = tempfile.mkdtemp()
    >>> items = pd.DataFrame({"item_id": ["a"], "url": ["a.csv"], "fingerprint": ["f"],
    ...                       "format": ["photometry-csv"]})
    >>> _ = write_manifest(items, out, kind="photometry", stages=["ingest"])
    >>> build_catalog(OutputLayout(out))
    {'subject': 0, 'session': 0, 'item': 1, 'stage_run': 1, 'trial': 0, 'unit': 0}
    >>> query(OutputLayout(out), "SELECT item_id, stage, state FROM stage_run")
      item_id   stage    state
    0       a  ingest  pending
    """
    import duckdb

    fs, final = fsspec.core.url_to_fs(layout.catalog, **dict(layout.storage_options))
    local = isinstance(fs, LocalFileSystem)
    if local:
        os.makedirs(os.path.dirname(final), exist_ok=True)
        folder = os.path.dirname(final)
    else:
        folder = None  # the system's temporary folder, then one upload
    handle, aside = tempfile.mkstemp(prefix=".catalog-", suffix=".duckdb.tmp", dir=folder)
    os.close(handle)
    os.remove(aside)  # DuckDB makes its own file: an empty one is not a database
    try:
        with duckdb.connect(aside) as con:
            counts = _fill(con, layout)
            con.execute("CHECKPOINT")
        if local:
            os.replace(aside, final)
        else:
            with files.translated(layout.catalog, action="writing"):
                files.retried(
                    lambda: fs.put_file(aside, final), url=layout.catalog, action="writing"
                )
    finally:
        for path in (aside, f"{aside}.wal"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
    logger.debug("catalog %s: %s", layout.catalog, counts)
    return counts


def refresh_catalog(layout: OutputLayout) -> None:
    """Rebuild the catalog after a run; a failure is one warning, never the run's.

    Parameters
    ----------
    layout : OutputLayout
        The output folder.

    Examples
    --------
    >>> refresh_catalog(OutputLayout(tempfile.mkdtemp()))  # no run there: a warning only
    """
    try:
        build_catalog(layout)
    except Exception as error:  # noqa: BLE001 - the catalog can be rebuilt: neurobatch catalog
        logger.warning(
            "the catalog %s was not rebuilt (%s); rebuild it with: neurobatch catalog %s",
            layout.catalog,
            " ".join(str(error).split()),
            layout.url,
        )


def _fill(con: Any, layout: OutputLayout) -> dict[str, int]:
    so = dict(layout.storage_options)
    manifest = read_manifest(layout.url, storage_options=so)
    stages = list(manifest.attrs["stages"])
    ids = list(manifest["item_id"])
    records = read_records(layout, ids, stages)
    states = item_states(layout.url, so).set_index("item_id")
    attrs = _item_attrs(layout, ids, stages[0], records) if stages else {}
    subjects, sessions, item_keys = _people(ids, attrs)
    _create(con, "subject", subjects, "PRIMARY KEY (subject_id)")
    _create(
        con,
        "session",
        sessions,
        "PRIMARY KEY (session_id), FOREIGN KEY (subject_id) REFERENCES subject (subject_id)",
    )
    _create(
        con,
        "item",
        _items(layout, manifest, states, item_keys, attrs),
        "PRIMARY KEY (item_id), "
        "FOREIGN KEY (subject_id) REFERENCES subject (subject_id), "
        "FOREIGN KEY (session_id) REFERENCES session (session_id)",
    )
    _create(
        con,
        "stage_run",
        _stage_runs(ids, stages, records, states),
        "PRIMARY KEY (item_id, stage), FOREIGN KEY (item_id) REFERENCES item (item_id)",
    )
    _trials(con, layout)
    units = [item for item in ids if (item, "sta") in records]
    _units(con, layout, units)
    return {
        table: int(con.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]) for table in TABLES
    }


def _create(con: Any, name: str, table: pd.DataFrame | pa.Table, keys: str) -> None:
    """A table of ``table``'s columns and types, with the given key constraints, filled."""
    arrow = table if isinstance(table, pa.Table) else _arrow(table)
    con.execute(f"CREATE TABLE {name} ({_columns(con, arrow)}, {keys})")
    con.register("rows", arrow)
    con.execute(f"INSERT INTO {name} SELECT * FROM rows")
    con.unregister("rows")


def _columns(con: Any, arrow: pa.Table) -> str:
    """The SQL column definitions of an Arrow table, as DuckDB reads its types."""
    con.register("shape", arrow.slice(0, 0))
    described = con.execute("DESCRIBE SELECT * FROM shape").fetchall()
    con.unregister("shape")
    return ", ".join(f'"{name}" {sql_type}' for name, sql_type, *_ in described)


def _arrow(table: pd.DataFrame) -> pa.Table:
    """A DataFrame as Arrow, NaN as null (SQL's missing value); object columns of mixed
    types (an ``age`` of 65 here and ``P90D`` there) as strings."""
    table = table.copy()
    for name in table.columns:
        column = table[name]
        if column.dtype == object:
            kinds = {type(v) for v in column if not _missing(v)}
            if len(kinds) > 1 or kinds & {dict, list}:
                table[name] = [
                    None if _missing(v) else v if isinstance(v, str) else json.dumps(v, default=str)
                    for v in column
                ]
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    for i, field in enumerate(arrow.schema):  # an empty or all-missing column: text
        if pa.types.is_null(field.type):
            arrow = arrow.set_column(i, field.name, arrow.column(i).cast(pa.string()))
    return arrow


def _item_attrs(
    layout: OutputLayout,
    ids: Sequence[str],
    stage: str,
    records: Mapping[tuple[str, str], Any],
) -> dict[str, dict[str, Any]]:
    """The attributes of each item's first stage (the loader's metadata), read in one batch:
    ``zarr.json`` (Zarr 3) or ``.zattrs`` (Zarr 2)."""
    fs, _ = fsspec.core.url_to_fs(layout.url, **dict(layout.storage_options))
    committed = [item for item in ids if (item, stage) in records]
    paths = {
        str(fs._strip_protocol(f"{layout.stage(item, stage)}/{name}")): item
        for item in committed
        for name in ("zarr.json", ".zattrs")
    }
    found = _read_all(fs, list(paths), layout.path("items"))
    attrs: dict[str, dict[str, Any]] = {}
    for path, document in found.items():
        value = document.get("attributes", {}) if path.endswith("zarr.json") else document
        if isinstance(value, dict):
            attrs.setdefault(paths[path], {}).update(value)
    return attrs


def _missing(value: Any) -> bool:
    """None or NaN."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _text(value: Any) -> str | None:
    return None if _missing(value) or value == "" else str(value)


def _people(
    ids: Sequence[str], attrs: Mapping[str, Mapping[str, Any]]
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, tuple[str | None, str | None]]]:
    """The subject and session tables, and each item's (subject_id, session_id)."""
    subjects: dict[str, dict[str, Any]] = {}
    sessions: dict[str, dict[str, Any]] = {}
    keys: dict[str, tuple[str | None, str | None]] = {}
    for item in ids:
        meta = attrs.get(item, {})
        subject, name = _text(meta.get("subject")), _text(meta.get("session"))
        if subject is not None:
            row = subjects.setdefault(subject, {"subject_id": subject, "n_items": 0})
            row["n_items"] += 1
            for field in _SUBJECT_FIELDS:
                if row.get(field) is None and meta.get(field) is not None:
                    row[field] = meta[field]
        session = None if name is None else (f"{subject}/{name}" if subject else name)
        if session is not None:
            row = sessions.setdefault(
                session,
                {"session_id": session, "subject_id": subject, "session": name, "n_items": 0},
            )
            row["n_items"] += 1
            for field in _SESSION_FIELDS:
                if row.get(field) is None and meta.get(field) is not None:
                    row[field] = meta[field]
        keys[item] = (subject, session)
    subject_table = pd.DataFrame(
        list(subjects.values()),
        columns=["subject_id", *[f for f in _SUBJECT_FIELDS if _any(subjects, f)], "n_items"],
    )
    session_table = pd.DataFrame(
        list(sessions.values()),
        columns=[
            "session_id",
            "subject_id",
            "session",
            *[f for f in _SESSION_FIELDS if _any(sessions, f)],
            "n_items",
        ],
    )
    for table in (subject_table, session_table):
        for name in ("subject_id", "session_id", "session"):
            if name in table:
                table[name] = table[name].astype(object)
    return subject_table, session_table, keys


def _any(rows: Mapping[str, Mapping[str, Any]], field: str) -> bool:
    return any(row.get(field) is not None for row in rows.values())


def _items(
    layout: OutputLayout,
    manifest: pd.DataFrame,
    states: pd.DataFrame,
    keys: Mapping[str, tuple[str | None, str | None]],
    attrs: Mapping[str, Mapping[str, Any]],
) -> pd.DataFrame:
    """One row per item of the manifest: its input, subject and session, ledger state, its
    row of ``items.parquet`` (the outcome of the run that last touched it) and metadata."""
    ids = list(manifest["item_id"])
    table = manifest.assign(
        subject_id=pd.Series([keys[i][0] for i in ids], dtype=object),
        session_id=pd.Series([keys[i][1] for i in ids], dtype=object),
        state=states.loc[ids, "status"].to_numpy(),
    )
    try:
        with files.translated(layout.combined(ITEMS_TABLE), action="reading"):
            outcomes = files.retried(
                lambda: pd.read_parquet(
                    layout.combined(ITEMS_TABLE), storage_options=dict(layout.storage_options)
                ),
                url=layout.combined(ITEMS_TABLE),
                action="reading",
            )
    except FileNotFoundError:
        outcomes = pd.DataFrame({"item_id": pd.Series([], dtype=object)})
    extra = [c for c in outcomes.columns if c not in table.columns]
    table = table.merge(outcomes[["item_id", *extra]], on="item_id", how="left")
    metadata = [json.dumps(dict(attrs[i]), default=str) if i in attrs else None for i in ids]
    return table.assign(metadata=pd.Series(metadata, dtype=object))


def _stage_runs(
    ids: Sequence[str],
    stages: Sequence[str],
    records: Mapping[tuple[str, str], Mapping[str, Any]],
    states: pd.DataFrame,
) -> pd.DataFrame:
    """One row per (item, stage): its state, the commit record's key, run and stored bytes,
    and the stage's own record (``details``, JSON)."""
    rows = []
    for item in ids:
        for stage in stages:
            state = str(states.at[item, stage])
            record = records.get((item, stage)) or {}
            run = record.get("run")
            arrays = record.get("arrays") or {}
            details = {k: v for k, v in record.items() if k not in _RECORD_FIELDS}
            rows.append(
                {
                    "item_id": item,
                    "stage": stage,
                    "state": state,
                    "key": record.get("key"),
                    "run_id": run,
                    "run_started": _run_time(run),
                    "stored_bytes": sum(int(a.get("stored_bytes", 0)) for a in arrays.values())
                    if arrays
                    else None,
                    "error": states.at[item, "error"] if state == "failed" else None,
                    "details": json.dumps(details, default=str) if record else None,
                }
            )
    table = pd.DataFrame(
        rows,
        columns=[
            "item_id",
            "stage",
            "state",
            "key",
            "run_id",
            "run_started",
            "stored_bytes",
            "error",
            "details",
        ],
    )
    table["run_started"] = pd.to_datetime(table["run_started"], utc=True)
    table["stored_bytes"] = table["stored_bytes"].astype("Int64")
    for name in ("item_id", "stage", "state", "key", "run_id", "error", "details"):
        table[name] = table[name].astype(object)
    return table


def _run_time(run: Any) -> pd.Timestamp | None:
    """When a run started, from its id (hex nanoseconds since the epoch)."""
    try:
        return pd.Timestamp(int(str(run), 16), unit="ns", tz="UTC")
    except (TypeError, ValueError, OverflowError, pd.errors.OutOfBoundsDatetime):
        return None


# --- trials -----------------------------------------------------------------------------------


def _trials(con: Any, layout: OutputLayout) -> None:
    """The ``trial`` table, filled block by block: obs rows and their window summaries."""
    so = dict(layout.storage_options)
    url = layout.combined(TRIALS)
    try:
        store = zarr_store(url, storage_options=so, read_only=True)
        with damage_reported(url):
            windows = xr.open_zarr(store, chunks=None, consolidated=True)
    except (FileNotFoundError, KeyError):
        con.execute(_NO_TRIALS)
        return
    signals = [str(n) for n, v in windows.data_vars.items() if v.dims == (TRIAL_DIM, REL_TIME)]
    n_rel = max(1, int(windows.sizes.get(REL_TIME, 1)))
    rows = max(1, _BLOCK_MEMORY // (8 * n_rel * max(1, len(signals))))
    created = False
    start = 0
    for obs in _obs_blocks(layout, rows):
        block = windows.isel({TRIAL_DIM: slice(start, start + obs.num_rows)})
        _check_rows(obs, block, start, layout)
        start += obs.num_rows
        summaries: dict[str, Any] = {}
        with damage_reported(url):
            for name in signals:
                values = np.asarray(block[name].values, dtype=np.float64)
                summaries[f"peak_{name}"] = _nanmax(values)
                summaries[f"mean_{name}"] = _nanmean(values)
        for name, values in summaries.items():
            if name not in obs.column_names:
                obs = obs.append_column(name, pa.array(values, from_pandas=True))
        if not created:
            keys = f", {_TRIAL_KEYS}" if {"item_id", "trial_num"} <= set(obs.column_names) else ""
            con.execute(f"CREATE TABLE trial ({_columns(con, obs)}{keys})")
            created = True
        con.register("rows", obs)
        con.execute("INSERT INTO trial SELECT * FROM rows")
        con.unregister("rows")
    if not created:
        con.execute(_NO_TRIALS)
    elif start != windows.sizes[TRIAL_DIM]:
        raise InputError(
            f"{layout.path(_OBS_TABLE)}: {start} rows, but {url} holds "
            f"{windows.sizes[TRIAL_DIM]} trials; expected one row per trial (re-run to "
            "rebuild the combined outputs)"
        )


def _check_rows(obs: pa.Table, block: xr.Dataset, start: int, layout: OutputLayout) -> None:
    """The obs rows are those of the windows: the same item and trial number, row by row
    (an obs table left by an earlier run that wrote Parquet is not this run's)."""
    for name in ("item_id", "trial_num"):
        if name not in obs.column_names or name not in block.coords:
            continue
        ours = [str(v) for v in obs.column(name).to_pylist()]
        theirs = [str(v) for v in block[name].values.tolist()]
        n = min(len(ours), len(theirs))  # fewer windows: the count is checked at the end
        differs = next((i for i in range(n) if ours[i] != theirs[i]), None)
        if differs is not None:
            raise InputError(
                f"{layout.path(_OBS_TABLE)}: row {start + differs} has {name} "
                f"{ours[differs]!r}, but {layout.combined(TRIALS)} has {theirs[differs]!r}; "
                "expected the obs table of the same run (re-run with parquet in "
                "output.formats, or remove it)"
            )


def _obs_blocks(layout: OutputLayout, rows: int) -> Iterator[pa.Table]:
    """The obs table in blocks of ``rows`` trials: from ``trials_obs.parquet``, streamed,
    or (a run without Parquet) from the per-trial columns of ``trials.zarr``."""
    so = dict(layout.storage_options)
    url = layout.path(_OBS_TABLE)
    fs, path = fsspec.core.url_to_fs(url, **so)
    try:
        with files.translated(url, action="reading"):
            handle = files.retried(lambda: fs.open(path, "rb"), url=url, action="reading")
    except FileNotFoundError:
        trials = open_trials(layout.combined(TRIALS), storage_options=so)
        for start in range(0, int(trials.sizes[TRIAL_DIM]), rows):
            block = trials_obs(trials.isel({TRIAL_DIM: slice(start, start + rows)}))
            yield pa.Table.from_pandas(block, preserve_index=False)
        return
    with handle, files.translated(url, action="reading"):
        for batch in pq.ParquetFile(handle).iter_batches(batch_size=rows):
            yield _nan_as_null(pa.Table.from_batches([batch]))


def _nan_as_null(table: pa.Table) -> pa.Table:
    """Float columns with NaN as null (the obs Parquet stores missing numbers as NaN)."""
    for i, field in enumerate(table.schema):
        if pa.types.is_floating(field.type):
            column = table.column(i).to_numpy(zero_copy_only=False)
            table = table.set_column(i, field, pa.array(column, from_pandas=True))
    return table


def _nanmax(values: np.ndarray) -> np.ndarray:
    """The largest value of each row, NaN skipped (NaN when the row has none)."""
    if values.shape[1] == 0:
        return np.full(values.shape[0], np.nan)
    return np.fmax.reduce(values, axis=1)


def _nanmean(values: np.ndarray) -> np.ndarray:
    """The mean of each row, NaN skipped (NaN when the row has none)."""
    present = ~np.isnan(values)
    count = present.sum(axis=1)
    total = np.where(present, values, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


# --- units ------------------------------------------------------------------------------------


def _units(con: Any, layout: OutputLayout, items: Sequence[str]) -> None:
    """The ``unit`` table: each committed STA's units, in blocks of units."""
    con.execute(
        "CREATE TABLE unit (item_id VARCHAR, unit BIGINT, n_spikes BIGINT, n_before BIGINT, "
        "n_after BIGINT, n_too_early BIGINT, sta_peak DOUBLE, sta_z DOUBLE, peak_lag BIGINT, "
        "peak_lag_time DOUBLE, peak_y BIGINT, peak_x BIGINT, PRIMARY KEY (item_id, unit), "
        "FOREIGN KEY (item_id) REFERENCES item (item_id))"
    )
    so = dict(layout.storage_options)
    for item in items:
        url = layout.stage(item, "sta")
        result = open_dataset(url, storage_options=so)
        if "sta" not in result or result["sta"].dims != ("unit", "lag", "y", "x"):
            continue
        n_units = int(result.sizes["unit"])
        per_unit = 8 * math.prod(int(result.sizes[d]) for d in ("lag", "y", "x"))
        step = max(1, _BLOCK_MEMORY // max(1, per_unit))
        lag_time = result["lag_time"].to_numpy() if "lag_time" in result.coords else None
        for start in range(0, n_units, step):
            block = result.isel(unit=slice(start, start + step))
            with damage_reported(url):
                sta = np.asarray(block["sta"].values, dtype=np.float64)
                counts = {
                    name: block[name].to_numpy().astype(np.int64)
                    for name in ("n_spikes", "n_before", "n_after", "n_too_early")
                    if name in block
                }
            strength = sta_strength(sta)
            lag = strength.pop("peak_lag")
            table = pd.DataFrame(
                {
                    "item_id": pd.Series([item] * len(sta), dtype=object),
                    "unit": block["unit"].to_numpy().astype(np.int64),
                    **{
                        name: pd.array(counts[name], dtype="Int64")
                        if name in counts
                        else pd.array([None] * len(sta), dtype="Int64")
                        for name in ("n_spikes", "n_before", "n_after", "n_too_early")
                    },
                    "sta_peak": strength["sta_peak"],
                    "sta_z": strength["sta_z"],
                    "peak_lag": pd.array(
                        [None if i < 0 else int(result["lag"][i]) for i in lag], dtype="Int64"
                    ),
                    "peak_lag_time": [
                        np.nan if i < 0 or lag_time is None else float(lag_time[i]) for i in lag
                    ],
                    "peak_y": pd.array(strength["peak_y"], dtype="Int64"),
                    "peak_x": pd.array(strength["peak_x"], dtype="Int64"),
                }
            )
            con.register("rows", _arrow(table))
            con.execute("INSERT INTO unit SELECT * FROM rows")
            con.unregister("rows")


def sta_strength(sta: np.ndarray) -> dict[str, Any]:
    """How strong each unit's spike-triggered average is, and where its peak lies.

    Parameters
    ----------
    sta : numpy.ndarray
        ``(unit, lag, y, x)`` STAs; a unit without usable spikes is all NaN.

    Returns
    -------
    dict
        ``sta_peak`` ``(unit,)``: the largest ``|sta - mean(sta)|`` over lag, y and x;
        ``sta_z``: that over the standard deviation of the unit's STA (NaN when it is
        flat); ``peak_lag``, ``peak_y``, ``peak_x``: the peak's indices (lists; None for
        an all-NaN unit, whose ``sta_peak`` and ``sta_z`` are NaN; ``peak_lag`` -1).

    Examples
    --------
    >>> sta = np.zeros((2, 2, 1, 3))
    >>> sta[0, 1, 0, 2] = 4.0
    >>> sta[1] = np.nan
    >>> out = sta_strength(sta)
    >>> out["sta_peak"].round(3).tolist(), out["sta_z"].round(3).tolist()
    ([3.333, nan], [2.236, nan])
    >>> out["peak_lag"], out["peak_y"], out["peak_x"]
    ([1, -1], [0, None], [2, None])
    """
    n = sta.shape[0]
    flat = sta.reshape(n, -1)
    present = ~np.isnan(flat).all(axis=1)
    peak = np.full(n, np.nan)
    z = np.full(n, np.nan)
    where: list[tuple[int, int, int] | None] = [None] * n
    for i in np.flatnonzero(present):
        values = flat[i]
        deviation = np.abs(values - np.nanmean(values))
        at = int(np.nanargmax(deviation))
        peak[i] = deviation[at]
        spread = float(np.nanstd(values))
        z[i] = peak[i] / spread if spread > 0 else np.nan
        lag, y, x = np.unravel_index(at, sta.shape[1:])
        where[i] = (int(lag), int(y), int(x))
    return {
        "sta_peak": peak,
        "sta_z": z,
        "peak_lag": [-1 if w is None else w[0] for w in where],
        "peak_y": [None if w is None else w[1] for w in where],
        "peak_x": [None if w is None else w[2] for w in where],
    }
