"""Window grids and positions on a uniformly sampled time axis.

How many samples a window of ``(lo, hi)`` seconds takes, its relative time grid, and where
each window starts: snapped to the nearest sample (``nearest``) or at a fractional sample
position to interpolate at (``interp``). :func:`neurobatch.kernels.trials.plan_trials`
places every trial and baseline window with these.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from neurobatch.kernels._validation import validate_finite

__all__ = [
    "estimate_fs",
    "fractional_positions",
    "interp_grid",
    "interp_windows",
    "nearest_grid",
    "nearest_windows",
    "snap_to_samples",
    "window_length",
]

Bounds = tuple[float, float]
FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]


# --- window grids ------------------------------------------------------------------------


def window_length(bounds: Bounds, fs: float) -> int:
    """Return the number of samples of a window, ``round((hi - lo) * fs)``.

    Parameters
    ----------
    bounds : tuple of float
        ``(lo, hi)``, seconds relative to the window centre.
    fs : float
        Sampling rate, Hz.

    Returns
    -------
    int
        The number of samples; the right end ``hi`` is excluded.

    Examples
    --------
    >>> window_length((-8.0, 8.0), 20.0)
    320
    """
    lo, hi = bounds
    return round((hi - lo) * fs)


def nearest_grid(bounds: Bounds, fs: float) -> tuple[int, FloatArray]:
    """Return the sample offset and relative time grid of a ``nearest`` window.

    The window holds ``n = round((hi - lo) * fs)`` samples at offsets
    ``rint(lo * fs) + arange(n)`` from the centre sample.

    Parameters
    ----------
    bounds : tuple of float
        ``(lo, hi)``, seconds relative to the window centre.
    fs : float
        Sampling rate, Hz.

    Returns
    -------
    first_offset : int
        Offset of the window's first sample from the centre sample, ``rint(lo * fs)``.
    rel_time : numpy.ndarray
        ``(n,)`` float64, ``(first_offset + arange(n)) / fs`` seconds.

    Examples
    --------
    >>> first, rel_time = nearest_grid((-8.0, 8.0), 20.0)
    >>> first, rel_time.size, float(rel_time[0]), float(rel_time[-1])
    (-160, 320, -8.0, 7.95)
    """
    n = window_length(bounds, fs)
    first = int(np.rint(bounds[0] * fs))
    return first, (first + np.arange(n, dtype=np.int64)) / fs


def interp_grid(bounds: Bounds, fs: float) -> FloatArray:
    """Return the relative time grid of an ``interp`` window, ``lo + arange(n) / fs``.

    Parameters
    ----------
    bounds : tuple of float
        ``(lo, hi)``, seconds relative to the window centre.
    fs : float
        Sampling rate, Hz.

    Returns
    -------
    numpy.ndarray
        ``(n,)`` float64 seconds, ``n = round((hi - lo) * fs)``; ``hi`` is excluded.

    Examples
    --------
    >>> interp_grid((-0.25, 0.25), 10.0)
    array([-0.25, -0.15, -0.05,  0.05,  0.15])
    """
    n = window_length(bounds, fs)
    return bounds[0] + np.arange(n, dtype=np.float64) / fs


def estimate_fs(time: ArrayLike) -> float:
    """Estimate the sampling rate as PhoPro does, ``(N - 1) / (t_max - t_min)``.

    Parameters
    ----------
    time : array_like
        ``(N,)`` sample times, seconds, ``N >= 2``.

    Returns
    -------
    float
        The sampling rate, Hz.

    Examples
    --------
    >>> estimate_fs([0.0, 0.5, 1.0, 1.5])
    2.0
    """
    t = np.asarray(time, dtype=np.float64)
    return float((t.size - 1) / (t.max() - t.min()))


# --- positions on the time axis ----------------------------------------------------------


def snap_to_samples(times: ArrayLike, time: FloatArray) -> IntArray:
    """Return the index of the sample nearest to each time, ties to the earlier sample.

    Times before the first sample snap to it, times after the last to the last.

    Parameters
    ----------
    times : array_like
        Times to snap, seconds; finite.
    time : numpy.ndarray
        ``(N,)`` strictly increasing sample times, ``N >= 2``.

    Returns
    -------
    numpy.ndarray
        int64 indices, the shape of ``times``.

    Examples
    --------
    >>> snap_to_samples([0.24, 0.25, 0.26, -3.0, 9.0], np.array([0.0, 0.5, 1.0]))
    array([0, 0, 1, 0, 2])
    """
    t = np.asarray(times, dtype=np.float64)
    idx = np.clip(np.searchsorted(time, t, side="left"), 1, time.size - 1)
    left, right = time[idx - 1], time[idx]
    return (idx - (t - left <= right - t)).astype(np.int64)


def fractional_positions(times: ArrayLike, time: FloatArray) -> tuple[IntArray, FloatArray]:
    """Return, for each time, the sample at or before it and its fraction of the way on.

    ``time[j] + f * (time[j + 1] - time[j])`` is the time, with ``0 <= f < 1`` inside the
    recording (``j`` is clipped to ``[0, N - 2]``, so ``f`` leaves that range outside it).

    Parameters
    ----------
    times : array_like
        Times, seconds; finite.
    time : numpy.ndarray
        ``(N,)`` strictly increasing sample times, ``N >= 2``.

    Returns
    -------
    index : numpy.ndarray
        int64, the shape of ``times``.
    fraction : numpy.ndarray
        float64, the shape of ``times``.

    Examples
    --------
    >>> fractional_positions([0.25, 1.0], np.array([0.0, 0.5, 1.0, 1.5]))
    (array([0, 2]), array([0.5, 0. ]))
    """
    t = np.asarray(times, dtype=np.float64)
    j = np.clip(np.searchsorted(time, t, side="right") - 1, 0, time.size - 2).astype(np.int64)
    return j, (t - time[j]) / (time[j + 1] - time[j])


# --- window positions --------------------------------------------------------------------


def nearest_windows(
    centers: FloatArray, time: FloatArray, bounds: Bounds, fs: float
) -> tuple[IntArray, IntArray, BoolArray]:
    """Snap centres to samples and return the ``nearest`` windows' start indices.

    Parameters
    ----------
    centers : numpy.ndarray
        ``(n,)`` window centres, seconds.
    time : numpy.ndarray
        ``(N,)`` strictly increasing sample times.
    bounds : tuple of float
        ``(lo, hi)`` seconds around the centre.
    fs : float
        Sampling rate, Hz.

    Returns
    -------
    center_index : numpy.ndarray
        ``(n,)`` int64, the sample each centre snaps to (ties to the earlier).
    starts : numpy.ndarray
        ``(n,)`` int64, ``center_index + rint(lo * fs)``.
    invalid : numpy.ndarray
        ``(n,)`` bool: the window runs past either end (``starts < 0`` or
        ``starts + n > N``).

    Examples
    --------
    >>> time = np.arange(10) / 10.0
    >>> nearest_windows(np.array([0.15, 0.5, 0.86]), time, (-0.2, 0.2), 10.0)
    (array([1, 5, 9]), array([-1,  3,  7]), array([ True, False,  True]))
    """
    first, rel_time = nearest_grid(bounds, fs)
    center_index = snap_to_samples(centers, time)
    starts = center_index + first
    invalid = (starts < 0) | (starts + rel_time.size > time.size)
    return center_index, starts, invalid


def interp_windows(
    centers: FloatArray, time: FloatArray, bounds: Bounds, fs: float
) -> tuple[IntArray, FloatArray, BoolArray]:
    """Return the ``interp`` windows' start indices and fractional offsets.

    Window ``i`` takes values at ``centers[i] + lo + k / fs``, ``k < n``: sample
    ``starts[i] + k`` plus ``fractions[i]`` of the way to the next, so it reads the
    ``n + 1`` samples from ``starts[i]``.

    Parameters
    ----------
    centers : numpy.ndarray
        ``(n_windows,)`` window centres, seconds (not snapped).
    time : numpy.ndarray
        ``(N,)`` strictly increasing, uniformly spaced sample times.
    bounds : tuple of float
        ``(lo, hi)`` seconds around the centre.
    fs : float
        Sampling rate, Hz.

    Returns
    -------
    starts : numpy.ndarray
        ``(n_windows,)`` int64.
    fractions : numpy.ndarray
        ``(n_windows,)`` float64 in ``[0, 1)`` for valid windows.
    invalid : numpy.ndarray
        ``(n_windows,)`` bool: ``c + lo < t_first`` or ``c + hi > t_last`` (or, a
        floating-point edge, the last value would need a sample past the end).

    Examples
    --------
    >>> time = np.arange(10) / 10.0
    >>> interp_windows(np.array([0.125, 0.5, 0.75, 0.85]), time, (-0.1, 0.1), 10.0)
    (array([0, 4, 6, 7]), array([0.25, 0.  , 0.5 , 0.5 ]), array([False, False, False,  True]))
    """
    lo, hi = bounds
    n = window_length(bounds, fs)
    starts, fractions = fractional_positions(centers + lo, time)
    invalid = (centers + lo < time[0]) | (centers + hi > time[-1]) | (starts + n + 1 > time.size)
    return starts, fractions, invalid


# --- validation --------------------------------------------------------------------------


def _validate_time(time: ArrayLike) -> FloatArray:
    t = validate_finite(np.asarray(time, dtype=np.float64), "time")
    if t.ndim != 1 or t.size < 2:
        raise ValueError(f"time must be 1-D with at least 2 samples, got shape {t.shape}.")
    steps = np.diff(t)
    if not (steps > 0).all():
        i = int(np.flatnonzero(steps <= 0)[0])
        raise ValueError(
            f"time must be strictly increasing, got time[{i}] = {float(t[i])!r} and "
            f"time[{i + 1}] = {float(t[i + 1])!r}."
        )
    return t


def _validate_fs(fs: float | None, time: FloatArray) -> float:
    estimate = estimate_fs(time)
    if fs is None:
        return estimate
    fs = float(fs)
    if not np.isfinite(fs) or fs <= 0:
        raise ValueError(f"fs must be a positive, finite sampling rate in Hz, got {fs!r}.")
    if abs(fs / estimate - 1.0) > 1e-3:
        raise ValueError(
            f"fs is {fs!r} Hz but the time axis is sampled at {estimate!r} Hz "
            "((N - 1) / (t_last - t_first)); pass fs=None to use the time axis's rate."
        )
    return fs


def _validate_bounds(bounds: Sequence[float], name: str, fs: float) -> Bounds:
    try:
        lo, hi = (float(b) for b in bounds)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a pair (lo, hi) of seconds, got {bounds!r}.") from e
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo >= hi:
        raise ValueError(f"{name} must be finite with lo < hi, got ({lo!r}, {hi!r}).")
    if window_length((lo, hi), fs) < 1:
        raise ValueError(f"{name} ({lo!r}, {hi!r}) is shorter than one sample at fs = {fs!r} Hz.")
    return lo, hi
