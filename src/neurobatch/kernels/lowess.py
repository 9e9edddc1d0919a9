"""Robust locally weighted smoothing (LOWESS), as statsmodels computes it.

``statsmodels.nonparametric.lowess`` with ``delta=0``, step for step and vectorised over
the points: PhoPro's photobleaching fit takes its robust scale from the residuals of a
LOWESS smooth (:mod:`neurobatch.kernels.bleaching`), and the kernels use NumPy alone.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from neurobatch.kernels._validation import validate_same_length

__all__ = ["lowess"]

Float64Array = NDArray[np.float64]

#: Rows of the neighbourhood matrix computed at once (bounds its memory).
_ROWS = 1024


def _cube(a: Float64Array) -> Float64Array:
    return a * a * a


def _lowess_pass(
    x: Float64Array, y: Float64Array, robustness: Float64Array, k: int
) -> Float64Array:
    """One pass of statsmodels' local linear LOWESS (``delta=0``) at every ``x``."""
    n = x.size
    # the neighbourhood of x[i]: k points from left[i], the first whose midpoint with the
    # point k further reaches x[i] (statsmodels walks to it; the midpoints only increase)
    middle = (x[: n - k] + x[k:]) / 2.0
    left = np.minimum(np.searchsorted(middle, x, side="left"), n - k)
    fitted = np.empty(n)
    for start in range(0, n, _ROWS):
        rows = slice(start, min(start + _ROWS, n))
        fitted[rows] = _lowess_rows(x, y, robustness, left[rows], x[rows], y[rows], k)
    # statsmodels fits the first of tied abscissae and copies its value to the others
    return fitted[np.searchsorted(x, x, side="left")]


def _lowess_rows(
    x: Float64Array,
    y: Float64Array,
    robustness: Float64Array,
    left: NDArray[np.intp],
    xval: Float64Array,
    own: Float64Array,
    k: int,
) -> Float64Array:
    """The local fits at ``xval``, their neighbourhoods ``k`` points from ``left``."""
    index = left[:, None] + np.arange(k)
    xj, yj = x[index], y[index]
    radius = np.fmax(xval - x[left], x[left + k - 1] - xval)[:, None]
    centre = xval[:, None]
    # a neighbourhood with fewer than 2 weights keeps its own value, and one of tied
    # abscissae (radius 0) gets NaN weights, as in statsmodels: their sums go unused
    with np.errstate(divide="ignore", invalid="ignore"):
        weights = _cube(1.0 - _cube(np.abs(xj - centre) / radius)) * robustness[index]
        enough = (weights > 1e-12).sum(axis=1) >= 2
        weights /= weights.sum(axis=1, keepdims=True)
        # sums in statsmodels' order: sequential, as its loops add
        mean_x = np.cumsum(weights * xj, axis=1)[:, -1:]
        spread = np.fmax(np.cumsum(weights * (xj - mean_x) ** 2, axis=1)[:, -1:], 1e-12)
        projection = weights * (1.0 + (centre - mean_x) * (xj - mean_x) / spread)
        local = np.cumsum(projection * yj, axis=1)[:, -1]
    return np.where(enough, local, own)


def _bisquare_weights(y: Float64Array, fitted: Float64Array) -> Float64Array:
    """statsmodels' robustness weights: bisquare of ``|residual| / (6 median |residual|)``."""
    residual = np.abs(y - fitted)
    median = float(np.median(residual))
    scaled = (residual > 0).astype(np.float64) if median == 0 else residual / (6.0 * median)
    scaled[scaled > 1] = 1.0
    tmp = 1.0 - scaled * scaled
    return tmp * tmp


def lowess(
    y: ArrayLike,
    x: ArrayLike,
    *,
    frac: float = 2.0 / 3.0,
    it: int = 3,
) -> Float64Array:
    """Robust local linear smoothing, as ``statsmodels.nonparametric.lowess`` (``delta=0``).

    Each point is fitted by a weighted straight line through its ``int(frac * n)`` nearest
    neighbours in ``x`` (tricube weights), then ``it`` times again with the neighbours
    also weighted by the bisquare of their residuals over six times the median absolute
    residual (Cleveland 1979). The neighbourhoods, weights and sums follow statsmodels'
    Cython code step for step.

    Parameters
    ----------
    y : array_like, shape (n,)
        Values.
    x : array_like, shape (n,)
        Abscissae, sorted increasing (a time axis).
    frac : float, default 2/3
        Fraction of the points in each neighbourhood (at least 2, at most all).
    it : int, default 3
        Robustness iterations.

    Returns
    -------
    numpy.ndarray of float64, shape (n,)
        The smoothed values at ``x`` (statsmodels' ``return_sorted=False``).

    Raises
    ------
    ValueError
        If the lengths differ, ``x`` is not sorted, ``frac`` is outside ``[0, 1]``, ``it``
        is negative or there are fewer than 2 points.

    Examples
    --------
    >>> x = np.arange(8.0)
    >>> lowess(2.0 * x + 1.0, x, frac=0.5).round(12).tolist()
    [1.0, 3.0, 5.0, 7.0, 9.0, 11.0, 13.0, 15.0]
    """
    y_arr = np.asarray(y, dtype=np.float64)
    x_arr = np.asarray(x, dtype=np.float64)
    validate_same_length(y=y_arr, x=x_arr)
    n = x_arr.size
    if n < 2 or np.any(np.diff(x_arr) < 0):
        raise ValueError(f"x must hold at least 2 values sorted increasing, got {n} value(s).")
    if not 0 <= frac <= 1:
        raise ValueError(f"frac must be in [0, 1], got {frac!r}.")
    if it < 0:
        raise ValueError(f"it must be >= 0, got {it!r}.")
    k = min(max(int(frac * n + 1e-10), 2), n)
    robustness = np.ones(n)
    fitted = _lowess_pass(x_arr, y_arr, robustness, k)
    for _ in range(it):
        robustness = _bisquare_weights(y_arr, fitted)
        fitted = _lowess_pass(x_arr, y_arr, robustness, k)
    return fitted
