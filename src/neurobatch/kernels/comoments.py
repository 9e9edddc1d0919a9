"""Weighted co-moments of ``(isosbestic, signal)`` blocks: the partial sums of the fits.

The partial result of the least-squares fits of :mod:`neurobatch.kernels.fitting`
(:class:`CoMoments`): the sum of weights and the weighted means and centred second moments
of ``x`` (isosbestic) and ``y`` (signal), merged with Chan et al.'s parallel formula.
Centred moments keep full precision where raw sums of squares cancel (a 1.5 V isosbestic
that varies by 10 mV over 3.6 M samples). :func:`comoments_chunk` is the chunk function of
the OLS fit, :func:`comoments_combine` the combine function of every least-squares fit;
the private helpers solve the weighted least-squares line from merged co-moments.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypedDict

import numpy as np
from numpy.typing import ArrayLike, NDArray

from neurobatch.kernels.reduction import _TILE, _as_block

__all__ = ["CoMoments", "comoments_chunk", "comoments_combine"]

Float64Array = NDArray[np.float64]


class CoMoments(TypedDict):
    """Weighted co-moments of a block: the partial result of the least-squares fits.

    ``weight`` is the sum of weights (the count when unweighted), ``mean_x``/``mean_y``
    the weighted means, and ``cxx``, ``cxy``, ``cyy`` the weighted centred second moments
    ``Σ w (x - mean_x)(y - mean_y)`` etc. Means are 0.0 where ``weight`` is 0.
    """

    weight: float
    mean_x: float
    mean_y: float
    cxx: float
    cxy: float
    cyy: float


def _merge(
    w: Float64Array,
    mx: Float64Array,
    my: Float64Array,
    cxx: Float64Array,
    cxy: Float64Array,
    cyy: Float64Array,
) -> CoMoments:
    """Merge co-moments given as arrays over parts (Chan et al., any number of parts)."""
    total = float(w.sum())
    if total > 0.0:
        mean_x = float((w * mx).sum() / total)
        mean_y = float((w * my).sum() / total)
    else:
        mean_x = mean_y = 0.0
    dx = mx - mean_x
    dy = my - mean_y
    wdx = w * dx
    return CoMoments(
        weight=total,
        mean_x=mean_x,
        mean_y=mean_y,
        cxx=float(cxx.sum() + (wdx * dx).sum()),
        cxy=float(cxy.sum() + (wdx * dy).sum()),
        cyy=float(cyy.sum() + (w * dy * dy).sum()),
    )


def _sum_product(a: Float64Array, b: Float64Array, out: Float64Array) -> float:
    """``Σ a b``, pairwise-summed and without BLAS (whose threads fight dask's)."""
    np.multiply(a, b, out=out)
    return float(out.sum())


#: ``np.maximum(a, zeros)`` is twice as fast as ``np.maximum(a, 0.0)``.
_ZEROS = np.zeros(_TILE)
_ZEROS.flags.writeable = False


def _moments_chunk(x: Float64Array, y: Float64Array) -> CoMoments:
    """Co-moments of a block, tile by tile, merged with Chan et al.'s formula."""
    n = x.size
    if y.size != n:
        raise ValueError(
            f"isosbestic and signal blocks must have the same length, got {n} and {y.size}."
        )
    if n == 0:
        return CoMoments(weight=0.0, mean_x=0.0, mean_y=0.0, cxx=0.0, cxy=0.0, cyy=0.0)
    m0 = min(n, _TILE)
    dx_buf, dy_buf, p_buf = (np.empty(m0) for _ in range(3))
    parts = np.empty((6, -(-n // _TILE)))
    with np.errstate(over="ignore", invalid="ignore"):
        for i, start in enumerate(range(0, n, _TILE)):
            xt = x[start : start + _TILE]
            yt = y[start : start + _TILE]
            m = xt.size
            dx, dy, p = dx_buf[:m], dy_buf[:m], p_buf[:m]
            total = float(m)
            mean_x = float(xt.sum()) / total
            mean_y = float(yt.sum()) / total
            np.subtract(xt, mean_x, out=dx)
            np.subtract(yt, mean_y, out=dy)
            cxx = _sum_product(dx, dx, p)
            cxy = _sum_product(dx, dy, p)
            cyy = _sum_product(dy, dy, p)
            parts[:, i] = (total, mean_x, mean_y, cxx, cxy, cyy)
    return _merge(*parts)


def comoments_chunk(isosbestic: ArrayLike, signal: ArrayLike) -> CoMoments:
    """Chunk function of the OLS fit: the unweighted co-moments of one block.

    Parameters
    ----------
    isosbestic, signal : array_like, shape (n,)
        One block of each channel, of the same length (may be 0).

    Returns
    -------
    CoMoments
        Count, means and centred second moments of the block.

    Raises
    ------
    ValueError
        If the blocks differ in length.

    See Also
    --------
    comoments_combine : merge the partials of several blocks.
    neurobatch.kernels.fitting.ols_finalize : the fit from the merged co-moments.

    Examples
    --------
    >>> m = comoments_chunk([0.0, 1.0, 2.0], [1.0, 3.0, 5.0])
    >>> m["weight"], m["mean_x"], m["cxx"], m["cxy"]
    (3.0, 1.0, 2.0, 4.0)
    """
    return _moments_chunk(_as_block(isosbestic), _as_block(signal))


def comoments_combine(parts: Sequence[CoMoments]) -> CoMoments:
    """Combine function of the least-squares fits: merge co-moments of disjoint blocks.

    Uses the parallel (pairwise-free, any number of parts) form of Chan, Golub and
    LeVeque's update: the merged centred moment is the sum of the parts' plus
    ``Σ wᵢ (meanᵢ - mean)²`` terms, so no raw sum of squares is ever formed.

    Parameters
    ----------
    parts : sequence of CoMoments
        Partials of disjoint blocks (at least one).

    Returns
    -------
    CoMoments
        The co-moments of the union of the blocks.

    Examples
    --------
    >>> a = comoments_chunk([0.0, 1.0], [1.0, 3.0])
    >>> b = comoments_chunk([2.0], [5.0])
    >>> comoments_combine([a, b]) == comoments_chunk([0.0, 1.0, 2.0], [1.0, 3.0, 5.0])
    True
    """
    table = np.array(
        [[p["weight"], p["mean_x"], p["mean_y"], p["cxx"], p["cxy"], p["cyy"]] for p in parts],
        dtype=np.float64,
    ).reshape(-1, 6)
    return _merge(*table.T)


def _check_moments(m: CoMoments, *, min_samples: int, what: str) -> int:
    """Raise unless the merged co-moments describe at least ``min_samples`` finite samples."""
    values = [m["weight"], m["mean_x"], m["mean_y"], m["cxx"], m["cxy"], m["cyy"]]
    if not all(math.isfinite(v) for v in values):
        raise ValueError(
            "isosbestic and signal must be finite, but their co-moments are not: the input "
            "holds NaN or infinite values (or values so large that their squares overflow)."
        )
    n = round(m["weight"])
    if n < min_samples:
        raise ValueError(
            f"{what} needs at least {min_samples} samples of isosbestic and signal, got {n}."
        )
    return n


def _solve_wls(m: CoMoments, *, intercept: bool, weighted: bool = False) -> tuple[float, float]:
    """Weighted least squares from co-moments: ``(b0, b1)``; raise if singular."""
    w, mx, my = m["weight"], m["mean_x"], m["mean_y"]
    cxx, cxy = m["cxx"], m["cxy"]
    kind = "Tukey-weighted " if weighted else ""
    if intercept:
        # Rounding leaves ~n (eps |mean|)² in cxx for a constant isosbestic.
        if not cxx > w * (64.0 * np.finfo(np.float64).eps * mx) ** 2:
            raise ValueError(
                f"isosbestic is constant (its {kind}variance is {cxx / w if w else 0.0:.3g} "
                f"around {mx:.6g}), so the fit signal ≈ b0 + b1 * isosbestic is singular; "
                "check the isosbestic channel, or fit without intercept."
            )
        b1 = cxy / cxx
        return my - b1 * mx, b1
    sxx = cxx + w * mx * mx
    if not sxx > 0.0:
        raise ValueError(
            f"isosbestic is all zero ({kind}Σ isosbestic² = {sxx:.3g}), so the fit "
            "signal ≈ b1 * isosbestic is singular; check the isosbestic channel."
        )
    return 0.0, (cxy + w * mx * my) / sxx


def _ssr(m: CoMoments, b0: float, b1: float) -> float:
    """``Σ w (y - b0 - b1 x)²`` from co-moments (centred form, no raw sums of squares)."""
    mean_resid = m["mean_y"] - b0 - b1 * m["mean_x"]
    ssr = m["cyy"] - 2.0 * b1 * m["cxy"] + b1 * b1 * m["cxx"] + m["weight"] * mean_resid**2
    return max(ssr, 0.0)


def _r_squared(ssr: float, sst: float) -> float:
    """PhoPro's R² (``sklearn.metrics.r2_score``): centred, 1.0/0.0 for a constant signal."""
    if sst == 0.0:
        return 1.0 if ssr == 0.0 else 0.0
    return 1.0 - ssr / sst
