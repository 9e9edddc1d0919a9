"""Raw multichannel extracellular recordings with spikes, LFP, mains hum and noise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import dask.array as da
import dask.base
import numpy as np
import xarray as xr
from numpy.typing import NDArray

from neurobatch.synthetic._common import (
    _EPHYS_NOISE_STREAM,
    _EPHYS_STREAM,
    _chunks,
    _validate_positive,
    _validate_positive_int,
)

__all__ = ["PlantedRecording", "ephys_recording"]

#: Samples per noise block, each from its own seed, so that any slice of the recording gives
#: the same values whatever the chunking.
_SAMPLE_BLOCK = 8192
#: Usable range of bits of the int16 samples.
_INT16 = np.iinfo(np.int16)


class PlantedRecording(NamedTuple):
    """A raw multichannel recording, and the spikes planted in it.

    Attributes
    ----------
    recording : xarray.Dataset
        DESIGN.md's ephys Recording: ``traces(time, channel)`` int16, lazy; attrs
        ``sampling_rate``, ``gain_uv``, ...
    spikes : xarray.Dataset
        The ground truth: ``spike_time(spike)`` (s, the time of the waveform's trough, on the
        recording's ``time`` clock) and ``spike_sample(spike)`` (its sample index) with
        coordinate ``unit(spike)``; per unit ``unit_ids(unit)``, ``peak_channel(unit)``,
        ``amplitude_uv(unit)`` (trough depth on the peak channel, µV) and ``rate_hz(unit)``.
        See :func:`ephys_recording`.
    """

    recording: xr.Dataset
    spikes: xr.Dataset


#: Number of sinusoids of the synthetic LFP.
_N_LFP = 24
#: Channels on either side of a unit's peak channel that its waveform reaches.
_SPREAD = 6


@dataclass(frozen=True, eq=False)
class _EphysPlan:
    """What every chunk of :func:`ephys_recording` shares (picklable, small: one graph key)."""

    seed: int
    fs: float
    n_channels: int
    gain_uv: float
    noise_uv: NDArray[np.float64]  # (channel,)
    lfp_freq: NDArray[np.float64]  # (component,)
    lfp_cos: NDArray[np.float64]  # (component, channel): amplitude x cos(channel phase)
    lfp_sin: NDArray[np.float64]  # (component, channel)
    lfp_phase: NDArray[np.float64]  # (component,)
    line_hz: float
    line_uv: NDArray[np.float64]  # (channel,)
    line_phase: float
    peak_channel: NDArray[np.int64]  # (unit,)
    templates: NDArray[np.float64]  # (unit, sample, 2 * _SPREAD + 1), µV
    pre: int  # samples of a waveform before its trough

    def reach(self, start: int, stop: int) -> tuple[int, int]:
        """The range of sample indices of the spikes whose waveform reaches ``start .. stop``."""
        return start - self.templates.shape[1] + self.pre + 1, stop + self.pre


def _ephys_samples(
    plan: _EphysPlan,
    start: int,
    stop: int,
    spike_sample: NDArray[np.int64],
    spike_unit: NDArray[np.int64],
    spike_scale: NDArray[np.float64],
) -> NDArray[np.int16]:
    """Samples ``start .. stop - 1`` of the recording of ``plan``, int16.

    ``spike_*`` are the spikes whose waveform reaches into the range (others are ignored).
    """
    n, n_channels = stop - start, plan.n_channels
    uv = np.empty((n, n_channels), dtype=np.float32)
    # white noise, in fixed blocks seeded by their index (independent of the chunking)
    for g in range(start // _SAMPLE_BLOCK, (stop - 1) // _SAMPLE_BLOCK + 1) if n else ():
        rng = np.random.default_rng([plan.seed, _EPHYS_NOISE_STREAM, g])
        noise = rng.standard_normal((_SAMPLE_BLOCK, n_channels), dtype=np.float32)
        a, b = max(start, g * _SAMPLE_BLOCK), min(stop, (g + 1) * _SAMPLE_BLOCK)
        uv[a - start : b - start] = noise[a - g * _SAMPLE_BLOCK : b - g * _SAMPLE_BLOCK]
    uv *= plan.noise_uv.astype(np.float32)
    # LFP: sinusoids with a phase and amplitude gradient along the probe
    seconds = np.arange(start, stop, dtype=np.float64) / plan.fs
    phase = 2 * np.pi * np.outer(seconds, plan.lfp_freq) + plan.lfp_phase
    # (float64: float32 products could round differently for different chunk lengths)
    lfp = np.cos(phase) @ plan.lfp_cos
    lfp -= np.sin(phase) @ plan.lfp_sin
    uv += lfp.astype(np.float32)
    # mains: the fundamental and a weaker third harmonic, common to all channels
    line = 2 * np.pi * plan.line_hz * seconds + plan.line_phase
    hum = (np.cos(line) + 0.2 * np.cos(3 * line + 1.0)).astype(np.float32)
    uv += np.outer(hum, plan.line_uv.astype(np.float32))
    # spikes
    if spike_sample.size:
        n_wave = plan.templates.shape[1]
        rows = (spike_sample - plan.pre - start)[:, None, None] + np.arange(n_wave)[None, :, None]
        cols = plan.peak_channel[spike_unit][:, None, None] + np.arange(-_SPREAD, _SPREAD + 1)
        values = (plan.templates[spike_unit] * spike_scale[:, None, None]).astype(np.float32)
        rows, cols = np.broadcast_arrays(rows, cols)
        keep = (rows >= 0) & (rows < n) & (cols >= 0) & (cols < n_channels)
        np.add.at(uv, (rows[keep], cols[keep]), values[keep])
    uv /= np.float32(plan.gain_uv)
    np.rint(uv, out=uv)
    np.clip(uv, _INT16.min, _INT16.max, out=uv)
    return uv.astype(np.int16)


def _waveform(t_ms: NDArray[np.float64], width_ms: float) -> NDArray[np.float64]:
    """An extracellular spike: a sharp trough at 0 and a slower positive rebound."""
    trough = -np.exp(-(t_ms**2) / (2 * width_ms**2))
    rebound = 0.3 * np.exp(-((t_ms - 3.5 * width_ms) ** 2) / (2 * (2.5 * width_ms) ** 2))
    return np.asarray(trough + rebound, dtype=np.float64)


def _lfp_components(
    rng: np.random.Generator, n_channels: int, lfp_uv: float
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """The LFP's frequencies and its ``(component, channel)`` cosine and sine amplitudes.

    1/f amplitudes, scaled to ``lfp_uv`` RMS on the first channel, with a phase and amplitude
    gradient along the probe.
    """
    channels = np.arange(n_channels, dtype=np.float64)
    freq = np.exp(rng.uniform(np.log(1.0), np.log(40.0), _N_LFP))
    amplitude = 1.0 / freq
    amplitude *= lfp_uv / np.sqrt(0.5 * np.sum(amplitude**2))
    gradient = rng.uniform(-0.08, 0.08, _N_LFP)  # rad per channel
    taper = 1.0 + rng.uniform(-0.3, 0.3, _N_LFP)[:, None] * channels / max(n_channels - 1, 1)
    lfp_cos = amplitude[:, None] * taper * np.cos(gradient[:, None] * channels)
    lfp_sin = amplitude[:, None] * taper * np.sin(gradient[:, None] * channels)
    return freq, lfp_cos, lfp_sin


class _Units(NamedTuple):
    """The planted units of :func:`ephys_recording`."""

    peak_channel: NDArray[np.int64]  # (unit,)
    amplitude_uv: NDArray[np.float64]  # (unit,): trough depth on the peak channel
    rate_hz: NDArray[np.float64]  # (unit,)
    templates: NDArray[np.float64]  # (unit, sample, 2 * _SPREAD + 1), µV
    pre: int  # samples of a waveform before its trough
    post: int  # samples of a waveform after its trough


def _planted_units(
    rng: np.random.Generator,
    n_units: int,
    n_channels: int,
    fs: float,
    rate_hz: tuple[float, float],
    spike_uv: tuple[float, float],
) -> _Units:
    """Units with peak channels spread along the probe and waveforms over their neighbours."""
    peak = np.sort(
        (np.arange(n_units) + rng.uniform(0.25, 0.75, n_units)) * n_channels / max(n_units, 1)
    ).astype(np.int64)
    peak = np.clip(peak, 0, n_channels - 1)
    depth_uv = rng.uniform(spike_uv[0], spike_uv[1], n_units)
    rates = rng.uniform(rate_hz[0], rate_hz[1], n_units)
    pre, post = round(0.6e-3 * fs), round(1.6e-3 * fs)
    t_ms = (np.arange(-pre, post + 1) / fs * 1e3)[:, None]
    offsets = np.arange(-_SPREAD, _SPREAD + 1, dtype=np.float64)
    templates = np.empty((n_units, t_ms.size, offsets.size))
    for u in range(n_units):
        width_ms = rng.uniform(0.08, 0.15)
        spread = rng.uniform(1.0, 2.0)
        delay_ms = 0.02 * np.abs(offsets)
        shape = _waveform(t_ms - delay_ms, width_ms) / -_waveform(np.zeros(1), width_ms)[0]
        templates[u] = depth_uv[u] * shape * np.exp(-(offsets**2) / (2 * spread**2))
    return _Units(peak, depth_uv, rates, templates, pre, post)


def _spike_trains(
    rng: np.random.Generator, units: _Units, duration_s: float, fs: float, n_samples: int
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Sample and unit of every spike, sorted: Poisson with a refractory period, whole samples.

    Spikes whose waveform would not fit in the recording are dropped.
    """
    samples: list[NDArray[np.int64]] = []
    units_of: list[NDArray[np.int64]] = []
    refractory = 2e-3
    for u, rate in enumerate(units.rate_hz):
        n_draw = int(duration_s * rate * 1.2 + 10 * np.sqrt(duration_s * rate) + 10)
        times = np.cumsum(refractory + rng.exponential(1.0 / rate, n_draw))
        sample = np.rint(times[times < duration_s] * fs).astype(np.int64)
        sample = sample[(sample >= units.pre) & (sample < n_samples - units.post)]
        samples.append(sample)
        units_of.append(np.full(sample.size, u, dtype=np.int64))
    spike_sample = np.concatenate(samples) if samples else np.zeros(0, np.int64)
    spike_unit = np.concatenate(units_of) if units_of else np.zeros(0, np.int64)
    order = np.lexsort((spike_unit, spike_sample))
    return spike_sample[order], spike_unit[order]


def _lazy_traces(
    plan: _EphysPlan,
    token: str,
    chunks: tuple[int, ...],
    spike_sample: NDArray[np.int64],
    spike_unit: NDArray[np.int64],
    spike_scale: NDArray[np.float64],
) -> Any:
    """The int16 ``(time, channel)`` dask array of ``plan``, a task per chunk of ``chunks``."""
    # The shared plan is one key of the graph; each chunk's task holds only its own spikes,
    # so a long recording's graph does not carry every spike in every task.
    name, plan_key = f"ephys-recording-{token}", f"ephys-plan-{token}"
    graph: dict[Any, Any] = {plan_key: plan}
    start = 0
    for i, size in enumerate(chunks):
        low, high = np.searchsorted(spike_sample, plan.reach(start, start + size))
        graph[(name, i, 0)] = (
            _ephys_samples,
            plan_key,
            start,
            start + size,
            spike_sample[low:high],
            spike_unit[low:high],
            spike_scale[low:high],
        )
        start += size
    return da.Array(  # type: ignore[no-untyped-call]
        graph,
        name,
        chunks=(chunks, (plan.n_channels,)),
        dtype=np.int16,
        meta=np.empty((0, 0), dtype=np.int16),
    )


def _planted_recording(
    plan: _EphysPlan,
    traces: Any,
    units: _Units,
    spike_sample: NDArray[np.int64],
    spike_unit: NDArray[np.int64],
    t0: float,
) -> PlantedRecording:
    """The Recording of ``traces`` and its ground truth, as :class:`PlantedRecording`."""
    fs, n_samples = plan.fs, int(traces.shape[0])
    recording = xr.Dataset(
        {"traces": (("time", "channel"), traces)},
        coords={
            "time": t0 + np.arange(n_samples) / fs,
            "channel": np.arange(plan.n_channels, dtype=np.int64),
        },
        attrs={
            "sampling_rate": fs,
            "gain_uv": plan.gain_uv,
            "line_noise_hz": plan.line_hz,
            "source": "neurobatch.synthetic.ephys_recording",
            "seed": plan.seed,
        },
    )
    spikes = xr.Dataset(
        {
            "spike_time": ("spike", t0 + spike_sample / fs),
            "spike_sample": ("spike", spike_sample),
            "unit_ids": ("unit", np.arange(units.rate_hz.size, dtype=np.int64)),
            "peak_channel": ("unit", units.peak_channel),
            "amplitude_uv": ("unit", units.amplitude_uv),
            "rate_hz": ("unit", units.rate_hz),
        },
        coords={"unit": ("spike", spike_unit)},
        attrs={"sampling_rate": fs},
    )
    return PlantedRecording(recording, spikes)


def ephys_recording(
    *,
    n_channels: int = 32,
    duration_s: float = 10.0,
    fs: float = 30_000.0,
    seed: int = 0,
    n_units: int | None = None,
    rate_hz: tuple[float, float] = (3.0, 15.0),
    spike_uv: tuple[float, float] = (80.0, 250.0),
    noise_uv: float = 10.0,
    lfp_uv: float = 200.0,
    line_hz: float = 60.0,
    line_uv: float = 30.0,
    gain_uv: float = 2.34375,
    t0: float = 0.0,
    chunk_s: float = 1.0,
) -> PlantedRecording:
    """Simulate a raw multichannel extracellular recording with spikes, LFP and mains hum.

    A linear probe of ``n_channels`` channels records, summed in µV and then digitised to
    int16 with ``gain_uv`` µV per bit:

    - **spikes** of ``n_units`` units, each with a peak channel (spread along the probe), a
      waveform with a sharp trough (0.08-0.15 ms wide) and a slower rebound, whose amplitude
      falls off as a Gaussian over the neighbouring channels (1-2 channels wide, reaching
      ``±6`` channels) with a small delay per channel; trough depth on the peak channel in
      ``spike_uv`` (±10 % per spike); spike trains are Poisson at a rate in ``rate_hz``
      with a 2 ms refractory period;
    - **LFP**: 24 sinusoids between 1 and 40 Hz with 1/f amplitudes, ``lfp_uv`` RMS in all,
      with a phase and amplitude gradient along the probe;
    - **mains hum** at ``line_hz`` (``line_uv`` amplitude, ±20 % per channel) and its
      third harmonic at a fifth of that;
    - **white noise** of ``noise_uv`` RMS (±20 % per channel).

    The traces are lazy: each dask chunk of ``chunk_s`` seconds is synthesised when it is
    computed (spike times are drawn up front), and the values never depend on ``chunk_s``,
    so a recording larger than memory costs nothing until it is read.

    Parameters
    ----------
    n_channels : int, default 32
        Number of channels.
    duration_s : float, default 10
        Length, seconds.
    fs : float, default 30000
        Sampling rate, Hz.
    seed : int, default 0
        Seed of every random draw.
    n_units : int, optional
        Number of units; by default one per four channels.
    rate_hz : (float, float), default (3, 15)
        Range of the units' firing rates, Hz.
    spike_uv : (float, float), default (80, 250)
        Range of the units' trough depths on their peak channel, µV.
    noise_uv, lfp_uv, line_uv : float
        RMS of the white noise, RMS of the LFP and amplitude of the mains hum, µV.
    line_hz : float, default 60
        Mains frequency, Hz (50 in Europe).
    gain_uv : float, default 2.34375
        µV per bit of the int16 samples (Neuropixels 1.0 at an AP gain of 500).
    t0 : float, default 0
        Time of the first sample, seconds.
    chunk_s : float, default 1
        Seconds per dask chunk of ``traces``.

    Returns
    -------
    PlantedRecording
        ``recording``: ``traces(time, channel)`` (int16, dask-backed), coordinates ``time``
        (``t0 + i / fs``) and ``channel`` (``0 .. n_channels - 1``); attrs
        ``sampling_rate``, ``gain_uv``, ``line_noise_hz``, ``source``, ``seed``.
        ``spikes``: the ground truth, see :class:`PlantedRecording`.

    Raises
    ------
    ValueError
        If a size is not a positive integer, a rate, amplitude or duration is not a finite
        number > 0 (>= 0 for the noise amplitudes), a range is not ``(low, high)`` with
        ``0 < low <= high``, or ``line_hz`` is not below ``fs / 2``.
    TypeError
        If a size is not an integer or an amplitude, rate or duration is not a number.

    See Also
    --------
    write_spikeglx : Write it as a SpikeGLX ``.bin`` + ``.meta`` pair.

    Examples
    --------
    >>> recording, spikes = ephys_recording(n_channels=8, duration_s=2.0, fs=10_000.0)
    >>> recording.traces.shape, recording.traces.dtype, recording.attrs["sampling_rate"]
    ((20000, 8), dtype('int16'), 10000.0)
    >>> spikes.unit_ids.values.tolist(), spikes.peak_channel.values.tolist()
    ([0, 1], [1, 6])
    """
    n_channels = _validate_positive_int(n_channels, "n_channels")
    duration_s = _validate_positive(duration_s, "duration_s")
    fs = _validate_positive(fs, "fs")
    n_units = max(1, n_channels // 4) if n_units is None else n_units
    n_units = _validate_positive_int(n_units, "n_units", minimum=0)
    noise_uv = _validate_positive(noise_uv, "noise_uv", zero=True)
    lfp_uv = _validate_positive(lfp_uv, "lfp_uv", zero=True)
    line_uv = _validate_positive(line_uv, "line_uv", zero=True)
    line_hz = _validate_positive(line_hz, "line_hz")
    gain_uv = _validate_positive(gain_uv, "gain_uv")
    chunk_s = _validate_positive(chunk_s, "chunk_s")
    if line_hz >= fs / 2:
        raise ValueError(f"line_hz must be below fs / 2 = {fs / 2} Hz, got {line_hz}.")
    for name, bounds in (("rate_hz", rate_hz), ("spike_uv", spike_uv)):
        low, high = (float(v) for v in bounds)
        if not (np.isfinite(high) and 0 < low <= high):
            raise ValueError(f"{name} must be (low, high) with 0 < low <= high, got {bounds!r}.")
    t0 = float(t0)
    n_samples = round(duration_s * fs)
    if n_samples < 1:
        raise ValueError(f"duration_s * fs must give at least one sample, got {duration_s * fs}.")

    rng = np.random.default_rng([seed, _EPHYS_STREAM])
    lfp_freq, lfp_cos, lfp_sin = _lfp_components(rng, n_channels, lfp_uv)
    units = _planted_units(rng, n_units, n_channels, fs, rate_hz, spike_uv)
    spike_sample, spike_unit = _spike_trains(rng, units, duration_s, fs, n_samples)
    plan = _EphysPlan(
        seed=int(seed),
        fs=fs,
        n_channels=n_channels,
        gain_uv=gain_uv,
        noise_uv=noise_uv * rng.uniform(0.8, 1.2, n_channels),
        lfp_freq=lfp_freq,
        lfp_cos=lfp_cos,
        lfp_sin=lfp_sin,
        lfp_phase=rng.uniform(0, 2 * np.pi, _N_LFP),
        line_hz=line_hz,
        line_uv=line_uv * rng.uniform(0.8, 1.2, n_channels),
        line_phase=float(rng.uniform(0, 2 * np.pi)),
        peak_channel=units.peak_channel,
        templates=units.templates,
        pre=units.pre,
    )
    spike_scale = rng.uniform(0.9, 1.1, spike_sample.size)
    chunks = _chunks(n_samples, max(1, round(chunk_s * fs)))
    token = dask.base.tokenize(
        seed,
        n_channels,
        n_samples,
        fs,
        n_units,
        rate_hz,
        spike_uv,
        noise_uv,
        lfp_uv,
        line_hz,
        line_uv,
        gain_uv,
        chunks,
    )
    traces = _lazy_traces(plan, token, chunks, spike_sample, spike_unit, spike_scale)
    return _planted_recording(plan, traces, units, spike_sample, spike_unit, t0)
