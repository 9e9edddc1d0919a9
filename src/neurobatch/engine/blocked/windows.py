"""Trial windows of chunked signals: blocked gathers and baseline normalisation.

See :mod:`neurobatch.kernels.windows` for the kernels.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any, cast

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph
from numpy.typing import ArrayLike, NDArray

from neurobatch.kernels import trials as trial_kernels
from neurobatch.kernels import windows as window_kernels

logger = logging.getLogger(__name__)


def _time_first(x: da.Array | ArrayLike, axis: int) -> da.Array:
    """Return ``x`` as a dask array with its time axis first."""
    arr = x if isinstance(x, da.Array) else da.asarray(x)
    if not -arr.ndim <= axis < arr.ndim:
        raise ValueError(
            f"axis must be in [{-arr.ndim}, {arr.ndim}) for a {arr.ndim}-D signal, got {axis}."
        )
    axis %= arr.ndim
    return arr if axis == 0 else da.moveaxis(arr, axis, 0)


def _blocked_windows(
    x: da.Array,
    starts: NDArray[np.int64],
    fractions: NDArray[np.float64] | None,
    length: int,
    operation: str,
) -> da.Array:
    """Build the gather graph: one task per source block holding window starts.

    ``x`` has time first; ``starts`` are sorted and in range. The windows starting in block
    ``b`` are cut from block ``b`` extended to the right by the samples they need (up to
    ``span - 1``), taken from as many following chunks as that reaches: a one-sided overlap
    that spans several neighbours when chunks are shorter than a window, without rechunking.
    Each task is the kernel :func:`~neurobatch.kernels.windows.windows_from_pieces`, so a
    worker runs it importing only NumPy and that kernel module, not the engine.
    """
    span = length + (0 if fractions is None else 1)
    dtype = x.dtype if fractions is None else np.result_type(x.dtype, np.float64)
    trailing = x.chunks[1:]
    meta = np.empty((0,) * (x.ndim + 1), dtype=dtype)
    if starts.size == 0:
        return da.empty((0, length, *x.shape[1:]), chunks=((0,), (length,), *trailing), dtype=dtype)
    offsets = np.cumsum((0, *x.chunks[0]))
    first_block = np.searchsorted(offsets, starts, side="right") - 1
    edges = [0, *(np.flatnonzero(np.diff(first_block)) + 1).tolist(), starts.size]
    name = f"{operation}-{tokenize(x, starts, fractions, length)}"
    dsk: dict[Any, Any] = {}
    counts: list[int] = []
    reach = 0
    for g, (i0, i1) in enumerate(itertools.pairwise(edges)):
        b = int(first_block[i0])
        lo, hi = int(starts[i0]), int(starts[i1 - 1]) + span
        e = int(np.searchsorted(offsets, hi - 1, side="right")) - 1
        cuts = np.array(
            [
                [max(lo - offsets[c], 0), min(hi, offsets[c + 1]) - offsets[c]]
                for c in range(b, e + 1)
            ],
            dtype=np.int64,
        )
        local = starts[i0:i1] - lo
        frac = None if fractions is None else fractions[i0:i1]
        for j in itertools.product(*(range(len(c)) for c in trailing)):
            sources = [(x.name, c, *j) for c in range(b, e + 1)]
            dsk[(name, g, 0, *j)] = (
                window_kernels.windows_from_pieces,
                length,
                local,
                frac,
                cuts,
                *sources,
            )
        counts.append(i1 - i0)
        reach = max(reach, e - b)
    logger.debug(
        "%s: %d windows of %d samples from %d of %d blocks, reaching up to %d block(s) ahead",
        operation,
        starts.size,
        span,
        len(counts),
        len(x.chunks[0]),
        reach,
    )
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[cast(Any, x)])
    return da.Array(graph, name, chunks=(tuple(counts), (length,), *trailing), meta=meta)


def gather_windows(
    x: da.Array | ArrayLike, starts: ArrayLike, length: int, *, axis: int = 0
) -> da.Array:
    """Cut windows of ``length`` samples out of a chunked signal, one task per block.

    Each window is cut from the block holding its start, extended to the right by the
    ``length - 1`` samples it may need from the following chunk(s): a one-sided overlap
    that spans as many neighbours as it must, so chunks shorter than a window work
    unchanged (no rechunking), and a thousand windows make one task per block, not a
    thousand slicing tasks. Blocks holding no window start make no task.

    Parameters
    ----------
    x : dask.array.Array or array_like
        The signal; time along ``axis``, chunked along it (other axes may be chunked too).
    starts : array_like
        ``(n_windows,)`` integer start indices, sorted (non-decreasing),
        ``0 <= start <= N - length``.
    length : int
        Samples per window, ``>= 1``.
    axis : int, default 0
        The time axis of ``x``.

    Returns
    -------
    dask.array.Array
        ``(n_windows, length, *other axes)``, lazily, ``x``'s dtype; along the window axis
        one chunk per source block that holds starts, in window order; the other axes keep
        ``x``'s chunks. Equal to ``x[starts[:, None] + arange(length)]`` (time first).

    Raises
    ------
    ValueError
        If ``starts`` is not sorted, a window runs past either end, ``length < 1`` or
        ``axis`` is out of range.
    TypeError
        If ``starts`` does not hold integers.

    See Also
    --------
    neurobatch.kernels.windows.gather_windows : the whole-array kernel.

    Examples
    --------
    >>> import dask.array as da
    >>> x = da.arange(12, chunks=4)
    >>> w = gather_windows(x, [0, 2, 5, 9], 3)
    >>> w.chunks
    ((2, 1, 1), (3,))
    >>> w.compute()
    array([[ 0,  1,  2],
           [ 2,  3,  4],
           [ 5,  6,  7],
           [ 9, 10, 11]])
    """
    xt = _time_first(x, axis)
    s = window_kernels.validate_starts(starts, length, xt.shape[0], require_sorted=True)
    return _blocked_windows(xt, s, None, length, "gather-windows")


def interpolate_windows(
    x: da.Array | ArrayLike,
    starts: ArrayLike,
    fractions: ArrayLike,
    length: int,
    *,
    axis: int = 0,
) -> da.Array:
    """Interpolate windows at fractional positions out of a chunked signal.

    Like :func:`gather_windows` with a one-sided overlap of ``length`` samples (each
    window reads ``length + 1``); value ``k`` of window ``i`` is ``w0 + f * (w1 - w0)``
    with ``w0 = x[starts[i] + k]``, ``w1`` the next sample and ``f = fractions[i]``.

    Parameters
    ----------
    x : dask.array.Array or array_like
        The signal; time along ``axis``.
    starts : array_like
        ``(n_windows,)`` sorted integer starts, ``0 <= start <= N - length - 1``.
    fractions : array_like
        ``(n_windows,)`` fractions of a sample past each start.
    length : int
        Values per window, ``>= 1``.
    axis : int, default 0
        The time axis of ``x``.

    Returns
    -------
    dask.array.Array
        ``(n_windows, length, *other axes)``, lazily, at least float64; equal to
        :func:`neurobatch.kernels.windows.interpolate_windows` on the whole array.

    Raises
    ------
    ValueError
        As :func:`gather_windows`, or if ``fractions`` does not match ``starts``.
    TypeError
        If ``starts`` does not hold integers.

    Examples
    --------
    >>> import dask.array as da
    >>> x = da.from_array(np.arange(8.0) ** 2, chunks=3)
    >>> interpolate_windows(x, [1, 4], [0.5, 0.25], 2).compute()
    array([[ 2.5 ,  6.5 ],
           [18.25, 27.75]])
    """
    xt = _time_first(x, axis)
    s = window_kernels.validate_starts(starts, length + 1, xt.shape[0], require_sorted=True)
    f = np.asarray(fractions, dtype=np.float64)
    if f.shape != s.shape:
        raise ValueError(f"fractions must have shape {s.shape} like starts, got {f.shape}.")
    return _blocked_windows(xt, s, f, length, "interpolate-windows")


def _planned_windows(x: da.Array, windows: trial_kernels.WindowSet, operation: str) -> da.Array:
    """Gather a plan's windows in plan order (sorting the starts, then undoing the sort)."""
    order = np.argsort(windows.starts, kind="stable")
    fractions = None if windows.fractions is None else windows.fractions[order]
    out = _blocked_windows(x, windows.starts[order], fractions, windows.length, operation)
    if (order == np.arange(order.size)).all():
        return out
    logger.debug("%s: re-centring reordered the windows; restoring trial order", operation)
    inverse = np.empty_like(order)
    inverse[order] = np.arange(order.size)
    return out[inverse]


def extract_trials(
    x: da.Array | ArrayLike, plan: trial_kernels.TrialPlan, *, axis: int = 0
) -> da.Array:
    """Cut and normalise a plan's trial windows out of a chunked signal, lazily.

    The trial windows and the baseline windows are both blocked gathers
    (:func:`gather_windows`, or :func:`interpolate_windows` for ``interp`` plans). The
    baseline statistics of each trial (:func:`~neurobatch.kernels.windows.baseline_statistics`)
    are computed per baseline block, moved to the trial windows' blocks and applied there
    (:func:`~neurobatch.kernels.windows.apply_normalization`): the result equals
    :func:`neurobatch.kernels.windows.extract_trials` on the whole array exactly.

    Parameters
    ----------
    x : dask.array.Array or array_like
        The signal, ``plan.n_time`` samples along ``axis``. It is not checked for NaN
        (that would compute it); the plan's kernels propagate NaN.
    plan : neurobatch.kernels.trials.TrialPlan
        From :func:`neurobatch.kernels.trials.plan_trials` on the signal's time axis.
    axis : int, default 0
        The time axis of ``x``.

    Returns
    -------
    dask.array.Array
        ``(plan.n_trials, len(plan.rel_time), *other axes)``, lazily, in trial order.

    Raises
    ------
    ValueError
        If ``x`` does not have ``plan.n_time`` samples along ``axis``.

    Examples
    --------
    >>> import dask.array as da
    >>> from neurobatch.kernels import trials
    >>> t = np.arange(40) / 10.0
    >>> plan = trials.plan_trials(
    ...     t, {"cue": [1.0, 2.5]}, align_to="cue", bounds_s=(-0.2, 0.3),
    ...     baseline_bounds_s=(-0.5, 0.0), normalization="zero",
    ... )
    >>> x = da.from_array(np.arange(40.0), chunks=7)
    >>> extract_trials(x, plan).compute()
    array([[1., 2., 3., 4., 5.],
           [1., 2., 3., 4., 5.]])
    """
    xt = _time_first(x, axis)
    if xt.shape[0] != plan.n_time:
        raise ValueError(
            f"x must have plan.n_time = {plan.n_time} samples along axis {axis} (the time "
            f"axis the plan was made from), got {xt.shape[0]}."
        )
    windows = _planned_windows(xt, plan.windows, "trial-windows")
    if plan.baseline is None or plan.normalization == "none":
        return windows
    method = plan.normalization
    baseline = _planned_windows(xt, plan.baseline, "baseline-windows")
    ones = (1,) * (xt.ndim - 1)
    stats_dtype = window_kernels.baseline_statistics(
        np.ones((1, 2, *ones), dtype=baseline.dtype), method
    ).dtype
    stats = da.map_blocks(
        window_kernels.baseline_statistics,
        baseline,
        method,
        chunks=(baseline.chunks[0], (2,), *baseline.chunks[2:]),
        dtype=stats_dtype,
        meta=np.empty((0,) * baseline.ndim, dtype=stats_dtype),
    ).rechunk({0: windows.chunks[0]})
    out_dtype = window_kernels.apply_normalization(
        np.ones((1, 1, *ones), dtype=windows.dtype), np.ones((1, 2, *ones), stats_dtype), method
    ).dtype
    other = "".join(chr(ord("c") + i) for i in range(xt.ndim - 1))
    return da.blockwise(
        window_kernels.apply_normalization,
        "tw" + other,
        windows,
        "tw" + other,
        stats,
        "ts" + other,
        method,
        None,
        dtype=out_dtype,
        concatenate=True,
        meta=np.empty((0,) * windows.ndim, dtype=out_dtype),
    )
