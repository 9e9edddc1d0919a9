"""White-noise stimulus movies with spikes of units from planted receptive fields."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import dask.array as da
import numpy as np
import scipy.stats
import xarray as xr
from numpy.typing import NDArray

from neurobatch.synthetic._common import (
    _MOVIE_STREAM,
    _SPIKE_STREAM,
    _chunks,
    _validate_positive,
    _validate_positive_int,
)

__all__ = ["PlantedMovie", "movie_with_spikes", "receptive_field_movie"]


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


#: Frames of the white-noise movie are drawn in blocks of this many frames, each from its own
#: seed, so that any slice of the movie gives the same values whatever the chunking.
_FRAME_BLOCK = 1024


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


def _temporal_profile(lags: NDArray[np.float64], peak: float) -> NDArray[np.float64]:
    """A biphasic temporal filter over ``lags`` (frames): a lobe at ``peak``, an opposite
    one at ``2 * peak`` with half its area, zero at lag 0; scaled to a peak ``|value|`` of 1."""

    def lobe(p: float) -> NDArray[np.float64]:
        x = lags / p
        return np.asarray(x**3 * np.exp(3.0 * (1.0 - x)), dtype=np.float64)

    profile = lobe(peak) - 0.25 * lobe(2.0 * peak)
    return np.asarray(profile / np.abs(profile).max(), dtype=np.float64)


def _planted_fields(
    rng: np.random.Generator, n_units: int, n_lags: int, height: int, width: int
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Each unit's spatial (``(unit, pixel)``) and temporal (``(unit, lag)``) filter.

    The spatial filter is a difference of Gaussians at a random place, ON or OFF at random,
    scaled to a peak ``|value|`` of 1; the temporal one is :func:`_temporal_profile`.
    """
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
    return spatial, temporal


def _spike_frames(
    rng: np.random.Generator,
    seed: int,
    shape: tuple[int, int, int],
    spatial: NDArray[np.float64],
    temporal: NDArray[np.float64],
    per_frame: NDArray[np.float64],
    threshold: float,
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """The frame and unit of every spike during the movie of ``shape``, in one pass over it.

    Block by block: the drive of each unit (its receptive field applied to the frames, grey
    before the movie), standardised, then Poisson counts of ``per_frame`` times its
    rectification above ``threshold``.
    """
    n_frames, height, width = shape
    n_units, n_lags = temporal.shape
    # standard deviation of the drive under unit-variance white noise
    sigma_drive = np.linalg.norm(spatial, axis=1) * np.linalg.norm(temporal, axis=1)
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
    return np.concatenate(frames_of), np.concatenate(units_of)


def _spikes_outside(
    rng: np.random.Generator,
    spike_times: NDArray[np.float64],
    spike_units: NDArray[np.int64],
    rates: NDArray[np.float64],
    *,
    onset_s: float,
    end_s: float,
    outside_s: float,
    fps: float,
) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """Add spontaneous spikes (at each unit's rate) in ``outside_s`` before and after the movie."""
    n_units = rates.size
    extra_times: list[NDArray[np.float64]] = [spike_times]
    extra_units: list[NDArray[np.int64]] = [spike_units]
    for start in (onset_s - outside_s, end_s):
        counts_out = rng.poisson(rates * outside_s)
        extra_units.append(np.repeat(np.arange(n_units), counts_out))
        # the half-open interval [start, start + outside_s), off the frame boundaries
        extra_times.append(start + outside_s * rng.uniform(0.0, 1.0, int(counts_out.sum())))
    spike_times = np.concatenate(extra_times)
    spike_units = np.concatenate(extra_units)
    after = spike_times >= end_s  # keep them clear of the last frame's rounding
    spike_times[after] = np.maximum(spike_times[after], end_s + 0.05 / fps)
    return spike_times, spike_units


def _fields_array(
    spatial: NDArray[np.float64],
    temporal: NDArray[np.float64],
    unit_ids: NDArray[np.int64],
    height: int,
    width: int,
    fps: float,
) -> xr.DataArray:
    """The planted ``receptive_field(unit, lag, y, x)``: each temporal times its spatial filter."""
    n_units, n_lags = temporal.shape
    fields = np.einsum("uk,up->ukp", temporal, spatial).reshape(n_units, n_lags, height, width)
    lags = np.arange(n_lags, dtype=np.float64)
    return xr.DataArray(
        fields,
        dims=("unit", "lag", "y", "x"),
        coords={"unit": unit_ids, "lag": np.arange(n_lags), "lag_time": ("lag", lags / fps)},
        name="receptive_field",
        attrs={"fps": fps},
    )


def _lazy_frames(seed: int, n_frames: int, height: int, width: int, chunk_frames: int) -> Any:
    """The white-noise movie of ``seed`` as a dask array, ``chunk_frames`` frames per chunk."""
    return da.map_blocks(  # type: ignore[no-untyped-call]
        functools.partial(_frames_chunk, seed=seed, height=height, width=width),
        chunks=(_chunks(n_frames, chunk_frames), (height,), (width,)),
        dtype=np.float32,
        meta=np.empty((0, 0, 0), dtype=np.float32),
        name=f"receptive-field-movie-{seed}-{n_frames}x{height}x{width}-{chunk_frames}",
    )


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
    spatial, temporal = _planted_fields(rng, n_units, n_lags, height, width)
    rates = mean_rate_hz * rng.uniform(0.5, 1.5, size=n_units)
    rates[n_units - n_silent :] = 0.0
    expected = float(scipy.stats.norm.pdf(threshold) - threshold * scipy.stats.norm.sf(threshold))
    per_frame = rates / fps / max(expected, 1e-300)

    # one pass over the movie, block by block: drive -> Poisson counts
    shape = (n_frames, height, width)
    spike_frames, spike_units = _spike_frames(
        rng, seed, shape, spatial, temporal, per_frame, threshold
    )
    spike_times = onset_s + (spike_frames + rng.uniform(0.05, 0.95, spike_frames.size)) / fps

    # spontaneous spikes before and after the movie
    if outside_s > 0:
        spike_times, spike_units = _spikes_outside(
            rng,
            spike_times,
            spike_units,
            rates,
            onset_s=onset_s,
            end_s=onset_s + n_frames / fps,
            outside_s=outside_s,
            fps=fps,
        )
    order = np.lexsort((spike_units, spike_times))

    frames = _lazy_frames(seed, n_frames, height, width, chunk_frames)
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
    return PlantedMovie(movie, _fields_array(spatial, temporal, unit_ids, height, width, fps))
