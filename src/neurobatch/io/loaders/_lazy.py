"""What the lazy loaders share: arrays read lazily from files, chunk lengths, sidecars.

The lazy loaders (``spikeglx``, ``raw-binary``, ``nwb``, ``npy``, ``rgc-pickle``) read
nothing on load but headers and metadata; their data come back dask-backed and chunked along
time (or frames) from a memory budget. This module holds what they share:
:class:`FileArray` (a lazily read C- or Fortran-ordered array inside a file), :func:`lazy`
(its dask wrapper), :func:`time_chunks` and :func:`merge_sidecar`, and the helpers of the
interleaved binary formats (``spikeglx``, ``raw-binary``), which return the ephys Recording
Dataset ``traces(time, channel)`` chunked from ``chunk_memory`` bytes per chunk of the
samples as the Recording stores them, with their time stamps, so that ingest writes the
chunks unchanged. Their arguments models live in :mod:`neurobatch.config.lazy_arguments`.

Local files are memory-mapped, one ``numpy.memmap`` per chunk read; files behind any other
fsspec URL are read by byte ranges, one request per chunk. The dask graph holds only the
URL and the layout (never an open file or a mapped array), so it travels to the workers of
a distributed cluster, which read their own chunks.
"""

from __future__ import annotations

import logging
import math
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
from neurobatch.errors import InputError, InputNotFoundError
from neurobatch.io.loaders.sidecar import load_annotation

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_CHUNK_MEMORY",
    "FileArray",
    "lazy",
    "merge_sidecar",
    "time_chunks",
]

#: The type of the time stamps the Recording stores beside each row of samples.
_TIME_DTYPE = np.float64
#: Memory budget of one chunk when the caller gives none (the engine's default).
DEFAULT_CHUNK_MEMORY = 64 * 2**20


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


# ---------------------------------------------------------------------------------------------
# Interleaved binary recordings (spikeglx, raw-binary)
# ---------------------------------------------------------------------------------------------


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
