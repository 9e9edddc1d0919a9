"""Tests of the ``spikeglx`` loader on real files.

SpikeGLX recordings are written as SpikeGLX writes them: int16 samples interleaved by
channel in a ``.bin``, with a ``.meta`` of ``tag=value`` lines beside it. The loaded traces
are compared with an independent reading (``numpy.fromfile``) and the conversion to
microvolts with the formula of SpikeGLX's ``readSGLX.py`` (range / max-int / gain).
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import fsspec
import numpy as np
import pytest
import xarray as xr
import zarr
from numpy.typing import NDArray

from conftest import raise_if_dask_computes
from neurobatch.errors import ConfigError, InputError, InputNotFoundError
from neurobatch.io.loaders import load_recording, load_spikeglx
from neurobatch.io.loaders.spikeglx import read_spikeglx_meta
from neurobatch.io.zarr import write_dataset

N_AP = 6
RATE = 30000.0
N_SAMPLES = 12_000
FIRST_SAMPLE = 123_450
#: Bytes of one stored row of a loaded AP file: the AP channels (int16; the sync channel is
#: not kept) and the float64 time stamp.
STORED_ROW = N_AP * 2 + 8


def one_line(error: pytest.ExceptionInfo[BaseException]) -> str:
    """The error's message, checked to be one line."""
    message = str(error.value)
    assert "\n" not in message, message
    return message


def np1_meta(n_ap: int, size: int, **overrides: Any) -> dict[str, str]:
    """A Neuropixels 1.0 AP-band meta, as SpikeGLX writes it (AP channels + sync)."""
    imro = f"(0,{n_ap})" + "".join(f"({i} 0 0 500 250 1)" for i in range(n_ap))
    meta = {
        "acqApLfSy": f"{n_ap},{n_ap},1",
        "appVersion": "20230425",
        "fileSizeBytes": str(size),
        "fileTimeSecs": str(size / (2 * (n_ap + 1)) / RATE),
        "firstSample": str(FIRST_SAMPLE),
        "imAiRangeMax": "0.6",
        "imAiRangeMin": "-0.6",
        "imDatPrb_type": "0",
        "imMaxInt": "512",
        "imSampRate": f"{RATE:g}",
        "nSavedChans": str(n_ap + 1),
        "snsApLfSy": f"{n_ap},0,1",
        "snsSaveChanSubset": f"0:{n_ap - 1},{2 * n_ap}",
        "typeThis": "imec",
        "~imroTbl": imro,
    }
    meta.update({key: str(value) for key, value in overrides.items()})
    return {key: value for key, value in meta.items() if value != "DROP"}


def write_meta(path: Path | str, meta: Mapping[str, str]) -> None:
    text = "".join(f"{key}={value}\n" for key, value in meta.items())
    with fsspec.open(str(path), "w") as handle:
        handle.write(text)


def write_spikeglx(
    folder: Path | str,
    data: NDArray[np.int16],
    *,
    name: str = "run_g0_t0.imec0.ap",
    **meta: Any,
) -> str:
    """Write ``data`` (samples x saved channels) as a SpikeGLX .bin and its .meta."""
    folder = str(folder).rstrip("/")
    bin_url = f"{folder}/{name}.bin"
    payload = np.ascontiguousarray(data, dtype="<i2").tobytes()
    with fsspec.open(bin_url, "wb") as handle:
        handle.write(payload)
    n_ap = meta.pop("n_ap", data.shape[1] - 1)
    write_meta(f"{folder}/{name}.meta", np1_meta(n_ap, len(payload), **meta))
    return bin_url


def recording(n: int = N_SAMPLES, channels: int = N_AP + 1, seed: int = 0) -> NDArray[np.int16]:
    rng = np.random.default_rng(seed)
    return rng.integers(-2000, 2000, size=(n, channels), dtype=np.int16)


def reference(path: str, n_channels: int) -> NDArray[np.int16]:
    """An independent reading of the interleaved file."""
    return np.fromfile(path, dtype="<i2").reshape(-1, n_channels)


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
# spikeglx
# ---------------------------------------------------------------------------------------------


def test_spikeglx_values_lazy_and_chunked(tmp_path: Path) -> None:
    data = recording()
    url = write_spikeglx(tmp_path, data)
    with raise_if_dask_computes():
        ds = load_spikeglx(url, {}, chunk_memory=5000 * STORED_ROW)
    assert isinstance(ds.traces.data, da.Array)
    assert ds.traces.dims == ("time", "channel")
    assert ds.traces.dtype == np.int16
    # the budget gives 5000 samples of the kept channels and their time stamps per chunk
    assert ds.traces.data.chunks == ((5000, 5000, 2000), (N_AP,))
    values = ds.traces.values
    assert values.dtype == np.int16
    np.testing.assert_array_equal(values, reference(url, N_AP + 1)[:, :N_AP])
    np.testing.assert_array_equal(values, data[:, :N_AP])
    np.testing.assert_array_equal(ds.time.values, np.arange(N_SAMPLES) / RATE)
    assert ds.channel.values.tolist() == list(range(N_AP))
    assert ds.channel_kind.values.tolist() == ["ap"] * N_AP
    # readSGLX.py: 1e6 * imAiRangeMax / imMaxInt / APgain
    expected_uv = 1e6 * 0.6 / 512 / 500
    assert ds.attrs["gain_uv"] == pytest.approx(expected_uv, rel=1e-15)
    np.testing.assert_allclose(ds.channel_gain_uv.values, expected_uv, rtol=1e-15)
    assert ds.attrs["sampling_rate"] == RATE
    assert ds.attrs["source"] == url
    assert ds.attrs["stream"] == "imec"
    assert ds.attrs["n_samples"] == N_SAMPLES
    assert ds.attrs["first_sample"] == FIRST_SAMPLE
    assert ds.attrs["spikeglx_meta"]["imroTbl"].startswith("(0,6)")
    assert ds.attrs["event_names"] == []
    # a chunk in the middle reads exactly its rows
    np.testing.assert_array_equal(ds.traces[4990:5010, 2:4].values, data[4990:5010, 2:4])


@pytest.mark.parametrize("include_digital", [False, True])
@pytest.mark.parametrize("budget_rows", [4096, 5000, 7777])
def test_spikeglx_chunks_are_the_stores(
    tmp_path: Path, include_digital: bool, budget_rows: int
) -> None:
    # ingest writes the loaded chunks as they are: the store picks the same chunk length
    data = recording()
    url = write_spikeglx(tmp_path, data)
    budget = budget_rows * STORED_ROW
    ds = load_spikeglx(url, {"include_digital": include_digital}, chunk_memory=budget)
    write_dataset(ds, str(tmp_path / "recording.zarr"), chunk_memory=budget)
    stored = zarr.open_group(str(tmp_path / "recording.zarr"), mode="r")
    assert stored["traces"].chunks[0] == ds.traces.data.chunks[0][0]
    assert stored["time"].chunks[0] == ds.traces.data.chunks[0][0]


def test_spikeglx_graph_holds_no_data(tmp_path: Path) -> None:
    # a memory map in the graph would pickle the whole file to every worker
    data = recording()
    ds = load_spikeglx(write_spikeglx(tmp_path, data), {}, chunk_memory=2**16)
    graph = dict(ds.traces.data.__dask_graph__())
    assert len(pickle.dumps(graph)) < data.nbytes / 10


def test_spikeglx_on_a_real_cluster(tmp_path: Path, scheduler: str) -> None:
    data = recording(seed=1)
    ds = load_spikeglx(write_spikeglx(tmp_path, data), {}, chunk_memory=4096 * 14)
    total = ds.traces.astype(np.int64).sum("time").values
    np.testing.assert_array_equal(total, data[:, :N_AP].astype(np.int64).sum(axis=0))
    np.testing.assert_array_equal(ds.traces[::7].values, data[::7, :N_AP])


def test_spikeglx_digital_channels_and_stream_time(tmp_path: Path) -> None:
    data = recording(n=5000)
    url = write_spikeglx(tmp_path, data)
    ds = load_spikeglx(url, {"include_digital": True, "time_origin": "stream"})
    np.testing.assert_array_equal(ds.traces.values, data)
    assert ds.channel.values.tolist() == [*range(N_AP), 2 * N_AP]
    assert ds.channel_kind.values.tolist() == ["ap"] * N_AP + ["sync"]
    assert np.isnan(ds.channel_gain_uv.values[-1])
    assert ds.attrs["gain_uv"] == pytest.approx(1e6 * 0.6 / 512 / 500)
    np.testing.assert_array_equal(ds.time.values, np.arange(5000) / RATE + FIRST_SAMPLE / RATE)


def test_spikeglx_gains_per_channel(tmp_path: Path) -> None:
    gains = [50, 125, 250, 500, 1000, 1500]
    imro = "(0,6)" + "".join(f"({i} 0 0 {g} 250 1)" for i, g in enumerate(gains))
    data = recording(n=4096)
    ds = load_spikeglx(write_spikeglx(tmp_path, data, **{"~imroTbl": imro}), {})
    np.testing.assert_allclose(
        ds.channel_gain_uv.values, [1e6 * 0.6 / 512 / g for g in gains], rtol=1e-15
    )
    assert "gain_uv" not in ds.attrs  # no single gain


def test_spikeglx_lf_band(tmp_path: Path) -> None:
    # an .lf.bin saves the LF channels (original indices n_ap .. 2 n_ap - 1) and the sync
    data = recording(n=4096)
    url = write_spikeglx(
        tmp_path,
        data,
        name="run_g0_t0.imec0.lf",
        imSampRate=2500,
        snsApLfSy=f"0,{N_AP},1",
        snsSaveChanSubset=f"{N_AP}:{2 * N_AP - 1},{2 * N_AP}",
    )
    ds = load_spikeglx(url, {})
    assert ds.channel.values.tolist() == list(range(N_AP, 2 * N_AP))
    assert ds.channel_kind.values.tolist() == ["lf"] * N_AP
    assert ds.attrs["gain_uv"] == pytest.approx(1e6 * 0.6 / 512 / 250)
    assert ds.attrs["sampling_rate"] == 2500.0
    np.testing.assert_array_equal(ds.traces.values, data[:, :N_AP])


def test_spikeglx_neuropixels_2(tmp_path: Path) -> None:
    # NP 2.0 (type 24): no gains in the imro table, fixed gain 80, 14-bit range
    data = recording(n=4096)
    url = write_spikeglx(
        tmp_path,
        data,
        imDatPrb_type=24,
        imMaxInt=8192,
        imAiRangeMax=0.5,
        acqApLfSy=f"{N_AP},0,1",
        snsSaveChanSubset=f"0:{N_AP}",
        **{"~imroTbl": "(24,6)" + "".join(f"({i} 0 0 0)" for i in range(N_AP))},
    )
    ds = load_spikeglx(url, {})
    assert ds.attrs["gain_uv"] == pytest.approx(1e6 * 0.5 / 8192 / 80)
    assert ds.channel_kind.values.tolist() == ["ap"] * N_AP
    # a newer meta states the gain itself
    url = write_spikeglx(
        tmp_path, data, imDatPrb_type=2013, imChan0apGain=100, imMaxInt=8192, imAiRangeMax=0.62
    )
    assert load_spikeglx(url, {}).attrs["gain_uv"] == pytest.approx(1e6 * 0.62 / 8192 / 100)


def test_spikeglx_nidq(tmp_path: Path) -> None:
    # NI-DAQ: 2 MN, 1 MA, 1 XA and 1 XD (digital) channels
    data = recording(n=4096, channels=5)
    payload = data.astype("<i2").tobytes()
    (tmp_path / "run_g0_t0.nidq.bin").write_bytes(payload)
    write_meta(
        tmp_path / "run_g0_t0.nidq.meta",
        {
            "typeThis": "nidq",
            "niSampRate": "25000",
            "nSavedChans": "5",
            "fileSizeBytes": str(len(payload)),
            "acqMnMaXaDw": "2,1,1,1",
            "snsMnMaXaDw": "2,1,1,1",
            "snsSaveChanSubset": "all",
            "niAiRangeMax": "5",
            "niMaxInt": "32768",
            "niMNGain": "200",
            "niMAGain": "1",
        },
    )
    ds = load_spikeglx(str(tmp_path / "run_g0_t0.nidq.bin"), {})
    assert ds.channel_kind.values.tolist() == ["mn", "mn", "ma", "xa"]
    np.testing.assert_allclose(
        ds.channel_gain_uv.values, 1e6 * 5 / 32768 / np.array([200, 200, 1, 1]), rtol=1e-15
    )
    assert "gain_uv" not in ds.attrs
    np.testing.assert_array_equal(ds.traces.values, data[:, :4])
    assert ds.attrs["stream"] == "nidq"


def test_spikeglx_remote_byte_ranges(memory_root: str) -> None:
    data = recording(seed=2)
    url = write_spikeglx(memory_root, data)
    with raise_if_dask_computes():
        ds = load_spikeglx(url, {}, chunk_memory=4096 * 14)
    assert ds.traces.data.chunks[0] == (4096, 4096, 3808)
    with dask.config.set(scheduler="threads"):
        np.testing.assert_array_equal(ds.traces.values, data[:, :N_AP])
        np.testing.assert_array_equal(ds.traces[100:9000:3, ::2].values, data[100:9000:3, :N_AP:2])
    # a file shrunk after loading is an error naming it, not silently short data
    fsspec.filesystem("memory").pipe(url.removeprefix("memory://"), data[:100].tobytes())
    with pytest.raises(InputError, match=r"expected \d+ bytes from offset \d+, read \d+") as e:
        ds.traces[5000:6000].values  # noqa: B018
    assert url in one_line(e)


def test_spikeglx_through_the_registry(tmp_path: Path) -> None:
    data = recording(n=9000)
    url = write_spikeglx(tmp_path, data)
    ds = load_recording(
        url, {"format": "spikeglx"}, format="spikeglx", chunk_memory=4500 * STORED_ROW
    )
    assert ds.traces.data.chunks[0] == (4500, 4500)
    default = load_recording(url, {}, format="spikeglx")
    assert default.traces.data.chunks[0] == (9000,)
    xr.testing.assert_identical(ds.compute(), default.compute())


def test_read_spikeglx_meta(tmp_path: Path) -> None:
    write_meta(tmp_path / "a.meta", {"nSavedChans": "385", "~imroTbl": "(0,384)(0 0 0 500 250 1)"})
    meta = read_spikeglx_meta(str(tmp_path / "a.meta"))
    assert meta == {"nSavedChans": "385", "imroTbl": "(0,384)(0 0 0 500 250 1)"}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"fileSizeBytes": 10}, r"has \d+ bytes but its meta file says fileSizeBytes=10; "),
        ({"nSavedChans": "DROP"}, r"has no 'nSavedChans'"),
        ({"imSampRate": "fast"}, r"imSampRate='fast' is not a number"),
        ({"snsSaveChanSubset": "0:3,12"}, r"lists 5 channels but nSavedChans=7"),
        ({"snsSaveChanSubset": "0:x"}, r"expected 'all' or channel ranges"),
        ({"acqApLfSy": "6,6"}, r"acqApLfSy='6,6'; expected 3 comma-separated channel counts"),
        ({"~imroTbl": "(0,6)(0 0 0 500 250 1)"}, r"imroTbl has 1 channel entries for 6 AP"),
        ({"~imroTbl": "(0,6)" + "(0 0 0)" * 6}, r"imroTbl entries are not"),
        (
            {"snsSaveChanSubset": "0:5,20"},
            r"saved channel 20 is beyond the 13 acquired channels",
        ),
    ],
)
def test_spikeglx_bad_meta(tmp_path: Path, overrides: dict[str, Any], message: str) -> None:
    url = write_spikeglx(tmp_path, recording(n=4096), **overrides)
    with pytest.raises(InputError, match=message) as e:
        load_spikeglx(url, {})
    assert ".meta" in one_line(e) or url in one_line(e)


def test_spikeglx_bad_files(tmp_path: Path) -> None:
    data = recording(n=4096)
    url = write_spikeglx(tmp_path, data)
    # a truncated copy: not a whole number of samples
    Path(url).write_bytes(data.tobytes()[:-3])
    with pytest.raises(
        InputError,
        match=(
            r"has 57341 bytes, not a multiple of 14 \(7 channels x 2 bytes of int16\); is the "
            r"file truncated, or is nSavedChans in '.*\.ap\.meta' not its own\?"
        ),
    ) as e:
        load_spikeglx(url, {})
    assert url in one_line(e)
    # whole samples, but fewer than the meta says
    Path(url).write_bytes(data[:-1].tobytes())
    with pytest.raises(
        InputError, match=r"has 57330 bytes but its meta file says fileSizeBytes=57344"
    ):
        load_spikeglx(url, {})
    # the .meta is missing
    Path(url).with_suffix(".meta").unlink()
    with pytest.raises(InputNotFoundError, match=r"has no meta file '.*\.ap\.meta' beside it") as e:
        load_spikeglx(url, {})
    one_line(e)
    with pytest.raises(
        InputNotFoundError, match=r"SpikeGLX binary '.*nothing\.bin' does not exist"
    ):
        load_spikeglx(str(tmp_path / "nothing.bin"), {})
    with pytest.raises(InputError, match=r"is not a SpikeGLX binary; format 'spikeglx' reads"):
        load_spikeglx(str(tmp_path / "run.meta"), {})
    # a meta that is not tag=value lines
    url = write_spikeglx(tmp_path, data, name="other")
    Path(url).with_suffix(".meta").write_text("nSavedChans=7\nthis is not a tag\n")
    with pytest.raises(InputError, match=r"line 2: 'this is not a tag' is not 'tag=value'"):
        load_spikeglx(url, {})
    # only digital channels
    only_sync = write_spikeglx(
        tmp_path,
        data[:, :1],
        name="sync",
        n_ap=0,
        acqApLfSy="0,0,1",
        snsSaveChanSubset="0",
        **{"~imroTbl": "(0,0)"},
    )
    with pytest.raises(InputError, match=r"holds only digital channels; set include_digital"):
        load_spikeglx(only_sync, {})
    assert load_spikeglx(only_sync, {"include_digital": True}).channel_kind.values.tolist() == [
        "sync"
    ]


def test_spikeglx_arguments() -> None:
    with pytest.raises(ConfigError, match=r"include_digitals: unknown argument; did you mean"):
        load_recording("x.bin", {"include_digitals": True}, format="spikeglx")
    with pytest.raises(ConfigError, match=r"downsample: Value error, the lazy loaders"):
        load_recording("x.bin", {"downsample": 10}, format="spikeglx")


def test_spikeglx_reads_the_synthetic_writer(tmp_path: Path) -> None:
    # the demo's recordings are written by neurobatch.synthetic.write_spikeglx
    from neurobatch.synthetic import ephys_recording
    from neurobatch.synthetic import write_spikeglx as write_synthetic

    written, _ = ephys_recording(n_channels=5, duration_s=0.5, fs=20_000.0)
    url, _ = write_synthetic(written, str(tmp_path / "demo_g0_t0.imec0.ap.bin"))
    ds = load_spikeglx(url, {"time_origin": "stream"})
    np.testing.assert_array_equal(ds.traces.values, written.traces.values)
    np.testing.assert_allclose(ds.time.values, written.time.values, rtol=0, atol=1e-12)
    assert ds.attrs["sampling_rate"] == written.attrs["sampling_rate"]
    assert ds.attrs["gain_uv"] == pytest.approx(written.attrs["gain_uv"], rel=1e-12)
