"""The combined trials store: one item's trials appended at a time, opened lazily.

The combined ``OUT/trials.zarr`` grows by :func:`append_trials`, one item at a time, reading
only the store's metadata (never the trials already there), so memory stays flat in the
number of items. Per-trial columns are outer-joined across items:

* a column that an item lacks gets missing values for that item's trials, and a column that
  first appears in a later item gets missing values for the trials already stored;
* missing values are NaN for numbers and ``""`` for strings; an ``int`` or ``bool`` column
  that needs a missing value becomes ``float64`` (``True``/``False`` become 1.0/0.0); a
  column that is a string in one item and a number in another becomes a string column (the
  numbers written with ``str``, NaN as ``""``);
* the dataset attributes are those of the first item, plus any key that a later item adds
  (the first value wins when items disagree; the per-item values belong in the items table);
* the per-trial coordinates keep the order of the first item that has them (for neurobatch's
  trials: ``trial_num``, ``start_time``, ``stop_time``, the alignment event, the other
  events, then the metadata), each one that first appears in a later item placed after the
  column before it there. The order is the ``coordinates`` attribute of the 2-D variables,
  which :func:`open_trials` follows (a plain ``xarray.open_zarr`` lists them alphabetically).

All items must share one ``rel_time`` grid (within 1e-9 s); :func:`resample_trials` puts a
trials dataset onto a given grid first.

The store is in Zarr format 3, or 2 when asked (``zarr_format=2``, for zarr-python 2
readers); appends keep the format of the store they extend. Its arrays carry a checksum with
each chunk, as those of :func:`~neurobatch.io.zarr.write_dataset` do: computing a variable
of :func:`open_trials` whose chunk changed raises
:class:`~neurobatch.errors.StoreDamagedError` naming the store, the array and the chunk.
"""

from __future__ import annotations

import base64
import logging
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr
import zarr
from numpy.typing import ArrayLike, NDArray
from zarr.abc.store import Store
from zarr.core.sync import sync as zarr_sync

from neurobatch.chunking import OPEN_CHUNK_MEMORY, TRIALS_CHUNK_MEMORY
from neurobatch.io._trial_columns import (
    _DTYPES,
    REL_TIME,
    TRIAL_DIM,
    Kind,
    _Column,
    _convert,
    _dimension_names,
    _fill_value,
    _kind,
    _merged_order,
    _plan,
    _stored_columns,
    _validate_trials,
)
from neurobatch.io.commit import to_json_safe
from neurobatch.io.files import translated
from neurobatch.io.zarr import (
    ZarrFormat,
    _CheckedGetter,
    _codecs,
    _object_strings,
    _validate_zarr_format,
    _with_zarr_strings,
    damage_reported,
    zarr_store,
)
from neurobatch.io.zarr_writer import _consolidate, _every, new_store, to_zarr

__all__ = [
    "REL_TIME",
    "TRIAL_DIM",
    "append_trials",
    "open_trials",
    "resample_trials",
    "stored_trials",
]

logger = logging.getLogger(__name__)

REL_TIME_ATOL = 1e-9
"""Largest difference in seconds between two ``rel_time`` grids that still counts as equal."""

_COLUMN_ROWS = 8192
"""Trials per store chunk of a per-trial column (appends rewrite one such small chunk)."""

_NAN_FILL = base64.standard_b64encode(np.array(np.nan, dtype=np.float64).tobytes()).decode()


def _trial_coordinates(trials: xr.Dataset) -> list[str]:
    """The per-trial coordinates of a Trials dataset, in its order."""
    return [str(name) for name, coord in trials.coords.items() if coord.dims == (TRIAL_DIM,)]


def _create_store(
    trials: xr.Dataset,
    store: Store,
    chunk_memory: int,
    url: str,
    zarr_format: ZarrFormat,
    written_once: bool,
) -> int:
    n_rel = trials.sizes[REL_TIME]
    rows = max(1, chunk_memory // (8 * n_rel))
    columns = max(rows, _COLUMN_ROWS)
    if written_once:  # no append will grow it: chunks no longer than the trials
        rows, columns = (max(1, min(n, trials.sizes[TRIAL_DIM])) for n in (rows, columns))
    prepared = _with_zarr_strings(trials, zarr_format)
    prepared.attrs = to_json_safe(dict(trials.attrs), name=f"attrs of the trials for {url}")
    order = " ".join(_trial_coordinates(trials))
    for name, variable in prepared.variables.items():
        variable.attrs = to_json_safe(dict(variable.attrs), name=f"attrs of the trials for {url}")
        if variable.dims == (TRIAL_DIM,) and variable.dtype.kind in "iuf":
            # per-trial columns are int64 or float64; windows keep their type (float32)
            variable.values = variable.values.astype(_DTYPES[_kind(variable.dtype, str(name))])
        if variable.ndim == 2 and order:
            variable.encoding["coordinates"] = order  # xarray writes it as it is, not sorted
    encoding = {
        str(name): {
            "chunks": _creation_chunks(variable, rows, columns),
            **_codecs(variable.dtype, zarr_format),
        }
        for name, variable in prepared.variables.items()
    }
    to_zarr(prepared, store, encoding, zarr_format=zarr_format)
    logger.debug("created %s: %d trials, %d trials per chunk", url, trials.sizes[TRIAL_DIM], rows)
    return int(trials.sizes[TRIAL_DIM])


def _creation_chunks(variable: xr.Variable, rows: int, columns: int) -> tuple[int, ...]:
    """A new store's chunks: ``rows`` trials of the windows, ``columns`` of the per-trial
    columns, any other variable (``rel_time``) whole."""
    if variable.dims == (TRIAL_DIM,):
        return (columns,)
    return tuple(rows if d == TRIAL_DIM else max(1, n) for d, n in variable.sizes.items())


def _new_array(
    group: zarr.Group,
    name: str,
    *,
    kind: Kind,
    dims: tuple[str, ...],
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    attributes: Mapping[str, Any],
) -> zarr.Array[Any]:
    """A new array of the group, as ``Dataset.to_zarr`` creates one in the group's format."""
    attrs = {k: v for k, v in attributes.items() if k not in ("_FillValue", "_ARRAY_DIMENSIONS")}
    zarr_format = group.metadata.zarr_format
    layout: dict[str, Any]
    if zarr_format == 3:
        if kind == "f":
            attrs["_FillValue"] = _NAN_FILL
        fill_value = _fill_value(kind)
        layout = {"dimension_names": list(dims)}
    else:
        # Zarr 2 readers take the array's fill value for the _FillValue (every value equal
        # to it reads as missing): NaN for floats, none for the others
        fill_value = np.nan if kind == "f" else None
        attrs["_ARRAY_DIMENSIONS"] = list(dims)
        layout = {}
    return group.create_array(
        name,
        shape=shape,
        dtype=_DTYPES[kind],
        chunks=chunks,
        fill_value=fill_value,
        attributes=attrs,
        overwrite=True,
        **_codecs(_DTYPES[kind], zarr_format),
        **layout,
    )


def append_trials(
    trials: xr.Dataset,
    url: str,
    *,
    storage_options: Mapping[str, Any] | None = None,
    chunk_memory: int = TRIALS_CHUNK_MEMORY,
    zarr_format: ZarrFormat = 3,
    written_once: bool = False,
) -> int:
    """Append one item's trials to the combined trials store along ``trial``.

    The first call creates the store; later calls read only its metadata (and its
    ``rel_time``), grow every array and write the new trials at the end, so appending item
    ``k`` costs the same memory as appending item 1. Columns are outer-joined (see the module
    documentation for the missing values and type promotions); the one exception to "only
    metadata" is a per-trial column whose type must change (e.g. an ``int`` column that a new
    item lacks becomes ``float``), which is rewritten once, one scalar per stored trial.

    The store stays readable by ``xarray.open_zarr`` between appends: its consolidated
    metadata is rewritten last, so readers see either the old or the new trials. If an
    append is interrupted, the next one first cuts the arrays back to the consolidated
    (committed) length. Appends to one store must come from one process at a time (the
    engine appends as items finish, from the client).

    Parameters
    ----------
    trials : xarray.Dataset
        One item's Trials dataset: dimensions ``trial`` and ``rel_time``, 2-D data variables
        ``(trial, rel_time)`` and per-trial coordinates ``(trial,)``. Loaded into memory if
        dask-backed (one item's trials).
    url : str
        Local path or fsspec URL of the combined store, e.g. ``OUT/trials.zarr``.
    storage_options : mapping, optional
        Options for the fsspec filesystem.
    chunk_memory : int, default 2 MiB
        Bytes of one chunk of a 2-D variable, used when the store is created: it fixes the
        number of trials per chunk.
    zarr_format : {3, 2}, default 3
        The Zarr format of the store, when the append creates it (2 for zarr-python 2
        readers); an existing store keeps its own.
    written_once : bool, default False
        When the append creates the store: no other append will follow (an item's own
        trials), so no chunk is longer than the trials. Otherwise the windows' chunks hold
        ``chunk_memory`` bytes and the per-trial columns' 8192 trials, so that an append
        rewrites only a small last chunk of each.

    Returns
    -------
    int
        The number of trials in the store after the append.

    Raises
    ------
    ValueError
        If ``trials`` is not a Trials dataset, or its ``rel_time`` differs from the store's
        (resample it first with :func:`resample_trials`).
    TypeError
        If a per-trial column is neither bool, integer, float nor string.
    neurobatch.errors.StoreDamagedError
        If a chunk of the store read by the append (``rel_time``, the last partial chunks)
        fails its checksum.
    neurobatch.errors.StorageError
        If the storage fails the append (a full disk, say). A store it was creating is
        removed; an append to an existing store is undone by the next append (see
        :func:`open_trials`: only appends that ended are read).

    Examples
    --------
    >>> def item(name, n, **columns):
    ...     return xr.Dataset(
    ...         {"dff": (("trial", "rel_time"), np.zeros((n, 3)))},
    ...         coords={"rel_time": [-0.1, 0.0, 0.1], "item_id": ("trial", [name] * n),
    ...                 **{k: ("trial", v) for k, v in columns.items()}},
    ...     )
    >>> append_trials(item("a", 2, lever=[0.5, 1.0]), "memory://doc/trials.zarr")
    2
    >>> append_trials(item("b", 1, shock=[2.0]), "memory://doc/trials.zarr")
    3
    >>> combined = open_trials("memory://doc/trials.zarr")
    >>> combined.lever.values, combined.shock.values
    (array([0.5, 1. , nan]), array([nan, nan,  2.]))
    """
    zarr_format = _validate_zarr_format(zarr_format)
    columns = _validate_trials(trials, url)
    item = trials.compute()
    # an append reads the store's rel_time and partial last chunks
    with translated(url, action="writing"), damage_reported(url):
        return _append_item(
            item,
            columns,
            url,
            storage_options=storage_options,
            chunk_memory=chunk_memory,
            zarr_format=zarr_format,
            written_once=written_once,
        )


def _append_item(
    item: xr.Dataset,
    columns: Mapping[str, _Column],
    url: str,
    *,
    storage_options: Mapping[str, Any] | None,
    chunk_memory: int,
    zarr_format: ZarrFormat,
    written_once: bool = False,
) -> int:
    """Append the in-memory trials ``item`` (validated as ``columns``) to the store at ``url``."""
    n_new = int(item.sizes[TRIAL_DIM])
    store = zarr_store(url, storage_options=storage_options)
    try:
        committed = zarr.open_group(store, mode="r", use_consolidated=None)
    except FileNotFoundError:
        committed = None
    if committed is None or committed.metadata.consolidated_metadata is None:
        # no store, or the first append was interrupted before its consolidation
        with new_store(url, storage_options=storage_options):
            return _create_store(item, store, chunk_memory, url, zarr_format, written_once)
    metadata = dict(committed.metadata.consolidated_metadata.flattened_metadata)
    group = zarr.open_group(
        store, mode="r+", use_consolidated=False, zarr_format=committed.metadata.zarr_format
    )
    stored = _stored_columns(metadata, committed.attrs)
    n_stored = _committed_length(metadata, stored)
    arrays = _arrays(group, url)
    _check_rel_time(arrays, item, url)
    if n_new == 0:
        logger.debug("%s: item with no trials, nothing appended", url)
        return n_stored
    _truncate(group, arrays, metadata, stored, url)

    # plan first (every check before any change), then change the schema, then append
    names = _merged_order(_recorded_order(metadata, stored), list(columns))
    n_rel = int(item.sizes[REL_TIME])
    chunk_rows = {
        1: _chunk_rows(metadata, stored, 1, default=_COLUMN_ROWS),
        2: _chunk_rows(metadata, stored, 2, default=max(1, chunk_memory // (8 * n_rel))),
    }
    kinds, values = _plan(item, names, stored, columns, url, n_stored=n_stored)
    _change_schema(group, arrays, item, names, stored, columns, kinds, url, n_stored, chunk_rows)
    new_attrs = {k: v for k, v in item.attrs.items() if k not in committed.attrs}
    if new_attrs:
        group.attrs.update(to_json_safe(new_attrs, name=f"attrs of the trials for {url}"))

    async def grow() -> None:
        # every array at once: on an object store each append is a few round trips
        await _every(arrays[name].async_array.append(values[name], axis=0) for name in names)

    zarr_sync(grow())
    _consolidate(store)
    logger.debug("%s: appended %d trials (now %d)", url, n_new, n_stored + n_new)
    return n_stored + n_new


def _change_schema(
    group: zarr.Group,
    arrays: dict[str, zarr.Array[Any]],
    item: xr.Dataset,
    names: list[str],
    stored: Mapping[str, _Column],
    columns: Mapping[str, _Column],
    kinds: Mapping[str, Kind],
    url: str,
    n_stored: int,
    chunk_rows: Mapping[int, int],
) -> None:
    """Create the new columns, rewrite the promoted ones and name the coordinates, in the
    order of ``names`` (in place)."""
    coords = " ".join(n for n in names if (stored.get(n) or columns[n]).coord)
    n_rel = int(item.sizes[REL_TIME])
    for name in names:
        old, kind = stored.get(name), kinds[name]
        if old is None:
            dims = columns[name].dims
            arrays[name] = _new_array(
                group,
                name,
                kind=kind,
                dims=dims,
                shape=(n_stored, n_rel)[: len(dims)],
                chunks=(chunk_rows[len(dims)], n_rel)[: len(dims)],
                attributes=to_json_safe(dict(item[name].attrs), name=f"attrs of {name!r}"),
            )
            logger.debug("%s: new column %r (%s), missing for %d trials", url, name, kind, n_stored)
        elif kind != old.kind:
            arrays[name] = _rewrite_column(arrays[name], group, name, kind=kind, n_stored=n_stored)
            logger.debug("%s: column %r promoted from %s to %s", url, name, old.kind, kind)
        if arrays[name].ndim == 2 and arrays[name].attrs.get("coordinates") != coords:
            arrays[name].attrs["coordinates"] = coords


def _arrays(group: zarr.Group, url: str) -> dict[str, zarr.Array[Any]]:
    """Every array of the store with its actual (not consolidated) metadata."""
    arrays: dict[str, zarr.Array[Any]] = {}
    for name, array in group.members():
        if not isinstance(array, zarr.Array):
            raise TypeError(f"{url}: {name!r} is a group, expected only arrays in a trials store")
        arrays[name] = array
    if REL_TIME not in arrays:
        raise ValueError(f"{url}: not a trials store (it has no {REL_TIME!r} array)")
    return arrays


def _recorded_order(metadata: Mapping[str, Any], stored: Mapping[str, _Column]) -> list[str]:
    """The stored columns in their recorded order: the committed ``coordinates`` attribute
    of a 2-D variable, then the other columns."""
    recorded: list[str] = []
    for name, column in stored.items():
        if len(column.dims) == 2:
            recorded = str(metadata[name].attributes.get("coordinates", "")).split()
            break
    order = [name for name in recorded if name in stored]
    return order + [name for name in stored if name not in order]


def _committed_length(metadata: Mapping[str, Any], stored: Mapping[str, _Column]) -> int:
    lengths = {int(metadata[name].shape[0]) for name in stored}
    if len(lengths) > 1:
        raise ValueError(f"the trials store is inconsistent: per-trial lengths {sorted(lengths)}")
    return lengths.pop() if lengths else 0


def _chunk_rows(
    metadata: Mapping[str, Any], stored: Mapping[str, _Column], ndim: int, *, default: int
) -> int:
    """Trials per store chunk of the stored ``ndim``-D variables (``default`` if none)."""
    for name, column in stored.items():
        if len(column.dims) == ndim:
            return int(metadata[name].chunk_grid.chunk_shape[0])
    return default


def _check_rel_time(arrays: Mapping[str, zarr.Array[Any]], item: xr.Dataset, url: str) -> None:
    old = np.asarray(arrays[REL_TIME][...], dtype=np.float64)
    new = np.asarray(item[REL_TIME].values, dtype=np.float64)
    if old.shape != new.shape or not np.allclose(old, new, rtol=0.0, atol=REL_TIME_ATOL):
        raise ValueError(
            f"cannot append to {url}: the new item's rel_time ({_grid_text(new)}) differs from "
            f"the store's ({_grid_text(old)}); resample the item onto the store's grid first "
            "(neurobatch.io.trials_store.resample_trials)"
        )


def _grid_text(grid: NDArray[np.float64]) -> str:
    if grid.size == 0:
        return "empty"
    step = f", step {grid[1] - grid[0]:.6g} s" if grid.size > 1 else ""
    return f"{grid.size} points from {grid[0]:.6g} to {grid[-1]:.6g} s{step}"


def _truncate(
    group: zarr.Group,
    arrays: dict[str, zarr.Array[Any]],
    metadata: Mapping[str, Any],
    stored: Mapping[str, _Column],
    url: str,
) -> None:
    """Undo what an interrupted append left: grown arrays and columns it had begun."""
    for name in [n for n in arrays if n not in metadata]:
        logger.warning("%s: removing %r (left by an interrupted append)", url, name)
        del group[name]
        del arrays[name]
    for name in stored:
        array, committed = arrays[name], tuple(metadata[name].shape)
        if tuple(array.shape) != committed:
            logger.warning(
                "%s: cutting %r back from %d to %d trials (an earlier append was interrupted)",
                url,
                name,
                array.shape[0],
                committed[0],
            )
            array.resize(committed)


def _rewrite_column(
    array: zarr.Array[Any], group: zarr.Group, name: str, *, kind: Kind, n_stored: int
) -> zarr.Array[Any]:
    """Rewrite a 1-D per-trial column as another kind (one scalar per stored trial)."""
    converted = _convert(np.asarray(array[:n_stored]), kind)
    dims = _dimension_names(array.metadata)
    new = _new_array(
        group,
        name,
        kind=kind,
        dims=dims,
        shape=converted.shape,
        chunks=array.chunks,
        attributes=dict(array.attrs),
    )
    if n_stored:
        new[:] = converted
    return new


def open_trials(
    url: str,
    *,
    storage_options: Mapping[str, Any] | None = None,
    chunk_memory: int = OPEN_CHUNK_MEMORY,
) -> xr.Dataset:
    """Open the combined trials store lazily, in dask chunks of whole store chunks.

    The 2-D variables are dask arrays. The store's own chunks are small (an append rewrites
    the last one), and reading them one task each would cost more in scheduling than in I/O,
    so a dask chunk groups as many whole store chunks along ``trial`` as fit
    ``chunk_memory`` (zarr fetches the store chunks of one task concurrently). The per-trial
    columns (one scalar per trial) are read into memory, as xarray does with indexes.

    Parameters
    ----------
    url : str
        Local path or fsspec URL of the store written by :func:`append_trials`.
    storage_options : mapping, optional
        Options for the fsspec filesystem.
    chunk_memory : int, default 64 MiB
        Target bytes of one dask chunk of the 2-D variables together.

    Returns
    -------
    xarray.Dataset
        The Trials dataset of every appended item, in append order: 2-D variables lazy
        (dask), per-trial columns in memory, the coordinates in their recorded order (see
        the module documentation). Stores of either Zarr format are read.

    Raises
    ------
    FileNotFoundError
        If there is no store at ``url``.
    neurobatch.errors.StoreDamagedError
        If a chunk of a per-trial column (read now) fails its checksum; computing a 2-D
        variable raises it for a damaged chunk of its own.

    Examples
    --------
    >>> one = xr.Dataset(
    ...     {"dff": (("trial", "rel_time"), np.ones((2, 2)))},
    ...     coords={"rel_time": [0.0, 0.5], "trial_num": ("trial", [1, 2])},
    ... )
    >>> append_trials(one, "memory://doc/open-trials.zarr")
    2
    >>> open_trials("memory://doc/open-trials.zarr").trial_num.values
    array([1, 2])
    """
    store = zarr_store(url, storage_options=storage_options, read_only=True)
    try:
        group = zarr.open_group(store, mode="r", use_consolidated=None)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{url}: no trials store there ({e})") from e
    consolidated = group.metadata.consolidated_metadata
    if consolidated is None:
        # created, but its first append was interrupted before it was committed
        raise FileNotFoundError(f"{url}: no committed trials yet (the first append never ended)")
    with damage_reported(url):  # xarray reads the index (rel_time) now
        opened = xr.open_zarr(store, chunks=None, consolidated=True)
    rows = _open_rows(group, chunk_memory)
    variables: dict[str, Any] = {}
    checked = {"getitem": _CheckedGetter(url)}
    for name, variable in opened.variables.items():
        if variable.dims == (TRIAL_DIM,):
            with damage_reported(url):
                variables[str(name)] = variable.load()
        elif TRIAL_DIM in variable.dims:
            variables[str(name)] = variable.chunk({TRIAL_DIM: rows}, from_array_kwargs=checked)
        else:
            variables[str(name)] = variable
    metadata = dict(consolidated.flattened_metadata)
    recorded = _recorded_order(metadata, _stored_columns(metadata, group.attrs))
    coords = [str(name) for name in opened.indexes]  # rel_time
    coords += [name for name in recorded if name in opened.coords and name not in coords]
    coords += [str(name) for name in opened.coords if name not in coords]
    ordered = xr.Dataset(
        {name: v for name, v in variables.items() if name not in opened.coords},
        coords={name: variables[name] for name in coords},
        attrs=opened.attrs,
    )
    return _object_strings(ordered)


def stored_trials(url: str, *, storage_options: Mapping[str, Any] | None = None) -> int:
    """How many trials the store at ``url`` holds: those of the appends that ended.

    Reads the consolidated metadata only (one request).

    Parameters
    ----------
    url : str
        Local path or fsspec URL of a store written by :func:`append_trials`.
    storage_options : mapping, optional
        Options for the fsspec filesystem.

    Returns
    -------
    int
        0 when there is no store, or its first append never ended.

    Examples
    --------
    >>> stored_trials("memory://doc/stored-trials.zarr")
    0
    >>> one = xr.Dataset({"dff": (("trial", "rel_time"), np.ones((3, 2)))},
    ...                  coords={"rel_time": [0.0, 0.5]})
    >>> append_trials(one, "memory://doc/stored-trials.zarr")
    3
    >>> stored_trials("memory://doc/stored-trials.zarr")
    3
    """
    store = zarr_store(url, storage_options=storage_options, read_only=True)
    try:
        group = zarr.open_group(store, mode="r", use_consolidated=None)
    except FileNotFoundError:
        return 0
    consolidated = group.metadata.consolidated_metadata
    if consolidated is None:
        return 0
    metadata = dict(consolidated.flattened_metadata)
    return _committed_length(metadata, _stored_columns(metadata, group.attrs))


def _open_rows(group: zarr.Group, chunk_memory: int) -> int:
    """Trials per dask chunk: whole store chunks of the 2-D variables, ``chunk_memory`` bytes."""
    store_rows, row_bytes = 1, 0
    for _, array in group.arrays():
        if array.ndim == 2 and _dimension_names(array.metadata)[:1] == (TRIAL_DIM,):
            store_rows = int(array.chunks[0])
            row_bytes += int(array.dtype.itemsize) * math.prod(array.shape[1:])
    return store_rows * max(1, int(chunk_memory) // max(1, store_rows * row_bytes))


def resample_trials(trials: xr.Dataset, rel_time: ArrayLike) -> xr.Dataset:
    """Linearly interpolate a Trials dataset onto the relative-time grid ``rel_time``.

    Items recorded at different sampling rates have different ``rel_time`` grids; resample
    them onto one grid before :func:`append_trials`. Per-trial coordinates are unchanged;
    points of the new grid outside the old one are NaN. The ``sampling_rate`` attribute
    becomes that of the new grid.

    Parameters
    ----------
    trials : xarray.Dataset
        A Trials dataset.
    rel_time : array_like, shape (n,)
        The new grid, seconds, increasing.

    Returns
    -------
    xarray.Dataset
        The trials on the new grid.

    Examples
    --------
    >>> trials = xr.Dataset(
    ...     {"dff": (("trial", "rel_time"), [[0.0, 1.0, 2.0]])},
    ...     coords={"rel_time": [0.0, 0.1, 0.2]},
    ...     attrs={"sampling_rate": 10.0},
    ... )
    >>> out = resample_trials(trials, [0.0, 0.05, 0.1, 0.15])
    >>> out.dff.values, out.attrs["sampling_rate"]
    (array([[0. , 0.5, 1. , 1.5]]), 20.0)
    """
    grid = np.asarray(rel_time, dtype=np.float64)
    if grid.ndim != 1 or grid.size == 0 or np.any(np.diff(grid) <= 0):
        raise ValueError(f"rel_time must be a non-empty increasing 1-D grid, got {grid!r}")
    out = trials.interp({REL_TIME: grid}, method="linear")
    if grid.size > 1:
        out.attrs["sampling_rate"] = float((grid.size - 1) / (grid[-1] - grid[0]))
    return out
