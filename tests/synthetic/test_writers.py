"""The writers of the demos' inputs: Zarr movies and SpikeGLX pairs.

Movies are read back with xarray, the SpikeGLX bytes are checked against numpy.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import fsspec
import numpy as np
import pytest
import xarray as xr

from neurobatch.errors import InputError
from neurobatch.synthetic import (
    PlantedMovie,
    PlantedRecording,
    ephys_recording,
    receptive_field_movie,
    write_movie,
    write_spikeglx,
)

FS = 30_000.0


# --------------------------------------------------------------------------------------------
# movies
# --------------------------------------------------------------------------------------------

MOVIE = {"n_frames": 4000, "height": 6, "width": 6, "n_lags": 4, "n_units": 4}


@pytest.fixture(scope="module")
def planted() -> PlantedMovie:
    return receptive_field_movie(
        **MOVIE, mean_rate_hz=60.0, n_silent=1, outside_s=0.5, seed=0, chunk_frames=900
    )


def test_write_movie_round_trips_through_zarr(planted: PlantedMovie, tmp_path: Path) -> None:
    movie, _ = planted
    labelled = movie.assign_coords(unit=("spike", [f"cell-{u}" for u in movie.unit.values]))
    labelled["unit_ids"] = ("unit", [f"cell-{u}" for u in movie.unit_ids.values])
    path = tmp_path / "movie.zarr"
    # a chunk of 500 frames of 6 x 6 float32 and their float64 times
    write_movie(labelled, str(path), chunk_memory=500 * (6 * 6 * 4 + 8))
    back = xr.open_zarr(path)
    assert back.frames.chunks is not None
    assert back.frames.chunks[0][:2] == (500, 500)
    np.testing.assert_array_equal(back.frames.values, movie.frames.values)
    np.testing.assert_array_equal(back.frame_time.values, movie.frame_time.values)
    np.testing.assert_array_equal(back.spike_time.values, movie.spike_time.values)
    assert back.unit.values.tolist() == labelled.unit.values.tolist()
    assert back.unit_ids.values.tolist() == ["cell-0", "cell-1", "cell-2", "cell-3"]
    assert back.attrs == movie.attrs


def test_write_movie_rejects_a_movie_without_fps(planted: PlantedMovie) -> None:
    movie, _ = planted
    bad = movie.copy()
    bad.attrs = {"stimulus_onset": 1.0}
    with pytest.raises(InputError, match=r"attrs lack \['fps'\]; expected fps \(Hz\)"):
        write_movie(bad, "memory://tests/no-fps.zarr")
    with pytest.raises(InputError, match="has no variable 'frames'"):
        write_movie(movie.drop_vars("frames"), "memory://tests/no-frames.zarr")


# --------------------------------------------------------------------------------------------
# SpikeGLX
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ephys() -> PlantedRecording:
    return ephys_recording(n_channels=12, duration_s=3.0, fs=FS, seed=4, line_hz=50.0, t0=2.5)


def _meta(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines())


def test_spikeglx_bytes_round_trip_with_numpy(ephys: PlantedRecording, tmp_path: Path) -> None:
    recording = ephys.recording
    bin_path, meta_path = write_spikeglx(recording, str(tmp_path / "run_g0_t0.imec0.ap.bin"))
    assert meta_path == str(tmp_path / "run_g0_t0.imec0.ap.meta")
    raw = Path(bin_path).read_bytes()
    samples = np.frombuffer(raw, dtype="<i2").reshape(-1, 12)
    np.testing.assert_array_equal(samples, recording.traces.values)
    meta = _meta(Path(meta_path).read_text())
    assert int(meta["nSavedChans"]) == 12
    assert float(meta["imSampRate"]) == FS
    assert int(meta["fileSizeBytes"]) == len(raw) == 90_000 * 12 * 2
    assert float(meta["fileTimeSecs"]) == pytest.approx(3.0)
    assert int(meta["firstSample"]) == round(2.5 * FS)
    assert meta["fileSHA1"] == hashlib.sha1(raw).hexdigest().upper()
    assert meta["snsApLfSy"] == "12,0,0"
    # SpikeGLX's Neuropixels 1.0 scale: imAiRangeMax / imMaxInt / APgain, in µV
    entries = re.findall(r"\(([^)]*)\)", meta["~imroTbl"])
    assert entries[0] == "0,12" and len(entries) == 13
    ap_gain = float(entries[1].split()[3])
    gain_uv = float(meta["imAiRangeMax"]) / int(meta["imMaxInt"]) / ap_gain * 1e6
    assert gain_uv == pytest.approx(recording.attrs["gain_uv"], rel=1e-12)
    assert float(meta["imAiRangeMin"]) == -float(meta["imAiRangeMax"])


def test_spikeglx_writes_to_any_fsspec_url() -> None:
    recording, _ = ephys_recording(n_channels=4, duration_s=0.2, fs=10_000.0, gain_uv=0.195)
    bin_url, meta_url = write_spikeglx(recording, "memory://tests/glx/a.ap.bin")
    memory = fsspec.filesystem("memory")
    samples = np.frombuffer(memory.cat_file("/tests/glx/a.ap.bin"), dtype="<i2")
    np.testing.assert_array_equal(samples.reshape(-1, 4), recording.traces.values)
    meta = _meta(memory.cat_file("/tests/glx/a.ap.meta").decode())
    assert float(meta["imAiRangeMax"]) / 512 / 500 * 1e6 == pytest.approx(0.195)
    assert (bin_url, meta_url) == ("memory://tests/glx/a.ap.bin", "memory://tests/glx/a.ap.meta")
    memory.rm("/tests/glx", recursive=True)


def test_spikeglx_refuses_what_it_cannot_write(ephys: PlantedRecording) -> None:
    recording = ephys.recording
    with pytest.raises(ValueError, match=r"the path must end in \.bin"):
        write_spikeglx(recording, "memory://tests/run.dat")
    as_float = recording.assign(traces=recording.traces.astype(np.float32))
    with pytest.raises(InputError, match="traces has dtype float32; expected int16"):
        write_spikeglx(as_float, "memory://tests/run.bin")
    no_rate = recording.copy()
    no_rate.attrs = {}
    with pytest.raises(InputError, match=r"attrs\['sampling_rate'\] is None"):
        write_spikeglx(no_rate, "memory://tests/run.bin")
