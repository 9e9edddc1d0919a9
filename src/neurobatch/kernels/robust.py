"""The passes of the robust IRLS fit (Tukey's biweight), and the tables that spare most of them.

:func:`neurobatch.kernels.fitting.solve_irls` drives the iterations; this module holds what
they compute over the data, as chunk / combine functions for a
:class:`~neurobatch.kernels.reduction.Reducer`:

* A **weighted pass** (:func:`tukey_sums_chunk`): the Tukey weights of the residuals
  ``r = y - b0 - b1 x`` of the current line, and the weighted sums of ``1, dx, dx², r, dx r,
  r²`` (``dx = x - x0`` for a fixed ``x0``). The weighted fit of ``r`` on ``x`` is the step
  to the next line (:func:`tukey_step`); its residual sum of squares comes from sums of
  residuals, so it keeps its precision (from sums of the signal it would cancel ~4 digits).
* A **residual pass** (``_residual_pass``): the deviance and the exact median of ``|r|``
  (the MAD scale) of a line; with a ``_TableSpec``, also a ``_Table``. The median's search
  collects the values in a window around the median of a strided sample of the data
  (``_Sample``, gathered once): smooth data are sampled densely enough that one pass
  suffices.

The tables
----------
After a few iterations the line moves by less than a thousandth of the residuals' scale
per step. A residual pass can then also gather, over the samples whose residual ``R``
(of this reference line) is well inside Tukey's cut-off ``c s``, the sums of every monomial
``dx^a R^b`` with ``a + b <= 6``. Inside the cut-off a weight is the polynomial
``(1 - u r²)²``, and ``r = R - e0 - e1 dx`` for any later line, so every weighted sum of a
later iteration is a polynomial in ``(e0, e1, u)`` over those monomial sums: exact, with no
pass over the data. The samples whose side of a threshold a later line could change (those
near the cut-off, near the median of ``|R|``, and near the deviance's own cut-off ``c σ²``)
are gathered as they are (about 1 % of the samples of a photometry hour), and are
evaluated exactly at every iteration. A table answers as long as the line stays within the margin it was built for
(checked against the range of the isosbestic, rounding included) and the scales stay in
their brackets; otherwise the iteration takes a pass over the data, as before the table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import numpy as np
import scipy.signal
from numpy.typing import ArrayLike, NDArray

from neurobatch.kernels.comoments import _ZEROS, CoMoments, _solve_wls, _ssr, _sum_product
from neurobatch.kernels.median import (
    _LOW63,
    _SIGN,
    MedianPartial,
    MedianPlan,
    MedianSearch,
    _Gatherer,
    _value_window,
    median_combine,
)
from neurobatch.kernels.reduction import _TILE, Reducer, _as_block

__all__ = ["MAD_NORMALIZATION", "sums_combine", "tukey_step", "tukey_sums_chunk"]

Float64Array = NDArray[np.float64]
KeyArray = NDArray[np.uint64]
BoolArray = NDArray[np.bool_]
Line = tuple[float, float]

#: ``scipy.stats.norm.ppf(0.75)``: the MAD of a unit normal, statsmodels' ``GAUSSIAN_3_4``.
MAD_NORMALIZATION = 0.6744897501960817
#: Highest total degree of a monomial ``dx^a R^b`` in a table: a Tukey weight (degree 4)
#: times ``r²`` (2), or the deviance's cubed weight (6).
_DEGREE = 6
#: A residual pass builds a table once a step moved no residual by more than this fraction
#: of the median of ``|r|`` (the table's bands then hold about 1 % of the samples).
_TABLE_STEP = 2e-3
#: Below this fraction of the median of ``|r|``, the samples inside the deviance's cut-off
#: are all kept in a band (instead of their monomials summed in a second table).
_DEV_BAND = 0.25
#: Half-width of the median windows guessed from the ``_Sample``, relative.
_WINDOW = 0.02
#: About this many samples make the ``_Sample``.
_SAMPLE_SIZE = 1 << 16
_EPS = float(np.finfo(np.float64).eps)


# --- residuals -------------------------------------------------------------------------------


def _residuals_into(x: Float64Array, y: Float64Array, line: Line, out: Float64Array) -> None:
    """``out = y - (x b1 + b0)``: the one formula of a residual, in every pass and table."""
    np.multiply(x, line[1], out=out)
    out += line[0]
    np.subtract(y, out, out=out)


def _inverse_square(v: float) -> float:
    """``1 / v²``, infinite for 0 (and for squares that underflow)."""
    with np.errstate(divide="ignore", over="ignore", under="ignore"):
        return float(np.float64(1.0) / np.float64(v) ** 2)


def _sum_cubes(a: Float64Array, inv_cs2: float) -> float:
    """``Σ max(1 - a² inv_cs2, 0)³``."""
    q = a * a
    q *= -inv_cs2
    q += 1.0
    np.maximum(q, 0.0, out=q)
    return float((q * q * q).sum())


def _cut_key(inv_cs2: float) -> np.uint64:
    """The key of ``|r|`` (bits with the sign set) from which on ``1 - r² inv_cs2 <= 0``
    for sure (rounding of ``1 / sqrt`` included)."""
    with np.errstate(divide="ignore"):
        cut = float(np.float64(1.0) / np.sqrt(np.float64(inv_cs2))) * (1.0 + 1e-9)
    return _bits(cut) | _SIGN


def _deviance_samples(keys: KeyArray, cut_key: np.uint64, mask: BoolArray) -> Float64Array:
    """The ``|r|`` whose keys are below ``cut_key``: the samples of the deviance's sum."""
    np.less(keys, cut_key, out=mask)
    inside = keys[mask]
    np.bitwise_and(inside, _LOW63, out=inside)
    return inside.view(np.float64)


# --- the weighted pass -----------------------------------------------------------------------


def tukey_sums_chunk(
    isosbestic: ArrayLike, signal: ArrayLike, *, line: Line, inv_cs2: float, x0: float
) -> Float64Array:
    """Chunk function of a weighted pass: Tukey-weighted sums of one block.

    Parameters
    ----------
    isosbestic, signal : array_like, shape (n,)
        One block of each channel.
    line : tuple of float
        ``(b0, b1)``: the residuals are ``r = signal - b0 - b1 * isosbestic``.
    inv_cs2 : float
        ``1 / (c s)²``: the weights are ``max(1 - r² inv_cs2, 0)²``.
    x0 : float
        The shift of the isosbestic, ``dx = isosbestic - x0`` (the same in every block).

    Returns
    -------
    numpy.ndarray, shape (6,)
        ``Σ w``, ``Σ w dx``, ``Σ w dx²``, ``Σ w r``, ``Σ w dx r``, ``Σ w r²``.

    Examples
    --------
    >>> tukey_sums_chunk([0.0, 1.0], [1.0, 3.5], line=(1.0, 2.0), inv_cs2=1.0, x0=0.0)
    array([1.5625  , 0.5625  , 0.5625  , 0.28125 , 0.28125 , 0.140625])
    """
    x, y = _as_block(isosbestic), _as_block(signal)
    if x.size != y.size:
        raise ValueError(
            f"isosbestic and signal blocks must have the same length, got {x.size} and {y.size}."
        )
    n = x.size
    m0 = min(n, _TILE)
    r_buf, w_buf, d_buf, p_buf, t_buf = (np.empty(m0) for _ in range(5))
    parts = np.zeros((6, -(-n // _TILE)))
    with np.errstate(over="ignore", invalid="ignore"):
        for i, start in enumerate(range(0, n, _TILE)):
            xt, yt = x[start : start + _TILE], y[start : start + _TILE]
            m = xt.size
            r, w, dx, p, t = r_buf[:m], w_buf[:m], d_buf[:m], p_buf[:m], t_buf[:m]
            _residuals_into(xt, yt, line, r)
            np.multiply(r, r, out=w)
            w *= -inv_cs2
            w += 1.0
            np.maximum(w, _ZEROS[:m], out=w)
            np.multiply(w, w, out=w)
            np.subtract(xt, x0, out=dx)
            np.multiply(w, dx, out=p)  # w dx
            np.multiply(w, r, out=t)  # w r
            parts[:, i] = (
                w.sum(),
                p.sum(),
                _sum_product(p, dx, w),  # w is spent from here on
                t.sum(),
                _sum_product(p, r, w),
                _sum_product(t, r, w),
            )
    total: Float64Array = parts.sum(axis=1)
    return total


def sums_combine(parts: Sequence[Float64Array]) -> Float64Array:
    """Combine function of a weighted pass: add the sums of disjoint blocks.

    Parameters
    ----------
    parts : sequence of numpy.ndarray
        :func:`tukey_sums_chunk` partials (at least one).

    Returns
    -------
    numpy.ndarray, shape (6,)
        Their sum.

    Examples
    --------
    >>> sums_combine([np.ones(6), np.ones(6)])
    array([2., 2., 2., 2., 2., 2.])
    """
    total: Float64Array = np.asarray(parts, dtype=np.float64).reshape(-1, 6).sum(axis=0)
    return total


def tukey_step(sums: Float64Array, *, x0: float, intercept: bool) -> tuple[Line, float]:
    """The weighted least-squares step of ``r`` on the isosbestic, from a pass's sums.

    Parameters
    ----------
    sums : numpy.ndarray, shape (6,)
        :func:`sums_combine` of a weighted pass (or a ``_Table``'s).
    x0 : float
        The shift the sums were taken with.
    intercept : bool
        Whether the fit has an intercept.

    Returns
    -------
    step : tuple of float
        ``(d0, d1)``: the next line is ``(b0 + d0, b1 + d1)``.
    ssr : float
        ``Σ w (r - d0 - d1 x)²``, the weighted residual sum of squares of the next line.

    Raises
    ------
    ValueError
        If the weighted fit is singular.

    Examples
    --------
    >>> sums = tukey_sums_chunk([0.0, 1.0, 2.0], [1.0, 3.0, 5.0], line=(1.0, 1.5),
    ...                         inv_cs2=0.0, x0=1.0)
    >>> tukey_step(sums, x0=1.0, intercept=True)
    ((0.0, 0.5), 0.0)
    """
    w, sx, sxx, sr, sxr, srr = (float(v) for v in sums)
    mx = sx / w if w > 0.0 else 0.0
    mr = sr / w if w > 0.0 else 0.0
    moments = CoMoments(
        weight=w,
        mean_x=x0 + mx,
        mean_y=mr,
        cxx=sxx - sx * mx,
        cxy=sxr - sx * mr,
        cyy=srr - sr * mr,
    )
    step = _solve_wls(moments, intercept=intercept, weighted=True)
    return step, _ssr(moments, *step)


# --- the residual pass -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Residuals:
    """What a residual pass found: deviance, MAD scale, the middle order statistics of
    ``|r|`` (equal for an odd count), passes."""

    deviance: float
    scale: float
    middle: tuple[float, float]
    passes: int

    @property
    def median(self) -> float:
        """The median of ``|r|``."""
        lo, hi = self.middle
        return lo if lo == hi else (lo + hi) / 2.0


def _finish_residuals(
    order_stats: tuple[float, float], cubes: float, *, n: int, c: float, passes: int
) -> _Residuals:
    """The deviance ``c²/6 (n - Σ q³)`` and statsmodels' MAD scale ``median(|r| / 0.6745)``."""
    lo, hi = order_stats
    lo_q, hi_q = lo / MAD_NORMALIZATION, hi / MAD_NORMALIZATION
    return _Residuals(
        deviance=c * c / 6.0 * (n - cubes),
        scale=lo_q if n % 2 else (lo_q + hi_q) / 2.0,
        middle=(lo, hi),
        passes=passes,
    )


class _ResidualPartial(NamedTuple):
    """Partial of a residual pass: ``Σ q³`` of the deviance, the median's, and a table's."""

    cubes: float
    median: MedianPartial
    table: _TablePartial | None


def _residual_chunk(
    isosbestic: ArrayLike,
    signal: ArrayLike,
    *,
    line: Line,
    plan: MedianPlan,
    inv_cs2: float | None,
    table: _TableSpec | None = None,
) -> _ResidualPartial:
    """Chunk function of a residual pass over ``r = y - b0 - b1 x``.

    Gathers the median partial of ``|r|`` for ``plan``; when ``inv_cs2`` (``1 / (c σ²)²``
    for statsmodels' deviance ``Σ ρ(r / σ²)``) is given, ``Σ q³`` with
    ``q = max(1 - r² inv_cs2, 0)``, so that ``Σ ρ = c²/6 (n - Σ q³)``; and with ``table``,
    a table's partial.
    """
    x, y = _as_block(isosbestic), _as_block(signal)
    n = x.size
    gatherer = _Gatherer(plan, n)
    builder = None if table is None else _TableBuilder(table, n)
    cut_key = None if inv_cs2 is None else _cut_key(inv_cs2)
    cubes = 0.0
    m0 = min(n, _TILE)
    r_buf, mask_buf = np.empty(m0), np.empty(m0, dtype=bool)
    with np.errstate(over="ignore", invalid="ignore"):
        for start in range(0, n, _TILE):
            xt, yt = x[start : start + _TILE], y[start : start + _TILE]
            m = xt.size
            r = r_buf[:m]
            _residuals_into(xt, yt, line, r)
            if builder is not None:
                builder.add(xt, yt, r)
            # the key of |r|: clear the sign bit (abs), then set it (key of a float >= 0)
            keys = r.view(np.uint64)
            np.bitwise_or(keys, _SIGN, out=keys)
            if inv_cs2 is not None and cut_key is not None:
                cubes += _sum_cubes(_deviance_samples(keys, cut_key, mask_buf[:m]), inv_cs2)
            gatherer.add(keys)
    return _ResidualPartial(
        cubes, gatherer.partial(), None if builder is None else builder.partial()
    )


def _residual_combine(parts: Sequence[_ResidualPartial]) -> _ResidualPartial:
    """Combine function of a residual pass."""
    tables = [p.table for p in parts if p.table is not None]
    return _ResidualPartial(
        math.fsum(p.cubes for p in parts),
        median_combine([p.median for p in parts]),
        _table_combine(tables) if tables else None,
    )


def _residual_pass(
    reduce: Reducer,
    line: Line,
    *,
    n: int,
    c: float,
    s2: float,
    window: tuple[int, int] | None,
    table: _TableSpec | None = None,
) -> tuple[_Residuals, _Table | None]:
    """Deviance and MAD scale of the residuals of ``line``: one pass, more if needed.

    Parameters
    ----------
    reduce : Reducer
        Runs chunk functions over blocks of ``(isosbestic, signal)``.
    line : tuple of float
        ``(b0, b1)``.
    n : int
        The number of samples.
    c : float
        Tukey's tuning constant.
    s2 : float
        The weighted fit's residual variance σ² (the deviance is ``Σ ρ(r / σ²)``).
    window : tuple of int, optional
        Keys where the median of ``|r|`` probably lies (:class:`MedianSearch`).
    table : _TableSpec, optional
        Also build this table in the first pass.

    Returns
    -------
    residuals : _Residuals
        The deviance, scale and median.
    table : _Table or None
        The table, when ``table`` was given.
    """
    search = MedianSearch(n=n, window=window)
    inv_cs2 = _inverse_square(c * s2)
    first = reduce(
        partial(_residual_chunk, line=line, plan=search.plan, inv_cs2=inv_cs2, table=table),
        _residual_combine,
    )
    search.advance(first.median)
    while not search.done:
        more = reduce(
            partial(_residual_chunk, line=line, plan=search.plan, inv_cs2=None),
            _residual_combine,
        )
        search.advance(more.median)
    found = _finish_residuals(
        search.order_statistics(), first.cubes, n=n, c=c, passes=search.passes
    )
    built = None
    if table is not None and first.table is not None:
        built = _Table(table, first.table, n=n, c=c)
    return found, built


class _Sample(NamedTuple):
    """Every ``step``-th sample of each block: where the data lie, and their median's guess."""

    x: Float64Array
    y: Float64Array

    def median_window(self, line: Line) -> tuple[int, int] | None:
        """Keys around the median of ``|r|`` of the sample (``_WINDOW`` either side): the
        whole data's median usually lies there, as smooth data are sampled densely enough
        (otherwise the search goes on outside the window, exactly, with more passes).

        Parameters
        ----------
        line : tuple of float
            ``(b0, b1)``.

        Returns
        -------
        tuple of int or None
            The window, or None when the sample's median is 0.
        """
        r = np.empty(self.x.size)
        _residuals_into(self.x, self.y, line, r)
        guess = float(np.median(np.abs(r)))
        return _value_window(guess, _WINDOW) if guess > 0.0 else None


def _sample_chunk(isosbestic: ArrayLike, signal: ArrayLike, *, step: int) -> _Sample:
    """Chunk function of the sample: every ``step``-th value of the block, from its first.

    Parameters
    ----------
    isosbestic, signal : array_like, shape (n,)
        One block of each channel.
    step : int
        The stride (>= 1).

    Returns
    -------
    _Sample
        Copies of the strided values.

    Examples
    --------
    >>> _sample_chunk([0.0, 1.0, 2.0], [3.0, 4.0, 5.0], step=2).x
    array([0., 2.])
    """
    return _Sample(_as_block(isosbestic)[::step].copy(), _as_block(signal)[::step].copy())


def _sample_combine(parts: Sequence[_Sample]) -> _Sample:
    """Combine function of the sample: concatenate."""
    return _Sample(_concatenate([p.x for p in parts]), _concatenate([p.y for p in parts]))


# --- tables ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _TableSpec:
    """What a residual pass gathers for a table, in terms of ``|R|`` (``R``: the residuals
    of the pass's line).

    Attributes
    ----------
    line : tuple of float
        The reference line (the residual pass's).
    x0 : float
        The shift of the isosbestic (``dx = x - x0``).
    x_exp, r_exp : int
        Monomials are taken of ``dx / 2**x_exp`` and ``R / 2**r_exp`` (near 1, exactly).
    margin : float
        The most any later line may move a residual from ``R`` (rounding included).
    cut : tuple of float
        Bracket of Tukey's cut-off ``c s`` of later iterations.
    dev_cut : tuple of float
        Bracket of the deviance's cut-off ``c σ²`` of later iterations.
    median : tuple of float
        Bracket of the middle order statistics of ``|r|`` of later iterations.
    dev_table : bool
        Sum monomials below the deviance's cut-off too (when it is not small: otherwise
        every sample below it is kept in its band).
    """

    line: Line
    x0: float
    x_exp: int
    r_exp: int
    margin: float
    cut: tuple[float, float]
    dev_cut: tuple[float, float]
    median: tuple[float, float]
    dev_table: bool

    @property
    def inside(self) -> float:
        """Samples with ``|R|`` below this are inside every later cut-off ``c s``."""
        return self.cut[0] - self.margin

    @property
    def dev_inside(self) -> float:
        """Samples with ``|R|`` below this are summed in the deviance's table (0: none)."""
        return self.dev_cut[0] - self.margin if self.dev_table else 0.0

    @property
    def below(self) -> float:
        """Samples with ``|R|`` below this are below every later median of ``|r|`` (and
        both middle order statistics)."""
        return self.median[0] - self.margin

    def bands(self) -> tuple[tuple[float, float], ...]:
        """The ``|R|`` intervals ``[lo, hi]`` whose samples are kept as they are: around the
        cut-off, the deviance's cut-off and the median."""
        m = self.margin
        return (
            (max(self.inside, 0.0), self.cut[1] + m),
            (max(self.dev_inside, 0.0), self.dev_cut[1] + m),
            (max(self.below, 0.0), self.median[1] + m),
        )


class _TablePartial(NamedTuple):
    """A table's partial: monomial sums, the count below the median's band, the band's
    samples, and the ranges of the data."""

    moments: Float64Array
    dev_moments: Float64Array
    below: int
    band_x: Float64Array
    band_y: Float64Array
    x_min: float
    x_max: float
    y_abs_max: float


def _add_monomials(
    xi: Float64Array, eta: Float64Array, table: Float64Array, p: Float64Array, t: Float64Array
) -> None:
    """``table[a, b] += Σ xi^a eta^b`` for ``1 <= a + b <= 6`` (``xi``, ``eta`` zero outside
    the set; ``p`` and ``t`` are work buffers)."""
    np.copyto(p, xi)
    for a in range(1, _DEGREE + 1):
        table[a, 0] += p.sum()
        if a < _DEGREE:
            p *= xi
    np.copyto(t, eta)
    for b in range(1, _DEGREE + 1):
        table[0, b] += t.sum()
        if b == _DEGREE:
            break
        np.multiply(t, xi, out=p)
        for a in range(1, _DEGREE + 1 - b):
            table[a, b] += p.sum()
            if a < _DEGREE - b:
                p *= xi
        t *= eta


class _TableBuilder:
    """Accumulates one block's ``_TablePartial``, tile by tile."""

    def __init__(self, spec: _TableSpec, size: int) -> None:
        self.spec = spec
        self.tables = [np.zeros((_DEGREE + 1, _DEGREE + 1)) for _ in range(2)]
        self.below = 0
        self.band_x: list[Float64Array] = []
        self.band_y: list[Float64Array] = []
        self.x_min, self.x_max, self.y_abs_max = math.inf, -math.inf, 0.0
        m = min(size, _TILE)
        self.bufs = [np.empty(m) for _ in range(7)]
        self.offset = np.empty(m, dtype=np.uint64)
        self.mask = np.empty(m, dtype=bool)
        self.band = np.empty(m, dtype=bool)
        self.x_scale = math.ldexp(1.0, -spec.x_exp)
        self.r_scale = math.ldexp(1.0, -spec.r_exp)
        # |R| >= 0 orders as its bits do: [lo, hi] holds |R| iff bits - lo_bits <= hi_bits - lo_bits
        self.band_keys = [(_bits(lo), _bits(hi) - _bits(lo)) for lo, hi in spec.bands() if lo <= hi]

    def add(self, x: Float64Array, y: Float64Array, r: Float64Array) -> None:
        m = x.size
        spec = self.spec
        a, xi, eta, xim, etam, p, t = (b[:m] for b in self.bufs)
        mask, band, offset = self.mask[:m], self.band[:m], self.offset[:m]
        np.abs(r, out=a)
        np.subtract(x, spec.x0, out=xi)
        xi *= self.x_scale
        np.multiply(r, self.r_scale, out=eta)
        for limit, table in zip((spec.inside, spec.dev_inside), self.tables, strict=True):
            if limit > 0.0:
                np.less(a, limit, out=mask)
                table[0, 0] += np.count_nonzero(mask)
                np.multiply(xi, mask, out=xim)
                np.multiply(eta, mask, out=etam)
                _add_monomials(xim, etam, table, p, t)
        np.less(a, spec.below, out=mask)
        self.below += int(np.count_nonzero(mask))
        keys = a.view(np.uint64)
        band.fill(False)
        for lo, width in self.band_keys:
            np.subtract(keys, lo, out=offset)
            np.less_equal(offset, width, out=mask)
            band |= mask
        self.band_x.append(x[band])
        self.band_y.append(y[band])
        self.x_min = min(self.x_min, float(x.min()))
        self.x_max = max(self.x_max, float(x.max()))
        self.y_abs_max = max(self.y_abs_max, abs(float(y.min())), abs(float(y.max())))

    def partial(self) -> _TablePartial:
        return _TablePartial(
            self.tables[0],
            self.tables[1],
            self.below,
            _concatenate(self.band_x),
            _concatenate(self.band_y),
            self.x_min,
            self.x_max,
            self.y_abs_max,
        )


def _bits(v: float) -> np.uint64:
    """The bits of a float >= 0, which order as the floats do."""
    return np.uint64(np.array(v, dtype=np.float64).view(np.uint64)[()])


def _concatenate(pieces: Sequence[Float64Array]) -> Float64Array:
    return np.concatenate(pieces) if pieces else np.empty(0)


def _table_combine(parts: Sequence[_TablePartial]) -> _TablePartial:
    """Combine function of a table: add the sums and counts, concatenate the bands."""
    return _TablePartial(
        np.sum([p.moments for p in parts], axis=0),
        np.sum([p.dev_moments for p in parts], axis=0),
        sum(p.below for p in parts),
        _concatenate([p.band_x for p in parts]),
        _concatenate([p.band_y for p in parts]),
        min(p.x_min for p in parts),
        max(p.x_max for p in parts),
        max(p.y_abs_max for p in parts),
    )


# --- polynomials in (xi, eta) ----------------------------------------------------------------
#
# A polynomial is a (7, 7) array P with P[a, b] the coefficient of xi^a eta^b; products are
# truncated to degree 6, which drops only zeros here (every product has degree <= 6).


def _pmul(a: Float64Array, b: Float64Array) -> Float64Array:
    out: Float64Array = scipy.signal.convolve2d(a, b)[: _DEGREE + 1, : _DEGREE + 1]
    return out


def _times_xi(poly: Float64Array, k: int) -> Float64Array:
    out = np.zeros_like(poly)
    out[k:] = poly[: poly.shape[0] - k]
    return out


def _contract(poly: Float64Array, table: Float64Array) -> float:
    """``Σ_a,b poly[a, b] table[a, b]``: the polynomial summed over the table's samples."""
    return math.fsum((poly * table).ravel().tolist())


def _residual_poly(e0: float, e1: float) -> Float64Array:
    """``r = eta - e0 - e1 xi``."""
    poly = np.zeros((_DEGREE + 1, _DEGREE + 1))
    poly[0, 0], poly[0, 1], poly[1, 0] = -e0, 1.0, -e1
    return poly


def _one_minus(v: float, r2: Float64Array) -> Float64Array:
    """``1 - v r²``."""
    poly = -v * r2
    poly[0, 0] += 1.0
    return poly


# --- the table -------------------------------------------------------------------------------


class _Table:
    """The monomial sums and bands of a reference line: later iterations without passes.

    Built by ``_residual_pass`` from a ``_TableSpec``. :meth:`tukey_sums` and
    :meth:`residuals` give what a weighted pass and a residual pass over the data would
    give (to rounding; the median exactly), or None when the line or a scale left what the
    table was built for.
    """

    def __init__(self, spec: _TableSpec, part: _TablePartial, *, n: int, c: float) -> None:
        self.spec, self.n, self.c = spec, n, c
        self.moments = part.moments
        self.dev_moments = part.dev_moments if spec.dev_inside > 0.0 else None
        self.below = part.below
        self.calls = 0
        x, y = part.band_x, part.band_y
        self.x, self.y = x, y
        self.r = np.empty(x.size)
        _residuals_into(x, y, spec.line, self.r)
        a = np.abs(self.r)
        # the band's samples near the cut-off, the deviance's cut-off and the median
        self.near_cut, self.near_dev, self.near_median = (
            np.flatnonzero((a >= lo) & (a <= hi)) for lo, hi in spec.bands()
        )
        self.xi = np.ldexp(x[self.near_cut] - spec.x0, -spec.x_exp)
        self.x_range = (part.x_min, part.x_max)
        b0, b1 = spec.line
        thresholds = max(spec.cut[1], spec.dev_cut[1], spec.median[1]) + spec.margin
        x_abs = max(abs(part.x_min), abs(part.x_max))
        # the rounding of two computed residuals, and of the thresholds, above the exact
        # difference of two lines (see _fits)
        self._rounding = (
            8.0 * _EPS * (x_abs * abs(b1) + abs(b0) + 2.0 * part.y_abs_max + thresholds)
        )
        self._x_abs = x_abs

    def _fits(self, line: Line) -> bool:
        """Whether no residual of ``line`` is further than the margin from the table's."""
        d0, d1 = line[0] - self.spec.line[0], line[1] - self.spec.line[1]
        drift = max(abs(d0 + d1 * v) for v in self.x_range)
        slack = self._rounding + 8.0 * _EPS * (self._x_abs * abs(line[1]) + abs(line[0]))
        return drift + slack <= self.spec.margin

    def _offsets(self, line: Line) -> tuple[float, float]:
        """``(e0, e1)`` with ``r = eta - e0 - e1 xi`` in the table's units."""
        spec = self.spec
        d0, d1 = line[0] - spec.line[0], line[1] - spec.line[1]
        e0 = math.ldexp(d0 + d1 * spec.x0, -spec.r_exp)
        e1 = math.ldexp(d1, spec.x_exp - spec.r_exp)
        return e0, e1

    def _band_residuals(self, line: Line) -> Float64Array:
        _residuals_into(self.x, self.y, line, self.r)
        return self.r

    def tukey_sums(self, line: Line, cs: float) -> Float64Array | None:
        """:func:`tukey_sums_chunk` over every sample (``x0`` the spec's), or None.

        Parameters
        ----------
        line : tuple of float
            The line whose residuals are weighted.
        cs : float
            Tukey's cut-off ``c s``.

        Returns
        -------
        numpy.ndarray or None
            The six sums, or None if ``line`` or ``cs`` is out of the table's reach.
        """
        spec = self.spec
        if not (spec.cut[0] <= cs <= spec.cut[1] and self._fits(line)):
            return None
        self.calls += 1
        e0, e1 = self._offsets(line)
        u = _inverse_square(math.ldexp(cs, -spec.r_exp))
        r = _residual_poly(e0, e1)
        r2 = _pmul(r, r)
        w = _one_minus(u, r2)
        w = _pmul(w, w)
        wr = _pmul(w, r)
        polys = (w, _times_xi(w, 1), _times_xi(w, 2), wr, _times_xi(wr, 1), _pmul(w, r2))
        inside = np.array([_contract(poly, self.moments) for poly in polys])
        # the samples near the cut-off, as they are
        rb = np.ldexp(self._band_residuals(line)[self.near_cut], -spec.r_exp)
        wb = np.maximum(1.0 - u * rb * rb, 0.0) ** 2
        xi = self.xi
        band = np.array(
            [
                wb.sum(),
                (wb * xi).sum(),
                (wb * xi * xi).sum(),
                (wb * rb).sum(),
                (wb * xi * rb).sum(),
                (wb * rb * rb).sum(),
            ]
        )
        ex, er = spec.x_exp, spec.r_exp
        sums: Float64Array = np.ldexp(inside + band, [0, ex, 2 * ex, er, ex + er, 2 * er])
        return sums

    def residuals(self, line: Line, s2: float) -> _Residuals | None:
        """What ``_residual_pass`` would find for ``line``, or None.

        Parameters
        ----------
        line : tuple of float
            The line.
        s2 : float
            The weighted fit's residual variance σ².

        Returns
        -------
        _Residuals or None
            The deviance, scale and median, or None if ``line``, ``s2`` or the median of
            ``|r|`` is out of the table's reach.
        """
        spec, c, n = self.spec, self.c, self.n
        t = c * s2
        if not (spec.dev_cut[0] <= t <= spec.dev_cut[1] and self._fits(line)):
            return None
        a = np.abs(self._band_residuals(line))
        ranks = [(n - 1) // 2 - self.below, n // 2 - self.below]
        values = a[self.near_median]
        if ranks[0] < 0 or ranks[1] >= values.size:
            return None
        chosen = np.partition(values, ranks)[ranks]
        lo, hi = float(chosen[0]), float(chosen[1])
        if not (spec.median[0] <= lo and hi <= spec.median[1]):
            return None
        self.calls += 1
        cubes = _sum_cubes(a[self.near_dev], _inverse_square(t))
        if self.dev_moments is not None:
            e0, e1 = self._offsets(line)
            r = _residual_poly(e0, e1)
            q3 = _one_minus(_inverse_square(math.ldexp(t, -spec.r_exp)), _pmul(r, r))
            cubes += _contract(_pmul(_pmul(q3, q3), q3), self.dev_moments)
        return _finish_residuals((lo, hi), cubes, n=n, c=c, passes=0)


def _plan_table(
    *,
    line: Line,
    previous: Line,
    x_range: tuple[float, float],
    x0: float,
    x_exp: int,
    residuals: _Residuals,
    c: float,
    dev_cut: float,
    previous_dev_cut: float,
    rounding: float,
    limit: float,
) -> _TableSpec | None:
    """The table to build with the residual pass of ``line``, or None while steps are large.

    Parameters
    ----------
    line, previous : tuple of float
        The line of the coming residual pass and the one before it.
    x_range : tuple of float
        The isosbestic's range (or an estimate: it only sizes the table).
    x0 : float
        The shift of the isosbestic.
    x_exp : int
        Monomials are taken of ``(x - x0) / 2**x_exp``.
    residuals : _Residuals
        The residuals of ``previous``.
    c : float
        Tukey's tuning constant.
    dev_cut, previous_dev_cut : float
        The deviance's cut-off ``c σ²`` of ``line`` and of ``previous``.
    rounding : float
        About the rounding error of a computed residual (a table's margin covers it).
    limit : float
        The largest step, relative to the median of ``|r|``, after which to build a table.

    Returns
    -------
    _TableSpec or None
        None when the last step moved a residual by more than ``limit`` times the median of
        ``|r|``.
    """
    median = residuals.median
    d0, d1 = line[0] - previous[0], line[1] - previous[1]
    step = max(abs(d0 + d1 * v) for v in x_range)
    if not (median > 0.0 and step <= limit * median):
        return None
    # IRLS steps shrink geometrically (by ~4 here); a margin of two steps lasts to the end
    margin = 2.0 * step + 1e-9 * median + 4.0 * rounding
    # an order statistic of |r| moves by at most the largest move of a residual
    reach = (step + margin) * (1.0 + 1e-9)
    lo, hi = residuals.middle[0] - reach, residuals.middle[1] + reach
    change = abs(dev_cut - previous_dev_cut) / dev_cut if dev_cut > 0.0 else math.inf
    dev_rel = min(max(4.0 * change, 1e-6), 0.05)
    dev_lo, dev_hi = dev_cut * (1.0 - dev_rel), dev_cut * (1.0 + dev_rel)
    wide = 1.0 + 1e-12
    return _TableSpec(
        line=line,
        x0=x0,
        x_exp=x_exp,
        r_exp=math.frexp(median)[1],
        margin=margin,
        cut=(c * lo / MAD_NORMALIZATION / wide, c * hi / MAD_NORMALIZATION * wide),
        dev_cut=(dev_lo, dev_hi),
        median=(lo, hi),
        # a cut-off far below the median (statsmodels' σ² is tiny for residuals in volts)
        # holds few samples: keep them all in the band rather than sum a second table
        dev_table=dev_hi + margin > _DEV_BAND * median,
    )
