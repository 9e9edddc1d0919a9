"""Trial events: validating the event table, finding events around each trial, centring.

Each occurrence of an alignment event is a candidate trial (:func:`pool_alignments`); each
trial looks for every annotated event within its tolerance (:func:`annotate_events`,
resolving several occurrences by :func:`resolve_conflicts`) and may move its centre to the
``center_on`` events it found (:func:`center_trials`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from neurobatch.kernels._validation import validate_finite
from neurobatch.kernels.grids import BoolArray, Bounds, FloatArray, IntArray

__all__ = [
    "ALIGNMENT_LABEL",
    "EventConflict",
    "annotate_events",
    "center_trials",
    "pool_alignments",
    "resolve_conflicts",
]

EventConflict = Literal["first", "last", "all", "mean"]

_CONFLICTS: tuple[str, ...] = ("first", "last", "all", "mean")

#: Column of the offset of each trial's own alignment event when ``align_to`` pools several
#: event names (PhoPro's name); with a single name, that name is the column.
ALIGNMENT_LABEL = "ALIGNMENTS"


_RESERVED = ("trial_num", "start_time", "stop_time", "align_event", ALIGNMENT_LABEL)


# --- event annotation --------------------------------------------------------------------


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


# --- centring ----------------------------------------------------------------------------


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


# --- validation --------------------------------------------------------------------------


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
