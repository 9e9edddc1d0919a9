"""Trial windows: gathering them out of a signal, interpolating, baseline normalisation.

The part of trial extraction that touches the large signal: cut windows of ``length``
samples at planned start indices (:func:`gather_windows`, or :func:`interpolate_windows`
at fractional positions), from whole arrays or from the consecutive pieces a blocked task
holds (:func:`windows_from_pieces`), then normalise them against their baseline windows
(:func:`baseline_statistics` then :func:`apply_normalization`). The start indices come
from :func:`neurobatch.kernels.trials.plan_trials`, as
:class:`~neurobatch.kernels.trials.WindowSet` objects.

:func:`extract_trials` does that for a whole signal and a
:class:`~neurobatch.kernels.trials.TrialPlan`; :func:`trials` plans and extracts on whole
NumPy arrays: the reference the dask engine is tested against.

Layout: the signal's time axis is ``axis`` (0 by default); windows come out as
``(n_windows, length, *other axes)``, the other axes in their original order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
from numpy.typing import ArrayLike, NDArray

from neurobatch.kernels._validation import validate_choice, validate_finite, validate_same_length
from neurobatch.kernels.events import EventConflict
from neurobatch.kernels.grids import FloatArray, IntArray
from neurobatch.kernels.trials import (
    _NORMALIZATIONS,
    InvalidWindowPolicy,
    TrialNormalization,
    TrialPlan,
    WindowAlignment,
    WindowSet,
    plan_trials,
)

__all__ = [
    "MAD_SCALE",
    "Trials",
    "apply_normalization",
    "baseline_statistics",
    "extract_trials",
    "gather_windows",
    "interpolate_windows",
    "normalize_windows",
    "trials",
    "validate_starts",
    "windows_from_pieces",
]

#: Scale that makes the median absolute deviation a consistent estimator of the standard
#: deviation of normal data.
MAD_SCALE = 1.4826


# --- gather ------------------------------------------------------------------------------


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


# --- normalise ---------------------------------------------------------------------------


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


# --- whole arrays ------------------------------------------------------------------------


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
