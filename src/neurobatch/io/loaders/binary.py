"""Raw interleaved binary recordings, read lazily: SpikeGLX ``.bin`` + ``.meta``, plain raw files.

Two formats (target ``file``), both returning the ephys Recording Dataset
``traces(time, channel)`` in the file's own integer or float type, dask-backed and chunked
along time from a memory budget (``chunk_memory`` bytes per chunk of the samples as the
Recording stores them, with their time stamps, so that ingest writes the chunks unchanged):

- ``spikeglx``: a SpikeGLX binary (``*.ap.bin``, ``*.lf.bin``, ``*.nidq.bin``, ``*.obx.bin``)
  with its ``.meta`` beside it. The meta gives the channel count (``nSavedChans``), the
  sampling rate (``imSampRate``, ``niSampRate`` or ``obSampRate``), the expected file size
  (``fileSizeBytes``), which channels were saved (``snsSaveChanSubset`` with the acquired
  counts ``acqApLfSy``, ``acqMnMaXaDw`` or ``acqXaDwSy``) and the conversion to volts, as
  SpikeGLX's own ``readSGLX.py`` computes it: ``imAiRangeMax / imMaxInt`` (512 when absent)
  divided by the channel's gain (the ``imroTbl`` entry of Neuropixels 1.0-type probes,
  ``imChan0apGain``/``imChan0lfGain``, or the fixed gain of the probe type: 80 for types 21
  and 24, 100 for 2013, 500/250 for 1110); for NI-DAQ ``niAiRangeMax / niMaxInt`` (32768)
  divided by ``niMNGain``, ``niMAGain`` or 1. Samples are ``int16``.
- ``raw-binary``: any headerless (or fixed-header, ``offset``) interleaved file, described by
  the arguments ``n_channels``, ``dtype``, ``sampling_rate`` and optionally ``gain_uv``.

Local files are memory-mapped, one ``numpy.memmap`` per chunk read; files behind any other
fsspec URL are read by byte ranges, one request per chunk. The dask graph holds only the
URL and the layout (never an open file or a mapped array), so it travels to the workers of
a distributed cluster, which read their own chunks.

This module also holds what the lazy loaders (``binary``, ``nwb``, ``arrays``,
``legacy_pickle``) share: :class:`FileArray` (a lazily read C- or Fortran-ordered array
inside a file), :func:`time_chunks` and :func:`merge_sidecar`. Their arguments models live in
:mod:`neurobatch.config.lazy_arguments`.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import dask.array as da
import fsspec
import numpy as np
import xarray as xr
from dask.base import tokenize
from fsspec.implementations.local import LocalFileSystem
from numpy.typing import NDArray

from neurobatch.chunking import chunk_length, row_bytes
from neurobatch.config.arguments import LoaderArguments
from neurobatch.config.lazy_arguments import RawBinaryArguments, SpikeGLXArguments
from neurobatch.errors import InputError, InputNotFoundError
from neurobatch.io.loaders._common import coerce_arguments, note_read
from neurobatch.io.loaders.sidecar import load_annotation

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_CHUNK_MEMORY",
    "FORMAT_RAW",
    "FORMAT_SPIKEGLX",
    "FileArray",
    "load_raw_binary",
    "load_spikeglx",
    "merge_sidecar",
    "read_spikeglx_meta",
    "time_chunks",
]

FORMAT_SPIKEGLX = "spikeglx"
FORMAT_RAW = "raw-binary"

#: The type of the time stamps the Recording stores beside each row of samples.
_TIME_DTYPE = np.float64
#: Memory budget of one chunk when the caller gives none (the engine's default).
DEFAULT_CHUNK_MEMORY = 64 * 2**20

# probe types whose imroTbl holds per-channel AP and LF gains (readSGLX.py's np1_imro list)
_NP1_IMRO = frozenset({0, 1020, 1030, 1100, 1120, 1121, 1122, 1123, 1200, 1300})
# probe types with a fixed gain and no imChan0apGain in older metas: (AP gain, LF gain)
_FIXED_GAINS: dict[int, tuple[float, float | None]] = {
    21: (80.0, None),
    24: (80.0, None),
    2013: (100.0, None),
    1110: (500.0, 250.0),
}
# per stream: the rate key, the acquired-count key with its channel kinds, range and max-int
_STREAMS: dict[str, tuple[str, str, tuple[str, ...], str, str, int]] = {
    "imec": ("imSampRate", "acqApLfSy", ("ap", "lf", "sync"), "imAiRangeMax", "imMaxInt", 512),
    "nidq": (
        "niSampRate",
        "acqMnMaXaDw",
        ("mn", "ma", "xa", "xd"),
        "niAiRangeMax",
        "niMaxInt",
        32768,
    ),
    "obx": ("obSampRate", "acqXaDwSy", ("xa", "xd", "sync"), "obAiRangeMax", "obMaxInt", 32768),
}
_DIGITAL = frozenset({"sync", "xd"})


# ---------------------------------------------------------------------------------------------
# What the lazy loaders share
# ---------------------------------------------------------------------------------------------


def time_chunks(
    n: int,
    *,
    bytes_per_row: int,
    chunk_memory: int,
    minimum: int = 4096,
    align: int | None = None,
) -> tuple[int, ...]:
    """Chunk lengths along time (or frames) for ``n`` rows from a memory budget.

    Parameters
    ----------
    n : int
        Rows (samples or frames) in all.
    bytes_per_row : int
        Bytes of one row across the other dimensions, in the stored type.
    chunk_memory : int
        Memory budget of one chunk, in bytes.
    minimum : int, default 4096
        Smallest chunk length (see :func:`neurobatch.chunking.chunk_length`); 1 for frames.
    align : int, optional
        Round the length down to a multiple of this (the file's own chunk length), keeping
        at least one multiple.

    Returns
    -------
    tuple of int
        The chunk lengths, all equal but the last; ``(0,)`` when ``n`` is 0.

    Examples
    --------
    >>> time_chunks(10, bytes_per_row=8, chunk_memory=32, minimum=1)
    (4, 4, 2)
    >>> time_chunks(10, bytes_per_row=8, chunk_memory=32, minimum=1, align=3)
    (3, 3, 3, 1)
    """
    if n == 0:
        return (0,)
    length = chunk_length(chunk_memory, bytes_per_sample=max(1, bytes_per_row), minimum=minimum)
    if align is not None and align > 1:
        length = max(align, length // align * align)
    length = min(length, n)
    full, rest = divmod(n, length)
    return (length,) * full + ((rest,) if rest else ())


def merge_sidecar(
    attrs: dict[str, Any],
    url: str,
    arguments: LoaderArguments,
    *,
    storage_options: Mapping[str, Any] | None = None,
    target: Literal["file", "folder"] = "file",
) -> dict[str, Any]:
    """Add an input's sidecar metadata (``arguments.annotation``) to the loader's attrs.

    Parameters
    ----------
    attrs : dict
        The attributes the loader sets; a sidecar may not overwrite them.
    url : str
        The input.
    arguments : LoaderArguments
        The loader's arguments (``annotation``, ``annotation_format``, ``annotation_key``).
    storage_options : mapping, optional
        Passed to fsspec.
    target : {"file", "folder"}, default "file"
        Whether the input is a file or a folder.

    Returns
    -------
    dict
        ``attrs`` with the sidecar's keys added.

    Raises
    ------
    neurobatch.errors.InputError
        If the sidecar is missing or bad, or sets a key the loader sets.

    Examples
    --------
    >>> from neurobatch.config.lazy_arguments import LazyLoaderArguments
    >>> merge_sidecar({"source": "x.bin"}, "x.bin", LazyLoaderArguments())
    {'source': 'x.bin'}
    """
    metadata, sidecar_url = load_annotation(
        url, arguments, target=target, key=arguments.annotation_key, storage_options=storage_options
    )
    clash = [key for key in metadata if key in attrs]
    if clash:
        raise InputError(
            f"sidecar {sidecar_url or ''!r} of {url!r} sets {clash[0]!r}, which the loader "
            f"sets itself (reserved: {', '.join(sorted(attrs))}); rename that key"
        )
    return {**attrs, **metadata}


def _fs(url: str, storage_options: Mapping[str, Any] | None) -> tuple[Any, str]:
    fs, path = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    return fs, str(path)


def _file_size(fs: Any, path: str, url: str, what: str = "input") -> int:
    try:
        info = fs.info(path)
    except FileNotFoundError:
        raise InputNotFoundError(f"{what} {url!r} does not exist") from None
    if info.get("type") == "directory":
        raise InputError(f"{what} {url!r} is a folder; expected a file")
    return int(info["size"])


def _box(key: Any, shape: tuple[int, ...]) -> tuple[list[tuple[int, int]], tuple[Any, ...]]:
    """The covering box of an index per axis, and the index relative to that box."""
    if not isinstance(key, tuple):
        key = (key,)
    if any(k is None for k in key):
        raise TypeError("FileArray does not take None (newaxis) in an index")
    if any(k is Ellipsis for k in key):
        i = next(i for i, k in enumerate(key) if k is Ellipsis)
        key = key[:i] + (slice(None),) * (len(shape) - len(key) + 1) + key[i + 1 :]
    key = key + (slice(None),) * (len(shape) - len(key))
    if len(key) != len(shape):
        raise IndexError(f"too many indices for an array of {len(shape)} dimensions")
    box: list[tuple[int, int]] = []
    local: list[Any] = []
    for k, size in zip(key, shape, strict=True):
        if isinstance(k, slice):
            r = range(size)[k]
            if len(r) == 0:
                box.append((0, 0))
                local.append(slice(0, 0))
                continue
            lo, hi = min(r[0], r[-1]), max(r[0], r[-1]) + 1
            stop: int | None = r[-1] - lo + (1 if r.step > 0 else -1)
            if stop is not None and stop < 0:
                stop = None
            box.append((lo, hi))
            local.append(slice(r[0] - lo, stop, r.step))
        elif isinstance(k, int | np.integer):
            i = range(size)[int(k)]
            box.append((i, i + 1))
            local.append(0)
        else:
            index = np.asarray(k)
            if index.dtype == np.bool_:
                index = np.flatnonzero(index)
            index = np.where(index < 0, index + size, index).astype(np.intp)
            if index.size == 0:
                box.append((0, 0))
                local.append(index)
                continue
            if index.min() < 0 or index.max() >= size:
                raise IndexError(f"index out of bounds for an axis of size {size}")
            lo, hi = int(index.min()), int(index.max()) + 1
            box.append((lo, hi))
            local.append(index - lo)
    return box, tuple(local)


class FileArray:
    """A C- or Fortran-ordered array stored at an offset in a file, read lazily by slices.

    Indexing reads only what the index covers: a local file through a fresh
    ``numpy.memmap``, any other fsspec URL through byte-range requests (one per contiguous
    run of the covering box). The object holds the URL and the layout only, so it pickles
    small and each dask worker reads its own chunks. Values come back in native byte order.

    Parameters
    ----------
    url : str
        The file, a local path or any fsspec URL.
    shape : sequence of int
        The array's shape.
    dtype : numpy dtype or str
        The stored type (any byte order).
    offset : int, default 0
        Bytes before the array (a header).
    order : {"C", "F"}, default "C"
        Memory layout.
    storage_options : mapping, optional
        Passed to fsspec.
    fingerprint : object, optional
        Something that changes when the file does (size, mtime), for dask's names.

    Examples
    --------
    >>> import fsspec
    >>> fsspec.filesystem("memory").pipe("/filearray-doc/x.bin",
    ...                                   np.arange(12, dtype="<i2").tobytes())
    >>> a = FileArray("memory://filearray-doc/x.bin", shape=(4, 3), dtype="<i2")
    >>> a[1:3, 2].tolist(), a[::-2, :2].tolist()
    ([5, 8], [[9, 10], [3, 4]])
    """

    def __init__(
        self,
        url: str,
        *,
        shape: Sequence[int],
        dtype: Any,
        offset: int = 0,
        order: Literal["C", "F"] = "C",
        storage_options: Mapping[str, Any] | None = None,
        fingerprint: Any = None,
    ) -> None:
        self.url = url
        self.shape = tuple(int(n) for n in shape)
        self.file_dtype = np.dtype(dtype)
        self.dtype = self.file_dtype.newbyteorder("=")
        self.offset = int(offset)
        self.order = order
        self.storage_options = dict(storage_options or {})
        self.fingerprint = fingerprint

    @property
    def ndim(self) -> int:
        """The number of dimensions."""
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of the whole array."""
        return int(math.prod(self.shape) * self.file_dtype.itemsize)

    def __repr__(self) -> str:
        return f"FileArray({self.url!r}, shape={self.shape}, dtype={self.file_dtype.str!r})"

    def __dask_tokenize__(self) -> Any:
        return (
            "neurobatch.FileArray",
            self.url,
            sorted((k, repr(v)) for k, v in self.storage_options.items()),
            self.shape,
            self.file_dtype.str,
            self.offset,
            self.order,
            repr(self.fingerprint),
        )

    def __getitem__(self, key: Any) -> NDArray[Any]:
        fs, path = _fs(self.url, self.storage_options)
        if isinstance(fs, LocalFileSystem):
            if math.prod(self.shape) == 0:
                return np.asarray(np.empty(self.shape, dtype=self.dtype)[key])
            mapped = np.memmap(
                path,
                dtype=self.file_dtype,
                mode="r",
                offset=self.offset,
                shape=self.shape,
                order=self.order,
            )
            try:
                return np.array(mapped[key], dtype=self.dtype)
            finally:
                del mapped
        box, local = _box(key, self.shape)
        return np.asarray(self._read_box(fs, path, box)[local])

    def _read_box(self, fs: Any, path: str, box: list[tuple[int, int]]) -> NDArray[Any]:
        """Read the box ``[lo, hi)`` per axis by byte ranges."""
        box_shape = tuple(hi - lo for lo, hi in box)
        if math.prod(box_shape) == 0:
            return np.empty(box_shape, dtype=self.dtype)
        # a Fortran-ordered array is the C-ordered array of the reversed shape, transposed
        shape = self.shape if self.order == "C" else self.shape[::-1]
        cbox = box if self.order == "C" else box[::-1]
        strides = [math.prod(shape[i + 1 :]) for i in range(len(shape))]
        # runs are contiguous from the last axis that is not whole
        j = len(shape) - 1
        while j > 0 and cbox[j] == (0, shape[j]):
            j -= 1
        starts = np.array(cbox[j][0] * strides[j], dtype=np.int64) if shape else np.int64(0)
        for i in range(j - 1, -1, -1):
            lo, hi = cbox[i]
            starts = np.add.outer(np.arange(lo, hi, dtype=np.int64) * strides[i], starts)
        run = (cbox[j][1] - cbox[j][0]) * strides[j] if shape else 1
        item = self.file_dtype.itemsize
        first = self.offset + np.ravel(starts) * item
        last = first + run * item
        logger.debug("reading %d byte range(s) of %s", first.size, self.url)
        if first.size == 1:
            data = fs.cat_file(path, start=int(first[0]), end=int(last[0]))
        else:
            parts = fs.cat_ranges(
                [path] * first.size, [int(s) for s in first], [int(e) for e in last]
            )
            for part in parts:
                if isinstance(part, BaseException):
                    raise part
            data = b"".join(parts)
        expected = int(first.size) * run * item
        if len(data) != expected:
            raise InputError(
                f"{self.url!r}: expected {expected} bytes from offset {int(first[0])}, read "
                f"{len(data)}; was the file truncated or changed since it was opened?"
            )
        cshape = tuple(hi - lo for lo, hi in cbox)
        values = np.frombuffer(data, dtype=self.file_dtype).reshape(cshape).astype(self.dtype)
        return values if self.order == "C" else values.transpose()


def lazy(array: FileArray | Any, chunks: Sequence[Any], *, name: str) -> da.Array:
    """Wrap a lazily indexed array (shape, dtype, slicing) in dask without reading it.

    Parameters
    ----------
    array : FileArray or array-like
        Anything with ``shape``, ``dtype`` and ``__getitem__`` taking slices.
    chunks : sequence
        Dask chunks.
    name : str
        Prefix of the dask name (the rest is a token of ``array``).

    Returns
    -------
    dask.array.Array
        Reading nothing until computed.

    Examples
    --------
    >>> lazy(np.arange(6), (4,), name="doc").chunks
    ((4, 2),)
    """
    meta = np.empty((0,) * len(array.shape), dtype=array.dtype)
    wrapped: da.Array = da.from_array(  # type: ignore[no-untyped-call]
        array,
        chunks=tuple(chunks),
        name=f"{name}-{tokenize(array)}",
        fancy=False,
        meta=meta,
    )
    return wrapped


def _fingerprint(fs: Any, path: str) -> tuple[Any, ...]:
    info = fs.info(path)
    return (info.get("size"), info.get("mtime"), info.get("ETag") or info.get("etag"))


def _traces(
    url: str,
    *,
    n_channels: int,
    dtype: np.dtype[Any],
    offset: int,
    storage_options: Mapping[str, Any] | None,
    chunk_memory: int,
    size: int,
    fingerprint: Any,
    name: str,
    stored_channels: int | None = None,
) -> da.Array:
    """The file's samples as a dask array, chunked along time as the store chunks them.

    A chunk holds ``chunk_memory`` bytes of rows as the Recording stores them: the
    ``stored_channels`` kept (all by default) in ``dtype`` and each row's float64 time
    stamp, so that ingest writes the chunks as they are, without rechunking.
    """
    row = n_channels * dtype.itemsize
    n = (size - offset) // row
    kept = n_channels if stored_channels is None else stored_channels
    stored_row = row_bytes(
        [
            xr.Variable(("time", "channel"), np.empty((0, kept), dtype)),
            xr.Variable("time", np.empty(0, _TIME_DTYPE)),
        ]
    )
    reader = FileArray(
        url,
        shape=(n, n_channels),
        dtype=dtype,
        offset=offset,
        storage_options=storage_options,
        fingerprint=fingerprint,
    )
    chunks = time_chunks(n, bytes_per_row=stored_row, chunk_memory=chunk_memory)
    logger.debug("%s: %d samples x %d channels in chunks of %d", url, n, n_channels, chunks[0])
    return lazy(reader, (chunks, n_channels), name=name)


def _check_multiple(
    url: str,
    size: int,
    offset: int,
    n_channels: int,
    dtype: np.dtype[Any],
    *,
    hint: str = "is the file truncated, or are n_channels and dtype right?",
) -> None:
    row = n_channels * dtype.itemsize
    if size < offset:
        raise InputError(f"{url!r} has {size} bytes, fewer than its header (offset {offset})")
    if (size - offset) % row:
        header = f" after the {offset}-byte header" if offset else ""
        raise InputError(
            f"{url!r} has {size - offset} bytes{header}, not a multiple of {row} "
            f"({n_channels} channels x {dtype.itemsize} bytes of {dtype.name}); {hint}"
        )
    if size == offset:
        raise InputError(f"{url!r} has no samples")


def _recording(
    traces: da.Array,
    *,
    sampling_rate: float,
    t0: float,
    channel: NDArray[Any],
    channel_coords: Mapping[str, NDArray[Any]],
    attrs: dict[str, Any],
) -> xr.Dataset:
    n = int(traces.shape[0])
    time = np.arange(n, dtype=_TIME_DTYPE) / sampling_rate + t0
    coords: dict[str, Any] = {"time": ("time", time), "channel": ("channel", channel)}
    coords.update({key: ("channel", values) for key, values in channel_coords.items()})
    return xr.Dataset({"traces": (("time", "channel"), traces)}, coords=coords, attrs=attrs)


# ---------------------------------------------------------------------------------------------
# raw-binary
# ---------------------------------------------------------------------------------------------


def load_raw_binary(
    url: str,
    arguments: RawBinaryArguments | Mapping[str, Any],
    *,
    storage_options: Mapping[str, Any] | None = None,
    chunk_memory: int = DEFAULT_CHUNK_MEMORY,
) -> xr.Dataset:
    """Load a raw interleaved binary file lazily into an ephys Recording Dataset.

    Parameters
    ----------
    url : str
        The file: a local path (memory-mapped) or any fsspec URL (read by byte ranges).
    arguments : RawBinaryArguments or mapping
        The layout (a mapping is validated; it may carry ``format``).
    storage_options : mapping, optional
        Passed to fsspec.
    chunk_memory : int, default 64 MiB
        Bytes per time chunk of the samples as stored (with their time stamps; at least
        4096 samples).

    Returns
    -------
    xarray.Dataset
        ``traces(time, channel)`` in the stored type (native byte order), dask-backed;
        ``time = arange(n) / sampling_rate + t0``; ``channel`` 0, 1, ... or
        ``channel_names``; attrs ``sampling_rate``, ``source``, ``n_samples``,
        ``event_names`` (empty), ``gain_uv`` (when given) and the sidecar's metadata.

    Raises
    ------
    neurobatch.errors.InputNotFoundError
        If the file does not exist.
    neurobatch.errors.InputError
        If its size (less ``offset``) is not a whole number of samples, it has none, or the
        sidecar is bad.
    neurobatch.errors.ConfigError
        If ``arguments`` is an invalid mapping.

    Examples
    --------
    >>> import fsspec
    >>> fsspec.filesystem("memory").pipe("/raw-doc/rec.dat",
    ...                                   np.arange(8, dtype="<i2").tobytes())
    >>> ds = load_raw_binary("memory://raw-doc/rec.dat",
    ...                      {"n_channels": 2, "dtype": "int16", "sampling_rate": 10.0})
    >>> ds.traces.dtype, ds.traces.values[:, 1].tolist(), ds.time.values.tolist()
    (dtype('int16'), [1, 3, 5, 7], [0.0, 0.1, 0.2, 0.3])
    >>> load_raw_binary("memory://raw-doc/rec.dat",
    ...                 {"n_channels": 3, "dtype": "int16", "sampling_rate": 10.0})
    Traceback (most recent call last):
    ...
    neurobatch.errors.InputError: 'memory://raw-doc/rec.dat' has 16 bytes, not a multiple of 6 (3 channels x 2 bytes of int16); is the file truncated, or are n_channels and dtype right?
    """
    args = coerce_arguments(arguments, RawBinaryArguments, fmt=FORMAT_RAW)
    so = dict(storage_options or {})
    fs, path = _fs(url, so)
    size = _file_size(fs, path, url)
    dtype = np.dtype(args.dtype)
    _check_multiple(url, size, args.offset, args.n_channels, dtype)
    traces = _traces(
        url,
        n_channels=args.n_channels,
        dtype=dtype,
        offset=args.offset,
        storage_options=so,
        chunk_memory=chunk_memory,
        size=size,
        fingerprint=_fingerprint(fs, path),
        name="raw-binary",
    )
    channel = (
        np.arange(args.n_channels)
        if args.channel_names is None
        else np.asarray(args.channel_names, dtype=np.str_)
    )
    attrs: dict[str, Any] = {
        "sampling_rate": float(args.sampling_rate),
        "source": url,
        "n_samples": int(traces.shape[0]),
        "event_names": [],
    }
    if args.gain_uv is not None:
        attrs["gain_uv"] = float(args.gain_uv)
    attrs = merge_sidecar(attrs, url, args, storage_options=so)
    return _recording(
        traces,
        sampling_rate=args.sampling_rate,
        t0=args.t0,
        channel=channel,
        channel_coords={},
        attrs=attrs,
    )


# ---------------------------------------------------------------------------------------------
# spikeglx
# ---------------------------------------------------------------------------------------------


def _meta_url(url: str) -> str:
    stem, sep, query = url.partition("?")
    if not stem.endswith(".bin"):
        raise InputError(
            f"{url!r} is not a SpikeGLX binary; format {FORMAT_SPIKEGLX!r} reads '*.bin' files "
            "with their '.meta' beside them"
        )
    return stem[: -len(".bin")] + ".meta" + sep + query


def read_spikeglx_meta(
    url: str, *, storage_options: Mapping[str, Any] | None = None
) -> dict[str, str]:
    """Read a SpikeGLX ``.meta`` file into a mapping of its tags (``~`` prefixes dropped).

    Parameters
    ----------
    url : str
        The ``.meta`` file, a local path or any fsspec URL.
    storage_options : mapping, optional
        Passed to fsspec.

    Returns
    -------
    dict of str to str
        Every ``tag=value`` line, values as written.

    Raises
    ------
    neurobatch.errors.InputNotFoundError
        If the file does not exist.
    neurobatch.errors.InputError
        If a line is not ``tag=value`` or the file is not text.

    Examples
    --------
    >>> import fsspec
    >>> fsspec.filesystem("memory").pipe("/sglx-doc/a.meta",
    ...                                   b"nSavedChans=3\\n~imroTbl=(0,2)(0 0 0 500 250)\\n")
    >>> read_spikeglx_meta("memory://sglx-doc/a.meta")
    {'nSavedChans': '3', 'imroTbl': '(0,2)(0 0 0 500 250)'}
    """
    fs, path = _fs(url, storage_options)
    note_read(url)
    try:
        raw = fs.cat_file(path)
    except FileNotFoundError:
        raise InputNotFoundError(f"SpikeGLX meta file {url!r} does not exist") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"SpikeGLX meta file {url!r} is not text ({e})") from None
    meta: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        tag, sep, value = line.partition("=")
        if not sep or not tag.strip():
            raise InputError(
                f"SpikeGLX meta file {url!r}, line {number}: {line.strip()[:60]!r} is not "
                "'tag=value'"
            )
        meta[tag.strip().lstrip("~")] = value.strip()
    return meta


def _number(meta: Mapping[str, str], key: str, meta_url: str) -> float:
    if key not in meta:
        raise InputError(f"SpikeGLX meta file {meta_url!r} has no {key!r}")
    try:
        value = float(meta[key])
    except ValueError:
        raise InputError(
            f"SpikeGLX meta file {meta_url!r}: {key}={meta[key]!r} is not a number"
        ) from None
    if not math.isfinite(value):
        raise InputError(f"SpikeGLX meta file {meta_url!r}: {key}={meta[key]!r} is not finite")
    return value


def _integer(meta: Mapping[str, str], key: str, meta_url: str) -> int:
    value = _number(meta, key, meta_url)
    if value != int(value) or value < 0:
        raise InputError(
            f"SpikeGLX meta file {meta_url!r}: {key}={meta[key]!r} is not a whole number >= 0"
        )
    return int(value)


def _counts(meta: Mapping[str, str], key: str, meta_url: str, n: int) -> list[int] | None:
    if key not in meta:
        return None
    try:
        counts = [int(part) for part in meta[key].split(",")]
    except ValueError:
        counts = []
    if len(counts) != n or min(counts) < 0:
        raise InputError(
            f"SpikeGLX meta file {meta_url!r}: {key}={meta[key]!r}; expected {n} "
            "comma-separated channel counts"
        )
    return counts


def _saved_channels(meta: Mapping[str, str], meta_url: str, n_saved: int) -> NDArray[np.int64]:
    subset = meta.get("snsSaveChanSubset", "all").strip()
    if subset in ("", "all"):
        return np.arange(n_saved, dtype=np.int64)
    channels: list[int] = []
    try:
        for part in subset.split(","):
            first, sep, last = part.partition(":")
            lo = int(first)
            hi = int(last) if sep else lo
            if hi < lo:
                raise ValueError(part)
            channels.extend(range(lo, hi + 1))  # SpikeGLX ranges include both ends
    except ValueError:
        raise InputError(
            f"SpikeGLX meta file {meta_url!r}: snsSaveChanSubset={subset!r}; expected 'all' "
            "or channel ranges such as '0:383,768'"
        ) from None
    if len(channels) != n_saved:
        raise InputError(
            f"SpikeGLX meta file {meta_url!r}: snsSaveChanSubset={subset!r} lists "
            f"{len(channels)} channels but nSavedChans={n_saved}"
        )
    return np.asarray(channels, dtype=np.int64)


def _stream(meta: Mapping[str, str], meta_url: str) -> str:
    stream = meta.get("typeThis")
    if stream in _STREAMS:
        return stream
    for name, (rate_key, *_) in _STREAMS.items():
        if rate_key in meta:
            return name
    raise InputError(
        f"SpikeGLX meta file {meta_url!r} has no sampling rate (imSampRate, niSampRate or "
        "obSampRate)"
    )


def _imec_gains(
    meta: Mapping[str, str], meta_url: str, n_ap: int
) -> tuple[NDArray[np.float64], NDArray[np.float64]] | None:
    """AP and LF gains per acquired AP channel, as readSGLX.py's ``ChanGainsIM``."""
    probe = int(_number(meta, "imDatPrb_type", meta_url)) if "imDatPrb_type" in meta else 0
    if probe in _NP1_IMRO and "imroTbl" in meta:
        entries = re.findall(r"\(([^()]*)\)", meta["imroTbl"])[1:]
        if len(entries) < n_ap:
            raise InputError(
                f"SpikeGLX meta file {meta_url!r}: imroTbl has {len(entries)} channel entries "
                f"for {n_ap} AP channels"
            )
        try:
            fields = [entry.split() for entry in entries[:n_ap]]
            ap = np.array([float(f[3]) for f in fields], dtype=np.float64)
            lf = np.array([float(f[4]) for f in fields], dtype=np.float64)
        except (IndexError, ValueError):
            raise InputError(
                f"SpikeGLX meta file {meta_url!r}: imroTbl entries are not "
                "'(channel bank reference apgain lfgain ...)'"
            ) from None
        return ap, lf
    if "imChan0apGain" in meta:
        ap_gain = _number(meta, "imChan0apGain", meta_url)
        lf_gain = _number(meta, "imChan0lfGain", meta_url) if "imChan0lfGain" in meta else math.nan
        return np.full(n_ap, ap_gain), np.full(n_ap, lf_gain)
    if probe in _FIXED_GAINS:
        ap_fixed, lf_fixed = _FIXED_GAINS[probe]
        return np.full(n_ap, ap_fixed), np.full(n_ap, math.nan if lf_fixed is None else lf_fixed)
    logger.info("%s: unknown gain of probe type %d; no conversion to microvolts", meta_url, probe)
    return None


def _channel_gains_uv(
    meta: Mapping[str, str],
    meta_url: str,
    stream: str,
    kinds: NDArray[Any],
    channels: NDArray[np.int64],
    counts: list[int] | None,
) -> NDArray[np.float64]:
    """Microvolts per bit of each saved channel (NaN for digital or unknown channels)."""
    _, _, _, range_key, max_key, default_max = _STREAMS[stream]
    gains = np.full(channels.size, math.nan)
    if range_key not in meta or counts is None:
        return gains
    max_int = _number(meta, max_key, meta_url) if max_key in meta else float(default_max)
    volts_per_bit = _number(meta, range_key, meta_url) / max_int
    if stream == "imec":
        per_channel = _imec_gains(meta, meta_url, counts[0])
        if per_channel is None:
            return gains
        ap, lf = per_channel
        is_ap = kinds == "ap"
        is_lf = kinds == "lf"
        gains[is_ap] = ap[channels[is_ap]]
        gains[is_lf] = lf[channels[is_lf] - counts[0]]
    elif stream == "nidq":
        for kind, key in (("mn", "niMNGain"), ("ma", "niMAGain")):
            if (kinds == kind).any():
                gains[kinds == kind] = _number(meta, key, meta_url) if key in meta else math.nan
        gains[kinds == "xa"] = 1.0
    else:
        gains[kinds == "xa"] = 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(1e6 * volts_per_bit / gains, dtype=np.float64)


def load_spikeglx(
    url: str,
    arguments: SpikeGLXArguments | Mapping[str, Any],
    *,
    storage_options: Mapping[str, Any] | None = None,
    chunk_memory: int = DEFAULT_CHUNK_MEMORY,
) -> xr.Dataset:
    """Load a SpikeGLX binary with its ``.meta`` lazily into an ephys Recording Dataset.

    Parameters
    ----------
    url : str
        The ``.bin`` file (its ``.meta`` lies beside it): a local path (memory-mapped) or
        any fsspec URL (read by byte ranges).
    arguments : SpikeGLXArguments or mapping
        The loader's arguments (a mapping is validated; it may carry ``format``).
    storage_options : mapping, optional
        Passed to fsspec.
    chunk_memory : int, default 64 MiB
        Bytes per time chunk of the samples as stored (the channels kept and their time
        stamps; at least 4096 samples).

    Returns
    -------
    xarray.Dataset
        ``traces(time, channel)`` int16, dask-backed, the analog channels (and the digital
        ones with ``include_digital``); ``channel`` the acquired channel indices;
        per-channel coordinates ``channel_kind`` (``ap``, ``lf``, ``sync``, ``mn``, ``ma``,
        ``xa``, ``xd``) and ``channel_gain_uv`` (µV per bit; NaN for digital channels or
        unknown gains); attrs ``sampling_rate``, ``source``, ``n_samples``,
        ``event_names`` (empty), ``stream`` (imec, nidq, obx), ``first_sample``,
        ``gain_uv`` (when every analog channel kept has the same gain), ``spikeglx_meta``
        (every tag of the meta file) and the sidecar's metadata.

    Raises
    ------
    neurobatch.errors.InputNotFoundError
        If the ``.bin`` or its ``.meta`` does not exist.
    neurobatch.errors.InputError
        A file size that is not a whole number of samples or disagrees with the meta's
        ``fileSizeBytes``, a meta without the tags it needs, channel lists that disagree
        with ``nSavedChans``, or a bad sidecar.
    neurobatch.errors.ConfigError
        If ``arguments`` is an invalid mapping.

    Examples
    --------
    >>> import fsspec
    >>> data = np.arange(12, dtype="<i2")                 # 4 samples x (2 AP + 1 sync)
    >>> fs = fsspec.filesystem("memory")
    >>> fs.pipe("/sglx-doc/run_g0_t0.imec0.ap.bin", data.tobytes())
    >>> fs.pipe("/sglx-doc/run_g0_t0.imec0.ap.meta", (
    ...     "typeThis=imec\\nimSampRate=30000\\nnSavedChans=3\\nfileSizeBytes=24\\n"
    ...     "acqApLfSy=2,2,1\\nsnsSaveChanSubset=0:1,4\\nimAiRangeMax=0.6\\nimMaxInt=512\\n"
    ...     "imDatPrb_type=0\\n~imroTbl=(0,2)(0 0 0 500 250 1)(1 0 0 500 250 1)\\n").encode())
    >>> ds = load_spikeglx("memory://sglx-doc/run_g0_t0.imec0.ap.bin", {})
    >>> ds.traces.shape, ds.channel.values.tolist(), ds.attrs["gain_uv"]
    ((4, 2), [0, 1], 2.34375)
    >>> ds.traces.values[:, 1].tolist()
    [1, 4, 7, 10]
    """
    args = coerce_arguments(arguments, SpikeGLXArguments, fmt=FORMAT_SPIKEGLX)
    so = dict(storage_options or {})
    meta_url = _meta_url(url)
    fs, path = _fs(url, so)
    size = _file_size(fs, path, url, what="SpikeGLX binary")
    meta_fs, meta_path = _fs(meta_url, so)
    if not meta_fs.exists(meta_path):
        raise InputNotFoundError(
            f"SpikeGLX binary {url!r} has no meta file {meta_url!r} beside it; the .meta "
            "gives its channels and sampling rate"
        )
    meta = read_spikeglx_meta(meta_url, storage_options=so)
    stream = _stream(meta, meta_url)
    rate_key, counts_key, kind_names, *_ = _STREAMS[stream]
    rate = _number(meta, rate_key, meta_url)
    if rate <= 0:
        raise InputError(f"SpikeGLX meta file {meta_url!r}: {rate_key}={meta[rate_key]!r}")
    n_saved = _integer(meta, "nSavedChans", meta_url)
    if n_saved < 1:
        raise InputError(f"SpikeGLX meta file {meta_url!r}: nSavedChans={n_saved}")
    dtype = np.dtype("<i2")
    _check_multiple(
        url,
        size,
        0,
        n_saved,
        dtype,
        hint=f"is the file truncated, or is nSavedChans in {meta_url!r} not its own?",
    )
    expected = _integer(meta, "fileSizeBytes", meta_url)
    if expected != size:
        raise InputError(
            f"SpikeGLX binary {url!r} has {size} bytes but its meta file says "
            f"fileSizeBytes={expected}; is the copy incomplete, or the .meta another file's?"
        )

    channels = _saved_channels(meta, meta_url, n_saved)
    counts = _counts(meta, counts_key, meta_url, len(kind_names))
    if counts is None:
        kinds = np.full(n_saved, "unknown", dtype="<U7")
    else:
        bounds = np.cumsum(counts)
        if channels.size and channels.max() >= bounds[-1]:
            raise InputError(
                f"SpikeGLX meta file {meta_url!r}: saved channel {int(channels.max())} is "
                f"beyond the {int(bounds[-1])} acquired channels ({counts_key}={meta[counts_key]})"
            )
        kinds = np.asarray(kind_names, dtype="<U7")[np.searchsorted(bounds, channels, "right")]
    gains_uv = _channel_gains_uv(meta, meta_url, stream, kinds, channels, counts)

    keep = np.arange(n_saved)
    if not args.include_digital:
        keep = np.flatnonzero(~np.isin(kinds, list(_DIGITAL)))
        if keep.size == 0:
            raise InputError(
                f"SpikeGLX binary {url!r} holds only digital channels; set "
                "include_digital: true to load them"
            )
    traces = _traces(
        url,
        n_channels=n_saved,
        dtype=dtype,
        offset=0,
        storage_options=so,
        chunk_memory=chunk_memory,
        size=size,
        fingerprint=_fingerprint(fs, path),
        name="spikeglx",
        stored_channels=keep.size,
    )
    if keep.size < n_saved:
        contiguous = bool((np.diff(keep) == 1).all())
        traces = traces[:, slice(int(keep[0]), int(keep[-1]) + 1) if contiguous else keep]

    analog = gains_uv[keep][~np.isin(kinds[keep], list(_DIGITAL))]
    first_sample = int(_number(meta, "firstSample", meta_url)) if "firstSample" in meta else 0
    attrs: dict[str, Any] = {
        "sampling_rate": rate,
        "source": url,
        "n_samples": int(traces.shape[0]),
        "event_names": [],
        "stream": stream,
        "first_sample": first_sample,
    }
    if analog.size and np.isfinite(analog).all() and np.unique(analog).size == 1:
        attrs["gain_uv"] = float(analog[0])
    attrs["spikeglx_meta"] = dict(meta)
    attrs = merge_sidecar(attrs, url, args, storage_options=so)
    t0 = first_sample / rate if args.time_origin == "stream" else 0.0
    logger.debug("%s: SpikeGLX %s stream, %d of %d channels", url, stream, keep.size, n_saved)
    return _recording(
        traces,
        sampling_rate=rate,
        t0=t0,
        channel=channels[keep],
        channel_coords={"channel_kind": kinds[keep], "channel_gain_uv": gains_uv[keep]},
        attrs=attrs,
    )
