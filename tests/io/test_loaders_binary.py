"""Tests of the ``raw-binary`` loader on real files: headers, byte orders, local and remote."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import fsspec
import numpy as np
import pytest
from numpy.typing import NDArray
from pydantic import ValidationError

from conftest import raise_if_dask_computes
from neurobatch.errors import ConfigError, InputError, InputNotFoundError
from neurobatch.io.loaders import (
    LOADERS,
    LoaderArguments,
    RawBinaryArguments,
    load_raw_binary,
    load_recording,
)

N_AP = 6
N_SAMPLES = 12_000


def one_line(error: pytest.ExceptionInfo[BaseException]) -> str:
    """The error's message, checked to be one line."""
    message = str(error.value)
    assert "\n" not in message, message
    return message


def recording(n: int = N_SAMPLES, channels: int = N_AP + 1, seed: int = 0) -> NDArray[np.int16]:
    rng = np.random.default_rng(seed)
    return rng.integers(-2000, 2000, size=(n, channels), dtype=np.int16)


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
# raw-binary
# ---------------------------------------------------------------------------------------------


def test_raw_binary_header_big_endian_float(tmp_path: Path, memory_root: str) -> None:
    rng = np.random.default_rng(3)
    data = rng.standard_normal((6000, 3)).astype(">f4")
    header = b"HEADER" * 10
    path = tmp_path / "rec.dat"
    path.write_bytes(header + data.tobytes())
    fsspec.filesystem("memory").pipe(
        f"{memory_root}/rec.dat".removeprefix("memory://"), path.read_bytes()
    )
    arguments = {
        "n_channels": 3,
        "dtype": ">f4",
        "sampling_rate": 1000.0,
        "offset": len(header),
        "gain_uv": 0.5,
        "channel_names": ["a", "b", "c"],
        "t0": 10.0,
    }
    for url in (str(path), f"{memory_root}/rec.dat"):
        with raise_if_dask_computes():
            ds = load_raw_binary(url, arguments, chunk_memory=12 * 4096)
        assert ds.traces.data.chunks == ((4096, 1904), (3,))
        assert ds.traces.dtype == np.dtype("float32")  # native order, same values
        with dask.config.set(scheduler="threads"):
            np.testing.assert_array_equal(ds.traces.values, data.astype("=f4"))
        assert ds.channel.values.tolist() == ["a", "b", "c"]
        np.testing.assert_array_equal(ds.time.values, np.arange(6000) / 1000.0 + 10.0)
        assert ds.attrs["gain_uv"] == 0.5
        assert ds.attrs["sampling_rate"] == 1000.0


def test_raw_binary_sidecar(tmp_path: Path) -> None:
    data = recording(n=4096, channels=2)
    (tmp_path / "rec.dat").write_bytes(data.tobytes())
    (tmp_path / "rec.json").write_text('{"subject": "m1", "sex": "F"}')
    arguments = {
        "n_channels": 2,
        "dtype": "int16",
        "sampling_rate": 20000,
        "annotation": "{stem}.json",
    }
    ds = load_raw_binary(str(tmp_path / "rec.dat"), arguments)
    assert ds.attrs["subject"] == "m1"
    assert ds.attrs["sex"] == "F"
    (tmp_path / "rec.json").write_text('{"sampling_rate": 1}')
    with pytest.raises(InputError, match=r"sets 'sampling_rate', which the loader sets itself"):
        load_raw_binary(str(tmp_path / "rec.dat"), arguments)


def test_raw_binary_bad_input(tmp_path: Path) -> None:
    path = tmp_path / "rec.dat"
    path.write_bytes(np.arange(10, dtype="<i2").tobytes())
    base = {"n_channels": 3, "dtype": "int16", "sampling_rate": 100.0}
    with pytest.raises(InputError, match=r"has 20 bytes, not a multiple of 6 \(3 channels") as e:
        load_raw_binary(str(path), base)
    assert str(path) in one_line(e)
    with pytest.raises(InputError, match=r"has 16 bytes after the 4-byte header, not a multiple"):
        load_raw_binary(str(path), {**base, "offset": 4})
    with pytest.raises(InputError, match=r"has 20 bytes, fewer than its header \(offset 64\)"):
        load_raw_binary(str(path), {**base, "n_channels": 2, "offset": 64})
    with pytest.raises(InputError, match=r"has no samples"):
        load_raw_binary(str(path), {**base, "n_channels": 2, "offset": 20})
    with pytest.raises(InputNotFoundError, match=r"input '.*missing\.dat' does not exist"):
        load_raw_binary(str(tmp_path / "missing.dat"), base)
    with pytest.raises(InputError, match=r"is a folder; expected a file"):
        load_raw_binary(str(tmp_path), base)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"dtype": "S4"}, r"dtype 'S4' \(\|S4\) is not an integer or float type"),
        ({"dtype": "int17"}, r"'int17' is not a NumPy dtype"),
        ({"n_channels": 0}, r"n_channels: Input should be greater than or equal to 1"),
        ({"sampling_rate": 0}, r"sampling_rate: Input should be greater than 0"),
        ({"channel_names": ["a"]}, r"channel_names has 1 names for n_channels=2"),
        ({"channel_names": ["a", "a"]}, r"channel_names repeats a name"),
        ({"n_chanels": 2}, r"n_chanels: unknown argument; did you mean 'n_channels'\?"),
    ],
)
def test_raw_binary_arguments(change: dict[str, Any], message: str) -> None:
    base = {"n_channels": 2, "dtype": "int16", "sampling_rate": 100.0}
    with pytest.raises(ConfigError, match=message) as e:
        load_recording("x.dat", {**base, **change}, format="raw-binary")
    one_line(e)


# ---------------------------------------------------------------------------------------------
# The registry
# ---------------------------------------------------------------------------------------------


def test_lazy_formats_registered() -> None:
    lazy = {"spikeglx", "raw-binary", "nwb", "npy", "zarr", "rgc-pickle"}
    assert lazy <= set(LOADERS)
    for fmt in lazy:
        spec = LOADERS[fmt]
        assert spec.format == fmt
        assert spec.target == ("folder" if fmt == "zarr" else "file")  # a store is a folder
        assert spec.chunked
        assert issubclass(spec.arguments, LoaderArguments)
        assert spec.arguments.model_config.get("extra") == "forbid"
    for fmt in ("photometry-csv", "photometry-parquet", "tdt"):
        assert not LOADERS[fmt].chunked
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        RawBinaryArguments.model_validate(
            {"n_channels": 1, "dtype": "int16", "sampling_rate": 1.0, "gain": 2}
        )
