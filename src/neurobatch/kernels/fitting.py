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
* The robust fit's passes (:mod:`neurobatch.kernels.robust`): Tukey-weighted sums of the
  residuals, and the deviance and exact median of ``|residual|``
  (:class:`~neurobatch.kernels.median.MedianSearch` partials); once the line barely moves,
  tables of monomial sums that answer the later iterations without passes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from neurobatch.kernels._validation import validate_finite, validate_same_length
from neurobatch.kernels.comoments import (
    CoMoments,
    _check_moments,
    _r_squared,
    _solve_wls,
    _ssr,
    comoments_chunk,
    comoments_combine,
)
from neurobatch.kernels.reduction import Reducer, _as_block, local_reducer
from neurobatch.kernels.robust import (
    _EPS,
    _SAMPLE_SIZE,
    _TABLE_STEP,
    MAD_NORMALIZATION,
    Line,
    _inverse_square,
    _plan_table,
    _residual_pass,
    _Residuals,
    _sample_chunk,
    _sample_combine,
    _Table,
    sums_combine,
    tukey_step,
    tukey_sums_chunk,
)

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


def _validate_irls_options(c: float, maxiter: int, tol: float) -> None:
    if not (isinstance(c, int | float) and math.isfinite(c) and c > 0):
        raise ValueError(f"c must be a finite number > 0 (Tukey's tuning constant), got {c!r}.")
    if isinstance(maxiter, bool) or not isinstance(maxiter, int | np.integer) or maxiter < 1:
        raise ValueError(f"maxiter must be an integer >= 1, got {maxiter!r}.")
    if not (isinstance(tol, int | float) and tol >= 0 and not math.isnan(tol)):
        raise ValueError(f"tol must be a number >= 0, got {tol!r}.")


#: A table that answered fewer iterations than this before the line left it cost more than
#: it saved: the next is built only after an eight times smaller step.
_TABLE_CALLS = 2


class _Passes:
    """The passes of the IRLS iterations over the data, spared by a table when one answers."""

    def __init__(self, reduce: Reducer, moments: CoMoments, *, n: int, c: float, p: int) -> None:
        self.reduce, self.n, self.c, self.p = reduce, n, c, p
        self.x0 = moments["mean_x"]
        step = max(1, n // _SAMPLE_SIZE)
        self.sample = reduce(partial(_sample_chunk, step=step), _sample_combine)
        # the isosbestic's range as sampled, until a table measures it
        self.x_range = (float(self.sample.x.min()), float(self.sample.x.max()))
        spread = max(abs(v - self.x0) for v in self.x_range)
        self.x_exp = math.frexp(spread or abs(self.x0) or 1.0)[1]
        self.x_abs = max(abs(v) for v in self.x_range)
        self.y_abs = float(np.abs(self.sample.y).max())
        self.table: _Table | None = None
        # tables built so far: a table's sums round differently from a pass's and another
        # table's, so an iteration's state includes which table answers it
        self.tables = 0
        # the step after which to build a table; smaller after a table that hardly served
        self.table_step = _TABLE_STEP

    def first_residuals(self, line: Line, s2: float) -> _Residuals:
        """The residuals of the OLS line."""
        window = self.sample.median_window(line)
        found, _ = _residual_pass(self.reduce, line, n=self.n, c=self.c, s2=s2, window=window)
        return found

    def weighted(self, line: Line, scale: float) -> tuple[Line, float]:
        """The next line and its weighted residual variance σ², from ``line`` and ``s``."""
        cs = self.c * scale
        sums = None if self.table is None else self.table.tukey_sums(line, cs)
        if sums is None:
            chunk = partial(tukey_sums_chunk, line=line, inv_cs2=_inverse_square(cs), x0=self.x0)
            sums = self.reduce(chunk, sums_combine)
        (d0, d1), ssr = tukey_step(sums, x0=self.x0, intercept=self.p == 2)
        return (line[0] + d0, line[1] + d1), ssr / (self.n - self.p)

    def residuals(
        self,
        line: Line,
        s2: float,
        *,
        last: tuple[Line, float, _Residuals],
    ) -> _Residuals:
        """The residuals of ``line``; ``last``: the line, σ² and residuals before it."""
        found = None if self.table is None else self.table.residuals(line, s2)
        if found is not None:
            return found
        if self.table is not None and self.table.calls < _TABLE_CALLS:
            self.table_step /= 8.0
        previous, previous_s2, resid = last
        rounding = _EPS * (self.x_abs * abs(line[1]) + abs(line[0]) + self.y_abs)
        spec = _plan_table(
            line=line,
            previous=previous,
            x_range=self.x_range,
            x0=self.x0,
            x_exp=self.x_exp,
            residuals=resid,
            c=self.c,
            dev_cut=self.c * s2,
            previous_dev_cut=self.c * previous_s2,
            rounding=rounding,
            limit=self.table_step,
        )
        found, self.table = _residual_pass(
            self.reduce,
            line,
            n=self.n,
            c=self.c,
            s2=s2,
            window=self.sample.median_window(line),
            table=spec,
        )
        if self.table is not None:
            self.x_range = self.table.x_range
            self.tables += 1
        return found


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

    Each iteration is one pass of Tukey-weighted sums of the residuals (the weighted fit of
    the residuals on the isosbestic is the step to the next line) and one pass over the
    new residuals that gathers the deviance and the exact median of ``|r|`` at once
    (collecting a window around the previous median; more passes only if the median moved
    out of it). Once a step moves no residual by more than 0.2 % of the median of ``|r|``,
    a residual pass also builds a table of monomial sums (:mod:`neurobatch.kernels.robust`),
    from which the later iterations are computed exactly, without passes, for as long as
    the line stays within its margin.

    The iteration count of statsmodels is reproduced as long as rounding does not decide
    the stopping test: on millions of samples the deviance is a sum of millions of terms,
    whose rounding (here and in statsmodels) is close to ``tol = 1e-8``, so the last few
    iterations can differ; the coefficients then still agree to ~1e-12.

    Rounding can also keep a fit going round a few states for good, each deviance change
    above ``tol``. Such a fit runs to ``maxiter``; once it is back in a state it was in,
    its state at ``maxiter`` is read off the cycle instead of iterating on: the same
    result, with ``n_iter = maxiter`` and ``converged`` False.

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
    passes = _Passes(reduce, moments, n=n, c=c, p=p)
    resid = passes.first_residuals(line, s2)
    iteration, converged = 1, False
    # every iteration's state, and the iteration of each: the line, scale and σ² (and the
    # table that answers) decide every later iteration, and with the deviance the stopping
    # tests too, so a state seen before starts a cycle
    states = [(line, resid)]
    seen = {_state_key(line, s2, resid, passes.tables): 1}
    while resid.scale != 0.0:  # statsmodels stops (with a warning) on a zero scale
        new_line, new_s2 = passes.weighted(line, resid.scale)
        new = passes.residuals(new_line, new_s2, last=(line, s2, resid))
        line, s2, previous, resid = new_line, new_s2, resid, new
        iteration += 1
        change = abs(resid.deviance - previous.deviance)
        if not (change > tol and iteration < maxiter):
            converged = not change > tol
            break
        first = seen.setdefault(_state_key(line, s2, resid, passes.tables), iteration)
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


def _state_key(line: Line, s2: float, resid: _Residuals, tables: int) -> tuple[float, ...]:
    """What an IRLS iteration ends in: its line, σ², the scale and deviance of its
    residuals, and the number of tables built so far."""
    return (*line, s2, resid.scale, resid.deviance, tables)


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
