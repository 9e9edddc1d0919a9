"""Tests of the ``npy`` and ``zarr`` loaders on real files and stores.

``.npy`` files are written with ``numpy.save`` (and ``numpy.lib.format`` for version 2.0
headers), Zarr stores with ``xarray.Dataset.to_zarr``; loaded values are compared with the
arrays they were written from.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import fsspec
import numpy as np
import pytest
import xarray as xr
from numpy.typing import NDArray

from conftest import raise_if_dask_computes
from neurobatch.errors import ConfigError, InputError, InputNotFoundError
from neurobatch.io.loaders import load_npy, load_recording, load_zarr


def one_line(error: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    return message


@pytest.fixture
def memory_root() -> Iterator[str]:
    fs = fsspec.filesystem("memory")
    root = f"/arrays-tests-{np.random.default_rng().integers(1 << 60)}"
    fs.mkdir(root)
    try:
        yield f"memory://{root}"
    finally:
        fs.rm(root, recursive=True)


def save(url: str, array: NDArray[Any], *, version: tuple[int, int] | None = None) -> str:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, version=version)
    with fsspec.open(url, "wb") as handle:
        handle.write(buffer.getvalue())
    return url


def traces(n: int = 10_000, channels: int = 3) -> NDArray[np.int16]:
    return np.random.default_rng(0).integers(-1000, 1000, (n, channels), dtype=np.int16)


def movie(n: int = 20) -> NDArray[np.float32]:
    return np.random.default_rng(1).standard_normal((n, 4, 5)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# npy
# ---------------------------------------------------------------------------------------------


def test_npy_traces_lazy_and_chunked(tmp_path: Path, memory_root: str) -> None:
    data = traces()
    for url in (str(tmp_path / "rec.npy"), f"{memory_root}/rec.npy"):
        save(url, data)
        arguments = {"kind": "traces", "sampling_rate": 2000.0, "t0": 1.0, "gain_uv": 0.25}
        with raise_if_dask_computes():
            ds = load_npy(url, arguments, chunk_memory=6 * 4500)
        assert isinstance(ds.traces.data, da.Array)
        assert ds.traces.data.chunks == ((4500, 4500, 1000), (3,))
        with dask.config.set(scheduler="threads"):
            values = ds.traces.values
        assert values.dtype == np.int16
        np.testing.assert_array_equal(values, data)
        np.testing.assert_array_equal(ds.time.values, np.arange(10_000) / 2000.0 + 1.0)
        assert ds.channel.values.tolist() == [0, 1, 2]
        assert ds.attrs["sampling_rate"] == 2000.0
        assert ds.attrs["gain_uv"] == 0.25
        assert ds.attrs["n_samples"] == 10_000


@pytest.mark.parametrize("fortran", [False, True])
def test_npy_traces_stored_channel_first(tmp_path: Path, memory_root: str, fortran: bool) -> None:
    data = traces(n=9000, channels=4)
    stored = np.asfortranarray(data.T) if fortran else np.ascontiguousarray(data.T)
    arguments = {
        "kind": "traces",
        "sampling_rate": 100.0,
        "dims": ["channel", "time"],
        "channel_names": ["a", "b", "c", "d"],
    }
    for url in (str(tmp_path / "rec.npy"), f"{memory_root}/rec.npy"):
        save(url, stored)
        with raise_if_dask_computes():
            ds = load_npy(url, arguments, chunk_memory=8 * 4096)
        assert ds.traces.dims == ("time", "channel")
        assert ds.traces.data.chunks == ((4096, 4096, 808), (4,))
        with dask.config.set(scheduler="threads"):
            np.testing.assert_array_equal(ds.traces.values, data)
        assert ds.channel.values.tolist() == ["a", "b", "c", "d"]


def test_npy_one_channel_and_version_2(tmp_path: Path) -> None:
    data = np.arange(5000, dtype=np.float64)
    url = save(str(tmp_path / "one.npy"), data, version=(2, 0))
    ds = load_npy(url, {"kind": "traces", "sampling_rate": 10.0})
    assert ds.traces.shape == (5000, 1)
    np.testing.assert_array_equal(ds.traces.values[:, 0], data)


def test_npy_frames(tmp_path: Path, memory_root: str) -> None:
    frames = movie()
    arguments = {"kind": "frames", "fps": 60.0, "stimulus_onset": 2.0, "pixel_size": 8.0}
    for url in (str(tmp_path / "movie.npy"), f"{memory_root}/movie.npy"):
        save(url, frames)
        with raise_if_dask_computes():
            ds = load_npy(url, arguments, chunk_memory=frames[0].nbytes * 6)
        assert ds.frames.dims == ("frame", "y", "x")
        assert ds.frames.data.chunks == ((6, 6, 6, 2), (4,), (5,))
        with dask.config.set(scheduler="threads"):
            np.testing.assert_array_equal(ds.frames.values, frames)
        np.testing.assert_array_equal(ds.frame_time.values, 2.0 + np.arange(20) / 60.0)
        assert (ds.attrs["fps"], ds.attrs["stimulus_onset"], ds.attrs["pixel_size"]) == (
            60.0,
            2.0,
            8.0,
        )
    # the legacy layout (x, y, frame)
    url = save(str(tmp_path / "xyt.npy"), frames.transpose(2, 1, 0))
    ds = load_npy(url, {**arguments, "dims": ["x", "y", "frame"]}, chunk_memory=1)
    assert ds.frames.data.chunks[0] == (1,) * 20
    np.testing.assert_array_equal(ds.frames.values, frames)


def test_npy_through_the_registry(tmp_path: Path) -> None:
    url = save(str(tmp_path / "movie.npy"), movie())
    ds = load_recording(url, {"kind": "frames", "fps": 30}, format="npy", chunk_memory=160)
    assert ds.frames.data.chunks[0] == (2,) * 10


class _Marker:
    """Unpickling this creates a file: proof that an object array was (not) unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


def test_npy_object_arrays_are_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    objects = np.empty(2, dtype=object)
    objects[:] = [_Marker(str(marker)), _Marker(str(marker))]
    url = str(tmp_path / "objects.npy")
    np.save(url, objects, allow_pickle=True)
    with pytest.raises(InputError, match=r"holds object values; expected a numeric array") as e:
        load_npy(url, {"kind": "traces", "sampling_rate": 1.0})
    one_line(e)
    assert not marker.exists()


def test_npy_bad_input(tmp_path: Path) -> None:
    base = {"kind": "traces", "sampling_rate": 10.0}
    (tmp_path / "text.npy").write_text("not an array")
    with pytest.raises(InputError, match=r"'.*text\.npy' is not a readable \.npy file: ") as e:
        load_npy(str(tmp_path / "text.npy"), base)
    one_line(e)
    with pytest.raises(InputNotFoundError, match=r"input '.*none\.npy' does not exist"):
        load_npy(str(tmp_path / "none.npy"), base)
    url = save(str(tmp_path / "cube.npy"), movie())
    with pytest.raises(InputError, match=r"holds a 3-D array of shape \(20, 4, 5\); kind 'traces'"):
        load_npy(url, base)
    url = str(tmp_path / "short.npy")
    save(url, traces(n=100))
    Path(url).write_bytes(Path(url).read_bytes()[:-10])
    with pytest.raises(InputError, match=r"has 718 bytes but its header announces \(100, 3\)") as e:
        load_npy(url, base)
    one_line(e)
    url = save(str(tmp_path / "strings.npy"), np.array(["a", "b"]))
    with pytest.raises(InputError, match=r"holds <U1 values; expected a numeric array"):
        load_npy(url, base)
    url = save(str(tmp_path / "two.npy"), traces(n=10, channels=2))
    with pytest.raises(InputError, match=r"has 2 channels but channel_names names 3"):
        load_npy(url, {**base, "channel_names": ["a", "b", "c"]})


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"kind": "traces"}, r"kind 'traces' needs sampling_rate"),
        ({"kind": "frames"}, r"kind 'frames' needs fps"),
        ({"kind": "traces", "sampling_rate": 1, "fps": 2}, r"fps do\(es\) not apply to kind"),
        ({"kind": "frames", "fps": 2, "gain_uv": 1}, r"gain_uv do\(es\) not apply to kind"),
        ({"kind": "frames", "fps": 2, "dims": ["frame", "x"]}, r"is not an order of frame, y, x"),
        ({"kind": "traces", "sampling_rate": 1, "dims": ["time", "time"]}, r"is not an order"),
        ({"kind": "movie", "fps": 2}, r"kind: Input should be 'traces' or 'frames'"),
        ({"kind": "frames", "fps": 2, "downsample": 2}, r"the lazy loaders .* do not downsample"),
    ],
)
def test_npy_arguments(arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        load_recording("x.npy", arguments, format="npy")
    one_line(e)


# ---------------------------------------------------------------------------------------------
# zarr
# ---------------------------------------------------------------------------------------------


def to_zarr(ds: xr.Dataset, url: str, **kwargs: Any) -> str:
    with warnings.catch_warnings():
        # zarr says that consolidated metadata is not in the v3 specification
        warnings.simplefilter("ignore")
        ds.to_zarr(url, mode="w", **kwargs)
    return url


def recording_store() -> xr.Dataset:
    data = traces(n=500)
    ds = xr.Dataset(
        {"traces": (("channel", "time"), data.T)},
        coords={"time": np.arange(500) / 250.0, "channel": [10, 11, 12]},
        attrs={"sampling_rate": 250.0, "subject": "m1"},
    )
    return ds.chunk({"time": 100})


def test_zarr_recording(tmp_path: Path, memory_root: str) -> None:
    stored = recording_store()
    for url in (str(tmp_path / "rec.zarr"), f"{memory_root}/rec.zarr"):
        to_zarr(stored, url, consolidated=True)
        with raise_if_dask_computes():
            ds = load_zarr(url, {})
        assert isinstance(ds.traces.data, da.Array)
        assert ds.traces.dims == ("time", "channel")
        assert ds.traces.data.chunks[0] == (100,) * 5  # the store's own chunks
        with dask.config.set(scheduler="threads"):
            np.testing.assert_array_equal(ds.traces.values, traces(n=500))
        np.testing.assert_array_equal(ds.time.values, np.arange(500) / 250.0)
        assert ds.attrs["sampling_rate"] == 250.0
        assert ds.attrs["subject"] == "m1"
        assert ds.attrs["source"] == url
        assert ds.attrs["n_samples"] == 500


def test_zarr_renamed_v2_unconsolidated(tmp_path: Path) -> None:
    data = traces(n=300)
    stored = xr.Dataset({"data": (("t", "ch"), data)})
    url = to_zarr(stored, str(tmp_path / "v2.zarr"), zarr_format=2, consolidated=False)
    arguments = {"rename": {"data": "traces", "t": "time", "ch": "channel"}, "sampling_rate": 30.0}
    ds = load_zarr(url, arguments)  # no warning about missing consolidated metadata
    np.testing.assert_array_equal(ds.traces.values, data)
    np.testing.assert_array_equal(ds.time.values, np.arange(300) / 30.0)
    assert ds.attrs["sampling_rate"] == 30.0
    # the rate from the time coordinate when no attribute says it
    stored = xr.Dataset(
        {"traces": (("time", "channel"), data)}, coords={"time": np.arange(300) / 8.0}
    )
    url = to_zarr(stored, str(tmp_path / "timed.zarr"), consolidated=False, zarr_format=3)
    assert load_zarr(url, {}).attrs["sampling_rate"] == pytest.approx(8.0, rel=1e-12)


def test_zarr_movie_with_spikes(tmp_path: Path) -> None:
    frames = movie()
    stored = xr.Dataset(
        {
            "frames": (("frame", "y", "x"), frames),
            "spike_time": ("spike", np.array([0.5, 0.7, 0.9])),
        },
        coords={"unit": ("spike", np.array([1, 2, 1])), "unit_ids": ("unit", np.array([1, 2, 3]))},
        attrs={"fps": 30.0, "stimulus_onset": 0.25},
    )
    url = to_zarr(stored, str(tmp_path / "movie.zarr"), consolidated=True)
    ds = load_zarr(url, {"kind": "frames"})
    np.testing.assert_array_equal(ds.frames.values, frames)
    np.testing.assert_array_equal(ds.frame_time.values, 0.25 + np.arange(20) / 30.0)
    assert ds.unit.values.tolist() == [1, 2, 1]
    assert ds.unit_ids.values.tolist() == [1, 2, 3]
    assert (ds.attrs["fps"], ds.attrs["stimulus_onset"], ds.attrs["n_frames"]) == (30.0, 0.25, 20)
    # frames stored (x, y, frame) with frame_time: the onset and rate follow from it
    stored = xr.Dataset(
        {"frames": (("x", "y", "frame"), frames.transpose(2, 1, 0))},
        coords={"frame_time": ("frame", 3.0 + np.arange(20) / 50.0)},
    )
    url = to_zarr(stored, str(tmp_path / "xyt.zarr"), consolidated=True)
    ds = load_zarr(url, {})
    np.testing.assert_array_equal(ds.frames.values, frames)
    assert ds.attrs["fps"] == pytest.approx(50.0, rel=1e-12)
    assert ds.attrs["stimulus_onset"] == 3.0


def test_zarr_bad_input(tmp_path: Path) -> None:
    with pytest.raises(InputNotFoundError, match=r"input '.*none\.zarr' does not exist"):
        load_zarr(str(tmp_path / "none.zarr"), {})
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "x.txt").write_text("x")
    with pytest.raises(InputError, match=r"is not a Zarr store that xarray can open") as e:
        load_zarr(str(tmp_path / "folder"), {})
    one_line(e)

    url = to_zarr(
        xr.Dataset({"trace": (("time", "channel"), np.zeros((3, 2)))}),
        str(tmp_path / "a.zarr"),
        consolidated=True,
    )
    with pytest.raises(
        InputError, match=r"holds neither 'traces' nor 'frames' \(its variables: 'trace'\)"
    ):
        load_zarr(url, {})
    with pytest.raises(
        InputError,
        match=r"has no variable 'traces'; did you mean 'trace'\? map it with loader\.rename",
    ) as e:
        load_zarr(url, {"kind": "traces"})
    one_line(e)
    with pytest.raises(InputError, match=r"has no 'signal' \(loader\.rename\)"):
        load_zarr(url, {"rename": {"signal": "traces"}})
    with pytest.raises(
        InputError,
        match=r"has neither 'time' nor attribute 'sampling_rate'; set loader\.sampling_rate",
    ):
        load_zarr(url, {"rename": {"trace": "traces"}})

    url = to_zarr(
        xr.Dataset({"frames": (("frame", "row", "col"), np.zeros((3, 2, 2)))}, attrs={"fps": 1.0}),
        str(tmp_path / "b.zarr"),
        consolidated=True,
    )
    with pytest.raises(
        InputError,
        match=r"'frames' has dimensions \('frame', 'row', 'col'\); expected \('frame', 'y', 'x'\)",
    ):
        load_zarr(url, {})
    url = to_zarr(
        xr.Dataset(
            {"spike_time": ("spike", [0.1]), "frames": (("frame", "y", "x"), np.zeros((2, 1, 1)))},
            attrs={"fps": 1.0},
        ),
        str(tmp_path / "c.zarr"),
        consolidated=True,
    )
    with pytest.raises(InputError, match=r"has 'spike_time' without its 'unit' coordinate"):
        load_zarr(url, {})


def test_zarr_arguments() -> None:
    with pytest.raises(ConfigError, match=r"renames: unknown argument; did you mean 'rename'\?"):
        load_recording("x.zarr", {"renames": {}}, format="zarr")


def test_zarr_reads_the_synthetic_movie_writer(tmp_path: Path) -> None:
    # the demo's movies are written by neurobatch.synthetic.write_movie
    from neurobatch.synthetic import receptive_field_movie, write_movie

    written, _ = receptive_field_movie(n_frames=120, height=4, width=5, n_units=3, n_lags=3)
    url = str(tmp_path / "movie.zarr")
    # 32 frames with their float64 times per chunk
    write_movie(written, url, chunk_memory=32 * (int(written.frames[0].nbytes) + 8))
    with raise_if_dask_computes():
        ds = load_zarr(url, {"kind": "frames"})
    assert ds.frames.data.chunks[0] == (32, 32, 32, 24)
    np.testing.assert_array_equal(ds.frames.values, written.frames.values)
    np.testing.assert_array_equal(ds.frame_time.values, written.frame_time.values)
    np.testing.assert_array_equal(ds.spike_time.values, written.spike_time.values)
    np.testing.assert_array_equal(ds.unit.values, written.unit.values)
    assert ds.attrs["fps"] == written.attrs["fps"]
    assert ds.attrs["stimulus_onset"] == written.attrs["stimulus_onset"]
