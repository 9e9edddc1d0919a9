"""Exports of the combined trials: obs tables (Parquet, CSV) and AnnData ``.h5ad`` for PhoPro.

The obs tables and ``obs`` have one column per per-trial coordinate, in the trials' order:
for neurobatch's trials ``trial_num``, ``start_time``, ``stop_time``, the alignment event,
the other events, then the metadata (``item_id``, ``experiment_id``, the passed-down keys).

The ``.h5ad`` file is what PhoPro users read (``PhotometryData.read_h5ad``): ``X`` is trials
x ``rel_time`` (the processed variable, of its stored type), ``obs`` the per-trial columns,
``var`` the relative time ``t`` and ``uns`` the dataset's attributes. AnnData's own writer
writes it, ``X`` given as a dask array read from the trials store in blocks of trials, which
AnnData streams into the file (``dask.array.store``) one block at a time: writing it needs
a block's memory, not the whole matrix's.
"""

from __future__ import annotations

import io
import json
import logging
import os
import posixpath
import re
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Literal

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import xarray as xr
from fsspec.implementations.local import LocalFileSystem
from pandas.api.types import infer_dtype

from neurobatch.io import files
from neurobatch.io.commit import to_json_safe
from neurobatch.io.trials_store import REL_TIME, TRIAL_DIM, open_trials

__all__ = ["clean_axis_dtype", "to_anndata", "trials_obs", "write_h5ad", "write_obs"]

logger = logging.getLogger(__name__)

_H5AD_CHUNK_MEMORY = 16 * 2**20


def _fs(url: str, storage_options: Mapping[str, Any] | None) -> tuple[Any, str]:
    fs, path = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    return fs, str(path)


def _open(
    trials: xr.Dataset | str,
    storage_options: Mapping[str, Any] | None,
    chunk_memory: int = _H5AD_CHUNK_MEMORY,
) -> xr.Dataset:
    if isinstance(trials, xr.Dataset):
        return trials
    return open_trials(str(trials), storage_options=storage_options, chunk_memory=chunk_memory)


def trials_obs(trials: xr.Dataset) -> pd.DataFrame:
    """Return the per-trial coordinates of a Trials dataset as a table, one row per trial.

    Parameters
    ----------
    trials : xarray.Dataset
        A Trials dataset (one item's, or the combined store opened with
        :func:`neurobatch.io.trials_store.open_trials`); lazy coordinates are computed.

    Returns
    -------
    pandas.DataFrame
        One column per coordinate along ``trial`` alone, in the dataset's order; strings as
        Python ``str`` (object columns). The index is ``"0"``, ``"1"``, ... as strings, as in
        PhoPro's trial tables.

    Examples
    --------
    >>> trials = xr.Dataset(
    ...     {"dff": (("trial", "rel_time"), np.zeros((2, 3)))},
    ...     coords={"rel_time": [-0.1, 0.0, 0.1], "experiment_id": ("trial", ["e1", "e1"]),
    ...             "trial_num": ("trial", [1, 2]), "lever1": ("trial", [2.5, np.nan])},
    ... )
    >>> trials_obs(trials)
      experiment_id  trial_num  lever1
    0            e1          1     2.5
    1            e1          2     NaN
    """
    names = [str(name) for name, coord in trials.coords.items() if coord.dims == (TRIAL_DIM,)]
    n = int(trials.sizes.get(TRIAL_DIM, 0))
    loaded = trials.reset_coords(names)[names].compute() if names else xr.Dataset()
    columns: dict[str, Any] = {}
    for name in names:
        values = np.asarray(loaded[name].values)
        if values.dtype.kind in "USOT":
            values = np.array([str(v) for v in values.tolist()], dtype=object)
        columns[name] = values
    return pd.DataFrame(columns, index=pd.Index([str(i) for i in range(n)], dtype=object))


def write_obs(
    trials: xr.Dataset | str,
    url: str,
    *,
    format: Literal["parquet", "csv"] = "parquet",
    storage_options: Mapping[str, Any] | None = None,
) -> None:
    """Write the per-trial table (:func:`trials_obs`) as Parquet or CSV to any fsspec URL.

    The file is written whole (:func:`neurobatch.io.files.write_bytes`): a reader sees the
    old file or the new one, never part of one.

    Parameters
    ----------
    trials : xarray.Dataset or str
        A Trials dataset, or the URL of the combined trials store.
    url : str
        Local path or fsspec URL of the file to write (overwritten).
    format : {"parquet", "csv"}, default "parquet"
        File format. The index (the trial's row number) is not written. Missing numbers are
        NaN in Parquet and empty fields in CSV; missing strings are ``""``.
    storage_options : mapping, optional
        Options for the fsspec filesystem (of both ``trials`` and ``url``).

    Raises
    ------
    ValueError
        If ``format`` is not "parquet" or "csv".
    neurobatch.errors.StorageError
        If the file cannot be written (a full disk, say): nothing is left of it.

    Examples
    --------
    >>> trials = xr.Dataset(
    ...     {"dff": (("trial", "rel_time"), np.zeros((2, 1)))},
    ...     coords={"rel_time": [0.0], "item_id": ("trial", ["a", "b"])},
    ... )
    >>> write_obs(trials, "memory://doc/trials_obs.parquet")
    >>> pd.read_parquet("memory://doc/trials_obs.parquet").item_id.tolist()
    ['a', 'b']
    """
    if format not in ("parquet", "csv"):
        raise ValueError(f"format must be 'parquet' or 'csv', got {format!r}")
    table = trials_obs(_open(trials, storage_options))
    if format == "parquet":
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pandas(table, preserve_index=False), buffer)
        content = buffer.getvalue()
    else:
        content = table.to_csv(index=False).encode()
    files.write_bytes(url, content, storage_options=storage_options)
    logger.debug("wrote %d trials to %s", len(table), url)


def clean_axis_dtype(df: pd.DataFrame) -> pd.DataFrame:
    """Return ``df`` with dtypes that AnnData writes, as PhoPro's ``clean_axis_dtype`` does.

    The index becomes strings; a string column with repeated values becomes a categorical;
    a column of other Python objects becomes JSON strings.

    Parameters
    ----------
    df : pandas.DataFrame
        An ``obs`` or ``var`` table.

    Returns
    -------
    pandas.DataFrame
        A cleaned copy.

    Examples
    --------
    >>> df = pd.DataFrame({"item": ["a", "a", "b"], "id": ["x", "y", "z"], "n": [1, 2, 3]})
    >>> clean_axis_dtype(df).dtypes.astype(str).tolist()
    ['category', 'object', 'int64']
    """
    out = df.copy().infer_objects()
    out.index = out.index.astype(str)
    for name in out.columns:
        if infer_dtype(out[name]) == "string":
            categorical = pd.Categorical(out[name])
            if len(categorical.categories) < len(categorical):
                out[name] = categorical
        elif out[name].dtype == object:
            out[name] = out[name].map(_json_or_na).astype("string")
    return out


def _json_or_na(value: Any) -> Any:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return pd.NA
    return json.dumps(to_json_safe(value, name="obs value"))


def _uns(value: Any) -> Any:
    """Make JSON attributes storable by AnnData: nested or mixed lists become JSON strings."""
    if isinstance(value, dict):
        return {k: _uns(v) for k, v in value.items()}
    if isinstance(value, list):
        kinds = {type(v) for v in value}
        if kinds <= {int, float} or (len(kinds) == 1 and kinds <= {str, bool}):
            return value
        return json.dumps(value)
    return value


def _processed_variable(trials: xr.Dataset, variable: str | None) -> str:
    candidates = [
        str(name)
        for name, data in trials.data_vars.items()
        if set(data.dims) == {TRIAL_DIM, REL_TIME}
    ]
    name = variable or trials.attrs.get("processed_variable")
    if name is None and len(candidates) == 1:
        name = candidates[0]
    if name is None or name not in candidates:
        raise ValueError(
            f"cannot pick the variable for X: got {name!r}, expected one of {candidates} "
            "(pass variable=...)"
        )
    return str(name)


def write_h5ad(
    trials: xr.Dataset | str,
    path: str | os.PathLike[str],
    *,
    variable: str | None = None,
    chunk_memory: int = _H5AD_CHUNK_MEMORY,
    storage_options: Mapping[str, Any] | None = None,
) -> None:
    """Write trials as an AnnData ``.h5ad`` file that PhoPro's ``PhotometryData`` reads.

    AnnData's own writer (``AnnData.write_h5ad``) writes every part; a lazy ``X`` is a dask
    array in blocks of trials that it computes and writes one block at a time (zarr reads
    each block's store chunks concurrently), so the whole matrix is never in memory. The
    file is written under a temporary name and moved into place at the end (on an object
    store: written locally, then uploaded in one piece), and the temporary file is removed
    if anything fails.

    Parameters
    ----------
    trials : xarray.Dataset or str
        A Trials dataset, or the URL of the combined trials store.
    path : str or os.PathLike
        Output file: a local path, or an fsspec URL (written locally first, then uploaded).
    variable : str, optional
        The ``(trial, rel_time)`` variable for ``X``; default: the ``processed_variable``
        attribute, or the only such variable.
    chunk_memory : int, default 16 MiB
        Bytes of ``X`` per block, as float64 (a whole number of the store's chunks, at least
        one).
    storage_options : mapping, optional
        Options for the fsspec filesystem (of both ``trials`` and ``path``).

    Raises
    ------
    ValueError
        If no variable for ``X`` can be chosen.
    neurobatch.errors.StorageError
        If the file cannot be written (a full disk, say): nothing is left of it.

    See Also
    --------
    clean_axis_dtype : how ``obs`` string columns become categoricals.

    Examples
    --------
    >>> import os, tempfile
    >>> import anndata as ad
    >>> trials = xr.Dataset(
    ...     {"dff": (("trial", "rel_time"), [[0.0, 1.0], [2.0, 3.0]])},
    ...     coords={"rel_time": [-0.5, 0.0], "item_id": ("trial", ["a", "a"])},
    ...     attrs={"processed_variable": "dff", "sampling_rate": 2.0},
    ... )
    >>> path = os.path.join(tempfile.mkdtemp(), "trials.h5ad")
    >>> write_h5ad(trials, path)
    >>> adata = ad.read_h5ad(path)
    >>> adata.X, adata.var["t"].tolist(), adata.obs["item_id"].dtype.name
    (array([[0., 1.],
           [2., 3.]]), [-0.5, 0.0], 'category')
    """
    adata = _anndata(_open(trials, storage_options, chunk_memory), variable, chunk_memory)
    url = os.fspath(path)
    fs, target = _fs(url, storage_options)
    with files.translated(url, action="writing"):
        if isinstance(fs, LocalFileSystem):
            folder = os.path.dirname(os.path.abspath(target))
            os.makedirs(folder, exist_ok=True)
            aside = f".{os.path.basename(target)}.{uuid.uuid4().hex}.tmp"
            temporary = os.path.join(folder, aside)
            try:
                _write_local(temporary, adata)
                os.replace(temporary, target)
            finally:
                if os.path.exists(temporary):
                    os.remove(temporary)
        else:
            with tempfile.TemporaryDirectory() as folder:
                local = os.path.join(folder, posixpath.basename(target) or "trials.h5ad")
                _write_local(local, adata)
                files.retried(lambda: fs.put_file(local, target), url=url, action="writing")
    logger.debug("wrote %d x %d %s to %s", *adata.shape, adata.uns["processed_variable"], url)


def to_anndata(trials: xr.Dataset, *, variable: str | None = None) -> Any:
    """The trials as an in-memory AnnData, as :func:`write_h5ad` writes them.

    Parameters
    ----------
    trials : xarray.Dataset
        A Trials dataset (lazy or in memory).
    variable : str, optional
        The ``(trial, rel_time)`` variable for ``X``; default: the ``processed_variable``
        attribute, or the only such variable.

    Returns
    -------
    anndata.AnnData
        ``X`` trials x rel_time (NumPy), ``obs`` the per-trial columns, ``var["t"]`` the
        relative times, ``uns`` the trials' attributes: what PhoPro's ``PhotometryData``
        wraps.

    Raises
    ------
    ValueError
        If no variable for ``X`` can be chosen.

    Examples
    --------
    >>> trials = xr.Dataset(
    ...     {"dff": (("trial", "rel_time"), [[0.0, 1.0], [2.0, 3.0]])},
    ...     coords={"rel_time": [-0.5, 0.0], "item_id": ("trial", ["a", "a"])},
    ...     attrs={"processed_variable": "dff"},
    ... )
    >>> adata = to_anndata(trials)
    >>> adata.X.tolist(), adata.var["t"].tolist(), adata.obs["item_id"].tolist()
    ([[0.0, 1.0], [2.0, 3.0]], [-0.5, 0.0], ['a', 'a'])
    """
    adata = _anndata(trials, variable, _H5AD_CHUNK_MEMORY)
    if not isinstance(adata.X, np.ndarray):
        adata.X = np.asarray(adata.X.compute())
    return adata


@contextmanager
def _hdf5_errors() -> Iterator[None]:
    """HDF5 reports a failed write as a ``RuntimeError`` or an ``OSError`` without errno,
    the C errno in its text (``errno = 28``): raise it as the ``OSError`` it is."""
    try:
        yield
    except (RuntimeError, OSError) as error:
        found = re.search(r"\berrno = (\d+)", str(error))
        if found is None or getattr(error, "errno", None):
            raise
        code = int(found.group(1))
        raise OSError(code, os.strerror(code)) from error


def _anndata(ds: xr.Dataset, variable: str | None, chunk_memory: int) -> Any:
    """The trials as an AnnData whose ``X`` is lazy (dask) when ``ds``'s data are.

    A lazy ``X`` is in blocks of whole trials, about ``chunk_memory`` bytes as float64 and a
    whole number of ``ds``'s dask chunks (whole store chunks), so that each block is read once.
    """
    # anndata is the optional "anndata" extra: imported only when used
    import anndata as ad

    name = _processed_variable(ds, variable)
    data = ds[name].transpose(TRIAL_DIM, REL_TIME)
    n_rel = int(data.shape[1])
    var = pd.DataFrame(
        {"t": np.asarray(ds[REL_TIME].values, dtype=np.float64)},
        index=pd.Index([str(i) for i in range(n_rel)], dtype=object),
    )
    uns = _uns(to_json_safe(dict(ds.attrs), name="attrs of the trials"))
    uns.setdefault("processed_variable", name)
    # the trials' own type (float32 windows: half the file; PhoPro reads either)
    dtype = data.dtype if data.dtype.kind == "f" else np.dtype(np.float64)
    if data.chunks is None:
        x: Any = np.asarray(data.values, dtype=dtype)
    else:
        rows = max(1, int(chunk_memory) // (8 * max(1, n_rel)))
        if data.chunks[0]:
            step = int(data.chunks[0][0])
            rows = max(step, rows // step * step)
        x = data.data.astype(dtype).rechunk((rows, n_rel))
    return ad.AnnData(X=x, obs=clean_axis_dtype(trials_obs(ds)), var=var, uns=uns)


def _write_local(path: str, adata: Any) -> None:
    import dask

    # AnnData stores a dask X on the threaded scheduler: with one thread, one block is in
    # memory at a time (with two, on 2 cores, the kernel's time doubled the write's)
    with _hdf5_errors(), dask.config.set(num_workers=1):
        adata.write_h5ad(path, convert_strings_to_categoricals=False)
