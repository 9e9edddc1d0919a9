"""Synthetic ephys recordings: layout, chunking, mains hum and planted spikes.

The mains hum is checked against a Welch periodogram, the planted spikes against threshold
crossings of the scipy-high-passed trace.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal

from neurobatch.synthetic import PlantedRecording, ephys_recording

FS = 30_000.0


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
