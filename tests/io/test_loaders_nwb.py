"""Tests of the ``nwb`` loader on NWB files written by ``pynwb`` in the tests.

Each file is written with pynwb's own API (an ``ElectricalSeries`` in chunked, compressed
HDF5, an ``ImageSeries`` stimulus, the ``Units`` table, an ``EventsTable``, a ``TimeSeries``
and the trials table) and the loaded values are compared with the NumPy arrays it was
written from.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import fsspec
import numpy as np
import pytest
from hdmf.backends.hdf5 import H5DataIO  # type: ignore[import-untyped]
from numpy.typing import NDArray
from pynwb import NWBHDF5IO, NWBFile, TimeSeries  # type: ignore[import-untyped]
from pynwb.ecephys import LFP, ElectricalSeries  # type: ignore[import-untyped]
from pynwb.event import EventsTable  # type: ignore[import-untyped]
from pynwb.file import Subject  # type: ignore[import-untyped]
from pynwb.image import ImageSeries  # type: ignore[import-untyped]

from conftest import raise_if_dask_computes
from neurobatch.errors import ConfigError, InputError, InputNotFoundError, NonUniformSamplingWarning
from neurobatch.io.loaders import NWBArguments, load_nwb, load_recording
from nwb_files import per_wavelength_file

RATE = 1000.0
START = 2.0
CONVERSION = 0.195e-6
N_SAMPLES = 10_000
N_CHANNELS = 4
FPS = 60.0
ONSET = 1.5
MOVIE_SHAPE = (50, 5, 3)  # NWB order: frame, x, y
SPIKES = [np.array([0.1, 0.25, 0.3]), np.array([]), np.array([0.5, 2.75])]
UNIT_IDS = [7, 8, 9]
LICKS = [1.0, 2.5]
REWARDS = [0.5, 1.5, 2.25]
TRIALS = [(0.0, 1.0), (1.2, 2.0)]


def one_line(error: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    return message


def traces_data() -> NDArray[np.int16]:
    rng = np.random.default_rng(0)
    return rng.integers(-500, 500, size=(N_SAMPLES, N_CHANNELS), dtype=np.int16)


def movie_data() -> NDArray[np.float32]:
    return np.random.default_rng(1).standard_normal(MOVIE_SHAPE).astype(np.float32)


def new_file() -> NWBFile:
    return NWBFile(
        session_description="loader test",
        identifier="nb-test-1",
        session_start_time=dt.datetime(2024, 5, 6, 10, 0, tzinfo=dt.UTC),
        subject=Subject(subject_id="m42", species="Mus musculus", sex="F", age="P90D"),
    )


def add_electrodes(nwbfile: NWBFile, n: int = N_CHANNELS) -> Any:
    device = nwbfile.create_device(name="probe")
    group = nwbfile.create_electrode_group(
        name="shank0", description="shank", location="CA1", device=device
    )
    for i in range(n):
        nwbfile.add_electrode(group=group, location=f"CA{1 + i % 2}", id=100 + i)
    return nwbfile.create_electrode_table_region(region=list(range(n)), description="all")


def write(path: Path, nwbfile: NWBFile) -> str:
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwbfile)
    return str(path)


@pytest.fixture(scope="module")
def full_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An NWB file with every part the loader reads."""
    nwbfile = new_file()
    region = add_electrodes(nwbfile)
    nwbfile.add_acquisition(
        ElectricalSeries(
            name="raw",
            data=H5DataIO(traces_data(), chunks=(256, N_CHANNELS), compression="gzip"),
            electrodes=region,
            rate=RATE,
            starting_time=START,
            conversion=CONVERSION,
        )
    )
    nwbfile.add_stimulus(
        ImageSeries(name="noise", data=movie_data(), unit="n.a.", rate=FPS, starting_time=ONSET)
    )
    for unit_id, times in zip(UNIT_IDS, SPIKES, strict=True):
        nwbfile.add_unit(spike_times=times, id=unit_id)
    licks = EventsTable(name="licks", description="lick onsets")
    for t in LICKS:
        licks.add_event(timestamp=t)
    nwbfile.add_events_table(licks)
    nwbfile.add_acquisition(
        TimeSeries(name="reward", data=np.ones(3), unit="n.a.", timestamps=REWARDS)
    )
    for start, stop in TRIALS:
        nwbfile.add_trial(start_time=start, stop_time=stop)
    return write(tmp_path_factory.mktemp("nwb") / "full.nwb", nwbfile)


@pytest.fixture
def memory_copy() -> Iterator[Callable[[str], str]]:
    fs = fsspec.filesystem("memory")
    made: list[str] = []

    def copy(path: str) -> str:
        target = f"/nwb-tests-{len(made)}-{os.getpid()}/{Path(path).name}"
        fs.pipe(target, Path(path).read_bytes())
        made.append(target)
        return f"memory://{target}"

    yield copy
    for target in made:
        fs.rm(target)


def open_handles(path: str) -> int:
    """File descriptors of this process open on ``path`` (Linux)."""
    real = os.path.realpath(path)
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}") == real
        except OSError:
            pass
    return count


# ---------------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------------


def test_round_trip_every_part(full_file: str) -> None:
    row = N_CHANNELS * 2
    with raise_if_dask_computes():
        ds = load_nwb(full_file, {"events": ["licks", "reward", "trials"]}, chunk_memory=5000 * row)
    for name in ("traces", "frames", "spike_time"):
        assert isinstance(ds[name].data, da.Array), name
    assert isinstance(ds.unit.data, da.Array)
    # 5000 samples fit the budget; aligned down to the file's 256-sample chunks: 4864
    assert ds.traces.data.chunks == ((4864, 4864, 272), (N_CHANNELS,))

    assert ds.traces.dtype == np.int16
    np.testing.assert_array_equal(ds.traces.values, traces_data())
    np.testing.assert_array_equal(ds.time.values, np.arange(N_SAMPLES) / RATE + START)
    assert ds.channel.values.tolist() == [100, 101, 102, 103]
    assert ds.channel_location.values.tolist() == ["CA1", "CA2", "CA1", "CA2"]
    assert ds.attrs["sampling_rate"] == RATE
    assert ds.attrs["gain_uv"] == pytest.approx(0.195, rel=1e-12)
    assert ds.attrs["electrical_series"] == "acquisition/raw"

    # NWB stores (frame, x, y): frames are (frame, y, x)
    assert ds.frames.dims == ("frame", "y", "x")
    np.testing.assert_array_equal(ds.frames.values, movie_data().transpose(0, 2, 1))
    np.testing.assert_array_equal(ds.frame_time.values, ONSET + np.arange(MOVIE_SHAPE[0]) / FPS)
    assert (ds.attrs["fps"], ds.attrs["stimulus_onset"]) == (FPS, ONSET)
    assert ds.attrs["image_series"] == "stimulus/presentation/noise"

    np.testing.assert_array_equal(ds.spike_time.values, np.concatenate(SPIKES))
    assert ds.unit.values.tolist() == [7, 7, 7, 9, 9]
    assert ds.unit_ids.values.tolist() == UNIT_IDS  # unit 8 has no spikes, and is listed

    expected = sorted(
        [(t, "licks") for t in LICKS]
        + [(t, "reward") for t in REWARDS]
        + [(start, "trials") for start, _ in TRIALS]
    )
    assert ds.event_time.values.tolist() == [t for t, _ in expected]
    assert ds.event_name.values.tolist() == [name for _, name in expected]
    assert ds.attrs["event_names"] == ["licks", "reward", "trials"]

    assert ds.attrs["nwb_identifier"] == "nb-test-1"
    assert ds.attrs["subject"] == "m42"
    assert ds.attrs["sex"] == "F"
    assert ds.attrs["session_start_time"].startswith("2024-05-06T10:00:00")
    assert ds.attrs["source"] == full_file
    ds.close()


def test_spike_chunks_map_to_their_units(full_file: str) -> None:
    # the unit of each spike is found per chunk: chunks that split a unit's spikes
    ds = load_nwb(full_file, {"electrical_series": None, "image_series": None}, chunk_memory=8)
    assert set(ds.data_vars) == {"spike_time"}
    spike_time = ds.spike_time.data.rechunk(2)
    unit = ds.unit.data.rechunk(2)
    np.testing.assert_array_equal(spike_time.compute(), np.concatenate(SPIKES))
    assert unit.compute().tolist() == [7, 7, 7, 9, 9]


def test_file_closed_with_the_dataset(full_file: str) -> None:
    before = open_handles(full_file)
    ds = load_nwb(full_file, {})
    assert open_handles(full_file) == before  # pynwb's reading is closed again
    ds.traces[:10].values  # noqa: B018
    assert open_handles(full_file) == before + 1  # open while the Dataset is used
    ds.close()
    assert open_handles(full_file) == before
    # a closed Dataset reopens on the next read
    np.testing.assert_array_equal(ds.traces[:10].values, traces_data()[:10])
    ds.close()


def test_remote_file(full_file: str, memory_copy: Callable[[str], str]) -> None:
    url = memory_copy(full_file)
    with raise_if_dask_computes():
        ds = load_nwb(url, {"events": ["licks"]})
    with dask.config.set(scheduler="threads"):
        np.testing.assert_array_equal(ds.traces.values, traces_data())
        np.testing.assert_array_equal(ds.frames.values, movie_data().transpose(0, 2, 1))
        np.testing.assert_array_equal(ds.spike_time.values, np.concatenate(SPIKES))
    assert ds.event_time.values.tolist() == LICKS
    ds.close()


def test_on_a_real_cluster(full_file: str, scheduler: str) -> None:
    ds = load_nwb(full_file, {}, chunk_memory=256 * 8)
    total = ds.traces.astype(np.int64).sum("time").values
    np.testing.assert_array_equal(total, traces_data().astype(np.int64).sum(axis=0))
    assert ds.unit.values.tolist() == [7, 7, 7, 9, 9]
    ds.close()


def test_through_the_registry(full_file: str) -> None:
    ds = load_recording(full_file, {"format": "nwb", "units": False}, format="nwb")
    assert "spike_time" not in ds
    assert "traces" in ds
    ds.close()


# ---------------------------------------------------------------------------------------------
# Choosing objects
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_series(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Raw traces in acquisition, LFP in processing, sampled by timestamps; a 1-D series."""
    nwbfile = new_file()
    region = add_electrodes(nwbfile)
    data = traces_data()
    nwbfile.add_acquisition(ElectricalSeries(name="raw", data=data, electrodes=region, rate=RATE))
    module = nwbfile.create_processing_module(name="ecephys", description="lfp")
    timestamps = 5.0 + np.arange(N_SAMPLES // 10) / 100.0
    module.add(
        LFP(
            ElectricalSeries(
                name="lfp",
                data=data[::10],
                electrodes=region,
                timestamps=timestamps,
                channel_conversion=np.array([1.0, 2.0, 1.0, 2.0]),
            )
        )
    )
    one_channel = nwbfile.create_electrode_table_region(region=[0], description="one")
    nwbfile.add_acquisition(
        ElectricalSeries(name="single", data=data[:, 0], electrodes=one_channel, rate=RATE)
    )
    return write(tmp_path_factory.mktemp("nwb") / "two.nwb", nwbfile)


def test_auto_and_named_series(two_series: str) -> None:
    with pytest.raises(
        InputError,
        match=r"holds 3 ElectricalSeries objects \(.*\); name one with loader\.electrical_series",
    ) as e:
        # two in acquisition: auto cannot choose (it would take the only one there)
        load_nwb(two_series, {})
    assert "'acquisition/raw', 'acquisition/single', 'processing/ecephys/LFP/lfp'" in one_line(e)

    lfp = load_nwb(two_series, {"electrical_series": "processing/ecephys/LFP/lfp"})
    np.testing.assert_array_equal(lfp.traces.values, traces_data()[::10])
    np.testing.assert_array_equal(lfp.time.values, 5.0 + np.arange(N_SAMPLES // 10) / 100.0)
    assert lfp.attrs["sampling_rate"] == pytest.approx(100.0, rel=1e-12)
    np.testing.assert_allclose(lfp.channel_gain_uv.values, [1e6, 2e6, 1e6, 2e6])
    assert "gain_uv" not in lfp.attrs  # channels differ

    single = load_nwb(two_series, {"electrical_series": "single"})
    assert single.traces.shape == (N_SAMPLES, 1)
    np.testing.assert_array_equal(single.traces.values[:, 0], traces_data()[:, 0])
    assert single.channel.values.tolist() == [100]

    with pytest.raises(
        InputError,
        match=r"has no ElectricalSeries 'lpf' \(loader\.electrical_series; did you mean 'lfp'\?\)",
    ) as e:
        load_nwb(two_series, {"electrical_series": "lpf"})
    one_line(e)


def test_irregular_timestamps_warn(tmp_path: Path) -> None:
    nwbfile = new_file()
    region = add_electrodes(nwbfile)
    timestamps = np.arange(100) / 100.0
    timestamps[50:] += 0.5  # a gap
    nwbfile.add_acquisition(
        ElectricalSeries(
            name="raw", data=traces_data()[:100], electrodes=region, timestamps=timestamps
        )
    )
    path = write(tmp_path / "gap.nwb", nwbfile)
    with pytest.warns(NonUniformSamplingWarning, match="sampling is not uniform"):
        ds = load_nwb(path, {})
    np.testing.assert_array_equal(ds.time.values, timestamps)
    timestamps[60] = timestamps[59]
    nwbfile = new_file()
    region = add_electrodes(nwbfile)
    nwbfile.add_acquisition(
        ElectricalSeries(
            name="raw", data=traces_data()[:100], electrodes=region, timestamps=timestamps
        )
    )
    path = write(tmp_path / "repeat.nwb", nwbfile)
    with pytest.raises(InputError, match=r"ElectricalSeries 'acquisition/raw' timestamps repeats"):
        load_nwb(path, {})


def test_image_dims_yx(tmp_path: Path) -> None:
    nwbfile = new_file()
    movie = movie_data()  # written (frame, y, x) by a tool that ignores the NWB layout
    nwbfile.add_stimulus(
        ImageSeries(name="noise", data=movie, unit="n.a.", timestamps=np.arange(50) / 30.0)
    )
    path = write(tmp_path / "yx.nwb", nwbfile)
    ds = load_nwb(path, {"image_dims": "yx"}, chunk_memory=movie[0].nbytes * 8)
    assert ds.frames.data.chunks[0] == (8,) * 6 + (2,)
    np.testing.assert_array_equal(ds.frames.values, movie)
    assert ds.attrs["fps"] == pytest.approx(30.0, rel=1e-12)
    assert ds.attrs["stimulus_onset"] == 0.0
    np.testing.assert_array_equal(ds.frame_time.values, np.arange(50) / 30.0)


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def test_bad_files(tmp_path: Path, full_file: str) -> None:
    (tmp_path / "text.nwb").write_text("not HDF5")
    with pytest.raises(InputError, match=r"cannot read NWB file '.*text\.nwb': ") as e:
        load_nwb(str(tmp_path / "text.nwb"), {})
    one_line(e)
    with pytest.raises(InputNotFoundError, match=r"input '.*missing\.nwb' does not exist"):
        load_nwb(str(tmp_path / "missing.nwb"), {})

    empty = new_file()
    empty.add_trial(start_time=1.0, stop_time=2.0)
    empty = write(tmp_path / "empty.nwb", empty)
    for events in ([], ["trials"]):  # events alone are no recording
        with pytest.raises(
            InputError, match=r"has no ElectricalSeries, ImageSeries or Units table to read$"
        ) as e:
            load_nwb(empty, {"events": events})
        one_line(e)
    with pytest.raises(InputError, match=r"has no Units table \(loader\.units is true\)"):
        load_nwb(empty, {"units": True})

    with pytest.raises(
        InputError,
        match=r"has no TimeSeries or table 'lick' \(loader\.events; did you mean 'licks'\?\)",
    ):
        load_nwb(full_file, {"events": ["lick"]})
    with pytest.raises(
        InputError,
        match=r"table 'general/extracellular_ephys/electrodes' has no 'timestamp' or 'start_time' column",
    ) as e:
        load_nwb(full_file, {"events": ["electrodes"]})
    one_line(e)
    with pytest.raises(
        InputError,
        match=r"has no ImageSeries 'movie' \(loader\.image_series; did you mean 'noise'\?\)",
    ):
        load_nwb(full_file, {"image_series": "movie"})

    external = new_file()
    external.add_stimulus(
        ImageSeries(
            name="video",
            external_file=["video.avi"],
            starting_frame=[0],
            format="external",
            rate=30.0,
            num_samples=100,
        )
    )
    path = write(tmp_path / "external.nwb", external)
    with pytest.raises(
        InputError, match=r"keeps its frames in external files \('video\.avi'\)"
    ) as e:
        load_nwb(path, {})
    one_line(e)

    color = new_file()
    color.add_stimulus(ImageSeries(name="rgb", data=np.zeros((4, 3, 2, 3)), unit="n.a.", rate=30.0))
    path = write(tmp_path / "color.nwb", color)
    with pytest.raises(InputError, match=r"ImageSeries 'stimulus/presentation/rgb' has 4-D data"):
        load_nwb(path, {})


def test_arguments() -> None:
    assert NWBArguments().event_names() == []
    with pytest.raises(
        ConfigError, match=r"image_dim: unknown argument; did you mean 'image_dims'\?"
    ):
        load_recording("x.nwb", {"image_dim": "yx"}, format="nwb")
    with pytest.raises(ConfigError, match=r"units\.bool: Input should be a valid boolean"):
        load_recording("x.nwb", {"units": "some"}, format="nwb")


def test_units_without_spike_times(tmp_path: Path) -> None:
    nwbfile = new_file()
    nwbfile.add_unit_column(name="quality", description="sorter's label")
    nwbfile.add_unit(quality="good")
    nwbfile.add_stimulus(ImageSeries(name="noise", data=movie_data(), unit="n.a.", rate=FPS))
    path = write(tmp_path / "no-spikes.nwb", nwbfile)
    ds = load_nwb(path, {})  # auto: a Units table without spike times is not read
    assert "spike_time" not in ds
    assert "frames" in ds
    with pytest.raises(InputError, match=r"the Units table has no spike_times column") as e:
        load_nwb(path, {"units": True})
    one_line(e)


def test_fiber_photometry_is_named(tmp_path: Path) -> None:
    """A file of fiber photometry given to format nwb (the ephys, movie and spikes reader)
    says which format reads it, instead of loading its events alone."""
    t = np.arange(100) / 10.0
    path = per_wavelength_file(
        tmp_path / "fp.nwb", t, {465.0: t, 405.0: t}, {"cue": t[:2], "lever": t[3:4]}, rate=10.0
    )
    with pytest.raises(
        InputError,
        match=r"holds fiber photometry \(FiberPhotometryResponseSeries 'acquisition/raw_405', "
        r"'acquisition/raw_465'\), which format 'nwb' does not read; expected loader\.format "
        r"nwb-photometry, with signal and isosbestic",
    ) as e:
        load_nwb(str(path), {"events": ["trials"]})
    one_line(e)
