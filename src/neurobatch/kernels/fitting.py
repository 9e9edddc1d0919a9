"""Isosbestic fits (OLS and robust IRLS) as chunk / combine / finalize sums.

Every fit here touches the data only through *chunk* functions, which reduce one block of
``(isosbestic, signal)`` to a small partial result, and *combine* functions, which merge any
number of partials into one. An algorithm that needs several passes over the data (the
robust IRLS fit, the exact median inside it) takes a *reducer*: a callable
``reduce(chunk, combine)`` that runs ``chunk`` over every block and folds the partials with
``combine``. :func:`local_reducer` does that over in-memory blocks (the whole array is one
block); ``neurobatch.engine.blocked`` does it with a dask tree reduction. The same code
therefore gives the whole-array answer on any blocking.

Partial results
---------------
* Co-moments (:class:`CoMoments`): the sum of weights and the weighted means and centred
  second moments of ``x`` (isosbestic) and ``y`` (signal), merged with Chan et al.'s
  parallel formula. Centred moments keep full precision where raw sums of squares cancel
  (a 1.5 V isosbestic that varies by 10 mV over 3.6 M samples).
* Exact-median partials (:class:`MedianSearch`): counts of the values' float64 bit patterns
  in bins of their leading bits, then the values of the one bin that holds the middle order
  statistic(s) once it is small (or, given a guess, the values in a window around it and
  the count below it), so that the median is exact, as ``numpy.median`` gives it.

Inside a block the chunk functions work through tiles of ``_TILE`` samples with reused
buffers, so that their temporaries stay in cache and their memory does not grow with the
block.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any, Literal, Protocol, TypedDict, TypeVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from neurobatch.kernels._validation import validate_finite, validate_same_length

__all__ = [
    "MAD_NORMALIZATION",
    "CoMoments",
    "FitResult",
    "MedianCell",
    "MedianPartial",
    "MedianPlan",
    "MedianSearch",
    "Reducer",
    "comoments_chunk",
    "comoments_combine",
    "exact_median",
    "fit_irls",
    "fit_ols",
    "local_reducer",
    "median_chunk",
    "median_combine",
    "ols_finalize",
    "solve_irls",
    "solve_ols",
]

T = TypeVar("T")
Float64Array = NDArray[np.float64]
KeyArray = NDArray[np.uint64]

#: Samples per tile inside a chunk function: 512 KiB buffers stay in cache, and each NumPy
#: call is long enough that dask's threads rarely contend for the GIL (16 Ki-sample tiles
#: ran 30 % slower on two threads than on one).
_TILE = 1 << 16
#: Bins per counting pass of the exact median (16 bits of the key at a time).
_BIN_BITS = 16
#: A median bin with at most this many values is collected (8 bytes each) and selected.
_COLLECT_MAX = 1 << 18
_KEY_MAX = (1 << 64) - 1
_SIGN = np.uint64(1 << 63)
_LOW63 = np.uint64((1 << 63) - 1)

#: ``scipy.stats.norm.ppf(0.75)``: the MAD of a unit normal, statsmodels' ``GAUSSIAN_3_4``.
MAD_NORMALIZATION = 0.6744897501960817


class Reducer(Protocol):
    """Run a chunk function over every block and fold the partials with a combine function.

    ``reduce(chunk, combine)`` calls ``chunk(*block_arrays)`` once per block (for the fits:
    ``chunk(isosbestic_block, signal_block)``) and returns ``combine`` applied to the list
    of partials, possibly as a tree of partial combines. ``combine`` must therefore be
    associative and accept a list of any length, including one.
    """

    def __call__(self, chunk: Callable[..., T], combine: Callable[[list[T]], T], /) -> T:
        """Reduce every block with ``chunk`` and fold the partials with ``combine``."""
        ...


def local_reducer(*blocks: Sequence[ArrayLike]) -> Reducer:
    """Return a reducer over in-memory blocks.

    Parameters
    ----------
    *blocks : sequence of array_like
        One sequence of blocks per argument of the chunk functions, all of the same
        number of blocks; for the fits ``(isosbestic_blocks, signal_blocks)``, for
        :func:`exact_median` a single sequence. ``[x]`` makes the whole array one block.

    Returns
    -------
    Reducer
        ``reduce(chunk, combine)`` returns ``combine([chunk(*b) for b in zip(*blocks)])``.

    Raises
    ------
    ValueError
        If the sequences hold different numbers of blocks, or none.

    Examples
    --------
    >>> reduce = local_reducer([np.array([3.0, 1.0]), np.array([2.0])])
    >>> print(exact_median(reduce))
    2.0
    """
    counts = {len(b) for b in blocks}
    if len(counts) != 1 or 0 in counts:
        raise ValueError(
            "blocks must be one or more sequences of the same, non-zero number of blocks, "
            f"got sequences of {[len(b) for b in blocks]} blocks."
        )
    arrays = [[np.asarray(a) for a in b] for b in blocks]

    def reduce(chunk: Callable[..., T], combine: Callable[[list[T]], T], /) -> T:
        return combine([chunk(*args) for args in zip(*arrays, strict=True)])

    return reduce


# --- results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FitResult:
    """Coefficients of ``signal ≈ intercept + slope * isosbestic`` and how they were fitted.

    Attributes
    ----------
    intercept : float
        ``b0``, in signal units (0.0 for a fit without intercept).
    slope : float
        ``b1``, signal units per isosbestic unit.
    r_squared : float
        ``1 - Σ(signal - reference)² / Σ(signal - mean(signal))²``: unweighted and centred
        for every method, as PhoPro records it (``sklearn.metrics.r2_score(signal,
        reference)``). For OLS with intercept this is statsmodels' ``OLS(...).rsquared``;
        without intercept statsmodels reports the uncentred ``1 - SSR / Σ signal²`` instead,
        and ``RLM`` reports none. It is 1.0 for a constant signal fitted exactly and 0.0 for
        a constant signal fitted otherwise (``r2_score``'s convention); it can be negative
        for a fit without intercept or a robust fit.
    method : {'ols', 'irls'}
        The estimator.
    n_samples : int
        Number of samples fitted.
    has_intercept : bool
        Whether the intercept was fitted (False: it is fixed at 0).
    scale : float or None
        IRLS only: the final robust scale, ``median(|residual|) / 0.6745`` (statsmodels'
        ``RLMResults.scale``). None for OLS.
    n_iter : int
        IRLS only: statsmodels' ``fit_history['iteration']`` (the initial OLS fit counts as
        1). 0 for OLS.
    converged : bool
        IRLS only: whether the deviance changed by at most ``tol`` in the last iteration
        (False when ``maxiter`` stopped it, or a zero scale did). True for OLS.

    Examples
    --------
    >>> fit = FitResult(intercept=0.5, slope=2.0, r_squared=0.9, method="ols", n_samples=10)
    >>> fit.reference(np.array([0.0, 1.0]))
    array([0.5, 2.5])
    >>> fit.to_dict()["slope"]
    2.0
    """

    intercept: float
    slope: float
    r_squared: float
    method: Literal["ols", "irls"]
    n_samples: int
    has_intercept: bool = True
    scale: float | None = None
    n_iter: int = 0
    converged: bool = True

    def reference(self, isosbestic: ArrayLike) -> Float64Array:
        """Return the fitted reference ``intercept + slope * isosbestic``.

        Parameters
        ----------
        isosbestic : array_like
            Isosbestic samples, any shape (NumPy; for a dask array write
            ``fit.intercept + fit.slope * x`` to stay lazy).

        Returns
        -------
        numpy.ndarray of float64
            The reference, the shape of ``isosbestic``.

        Examples
        --------
        >>> FitResult(1.0, 0.5, 1.0, "ols", 2).reference([2.0, 4.0])
        array([2., 3.])
        """
        x = np.asarray(isosbestic, dtype=np.float64)
        ref = x * self.slope
        ref += self.intercept
        return ref

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a JSON-serialisable dict (for a recording's ``attrs``).

        Returns
        -------
        dict
            Field name to value.

        Examples
        --------
        >>> sorted(FitResult(1.0, 0.5, 1.0, "ols", 2).to_dict())[:3]
        ['converged', 'has_intercept', 'intercept']
        """
        return asdict(self)


# --- co-moments -------------------------------------------------------------------------------


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


def _as_block(a: ArrayLike) -> Float64Array:
    """A block as a contiguous 1-D float64 array (no copy when it already is one)."""
    return np.ascontiguousarray(np.asarray(a, dtype=np.float64).reshape(-1))


def _sum_product(a: Float64Array, b: Float64Array, out: Float64Array) -> float:
    """``Σ a b``, pairwise-summed and without BLAS (whose threads fight dask's)."""
    np.multiply(a, b, out=out)
    return float(out.sum())


_TukeyParams = tuple[float, float, float]  # (intercept, slope, 1 / (c * scale)²)
#: ``np.maximum(a, zeros)`` is twice as fast as ``np.maximum(a, 0.0)``.
_ZEROS = np.zeros(_TILE)
_ZEROS.flags.writeable = False


def _tukey_weights(
    x: Float64Array, y: Float64Array, params: _TukeyParams, out: Float64Array
) -> Float64Array:
    """Tukey biweights ``(1 - (r / (c s))²)²`` (0 beyond ``c s``) of ``r = y - b0 - b1 x``."""
    b0, b1, inv_cs2 = params
    np.multiply(x, b1, out=out)
    out += b0
    np.subtract(y, out, out=out)
    np.multiply(out, out, out=out)
    out *= -inv_cs2
    out += 1.0
    np.maximum(out, _ZEROS[: out.size], out=out)
    np.multiply(out, out, out=out)
    return out


def _moments_chunk(x: Float64Array, y: Float64Array, tukey: _TukeyParams | None) -> CoMoments:
    """Co-moments of a block, tile by tile, merged with Chan et al.'s formula."""
    n = x.size
    if y.size != n:
        raise ValueError(
            f"isosbestic and signal blocks must have the same length, got {n} and {y.size}."
        )
    if n == 0:
        return CoMoments(weight=0.0, mean_x=0.0, mean_y=0.0, cxx=0.0, cxy=0.0, cyy=0.0)
    m0 = min(n, _TILE)
    w_buf, wd_buf, dx_buf, dy_buf, p_buf = (np.empty(m0) for _ in range(5))
    parts = np.empty((6, -(-n // _TILE)))
    with np.errstate(over="ignore", invalid="ignore"):
        for i, start in enumerate(range(0, n, _TILE)):
            xt = x[start : start + _TILE]
            yt = y[start : start + _TILE]
            m = xt.size
            dx, dy, p = dx_buf[:m], dy_buf[:m], p_buf[:m]
            if tukey is None:
                total = float(m)
                mean_x = float(xt.sum()) / total
                mean_y = float(yt.sum()) / total
                np.subtract(xt, mean_x, out=dx)
                np.subtract(yt, mean_y, out=dy)
                cxx = _sum_product(dx, dx, p)
                cxy = _sum_product(dx, dy, p)
                cyy = _sum_product(dy, dy, p)
            else:
                # Sums shifted by the tile's first sample, then centred: no separate pass
                # for the means. A sample of the tile is within a few tile standard
                # deviations of its mean, which costs at most a few bits of 53.
                w = _tukey_weights(xt, yt, tukey, w_buf[:m])
                total = float(w.sum())
                if total == 0.0:
                    parts[:, i] = 0.0
                    continue
                x0, y0 = float(xt[0]), float(yt[0])
                np.subtract(xt, x0, out=dx)
                np.subtract(yt, y0, out=dy)
                wd = wd_buf[:m]
                np.multiply(w, dx, out=wd)
                sx = float(wd.sum())
                sxx = _sum_product(wd, dx, p)
                sxy = _sum_product(wd, dy, p)
                np.multiply(w, dy, out=wd)
                sy = float(wd.sum())
                syy = _sum_product(wd, dy, p)
                mean_dx, mean_dy = sx / total, sy / total
                mean_x, mean_y = x0 + mean_dx, y0 + mean_dy
                cxx, cxy, cyy = sxx - sx * mean_dx, sxy - sx * mean_dy, syy - sy * mean_dy
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
    ols_finalize : the fit from the merged co-moments.

    Examples
    --------
    >>> m = comoments_chunk([0.0, 1.0, 2.0], [1.0, 3.0, 5.0])
    >>> m["weight"], m["mean_x"], m["cxx"], m["cxy"]
    (3.0, 1.0, 2.0, 4.0)
    """
    return _moments_chunk(_as_block(isosbestic), _as_block(signal), None)


def _tukey_comoments_chunk(
    isosbestic: ArrayLike, signal: ArrayLike, *, tukey: _TukeyParams
) -> CoMoments:
    """Chunk function of one IRLS step: co-moments under the Tukey weights of a fit."""
    return _moments_chunk(_as_block(isosbestic), _as_block(signal), tukey)


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


def ols_finalize(moments: CoMoments, *, intercept: bool = True) -> FitResult:
    """Finalize the OLS fit from the co-moments of all blocks.

    With intercept, ``slope = cxy / cxx`` and ``intercept = mean_y - slope * mean_x``;
    without, ``slope = Σxy / Σx²`` with the uncentred sums recovered exactly as
    ``cxy + n mean_x mean_y`` and ``cxx + n mean_x²``.

    Parameters
    ----------
    moments : CoMoments
        The merged co-moments (:func:`comoments_combine`).
    intercept : bool, default True
        Fit ``b0 + b1 x`` (True) or ``b1 x`` (False).

    Returns
    -------
    FitResult
        ``method='ols'``; ``r_squared`` as documented there.

    Raises
    ------
    ValueError
        If the co-moments are not finite (NaN or infinity in the input), there are fewer
        than 2 samples, or the fit is singular (constant isosbestic with intercept, all-zero
        isosbestic without).

    Examples
    --------
    >>> fit = ols_finalize(comoments_chunk([0.0, 1.0, 2.0], [1.0, 3.0, 5.0]))
    >>> fit.intercept, fit.slope, fit.r_squared
    (1.0, 2.0, 1.0)
    """
    n = _check_moments(moments, min_samples=2, what="fit_ols")
    b0, b1 = _solve_wls(moments, intercept=intercept)
    r2 = _r_squared(_ssr(moments, b0, b1), moments["cyy"])
    return FitResult(
        intercept=float(b0),
        slope=float(b1),
        r_squared=float(r2),
        method="ols",
        n_samples=n,
        has_intercept=intercept,
    )


def solve_ols(reduce: Reducer, *, intercept: bool = True) -> FitResult:
    """OLS fit of ``signal ≈ b0 + b1 * isosbestic`` over the blocks of a reducer: one pass.

    Parameters
    ----------
    reduce : Reducer
        Runs chunk functions over blocks of ``(isosbestic, signal)``
        (:func:`local_reducer`, or the engine's dask tree reduction).
    intercept : bool, default True
        Whether to fit the intercept.

    Returns
    -------
    FitResult
        As :func:`ols_finalize`.

    Raises
    ------
    ValueError
        As :func:`ols_finalize`.

    See Also
    --------
    fit_ols : the same on whole NumPy arrays, with input validation.

    Examples
    --------
    >>> reduce = local_reducer([[0.0, 1.0], [2.0]], [[1.0, 3.0], [5.0]])
    >>> solve_ols(reduce).slope
    2.0
    """
    return ols_finalize(reduce(comoments_chunk, comoments_combine), intercept=intercept)


# --- exact median in blocks -----------------------------------------------------------------
#
# Values are mapped to uint64 keys that order as the floats do (flip every bit of a
# negative float, set the sign bit of a non-negative one). A counting pass counts the keys
# of an interval in 2**16 bins of equal key width (the first: the leading 16 bits, i.e.
# sign, exponent and 4 mantissa bits, so no [min, max] pass is needed); the bin holding
# each middle order statistic becomes the next interval. Once an interval holds few keys, a
# pass collects them and ``np.partition`` selects; an interval of a single key is a tie,
# resolved without collecting. Each counting pass divides the key width by 2**16, so at
# most four are ever needed (all-equal data), typically one count and one collect.
#
# When the count is known and the median roughly (the previous IRLS iteration's), a single
# pass can instead collect a window of keys around the guess and count the keys below it:
# if the middle ranks fall inside, the search is done in one pass; otherwise it goes on in
# the part below or above the window, whose counts are then known.


@dataclass(frozen=True)
class MedianCell:
    """What one pass gathers about the keys in ``[lo, hi]``.

    Attributes
    ----------
    lo, hi : int
        Inclusive key interval (keys are the values' order-preserving uint64 images).
    shift : int
        Counting cells: keys are counted in bins ``(key - lo) >> shift``.
    collect : bool
        True: gather the keys themselves instead of counting them.
    count_below : bool
        Also count the keys below ``lo`` (a speculative window).
    """

    lo: int
    hi: int
    shift: int = 0
    collect: bool = False
    count_below: bool = False

    @property
    def n_bins(self) -> int:
        """Number of counting bins."""
        return ((self.hi - self.lo) >> self.shift) + 1

    @property
    def full(self) -> bool:
        """Whether the cell covers every key (no selection needed)."""
        return self.lo == 0 and self.hi == _KEY_MAX


#: The cells one pass of the exact median gathers.
MedianPlan = tuple[MedianCell, ...]
#: Per cell: int64 bin counts or the collected uint64 keys, and the count of keys below
#: ``lo`` (0 unless ``count_below``).
MedianPartial = tuple[tuple[NDArray[Any], int], ...]


def _float_keys(values: Float64Array) -> KeyArray:
    """Order-preserving uint64 keys of float64 values (-0.0 sorts just below +0.0)."""
    u = values.view(np.uint64)
    return u ^ (((u >> np.uint64(63)) * _LOW63) | _SIGN)


def _key_value(key: int) -> float:
    """The float64 whose key is ``key``."""
    bits = key ^ (1 << 63) if key >> 63 else ~key & _KEY_MAX
    return float(np.array(bits, dtype=np.uint64).view(np.float64))


def _value_window(center: float, rel: float) -> tuple[int, int]:
    """Keys of ``[center - rel |center|, center + rel |center|]``."""
    half = abs(center) * rel
    lo, hi = _float_keys(np.array([center - half, center + half], dtype=np.float64))
    return int(lo), int(hi)


class _Gatherer:
    """Accumulates one block's :data:`MedianPartial`, tile by tile."""

    def __init__(self, plan: MedianPlan, size: int) -> None:
        self.plan = plan
        self.pieces: list[list[NDArray[Any]]] = [[] for _ in plan]
        self.below = [0] * len(plan)
        counting_all = any(c.full and not c.collect for c in plan)
        self.full_bins = np.empty(size, dtype=np.uint64) if counting_all else None
        self.pos = 0
        m = min(size, _TILE)
        self.offset = np.empty(m, dtype=np.uint64)
        self.mask = np.empty(m, dtype=bool)

    def add(self, keys: KeyArray) -> None:
        m = keys.size
        offset, mask = self.offset[:m], self.mask[:m]
        for i, cell in enumerate(self.plan):
            if cell.full and not cell.collect and self.full_bins is not None:
                shift = np.uint64(cell.shift)
                np.right_shift(keys, shift, out=self.full_bins[self.pos : self.pos + m])
                continue
            lo = np.uint64(cell.lo)
            np.subtract(keys, lo, out=offset)
            np.less_equal(offset, np.uint64(cell.hi - cell.lo), out=mask)
            if cell.collect:
                self.pieces[i].append(keys[mask])
            else:
                self.pieces[i].append(offset[mask] >> np.uint64(cell.shift))
            if cell.count_below:
                np.less(keys, lo, out=mask)
                self.below[i] += int(np.count_nonzero(mask))
        self.pos += m

    def partial(self) -> MedianPartial:
        out: list[tuple[NDArray[Any], int]] = []
        for cell, pieces, below in zip(self.plan, self.pieces, self.below, strict=True):
            if cell.full and not cell.collect and self.full_bins is not None:
                bins = self.full_bins[: self.pos]
            else:
                bins = np.concatenate(pieces) if pieces else np.empty(0, np.uint64)
            if cell.collect:
                out.append((bins, below))
            else:
                out.append((np.bincount(bins.view(np.int64), minlength=cell.n_bins), below))
        return tuple(out)


def median_chunk(values: ArrayLike, plan: MedianPlan) -> MedianPartial:
    """Chunk function of the exact median: gather one block's counts or keys for ``plan``.

    Parameters
    ----------
    values : array_like
        One block of values (any shape; cast to float64). Must not hold NaN.
    plan : MedianPlan
        :attr:`MedianSearch.plan` of the search in progress.

    Returns
    -------
    MedianPartial
        One ``(array, count below)`` pair per cell of ``plan``.

    Raises
    ------
    ValueError
        If the block holds NaN.

    See Also
    --------
    exact_median : the whole search over a reducer.

    Examples
    --------
    >>> search = MedianSearch()
    >>> counts, _ = median_chunk([1.0, 2.0, 3.0], search.plan)[0]
    >>> int(counts.sum())
    3
    """
    v = _as_block(values)
    n_nan = int(np.isnan(v).sum())
    if n_nan:
        raise ValueError(f"values must not hold NaN, got {n_nan} in a block of {v.size}.")
    gatherer = _Gatherer(plan, v.size)
    for start in range(0, v.size, _TILE):
        gatherer.add(_float_keys(v[start : start + _TILE]))
    return gatherer.partial()


def median_combine(parts: Sequence[MedianPartial]) -> MedianPartial:
    """Combine function of the exact median: add counts, concatenate collected keys.

    Parameters
    ----------
    parts : sequence of MedianPartial
        Partials of disjoint blocks for the same plan (at least one).

    Returns
    -------
    MedianPartial
        The partial of the union of the blocks.

    Examples
    --------
    >>> plan = MedianSearch().plan
    >>> a, b = median_chunk([1.0, 2.0], plan), median_chunk([3.0], plan)
    >>> counts, _ = median_combine([a, b])[0]
    >>> int(counts.sum())
    3
    """
    merged: list[tuple[NDArray[Any], int]] = []
    for cells in zip(*parts, strict=True):
        arrays = [a for a, _ in cells]
        below = sum(b for _, b in cells)
        if arrays[0].dtype == np.uint64:
            merged.append((np.concatenate(arrays), below))
        else:
            merged.append((np.sum(arrays, axis=0), below))
    return tuple(merged)


@dataclass(frozen=True)
class _Interval:
    """Keys in ``[lo, hi]`` (``count`` of them, -1 if unknown) hold order statistics
    ``ranks`` (None: the middle ones, once the total is known); ``below`` keys are < lo."""

    lo: int
    hi: int
    below: int
    ranks: tuple[int, ...] | None
    count: int


def _middle_ranks(n: int) -> tuple[int, ...]:
    return tuple(sorted({(n - 1) // 2, n // 2}))


class MedianSearch:
    """State of an exact median search: what the next pass gathers, and what is found.

    Drive it with ``search.advance(reduce(partial(median_chunk, plan=search.plan),
    median_combine))`` until ``search.done``; :func:`exact_median` does exactly that.

    Parameters
    ----------
    n : int, optional
        The number of values, when known in advance.
    window : tuple of int, optional
        Keys ``(lo, hi)`` where the median probably lies (needs ``n``): the first pass
        collects them and counts the keys below, so that a good guess ends the search in
        one pass.

    Examples
    --------
    >>> from functools import partial
    >>> reduce = local_reducer([np.array([5.0, 1.0]), np.array([4.0, 2.0])])
    >>> search = MedianSearch()
    >>> while not search.done:
    ...     search.advance(reduce(partial(median_chunk, plan=search.plan), median_combine))
    >>> search.n, search.passes, search.order_statistics(), search.median()
    (4, 2, (2.0, 4.0), 3.0)
    """

    def __init__(self, *, n: int | None = None, window: tuple[int, int] | None = None) -> None:
        if window is not None and n is None:
            raise ValueError("a median search with a window needs the number of values n.")
        if n is not None and n < 1:
            raise ValueError(f"n must be >= 1 (the number of values), got {n}.")
        self.n = n
        self.passes = 0
        ranks = None if n is None else _middle_ranks(n)
        self._pending = [_Interval(0, _KEY_MAX, 0, ranks, -1 if n is None else n)]
        self._window = window
        self._found: dict[int, int] = {}
        self._plan: MedianPlan | None = None

    @property
    def done(self) -> bool:
        """Whether the middle order statistics are known."""
        return not self._pending

    @property
    def plan(self) -> MedianPlan:
        """The cells the next pass must gather."""
        if self._plan is None:
            if self.passes == 0 and self._window is not None:
                lo, hi = self._window
                self._plan = (MedianCell(lo, hi, collect=True, count_below=True),)
            else:
                self._plan = tuple(self._cell(iv) for iv in self._pending)
        return self._plan

    @staticmethod
    def _cell(iv: _Interval) -> MedianCell:
        if 0 <= iv.count <= _COLLECT_MAX:
            return MedianCell(iv.lo, iv.hi, collect=True)
        return MedianCell(iv.lo, iv.hi, shift=max((iv.hi - iv.lo).bit_length() - _BIN_BITS, 0))

    def advance(self, partial: MedianPartial) -> None:
        """Take in the combined partial of the pass gathered for :attr:`plan`.

        Parameters
        ----------
        partial : MedianPartial
            ``median_combine`` of every block's ``median_chunk(values, self.plan)``.

        Raises
        ------
        ValueError
            If there are no values at all.
        """
        pending: list[_Interval] = []
        for iv, cell, (data, below) in zip(self._pending, self.plan, partial, strict=True):
            if cell.count_below:
                self._split_at_window(iv, cell, data, below, pending)
            elif cell.collect:
                self._select(data, iv)
            else:
                self._narrow(iv, cell, data, pending)
        self._pending = pending
        self._plan = None
        self.passes += 1

    def _split_at_window(
        self, iv: _Interval, cell: MedianCell, keys: KeyArray, below: int, pending: list[_Interval]
    ) -> None:
        inside = keys.size
        ranks = iv.ranks or ()
        low = tuple(k for k in ranks if k < below)
        mid = tuple(k for k in ranks if below <= k < below + inside)
        high = tuple(k for k in ranks if k >= below + inside)
        if mid:
            self._select(keys, _Interval(cell.lo, cell.hi, below, mid, inside))
        if low:
            pending.append(_Interval(iv.lo, cell.lo - 1, iv.below, low, below - iv.below))
        if high:
            rest = iv.below + iv.count - below - inside
            pending.append(_Interval(cell.hi + 1, iv.hi, below + inside, high, rest))

    def _narrow(
        self, iv: _Interval, cell: MedianCell, counts: NDArray[Any], pending: list[_Interval]
    ) -> None:
        ranks = iv.ranks
        if ranks is None:
            n = int(counts.sum())
            if n == 0:
                raise ValueError("values must hold at least one value, got 0.")
            self.n = n
            ranks = _middle_ranks(n)
        cum = np.cumsum(counts)
        groups: dict[int, list[int]] = {}
        for k in ranks:
            groups.setdefault(int(np.searchsorted(cum, k - iv.below, side="right")), []).append(k)
        for j, ks in groups.items():
            lo = iv.lo + (j << cell.shift)
            hi = min(lo + (1 << cell.shift) - 1, iv.hi)
            if lo == hi:  # a single key: every one of these order statistics is it
                self._found.update(dict.fromkeys(ks, lo))
                continue
            below = iv.below + (int(cum[j - 1]) if j else 0)
            pending.append(_Interval(lo, hi, below, tuple(ks), int(counts[j])))

    def _select(self, keys: KeyArray, iv: _Interval) -> None:
        ranks = iv.ranks or ()
        kth = [k - iv.below for k in ranks]
        chosen = np.partition(keys, kth)
        for k, i in zip(ranks, kth, strict=True):
            self._found[k] = int(chosen[i])

    def order_statistics(self) -> tuple[float, float]:
        """The lower and upper middle order statistics (equal for an odd count).

        Returns
        -------
        tuple of float
            ``(sorted[(n - 1) // 2], sorted[n // 2])``.

        Raises
        ------
        ValueError
            If the search is not done.
        """
        if not self.done or self.n is None:
            raise ValueError("the median search is not done: advance it until search.done.")
        n = self.n
        return _key_value(self._found[(n - 1) // 2]), _key_value(self._found[n // 2])

    def median(self) -> float:
        """The median, as ``numpy.median`` computes it (mean of the two middle values).

        Returns
        -------
        float
            The median.
        """
        lo, hi = self.order_statistics()
        return lo if self.n is not None and self.n % 2 else (lo + hi) / 2.0


def exact_median(reduce: Reducer) -> float:
    """The exact median of values spread over blocks, as ``numpy.median`` gives it.

    Typically two passes (count the values' leading bits, then collect the middle bin);
    at most five.

    Parameters
    ----------
    reduce : Reducer
        Runs chunk functions over the blocks of a single array of values.

    Returns
    -------
    float
        The median (the mean of the two middle values for an even count).

    Raises
    ------
    ValueError
        If there are no values, or some are NaN.

    Examples
    --------
    >>> exact_median(local_reducer([np.array([1.0, 7.0]), np.array([3.0, 3.0])]))
    3.0
    """
    search = MedianSearch()
    while not search.done:
        search.advance(reduce(partial(median_chunk, plan=search.plan), median_combine))
    return search.median()


# --- robust IRLS (Tukey's biweight) ---------------------------------------------------------


class _ResidualPartial(TypedDict):
    """Partial of a residual pass: ``Σ q³`` of the deviance and the median partial."""

    cubes: float
    median: MedianPartial


def _residual_chunk(
    isosbestic: ArrayLike,
    signal: ArrayLike,
    *,
    line: tuple[float, float],
    plan: MedianPlan,
    inv_cs2: float | None,
) -> _ResidualPartial:
    """Chunk function of an IRLS residual pass over ``r = y - b0 - b1 x``.

    Gathers the median partial of ``|r|`` for ``plan`` and, when ``inv_cs2`` (``1 / (c s²)²``
    for statsmodels' deviance ``Σ ρ(r / s²)``) is given, ``Σ q³`` with
    ``q = max(1 - r² inv_cs2, 0)``, so that ``Σ ρ = c²/6 (n - Σ q³)``.
    """
    x, y = _as_block(isosbestic), _as_block(signal)
    b0, b1 = line
    n = x.size
    gatherer = _Gatherer(plan, n)
    cubes = 0.0
    m0 = min(n, _TILE)
    r_buf, p_buf, q_buf = (np.empty(m0) for _ in range(3))
    with np.errstate(over="ignore", invalid="ignore"):
        for start in range(0, n, _TILE):
            xt = x[start : start + _TILE]
            yt = y[start : start + _TILE]
            m = xt.size
            r, p, q = r_buf[:m], p_buf[:m], q_buf[:m]
            np.multiply(xt, b1, out=r)
            r += b0
            np.subtract(yt, r, out=r)
            if inv_cs2 is not None:
                np.multiply(r, r, out=p)
                p *= -inv_cs2
                p += 1.0
                np.maximum(p, _ZEROS[:m], out=p)
                np.multiply(p, p, out=q)
                cubes += _sum_product(q, p, q)
            # the key of |r|: clear the sign bit (abs), then set it (key of a float >= 0)
            keys = r.view(np.uint64)
            np.bitwise_or(keys, _SIGN, out=keys)
            gatherer.add(keys)
    return _ResidualPartial(cubes=cubes, median=gatherer.partial())


def _residual_combine(parts: Sequence[_ResidualPartial]) -> _ResidualPartial:
    """Combine function of an IRLS residual pass."""
    return _ResidualPartial(
        cubes=math.fsum(p["cubes"] for p in parts),
        median=median_combine([p["median"] for p in parts]),
    )


@dataclass(frozen=True)
class _Residuals:
    """What a residual pass found: deviance, MAD scale, median of ``|r|``, passes."""

    deviance: float
    scale: float
    median: float
    passes: int


def _residual_pass(
    reduce: Reducer,
    line: tuple[float, float],
    *,
    n: int,
    c: float,
    s2: float,
    window: tuple[int, int] | None,
) -> _Residuals:
    """Deviance and MAD scale of the residuals of ``line``: one pass, more if needed."""
    search = MedianSearch(n=n, window=window)
    inv_cs2 = _inverse_square(c * s2)
    first = reduce(
        partial(_residual_chunk, line=line, plan=search.plan, inv_cs2=inv_cs2),
        _residual_combine,
    )
    search.advance(first["median"])
    while not search.done:
        more = reduce(
            partial(_residual_chunk, line=line, plan=search.plan, inv_cs2=None),
            _residual_combine,
        )
        search.advance(more["median"])
    lo, hi = search.order_statistics()
    # statsmodels: np.median(|r| / 0.6745), i.e. the mean of the two middle quotients
    lo_q, hi_q = lo / MAD_NORMALIZATION, hi / MAD_NORMALIZATION
    return _Residuals(
        deviance=c * c / 6.0 * (n - first["cubes"]),
        scale=lo_q if n % 2 else (lo_q + hi_q) / 2.0,
        median=search.median(),
        passes=search.passes,
    )


def _inverse_square(v: float) -> float:
    """``1 / v²``, infinite for 0 (and for squares that underflow)."""
    with np.errstate(divide="ignore", over="ignore", under="ignore"):
        return float(np.float64(1.0) / np.float64(v) ** 2)


def _next_window(current: _Residuals, previous: _Residuals | None) -> tuple[int, int]:
    """Where the next iteration's median of ``|r|`` probably lies: around this one, by
    4 times the last relative change (0.1 % to 30 %; 30 % after the first step from OLS)."""
    rel = 0.3
    if previous is not None and current.median > 0.0:
        change = abs(current.median - previous.median) / current.median
        rel = min(max(4.0 * change, 1e-3), 0.3)
    return _value_window(current.median, rel)


def _validate_irls_options(c: float, maxiter: int, tol: float) -> None:
    if not (isinstance(c, int | float) and math.isfinite(c) and c > 0):
        raise ValueError(f"c must be a finite number > 0 (Tukey's tuning constant), got {c!r}.")
    if isinstance(maxiter, bool) or not isinstance(maxiter, int | np.integer) or maxiter < 1:
        raise ValueError(f"maxiter must be an integer >= 1, got {maxiter!r}.")
    if not (isinstance(tol, int | float) and tol >= 0 and not math.isnan(tol)):
        raise ValueError(f"tol must be a number >= 0, got {tol!r}.")


def solve_irls(
    reduce: Reducer,
    *,
    c: float = 3.0,
    maxiter: int = 50,
    tol: float = 1e-8,
    intercept: bool = True,
) -> FitResult:
    """Robust fit with Tukey's biweight by IRLS over the blocks of a reducer.

    Reproduces ``statsmodels.api.RLM(signal, [1, isosbestic],
    M=TukeyBiweight(c)).fit(maxiter=maxiter, tol=tol)`` with its defaults
    (``scale_est='mad'``, ``conv='dev'``, ``update_scale=True``), step for step:

    1. OLS fit; scale ``s = median(|r|) / 0.6745`` (statsmodels' ``mad(r, center=0)``: the
       residuals are not re-centred), deviance ``Σ ρ(r / σ²)`` with ``σ²`` the fit's
       residual variance ``Σ w r² / (n - p)`` (statsmodels uses that WLS ``scale`` there,
       not ``s``); ``iteration = 1``.
    2. While ``s > 0``: weights ``w = (1 - (r / (c s))²)²`` for ``|r| <= c s``, else 0;
       weighted least squares; new ``r``, ``s`` and deviance; ``iteration += 1``; stop once
       the deviance changed by at most ``tol`` or ``iteration == maxiter``.

    Each iteration is one pass of weighted co-moments (:func:`comoments_combine`) and one
    pass over the residuals that gathers the deviance and the exact median of ``|r|`` at
    once (collecting a window around the previous median; more passes only if the median
    moved out of it).

    The iteration count of statsmodels is reproduced as long as rounding does not decide
    the stopping test: on millions of samples the deviance is a sum of millions of terms,
    whose rounding (here and in statsmodels) is close to ``tol = 1e-8``, so the last few
    iterations can differ; the coefficients then still agree to ~1e-12.

    Rounding can also keep a fit going round a few states for good, each deviance change
    above ``tol`` (4 of 50 synthetic hours at 1 kHz). Such a fit runs to ``maxiter``; once
    it is back in a state it was in, its state at ``maxiter`` is read off the cycle instead
    of iterating on: the same result, with ``n_iter = maxiter`` and ``converged`` False.

    Parameters
    ----------
    reduce : Reducer
        Runs chunk functions over blocks of ``(isosbestic, signal)``.
    c : float, default 3.0
        Tukey's tuning constant, in units of the scale ``s``.
    maxiter : int, default 50
        statsmodels' ``maxiter`` (the initial OLS fit counts as one iteration).
    tol : float, default 1e-8
        Convergence tolerance on the absolute change of the deviance.
    intercept : bool, default True
        Whether to fit the intercept.

    Returns
    -------
    FitResult
        ``method='irls'``, with ``scale``, ``n_iter`` and ``converged``; ``r_squared`` is
        the unweighted centred R² of the final line (PhoPro's).

    Raises
    ------
    ValueError
        If an option is out of range, the input is not finite, there are fewer than 3
        samples (2 without intercept), or a fit is singular.

    See Also
    --------
    fit_irls : the same on whole NumPy arrays, with input validation.

    Examples
    --------
    >>> x = np.linspace(0.0, 1.0, 50)
    >>> y = 1.0 + 2.0 * x + 0.01 * np.sin(40.0 * x)
    >>> y[10] += 5.0  # an artefact
    >>> fit = solve_irls(local_reducer([x], [y]))
    >>> round(fit.intercept, 2), round(fit.slope, 2), fit.converged
    (1.0, 2.0, True)
    """
    _validate_irls_options(c, maxiter, tol)
    c = float(c)
    p = 2 if intercept else 1
    moments = reduce(comoments_chunk, comoments_combine)
    n = _check_moments(moments, min_samples=p + 1, what="fit_irls")
    line = _solve_wls(moments, intercept=intercept)
    s2 = _ssr(moments, *line) / (n - p)
    resid = _residual_pass(reduce, line, n=n, c=c, s2=s2, window=None)
    previous: _Residuals | None = None
    iteration, converged = 1, False
    # every iteration's state, and the iteration of each: the line and scale decide every
    # later iteration, and with the deviance the stopping tests too, so a state seen before
    # (all four numbers) starts a cycle
    states = [(line, resid)]
    seen = {_state_key(line, resid): 1}
    while resid.scale != 0.0:  # statsmodels stops (with a warning) on a zero scale
        tukey = (line[0], line[1], _inverse_square(c * resid.scale))
        weighted = reduce(partial(_tukey_comoments_chunk, tukey=tukey), comoments_combine)
        line = _solve_wls(weighted, intercept=intercept, weighted=True)
        s2 = _ssr(weighted, *line) / (n - p)
        window = _next_window(resid, previous)
        previous, resid = resid, _residual_pass(reduce, line, n=n, c=c, s2=s2, window=window)
        iteration += 1
        change = abs(resid.deviance - previous.deviance)
        if not (change > tol and iteration < maxiter):
            converged = not change > tol
            break
        first = seen.setdefault(_state_key(line, resid), iteration)
        if first < iteration:
            # rounding keeps the fit going round the same states, each deviance change above
            # tol: it would stop at maxiter, in the state the cycle holds then
            line, resid = states[first - 1 + (maxiter - first) % (iteration - first)]
            iteration = maxiter
            break
        states.append((line, resid))
    return FitResult(
        intercept=float(line[0]),
        slope=float(line[1]),
        r_squared=float(_r_squared(_ssr(moments, *line), moments["cyy"])),
        method="irls",
        n_samples=n,
        has_intercept=intercept,
        scale=float(resid.scale),
        n_iter=iteration,
        converged=converged,
    )


def _state_key(line: tuple[float, float], resid: _Residuals) -> tuple[float, ...]:
    """What an IRLS iteration ends in: its line, and the scale and deviance of its residuals."""
    return (*line, resid.scale, resid.deviance)


# --- whole-array entry points ---------------------------------------------------------------


def _validate_pair(isosbestic: ArrayLike, signal: ArrayLike) -> tuple[Float64Array, Float64Array]:
    """Validate and normalise the two channels for a whole-array fit."""
    arrays: dict[str, NDArray[Any]] = {}
    for name, value in (("isosbestic", isosbestic), ("signal", signal)):
        a = np.asarray(value)
        if a.dtype.kind not in "biuf":
            raise TypeError(f"{name} must be a real numeric array, got dtype {a.dtype}.")
        if a.ndim != 1:
            raise ValueError(f"{name} must be 1-D (samples along time), got shape {a.shape}.")
        arrays[name] = validate_finite(a, name)
    validate_same_length(isosbestic=arrays["isosbestic"], signal=arrays["signal"])
    return _as_block(arrays["isosbestic"]), _as_block(arrays["signal"])


def fit_ols(isosbestic: ArrayLike, signal: ArrayLike, *, intercept: bool = True) -> FitResult:
    """Least-squares fit ``signal ≈ intercept + slope * isosbestic`` of whole arrays.

    Parameters
    ----------
    isosbestic : array_like, shape (n,)
        Isosbestic (control) channel, any units.
    signal : array_like, shape (n,)
        Signal channel, same length.
    intercept : bool, default True
        Fit ``b0 + b1 x`` (True) or ``b1 x`` (False).

    Returns
    -------
    FitResult
        ``method='ols'``; ``reference(isosbestic)`` gives the fitted reference.

    Raises
    ------
    TypeError
        If an input is not real-valued.
    ValueError
        If an input is not 1-D or not finite, the lengths differ, there are fewer than 2
        samples, or the fit is singular (constant isosbestic).

    See Also
    --------
    fit_irls : the robust fit.
    neurobatch.engine.blocked.fit_ols : the same over chunked dask arrays.

    Examples
    --------
    >>> iso = np.array([1.0, 1.1, 1.2, 1.3])
    >>> fit = fit_ols(iso, 0.5 + 2.0 * iso)
    >>> print(f"{fit.intercept:.6f} {fit.slope:.6f} {fit.r_squared:.6f}")
    0.500000 2.000000 1.000000
    """
    x, y = _validate_pair(isosbestic, signal)
    return solve_ols(local_reducer([x], [y]), intercept=intercept)


def fit_irls(
    isosbestic: ArrayLike,
    signal: ArrayLike,
    *,
    c: float = 3.0,
    maxiter: int = 50,
    tol: float = 1e-8,
    intercept: bool = True,
) -> FitResult:
    """Robust fit (Tukey's biweight, IRLS as statsmodels' ``RLM``) of whole arrays.

    Parameters
    ----------
    isosbestic : array_like, shape (n,)
        Isosbestic (control) channel.
    signal : array_like, shape (n,)
        Signal channel, same length.
    c : float, default 3.0
        Tukey's tuning constant (PhoPro's default; statsmodels' own is 4.685).
    maxiter : int, default 50
        Maximum iterations, counted as statsmodels does.
    tol : float, default 1e-8
        Tolerance on the change of the deviance.
    intercept : bool, default True
        Whether to fit the intercept.

    Returns
    -------
    FitResult
        ``method='irls'``; see :func:`solve_irls` for the algorithm.

    Raises
    ------
    TypeError
        If an input is not real-valued.
    ValueError
        If an input is not 1-D or not finite, the lengths differ, there are fewer than 3
        samples (2 without intercept), an option is out of range, or a fit is singular.

    See Also
    --------
    fit_ols : the least-squares fit.
    neurobatch.engine.blocked.fit_irls : the same over chunked dask arrays.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> iso = 1.0 + 0.01 * rng.standard_normal(1000)
    >>> sig = 0.2 + 1.5 * iso + 0.001 * rng.standard_normal(1000)
    >>> sig[100:120] += 0.5  # a motion artefact
    >>> fit = fit_irls(iso, sig)
    >>> print(f"{fit.slope:.1f} {fit.converged}")
    1.5 True
    """
    x, y = _validate_pair(isosbestic, signal)
    return solve_irls(local_reducer([x], [y]), c=c, maxiter=maxiter, tol=tol, intercept=intercept)
