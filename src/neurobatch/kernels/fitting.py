"""Isosbestic fits (OLS and robust IRLS) as chunk / combine / finalize sums.

Every fit here touches the data only through *chunk* functions, which reduce one block of
``(isosbestic, signal)`` to a small partial result, and *combine* functions, which merge any
number of partials into one. An algorithm that needs several passes over the data (the
robust IRLS fit, the exact median inside it) takes a *reducer*: a callable
``reduce(chunk, combine)`` that runs ``chunk`` over every block and folds the partials with
``combine`` (:mod:`neurobatch.kernels.reduction`).
:func:`~neurobatch.kernels.reduction.local_reducer` does that over in-memory blocks (the
whole array is one block); ``neurobatch.engine.blocked`` does it with a dask tree
reduction. The same code therefore gives the whole-array answer on any blocking.

Partial results
---------------
* Co-moments (:class:`~neurobatch.kernels.comoments.CoMoments`): the sum of weights and the
  weighted means and centred second moments of ``x`` (isosbestic) and ``y`` (signal),
  merged with Chan et al.'s parallel formula (:mod:`neurobatch.kernels.comoments`).
* Exact-median partials (:class:`~neurobatch.kernels.median.MedianSearch`): counts of the
  values' bit patterns, then the values of the bin that holds the middle order statistic(s),
  so that the median is exact (:mod:`neurobatch.kernels.median`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any, Literal, TypedDict

import numpy as np
from numpy.typing import ArrayLike, NDArray

from neurobatch.kernels._validation import validate_finite, validate_same_length
from neurobatch.kernels.comoments import (
    _ZEROS,
    CoMoments,
    _check_moments,
    _r_squared,
    _solve_wls,
    _ssr,
    _sum_product,
    _tukey_comoments_chunk,
    comoments_chunk,
    comoments_combine,
)
from neurobatch.kernels.median import (
    _SIGN,
    MedianPartial,
    MedianPlan,
    MedianSearch,
    _Gatherer,
    _value_window,
    median_combine,
)
from neurobatch.kernels.reduction import _TILE, Reducer, _as_block, local_reducer

__all__ = [
    "MAD_NORMALIZATION",
    "FitResult",
    "fit_irls",
    "fit_ols",
    "ols_finalize",
    "solve_irls",
    "solve_ols",
]

Float64Array = NDArray[np.float64]

#: ``scipy.stats.norm.ppf(0.75)``: the MAD of a unit normal, statsmodels' ``GAUSSIAN_3_4``.
MAD_NORMALIZATION = 0.6744897501960817


# --- results -----------------------------------------------------------------------------


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


# --- OLS ---------------------------------------------------------------------------------


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


# --- robust IRLS (Tukey's biweight) ------------------------------------------------------


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


# --- whole-array entry points ------------------------------------------------------------


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
