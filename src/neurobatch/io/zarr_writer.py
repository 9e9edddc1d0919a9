"""Writing a whole dataset as a new Zarr group.

:func:`neurobatch.io.zarr.write_dataset` and the trials store prepare a dataset (strings,
attributes, chunks, codecs); :func:`to_zarr` writes it and consolidates the metadata, inside
:func:`new_store`, which turns a fault of the storage into one line naming the store and
removes what was written of it. A Zarr 3 group of arrays in memory is encoded here, the
same files as zarr-python's, in one pass (see :func:`to_zarr`).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import shutil
import threading
import warnings
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import google_crc32c
import numcodecs  # type: ignore[import-untyped]
import numpy as np
import xarray as xr
import zarr
from numpy.typing import NDArray
from xarray import conventions
from xarray.backends.zarr import FillValueCoder, encode_zarr_attr_value, encode_zarr_variable
from xarray.coding.strings import check_vlen_dtype
from zarr.abc.store import Store
from zarr.api import asynchronous as zarr_async
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync as zarr_sync
from zarr.storage import LocalStore

from neurobatch.errors import StorageError
from neurobatch.io.commit import remove
from neurobatch.io.files import is_transient, translated

__all__ = ["new_store", "to_zarr"]

logger = logging.getLogger(__name__)

_CONSOLIDATE_LOCK = threading.Lock()


def _consolidate(store: Store) -> None:
    """Consolidate the store's metadata, silencing zarr's "not in the v3 spec" notice.

    Consolidated metadata is what ``xarray.open_zarr`` reads in one request; zarr-python
    warns that it is not (yet) part of the v3 specification, which is known and intended.
    ``catch_warnings`` is process-global, hence the lock around it.
    """
    with _CONSOLIDATE_LOCK, warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="Consolidated metadata is currently not part", category=UserWarning
        )
        zarr.consolidate_metadata(store)


@contextmanager
def new_store(url: str, *, storage_options: Mapping[str, Any] | None = None) -> Iterator[None]:
    """The block writes a new store at ``url``: if the storage fails it, no part of it is left.

    A fault of the storage (a full disk, a quota, a read-only folder, an unreachable
    endpoint) is raised as :class:`~neurobatch.errors.StorageError` naming ``url``, and what
    was written of the store is removed, which gives back the space it took. Where the
    storage cannot be reached, there is nothing to remove with: the store stays without
    its commit record, so that no reader takes it for a complete one.

    Parameters
    ----------
    url : str
        The store the block writes.
    storage_options : mapping, optional
        Options for the fsspec filesystem.

    Examples
    --------
    >>> import errno, fsspec
    >>> try:
    ...     with new_store("memory://doc/partial.zarr"):
    ...         fsspec.filesystem("memory").pipe("/doc/partial.zarr/zarr.json", b"{}")
    ...         raise OSError(errno.ENOSPC, "No space left on device")
    ... except StorageError as error:
    ...     print(error)
    no space left on device writing memory://doc/partial.zarr; free space or choose another \
output.url
    >>> fsspec.filesystem("memory").exists("/doc/partial.zarr")
    False
    """
    try:
        with translated(url, action="writing"):
            yield
    except StorageError as error:
        if error.__cause__ is None or not is_transient(error.__cause__):
            try:
                remove(url, storage_options=storage_options)
            except StorageError as failure:
                logger.debug("could not remove what was written of %s: %s", url, failure)
        raise


def to_zarr(
    ds: xr.Dataset,
    store: Store,
    encoding: Mapping[str, Mapping[str, Any]],
    *,
    zarr_format: Literal[2, 3] = 3,
) -> None:
    """Write a dataset as a new Zarr group that ``xarray.open_zarr`` reads, consolidated.

    A dataset in memory is written at once: in Zarr 3 with the codecs neurobatch uses, its
    metadata documents and chunks are encoded here, the files zarr-python writes (chunk for
    chunk, byte for byte; the JSON without indentation) in a fraction of its time
    (zarr-python spends 1-2 ms per array, more than the small stores of a small item take
    to encode); otherwise every array is created and written in one pass of zarr's event
    loop. Either way the variables are encoded as ``Dataset.to_zarr`` encodes them (CF
    conventions, coordinates, fill values), so the stores are the same. A dask-backed
    dataset goes through ``to_zarr``, which computes and writes it chunk by chunk.

    Parameters
    ----------
    ds : xarray.Dataset
        Strings as ``StringDType`` and attributes as JSON values (as :func:`write_dataset`
        prepares them).
    store : zarr.abc.store.Store
        Where the group goes; whatever is there is overwritten.
    encoding : mapping
        Per variable: ``compressors`` (and ``filters`` in format 2) and ``chunks`` (absent
        for a scalar).
    zarr_format : {3, 2}, default 3
        The group's Zarr format.

    Examples
    --------
    >>> import numpy as np
    >>> from neurobatch.io.zarr import _codecs, zarr_store
    >>> ds = xr.Dataset({"x": ("time", np.arange(3.0))}, coords={"time": [0.0, 0.1, 0.2]})
    >>> to_zarr(ds, zarr_store("memory://doc/to-zarr.zarr"),
    ...         {"x": {**_codecs(ds.x.dtype), "chunks": (2,)},
    ...          "time": {**_codecs(ds.time.dtype), "chunks": (3,)}})
    >>> xr.open_zarr("memory://doc/to-zarr.zarr").x.values
    array([0., 1., 2.])
    """
    if any(variable.chunks is not None for variable in ds.variables.values()):
        ds.to_zarr(store, mode="w", consolidated=False, zarr_format=zarr_format, encoding=encoding)
        _consolidate(store)
        return
    variables, attributes = conventions.encode_dataset_coordinates(ds)
    documents = _documents(variables, attributes, encoding) if zarr_format == 3 else None
    if documents is None:
        zarr_sync(_write_group(store, variables, attributes, encoding, zarr_format))
        _consolidate(store)
    else:
        _put(store, documents)


# --- Zarr 3 groups from memory, encoded here ---------------------------------------------------
#
# zarr-python spends 1-2 ms on each array it creates and writes (metadata objects, codec
# pipelines, the trips to its event loop), about 0.1 s for the stores of one small item: far
# more than the encoding itself. A Zarr 3 group whose arrays are in memory and use only the
# codecs neurobatch writes (bytes, Blosc, Zstd, CRC-32C, vlen-utf8) is encoded here instead,
# document for document and chunk for chunk what zarr-python writes (tested against it),
# and stored in one pass. Anything else goes through zarr-python.


def _documents(
    variables: Mapping[Any, xr.Variable],
    attributes: Mapping[str, Any],
    encoding: Mapping[str, Mapping[str, Any]],
) -> dict[str, bytes] | None:
    """Every file of the consolidated group (key -> bytes), or None when zarr-python must
    write it (a type or codec not encoded here)."""
    files: dict[str, bytes] = {}
    metadata: dict[str, Any] = {}
    for name, variable in variables.items():
        array = _array_files(str(name), variable, encoding.get(str(name), {}))
        if array is None:
            return None
        metadata[str(name)], chunks = array
        files[f"{name}/zarr.json"] = _json(metadata[str(name)])
        files.update(chunks)
    group = {
        "attributes": _encoded_attributes(attributes),
        "zarr_format": 3,
        "consolidated_metadata": {
            "kind": "inline",
            "must_understand": False,
            "metadata": dict(sorted(metadata.items())),
        },
        "node_type": "group",
    }
    files["zarr.json"] = _json(group)
    return files if all(files.values()) else None  # empty: an attribute JSON cannot hold


def _json(document: Mapping[str, Any]) -> bytes:
    """The document as zarr-python writes it, without its indentation (which would take
    Python's slow JSON encoder); empty when it holds NaN or an infinity, or a value that
    is not plain JSON (zarr-python writes those in its own way)."""
    try:
        return json.dumps(document, allow_nan=False).encode()
    except (TypeError, ValueError):
        return b""


_DATA_TYPES = {"b": "bool", "i": "int", "u": "uint", "f": "float"}


def _data_type(dtype: np.dtype[Any]) -> str | None:
    """The Zarr 3 name of a NumPy type encoded here, else None."""
    if isinstance(dtype, np.dtypes.StringDType):
        return "string"
    if dtype.kind not in _DATA_TYPES or dtype.byteorder == ">":
        return None
    return "bool" if dtype.kind == "b" else f"{_DATA_TYPES[dtype.kind]}{8 * dtype.itemsize}"


def _fill_json(fill_value: Any, dtype: np.dtype[Any]) -> Any:
    """A fill value as Zarr 3 metadata holds it (NaN and infinities as strings)."""
    if dtype.kind == "f":
        value = float(fill_value)
        if math.isnan(value):
            return "NaN"
        return value if math.isfinite(value) else ("Infinity" if value > 0 else "-Infinity")
    if dtype.kind == "b":
        return bool(fill_value)
    if dtype.kind in "iu":
        return int(fill_value)
    return str(fill_value)


def _chunk_codecs(
    compressors: Any, dtype: np.dtype[Any]
) -> tuple[list[dict[str, Any]], list[Callable[[bytes], bytes]]] | None:
    """The codecs' metadata and the functions that apply them to a chunk's bytes, or None."""
    strings = isinstance(dtype, np.dtypes.StringDType)
    if strings:
        documents: list[dict[str, Any]] = [{"name": "vlen-utf8", "configuration": {}}]
    else:
        documents = [{"name": "bytes"}]
        if dtype.itemsize > 1:
            documents[0]["configuration"] = {"endian": "little"}
    steps: list[Callable[[bytes], bytes]] = []
    for codec in compressors if isinstance(compressors, tuple | list) else (compressors,):
        if isinstance(codec, BloscCodec) and not strings:
            codec = replace(codec, typesize=dtype.itemsize)
            shuffles = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}
            blosc = numcodecs.Blosc(
                cname=codec.cname.name,
                clevel=codec.clevel,
                shuffle=shuffles[codec.shuffle.name],
                blocksize=codec.blocksize,
                typesize=codec.typesize,
            )
            steps.append(blosc.encode)
        elif isinstance(codec, ZstdCodec):
            steps.append(numcodecs.Zstd(level=codec.level, checksum=codec.checksum).encode)
        elif isinstance(codec, Crc32cCodec):
            steps.append(_with_crc32c)
        else:
            return None
        documents.append(codec.to_dict())
    return documents, steps


def _with_crc32c(data: bytes) -> bytes:
    """``data`` followed by its CRC-32C, as zarr's ``crc32c`` codec stores a chunk."""
    return bytes(data) + np.uint32(google_crc32c.value(bytes(data))).tobytes()


def _array_files(
    name: str, variable: xr.Variable, encoding: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, bytes]] | None:
    """An array's metadata document and its chunk files, as zarr-python writes them for
    ``Dataset.to_zarr`` (see :func:`_write_variable`), or None when not encoded here."""
    encoded = encode_zarr_variable(variable, name=name, zarr_format=3)
    values = np.asarray(encoded.values)
    if check_vlen_dtype(encoded.dtype) is str:  # type: ignore[no-untyped-call]  # xarray's
        values = values.astype(np.dtypes.StringDType())
    data_type = _data_type(values.dtype)
    codecs = _chunk_codecs(encoding.get("compressors", ()), values.dtype)
    if data_type is None or codecs is None:
        return None
    attrs = dict(encoded.attrs)
    fill_value = encoded.encoding.get("fill_value")
    if fill_value is None:
        fill_value = np.nan if values.dtype.kind == "f" else "" if data_type == "string" else 0
    explicit = attrs.pop("_FillValue", None)
    if explicit is not None:
        attrs["_FillValue"] = FillValueCoder.encode(explicit, encoded.dtype)
    chunk_shape = tuple(encoding.get("chunks") or values.shape)
    keys = dict(encoding.get("chunk_key_encoding") or {"name": "default"})
    if keys.get("name") != "default":
        return None
    separator = keys.get("separator", "/")
    document: dict[str, Any] = {
        "shape": list(values.shape),
        "data_type": data_type,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunk_shape)}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": separator}},
        "fill_value": _fill_json(fill_value, values.dtype),
        "codecs": codecs[0],
        "attributes": _encoded_attributes(attrs),
    }
    if encoded.dims:
        document["dimension_names"] = list(encoded.dims)
    document |= {"zarr_format": 3, "node_type": "array", "storage_transformers": []}
    chunks = {
        f"{name}/" + separator.join(("c", *map(str, index))): _encoded_chunk(block, codecs[1])
        for index, block in _blocks(values, chunk_shape, fill_value)
    }
    return document, chunks


def _blocks(
    values: NDArray[Any], chunk_shape: tuple[int, ...], fill_value: Any
) -> Iterator[tuple[tuple[int, ...], NDArray[Any]]]:
    """Each chunk of ``values`` that holds anything but the fill value, padded with it to the
    chunk's shape (zarr-python writes no chunk that is all fill value)."""
    grid = [range(math.ceil(n / c)) for n, c in zip(values.shape, chunk_shape, strict=True)]
    for index in itertools.product(*grid):
        block = values[
            tuple(slice(i * c, (i + 1) * c) for i, c in zip(index, chunk_shape, strict=True))
        ]
        if _all_fill(block, fill_value):
            continue
        if block.shape != chunk_shape:
            padded = np.full(chunk_shape, fill_value, dtype=values.dtype)
            padded[tuple(slice(0, n) for n in block.shape)] = block
            block = padded
        yield index, block


def _all_fill(block: NDArray[Any], fill_value: Any) -> bool:
    if block.dtype.kind == "f" and isinstance(fill_value, float) and math.isnan(fill_value):
        return bool(np.isnan(block).all())
    return bool((block == fill_value).all())


def _encoded_chunk(block: NDArray[Any], steps: Iterable[Callable[[bytes], bytes]]) -> bytes:
    if isinstance(block.dtype, np.dtypes.StringDType):
        data = bytes(_VLEN_UTF8.encode(block.astype(object).ravel()))
    else:
        data = np.ascontiguousarray(block).tobytes()
    for step in steps:
        data = bytes(step(data))
    return data


_VLEN_UTF8 = numcodecs.VLenUTF8()


def _put(store: Store, files: Mapping[str, bytes]) -> None:
    """Write a group's files: on a local disk straight to their paths (the group is not
    complete before its commit record anyway), elsewhere through the store, at once."""
    if isinstance(store, LocalStore):
        root = Path(store.root)
        shutil.rmtree(root, ignore_errors=True)
        for folder in sorted({(root / key).parent for key in files}):
            folder.mkdir(parents=True, exist_ok=True)
        for key, data in files.items():
            (root / key).write_bytes(data)
        return

    async def put() -> None:
        await store.delete_dir("")
        buffer = default_buffer_prototype().buffer
        await _every(store.set(key, buffer.from_bytes(data)) for key, data in files.items())

    zarr_sync(put())


async def _write_group(
    store: Store,
    variables: Mapping[Any, xr.Variable],
    attributes: Mapping[str, Any],
    encoding: Mapping[str, Mapping[str, Any]],
    zarr_format: Literal[2, 3],
) -> None:
    group = await zarr_async.open_group(
        store=store,
        mode="w",
        zarr_format=zarr_format,
        attributes=_encoded_attributes(attributes),
    )
    await _every(
        _write_variable(group, str(name), variable, encoding.get(str(name), {}), zarr_format)
        for name, variable in variables.items()
    )


async def _every(writes: Iterable[Awaitable[Any]]) -> None:
    """Await every write at once, then raise the first error: when it raises, none is still
    writing (so that a store the storage failed can be removed whole)."""
    results = await asyncio.gather(*writes, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


def _encoded_attributes(attributes: Mapping[str, Any]) -> dict[str, Any]:
    return {
        key: encode_zarr_attr_value(value)  # type: ignore[no-untyped-call]  # xarray's own
        for key, value in attributes.items()
    }


async def _write_variable(
    group: Any,
    name: str,
    variable: xr.Variable,
    encoding: Mapping[str, Any],
    zarr_format: Literal[2, 3],
) -> None:
    """One variable as ``Dataset.to_zarr`` stores it in a new Zarr group."""
    encoded = encode_zarr_variable(variable, name=name, zarr_format=zarr_format)
    attrs = dict(encoded.attrs)
    layout: dict[str, Any]
    if zarr_format == 3:
        # xarray's default fill value of floats is NaN (zarr's is 0); an explicit
        # _FillValue attribute is stored encoded
        fill_value = encoded.encoding.get("fill_value")
        if fill_value is None and encoded.dtype.kind == "f":
            fill_value = np.nan
        explicit = attrs.pop("_FillValue", None)
        if explicit is not None:
            attrs["_FillValue"] = FillValueCoder.encode(explicit, encoded.dtype)
        encoded_attrs = _encoded_attributes(attrs)
        layout = {
            "dimension_names": encoded.dims,
            "chunk_key_encoding": encoding.get("chunk_key_encoding"),
        }
    else:
        # Zarr 2 readers take the array's fill value for the _FillValue, and the dimension
        # names from an attribute
        fill_value = attrs.pop("_FillValue", None)
        encoded_attrs = {**_encoded_attributes(attrs), "_ARRAY_DIMENSIONS": list(encoded.dims)}
        layout = {"filters": encoding.get("filters", "auto")}
    vlen = check_vlen_dtype(encoded.dtype)  # type: ignore[no-untyped-call]  # xarray's own
    dtype = str if vlen is str else encoded.dtype
    array = await group.create_array(
        name,
        shape=encoded.shape,
        dtype=dtype,
        chunks=encoding.get("chunks") or "auto",
        fill_value=fill_value,
        compressors=encoding.get("compressors", "auto"),
        attributes=encoded_attrs,
        **layout,
    )
    await array.setitem(Ellipsis, encoded.values)
