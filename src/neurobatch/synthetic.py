"""Realistic synthetic recordings for the demo, the tests and the benchmarks.

- :func:`photometry_recording`: two-channel fibre photometry (signal and isosbestic) with
  photobleaching, shared motion artefacts, cue-locked calcium transients and behavioural
  events, shaped as DESIGN.md's Recording.
- :func:`write_photometry_batch`: a folder of such recordings in PhoPro's CSV layout with
  JSON sidecars, including the awkward trials a real batch has.
- :func:`movie_with_spikes`: a white-noise stimulus movie and spike trains of units with
  planted spatio-temporal receptive fields, shaped as DESIGN.md's Movie (small, in memory).
- :func:`receptive_field_movie`: the same at any size, lazily (a movie larger than memory is
  drawn chunk by chunk), with centre-surround receptive fields, silent units and spikes
  outside the movie on request; the input of ``neurobatch demo --kind sta``.
- :func:`ephys_recording`: a raw multichannel extracellular recording (int16, lazy) with
  spikes spread over neighbouring channels, LFP, mains hum and noise, plus the spike times
  as ground truth; the input of ``neurobatch demo --kind filter``.
- :func:`write_spikeglx` and :func:`write_movie`: write those as a SpikeGLX ``.bin`` +
  ``.meta`` pair and as a Zarr store.

Everything is deterministic given ``seed``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import multiprocessing
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import dask.array as da
import dask.base
import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.csv
import scipy.signal
import scipy.stats
import xarray as xr
from numpy.typing import NDArray

from neurobatch.errors import InputError

__all__ = [
    "DEMO_PIPELINES",
    "EVENT_NAMES",
    "PlantedMovie",
    "PlantedRecording",
    "demo_pipeline_file",
    "ephys_recording",
    "movie_with_spikes",
    "photometry_recording",
    "receptive_field_movie",
    "write_movie",
    "write_photometry_batch",
    "write_spikeglx",
]

logger = logging.getLogger(__name__)

#: The behavioural events of :func:`photometry_recording`, in column order.
EVENT_NAMES = ("trial_cue", "lever1", "lever2", "shock")


def photometry_recording(
    *,
    duration_s: float = 600.0,
    fs: float = 1000.0,
    seed: int = 0,
    mean_iti_s: float = 20.0,
    response_dff: float = 0.08,
) -> xr.Dataset:
    """Simulate one two-channel photometry recording with behavioural events.

    The isosbestic channel carries photobleaching (two exponentials), slow drift and
    motion artefacts; the signal channel is a scaled copy of the same baseline times
    ``1 + dF/F``, where dF/F holds calcium transients (fast rise, 0.4 s decay) after each
    lever press and spontaneously, plus independent shot noise on both channels.

    Events: ``trial_cue`` every ``mean_iti_s`` seconds on average (jittered); after about
    80 % of cues a ``lever1`` or ``lever2`` press 2-4 s later; a ``shock`` after 10 % of
    cues, 5 s later.

    Parameters
    ----------
    duration_s : float, default 600
        Length of the recording in seconds.
    fs : float, default 1000
        Sampling rate in Hz.
    seed : int, default 0
        Seed of the random generator.
    mean_iti_s : float, default 20
        Mean interval between trial cues, in seconds.
    response_dff : float, default 0.08
        Peak dF/F of a lever-press transient.

    Returns
    -------
    xarray.Dataset
        ``signal(time)`` and ``isosbestic(time)`` (float64), coordinate ``time`` in
        seconds; ``event_time(event)`` with coordinate ``event_name(event)``, sorted by
        time; ``true_dff(time)`` (the planted dF/F, for checks); metadata in ``attrs``.

    Examples
    --------
    >>> rec = photometry_recording(duration_s=600.0, fs=100.0, seed=1)
    >>> rec.sizes["time"], rec.attrs["sampling_rate"]
    (60000, 100.0)
    >>> sorted(set(rec.event_name.values.tolist()))
    ['lever1', 'lever2', 'shock', 'trial_cue']
    """
    rng = np.random.default_rng(seed)
    n = round(duration_s * fs)
    t = np.arange(n) / fs

    # behaviour
    cues = np.cumsum(rng.uniform(0.5, 1.5, size=int(duration_s / mean_iti_s) + 2) * mean_iti_s)
    cues = cues[cues < duration_s - 10.0]
    pressed = rng.random(cues.size) < 0.8
    which = rng.random(cues.size) < 0.5
    press_times = cues + rng.uniform(2.0, 4.0, size=cues.size)
    shocked = rng.random(cues.size) < 0.1
    events = {
        "trial_cue": cues,
        "lever1": press_times[pressed & which],
        "lever2": press_times[pressed & ~which],
        "shock": cues[shocked] + 5.0,
    }

    # calcium transients: lever-locked plus spontaneous
    spontaneous = np.sort(rng.uniform(0, duration_s, size=int(duration_s / 15)))
    onsets = np.concatenate([press_times[pressed], spontaneous])
    amplitudes = np.concatenate(
        [
            response_dff * rng.uniform(0.7, 1.3, size=int(pressed.sum())),
            0.3 * response_dff * rng.uniform(0.5, 1.5, size=spontaneous.size),
        ]
    )
    impulses = np.zeros(n)
    np.add.at(impulses, np.minimum((onsets * fs).astype(np.int64), n - 1), amplitudes)
    kernel_t = np.arange(int(3.0 * fs)) / fs
    kernel = (1 - np.exp(-kernel_t / 0.05)) * np.exp(-kernel_t / 0.4)
    kernel /= kernel.max()
    true_dff = scipy.signal.oaconvolve(impulses, kernel)[:n]

    # shared baseline: bleaching, drift, motion artefacts
    bleach = 1.0 + 0.25 * np.exp(-t / (0.4 * max(duration_s, 60.0))) + 0.08 * np.exp(-t / 30.0)
    drift = 0.01 * np.sin(2 * np.pi * t / max(duration_s, 1.0) + rng.uniform(0, 2 * np.pi))
    motion = np.zeros(n)
    for start in rng.uniform(0, duration_s, size=max(1, int(duration_s / 120))):
        i0 = int(start * fs)
        width = int(rng.uniform(0.2, 1.0) * fs)
        motion[i0 : i0 + width] -= rng.uniform(0.02, 0.06) * np.hanning(
            len(motion[i0 : i0 + width])
        )
    baseline = bleach + drift + motion

    isosbestic = 0.9 * baseline + 0.003 * rng.standard_normal(n)
    signal = 1.6 * baseline * (1 + true_dff) + 0.1 + 0.004 * rng.standard_normal(n)

    names = np.concatenate([np.full(v.size, k) for k, v in events.items()])
    times = np.concatenate(list(events.values()))
    order = np.argsort(times, kind="stable")
    return xr.Dataset(
        {
            "signal": ("time", signal),
            "isosbestic": ("time", isosbestic),
            "true_dff": ("time", true_dff),
            "event_time": ("event", times[order]),
        },
        coords={"time": t, "event_name": ("event", names[order].astype(str))},
        attrs={
            "sampling_rate": float(fs),
            "subject": f"mouse-{seed:03d}",
            "sex": "F" if seed % 2 else "M",
            "age": 60 + seed % 30,
            "session": f"session-{seed:03d}",
            "source": "neurobatch.synthetic.photometry_recording",
        },
    )


def write_photometry_batch(
    folder: str | Path,
    *,
    n_items: int = 8,
    duration_s: float = 600.0,
    fs: float = 1000.0,
    seed: int = 0,
    awkward: bool = True,
    processes: int = 1,
) -> list[Path]:
    """Write a batch of synthetic recordings in PhoPro's CSV layout, with JSON sidecars.

    Each ``experiment_NNN.csv`` holds a leading unnamed index column, ``time``, ``signal``,
    ``isosbestic`` and one 0/1 flag column per event of :data:`EVENT_NAMES` (the flag is 1 on
    the sample nearest each event); ``experiment_NNN.json`` beside it holds the subject,
    sex, age and session. Recording ``k`` is :func:`photometry_recording` with seed
    ``seed + k``.

    With ``awkward``, the batch holds what real batches hold: in the first recording a
    trial with both levers pressed (``lever2`` 0.5 s after a ``lever1`` press) and a cue 3 s
    before the end (its window runs past the recording); every third sidecar also has a
    ``notes`` entry that the others lack.

    Parameters
    ----------
    folder : str or pathlib.Path
        Where to write; created if missing.
    n_items : int, default 8
        Number of recordings.
    duration_s : float, default 600
        Length of each recording, seconds.
    fs : float, default 1000
        Sampling rate, Hz.
    seed : int, default 0
        Seed of the first recording.
    awkward : bool, default True
        Plant the awkward trials and the uneven sidecars described above.
    processes : int, default 1
        Write the recordings in this many processes at once (the files are the same).

    Returns
    -------
    list of pathlib.Path
        The CSV files, sorted.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     paths = write_photometry_batch(tmp, n_items=2, duration_s=60.0, fs=50.0)
    ...     header = paths[0].read_text().splitlines()[0]
    ...     sidecar = json.loads(paths[0].with_suffix(".json").read_text())
    >>> [p.name for p in paths]
    ['experiment_001.csv', 'experiment_002.csv']
    >>> header
    '"","time","signal","isosbestic","trial_cue","lever1","lever2","shock"'
    >>> sorted(sidecar)
    ['age', 'notes', 'session', 'sex', 'subject']
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write = functools.partial(
        _write_photometry_item, folder, duration_s=duration_s, fs=fs, seed=seed, awkward=awkward
    )
    if processes <= 1:
        return [write(k) for k in range(n_items)]
    spawn = multiprocessing.get_context("spawn")  # no fork of a process that may hold threads
    with ProcessPoolExecutor(min(processes, n_items), mp_context=spawn) as pool:
        return list(pool.map(write, range(n_items)))


def _write_photometry_item(
    folder: Path, k: int, *, duration_s: float, fs: float, seed: int, awkward: bool
) -> Path:
    """Write recording ``k`` of :func:`write_photometry_batch` and its sidecar."""
    rec = photometry_recording(duration_s=duration_s, fs=fs, seed=seed + k)
    time = rec["time"].to_numpy()
    events = {
        name: rec["event_time"].to_numpy()[rec["event_name"].to_numpy() == name]
        for name in EVENT_NAMES
    }
    if awkward and k == 0:
        if events["lever1"].size:
            events["lever2"] = np.sort(np.append(events["lever2"], events["lever1"][0] + 0.5))
        events["trial_cue"] = np.append(events["trial_cue"], time[-1] - 3.0)
    columns: dict[str, pa.Array] = {
        "": pa.array(np.arange(time.size)),
        "time": pa.array(time),
        "signal": pa.array(rec["signal"].to_numpy()),
        "isosbestic": pa.array(rec["isosbestic"].to_numpy()),
    }
    for name, times in events.items():
        flags = np.zeros(time.size, dtype=np.int8)
        flags[np.clip(np.rint((times - time[0]) * fs).astype(np.int64), 0, time.size - 1)] = 1
        columns[name] = pa.array(flags)
    path = folder / f"experiment_{k + 1:03d}.csv"
    pyarrow.csv.write_csv(pa.table(columns), path)
    sidecar = {key: rec.attrs[key] for key in ("subject", "sex", "age", "session")}
    if awkward and k % 3 == 0:
        sidecar["notes"] = f"fibre re-seated before session {k + 1}"
    path.with_suffix(".json").write_text(json.dumps(sidecar, indent=2) + "\n")
    return path


DEMO_PIPELINE = """\
# The pipeline of `neurobatch demo`: PhoPro's defaults for a lever task.
name: neurobatch-demo
input:
  url: data                      # relative to this file; any fsspec URL works (s3://...)
  pattern: "experiment_*.csv"
loader:
  format: photometry-csv
  time_col: time
  signal_col: signal
  isosbestic_col: isosbestic
  event_cols: [trial_cue, lever1, lever2, shock]
  annotation: "{stem}.json"      # sidecar metadata beside each CSV
preprocess:
  filter: {cutoff_hz: 3.0, order: 4}
  fit: {method: irls}            # robust Tukey biweight, as PhoPro's default
  correction: dff
  normalization: none
trials:
  align_to: trial_cue
  center_on: [lever1, lever2]
  bounds_s: [-8, 8]
  tolerances_s: {lever1: [2, 4], lever2: [2, 4], shock: null}
  normalization: none
  window_alignment: nearest
passdown_metadata: [source, subject, sex, age, session]
output:
  url: output
  formats: [zarr, parquet, h5ad]
  dashboards: png
cluster: {kind: local, n_workers: 2, threads_per_worker: 1, memory_limit: 2GiB}
"""


DEMO_FILTER_PIPELINE = """\
# The pipeline of `neurobatch demo --kind filter`: spike-band filtering of raw recordings.
name: neurobatch-demo-filter
kind: filter
input:
  url: data                      # relative to this file; any fsspec URL works (s3://...)
  pattern: "*.bin"
loader:
  format: spikeglx               # the .meta beside each .bin gives channels, rate and gain
filter:
  type: bandpass
  cutoff_hz: [300, 6000]
  order: 3
  common_reference: median       # removes what all channels share (line noise, artefacts)
  dtype: float32
output:
  url: output
  dashboards: png                # raw versus filtered traces
engine:
  chunk_memory: 16777216         # 16 MiB of samples per task
"""

DEMO_STA_PIPELINE = """\
# The pipeline of `neurobatch demo --kind sta`: receptive fields from a white-noise movie.
name: neurobatch-demo-sta
kind: sta
input:
  url: data                      # relative to this file; any fsspec URL works (s3://...)
  pattern: "*.zarr"
  target: folder                 # a Zarr store is a folder
loader:
  format: zarr                   # frames(frame, y, x), spike_time(spike), unit(spike)
sta:
  n_lags: 8                      # frames before each spike's frame
  delay_frames: 5                # the collapsed STRF: the mean of frames N-4 .. N
output:
  url: output
  dashboards: png                # per-unit STA images per lag and the STRFs
"""

#: Each demo's pipeline file.
DEMO_PIPELINES = {
    "photometry": DEMO_PIPELINE,
    "filter": DEMO_FILTER_PIPELINE,
    "sta": DEMO_STA_PIPELINE,
}


def demo_pipeline_file(folder: str | Path, kind: str = "photometry") -> Path:
    """Write a demo's pipeline file (``pipeline.yaml``) for the inputs in ``folder/data``.

    Parameters
    ----------
    folder : str or pathlib.Path
        The demo folder: its inputs are in its ``data`` folder (:func:`write_photometry_batch`,
        :func:`write_spikeglx` or :func:`write_movie`); the outputs go to ``output``.
    kind : {"photometry", "filter", "sta"}, default "photometry"
        Which pipeline.

    Returns
    -------
    pathlib.Path
        The pipeline file.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     demo_pipeline_file(tmp, "sta").read_text().splitlines()[1]
    'name: neurobatch-demo-sta'
    """
    path = Path(folder) / "pipeline.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(DEMO_PIPELINES[kind])
    return path


def movie_with_spikes(
    *,
    n_frames: int = 20_000,
    height: int = 16,
    width: int = 16,
    n_units: int = 20,
    n_lags: int = 8,
    fps: float = 60.0,
    onset_s: float = 1.0,
    mean_rate_hz: float = 5.0,
    seed: int = 0,
) -> xr.Dataset:
    """Simulate a white-noise movie and units with planted receptive fields.

    Each unit has a Gaussian spatial receptive field at a random position, with a
    biphasic temporal profile over ``n_lags`` frames; its firing rate is a rectified
    linear response to the movie, scaled to ``mean_rate_hz``, and spikes are Poisson,
    placed uniformly within their frame.

    Parameters
    ----------
    n_frames, height, width : int
        Movie size.
    n_units : int
        Number of units.
    n_lags : int
        Length of the planted receptive fields in frames.
    fps : float
        Frame rate in Hz.
    onset_s : float
        Time of the first frame, in seconds.
    mean_rate_hz : float
        Mean firing rate of each unit.
    seed : int
        Seed of the random generator.

    Returns
    -------
    xarray.Dataset
        ``frames(frame, y, x)`` (float32, zero mean, unit variance) with coordinate
        ``frame_time``; ``spike_time(spike)`` with coordinate ``unit(spike)``;
        ``receptive_field(unit_id, lag, y, x)`` the planted filters; ``fps`` and
        ``stimulus_onset`` in ``attrs``.

    Examples
    --------
    >>> ds = movie_with_spikes(n_frames=600, height=8, width=8, n_units=3, seed=2)
    >>> ds.frames.shape, ds.receptive_field.shape
    ((600, 8, 8), (3, 8, 8, 8))
    """
    rng = np.random.default_rng(seed)
    frames = rng.standard_normal((n_frames, height, width)).astype(np.float32)
    yy, xx = np.mgrid[0:height, 0:width]
    lags = np.arange(n_lags)
    temporal = np.sin(np.pi * (lags + 1) / (n_lags + 1)) * np.exp(-lags / max(n_lags / 3, 1))
    temporal -= 0.3 * np.sin(np.pi * lags / max(n_lags - 1, 1)) ** 2
    fields = np.empty((n_units, n_lags, height, width))
    spike_times: list[np.ndarray] = []
    units: list[np.ndarray] = []
    flat = frames.reshape(n_frames, -1).astype(np.float64)
    for u in range(n_units):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        sigma = rng.uniform(0.8, 2.0)
        spatial = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
        fields[u] = temporal[:, None, None] * spatial
        drive = np.zeros(n_frames)
        projection = flat @ spatial.ravel()
        for lag in range(n_lags):
            drive[lag:] += temporal[lag] * projection[: n_frames - lag]
        rate = np.maximum(drive, 0)
        rate *= mean_rate_hz / max(rate.mean(), 1e-12) / fps
        counts = rng.poisson(rate)
        frame_of_spike = np.repeat(np.arange(n_frames), counts)
        times = onset_s + (frame_of_spike + rng.uniform(0, 1, frame_of_spike.size)) / fps
        spike_times.append(times)
        units.append(np.full(times.size, u))
    all_times = np.concatenate(spike_times)
    all_units = np.concatenate(units)
    order = np.argsort(all_times, kind="stable")
    return xr.Dataset(
        {
            "frames": (("frame", "y", "x"), frames),
            "spike_time": ("spike", all_times[order]),
            "receptive_field": (("unit_id", "lag", "y", "x"), fields),
        },
        coords={
            "frame_time": ("frame", onset_s + np.arange(n_frames) / fps),
            "unit": ("spike", all_units[order]),
            "unit_id": np.arange(n_units),
        },
        attrs={"fps": float(fps), "stimulus_onset": float(onset_s)},
    )


# --------------------------------------------------------------------------------------------
# stimulus movies with planted receptive fields (the `sta` demo)
# --------------------------------------------------------------------------------------------

#: Frames of the white-noise movie are drawn in blocks of this many frames, each from its own
#: seed, so that any slice of the movie gives the same values whatever the chunking.
_FRAME_BLOCK = 1024
#: Samples per noise block of :func:`ephys_recording`, for the same reason.
_SAMPLE_BLOCK = 8192
#: Streams of the random generators (the second entry of each seed sequence).
_MOVIE_STREAM, _SPIKE_STREAM, _EPHYS_NOISE_STREAM, _EPHYS_STREAM = 1, 2, 3, 4
#: Usable range of bits of the int16 samples.
_INT16 = np.iinfo(np.int16)


class PlantedMovie(NamedTuple):
    """A stimulus movie with spikes, and the receptive fields planted in its units.

    Attributes
    ----------
    movie : xarray.Dataset
        DESIGN.md's Movie: ``frames(frame, y, x)``, ``spike_time(spike)`` with coordinate
        ``unit(spike)``, ``unit_ids(unit)``; attrs ``fps``, ``stimulus_onset``, ...
    receptive_fields : xarray.DataArray
        ``receptive_field(unit, lag, y, x)``: the planted spatio-temporal filters (lag ``k``
        is ``k`` frames before the spike's frame), each scaled to a peak ``|value|`` of 1.
    """

    movie: xr.Dataset
    receptive_fields: xr.DataArray


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


def _validate_positive_int(value: int, name: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def _validate_positive(value: float, name: str, *, zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"{name} must be a number, got {value!r}.")
    number = float(value)
    if not np.isfinite(number) or number < 0 or (number == 0 and not zero):
        bound = ">= 0" if zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}.")
    return number


def _white_noise_frames(
    seed: int, start: int, stop: int, height: int, width: int
) -> NDArray[np.float32]:
    """Frames ``start .. stop - 1`` of the white-noise movie of ``seed`` (N(0, 1), float32).

    Frames are drawn in blocks of :data:`_FRAME_BLOCK`, block ``g`` from the seed sequence
    ``(seed, _MOVIE_STREAM, g)``, so a slice never depends on how the movie is chunked.
    """
    out = np.empty((stop - start, height, width), dtype=np.float32)
    if stop <= start:
        return out
    for g in range(start // _FRAME_BLOCK, (stop - 1) // _FRAME_BLOCK + 1):
        rng = np.random.default_rng([seed, _MOVIE_STREAM, g])
        block = rng.standard_normal((_FRAME_BLOCK, height, width), dtype=np.float32)
        a, b = max(start, g * _FRAME_BLOCK), min(stop, (g + 1) * _FRAME_BLOCK)
        out[a - start : b - start] = block[a - g * _FRAME_BLOCK : b - g * _FRAME_BLOCK]
    return out


def _frames_chunk(
    block_info: dict[Any, Any] | None = None, *, seed: int, height: int, width: int
) -> NDArray[np.float32]:
    """One dask chunk of the white-noise movie, located by ``block_info``."""
    if block_info is None:  # dask's meta probe
        return np.empty((0, height, width), dtype=np.float32)
    start, stop = block_info[None]["array-location"][0]
    return _white_noise_frames(seed, int(start), int(stop), height, width)


def _chunks(n: int, size: int) -> tuple[int, ...]:
    """``n`` split into chunks of ``size`` (the last one shorter); ``(0,)`` for ``n == 0``."""
    if n == 0:
        return (0,)
    full, rest = divmod(n, size)
    return (size,) * full + ((rest,) if rest else ())


def _temporal_profile(lags: NDArray[np.float64], peak: float) -> NDArray[np.float64]:
    """A biphasic temporal filter over ``lags`` (frames): a lobe at ``peak``, an opposite
    one at ``2 * peak`` with half its area, zero at lag 0; scaled to a peak ``|value|`` of 1."""

    def lobe(p: float) -> NDArray[np.float64]:
        x = lags / p
        return np.asarray(x**3 * np.exp(3.0 * (1.0 - x)), dtype=np.float64)

    profile = lobe(peak) - 0.25 * lobe(2.0 * peak)
    return np.asarray(profile / np.abs(profile).max(), dtype=np.float64)


def receptive_field_movie(
    *,
    n_frames: int = 54_000,
    height: int = 16,
    width: int = 16,
    n_units: int = 16,
    fps: float = 60.0,
    n_lags: int = 8,
    seed: int = 0,
    onset_s: float = 1.0,
    mean_rate_hz: float = 30.0,
    threshold: float = 0.0,
    n_silent: int = 0,
    outside_s: float = 0.0,
    pixel_size: float = 50.0,
    chunk_frames: int = 4096,
) -> PlantedMovie:
    """Simulate a white-noise stimulus movie and units with planted receptive fields.

    The movie is Gaussian white noise (zero mean, unit variance per pixel, float32), shown
    at ``fps`` from ``onset_s`` on, and is lazy: each dask chunk of ``chunk_frames`` frames
    is drawn when it is computed, from seeds that depend on ``seed`` and the frame index
    only (so the values never depend on ``chunk_frames``), and a movie larger than memory
    costs nothing until it is read.

    Each unit has a centre-surround receptive field: a difference of Gaussians (surround
    twice as wide as the centre, with 60 % of its integral) at a random place, ON or OFF at
    random, times a biphasic temporal profile over ``n_lags`` frames (zero at lag 0, a lobe
    around lag ``n_lags / 4`` and an opposite one, with half its area, around
    ``n_lags / 2``), with lag
    ``k`` acting on the frame ``k`` frames before the current one. Its drive in frame ``N``
    is the receptive field applied to frames ``N - n_lags + 1 .. N`` (grey, i.e. zero,
    before the movie), standardised; its expected spike count in frame ``N`` is a rectified
    linear function of it, ``c * max(drive - threshold, 0)``, with ``c`` set so that the
    unit's mean rate is its rate (``mean_rate_hz`` times a factor in [0.5, 1.5]). Counts are
    Poisson, and each spike lies at a uniform place inside its frame (away from the frame's
    edges). For such a unit the expected spike-triggered average is proportional to the
    receptive field. The STA's noise falls with both the number of spikes and the number of
    frames: with ``d = n_lags * height * width``, its correlation with the planted field is
    about 0.9 for ``n_frames = 10 * d`` and 0.95 for ``n_frames = 25 * d`` at a spike or
    more per frame (the defaults, 15 minutes at 60 Hz, give 0.9-0.95).

    Parameters
    ----------
    n_frames, height, width : int, default 54000, 16, 16
        Size of the movie (frames, pixels).
    n_units : int, default 16
        Number of units, including the silent ones.
    fps : float, default 60
        Frame rate, Hz.
    n_lags : int, default 8
        Length of the receptive fields, frames.
    seed : int, default 0
        Seed of every random draw.
    onset_s : float, default 1
        Time at which frame 0 starts, seconds.
    mean_rate_hz : float, default 30
        Mean firing rate of the units during the movie, Hz.
    threshold : float, default 0
        Threshold of the rectification, in standard deviations of the drive; larger values
        give sparser, more stimulus-locked spikes.
    n_silent : int, default 0
        How many units (the last ones) never spike; they are listed in ``unit_ids`` so
        their (NaN) STA is still reported.
    outside_s : float, default 0
        Also give the spiking units spontaneous spikes (at their rate) in the ``outside_s``
        seconds before the movie and after its end, as a real recording has; an STA must
        exclude them.
    pixel_size : float, default 50
        Size of a stimulus pixel (µm on the retina), stored in ``attrs``.
    chunk_frames : int, default 4096
        Frames per dask chunk of ``frames``.

    Returns
    -------
    PlantedMovie
        ``movie``: ``frames(frame, y, x)`` (float32, dask-backed) with coordinate
        ``frame_time(frame) = onset_s + frame / fps``; ``spike_time(spike)`` (float64 s,
        sorted) with coordinate ``unit(spike)`` (int); ``unit_ids(unit)`` (``0 ..
        n_units - 1``); attrs ``fps``, ``stimulus_onset``, ``pixel_size``, ``source``.
        ``receptive_fields``: ``receptive_field(unit, lag, y, x)`` (float64), coordinates
        ``unit``, ``lag`` and ``lag_time`` (``lag / fps``, s).

    Raises
    ------
    ValueError
        If a size is not a positive integer, ``n_lags > n_frames``, ``n_silent`` is not in
        ``[0, n_units]``, or a rate, duration or ``fps`` is not a finite positive number.
    TypeError
        If a size is not an integer or a rate, duration or ``fps`` is not a number.

    See Also
    --------
    write_movie : Write the movie as a Zarr store.
    neurobatch.kernels.sta.spike_triggered_average : Recover the receptive fields.

    Examples
    --------
    >>> planted = receptive_field_movie(n_frames=600, height=8, width=8, n_units=3,
    ...                                 n_lags=5, n_silent=1, seed=2)
    >>> movie, fields = planted
    >>> movie.frames.shape, movie.frames.dtype, fields.dims
    ((600, 8, 8), dtype('float32'), ('unit', 'lag', 'y', 'x'))
    >>> movie.unit_ids.values.tolist(), sorted(set(movie.unit.values.tolist()))
    ([0, 1, 2], [0, 1])
    >>> movie.attrs["fps"], movie.attrs["stimulus_onset"]
    (60.0, 1.0)
    """
    n_frames = _validate_positive_int(n_frames, "n_frames")
    height = _validate_positive_int(height, "height")
    width = _validate_positive_int(width, "width")
    n_units = _validate_positive_int(n_units, "n_units")
    n_lags = _validate_positive_int(n_lags, "n_lags")
    if n_lags > n_frames:
        raise ValueError(f"n_lags must be <= n_frames={n_frames}, got {n_lags}.")
    n_silent = _validate_positive_int(n_silent, "n_silent", minimum=0)
    if n_silent > n_units:
        raise ValueError(f"n_silent must be in [0, n_units={n_units}], got {n_silent}.")
    chunk_frames = _validate_positive_int(chunk_frames, "chunk_frames")
    fps = _validate_positive(fps, "fps")
    mean_rate_hz = _validate_positive(mean_rate_hz, "mean_rate_hz")
    outside_s = _validate_positive(outside_s, "outside_s", zero=True)
    pixel_size = _validate_positive(pixel_size, "pixel_size")
    onset_s = float(onset_s)
    threshold = float(threshold)
    if not (np.isfinite(onset_s) and np.isfinite(threshold)):
        raise ValueError(
            f"onset_s and threshold must be finite, got onset_s={onset_s}, threshold={threshold}."
        )

    rng = np.random.default_rng([seed, _SPIKE_STREAM])
    # receptive fields: difference of Gaussians x biphasic temporal profile
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    lags = np.arange(n_lags, dtype=np.float64)
    scale = min(height, width)
    spatial = np.empty((n_units, height * width))
    temporal = np.empty((n_units, n_lags))
    for u in range(n_units):
        cy = rng.uniform(0.2, 0.8) * (height - 1)
        cx = rng.uniform(0.2, 0.8) * (width - 1)
        sigma = max(0.7, rng.uniform(0.04, 0.08) * scale)
        r2 = (yy - cy) ** 2 + (xx - cx) ** 2
        dog = np.exp(-r2 / (2 * sigma**2)) - 0.15 * np.exp(-r2 / (8 * sigma**2))
        polarity = 1.0 if rng.random() < 0.5 else -1.0
        spatial[u] = polarity * (dog / np.abs(dog).max()).ravel()
        temporal[u] = _temporal_profile(lags, peak=max(1.0, rng.uniform(0.2, 0.3) * n_lags))
    rates = mean_rate_hz * rng.uniform(0.5, 1.5, size=n_units)
    rates[n_units - n_silent :] = 0.0
    # standard deviation of the drive under unit-variance white noise
    sigma_drive = np.linalg.norm(spatial, axis=1) * np.linalg.norm(temporal, axis=1)
    expected = float(scipy.stats.norm.pdf(threshold) - threshold * scipy.stats.norm.sf(threshold))
    per_frame = rates / fps / max(expected, 1e-300)

    # one pass over the movie, block by block: drive -> Poisson counts
    frames_of: list[NDArray[np.int64]] = []
    units_of: list[NDArray[np.int64]] = []
    history = np.zeros((n_lags - 1, n_units))
    step = 4 * _FRAME_BLOCK
    for a in range(0, n_frames, step):
        b = min(n_frames, a + step)
        block = _white_noise_frames(seed, a, b, height, width).reshape(b - a, -1)
        projection = block.astype(np.float64) @ spatial.T
        extended = np.concatenate([history, projection])
        drive = np.zeros((b - a, n_units))
        for k in range(n_lags):
            drive += temporal[:, k] * extended[n_lags - 1 - k : n_lags - 1 - k + b - a]
        history = extended[extended.shape[0] - (n_lags - 1) :]
        counts = rng.poisson(per_frame * np.maximum(drive / sigma_drive - threshold, 0.0))
        frame_index, unit_index = np.nonzero(counts)
        repeats = counts[frame_index, unit_index]
        frames_of.append(np.repeat(frame_index + a, repeats).astype(np.int64))
        units_of.append(np.repeat(unit_index, repeats).astype(np.int64))
    spike_frames = np.concatenate(frames_of)
    spike_units = np.concatenate(units_of)
    spike_times = onset_s + (spike_frames + rng.uniform(0.05, 0.95, spike_frames.size)) / fps

    # spontaneous spikes before and after the movie
    if outside_s > 0:
        extra_times: list[NDArray[np.float64]] = [spike_times]
        extra_units: list[NDArray[np.int64]] = [spike_units]
        end_s = onset_s + n_frames / fps
        for start in (onset_s - outside_s, end_s):
            counts_out = rng.poisson(rates * outside_s)
            extra_units.append(np.repeat(np.arange(n_units), counts_out))
            # the half-open interval [start, start + outside_s), off the frame boundaries
            extra_times.append(start + outside_s * rng.uniform(0.0, 1.0, int(counts_out.sum())))
        spike_times = np.concatenate(extra_times)
        spike_units = np.concatenate(extra_units)
        after = spike_times >= end_s  # keep them clear of the last frame's rounding
        spike_times[after] = np.maximum(spike_times[after], end_s + 0.05 / fps)
    order = np.lexsort((spike_units, spike_times))

    frames = da.map_blocks(  # type: ignore[no-untyped-call]
        functools.partial(_frames_chunk, seed=seed, height=height, width=width),
        chunks=(_chunks(n_frames, chunk_frames), (height,), (width,)),
        dtype=np.float32,
        meta=np.empty((0, 0, 0), dtype=np.float32),
        name=f"receptive-field-movie-{seed}-{n_frames}x{height}x{width}-{chunk_frames}",
    )
    unit_ids = np.arange(n_units, dtype=np.int64)
    movie = xr.Dataset(
        {
            "frames": (("frame", "y", "x"), frames),
            "spike_time": ("spike", spike_times[order]),
            "unit_ids": ("unit", unit_ids),
        },
        coords={
            "frame_time": ("frame", onset_s + np.arange(n_frames) / fps),
            "unit": ("spike", spike_units[order]),
        },
        attrs={
            "fps": fps,
            "stimulus_onset": onset_s,
            "pixel_size": pixel_size,
            "source": "neurobatch.synthetic.receptive_field_movie",
            "seed": int(seed),
        },
    )
    fields = np.einsum("uk,up->ukp", temporal, spatial).reshape(n_units, n_lags, height, width)
    receptive_fields = xr.DataArray(
        fields,
        dims=("unit", "lag", "y", "x"),
        coords={"unit": unit_ids, "lag": np.arange(n_lags), "lag_time": ("lag", lags / fps)},
        name="receptive_field",
        attrs={"fps": fps},
    )
    return PlantedMovie(movie, receptive_fields)


# --------------------------------------------------------------------------------------------
# multichannel extracellular recordings (the `filter` demo)
# --------------------------------------------------------------------------------------------

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
    channels = np.arange(n_channels, dtype=np.float64)
    # LFP: 1/f amplitudes, scaled to lfp_uv RMS on the first channel
    freq = np.exp(rng.uniform(np.log(1.0), np.log(40.0), _N_LFP))
    amplitude = 1.0 / freq
    amplitude *= lfp_uv / np.sqrt(0.5 * np.sum(amplitude**2))
    gradient = rng.uniform(-0.08, 0.08, _N_LFP)  # rad per channel
    taper = 1.0 + rng.uniform(-0.3, 0.3, _N_LFP)[:, None] * channels / max(n_channels - 1, 1)
    lfp_cos = amplitude[:, None] * taper * np.cos(gradient[:, None] * channels)
    lfp_sin = amplitude[:, None] * taper * np.sin(gradient[:, None] * channels)
    # units: peak channels spread along the probe, waveforms over their neighbours
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
    # spike trains: Poisson with a refractory period, at whole samples
    samples: list[NDArray[np.int64]] = []
    units: list[NDArray[np.int64]] = []
    refractory = 2e-3
    for u in range(n_units):
        n_draw = int(duration_s * rates[u] * 1.2 + 10 * np.sqrt(duration_s * rates[u]) + 10)
        times = np.cumsum(refractory + rng.exponential(1.0 / rates[u], n_draw))
        sample = np.rint(times[times < duration_s] * fs).astype(np.int64)
        sample = sample[(sample >= pre) & (sample < n_samples - post)]
        samples.append(sample)
        units.append(np.full(sample.size, u, dtype=np.int64))
    spike_sample = np.concatenate(samples) if samples else np.zeros(0, np.int64)
    spike_unit = np.concatenate(units) if units else np.zeros(0, np.int64)
    order = np.lexsort((spike_unit, spike_sample))
    spike_sample, spike_unit = spike_sample[order], spike_unit[order]
    plan = _EphysPlan(
        seed=int(seed),
        fs=fs,
        n_channels=n_channels,
        gain_uv=gain_uv,
        noise_uv=noise_uv * rng.uniform(0.8, 1.2, n_channels),
        lfp_freq=freq,
        lfp_cos=lfp_cos,
        lfp_sin=lfp_sin,
        lfp_phase=rng.uniform(0, 2 * np.pi, _N_LFP),
        line_hz=line_hz,
        line_uv=line_uv * rng.uniform(0.8, 1.2, n_channels),
        line_phase=float(rng.uniform(0, 2 * np.pi)),
        peak_channel=peak,
        templates=templates,
        pre=pre,
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
    traces = da.Array(  # type: ignore[no-untyped-call]
        graph,
        name,
        chunks=(chunks, (n_channels,)),
        dtype=np.int16,
        meta=np.empty((0, 0), dtype=np.int16),
    )
    recording = xr.Dataset(
        {"traces": (("time", "channel"), traces)},
        coords={
            "time": t0 + np.arange(n_samples) / fs,
            "channel": np.arange(n_channels, dtype=np.int64),
        },
        attrs={
            "sampling_rate": fs,
            "gain_uv": gain_uv,
            "line_noise_hz": line_hz,
            "source": "neurobatch.synthetic.ephys_recording",
            "seed": int(seed),
        },
    )
    spikes = xr.Dataset(
        {
            "spike_time": ("spike", t0 + spike_sample / fs),
            "spike_sample": ("spike", spike_sample),
            "unit_ids": ("unit", np.arange(n_units, dtype=np.int64)),
            "peak_channel": ("unit", peak),
            "amplitude_uv": ("unit", depth_uv),
            "rate_hz": ("unit", rates),
        },
        coords={"unit": ("spike", spike_unit)},
        attrs={"sampling_rate": fs},
    )
    return PlantedRecording(recording, spikes)


# --------------------------------------------------------------------------------------------
# writers: the files the demos run on
# --------------------------------------------------------------------------------------------

#: SpikeGLX's Neuropixels 1.0 conventions, by which ``gain_uv`` is written: the ADC's
#: largest integer and the AP gain; ``imAiRangeMax`` is derived from them.
_SPIKEGLX_MAX_INT = 512
_SPIKEGLX_AP_GAIN = 500
_SPIKEGLX_LF_GAIN = 250
#: Bytes of samples per write, so that a lazy recording is written block by block.
_WRITE_BYTES = 64 * 2**20


def _require(ds: xr.Dataset, name: str, dims: tuple[str, ...], where: str) -> xr.DataArray:
    if name not in ds.data_vars:
        raise InputError(
            f"{where}: the dataset has no variable {name!r} (it has "
            f"{sorted(map(str, ds.data_vars))}); expected {name}{dims}."
        )
    variable = ds[name]
    if variable.dims != dims:
        raise InputError(f"{where}: {name} has dimensions {variable.dims}; expected {name}{dims}.")
    return variable


def _meta_path(path: str) -> str:
    stem, _, query = path.partition("?")
    return stem[: -len(".bin")] + ".meta" + (f"?{query}" if query else "")


def write_spikeglx(
    ds: xr.Dataset,
    path: str,
    *,
    storage_options: Mapping[str, Any] | None = None,
    create_time: str = "2025-01-01T00:00:00",
) -> tuple[str, str]:
    """Write a recording as a SpikeGLX pair: interleaved int16 ``.bin`` and its ``.meta``.

    The ``.bin`` holds the samples of ``traces(time, channel)`` as little-endian int16,
    interleaved (sample 0 of every channel, then sample 1, ...), with no header; it is
    written block by block, so a lazy recording is never loaded whole. The ``.meta`` beside
    it (same stem) is SpikeGLX's ``key=value`` text for an imec probe with ``nSavedChans``
    AP channels and no sync channel: ``imSampRate``, ``nSavedChans``, ``fileSizeBytes``,
    ``fileTimeSecs``, ``fileSHA1``, ``firstSample``, ``imAiRangeMax``/``imAiRangeMin``,
    ``imMaxInt``, ``snsApLfSy``, ``~imroTbl`` and the channel and shank maps. The scale
    follows SpikeGLX's Neuropixels 1.0 rule, µV per bit = ``imAiRangeMax / imMaxInt /
    APgain * 1e6`` with ``imMaxInt = 512`` and an AP gain of 500 in the imro table, so
    ``imAiRangeMax`` is derived from ``ds.attrs["gain_uv"]`` (0.6 V for the default
    2.34375 µV).

    Parameters
    ----------
    ds : xarray.Dataset
        An ephys Recording: ``traces(time, channel)`` of dtype int16, attrs
        ``sampling_rate`` and ``gain_uv`` (default 2.34375 when missing); ``time[0]`` gives
        ``firstSample``.
    path : str
        Where to write the ``.bin``, a local path or fsspec URL ending in ``.bin`` (e.g.
        ``run_g0_t0.imec0.ap.bin``); the ``.meta`` goes beside it. Missing parent folders are
        created.
    storage_options : mapping, optional
        Options for the fsspec filesystem.
    create_time : str, default "2025-01-01T00:00:00"
        The ``fileCreateTime`` written to the ``.meta`` (fixed, so the output is
        reproducible).

    Returns
    -------
    (str, str)
        The paths of the ``.bin`` (``path``) and of the ``.meta``, as URLs like ``path``.

    Raises
    ------
    ValueError
        If ``path`` does not end in ``.bin``.
    InputError
        If ``ds`` lacks ``traces(time, channel)``, its dtype is not int16, or its
        ``sampling_rate`` is missing or not > 0.

    See Also
    --------
    ephys_recording : A recording to write.

    Examples
    --------
    >>> import tempfile
    >>> recording, _ = ephys_recording(n_channels=4, duration_s=0.5, fs=10_000.0)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     bin_path, meta_path = write_spikeglx(recording, f"{tmp}/run_g0_t0.imec0.ap.bin")
    ...     samples = np.fromfile(bin_path, dtype="<i2").reshape(-1, 4)
    ...     meta = dict(line.split("=", 1) for line in open(meta_path).read().splitlines())
    >>> bool((samples == recording.traces.values).all())
    True
    >>> meta["nSavedChans"], meta["imSampRate"], meta["fileSizeBytes"], meta["imAiRangeMax"]
    ('4', '10000', '40000', '0.6')
    """
    where = f"cannot write {path} as SpikeGLX"
    if not path.partition("?")[0].endswith(".bin"):
        raise ValueError(f"{where}: the path must end in .bin (e.g. run_g0_t0.imec0.ap.bin).")
    traces = _require(ds, "traces", ("time", "channel"), where)
    if traces.dtype != np.int16:
        raise InputError(
            f"{where}: traces has dtype {traces.dtype}; expected int16 (SpikeGLX's samples)."
        )
    fs = ds.attrs.get("sampling_rate")
    if isinstance(fs, bool) or not isinstance(fs, int | float | np.number) or not fs > 0:
        raise InputError(f"{where}: attrs['sampling_rate'] is {fs!r}; expected a rate > 0 Hz.")
    fs = float(fs)
    gain_uv = float(ds.attrs.get("gain_uv", 2.34375))
    n_samples, n_channels = (int(v) for v in traces.shape)
    first = round(float(ds["time"].values[0]) * fs) if n_samples and "time" in ds.coords else 0

    fs_obj, bin_path = fsspec.core.url_to_fs(path, **dict(storage_options or {}))
    meta_path = _meta_path(bin_path)
    parent = fs_obj._parent(bin_path)
    if parent:
        fs_obj.makedirs(parent, exist_ok=True)
    sha1 = hashlib.sha1(usedforsecurity=False)
    step = max(1, _WRITE_BYTES // max(1, 2 * n_channels))
    with fs_obj.open(bin_path, "wb") as f:
        for a in range(0, n_samples, step):
            data = np.ascontiguousarray(traces[a : a + step].values, dtype="<i2").tobytes()
            sha1.update(data)
            f.write(data)
    range_max = gain_uv * 1e-6 * _SPIKEGLX_MAX_INT * _SPIKEGLX_AP_GAIN
    imro = f"(0,{n_channels})" + "".join(
        f"({c} 0 0 {_SPIKEGLX_AP_GAIN} {_SPIKEGLX_LF_GAIN} 1)" for c in range(n_channels)
    )
    chan_map = f"({n_channels},0,0)" + "".join(f"(AP{c};{c}:{c})" for c in range(n_channels))
    shank_map = f"(1,1,{n_channels})" + "".join(f"(0:0:{c}:1)" for c in range(n_channels))
    meta = {
        "acqApLfSy": f"{n_channels},0,0",
        "appVersion": "20230425",
        "fileCreateTime": create_time,
        "fileName": bin_path,
        "fileSHA1": sha1.hexdigest().upper(),
        "fileSizeBytes": str(2 * n_samples * n_channels),
        "fileTimeSecs": repr(n_samples / fs),
        "firstSample": str(first),
        "imAiRangeMax": repr(round(range_max, 12)),
        "imAiRangeMin": repr(-round(range_max, 12)),
        "imDatPrb_type": "0",
        "imMaxInt": str(_SPIKEGLX_MAX_INT),
        "imSampRate": f"{fs:g}" if fs == round(fs) else repr(fs),
        "nSavedChans": str(n_channels),
        "snsApLfSy": f"{n_channels},0,0",
        "snsSaveChanSubset": "all",
        "typeThis": "imec",
        "~imroTbl": imro,
        "~snsChanMap": chan_map,
        "~snsShankMap": shank_map,
    }
    text = "".join(f"{key}={value}\n" for key, value in meta.items())
    with fs_obj.open(meta_path, "wb") as f:
        f.write(text.encode())
    logger.debug("wrote SpikeGLX %s: %d samples x %d channels", path, n_samples, n_channels)
    return path, _meta_path(path)


def write_movie(
    ds: xr.Dataset,
    path: str,
    *,
    chunk_memory: int = 64 * 2**20,
    storage_options: Mapping[str, Any] | None = None,
) -> None:
    """Write a stimulus movie with its spikes as a Zarr (v3) store, chunked along frames.

    The store is what :func:`xarray.open_zarr` (and
    :func:`neurobatch.io.store.open_dataset`) reads: ``frames`` and ``frame_time`` chunked
    along ``frame``, ``chunk_memory // bytes_per_frame`` frames per chunk (at least one), each
    chunk computed and written on its own so that a lazy movie is never loaded whole; the
    spikes and unit ids beside them in one chunk each; the attributes as JSON; compressed
    (zarr's default zstd), with consolidated metadata. String unit labels are stored as
    variable-length UTF-8.

    Parameters
    ----------
    ds : xarray.Dataset
        A Movie: ``frames(frame, y, x)``, ``spike_time(spike)`` with coordinate
        ``unit(spike)``, optionally ``unit_ids(unit)``; attrs ``fps`` and
        ``stimulus_onset`` (JSON values, like every attribute).
    path : str
        Local path or fsspec URL of the store; overwritten.
    chunk_memory : int, default 64 MiB
        Bytes of one chunk of frames (with their times); see
        :func:`neurobatch.io.store.write_dataset`.
    storage_options : mapping, optional
        Options for the fsspec filesystem.

    Raises
    ------
    InputError
        If ``ds`` lacks ``frames(frame, y, x)`` or ``spike_time(spike)``, or ``fps`` or
        ``stimulus_onset`` in its attrs.
    ValueError
        If ``chunk_memory`` is not a positive integer.
    TypeError
        If an attribute is not a JSON value.

    See Also
    --------
    receptive_field_movie : A movie to write.

    Examples
    --------
    >>> movie, _ = receptive_field_movie(n_frames=300, height=4, width=4, n_units=2, n_lags=3)
    >>> write_movie(movie, "memory://docs/movie.zarr", chunk_memory=64 * (16 * 4 + 8))
    >>> back = xr.open_zarr("memory://docs/movie.zarr")
    >>> back.frames.chunks[0][:3], back.attrs["fps"]
    ((64, 64, 64), 60.0)
    >>> bool((back.spike_time.values == movie.spike_time.values).all())
    True
    """
    from neurobatch.io import store

    where = f"cannot write {path} as a movie"
    _require(ds, "frames", ("frame", "y", "x"), where)
    _require(ds, "spike_time", ("spike",), where)
    missing = [key for key in ("fps", "stimulus_onset") if key not in ds.attrs]
    if missing:
        raise InputError(
            f"{where}: attrs lack {missing}; expected fps (Hz) and stimulus_onset (s)."
        )
    chunk_memory = _validate_positive_int(chunk_memory, "chunk_memory")
    # frames can be large: no minimum number of frames per chunk
    store.write_dataset(
        ds,
        path,
        chunk_memory=chunk_memory,
        storage_options=storage_options,
        dim="frame",
        minimum=1,
    )
