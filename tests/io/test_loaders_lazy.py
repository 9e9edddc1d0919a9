"""Tests of what the lazy loaders share: ``FileArray`` indexing and ``time_chunks``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import fsspec
import numpy as np
import pytest

from neurobatch.io.loaders._lazy import FileArray, time_chunks


@pytest.fixture
def memory_root() -> Iterator[str]:
    """A fresh folder on the real in-process ``memory://`` filesystem, removed afterwards."""
    fs = fsspec.filesystem("memory")
    root = f"/binary-tests-{np.random.default_rng().integers(1 << 60)}"
    fs.mkdir(root)
    try:
        yield f"memory://{root}"
    finally:
        fs.rm(root, recursive=True)


# ---------------------------------------------------------------------------------------------
# FileArray and chunking
# ---------------------------------------------------------------------------------------------

KEYS: list[Any] = [
    np.s_[:],
    np.s_[3:17],
    np.s_[::-1],
    np.s_[17:2:-3, 1],
    np.s_[5, ::2, 1:],
    np.s_[..., 2],
    np.s_[[0, 5, 2], 1:3],
    np.s_[np.arange(20) % 3 == 0, :, 1:3],
    np.s_[1:4, [2, 0], 3],
    np.s_[2:2],
    np.s_[-1, -2, -3],
]


@pytest.mark.parametrize("order", ["C", "F"])
def test_file_array_indexing(tmp_path: Path, memory_root: str, order: Literal["C", "F"]) -> None:
    values = np.arange(20 * 3 * 4, dtype=">i4").reshape(20, 3, 4)
    header = b"\x00" * 7
    raw = header + values.tobytes(order=order)
    (tmp_path / "a.bin").write_bytes(raw)
    fsspec.filesystem("memory").pipe(f"{memory_root}/a.bin".removeprefix("memory://"), raw)
    for url in (str(tmp_path / "a.bin"), f"{memory_root}/a.bin"):
        array = FileArray(url, shape=values.shape, dtype=">i4", offset=7, order=order)
        assert array.dtype == np.dtype("=i4")
        for key in KEYS:
            got = array[key]
            np.testing.assert_array_equal(got, values[key])
            assert got.dtype == np.dtype("=i4")


def test_time_chunks() -> None:
    assert time_chunks(10_000, bytes_per_row=8, chunk_memory=8 * 4096) == (4096, 4096, 1808)
    # never below the minimum, however small the budget
    assert time_chunks(10_000, bytes_per_row=8, chunk_memory=8) == (4096, 4096, 1808)
    assert time_chunks(5, bytes_per_row=1000, chunk_memory=10, minimum=1) == (1,) * 5
    assert time_chunks(100, bytes_per_row=1, chunk_memory=45, minimum=1, align=10) == (40, 40, 20)
    assert time_chunks(0, bytes_per_row=1, chunk_memory=45) == (0,)
