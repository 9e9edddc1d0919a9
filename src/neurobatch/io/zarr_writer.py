"""Writing a whole dataset as a new Zarr group, in one pass of zarr's event loop.

:func:`neurobatch.io.zarr.write_dataset` and the trials store prepare a dataset (strings,
attributes, chunks, codecs); :func:`to_zarr` writes it and consolidates the metadata, inside
:func:`new_store`, which turns a fault of the storage into one line naming the store and
removes what was written of it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import warnings
from collections.abc import Awaitable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Literal

import numpy as np
import xarray as xr
import zarr
from xarray import conventions
from xarray.backends.zarr import FillValueCoder, encode_zarr_attr_value, encode_zarr_variable
from xarray.coding.strings import check_vlen_dtype
from zarr.abc.store import Store
from zarr.api import asynchronous as zarr_async
from zarr.core.sync import sync as zarr_sync

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

    A dataset in memory has every array created and written at once, in one pass of
    zarr's event loop: ``Dataset.to_zarr`` goes back and forth to that loop several times
    per variable (a few ms each, and one loop serves every thread of the process), which
    costs more than the writing itself for the small datasets of a small item. The
    variables are encoded as ``to_zarr`` encodes them (CF conventions, coordinates, fill
    values), so the stores are the same. A dask-backed dataset goes through ``to_zarr``,
    which computes and writes it chunk by chunk.

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
    else:
        variables, attributes = conventions.encode_dataset_coordinates(ds)
        zarr_sync(_write_group(store, variables, attributes, encoding, zarr_format))
    _consolidate(store)


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
        layout = {"dimension_names": encoded.dims}
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
