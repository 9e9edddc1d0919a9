"""Both Zarr formats the stores are written in: where their chunks lie, committed stores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import xarray as xr

from neurobatch.io.commit import commit, read_commit
from neurobatch.io.zarr import ZarrFormat, write_dataset
from stores import CHUNKED

#: ``output.zarr_format``'s values, as the ``zarr_format`` parameter of a test.
FORMATS = pytest.mark.parametrize("zarr_format", [3, 2], ids=["zarr3", "zarr2"])

#: What a chunk that fails its checksum is said to fail, by format.
CHECKSUM = {3: "CRC-32C", 2: "CRC-32"}


def chunk_key(*coords: int, zarr_format: ZarrFormat) -> str:
    """A chunk's key inside its array: ``c.1.0`` in Zarr 3, ``1.0`` in Zarr 2."""
    if zarr_format == 3:
        return ".".join(["c", *map(str, coords)])
    return ".".join(map(str, coords))


def chunk_path(store: str | Path, array: str, *coords: int, zarr_format: ZarrFormat) -> Path:
    """The file of one chunk of a local store."""
    return Path(store) / array / chunk_key(*coords, zarr_format=zarr_format)


def committed(ds: xr.Dataset, url: str, *, zarr_format: ZarrFormat = 3) -> dict[str, Any]:
    """Write ``ds`` in 4096-sample chunks in ``zarr_format``, commit it with its inventory,
    and return the marker (:func:`stores.committed` in either format)."""
    write_dataset(ds, url, chunk_memory=CHUNKED, zarr_format=zarr_format)
    commit(url, {"params": "abc"}, arrays=True)
    marker = read_commit(url)
    assert marker is not None
    return dict(marker)
