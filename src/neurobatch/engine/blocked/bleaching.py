"""Photobleaching fits over chunked signals: the strided medians block by block.

See :mod:`neurobatch.kernels.bleaching` and :mod:`neurobatch.kernels.detrend` for the
kernels. Only the strided median reads the
whole signal: each output block holds the medians of the windows that start in one input
chunk, computed by one task from the chunks those windows cover. The fit itself runs on
the reduced series (one point every ``stride`` samples) exactly as the kernel does, so the
curve equals the whole-array fit's bit for bit; its R² is one tree reduction of
co-moments. The detrend-retrend references are elementwise in the channels and the
curves, so they stay lazy with the signal's chunks.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any, cast

import dask.array as da
import dask.base
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph
from numpy.typing import ArrayLike, NDArray

from neurobatch.engine.blocked.fitting import (
    _channel,
    _fit_channels,
    _fit_reducer,
    _persisted_blocks,
)
from neurobatch.engine.blocked.fitting import fit_irls as blocked_fit_irls
from neurobatch.kernels import bleaching, detrend
from neurobatch.kernels._validation import validate_finite
from neurobatch.kernels.bleaching import BleachingFit
from neurobatch.kernels.detrend import DetrendFit, DetrendMethod

logger = logging.getLogger(__name__)

__all__ = ["fit_bleaching", "fit_detrend", "fitted_reference", "strided_median"]


def _medians(window: int, stride: int, cuts: NDArray[np.int64], *pieces: NDArray[Any]) -> Any:
    """The medians of the windows one task covers, from the parts of its input chunks."""
    x = np.concatenate([piece[a:b] for piece, (a, b) in zip(pieces, cuts, strict=True)])
    return bleaching.strided_median(x, window, stride=stride)[0]


def strided_median(x: da.Array, window: int, *, stride: int | None = None) -> da.Array:
    """The medians of windows of ``window`` samples every ``stride``, over a chunked signal.

    One task per input chunk in which windows start: it reads that chunk and the next
    ``window - 1`` samples (from as many chunks as they span) and takes the windows'
    medians with :func:`neurobatch.kernels.bleaching.strided_median`. The result equals
    the kernel's on the whole array exactly.

    Parameters
    ----------
    x : dask.array.Array
        Shape ``(n,)``: the signal, chunked along time (any chunks, with known sizes).
    window : int
        Samples per window (>= 2, at most ``n``).
    stride : int, optional
        Samples between window starts; by default ``window // 2``.

    Returns
    -------
    dask.array.Array of float64
        Shape ``(count,)`` (:func:`~neurobatch.kernels.bleaching.window_starts`), lazily;
        one block per input chunk in which windows start.

    Raises
    ------
    ValueError
        As :func:`~neurobatch.kernels.bleaching.window_starts`.

    Examples
    --------
    >>> x = np.random.default_rng(0).standard_normal(1000)
    >>> medians = strided_median(da.from_array(x, chunks=(7, 300, 693)), 100)
    >>> whole, _ = bleaching.strided_median(x, 100)
    >>> bool((medians.compute() == whole).all()), medians.chunks
    (True, ((1, 6, 12),))
    """
    n = x.shape[0]
    count, step = bleaching.window_starts(n, window, stride)
    name = "strided-median-" + tokenize(x, window, step)
    offsets = np.cumsum((0, *x.chunks[0]))
    dsk: dict[Any, Any] = {}
    sizes: list[int] = []
    for start, stop in itertools.pairwise(offsets.tolist()):
        first, end = -(-start // step), min(count, -(-stop // step))  # windows starting here
        if end <= first:
            continue
        lo, hi = first * step, (end - 1) * step + window
        sources = [c for c in range(len(x.chunks[0])) if offsets[c] < hi and offsets[c + 1] > lo]
        cuts = np.array(
            [[max(lo - offsets[c], 0), min(hi, offsets[c + 1]) - offsets[c]] for c in sources],
            dtype=np.int64,
        )
        pieces = [(x.name, c) for c in sources]
        dsk[(name, len(sizes))] = (_medians, int(window), step, cuts, *pieces)
        sizes.append(end - first)
    logger.debug("strided_median: %d windows of %d samples in %d blocks", count, window, len(sizes))
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[cast(Any, x)])
    return da.Array(graph, name, chunks=(tuple(sizes),), meta=np.empty((0,), dtype=np.float64))


def _time_blocks(time: ArrayLike, like: da.Array) -> tuple[NDArray[np.float64], da.Array]:
    """The time axis as NumPy (validated) and chunked like ``like``."""
    t = np.asarray(time, dtype=np.float64)
    if t.shape != like.shape:
        raise ValueError(
            f"time must have the signal's {like.shape[0]} samples, got shape {t.shape}."
        )
    validate_finite(t, "time")
    return t, da.from_array(t, chunks=like.chunks)


def fitted_reference(
    fit: BleachingFit | DetrendFit, time: da.Array, isosbestic: da.Array | None = None
) -> da.Array:
    """A fit's reference over chunked times (and isosbestic, for a detrend fit), lazily.

    Parameters
    ----------
    fit : BleachingFit or DetrendFit
        The fit.
    time : dask.array.Array
        Shape ``(n,)``: times in seconds.
    isosbestic : dask.array.Array, optional
        Shape ``(n,)``, chunked as ``time``: the isosbestic (a :class:`DetrendFit` needs it).

    Returns
    -------
    dask.array.Array of float64
        The reference, with the chunks of ``time``: block by block the kernel's
        ``fit.reference``, so exactly the whole array's.

    Examples
    --------
    >>> curve = bleaching.BiExponential(1.0, 10.0, 0.0, 1.0, 2.0, True, 1)
    >>> fit = BleachingFit(curve, 1.0, 4, 2, 1)
    >>> fitted_reference(fit, da.from_array(np.zeros(4), chunks=3)).compute()
    array([3., 3., 3., 3.])
    """
    if isinstance(fit, BleachingFit):
        return da.map_blocks(fit.reference, time, dtype=np.float64)
    if isosbestic is None:
        raise ValueError(f"a {fit.method} reference needs the isosbestic, got None.")
    return da.map_blocks(fit.reference, isosbestic, time, dtype=np.float64)


def _solve(
    channels: list[da.Array], t: NDArray[np.float64], window: int, stride: int | None
) -> list[bleaching.BiExponential]:
    """Each channel's curve: its medians and range in one compute, then the kernel's fit."""
    count, step = bleaching.window_starts(t.size, window, stride)
    times = t[window // 2 + step * np.arange(count)]
    wanted = [(strided_median(x, window, stride=step), x.min(), x.max()) for x in channels]
    (computed,) = dask.base.compute(wanted)
    curves = []
    for medians, low, high in computed:
        if not (np.isfinite(low) and np.isfinite(high)):
            raise ValueError("the signal must be finite, got NaN or infinite values.")
        span = float(t.max() - t.min())
        curves.append(
            bleaching.solve_bleaching(medians, times, span=span, low=float(low), high=float(high))
        )
    return curves


def _bleaching_fit(
    curve: bleaching.BiExponential,
    x: da.Array,
    time: da.Array,
    window: int,
    stride: int | None,
    split_every: int | None,
) -> BleachingFit:
    reference = da.map_blocks(curve, time, dtype=np.float64)
    r2 = bleaching.reference_r_squared(_fit_reducer(reference, x, split_every))
    step = bleaching.window_starts(x.shape[0], window, stride)[1]
    return BleachingFit(curve, r2, x.shape[0], int(window), step)


def fit_bleaching(
    signal: da.Array | ArrayLike,
    time: ArrayLike,
    *,
    window: int,
    stride: int | None = None,
    split_every: int | None = None,
) -> BleachingFit:
    """PhoPro's bi-exponential photobleaching fit of a signal chunked along time.

    The strided medians block by block (:func:`strided_median`) and the signal's range in
    one compute, the kernel's fit on them
    (:func:`neurobatch.kernels.bleaching.solve_bleaching`), then the R² in one tree
    reduction: the curve is the whole-array fit's exactly, the R² to rounding.

    Parameters
    ----------
    signal : dask.array.Array or array_like
        Shape ``(n,)``: the channel.
    time : array_like
        Shape ``(n,)``: its time axis in seconds (in memory, as xarray holds it).
    window : int
        The strided median's window, samples.
    stride : int, optional
        Its stride; by default ``window // 2``.
    split_every : int, optional
        Fan-in of the R²'s tree reduction (>= 2); dask's default when None.

    Returns
    -------
    neurobatch.kernels.bleaching.BleachingFit

    Raises
    ------
    TypeError
        If the signal is not real-valued.
    ValueError
        If an input is not 1-D, the lengths differ, a value is not finite, the windows do
        not fit or the signal is constant.

    See Also
    --------
    neurobatch.kernels.bleaching.fit_bleaching : the same on NumPy arrays.

    Examples
    --------
    >>> t = np.arange(20_000) / 20.0
    >>> x = 1.0 + 0.3 * np.exp(-t / 40.0) + 0.2 * np.exp(-t / 300.0)
    >>> fit = fit_bleaching(da.from_array(x, chunks=3_000), t, window=100)
    >>> fit.curve == bleaching.fit_bleaching(x, t, window=100).curve
    True
    """
    x = _channel("signal", signal)
    t, time_blocks = _time_blocks(time, x)
    (curve,) = _solve([x], t, window, stride)
    return _bleaching_fit(curve, x, time_blocks, window, stride, split_every)


def fit_detrend(
    signal: da.Array | ArrayLike,
    isosbestic: da.Array | ArrayLike,
    time: ArrayLike,
    *,
    method: DetrendMethod,
    window: int,
    stride: int | None = None,
    c: float = 3.0,
    maxiter: int = 1000,
    tol: float = 1e-8,
    intercept: bool = True,
    split_every: int | None = None,
) -> DetrendFit:
    """PhoPro's ``detrend_retrend`` and ``detrend_fit_retrend`` over chunked channels.

    Both channels' bleaching fits (their medians in one compute), each channel's R², then
    for ``detrend_fit_retrend`` the blocked IRLS (:func:`neurobatch.engine.blocked.
    fit_irls`) of the signal's ``dB/B`` on the isosbestic's (held in memory for its
    passes when the channels are), and the R² of the signal against the reference.
    Equals :func:`neurobatch.kernels.detrend.fit_detrend` on the whole arrays: the
    curves exactly, the line and the R² to rounding.

    Parameters
    ----------
    signal, isosbestic : dask.array.Array or array_like
        Shape ``(n,)``: the channels (chunks unified as in :func:`fit_irls`).
    time : array_like
        Shape ``(n,)``: the time axis, seconds.
    method : {'detrend_retrend', 'detrend_fit_retrend'}
        Whether to fit a line between the detrended channels.
    window : int
        The strided median's window, samples.
    stride : int, optional
        Its stride; by default ``window // 2``.
    c, maxiter, tol, intercept
        The IRLS fit's options (``detrend_fit_retrend``).
    split_every : int, optional
        Fan-in of the tree reductions (>= 2); dask's default when None.

    Returns
    -------
    neurobatch.kernels.detrend.DetrendFit
        Its reference over chunked arrays: :func:`fitted_reference`.

    Raises
    ------
    TypeError, ValueError
        As :func:`fit_bleaching` and :func:`neurobatch.engine.blocked.fit_irls`, and if
        ``method`` is unknown.

    Examples
    --------
    >>> t = np.arange(30_000) / 50.0
    >>> bleach = 1.0 + 0.3 * np.exp(-t / 60.0) + 0.1 * np.exp(-t / 500.0)
    >>> wiggle = 1.0 + 0.01 * np.sin(t)
    >>> sig, iso = (da.from_array(a, chunks=7_000) for a in (2.0 * bleach * wiggle, bleach))
    >>> fit = fit_detrend(sig, iso, t, method="detrend_retrend", window=250)
    >>> whole = detrend.fit_detrend(2.0 * bleach * wiggle, bleach, t, method="detrend_retrend",
    ...                               window=250)
    >>> fit.signal.curve == whole.signal.curve, round(fit.r_squared, 2)
    (True, 0.99)
    """
    if method not in ("detrend_retrend", "detrend_fit_retrend"):
        raise ValueError(
            f"method must be 'detrend_retrend' or 'detrend_fit_retrend', got {method!r}."
        )
    iso, sig = _fit_channels(isosbestic, signal)
    t, time_blocks = _time_blocks(time, sig)
    fits = [
        _bleaching_fit(curve, x, time_blocks, window, stride, split_every)
        for curve, x in zip(_solve([sig, iso], t, window, stride), (sig, iso), strict=True)
    ]
    line = None
    if method == "detrend_fit_retrend":
        d_iso, d_sig = (
            da.map_blocks(detrend.detrend, x, fitted_reference(fit, time_blocks), dtype=float)
            for x, fit in ((iso, fits[1]), (sig, fits[0]))
        )
        if _persisted_blocks(iso) is not None and _persisted_blocks(sig) is not None:
            # the channels are in memory: so are their dB/B, for the IRLS's ~20 passes
            d_iso, d_sig = dask.base.persist(d_iso, d_sig)
        line = blocked_fit_irls(
            d_iso,
            d_sig,
            c=c,
            maxiter=maxiter,
            tol=tol,
            intercept=intercept,
            split_every=split_every,
        )
    reference = da.map_blocks(
        detrend.detrend_reference,
        iso,
        time_blocks,
        signal=fits[0],
        isosbestic_fit=fits[1],
        line=line,
        dtype=np.float64,
    )
    r2 = bleaching.reference_r_squared(_fit_reducer(reference, sig, split_every))
    return DetrendFit(method, fits[0], fits[1], line, r2)
