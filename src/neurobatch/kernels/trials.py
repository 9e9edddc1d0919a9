"""Trial windows: window grids, event annotation, centring, window gathering, normalisation.

Trial extraction runs in two stages, so that the large signal is touched by one simple step:

1. :func:`plan_trials` decides everything that follows from the (small) event table and
   time axis: the candidate trials (one per alignment event), the events found around each,
   the window centres, the start index of every trial and baseline window, which windows run
   past the recording, which trials are dropped and why, and the per-trial table. It returns
   a frozen :class:`TrialPlan`.
2. :func:`extract_trials` cuts the windows out of the signal at the planned start indices
   (:func:`gather_windows`, or :func:`interpolate_windows` for ``interp`` alignment) and
   normalises them against their baseline windows (:func:`baseline_statistics` then
   :func:`apply_normalization`). The dask engine runs exactly these kernels block by block.

:func:`trials` does both stages on whole NumPy arrays; it is the reference the engine is
tested against.

The semantics are those of PhoPro 0.6.0's ``PhotometryExperiment.extract_trial_data``,
with the faults that neurobatch fixes:

- two ``center_on`` events in one trial (with ``check_overlap``) drop that trial only, and
  :attr:`TrialPlan.dropped` says which, instead of failing the whole experiment;
- the alignment event's own column holds the offset of the trial's own alignment event
  (0 when the trial is not re-centred), not the first occurrence of that event in the
  window, which was the previous cue when cues are closer than the trial bounds.

Layout: the signal's time axis is ``axis`` (0 by default); windows come out as
``(n_windows, length, *other axes)``, the other axes in their original order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, cast

import numpy as np
from numpy.typing import ArrayLike, NDArray

from neurobatch.kernels._validation import validate_choice, validate_finite, validate_same_length

__all__ = [
    "ALIGNMENT_LABEL",
    "MAD_SCALE",
    "EventConflict",
    "InvalidWindowPolicy",
    "TrialNormalization",
    "TrialPlan",
    "Trials",
    "WindowAlignment",
    "WindowSet",
    "annotate_events",
    "apply_normalization",
    "baseline_statistics",
    "center_trials",
    "estimate_fs",
    "extract_trials",
    "fractional_positions",
    "gather_windows",
    "interp_grid",
    "interp_windows",
    "interpolate_windows",
    "nearest_grid",
    "nearest_windows",
    "normalize_windows",
    "plan_trials",
    "pool_alignments",
    "resolve_conflicts",
    "snap_to_samples",
    "trials",
    "validate_starts",
    "window_length",
    "windows_from_pieces",
]

TrialNormalization = Literal["none", "zscore", "zero", "mad", "amp"]
WindowAlignment = Literal["nearest", "interp"]
InvalidWindowPolicy = Literal["drop", "error"]
EventConflict = Literal["first", "last", "all", "mean"]

_NORMALIZATIONS: tuple[str, ...] = ("none", "zscore", "zero", "mad", "amp")
_ALIGNMENTS: tuple[str, ...] = ("nearest", "interp")
_POLICIES: tuple[str, ...] = ("drop", "error")
_CONFLICTS: tuple[str, ...] = ("first", "last", "all", "mean")

#: Column of the offset of each trial's own alignment event when ``align_to`` pools several
#: event names (PhoPro's name); with a single name, that name is the column.
ALIGNMENT_LABEL = "ALIGNMENTS"
#: Scale that makes the median absolute deviation a consistent estimator of the standard
#: deviation of normal data.
MAD_SCALE = 1.4826
_RESERVED = ("trial_num", "start_time", "stop_time", "align_event", ALIGNMENT_LABEL)

Bounds = tuple[float, float]
FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]


def _frozen(a: NDArray[Any]) -> NDArray[Any]:
    """Return ``a`` marked read-only, so a frozen plan cannot be changed in place."""
    a.flags.writeable = False
    return a


# --- window grids ---------------------------------------------------------------------------


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


# --- positions on the time axis -------------------------------------------------------------


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


# --- event annotation -----------------------------------------------------------------------


def pool_alignments(
    events: Mapping[str, FloatArray], names: Sequence[str]
) -> tuple[FloatArray, NDArray[np.str_], IntArray]:
    """Pool the occurrences of the alignment events, sorted by time.

    Each occurrence is a candidate trial. Ties keep the order of ``names``.

    Parameters
    ----------
    events : mapping of str to numpy.ndarray
        Sorted occurrence times of each event, seconds.
    names : sequence of str
        The alignment event names.

    Returns
    -------
    align_times : numpy.ndarray
        ``(n,)`` float64, the sorted alignment times.
    align_event : numpy.ndarray
        ``(n,)`` str, the event name of each.
    own_index : numpy.ndarray
        ``(n,)`` int64, the index of each in ``events[align_event[i]]``.

    Examples
    --------
    >>> times, names, own = pool_alignments(
    ...     {"cue": np.array([1.0, 5.0]), "tone": np.array([3.0])}, ["cue", "tone"]
    ... )
    >>> times, names.tolist(), own
    (array([1., 3., 5.]), ['cue', 'tone', 'cue'], array([0, 0, 1]))
    """
    times = np.concatenate([events[n] for n in names])
    labels = np.concatenate([np.full(events[n].size, n) for n in names])
    index = np.concatenate([np.arange(events[n].size, dtype=np.int64) for n in names])
    order = np.argsort(times, kind="stable")
    return times[order], labels[order].astype(np.str_), index[order]


def resolve_conflicts(
    timestamps: FloatArray,
    start: IntArray,
    stop: IntArray,
    rule: EventConflict,
    *,
    own: IntArray | None = None,
) -> FloatArray:
    """Pick the event time(s) of each trial from the occurrences found in its interval.

    Parameters
    ----------
    timestamps : numpy.ndarray
        ``(m,)`` sorted occurrence times of one event, seconds.
    start, stop : numpy.ndarray
        ``(n,)`` int64: trial ``i`` found ``timestamps[start[i]:stop[i]]``.
    rule : {'first', 'last', 'all', 'mean'}
        ``first``/``last``: the earliest/latest occurrence; ``mean``: their mean;
        ``all``: every occurrence, one column each, NaN-padded.
    own : numpy.ndarray, optional
        ``(n,)`` int64: for trials aligned on this event, the index of the trial's own
        alignment occurrence in ``timestamps``; -1 for other trials. Such a trial reports
        its own occurrence (first column, whatever the rule); with ``all`` the other
        occurrences found follow it in time order.

    Returns
    -------
    numpy.ndarray
        ``(n, k)`` float64 times, NaN where absent; ``k = 1`` except for ``all``.

    Examples
    --------
    >>> ts = np.array([1.0, 2.0, 4.0])
    >>> start, stop = np.array([0, 2, 3]), np.array([2, 3, 3])
    >>> resolve_conflicts(ts, start, stop, "mean")
    array([[1.5],
           [4. ],
           [nan]])
    >>> resolve_conflicts(ts, start, stop, "all", own=np.array([1, -1, -1]))
    array([[ 2.,  1.],
           [ 4., nan],
           [nan, nan]])
    """
    n = start.size
    counts = np.maximum(stop - start, 0)
    is_own = np.zeros(n, dtype=np.bool_) if own is None else own >= 0
    own_idx = np.zeros(n, dtype=np.int64) if own is None else np.where(is_own, own, 0)
    inside = is_own & (start <= own_idx) & (own_idx < stop)

    if rule == "all":
        others = counts - inside
        width = max(
            int((others[is_own] + 1).max(initial=0)), int(counts[~is_own].max(initial=0)), 1
        )
        k = np.arange(width, dtype=np.int64)[None, :]
        # other trials: the k-th occurrence; own trials: own first, then the others
        m = k - 1
        other_idx = start[:, None] + m
        other_idx = other_idx + (inside[:, None] & (other_idx >= own_idx[:, None]))
        idx = np.where(is_own[:, None], other_idx, start[:, None] + k)
        valid = np.where(is_own[:, None], (m >= 0) & (m < others[:, None]), k < counts[:, None])
        values = np.full((n, width), np.nan)
        values[valid] = timestamps[idx[valid]]
        values[is_own, 0] = timestamps[own_idx[is_own]]
        return values

    out = np.full(n, np.nan)
    found = counts > 0
    if rule == "first":
        out[found] = timestamps[start[found]]
    elif rule == "last":
        out[found] = timestamps[stop[found] - 1]
    else:  # mean, by cumulative sums as PhoPro computes it
        csum = np.concatenate(([0.0], np.cumsum(timestamps)))
        out[found] = (csum[stop] - csum[start])[found] / counts[found]
    out[is_own] = timestamps[own_idx[is_own]]
    return out[:, None]


def annotate_events(
    align_times: FloatArray,
    events: Mapping[str, FloatArray],
    tolerances: Mapping[str, Bounds],
    time_range: Bounds,
    rule: EventConflict,
    *,
    own: Mapping[str, IntArray] | None = None,
) -> dict[str, FloatArray]:
    """Find each event's occurrences around each alignment time.

    Trial ``i`` looks for event ``e`` in the closed interval
    ``[a_i + lo_e, a_i + hi_e]`` (its tolerance), clipped to ``time_range``.

    Parameters
    ----------
    align_times : numpy.ndarray
        ``(n,)`` alignment times, seconds.
    events : mapping of str to numpy.ndarray
        Sorted occurrence times of each event, seconds.
    tolerances : mapping of str to tuple of float
        The events to annotate and their ``(lo, hi)`` intervals, relative to the alignment.
    time_range : tuple of float
        ``(t_first, t_last)`` of the recording.
    rule : {'first', 'last', 'all', 'mean'}
        How several occurrences in one interval are resolved, see
        :func:`resolve_conflicts`.
    own : mapping of str to numpy.ndarray, optional
        For each alignment event name, the trials' own occurrence indices (-1 for trials
        aligned on another name), see :func:`resolve_conflicts`.

    Returns
    -------
    dict of str to numpy.ndarray
        ``(n, k)`` absolute times per annotated event, NaN where absent.

    Examples
    --------
    >>> found = annotate_events(
    ...     np.array([1.0, 5.0]), {"lever": np.array([1.5, 2.5, 9.0])},
    ...     {"lever": (0.0, 2.0)}, (0.0, 10.0), "last",
    ... )
    >>> found["lever"]
    array([[2.5],
           [nan]])
    """
    t_first, t_last = time_range
    own = {} if own is None else own
    out: dict[str, FloatArray] = {}
    for name, (lo, hi) in tolerances.items():
        ts = events[name]
        start = np.searchsorted(ts, np.maximum(align_times + lo, t_first), side="left")
        stop = np.searchsorted(ts, np.minimum(align_times + hi, t_last), side="right")
        out[name] = resolve_conflicts(
            ts, start.astype(np.int64), stop.astype(np.int64), rule, own=own.get(name)
        )
    return out


# --- centring -------------------------------------------------------------------------------


def center_trials(
    align_times: FloatArray, annotated: Mapping[str, FloatArray], center_on: Sequence[str]
) -> tuple[FloatArray, BoolArray]:
    """Move each trial's centre to its ``center_on`` events; later names win.

    Parameters
    ----------
    align_times : numpy.ndarray
        ``(n,)`` alignment times, the default centres, seconds.
    annotated : mapping of str to numpy.ndarray
        ``(n, k)`` event times from :func:`annotate_events` (first column used).
    center_on : sequence of str
        The centring events, in order of increasing precedence.

    Returns
    -------
    centers : numpy.ndarray
        ``(n,)`` float64 centres, seconds (not yet snapped to a sample).
    found : numpy.ndarray
        ``(n, len(center_on))`` bool: which centring events each trial found.

    Examples
    --------
    >>> centers, found = center_trials(
    ...     np.array([1.0, 5.0, 9.0]),
    ...     {"l1": np.array([[1.5], [np.nan], [9.2]]), "l2": np.array([[np.nan], [np.nan], [9.4]])},
    ...     ["l1", "l2"],
    ... )
    >>> centers, found.sum(axis=1)
    (array([1.5, 5. , 9.4]), array([1, 0, 2]))
    """
    centers = np.array(align_times, dtype=np.float64, copy=True)
    found = np.zeros((centers.size, len(center_on)), dtype=np.bool_)
    for j, name in enumerate(center_on):
        t = annotated[name][:, 0]
        found[:, j] = ~np.isnan(t)
        centers[found[:, j]] = t[found[:, j]]
    return centers, found


# --- window positions -----------------------------------------------------------------------


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


# --- the big-array part: gather and normalise ----------------------------------------------


def gather_windows(x: ArrayLike, starts: ArrayLike, length: int, *, axis: int = 0) -> NDArray[Any]:
    """Cut windows of ``length`` samples starting at ``starts`` along ``axis``.

    Parameters
    ----------
    x : array_like
        The signal; time along ``axis``.
    starts : array_like
        ``(n_windows,)`` integer start indices, ``0 <= start <= N - length``.
    length : int
        Samples per window, ``>= 1``.
    axis : int, default 0
        The time axis of ``x``.

    Returns
    -------
    numpy.ndarray
        ``(n_windows, length, *other axes)``, ``x``'s dtype:
        ``x[starts[:, None] + arange(length)]`` with time moved first.

    Raises
    ------
    ValueError
        If ``length < 1`` or a window runs past either end of ``x``.

    Examples
    --------
    >>> gather_windows(np.arange(10), [0, 3, 7], 3)
    array([[0, 1, 2],
           [3, 4, 5],
           [7, 8, 9]])
    """
    arr = np.moveaxis(np.asarray(x), axis, 0)
    s = validate_starts(starts, length, arr.shape[0])
    return cast(NDArray[Any], arr[s[:, None] + np.arange(length)])


def interpolate_windows(
    x: ArrayLike, starts: ArrayLike, fractions: ArrayLike, length: int, *, axis: int = 0
) -> NDArray[Any]:
    """Linearly interpolate windows at fractional sample positions.

    Value ``k`` of window ``i`` is ``w0 + f * (w1 - w0)`` with ``w0 = x[s + k]``,
    ``w1 = x[s + k + 1]``, ``s = starts[i]`` and ``f = fractions[i]``: each window reads
    the ``length + 1`` samples from its start.

    Parameters
    ----------
    x : array_like
        The signal; time along ``axis``.
    starts : array_like
        ``(n_windows,)`` integer start indices, ``0 <= start <= N - length - 1``.
    fractions : array_like
        ``(n_windows,)`` fractions of a sample past each start.
    length : int
        Values per window, ``>= 1``.
    axis : int, default 0
        The time axis of ``x``.

    Returns
    -------
    numpy.ndarray
        ``(n_windows, length, *other axes)``, floating point (at least float64).

    Raises
    ------
    ValueError
        If ``length < 1``, a window needs a sample past either end, or ``fractions`` does
        not match ``starts``.

    Examples
    --------
    >>> interpolate_windows(np.arange(6) ** 2, [1, 3], [0.5, 0.0], 2)
    array([[ 2.5,  6.5],
           [ 9. , 16. ]])
    """
    w = gather_windows(x, starts, length + 1, axis=axis)
    f = np.asarray(fractions, dtype=np.float64)
    if f.shape != (w.shape[0],):
        raise ValueError(f"fractions must have shape ({w.shape[0]},) like starts, got {f.shape}.")
    w = w.astype(np.result_type(w.dtype, np.float64), copy=False)
    f = f.reshape((-1,) + (1,) * (w.ndim - 1))
    lo, hi = w[:, :-1], w[:, 1:]
    return cast(NDArray[Any], lo + f * (hi - lo))


def windows_from_pieces(
    length: int,
    starts: ArrayLike,
    fractions: ArrayLike | None,
    cuts: NDArray[np.int64],
    *pieces: NDArray[Any],
) -> NDArray[Any]:
    """Cut windows from consecutive pieces of a signal: the task of one block.

    A blocked gather hands each task the chunk holding its windows' starts and the chunks
    after it that the windows reach into (a one-sided overlap). ``pieces[i][a:b]`` with
    ``(a, b) = cuts[i]`` is the part of each piece the windows read; joined in order they
    are one stretch of signal, and ``starts`` are relative to its beginning.

    Parameters
    ----------
    length : int
        Values per window.
    starts : array_like
        ``(n_windows,)`` integer starts within the joined stretch.
    fractions : array_like or None
        None to gather (:func:`gather_windows`); otherwise ``(n_windows,)`` fractions to
        interpolate at (:func:`interpolate_windows`, reading ``length + 1`` samples).
    cuts : numpy.ndarray
        ``(len(pieces), 2)`` int64, the ``[a, b)`` kept of each piece.
    *pieces : numpy.ndarray
        Consecutive pieces of the signal, time first.

    Returns
    -------
    numpy.ndarray
        ``(n_windows, length, *other axes)``.

    Examples
    --------
    >>> pieces = (np.arange(0, 4), np.arange(4, 6), np.arange(6, 10))
    >>> windows_from_pieces(3, [0, 2], None, np.array([[2, 4], [0, 2], [0, 3]]), *pieces)
    array([[2, 3, 4],
           [4, 5, 6]])
    """
    parts = [p[a:b] for p, (a, b) in zip(pieces, np.asarray(cuts).tolist(), strict=True)]
    stretch = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
    if fractions is None:
        return gather_windows(stretch, starts, length)
    return interpolate_windows(stretch, starts, fractions, length)


def baseline_statistics(baseline: NDArray[Any], method: TrialNormalization) -> NDArray[Any]:
    """Return the per-window centre and scale that ``method`` takes from baseline windows.

    Parameters
    ----------
    baseline : numpy.ndarray
        ``(n_windows, length, *other)`` baseline windows.
    method : {'none', 'zscore', 'zero', 'mad', 'amp'}
        ``zscore``: mean and standard deviation (ddof 0; a zero deviation becomes the
        dtype's eps, as in PhoPro); ``mad``: median and ``1.4826 * MAD``; ``zero`` and
        ``amp``: mean (scale 1, unused); ``none``: 0 and 1.

    Returns
    -------
    numpy.ndarray
        ``(n_windows, 2, *other)``: ``[:, 0]`` the centre, ``[:, 1]`` the scale.

    Examples
    --------
    >>> baseline_statistics(np.array([[1.0, 2.0, 3.0, 10.0]]), "mad")
    array([[2.5   , 1.4826]])
    """
    validate_choice(method, "normalization", _NORMALIZATIONS)
    # reduce each window as one contiguous row: NumPy then sums every row the same
    # (pairwise) way whatever the number of windows or of other axes, so that blocks of
    # windows give bit-for-bit the statistics of the whole set
    b = np.ascontiguousarray(np.moveaxis(np.asarray(baseline), 1, -1))
    if method == "mad":
        center = np.median(b, axis=-1, keepdims=True)
        scale = MAD_SCALE * np.median(np.abs(b - center), axis=-1, keepdims=True)
    elif method == "none":
        center = np.zeros((*b.shape[:-1], 1))
        scale = np.ones_like(center)
    else:
        center = b.mean(axis=-1, keepdims=True)
        if method == "zscore":
            scale = b.std(axis=-1, ddof=0, keepdims=True)
            scale = np.where(scale == 0.0, np.finfo(scale.dtype).eps, scale)
        else:
            scale = np.ones_like(center)
    return np.moveaxis(np.concatenate([center, scale], axis=-1), -1, 1)


def apply_normalization(
    windows: NDArray[Any], stats: NDArray[Any], method: TrialNormalization
) -> NDArray[Any]:
    """Normalise trial windows with the baseline statistics of the same trials.

    ``zscore`` and ``mad``: ``(x - centre) / scale``; ``zero``: ``x - centre``; ``amp``:
    ``(x - centre) / max|x - centre|`` over the trial window; ``none``: a copy of ``x``.
    A zero scale gives inf or NaN, as in PhoPro, without a warning.

    Parameters
    ----------
    windows : numpy.ndarray
        ``(n_windows, length, *other)`` trial windows.
    stats : numpy.ndarray
        ``(n_windows, 2, *other)`` from :func:`baseline_statistics`.
    method : {'none', 'zscore', 'zero', 'mad', 'amp'}
        The normalisation.

    Returns
    -------
    numpy.ndarray
        The shape of ``windows``.

    Examples
    --------
    >>> apply_normalization(np.array([[1.0, 3.0]]), np.array([[2.0, 0.5]]), "zscore")
    array([[-2.,  2.]])
    """
    validate_choice(method, "normalization", _NORMALIZATIONS)
    if method == "none":
        return np.array(windows, copy=True)
    center, scale = stats[:, 0:1], stats[:, 1:2]
    with np.errstate(divide="ignore", invalid="ignore"):
        d = windows - center
        if method == "zero":
            return cast(NDArray[Any], d)
        if method == "amp":
            return cast(NDArray[Any], d / np.max(np.abs(d), axis=1, keepdims=True))
        return cast(NDArray[Any], d / scale)


def normalize_windows(
    windows: NDArray[Any], baseline: NDArray[Any], method: TrialNormalization
) -> NDArray[Any]:
    """Normalise trial windows against their baseline windows (both whole).

    Parameters
    ----------
    windows : numpy.ndarray
        ``(n_windows, length, *other)`` trial windows.
    baseline : numpy.ndarray
        ``(n_windows, baseline_length, *other)`` baseline windows of the same trials.
    method : {'none', 'zscore', 'zero', 'mad', 'amp'}
        See :func:`baseline_statistics` and :func:`apply_normalization`.

    Returns
    -------
    numpy.ndarray
        The shape of ``windows``.

    Examples
    --------
    >>> normalize_windows(np.array([[4.0, 6.0]]), np.array([[1.0, 3.0]]), "zero")
    array([[2., 4.]])
    """
    return apply_normalization(windows, baseline_statistics(baseline, method), method)


# --- the plan -------------------------------------------------------------------------------


@dataclass(frozen=True)
class WindowSet:
    """Where to cut a set of windows out of a signal's time axis.

    Attributes
    ----------
    starts : numpy.ndarray
        ``(n_windows,)`` int64: the first sample read by each window.
    length : int
        Values per window (samples on the output grid).
    rel_time : numpy.ndarray
        ``(length,)`` float64, the window's time grid relative to its centre, seconds.
    fractions : numpy.ndarray or None
        ``interp`` windows only: ``(n_windows,)`` float64, the fraction of a sample past
        ``starts`` of the first grid point; such windows read ``length + 1`` samples.
    """

    starts: IntArray
    length: int
    rel_time: FloatArray
    fractions: FloatArray | None = None

    @property
    def n_windows(self) -> int:
        """The number of windows."""
        return int(self.starts.size)

    @property
    def span(self) -> int:
        """Samples read per window: ``length``, or ``length + 1`` when interpolating."""
        return self.length + (0 if self.fractions is None else 1)


@dataclass(frozen=True)
class TrialPlan:
    """Everything about a set of trials that does not need the signal.

    One candidate trial per alignment event (sorted by time); the kept trials are those
    with ``keep``. Arrays are read-only.

    Attributes
    ----------
    fs : float
        Sampling rate, Hz.
    n_time : int
        Samples in the recording; the signal must have this many.
    time_range : tuple of float
        ``(t_first, t_last)`` of the recording, seconds.
    window_alignment : {'nearest', 'interp'}
        How windows are placed on the samples.
    normalization : {'none', 'zscore', 'zero', 'mad', 'amp'}
        The per-trial normalisation.
    align_label : str
        The alignment event's column: its name, or :data:`ALIGNMENT_LABEL` when
        ``align_to`` pools several names.
    align_times : numpy.ndarray
        ``(n_candidates,)`` float64, the alignment time of each candidate, seconds.
    align_event : numpy.ndarray
        ``(n_candidates,)`` str, the alignment event name of each candidate.
    centers : numpy.ndarray
        ``(n_candidates,)`` float64 window centres, seconds: snapped to a sample for
        ``nearest``, exact for ``interp``.
    invalid_window : numpy.ndarray
        ``(n_candidates,)`` bool: the trial or baseline window runs past the recording.
    overlap : numpy.ndarray
        ``(n_candidates,)`` bool: with ``check_overlap``, more than one ``center_on``
        event was found.
    keep : numpy.ndarray
        ``(n_candidates,)`` bool, the trials kept: neither invalid nor overlapping.
    event_offsets : mapping of str to numpy.ndarray
        ``(n_candidates,)`` float64 per event column, in table order: event time minus
        window centre, seconds (snapped to samples for ``nearest``), NaN when absent.
    windows : WindowSet
        The kept trials' windows.
    baseline : WindowSet or None
        The kept trials' baseline windows (centred on the alignment time), when
        ``baseline_bounds_s`` was given.
    dropped : mapping of int to str
        Why each dropped candidate was dropped, by candidate number (1-based).
    """

    fs: float
    n_time: int
    time_range: Bounds
    window_alignment: WindowAlignment
    normalization: TrialNormalization
    align_label: str
    align_times: FloatArray
    align_event: NDArray[np.str_]
    centers: FloatArray
    invalid_window: BoolArray
    overlap: BoolArray
    keep: BoolArray
    event_offsets: Mapping[str, FloatArray]
    windows: WindowSet
    baseline: WindowSet | None = None
    dropped: Mapping[int, str] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def n_trials(self) -> int:
        """The number of kept trials."""
        return int(self.keep.sum())

    @property
    def rel_time(self) -> FloatArray:
        """The trial windows' relative time grid, seconds."""
        return self.windows.rel_time

    def table(self) -> dict[str, NDArray[Any]]:
        """Return the per-trial columns of the kept trials.

        Returns
        -------
        dict of str to numpy.ndarray
            ``trial_num`` (1..n), ``start_time`` and ``stop_time`` (absolute seconds of
            the first and last grid point), then one column per event (offset from the
            window centre, NaN when absent; see :attr:`event_offsets`), and
            ``align_event`` when ``align_to`` pooled several names.

        Examples
        --------
        >>> t = np.arange(100) / 10.0
        >>> plan = plan_trials(t, {"cue": [2.0, 5.0]}, align_to="cue", bounds_s=(-1.0, 1.0))
        >>> {k: v.tolist() for k, v in plan.table().items()}
        {'trial_num': [1, 2], 'start_time': [1.0, 4.0], 'stop_time': [2.9, 5.9], 'cue': [0.0, 0.0]}
        """
        centers = self.centers[self.keep]
        out: dict[str, NDArray[Any]] = {
            "trial_num": np.arange(1, self.n_trials + 1, dtype=np.int64),
            "start_time": centers + self.rel_time[0],
            "stop_time": centers + self.rel_time[-1],
        }
        out.update({k: v[self.keep] for k, v in self.event_offsets.items()})
        if self.align_label == ALIGNMENT_LABEL:
            out["align_event"] = self.align_event[self.keep]
        return out


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


def _validate_events(events: Mapping[str, ArrayLike]) -> dict[str, FloatArray]:
    if not isinstance(events, Mapping) or len(events) == 0:
        raise ValueError(
            f"events must be a non-empty mapping of event name to times, got {events!r}."
        )
    out: dict[str, FloatArray] = {}
    for name, times in events.items():
        if not isinstance(name, str):
            raise TypeError(f"event names must be str, got {name!r} ({type(name).__name__}).")
        if name in _RESERVED:
            raise ValueError(
                f"event name {name!r} is reserved for a trials-table column; rename the "
                f"event (reserved: {', '.join(_RESERVED)})."
            )
        t = validate_finite(np.asarray(times, dtype=np.float64), f"events[{name!r}]")
        if t.ndim != 1:
            raise ValueError(f"events[{name!r}] must be 1-D, got shape {t.shape}.")
        out[name] = np.sort(t, kind="stable")
    return out


def _validate_names(
    names: str | Sequence[str],
    arg: str,
    events: Mapping[str, FloatArray],
    *,
    allow_empty: bool,
) -> list[str]:
    listed = [names] if isinstance(names, str) else list(names)
    if not listed and not allow_empty:
        raise ValueError(f"{arg} must name at least one event, got {names!r}.")
    unknown = [n for n in listed if n not in events]
    if unknown:
        raise ValueError(
            f"{arg} names unknown event(s) {unknown}; available events: {list(events)}."
        )
    return list(dict.fromkeys(listed))


def _validate_tolerances(
    tolerances_s: Mapping[str, Sequence[float] | None] | None,
    events: Mapping[str, FloatArray],
    center_on: Sequence[str],
    bounds: Bounds,
    all_events: bool,
) -> dict[str, Bounds]:
    given = dict(tolerances_s or {})
    unknown = [n for n in given if n not in events]
    if unknown:
        raise ValueError(
            f"tolerances_s names unknown event(s) {unknown}; available events: {list(events)}."
        )
    out: dict[str, Bounds] = {}
    for name, tol in given.items():
        if tol is None:
            out[name] = bounds
            continue
        try:
            lo, hi = (float(b) for b in tol)
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"tolerances_s[{name!r}] must be a pair (lo, hi) of seconds or None, got {tol!r}."
            ) from e
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo > hi:
            raise ValueError(
                f"tolerances_s[{name!r}] must be finite with lo <= hi, got ({lo!r}, {hi!r})."
            )
        out[name] = (lo, hi)
    for name in events if all_events else center_on:
        out.setdefault(name, bounds)
    return out


def _describe(plan_times: FloatArray, names: NDArray[np.str_], i: int) -> str:
    return f"trial candidate {i + 1} ({names[i]!s} at {plan_times[i]:.6g} s)"


def plan_trials(
    time: ArrayLike,
    events: Mapping[str, ArrayLike],
    *,
    align_to: str | Sequence[str],
    bounds_s: Sequence[float],
    center_on: str | Sequence[str] = (),
    baseline_bounds_s: Sequence[float] | None = None,
    tolerances_s: Mapping[str, Sequence[float] | None] | None = None,
    normalization: TrialNormalization = "none",
    check_overlap: bool = True,
    all_events: bool = True,
    window_alignment: WindowAlignment = "nearest",
    invalid_window_policy: InvalidWindowPolicy = "drop",
    event_conflict: EventConflict = "first",
    fs: float | None = None,
) -> TrialPlan:
    """Plan event-aligned trials from the time axis and the event table alone.

    Parameters
    ----------
    time : array_like
        ``(N,)`` strictly increasing, uniformly spaced sample times, seconds.
    events : mapping of str to array_like
        Occurrence times of each event, seconds.
    align_to : str or sequence of str
        The alignment event(s); several names are pooled and sorted by time. Each
        occurrence is a candidate trial.
    bounds_s : tuple of float
        ``(lo, hi)``, the trial window around its centre, seconds; ``lo < hi``.
    center_on : str or sequence of str, default ()
        Events that move a trial's centre when found (later names win); otherwise the
        trial is centred on its alignment event. If an alignment name is listed, a trial
        aligned on it counts it as found at its own alignment time.
    baseline_bounds_s : tuple of float, optional
        ``(lo, hi)`` baseline window around the alignment time; needed by every
        normalisation but ``none``. When given, trials whose baseline window runs past the
        recording are invalid even with ``normalization='none'`` (as in PhoPro).
    tolerances_s : mapping of str to tuple of float or None, optional
        Per event, the ``(lo, hi)`` interval around the alignment time in which it is
        looked for (closed, clipped to the recording); None means ``bounds_s``. These
        events are always annotated.
    normalization : {'none', 'zscore', 'zero', 'mad', 'amp'}, default 'none'
        Per-trial normalisation against the baseline window.
    check_overlap : bool, default True
        Drop (and report in :attr:`TrialPlan.dropped`) the trials in which more than one
        ``center_on`` event was found. Only those trials: the others are kept.
    all_events : bool, default True
        Annotate every event (within ``bounds_s`` unless it has a tolerance); otherwise only
        the ``center_on`` events and those in ``tolerances_s``.
    window_alignment : {'nearest', 'interp'}, default 'nearest'
        ``nearest``: the centre snaps to the nearest sample (ties to the earlier) and the
        window takes ``round((hi - lo) * fs)`` samples from ``rint(lo * fs)`` samples
        away; ``interp``: values are interpolated linearly on ``lo + arange(n) / fs``
        around the exact centre.
    invalid_window_policy : {'drop', 'error'}, default 'drop'
        What to do with trials whose trial or baseline window runs past the recording.
    event_conflict : {'first', 'last', 'all', 'mean'}, default 'first'
        How several occurrences of an event in one trial's interval are resolved; ``all``
        adds columns ``<name>_occurrence_2``, ... The alignment event's own column always
        holds the trial's own alignment event.
    fs : float, optional
        Sampling rate, Hz; by default ``(N - 1) / (t_last - t_first)``. A given rate must
        agree with the time axis to 0.1 %.

    Returns
    -------
    TrialPlan
        The plan; ``plan.table()`` is the per-trial table.

    Raises
    ------
    ValueError
        If the time axis is not 1-D, finite and strictly increasing; ``events`` is empty;
        an alignment, centring or tolerance name is unknown (the message lists the
        available events); the alignment event never occurs; bounds have ``lo >= hi`` or
        are shorter than a sample; ``fs <= 0`` or disagrees with ``time``; a normalisation
        lacks ``baseline_bounds_s``; an option is not one of its choices; with
        ``invalid_window_policy='error'``, a window runs past the recording (the message
        names the trials); or no trial remains.

    See Also
    --------
    extract_trials : cut and normalise the planned windows out of a signal.
    trials : both steps on whole arrays.

    Examples
    --------
    >>> t = np.arange(200) / 10.0
    >>> plan = plan_trials(
    ...     t, {"cue": [2.0, 9.0, 19.5], "lever1": [3.0, 9.6], "lever2": [10.1]},
    ...     align_to="cue", center_on=["lever1", "lever2"], bounds_s=(-1.0, 1.0),
    ...     tolerances_s={"lever1": (0.0, 2.0), "lever2": (0.0, 2.0)},
    ... )
    >>> plan.n_trials
    1
    >>> for number, reason in plan.dropped.items():
    ...     print(number, reason)
    2 trial candidate 2 (cue at 9 s): center_on events found at lever1=9.6 s, lever2=10.1 s; dropped
    3 trial candidate 3 (cue at 19.5 s): its window runs past the recording [0, 19.9] s; dropped
    >>> {k: v.tolist() for k, v in plan.table().items()}  # doctest: +NORMALIZE_WHITESPACE
    {'trial_num': [1], 'start_time': [2.0], 'stop_time': [3.9], 'cue': [-1.0], 'lever1': [0.0],
     'lever2': [nan]}
    """
    t = _validate_time(time)
    rate = _validate_fs(fs, t)
    validate_choice(normalization, "normalization", _NORMALIZATIONS)
    validate_choice(window_alignment, "window_alignment", _ALIGNMENTS)
    validate_choice(invalid_window_policy, "invalid_window_policy", _POLICIES)
    validate_choice(event_conflict, "event_conflict", _CONFLICTS)
    ev = _validate_events(events)
    align_names = _validate_names(align_to, "align_to", ev, allow_empty=False)
    center_names = _validate_names(center_on, "center_on", ev, allow_empty=True)
    bounds = _validate_bounds(bounds_s, "bounds_s", rate)
    baseline_bounds = (
        None
        if baseline_bounds_s is None
        else _validate_bounds(baseline_bounds_s, "baseline_bounds_s", rate)
    )
    if normalization != "none" and baseline_bounds is None:
        raise ValueError(
            f"normalization {normalization!r} needs baseline_bounds_s (a (lo, hi) window "
            "around the alignment event); got None."
        )
    tolerances = _validate_tolerances(tolerances_s, ev, center_names, bounds, all_events)

    align_times, align_event, own_index = pool_alignments(ev, align_names)
    if align_times.size == 0:
        counts = {n: int(v.size) for n, v in ev.items()}
        raise ValueError(
            f"align_to event(s) {align_names} never occur; occurrences per available "
            f"event: {counts}."
        )
    n_cand = align_times.size
    own = {n: np.where(align_event == n, own_index, -1) for n in align_names}
    time_range = (float(t[0]), float(t[-1]))
    annotated = annotate_events(align_times, ev, tolerances, time_range, event_conflict, own=own)
    centers, found = center_trials(align_times, annotated, center_names)
    overlap = (found.sum(axis=1) > 1) if check_overlap else np.zeros(n_cand, dtype=np.bool_)

    # trial windows, and the window centres the event columns are offsets from
    fractions: FloatArray | None = None
    if window_alignment == "nearest":
        center_index, starts, invalid = nearest_windows(centers, t, bounds, rate)
        window_centers = t[center_index]
        rel_time = nearest_grid(bounds, rate)[1]

        def offsets(times: FloatArray) -> FloatArray:
            present = ~np.isnan(times)
            snapped = np.full(times.shape, np.nan)
            snapped[present] = t[snap_to_samples(times[present], t)]
            return snapped - window_centers

    else:
        starts, fractions, invalid = interp_windows(centers, t, bounds, rate)
        window_centers = centers
        rel_time = interp_grid(bounds, rate)

        def offsets(times: FloatArray) -> FloatArray:
            return times - window_centers

    invalid_baseline = np.zeros(n_cand, dtype=np.bool_)
    baseline_starts: IntArray | None = None
    baseline_fractions: FloatArray | None = None
    baseline_rel_time: FloatArray | None = None
    if baseline_bounds is not None:
        if window_alignment == "nearest":
            _, baseline_starts, invalid_baseline = nearest_windows(
                align_times, t, baseline_bounds, rate
            )
            baseline_rel_time = nearest_grid(baseline_bounds, rate)[1]
        else:
            baseline_starts, baseline_fractions, invalid_baseline = interp_windows(
                align_times, t, baseline_bounds, rate
            )
            baseline_rel_time = interp_grid(baseline_bounds, rate)

    # event columns: the alignment column first, then the annotated events (PhoPro's order)
    align_label = align_names[0] if len(align_names) == 1 else ALIGNMENT_LABEL
    columns: dict[str, FloatArray] = {align_label: offsets(align_times)}
    for name, values in annotated.items():
        columns[name] = offsets(values[:, 0])
        for k in range(1, values.shape[1]):
            columns[f"{name}_occurrence_{k + 1}"] = offsets(values[:, k])

    # what is dropped, and why
    dropped: dict[int, str] = {}
    for i in np.flatnonzero(overlap):
        which = ", ".join(
            f"{n}={annotated[n][i, 0]:.6g} s" for j, n in enumerate(center_names) if found[i, j]
        )
        dropped[int(i) + 1] = (
            f"{_describe(align_times, align_event, int(i))}: center_on events found at "
            f"{which}; dropped"
        )
    bad = (invalid | invalid_baseline) & ~overlap
    for i in np.flatnonzero(bad):
        what = "its window" if invalid[i] else "its baseline window"
        dropped[int(i) + 1] = (
            f"{_describe(align_times, align_event, int(i))}: {what} runs past the recording "
            f"[{time_range[0]:.6g}, {time_range[1]:.6g}] s; dropped"
        )
    if invalid_window_policy == "error" and bad.any():
        listed = "; ".join(
            dropped[int(i) + 1].removesuffix("; dropped") for i in np.flatnonzero(bad)
        )
        raise ValueError(
            f"invalid_window_policy is 'error' and {int(bad.sum())} trial(s) have windows "
            f"past the recording: {listed}. Use invalid_window_policy='drop' to drop them."
        )
    keep = ~(invalid | invalid_baseline | overlap)
    if not keep.any():
        raise ValueError(
            f"no trials remain out of {n_cand} candidate(s): "
            + "; ".join(dropped[k] for k in sorted(dropped))
            + "."
        )

    windows = WindowSet(
        starts=_frozen(starts[keep]),
        length=rel_time.size,
        rel_time=_frozen(rel_time),
        fractions=None if fractions is None else _frozen(fractions[keep]),
    )
    baseline = None
    if baseline_starts is not None and baseline_rel_time is not None:
        baseline = WindowSet(
            starts=_frozen(baseline_starts[keep]),
            length=baseline_rel_time.size,
            rel_time=_frozen(baseline_rel_time),
            fractions=None if baseline_fractions is None else _frozen(baseline_fractions[keep]),
        )
    return TrialPlan(
        fs=rate,
        n_time=int(t.size),
        time_range=time_range,
        window_alignment=window_alignment,
        normalization=normalization,
        align_label=align_label,
        align_times=_frozen(align_times),
        align_event=_frozen(align_event),
        centers=_frozen(np.asarray(window_centers, dtype=np.float64)),
        invalid_window=_frozen(invalid | invalid_baseline),
        overlap=_frozen(overlap),
        keep=_frozen(keep),
        event_offsets=MappingProxyType({k: _frozen(v) for k, v in columns.items()}),
        windows=windows,
        baseline=baseline,
        dropped=MappingProxyType(dropped),
    )


def _cut(x: NDArray[Any], windows: WindowSet) -> NDArray[Any]:
    if windows.fractions is None:
        return gather_windows(x, windows.starts, windows.length)
    return interpolate_windows(x, windows.starts, windows.fractions, windows.length)


def extract_trials(signal: ArrayLike, plan: TrialPlan, *, axis: int = 0) -> NDArray[Any]:
    """Cut the planned trial windows out of a whole signal and normalise them.

    Parameters
    ----------
    signal : array_like
        The signal, ``plan.n_time`` samples along ``axis``; finite.
    plan : TrialPlan
        From :func:`plan_trials` on the signal's time axis.
    axis : int, default 0
        The time axis of ``signal``.

    Returns
    -------
    numpy.ndarray
        ``(plan.n_trials, len(plan.rel_time), *other axes)``.

    Raises
    ------
    ValueError
        If the signal holds NaN or infinity, or its length is not ``plan.n_time``.

    Examples
    --------
    >>> t = np.arange(20) / 10.0
    >>> plan = plan_trials(t, {"cue": [0.5, 1.2]}, align_to="cue", bounds_s=(-0.2, 0.2))
    >>> extract_trials(np.arange(20.0), plan)
    array([[ 3.,  4.,  5.,  6.],
           [10., 11., 12., 13.]])
    """
    x = np.moveaxis(validate_finite(signal, "signal"), _validate_axis(axis, np.ndim(signal)), 0)
    if x.shape[0] != plan.n_time:
        raise ValueError(
            f"signal must have plan.n_time = {plan.n_time} samples along axis {axis} "
            f"(the time axis the plan was made from), got {x.shape[0]}."
        )
    windows = _cut(x, plan.windows)
    if plan.baseline is None or plan.normalization == "none":
        return windows
    return normalize_windows(windows, _cut(x, plan.baseline), plan.normalization)


@dataclass(frozen=True)
class Trials:
    """Trials cut from one recording.

    Attributes
    ----------
    data : numpy.ndarray
        ``(n_trials, len(rel_time), *other axes)`` windows, normalised.
    rel_time : numpy.ndarray
        The relative time grid, seconds.
    table : dict of str to numpy.ndarray
        The per-trial columns, see :meth:`TrialPlan.table`.
    plan : TrialPlan
        The plan the trials were cut by (dropped trials and why, flags, windows).
    """

    data: NDArray[Any]
    rel_time: FloatArray
    table: dict[str, NDArray[Any]]
    plan: TrialPlan


def trials(
    signal: ArrayLike,
    time: ArrayLike,
    events: Mapping[str, ArrayLike],
    *,
    align_to: str | Sequence[str],
    bounds_s: Sequence[float],
    center_on: str | Sequence[str] = (),
    baseline_bounds_s: Sequence[float] | None = None,
    tolerances_s: Mapping[str, Sequence[float] | None] | None = None,
    normalization: TrialNormalization = "none",
    check_overlap: bool = True,
    all_events: bool = True,
    window_alignment: WindowAlignment = "nearest",
    invalid_window_policy: InvalidWindowPolicy = "drop",
    event_conflict: EventConflict = "first",
    fs: float | None = None,
    axis: int = 0,
) -> Trials:
    """Cut event-aligned, normalised trials out of a whole recording.

    :func:`plan_trials` then :func:`extract_trials`; the parameters are theirs.

    Parameters
    ----------
    signal : array_like
        The signal; time along ``axis``; finite.
    time : array_like
        ``(N,)`` sample times, seconds.
    events : mapping of str to array_like
        Occurrence times of each event, seconds.
    align_to, bounds_s, center_on, baseline_bounds_s, tolerances_s : see plan_trials
        Which trials, and their windows.
    normalization, check_overlap, all_events, window_alignment : see plan_trials
        Options of the plan.
    invalid_window_policy, event_conflict, fs : see plan_trials
        Options of the plan.
    axis : int, default 0
        The time axis of ``signal``.

    Returns
    -------
    Trials
        Windows, relative time grid, per-trial table and the plan.

    Raises
    ------
    ValueError
        If ``signal`` and ``time`` differ in length or ``signal`` is not finite, and as
        :func:`plan_trials`.

    See Also
    --------
    neurobatch.engine.blocked.extract_trials : the same on a chunked dask array.

    Examples
    --------
    >>> t = np.arange(100) / 10.0
    >>> signal = np.sin(t)
    >>> result = trials(
    ...     signal, t, {"cue": [2.0, 6.0]}, align_to="cue", bounds_s=(-0.5, 1.0),
    ...     baseline_bounds_s=(-0.5, 0.0), normalization="zscore",
    ... )
    >>> result.data.shape, result.table["trial_num"].tolist()
    ((2, 15), [1, 2])
    >>> trials(signal, t[:50], {"cue": [2.0]}, align_to="cue", bounds_s=(-1, 1))
    Traceback (most recent call last):
    ...
    ValueError: signal and time must have the same length along axis 0, got 100 and 50.
    >>> trials(signal, t, {"cue": [2.0]}, align_to="tone", bounds_s=(-1, 1))
    Traceback (most recent call last):
    ...
    ValueError: align_to names unknown event(s) ['tone']; available events: ['cue'].
    """
    x = validate_finite(signal, "signal")
    ax = _validate_axis(axis, x.ndim)
    t = np.asarray(time)
    validate_same_length(signal=np.moveaxis(x, ax, 0), time=t)
    plan = plan_trials(
        t,
        events,
        align_to=align_to,
        bounds_s=bounds_s,
        center_on=center_on,
        baseline_bounds_s=baseline_bounds_s,
        tolerances_s=tolerances_s,
        normalization=normalization,
        check_overlap=check_overlap,
        all_events=all_events,
        window_alignment=window_alignment,
        invalid_window_policy=invalid_window_policy,
        event_conflict=event_conflict,
        fs=fs,
    )
    data = extract_trials(x, plan, axis=ax)
    return Trials(data=data, rel_time=plan.rel_time, table=plan.table(), plan=plan)


def _validate_axis(axis: int, ndim: int) -> int:
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis must be in [{-ndim}, {ndim}) for a {ndim}-D signal, got {axis}.")
    return axis % ndim


def validate_starts(
    starts: ArrayLike, length: int, n_time: int, *, require_sorted: bool = False
) -> IntArray:
    """Return window start indices as int64, or raise if a window would not fit.

    Parameters
    ----------
    starts : array_like
        ``(n_windows,)`` integer start indices.
    length : int
        Samples each window reads, ``>= 1``.
    n_time : int
        Samples along the time axis.
    require_sorted : bool, default False
        Also require non-decreasing starts (blocked gathers group windows by block).

    Returns
    -------
    numpy.ndarray
        ``(n_windows,)`` int64.

    Raises
    ------
    ValueError
        If ``length < 1``, ``starts`` is not 1-D, a window runs past either end, or (with
        ``require_sorted``) the starts decrease.
    TypeError
        If ``starts`` does not hold integers.

    Examples
    --------
    >>> validate_starts([0, 8], 3, 10)
    Traceback (most recent call last):
    ...
    ValueError: starts must lie in [0, 7] for windows of 3 samples in 10, got 8.
    """
    if isinstance(length, bool) or int(length) != length or length < 1:
        raise ValueError(f"length must be a positive integer, got {length!r}.")
    s = np.asarray(starts)
    if s.ndim != 1:
        raise ValueError(f"starts must be 1-D, got shape {s.shape}.")
    if s.size and s.dtype.kind not in "iu":
        raise TypeError(f"starts must hold integers, got dtype {s.dtype}.")
    s = s.astype(np.int64, copy=False)
    out_of_range = (s < 0) | (s + length > n_time)
    if out_of_range.any():
        raise ValueError(
            f"starts must lie in [0, {n_time - length}] for windows of {length} samples in "
            f"{n_time}, got {int(s[out_of_range][0])}."
        )
    if require_sorted and s.size > 1 and (np.diff(s) < 0).any():
        i = int(np.flatnonzero(np.diff(s) < 0)[0])
        raise ValueError(
            f"starts must be sorted (non-decreasing), got starts[{i}] = {int(s[i])} before "
            f"starts[{i + 1}] = {int(s[i + 1])}."
        )
    return s
