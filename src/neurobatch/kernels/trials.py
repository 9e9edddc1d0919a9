"""Trial planning: which trials, where their windows lie, and the per-trial table.

Trial extraction runs in two stages, so that the large signal is touched by one simple step:

1. :func:`plan_trials` decides everything that follows from the (small) event table and
   time axis: the candidate trials (one per alignment event), the events found around each
   (:mod:`neurobatch.kernels.events`), the window centres, the start index of every trial
   and baseline window (:mod:`neurobatch.kernels.grids`), which windows run past the
   recording, which trials are dropped and why, and the per-trial table. It returns a
   frozen :class:`TrialPlan`.
2. :func:`~neurobatch.kernels.windows.extract_trials` cuts the windows out of the signal at
   the planned start indices and normalises them against their baseline windows, with the
   kernels of :mod:`neurobatch.kernels.windows`. The dask engine runs exactly these kernels
   block by block.

:func:`~neurobatch.kernels.windows.trials` does both stages on whole NumPy arrays; it is
the reference the engine is tested against.

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

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from neurobatch.kernels._validation import validate_choice
from neurobatch.kernels.events import (
    _CONFLICTS,
    ALIGNMENT_LABEL,
    EventConflict,
    _validate_events,
    _validate_names,
    _validate_tolerances,
    annotate_events,
    center_trials,
    pool_alignments,
)
from neurobatch.kernels.grids import (
    BoolArray,
    Bounds,
    FloatArray,
    IntArray,
    _validate_bounds,
    _validate_fs,
    _validate_time,
    interp_grid,
    interp_windows,
    nearest_grid,
    nearest_windows,
    snap_to_samples,
)

__all__ = [
    "InvalidWindowPolicy",
    "TrialNormalization",
    "TrialPlan",
    "WindowAlignment",
    "WindowSet",
    "plan_trials",
]

TrialNormalization = Literal["none", "zscore", "zero", "mad", "amp"]
WindowAlignment = Literal["nearest", "interp"]
InvalidWindowPolicy = Literal["drop", "error"]

_NORMALIZATIONS: tuple[str, ...] = ("none", "zscore", "zero", "mad", "amp")
_ALIGNMENTS: tuple[str, ...] = ("nearest", "interp")
_POLICIES: tuple[str, ...] = ("drop", "error")


def _frozen(a: NDArray[Any]) -> NDArray[Any]:
    """Return ``a`` marked read-only, so a frozen plan cannot be changed in place."""
    a.flags.writeable = False
    return a


# --- the plan ----------------------------------------------------------------------------


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


def _describe(plan_times: FloatArray, names: NDArray[np.str_], i: int) -> str:
    return f"trial candidate {i + 1} ({names[i]!s} at {plan_times[i]:.6g} s)"


@dataclass(frozen=True)
class _Placement:
    """Where a set of candidate windows lies: starts, fractions (``interp`` only), which run
    past the recording, the centres event offsets are measured from, the relative grid."""

    starts: IntArray
    fractions: FloatArray | None
    invalid: BoolArray
    centers: FloatArray
    rel_time: FloatArray


def _place_windows(
    centers: FloatArray,
    time: FloatArray,
    bounds: Bounds,
    fs: float,
    window_alignment: WindowAlignment,
) -> _Placement:
    """Place one window per centre: snapped (``nearest``) or interpolated (``interp``)."""
    if window_alignment == "nearest":
        center_index, starts, invalid = nearest_windows(centers, time, bounds, fs)
        rel_time = nearest_grid(bounds, fs)[1]
        return _Placement(starts, None, invalid, time[center_index], rel_time)
    starts, fractions, invalid = interp_windows(centers, time, bounds, fs)
    return _Placement(starts, fractions, invalid, centers, interp_grid(bounds, fs))


def _offsets(
    times: FloatArray,
    time: FloatArray,
    window_centers: FloatArray,
    window_alignment: WindowAlignment,
) -> FloatArray:
    """Event times minus window centres; snapped to samples for ``nearest``; NaN stays."""
    if window_alignment == "nearest":
        present = ~np.isnan(times)
        snapped = np.full(times.shape, np.nan)
        snapped[present] = time[snap_to_samples(times[present], time)]
        return snapped - window_centers
    return times - window_centers


def _pool_candidates(
    events: Mapping[str, FloatArray], align_names: Sequence[str]
) -> tuple[FloatArray, NDArray[np.str_], IntArray]:
    """:func:`pool_alignments`, or raise if the alignment events never occur."""
    align_times, align_event, own_index = pool_alignments(events, align_names)
    if align_times.size == 0:
        counts = {n: int(v.size) for n, v in events.items()}
        raise ValueError(
            f"align_to event(s) {align_names} never occur; occurrences per available "
            f"event: {counts}."
        )
    return align_times, align_event, own_index


def _event_columns(
    align_label: str,
    align_times: FloatArray,
    annotated: Mapping[str, FloatArray],
    offsets: Callable[[FloatArray], FloatArray],
) -> dict[str, FloatArray]:
    """The event columns: the alignment column first, then every annotated occurrence."""
    columns: dict[str, FloatArray] = {align_label: offsets(align_times)}
    for name, values in annotated.items():
        columns[name] = offsets(values[:, 0])
        for k in range(1, values.shape[1]):
            columns[f"{name}_occurrence_{k + 1}"] = offsets(values[:, k])
    return columns


def _overlap_reasons(
    align_times: FloatArray,
    align_event: NDArray[np.str_],
    annotated: Mapping[str, FloatArray],
    center_names: Sequence[str],
    found: BoolArray,
    overlap: BoolArray,
) -> dict[int, str]:
    """Why each overlapping candidate is dropped, by candidate number (1-based)."""
    dropped: dict[int, str] = {}
    for i in np.flatnonzero(overlap):
        which = ", ".join(
            f"{n}={annotated[n][i, 0]:.6g} s" for j, n in enumerate(center_names) if found[i, j]
        )
        dropped[int(i) + 1] = (
            f"{_describe(align_times, align_event, int(i))}: center_on events found at "
            f"{which}; dropped"
        )
    return dropped


def _invalid_reasons(
    align_times: FloatArray,
    align_event: NDArray[np.str_],
    invalid: BoolArray,
    bad: BoolArray,
    time_range: Bounds,
) -> dict[int, str]:
    """Why each ``bad`` candidate (a window past the recording) is dropped, by number."""
    dropped: dict[int, str] = {}
    for i in np.flatnonzero(bad):
        what = "its window" if invalid[i] else "its baseline window"
        dropped[int(i) + 1] = (
            f"{_describe(align_times, align_event, int(i))}: {what} runs past the recording "
            f"[{time_range[0]:.6g}, {time_range[1]:.6g}] s; dropped"
        )
    return dropped


def _check_remaining(
    dropped: Mapping[int, str], bad: BoolArray, keep: BoolArray, policy: InvalidWindowPolicy
) -> None:
    """Raise if windows past the recording are an error (``policy``) or no trial remains."""
    if policy == "error" and bad.any():
        listed = "; ".join(
            dropped[int(i) + 1].removesuffix("; dropped") for i in np.flatnonzero(bad)
        )
        raise ValueError(
            f"invalid_window_policy is 'error' and {int(bad.sum())} trial(s) have windows "
            f"past the recording: {listed}. Use invalid_window_policy='drop' to drop them."
        )
    if not keep.any():
        raise ValueError(
            f"no trials remain out of {keep.size} candidate(s): "
            + "; ".join(dropped[k] for k in sorted(dropped))
            + "."
        )


def _kept_windows(placed: _Placement, keep: BoolArray) -> WindowSet:
    """The :class:`WindowSet` of the kept candidates' windows, read-only."""
    return WindowSet(
        starts=_frozen(placed.starts[keep]),
        length=placed.rel_time.size,
        rel_time=_frozen(placed.rel_time),
        fractions=None if placed.fractions is None else _frozen(placed.fractions[keep]),
    )


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
    neurobatch.kernels.windows.extract_trials : cut and normalise the planned windows out of
        a signal.
    neurobatch.kernels.windows.trials : both steps on whole arrays.

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

    align_times, align_event, own_index = _pool_candidates(ev, align_names)
    n_cand = align_times.size
    own = {n: np.where(align_event == n, own_index, -1) for n in align_names}
    time_range = (float(t[0]), float(t[-1]))
    annotated = annotate_events(align_times, ev, tolerances, time_range, event_conflict, own=own)
    centers, found = center_trials(align_times, annotated, center_names)
    overlap = (found.sum(axis=1) > 1) if check_overlap else np.zeros(n_cand, dtype=np.bool_)

    # trial windows, and the window centres the event columns are offsets from
    trial = _place_windows(centers, t, bounds, rate, window_alignment)
    base = (
        None
        if baseline_bounds is None
        else _place_windows(align_times, t, baseline_bounds, rate, window_alignment)
    )
    invalid = trial.invalid
    invalid_baseline = np.zeros(n_cand, dtype=np.bool_) if base is None else base.invalid

    # event columns: the alignment column first, then the annotated events (PhoPro's order)
    align_label = align_names[0] if len(align_names) == 1 else ALIGNMENT_LABEL
    columns = _event_columns(
        align_label,
        align_times,
        annotated,
        lambda times: _offsets(times, t, trial.centers, window_alignment),
    )

    # what is dropped, and why
    bad = (invalid | invalid_baseline) & ~overlap
    dropped = _overlap_reasons(
        align_times, align_event, annotated, center_names, found, overlap
    ) | _invalid_reasons(align_times, align_event, invalid, bad, time_range)
    keep = ~(invalid | invalid_baseline | overlap)
    _check_remaining(dropped, bad, keep, invalid_window_policy)

    return TrialPlan(
        fs=rate,
        n_time=int(t.size),
        time_range=time_range,
        window_alignment=window_alignment,
        normalization=normalization,
        align_label=align_label,
        align_times=_frozen(align_times),
        align_event=_frozen(align_event),
        centers=_frozen(np.asarray(trial.centers, dtype=np.float64)),
        invalid_window=_frozen(invalid | invalid_baseline),
        overlap=_frozen(overlap),
        keep=_frozen(keep),
        event_offsets=MappingProxyType({k: _frozen(v) for k, v in columns.items()}),
        windows=_kept_windows(trial, keep),
        baseline=None if base is None else _kept_windows(base, keep),
        dropped=MappingProxyType(dropped),
    )
