"""Synthetic inputs of the demos: planted receptive fields, ephys recordings, their writers.

Each property is checked against an independent reference: the planted receptive fields
against the STA kernel, the mains hum against a Welch periodogram, the planted spikes against
threshold crossings of the scipy-high-passed trace, the SpikeGLX bytes against numpy.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pytest
import scipy.signal
import xarray as xr

from neurobatch.errors import EmptyUnitWarning, InputError
from neurobatch.kernels.sta import spike_triggered_average
from neurobatch.synthetic import (
    PlantedMovie,
    PlantedRecording,
    ephys_recording,
    receptive_field_movie,
    write_movie,
    write_photometry_batch,
    write_spikeglx,
)

FS = 30_000.0


# --------------------------------------------------------------------------------------------
# movies with planted receptive fields
# --------------------------------------------------------------------------------------------

MOVIE = {"n_frames": 4000, "height": 6, "width": 6, "n_lags": 4, "n_units": 4}


@pytest.fixture(scope="module")
def planted() -> PlantedMovie:
    return receptive_field_movie(
        **MOVIE, mean_rate_hz=60.0, n_silent=1, outside_s=0.5, seed=0, chunk_frames=900
    )


def test_sta_recovers_the_planted_receptive_fields(planted: PlantedMovie) -> None:
    movie, fields = planted
    with pytest.warns(EmptyUnitWarning, match=r"1 unit\(s\) have no usable spikes.*: 3\."):
        result = spike_triggered_average(
            movie.spike_time.values,
            movie.unit.values,
            movie.frames.values,
            fps=movie.attrs["fps"],
            n_lags=MOVIE["n_lags"],
            onset=movie.attrs["stimulus_onset"],
            unit_ids=movie.unit_ids.values,
        )
    assert result.bins.unit_ids.tolist() == [0, 1, 2, 3]
    for unit in range(3):
        correlation = np.corrcoef(result.sta[unit].ravel(), fields.values[unit].ravel())[0, 1]
        assert correlation >= 0.9, (unit, correlation)
    # the silent unit is still listed, with a NaN STA
    assert result.bins.n_used[3] == 0
    assert np.isnan(result.sta[3]).all()
    # spikes before and after the movie exist and are excluded, every spike is accounted for
    assert (result.bins.n_before[:3] > 0).all() and (result.bins.n_after[:3] > 0).all()
    counted = result.bins.n_used + result.bins.n_before + result.bins.n_after
    counted += result.bins.n_too_early
    assert counted.sum() == movie.sizes["spike"]


def test_movie_has_the_design_layout(planted: PlantedMovie) -> None:
    movie, fields = planted
    fps, onset = movie.attrs["fps"], movie.attrs["stimulus_onset"]
    assert movie.frames.dims == ("frame", "y", "x")
    assert movie.frames.dtype == np.float32
    assert movie.frames.chunks is not None  # lazy
    assert movie.frames.chunks[0][:2] == (900, 900)
    np.testing.assert_allclose(movie.frame_time.values, onset + np.arange(4000) / fps)
    assert movie.spike_time.dims == ("spike",) and movie.unit.dims == ("spike",)
    assert movie.unit_ids.dims == ("unit",)
    assert np.all(np.diff(movie.spike_time.values) >= 0)
    assert set(movie.unit.values.tolist()) == {0, 1, 2}
    assert set(movie.attrs) >= {"fps", "stimulus_onset", "pixel_size", "source"}
    frames = movie.frames.values
    assert abs(float(frames.mean())) < 0.02 and abs(float(frames.std()) - 1.0) < 0.02
    assert fields.dims == ("unit", "lag", "y", "x")
    assert fields.shape == (4, 4, 6, 6)
    np.testing.assert_allclose(np.abs(fields.values).max(axis=(1, 2, 3)), 1.0)
    np.testing.assert_allclose(fields.lag_time.values, np.arange(4) / fps)


def test_movie_does_not_depend_on_its_chunking(planted: PlantedMovie) -> None:
    movie, fields = planted
    again, fields_again = receptive_field_movie(
        **MOVIE, mean_rate_hz=60.0, n_silent=1, outside_s=0.5, seed=0, chunk_frames=333
    )
    np.testing.assert_array_equal(again.frames.values, movie.frames.values)
    np.testing.assert_array_equal(again.frames[1000:1100].values, movie.frames.values[1000:1100])
    np.testing.assert_array_equal(again.spike_time.values, movie.spike_time.values)
    np.testing.assert_array_equal(again.unit.values, movie.unit.values)
    np.testing.assert_array_equal(fields_again.values, fields.values)
    other, _ = receptive_field_movie(**MOVIE, seed=1)
    assert not np.array_equal(other.frames[:10].values, movie.frames[:10].values)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_frames": 0}, "n_frames must be an integer >= 1, got 0"),
        ({"n_lags": 50, "n_frames": 10}, "n_lags must be <= n_frames=10, got 50"),
        ({"n_silent": 5, "n_units": 4}, r"n_silent must be in \[0, n_units=4\], got 5"),
        ({"fps": -1.0}, "fps must be a finite number > 0, got -1.0"),
    ],
)
def test_receptive_field_movie_rejects_bad_arguments(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        receptive_field_movie(**kwargs)  # type: ignore[arg-type]


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
# ephys recordings
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ephys() -> PlantedRecording:
    return ephys_recording(n_channels=12, duration_s=3.0, fs=FS, seed=4, line_hz=50.0, t0=2.5)


def _welch_peak(trace: np.ndarray, lo: float, hi: float) -> float:
    freq, power = scipy.signal.welch(trace, fs=FS, nperseg=int(FS))  # 1 Hz resolution
    band = (freq > lo) & (freq < hi)
    return float(freq[band][np.argmax(power[band])])


@pytest.mark.parametrize("line_hz", [50.0, 60.0])
def test_mains_hum_is_at_the_stated_frequency(line_hz: float) -> None:
    recording, _ = ephys_recording(n_channels=3, duration_s=2.0, fs=FS, seed=1, line_hz=line_hz)
    assert recording.attrs["line_noise_hz"] == line_hz
    traces = recording.traces.values.astype(np.float64)
    for channel in range(3):
        # above the LFP band, the strongest line is the mains
        assert _welch_peak(traces[:, channel], 45.0, 2000.0) == line_hz


def test_ephys_recording_has_the_design_layout(ephys: PlantedRecording) -> None:
    recording, spikes = ephys
    traces = recording.traces
    assert traces.dims == ("time", "channel") and traces.dtype == np.int16
    assert traces.chunks is not None  # lazy
    assert traces.shape == (90_000, 12)
    np.testing.assert_allclose(recording.time.values, 2.5 + np.arange(90_000) / FS)
    assert recording.channel.values.tolist() == list(range(12))
    assert recording.attrs["sampling_rate"] == FS
    assert recording.attrs["gain_uv"] == 2.34375
    assert spikes.unit_ids.values.tolist() == [0, 1, 2]
    np.testing.assert_allclose(
        spikes.spike_time.values, 2.5 + spikes.spike_sample.values / FS, rtol=0, atol=1e-12
    )
    # the LFP: below 40 Hz, on the order of its stated 200 µV RMS
    uv = traces.values[:, 0] * recording.attrs["gain_uv"]
    sos = scipy.signal.butter(4, 40.0, "lowpass", fs=FS, output="sos")
    lfp_rms = float(np.std(scipy.signal.sosfiltfilt(sos, uv)))
    assert 100.0 < lfp_rms < 300.0


def test_ephys_recording_does_not_depend_on_its_chunking(ephys: PlantedRecording) -> None:
    again, spikes = ephys_recording(
        n_channels=12, duration_s=3.0, fs=FS, seed=4, line_hz=50.0, t0=2.5, chunk_s=0.37
    )
    np.testing.assert_array_equal(again.traces.values, ephys.recording.traces.values)
    np.testing.assert_array_equal(spikes.spike_sample.values, ephys.spikes.spike_sample.values)


def test_spikes_are_at_the_ground_truth_times(ephys: PlantedRecording) -> None:
    recording, spikes = ephys
    uv = recording.traces.values * recording.attrs["gain_uv"]
    sos = scipy.signal.butter(4, 300.0, "highpass", fs=FS, output="sos")
    high = scipy.signal.sosfiltfilt(sos, uv, axis=0)
    every_spike = spikes.spike_sample.values
    window = int(0.5e-3 * FS)
    for unit in spikes.unit_ids.values:
        trace = high[:, int(spikes.peak_channel[unit])]
        threshold = -5.0 * np.median(np.abs(trace)) / 0.6745
        below = trace < threshold
        crossings = np.flatnonzero(below[1:] & ~below[:-1]) + 1
        troughs = np.array([c + np.argmin(trace[c : c + window]) for c in crossings])
        truth = every_spike[spikes.unit.values == unit]
        assert truth.size >= 5
        # every planted spike of the unit is detected on its peak channel within 0.2 ms ...
        miss = np.abs(troughs[None, :] - truth[:, None]).min(axis=1)
        assert np.mean(miss <= 0.2e-3 * FS) >= 0.95, unit
        # ... and every detection there is a planted spike (of this unit or a neighbour)
        false = np.abs(troughs[:, None] - every_spike[None, :]).min(axis=1)
        assert np.mean(false <= 0.5e-3 * FS) >= 0.95, unit


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


def test_photometry_batch_written_in_processes_is_the_same(tmp_path: Path) -> None:
    kwargs: dict[str, Any] = {"n_items": 4, "duration_s": 30.0, "fs": 50.0, "seed": 2}
    serial = write_photometry_batch(tmp_path / "serial", **kwargs)
    parallel = write_photometry_batch(tmp_path / "parallel", processes=2, **kwargs)
    assert [p.name for p in parallel] == [p.name for p in serial]
    for a, b in zip(serial, parallel, strict=True):
        assert a.read_bytes() == b.read_bytes()
        assert a.with_suffix(".json").read_text() == b.with_suffix(".json").read_text()
