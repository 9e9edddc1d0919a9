"""NumPy ``.npy`` arrays and existing Zarr / xarray stores, read lazily (target ``file``).

- ``npy``: one array in a ``.npy`` file, either ephys traces (``kind: traces`` with
  ``sampling_rate``) or a movie (``kind: frames`` with ``fps``); ``dims`` says how its axes
  are stored (by default ``(time, channel)`` or ``(frame, y, x)``). The header is read on
  load; the data are memory-mapped locally (as ``numpy.load(mmap_mode="r")`` does) or read
  by byte ranges from any other fsspec URL, chunk by chunk (see
  :class:`~neurobatch.io.loaders._lazy.FileArray`). Arrays of Python objects are refused
  (reading them would unpickle).
- ``zarr``: a Zarr store (v2 or v3, any fsspec URL) that ``xarray.open_zarr`` reads, in its
  own chunks. It must hold ``traces(time, channel)`` and/or ``frames(frame, y, x)``
  (``rename`` maps other names onto these); a missing time axis or rate is derived from
  the other (``time`` from ``sampling_rate``, or ``sampling_rate`` from ``time``), and the
  same for ``frame_time``, ``fps`` and ``stimulus_onset``. Spikes (``spike_time`` with
  ``unit``) and events (``event_time`` with ``event_name``) come through as stored.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, cast

import fsspec
import numpy as np
import xarray as xr

from neurobatch.config.lazy_arguments import _DIMS, NpyArguments, ZarrArguments
from neurobatch.errors import InputError, InputNotFoundError
from neurobatch.io.loaders._common import check_time, closest, coerce_arguments
from neurobatch.io.loaders._lazy import (
    DEFAULT_CHUNK_MEMORY,
    FileArray,
    lazy,
    merge_sidecar,
    time_chunks,
)
from neurobatch.io.zarr import zarr_store

logger = logging.getLogger(__name__)

__all__ = [
    "FORMAT_NPY",
    "FORMAT_ZARR",
    "load_npy",
    "load_zarr",
]

FORMAT_NPY = "npy"
FORMAT_ZARR = "zarr"

# ---------------------------------------------------------------------------------------------
# npy
# ---------------------------------------------------------------------------------------------


def _npy_header(url: str, fs: Any, path: str) -> tuple[tuple[int, ...], bool, np.dtype[Any], int]:
    try:
        handle = fs.open(path, "rb")
    except FileNotFoundError:
        raise InputNotFoundError(f"input {url!r} does not exist") from None
    with handle:
        try:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
        except ValueError as e:
            raise InputError(f"{url!r} is not a readable .npy file: {e}") from None
        return tuple(int(n) for n in shape), bool(fortran), np.dtype(dtype), int(handle.tell())


def _npy_dims(
    url: str, args: NpyArguments, shape: tuple[int, ...], dtype: np.dtype[Any]
) -> tuple[str, ...]:
    """The stored dims of a numeric array whose shape matches ``args``."""
    if dtype.hasobject or dtype.kind not in "biuf":
        raise InputError(
            f"{url!r} holds {dtype} values; expected a numeric array (arrays of Python "
            "objects are never read: loading them would unpickle)"
        )
    dims = args.stored_dims(len(shape))
    if len(dims) != len(shape):
        raise InputError(
            f"{url!r} holds a {len(shape)}-D array of shape {shape}; kind {args.kind!r} with "
            f"dims {list(dims)} expects {len(dims)}-D"
        )
    return dims


def _npy_reader(
    url: str,
    fs: Any,
    path: str,
    so: Mapping[str, Any],
    *,
    shape: tuple[int, ...],
    fortran: bool,
    dtype: np.dtype[Any],
    offset: int,
) -> FileArray:
    """The array's lazy reader, once the file is known to hold all it announces."""
    info = fs.info(path)
    needed = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if int(info["size"]) < needed:
        raise InputError(
            f"{url!r} has {info['size']} bytes but its header announces {shape} of {dtype} "
            f"({needed} bytes with the header); the file is truncated"
        )
    return FileArray(
        url,
        shape=shape,
        dtype=dtype,
        offset=offset,
        order="F" if fortran else "C",
        storage_options=so,
        fingerprint=(info.get("size"), info.get("mtime"), info.get("ETag")),
    )


def _npy_traces(
    url: str, args: NpyArguments, data: xr.DataArray, n: int, attrs: dict[str, Any]
) -> tuple[xr.DataArray, dict[str, Any]]:
    """``traces(time, channel)`` and its coordinates; fills ``attrs``."""
    if "channel" not in data.dims:
        data = data.expand_dims("channel", axis=1)
    data = data.transpose("time", "channel")
    n_channels = int(data.sizes["channel"])
    if args.channel_names is not None and len(args.channel_names) != n_channels:
        raise InputError(
            f"{url!r} has {n_channels} channels but channel_names names {len(args.channel_names)}"
        )
    rate = cast(float, args.sampling_rate)
    coords: dict[str, Any] = {
        "time": ("time", np.arange(n, dtype=np.float64) / rate + args.t0),
        "channel": (
            "channel",
            np.arange(n_channels)
            if args.channel_names is None
            else np.asarray(args.channel_names, dtype=np.str_),
        ),
    }
    attrs.update(sampling_rate=float(rate), n_samples=n, event_names=[])
    if args.gain_uv is not None:
        attrs["gain_uv"] = float(args.gain_uv)
    return data, coords


def _npy_frames(
    args: NpyArguments, data: xr.DataArray, n: int, attrs: dict[str, Any]
) -> tuple[xr.DataArray, dict[str, Any]]:
    """``frames(frame, y, x)`` and ``frame_time``; fills ``attrs``."""
    data = data.transpose("frame", "y", "x")
    fps = cast(float, args.fps)
    coords = {"frame_time": ("frame", args.stimulus_onset + np.arange(n, dtype=np.float64) / fps)}
    attrs.update(fps=float(fps), stimulus_onset=float(args.stimulus_onset), n_frames=n)
    if args.pixel_size is not None:
        attrs["pixel_size"] = float(args.pixel_size)
    return data, coords


def load_npy(
    url: str,
    arguments: NpyArguments | Mapping[str, Any],
    *,
    storage_options: Mapping[str, Any] | None = None,
    chunk_memory: int = DEFAULT_CHUNK_MEMORY,
) -> xr.Dataset:
    """Load a ``.npy`` array lazily as ephys traces or as a movie.

    Parameters
    ----------
    url : str
        The ``.npy`` file: a local path (memory-mapped) or any fsspec URL (byte ranges).
    arguments : NpyArguments or mapping
        What the array is (a mapping is validated; it may carry ``format``).
    storage_options : mapping, optional
        Passed to fsspec.
    chunk_memory : int, default 64 MiB
        Bytes per chunk along time (at least 4096 samples) or frames (at least one).

    Returns
    -------
    xarray.Dataset
        ``kind: traces``: ``traces(time, channel)`` in the stored type, ``time = arange(n) /
        sampling_rate + t0``, attrs ``sampling_rate``, ``n_samples``, ``event_names``
        (empty), ``gain_uv`` (when given). ``kind: frames``: ``frames(frame, y, x)``,
        ``frame_time = stimulus_onset + arange(n) / fps``, attrs ``fps``,
        ``stimulus_onset``, ``n_frames``, ``pixel_size`` (when given). Both dask-backed,
        with attrs ``source`` and the sidecar's metadata.

    Raises
    ------
    neurobatch.errors.InputNotFoundError
        If the file does not exist.
    neurobatch.errors.InputError
        Not a ``.npy`` file, a dtype that is not numeric (object arrays are refused),
        a shape that does not match ``dims``, a file shorter than its header says, or a
        bad sidecar.
    neurobatch.errors.ConfigError
        If ``arguments`` is an invalid mapping.

    Examples
    --------
    >>> import fsspec, io
    >>> buffer = io.BytesIO()
    >>> np.save(buffer, np.arange(6, dtype=np.int16).reshape(2, 3))  # 2 channels x 3 samples
    >>> fsspec.filesystem("memory").pipe("/npy-doc/rec.npy", buffer.getvalue())
    >>> ds = load_npy("memory://npy-doc/rec.npy",
    ...               {"kind": "traces", "sampling_rate": 2.0, "dims": ["channel", "time"]})
    >>> ds.traces.dims, ds.traces.values[:, 0].tolist(), ds.time.values.tolist()
    (('time', 'channel'), [0, 1, 2], [0.0, 0.5, 1.0])
    """
    args = coerce_arguments(arguments, NpyArguments, fmt=FORMAT_NPY)
    so = dict(storage_options or {})
    fs, path = fsspec.core.url_to_fs(url, **so)
    path = str(path)
    shape, fortran, dtype, offset = _npy_header(url, fs, path)
    dims = _npy_dims(url, args, shape, dtype)
    reader = _npy_reader(
        url, fs, path, so, shape=shape, fortran=fortran, dtype=dtype, offset=offset
    )
    long_dim = "time" if args.kind == "traces" else "frame"
    axis = dims.index(long_dim)
    row = int(np.prod([n for i, n in enumerate(shape) if i != axis], dtype=np.int64))
    chunks_along = time_chunks(
        shape[axis],
        bytes_per_row=row * dtype.itemsize,
        chunk_memory=chunk_memory,
        minimum=4096 if args.kind == "traces" else 1,
    )
    chunks = tuple(chunks_along if i == axis else n for i, n in enumerate(shape))
    data = xr.DataArray(lazy(reader, chunks, name="npy"), dims=dims)
    n = int(shape[axis])
    attrs: dict[str, Any] = {"source": url}
    if args.kind == "traces":
        data, coords = _npy_traces(url, args, data, n, attrs)
        name = "traces"
    else:
        data, coords = _npy_frames(args, data, n, attrs)
        name = "frames"
    attrs = merge_sidecar(attrs, url, args, storage_options=so)
    logger.debug("%s: %s %s from a %s array", url, name, shape, dtype)
    return xr.Dataset({name: data.variable}, coords=coords, attrs=attrs)


# ---------------------------------------------------------------------------------------------
# zarr
# ---------------------------------------------------------------------------------------------


def _open_zarr(url: str, args: ZarrArguments, so: Mapping[str, Any]) -> xr.Dataset:
    fs, path = fsspec.core.url_to_fs(url, **dict(so))
    if not fs.exists(str(path)):
        raise InputNotFoundError(f"input {url!r} does not exist")
    store = zarr_store(url, storage_options=so, read_only=True)
    last: Exception | None = None
    for consolidated in (True, False):
        try:
            opened = xr.open_zarr(store, group=args.group, chunks={}, consolidated=consolidated)
            return cast(xr.Dataset, opened)
        except (KeyError, ValueError, FileNotFoundError, OSError) as e:
            # no consolidated metadata: read it plainly; otherwise not a store
            last = e
    where = f" (group {args.group!r})" if args.group else ""
    raise InputError(
        f"{url!r}{where} is not a Zarr store that xarray can open: "
        f"{' '.join(str(last).split()) or type(last).__name__}"
    ) from last


def _need(ds: xr.Dataset, name: str, url: str, args: ZarrArguments) -> xr.DataArray:
    if name not in ds.variables:
        names = sorted(str(v) for v in ds.variables)
        guess = closest(name, names)
        hint = f"; did you mean {guess!r}? map it with loader.rename" if guess else ""
        raise InputError(
            f"Zarr store {url!r} has no variable {name!r}{hint} (its variables: "
            f"{', '.join(repr(v) for v in names) or 'none'})"
        )
    return ds[name]


def _axis(
    ds: xr.Dataset,
    *,
    url: str,
    dim: str,
    coord: str,
    rate_attr: str,
    rate: float | None,
    start: float,
    tolerance: float,
) -> tuple[Any, float]:
    """The time coordinate along ``dim`` and the rate: either from the other.

    A stored coordinate is kept as stored (lazily, when it is not an index) and read only
    when the rate must be estimated from it.
    """
    n = int(ds.sizes[dim])
    if rate is None:
        rate = ds.attrs.get(rate_attr)
    if coord in ds.variables:
        stored = ds[coord]
        if stored.dims != (dim,):
            raise InputError(
                f"Zarr store {url!r}: {coord!r} has dimensions {stored.dims}; expected ({dim!r},)"
            )
        if rate is None:
            values = np.asarray(stored.values, dtype=np.float64)
            check_time(
                values,
                what=coord,
                source=url,
                locate=lambda i: f"{dim} {i}",
                tolerance=tolerance,
            )
            rate = (n - 1) / (values[-1] - values[0])
        return stored.variable, float(rate)
    if rate is None:
        raise InputError(
            f"Zarr store {url!r} has neither {coord!r} nor attribute {rate_attr!r}; set "
            f"loader.{rate_attr}"
        )
    return np.arange(n, dtype=np.float64) / float(rate) + start, float(rate)


def _dims(var: xr.DataArray, expected: tuple[str, ...], name: str, url: str) -> xr.DataArray:
    if set(var.dims) != set(expected):
        raise InputError(
            f"Zarr store {url!r}: {name!r} has dimensions {var.dims}; expected "
            f"{expected} (in any order; map other names with loader.rename)"
        )
    return var.transpose(*expected)


def load_zarr(
    url: str,
    arguments: ZarrArguments | Mapping[str, Any],
    *,
    storage_options: Mapping[str, Any] | None = None,
    chunk_memory: int = DEFAULT_CHUNK_MEMORY,
) -> xr.Dataset:
    """Open an existing Zarr / xarray store lazily as a Recording and/or Movie Dataset.

    Parameters
    ----------
    url : str
        The store, a local path or any fsspec URL.
    arguments : ZarrArguments or mapping
        What to expect (a mapping is validated; it may carry ``format``).
    storage_options : mapping, optional
        Passed to fsspec.
    chunk_memory : int, default 64 MiB
        Unused: the store's own chunks are kept (finer chunks would read each stored chunk
        several times). Taken for a uniform loader signature.

    Returns
    -------
    xarray.Dataset
        The store's variables (renamed), dask-backed in the store's chunks, with
        ``traces(time, channel)`` and its ``time`` and attrs ``sampling_rate``,
        ``n_samples``; and/or ``frames(frame, y, x)`` with ``frame_time`` and attrs ``fps``,
        ``stimulus_onset``, ``n_frames``; attrs ``source`` and the sidecar's metadata.

    Raises
    ------
    neurobatch.errors.InputNotFoundError
        If nothing is at ``url``.
    neurobatch.errors.InputError
        Not a Zarr store, a missing variable (with the closest name), wrong dimensions,
        neither a time coordinate nor a rate, or a bad sidecar.
    neurobatch.errors.ConfigError
        If ``arguments`` is an invalid mapping.

    Examples
    --------
    >>> import warnings
    >>> ds = xr.Dataset({"data": (("time", "channel"), np.zeros((3, 2), np.int16))})
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     _ = ds.to_zarr("memory://zarr-doc/a.zarr", mode="w", consolidated=True)
    >>> opened = load_zarr("memory://zarr-doc/a.zarr",
    ...                    {"rename": {"data": "traces"}, "sampling_rate": 10.0})
    >>> opened.traces.dims, opened.time.values.tolist(), opened.attrs["sampling_rate"]
    (('time', 'channel'), [0.0, 0.1, 0.2], 10.0)
    """
    del chunk_memory  # the store's chunks are kept
    args = coerce_arguments(arguments, ZarrArguments, fmt=FORMAT_ZARR)
    so = dict(storage_options or {})
    ds = _open_zarr(url, args, so)
    if args.rename:
        missing = [name for name in args.rename if name not in ds.variables and name not in ds.dims]
        if missing:
            names = sorted(str(v) for v in ds.variables)
            raise InputError(
                f"Zarr store {url!r} has no {missing[0]!r} (loader.rename); its variables: "
                f"{', '.join(repr(v) for v in names) or 'none'}"
            )
        ds = ds.rename(args.rename)
    has_traces = "traces" in ds.variables
    has_frames = "frames" in ds.variables
    if args.kind == "auto" and not (has_traces or has_frames):
        names = sorted(str(v) for v in ds.variables)
        raise InputError(
            f"Zarr store {url!r} holds neither 'traces' nor 'frames' (its variables: "
            f"{', '.join(repr(v) for v in names) or 'none'}); map yours with loader.rename"
        )
    attrs = {**ds.attrs, "source": url}
    if args.kind == "traces" or (args.kind == "auto" and has_traces):
        traces = _dims(_need(ds, "traces", url, args), _DIMS["traces"], "traces", url)
        time, rate = _axis(
            ds,
            url=url,
            dim="time",
            coord="time",
            rate_attr="sampling_rate",
            rate=args.sampling_rate,
            start=0.0,
            tolerance=args.sampling_tolerance,
        )
        if "time" not in ds.variables:
            ds = ds.assign_coords(time=("time", time))
        ds = ds.assign({"traces": traces})
        attrs.update(sampling_rate=rate, n_samples=int(ds.sizes["time"]))
    if args.kind == "frames" or (args.kind == "auto" and has_frames):
        frames = _dims(_need(ds, "frames", url, args), _DIMS["frames"], "frames", url)
        onset = args.stimulus_onset
        if onset is None:
            onset = ds.attrs.get("stimulus_onset")
        frame_time, fps = _axis(
            ds,
            url=url,
            dim="frame",
            coord="frame_time",
            rate_attr="fps",
            rate=args.fps,
            start=0.0 if onset is None else float(onset),
            tolerance=args.sampling_tolerance,
        )
        if "frame_time" not in ds.variables:
            ds = ds.assign_coords(frame_time=("frame", frame_time))
        ds = ds.assign({"frames": frames})
        if onset is None:
            # only here is a stored frame_time read (its first value)
            onset = float(ds.frame_time[0].values) if ds.sizes["frame"] else 0.0
        attrs.update(fps=fps, stimulus_onset=float(onset), n_frames=int(ds.sizes["frame"]))
    if "spike_time" in ds.variables and "unit" not in ds.variables:
        raise InputError(
            f"Zarr store {url!r} has 'spike_time' without its 'unit' coordinate; expected "
            "spike_time(spike) with unit(spike)"
        )
    ds.attrs = merge_sidecar(attrs, url, args, storage_options=so)
    return ds
