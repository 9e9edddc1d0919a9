"""Zarr datasets on any fsspec URL, checksummed, and the report of their damaged chunks.

Every dataset neurobatch keeps is a Zarr group that ``xarray.open_zarr`` reads: chunked
along its long dimension from a memory budget, compressed, with consolidated metadata. String
variables are stored with Zarr's variable-length UTF-8 type (``numpy.dtypes.StringDType``),
which round-trips without the "no Zarr V3 specification" warning of fixed-width ``<U``
strings; they read back as ``StringDType`` arrays, equal element for element to the originals.

Formats. Stores are written in Zarr format 3 unless ``zarr_format=2`` is asked
(``output.zarr_format``), for readers pinned to zarr-python 2 (spikeinterface, GuPPy and
neuroconv environments pin ``zarr<3``); every reader here opens either format.

Integrity. Every array (of :func:`write_dataset` and of the trials store) stores a checksum
of each chunk's stored bytes, so a chunk whose bytes changed fails when read instead of
decoding to wrong numbers (a flipped bit in an lz4 or zstd chunk often decodes without
error). In format 3 it is a CRC-32C (zarr's ``crc32c`` codec, after the compressor). Format 2
allows one compressor, applied after the filters: there the compressor is numcodecs' ``crc32``
(a CRC-32, which every numcodecs release reads without an extra package, unlike its
``crc32c``) and the compression is the last filter, so the checksum again covers the
compressed bytes as stored. A chunk changed in place (same size):
computing a variable of :func:`open_dataset` or
:func:`~neurobatch.io.trials_store.open_trials` raises
:class:`~neurobatch.errors.StoreDamagedError` naming the store, the array and the chunk, from
any thread, process or distributed worker (their dask chunks are read by a getter that
translates the codec's error). Other reads of a store (plain ``xarray.open_zarr``, zarr
arrays) get the same error inside :func:`damage_reported`, which names the array when the
traceback shows it. :func:`is_damage` tells a checksum or decompression failure from other
errors. A chunk deleted, truncated or rewritten with another size is found by the inventory
of the commit marker instead (:mod:`neurobatch.io.commit`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

import numcodecs  # type: ignore[import-untyped]
import numpy as np
import xarray as xr
import zarr
from fsspec.implementations.local import LocalFileSystem
from numpy.typing import ArrayLike, NDArray
from zarr.abc.store import Store
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec
from zarr.storage import FsspecStore, LocalStore

from neurobatch.chunking import STAGE_HANDOFF_MEMORY, chunk_length, row_bytes
from neurobatch.errors import StoreDamagedError
from neurobatch.io.commit import _fs, _remove_marker, to_json_safe
from neurobatch.io.files import retried, translated
from neurobatch.io.zarr_writer import new_store, to_zarr

__all__ = [
    "ZarrFormat",
    "damage_reported",
    "ensure_group",
    "is_damage",
    "open_dataset",
    "to_zarr",
    "write_dataset",
    "zarr_store",
]

logger = logging.getLogger(__name__)

_STRING = np.dtypes.StringDType()

ZarrFormat = Literal[2, 3]
"""The Zarr format of the stores neurobatch writes (``output.zarr_format``)."""

CHUNK_KEY_ENCODING = {"name": "default", "separator": "."}
"""The chunk keys of the Zarr 3 arrays neurobatch writes: ``c.0``, ``c.1.0``."""

_GROUP_DOCUMENTS: dict[int, tuple[str, ...]] = {3: ("zarr.json",), 2: (".zgroup", ".zattrs")}
"""The metadata documents of a group, by format."""


def _validate_zarr_format(zarr_format: object) -> ZarrFormat:
    if zarr_format not in (2, 3) or isinstance(zarr_format, bool):
        raise ValueError(f"zarr_format must be 2 or 3, got {zarr_format!r}")
    return zarr_format


# --- stores ----------------------------------------------------------------------------------


def zarr_store(
    url: str, *, storage_options: Mapping[str, Any] | None = None, read_only: bool = False
) -> Store:
    """Return a Zarr store for a local path or any fsspec URL.

    Local paths (and ``file://`` URLs) get a :class:`zarr.storage.LocalStore`, which creates
    folders as needed; every other protocol gets a :class:`zarr.storage.FsspecStore`.

    Parameters
    ----------
    url : str
        Local path or fsspec URL of the store's root.
    storage_options : mapping, optional
        Options for the fsspec filesystem (credentials, endpoint, ...).
    read_only : bool, default False
        Open the store read-only.

    Returns
    -------
    zarr.abc.store.Store
        The store.

    Examples
    --------
    >>> type(zarr_store("memory://doc/store.zarr")).__name__
    'FsspecStore'
    """
    fs, path = _fs(url, storage_options)
    if isinstance(fs, LocalFileSystem):
        return LocalStore(path, read_only=read_only)
    return FsspecStore.from_url(
        url, storage_options=dict(storage_options or {}), read_only=read_only
    )


# --- strings ---------------------------------------------------------------------------------


def _is_string_dtype(dtype: np.dtype[Any]) -> bool:
    return dtype.kind in "USOT"


def _to_strings(values: ArrayLike) -> NDArray[Any]:
    """Return ``values`` as a variable-length string array; None and NaN become ``""``."""
    array = np.asarray(values)
    if array.dtype == _STRING:
        return array
    if array.dtype.kind == "O":
        flat = [_string_of(v) for v in array.ravel().tolist()]
        return np.array(flat, dtype=_STRING).reshape(array.shape)
    if array.dtype.kind == "f":
        flat = [_string_of(v) for v in array.ravel().tolist()]
        return np.array(flat, dtype=_STRING).reshape(array.shape)
    return array.astype(_STRING)


def _string_of(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bytes):
        return value.decode()
    return str(value)


_VLEN_STR = np.dtype(object, metadata={"element_type": str})
"""Object arrays of ``str``, marked as xarray marks variable-length strings
(``xarray.coding.strings.create_vlen_dtype(str)``), so that it never loads a dask-backed one
to find out what it holds."""


def _to_object_strings(values: ArrayLike) -> NDArray[Any]:
    """Return ``values`` as Python ``str`` objects; None and NaN become ``""``."""
    return _to_strings(values).astype(_VLEN_STR)


def _with_zarr_strings(ds: xr.Dataset, zarr_format: ZarrFormat = 3) -> xr.Dataset:
    """Return ``ds`` with no stale encodings and every string variable variable-length:
    ``StringDType`` for Zarr 3, Python ``str`` objects for Zarr 2 (its ``vlen-utf8``
    strings; xarray would store ``StringDType`` as fixed-width ``<U`` there)."""
    ds = ds.copy(deep=False)
    convert, dtype = (_to_strings, _STRING) if zarr_format == 3 else (_to_object_strings, _VLEN_STR)
    converted = {}
    for name, variable in ds.variables.items():
        variable.encoding = {}
        if not _is_string_dtype(variable.dtype) or variable.dtype == _STRING == dtype:
            continue
        if variable.chunks is not None:
            converted[name] = variable.copy(data=variable.data.map_blocks(convert, dtype=dtype))
        else:
            converted[name] = variable.copy(data=convert(variable.values))
    if not converted:
        return ds
    coords = {name: v for name, v in converted.items() if name in ds.coords}
    return ds.assign_coords(coords).assign(
        {name: v for name, v in converted.items() if name not in coords}
    )


def _object_strings(ds: xr.Dataset) -> xr.Dataset:
    """Strings as Python ``str`` objects, as xarray and pandas hold them everywhere else.

    NumPy's variable-length ``StringDType`` (how strings are stored) cannot be cast with
    ``astype(str)``, which callers reasonably do; object arrays can.
    """
    changed = {
        name: variable.astype(object)
        for name, variable in ds.variables.items()
        if isinstance(variable.dtype, np.dtypes.StringDType)
    }
    return ds.assign_coords({k: v for k, v in changed.items() if k in ds.coords}).assign(
        {k: v for k, v in changed.items() if k not in ds.coords}
    )


def _codecs(dtype: np.dtype[Any], zarr_format: ZarrFormat = 3) -> dict[str, Any]:
    """The codecs of an array: a compressor, then a checksum of each stored chunk.

    The checksum comes last, so it covers the compressed bytes as stored: any change to a
    chunk object (a flipped bit, a truncation) fails it on read, before decompression. In
    format 3 they are the array's ``compressors``; format 2 has a single compressor, applied
    after the filters, so the compressor is the checksum and the compression the last filter
    (strings are first encoded by ``vlen-utf8``, as Zarr 2 requires).

    In format 3 the chunk keys are ``c.0``, ``c.1.0`` (Zarr's default encoding with the
    separator ``.``, which every reader of the format reads): an array's chunks are files
    of its own folder, not of a ``c/`` folder inside it, one folder less to create per
    array (for the small stores of a small item, creating folders costs as much as
    writing the files).

    Returns
    -------
    dict
        ``compressors`` (and, in format 2, ``filters``; in format 3
        ``chunk_key_encoding``), as ``create_array`` and ``Dataset.to_zarr``'s encoding
        take them.

    Examples
    --------
    >>> [type(c).__name__ for c in _codecs(np.dtype("f8"))["compressors"]]
    ['BloscCodec', 'Crc32cCodec']
    >>> v2 = _codecs(np.dtype("f8"), 2)
    >>> [c.codec_id for c in v2["filters"]], v2["compressors"].codec_id
    (['blosc'], 'crc32')
    """
    strings = _is_string_dtype(dtype)
    if zarr_format == 2:
        compressor: Any = (
            numcodecs.Zstd(level=3)
            if strings
            else numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE)
        )
        filters = (numcodecs.VLenUTF8(), compressor) if strings else (compressor,)
        return {"filters": filters, "compressors": numcodecs.CRC32()}
    keys = {"chunk_key_encoding": dict(CHUNK_KEY_ENCODING)}
    if strings:
        return {"compressors": (ZstdCodec(level=3), Crc32cCodec()), **keys}
    # lz4 in Blosc with byte shuffle: float64 signals compress about as well as with zstd
    # (they barely compress either way) at several times the speed
    compressor = BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")
    return {"compressors": (compressor, Crc32cCodec()), **keys}


# --- datasets --------------------------------------------------------------------------------


def write_dataset(
    ds: xr.Dataset,
    url: str,
    *,
    chunk_memory: int,
    storage_options: Mapping[str, Any] | None = None,
    dim: str | None = "time",
    minimum: int = 4096,
    zarr_format: ZarrFormat = 3,
) -> xr.Dataset | None:
    """Write a dataset as a Zarr group, chunked along ``dim`` from a memory budget.

    The store is overwritten; a commit marker left in it is removed first, so that a
    rewritten store is never taken for a committed one. Numeric variables are compressed with
    Blosc/lz4 (byte shuffle), strings with zstd; the metadata are consolidated. A dask-backed
    dataset is rechunked lazily to the store's chunks and computed chunk by chunk by
    ``to_zarr``, never loaded whole, unless it fits ``chunk_memory``: then it is computed
    at once and written from memory (see :func:`to_zarr`).

    Parameters
    ----------
    ds : xarray.Dataset
        A Recording or Processed dataset (or any dataset with dimension ``dim``). Attributes
        must be JSON values (nested dicts and lists are fine).
    url : str
        Local path or fsspec URL of the store.
    chunk_memory : int
        Bytes of one time chunk across every variable along ``dim`` (see
        :func:`~neurobatch.chunking.chunk_length`).
    storage_options : mapping, optional
        Options for the fsspec filesystem.
    dim : str or None, default "time"
        The dimension to chunk; every other dimension is one chunk. None for a small
        dataset (a user stage's summary, scalars): every variable in one chunk.
    minimum : int, default 4096
        The shortest chunk along ``dim`` (see :func:`~neurobatch.chunking.chunk_length`); 1
        for datasets whose rows are large, such as a movie's frames.
    zarr_format : {3, 2}, default 3
        The store's Zarr format: 2 for readers pinned to zarr-python 2. Either way every
        chunk carries a checksum of its stored bytes (see the module documentation).

    Returns
    -------
    xarray.Dataset or None
        When the dataset was written from memory and is small (at most
        :data:`~neurobatch.chunking.STAGE_HANDOFF_MEMORY` and ``chunk_memory``), what
        :func:`open_dataset` reads back, loaded (the same values, types, coordinates and
        attributes), so that a reader in the same process need not open the store; else
        None.

    Raises
    ------
    ValueError
        If ``ds`` has no dimension ``dim``, ``chunk_memory`` is not a positive integer or
        ``zarr_format`` is neither 2 nor 3.
    TypeError
        If an attribute is not a JSON value.
    neurobatch.errors.StorageError
        If the storage fails the write (a full disk, say); what was written is removed.

    See Also
    --------
    open_dataset : read it back lazily.
    neurobatch.io.commit.commit : mark the output complete once everything is written.

    Examples
    --------
    >>> ds = xr.Dataset(
    ...     {"signal": ("time", np.arange(6.0)), "event_time": ("event", [0.2, 0.4])},
    ...     coords={"time": np.arange(6) / 10, "event_name": ("event", ["cue", "lever"])},
    ...     attrs={"sampling_rate": 10.0, "fit": {"slope": 1.0}},
    ... )
    >>> _ = write_dataset(ds, "memory://doc/recording.zarr", chunk_memory=2**20)
    >>> back = open_dataset("memory://doc/recording.zarr")
    >>> back.signal.values
    array([0., 1., 2., 3., 4., 5.])
    >>> back.event_name.values.tolist(), back.attrs["fit"]
    (['cue', 'lever'], {'slope': 1.0})
    >>> _ = write_dataset(xr.Dataset({"mean": 2.5}), "memory://doc/summary.zarr",
    ...                   chunk_memory=2**20, dim=None)
    >>> float(open_dataset("memory://doc/summary.zarr")["mean"])
    2.5

    In Zarr format 2, for zarr-python 2 readers:

    >>> _ = write_dataset(ds, "memory://doc/recording-v2.zarr", chunk_memory=2**20, zarr_format=2)
    >>> zarr.open_group(zarr_store("memory://doc/recording-v2.zarr")).metadata.zarr_format
    2
    >>> open_dataset("memory://doc/recording-v2.zarr").signal.values
    array([0., 1., 2., 3., 4., 5.])
    """
    zarr_format = _validate_zarr_format(zarr_format)
    if dim is not None and dim not in ds.dims:
        raise ValueError(
            f"cannot write to {url}: the dataset has no dimension {dim!r} (it has "
            f"{sorted(map(str, ds.dims))}); expected a Recording or Processed dataset"
        )
    n = 1
    if dim is not None:
        bytes_per_sample = row_bytes(ds.variables.values(), dim=dim)
        length = chunk_length(
            chunk_memory, bytes_per_sample=max(1, bytes_per_sample), minimum=minimum
        )
        n = max(min(length, ds.sizes[dim]), 1)
    if ds.nbytes <= chunk_memory:
        # within one chunk's budget: computed at once (its variables share their graph),
        # then written from memory
        ds = ds.compute()
    prepared = _with_zarr_strings(ds, zarr_format)
    prepared.attrs = to_json_safe(dict(ds.attrs), name=f"attrs of {url}")
    encoding: dict[str, dict[str, Any]] = {}
    rechunk: dict[str, dict[Any, int]] = {}
    for name, variable in prepared.variables.items():
        chunks = tuple(n if d == dim else max(1, s) for d, s in variable.sizes.items())
        variable.attrs = to_json_safe(dict(variable.attrs), name=f"attrs of {name!r} in {url}")
        encoding[str(name)] = _codecs(variable.dtype, zarr_format)
        if chunks:
            encoding[str(name)]["chunks"] = chunks
            if variable.chunks is not None:
                rechunk[str(name)] = dict(zip(variable.dims, chunks, strict=True))
    for name, sizes in rechunk.items():
        # dask chunks must tile the store's chunks for to_zarr to write them in parallel
        rechunked = prepared[name].variable.chunk(sizes)
        if name in prepared.coords:
            prepared = prepared.assign_coords({name: rechunked})
        else:
            prepared[name] = rechunked
    store = zarr_store(url, storage_options=storage_options)
    logger.debug("writing %s (Zarr %d): %d samples per %r chunk", url, zarr_format, n, dim)
    with new_store(url, storage_options=storage_options):
        _remove_marker(url, storage_options)
        to_zarr(prepared, store, encoding, zarr_format=zarr_format)
    in_memory = not any(variable.chunks is not None for variable in prepared.variables.values())
    small = prepared.nbytes <= min(chunk_memory, STAGE_HANDOFF_MEMORY)
    return _as_read(prepared) if in_memory and small else None


def _as_read(written: xr.Dataset) -> xr.Dataset:
    """An in-memory dataset as :func:`write_dataset` stored it, as :func:`open_dataset`
    reads it back: Zarr's variable-length strings as Python ``str`` objects, the attributes
    as JSON values, every array a copy (no later change to the written arrays shows)."""
    variables = {
        name: xr.Variable(
            variable.dims,
            variable.values.astype(_VLEN_STR if variable.dtype == _STRING else variable.dtype),
            attrs=dict(variable.attrs),
        )
        for name, variable in written.variables.items()
    }
    coords = {name: variables.pop(name) for name in written.coords}
    return xr.Dataset(variables, coords=coords, attrs=dict(written.attrs))


def ensure_group(
    url: str,
    *,
    storage_options: Mapping[str, Any] | None = None,
    zarr_format: ZarrFormat = 3,
) -> None:
    """Make ``url`` a Zarr group (an item's), so that its stages open as its subgroups.

    A group of the other format there (written before ``output.zarr_format`` changed)
    becomes a group of this one: its metadata documents are replaced; what it holds stays.

    Parameters
    ----------
    url : str
        Local path or fsspec URL of the group.
    storage_options : mapping, optional
        Options for the fsspec filesystem.
    zarr_format : {3, 2}, default 3
        The group's Zarr format.

    Raises
    ------
    neurobatch.errors.StorageError
        If the storage fails the write.

    Examples
    --------
    >>> ensure_group("memory://doc/item")
    >>> zarr.open_group(zarr_store("memory://doc/item"), mode="r").metadata.zarr_format
    3
    >>> ensure_group("memory://doc/item", zarr_format=2)
    >>> zarr.open_group(zarr_store("memory://doc/item"), mode="r").metadata.zarr_format
    2
    """
    zarr_format = _validate_zarr_format(zarr_format)
    fs, path = _fs(url, storage_options)
    root = path.rstrip("/")

    def ensure() -> None:
        if fs.exists(f"{root}/{_GROUP_DOCUMENTS[zarr_format][0]}"):
            return
        for name in _GROUP_DOCUMENTS[5 - zarr_format]:  # the other format's
            with contextlib.suppress(FileNotFoundError):
                fs.rm_file(f"{root}/{name}")
        store = zarr_store(url, storage_options=storage_options)
        zarr.open_group(store, mode="a", zarr_format=zarr_format)

    with translated(url, action="writing"):
        retried(ensure, url=url, action="writing")


def open_dataset(url: str, *, storage_options: Mapping[str, Any] | None = None) -> xr.Dataset:
    """Open a dataset written by :func:`write_dataset` lazily, in the store's chunks.

    Parameters
    ----------
    url : str
        Local path or fsspec URL of the store.
    storage_options : mapping, optional
        Options for the fsspec filesystem.

    Returns
    -------
    xarray.Dataset
        Dask-backed variables (index coordinates such as ``time`` are in memory, as xarray
        always loads indexes); strings come back as Python ``str`` objects (object arrays).
        Stores of either Zarr format are read.
        Computing a variable whose chunk fails its checksum (or cannot be decompressed)
        raises :class:`~neurobatch.errors.StoreDamagedError` naming ``url``, the array and
        the chunk, wherever the task runs (a thread, a process, a distributed worker).

    Raises
    ------
    FileNotFoundError
        If there is no Zarr store at ``url``.
    neurobatch.errors.StoreDamagedError
        If a chunk of an index coordinate (read now) is damaged.

    Examples
    --------
    >>> ds = xr.Dataset({"x": ("time", np.ones(3))}, coords={"time": [0.0, 0.5, 1.0]})
    >>> _ = write_dataset(ds, "memory://doc/open.zarr", chunk_memory=2**20)
    >>> open_dataset("memory://doc/open.zarr").x.chunks
    ((3,),)
    """
    store = zarr_store(url, storage_options=storage_options, read_only=True)
    # every chunk is read by a getter that names this store when the chunk is damaged
    checked = {"getitem": _CheckedGetter(url)}
    with damage_reported(url):  # the indexes, which xarray reads now
        try:
            opened = xr.open_zarr(store, chunks={}, consolidated=True, from_array_kwargs=checked)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{url}: no Zarr store there ({e})") from e
        except (KeyError, ValueError) as e:
            if is_damage(e):
                raise
            # a store without consolidated metadata (written by someone else): read it plainly
            try:
                opened = xr.open_zarr(
                    store, chunks={}, consolidated=False, from_array_kwargs=checked
                )
            except FileNotFoundError as e:
                raise FileNotFoundError(f"{url}: no Zarr store there ({e})") from e
    return _object_strings(cast(xr.Dataset, opened))


# --- damaged chunks --------------------------------------------------------------------------

_CHECKSUM_MESSAGE = re.compile(r"Stored and computed (?:(\w+) )?checksum do not match")
"""What zarr's ``Crc32cCodec`` raises (a ValueError) when a chunk's bytes changed, and
numcodecs' checksums (a RuntimeError, naming the codec: ``crc32``) in Zarr 2 stores."""
_CHECKSUM_NAMES = {None: "CRC-32C", "crc32c": "CRC-32C", "crc32": "CRC-32"}
_DECOMPRESSION_MESSAGES = (
    "error during blosc decompression",  # numcodecs' Blosc (RuntimeError)
    "Zstd decompression error",  # numcodecs' Zstd (RuntimeError)
    "Could not set determine zstd frame size",  # numcodecs' Zstd, the cause of the above
)
"""What the decompressors of stores without checksums raise on a truncated or garbled chunk."""


def _chain(error: BaseException) -> Iterator[BaseException]:
    """``error``, then its causes and contexts (each once)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def is_damage(error: BaseException) -> bool:
    """Tell whether ``error`` (or what caused it) is a damaged chunk of a Zarr store.

    A damaged chunk is one whose checksum does not match its bytes (zarr's ``Crc32cCodec``
    raises ``ValueError("Stored and computed checksum do not match ...")``, numcodecs'
    ``CRC32`` of a Zarr 2 store ``RuntimeError("Stored and computed crc32 checksum do not
    match ...")``), or, in a store written without checksums, one that Blosc or Zstd cannot decompress
    (numcodecs raises ``RuntimeError("error during blosc decompression: -1")`` or
    ``RuntimeError("Zstd decompression error: ...")``). A
    :class:`~neurobatch.errors.StoreDamagedError` is one too. Every other error (a missing
    file, a network failure, a bug) is not.

    Parameters
    ----------
    error : BaseException
        The error caught; its ``__cause__`` and ``__context__`` chain is followed.

    Returns
    -------
    bool
        True for a checksum or decompression failure.

    See Also
    --------
    damage_reported : re-raise such errors as ``StoreDamagedError`` naming the store.

    Examples
    --------
    >>> is_damage(ValueError("Stored and computed checksum do not match. Stored: ..."))
    True
    >>> is_damage(RuntimeError("Stored and computed crc32 checksum do not match. Stored: 1."))
    True
    >>> is_damage(RuntimeError("error during blosc decompression: -1"))
    True
    >>> is_damage(ValueError("cannot reshape array"))
    False
    """
    return _damage_cause(error) is not None


def _damage_cause(error: BaseException) -> BaseException | None:
    """The checksum or decompression failure in ``error``'s chain, if there is one."""
    for link in _chain(error):
        if isinstance(link, StoreDamagedError):
            return link
        if isinstance(link, ValueError | RuntimeError):
            text = str(link)
            if _CHECKSUM_MESSAGE.search(text) or any(m in text for m in _DECOMPRESSION_MESSAGES):
                return link
    return None


def _damage_text(url: str, error: BaseException, array: str | None, chunk: str | None) -> str:
    """The message of a :class:`~neurobatch.errors.StoreDamagedError`."""
    cause = _damage_cause(error) or error
    checksum = _CHECKSUM_MESSAGE.search(str(cause))
    if checksum is not None:
        codec = checksum.group(1)
        what = f"failed its {_CHECKSUM_NAMES.get(codec, codec)} checksum"
    else:
        detail = " ".join(str(cause).split()) or type(cause).__name__
        what = f"could not be decompressed ({detail}; the store has no checksums)"
    where = f"array {array!r}: " if array else ""
    return (
        f"{url}: {where}{chunk or 'a chunk'} {what}. Its bytes changed after it was written, "
        "so the store cannot be trusted: remove it and run the stage that wrote it again"
    )


def _array_name(array: zarr.Array[Any] | zarr.AsyncArray[Any]) -> str:
    """The array's path in its store (or the store's URL when the array is its root)."""
    return array.path or str(array.store_path)


def _zarr_array_in(wrapped: Any) -> zarr.Array[Any] | None:
    """The zarr array under xarray's lazy-indexing wrappers (``.array`` / ``._array``)."""
    for _ in range(32):
        if isinstance(wrapped, zarr.Array):
            return wrapped
        inner = getattr(wrapped, "_array", None)
        wrapped = inner if inner is not None else getattr(wrapped, "array", None)
        if wrapped is None:
            return None
    return None


def _chunk_text(array: zarr.Array[Any], key: Any) -> str | None:
    """``"chunk c.1"`` (or the range of chunks) that the selection ``key`` reads."""
    if not isinstance(key, tuple) or len(key) != array.ndim:
        return None
    if not all(isinstance(k, slice) and k.step in (None, 1) for k in key):
        return None
    grid = array.shards or array.chunks
    first, last = [], []
    for k, size, length in zip(key, grid, array.shape, strict=True):
        start, stop, _ = k.indices(length)
        if stop <= start:
            return None
        first.append(start // size)
        last.append((stop - 1) // size)
    encode = array.metadata.encode_chunk_key
    if first == last:
        return f"chunk {encode(tuple(first))}"
    return f"one of chunks {encode(tuple(first))} to {encode(tuple(last))}"


@dataclass(frozen=True)
class _CheckedGetter:
    """Dask's getter for the chunks of a store (``dask.array.from_array(getitem=...)``).

    It reads as dask's own ``getter`` does; when the read fails on a damaged chunk, it
    raises :class:`~neurobatch.errors.StoreDamagedError` naming the store, the array and the
    chunk. It runs inside the task, so the name travels with the error from any worker.
    """

    url: str

    def __call__(self, a: Any, b: Any, asarray: bool = True, lock: Any = None) -> Any:
        from dask.array.core import getter

        try:
            return getter(a, b, asarray=asarray, lock=lock)  # type: ignore[no-untyped-call]
        except Exception as e:
            if isinstance(e, StoreDamagedError) or not is_damage(e):
                raise
            array = _zarr_array_in(a)
            if array is None:
                raise StoreDamagedError(_damage_text(self.url, e, None, None)) from e
            name = _array_name(array)
            raise StoreDamagedError(_damage_text(self.url, e, name, _chunk_text(array, b))) from e


def _array_in_traceback(error: BaseException) -> str | None:
    """The path of the deepest zarr array whose method the damaged read went through.

    Best effort: tracebacks re-raised from another process (a distributed worker) carry no
    local variables, and then the array is not named.
    """
    for link in _chain(error):
        found: str | None = None
        tb = link.__traceback__
        while tb is not None:
            owner = tb.tb_frame.f_locals.get("self")
            if isinstance(owner, zarr.Array | zarr.AsyncArray):
                found = _array_name(owner)
            tb = tb.tb_next
        if found is not None:
            return found
    return None


@contextlib.contextmanager
def damage_reported(url: str) -> Iterator[None]:
    """Re-raise a damaged chunk's error inside the block as ``StoreDamagedError`` naming ``url``.

    Wrap the computes and direct zarr reads of the store at ``url`` that do not go through
    :func:`open_dataset` (whose dask chunks report damage themselves). A checksum or
    decompression failure (see :func:`is_damage`) becomes
    :class:`~neurobatch.errors.StoreDamagedError` naming the store and, when the traceback
    shows it, the array; a ``StoreDamagedError`` raised inside (by a dataset from
    :func:`open_dataset`, perhaps of another store) passes unchanged, and so does every other
    error.

    Parameters
    ----------
    url : str
        Local path or fsspec URL of the store read inside the block.

    Yields
    ------
    None

    Raises
    ------
    neurobatch.errors.StoreDamagedError
        If a chunk read inside the block is damaged.

    Examples
    --------
    >>> from neurobatch.errors import StoreDamagedError
    >>> try:
    ...     with damage_reported("memory://doc/any.zarr"):
    ...         raise ValueError("Stored and computed checksum do not match. Stored: ...")
    ... except StoreDamagedError as e:
    ...     print(str(e)[:63])
    memory://doc/any.zarr: a chunk failed its CRC-32C checksum. Its
    """
    try:
        yield
    except Exception as e:
        if isinstance(e, StoreDamagedError) or not is_damage(e):
            raise
        raise StoreDamagedError(_damage_text(url, e, _array_in_traceback(e), None)) from e
