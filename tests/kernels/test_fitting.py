"""Isosbestic fits: OLS against lstsq/statsmodels, IRLS against statsmodels' RLM."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pytest
import statsmodels.api as sm
from numpy.typing import NDArray

from neurobatch.kernels import fitting
from neurobatch.kernels.comoments import comoments_chunk, comoments_combine
from neurobatch.kernels.fitting import FitResult, fit_irls, fit_ols
from neurobatch.kernels.reduction import local_reducer


def photometry(
    n: int, seed: int, *, fs: float = 1000.0
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """A photometry-like pair: bleaching drift, shared noise, transients, motion artefacts."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / fs
    span = n / fs
    bleach = 0.3 * np.exp(-t / (0.3 * span)) + 0.1 * np.exp(-t / (0.05 * span))
    iso = 1.5 + bleach + 0.01 * np.sin(2 * np.pi * t / 20.0) + 0.004 * rng.standard_normal(n)
    transients = np.zeros(n)
    for start in rng.integers(0, n, size=max(1, n // 2000)):
        length = min(n - start, 300)
        transients[start : start + length] += 0.05 * np.exp(-np.arange(length) / 80.0)
    sig = 0.3 + 0.8 * iso + transients + 0.003 * rng.standard_normal(n)
    for start in rng.integers(0, n, size=max(1, n // 5000)):
        length = min(n - start, int(rng.integers(20, 300)))
        sig[start : start + length] += rng.normal(0.2, 0.1)
        iso[start : start + length] += rng.normal(0.05, 0.02)
    return iso, sig


def split(a: NDArray[np.float64], chunks: tuple[int, ...]) -> list[NDArray[np.float64]]:
    return np.split(a, np.cumsum(chunks)[:-1])


def rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


# --- OLS ------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("intercept", [True, False])
def test_ols_matches_lstsq(seed: int, intercept: bool) -> None:
    x, y = photometry(20_000, seed)
    design = np.column_stack([np.ones_like(x), x]) if intercept else x[:, None]
    expected = np.linalg.lstsq(design, y, rcond=None)[0]
    fit = fit_ols(x, y, intercept=intercept)
    if intercept:
        assert rel(fit.intercept, expected[0]) < 1e-12
        assert rel(fit.slope, expected[1]) < 1e-12
    else:
        assert fit.intercept == 0.0
        assert rel(fit.slope, expected[0]) < 1e-12
    assert fit.method == "ols" and fit.n_samples == x.size and fit.has_intercept is intercept
    assert fit.scale is None and fit.n_iter == 0 and fit.converged


def test_ols_r_squared_matches_statsmodels() -> None:
    x, y = photometry(20_000, 3)
    with_const = sm.OLS(y, sm.add_constant(x)).fit()
    assert rel(fit_ols(x, y).r_squared, with_const.rsquared) < 1e-12
    # Without intercept: the centred R² (PhoPro's r2_score), not statsmodels' uncentred one.
    origin = sm.OLS(y, x[:, None]).fit()
    fit = fit_ols(x, y, intercept=False)
    assert rel(fit.r_squared, 1.0 - origin.ssr / origin.centered_tss) < 1e-9
    assert abs(fit.r_squared - origin.rsquared) > 1e-3


def test_ols_exact_line_and_reference() -> None:
    x = np.array([1.0, 1.25, 1.5, 2.0])
    fit = fit_ols(x, 0.5 + 2.0 * x)
    assert (fit.intercept, fit.slope, fit.r_squared) == (0.5, 2.0, 1.0)
    np.testing.assert_array_equal(fit.reference(x), 0.5 + 2.0 * x)
    assert json.loads(json.dumps(fit.to_dict()))["slope"] == 2.0


def test_constant_signal_r_squared() -> None:
    fit = fit_ols([1.0, 2.0, 3.0], [4.0, 4.0, 4.0])
    assert (fit.slope, fit.intercept, fit.r_squared) == (0.0, 4.0, 1.0)


def test_comoments_combine_equals_chunk_of_union() -> None:
    x, y = photometry(5_000, 4)
    parts = [
        comoments_chunk(a, b)
        for a, b in zip(split(x, (1, 2000, 999, 2000)), split(y, (1, 2000, 999, 2000)), strict=True)
    ]
    merged = comoments_combine(parts)
    whole = comoments_chunk(x, y)
    for key in ("weight", "mean_x", "mean_y", "cxx", "cxy", "cyy"):
        assert merged[key] == pytest.approx(whole[key], rel=1e-13)
    assert merged == comoments_combine([merged])


# --- IRLS -----------------------------------------------------------------------------------


def statsmodels_rlm(
    x: NDArray[np.float64],
    y: NDArray[np.float64],
    *,
    c: float = 3.0,
    intercept: bool = True,
    **kwargs: float,
) -> sm.robust.robust_linear_model.RLMResults:
    design = sm.add_constant(x) if intercept else x[:, None]
    return sm.RLM(y, design, M=sm.robust.norms.TukeyBiweight(c=c)).fit(**kwargs)


def assert_matches_rlm(
    fit: FitResult, ref: sm.robust.robust_linear_model.RLMResults, *, iterations: int = 0
) -> None:
    """Coefficients and scale within 1e-6 (they agree to ~1e-12); iteration counts within
    ``iterations``."""
    params = ref.params if fit.has_intercept else np.array([0.0, ref.params[0]])
    if fit.has_intercept:
        assert rel(fit.intercept, params[0]) < 1e-6
    assert rel(fit.slope, params[1]) < 1e-6
    assert fit.scale is not None and rel(fit.scale, ref.scale) < 1e-6
    assert abs(fit.n_iter - ref.fit_history["iteration"]) <= iterations


@pytest.mark.parametrize(("n", "seed"), [(10_000, 0), (10_000, 1), (30_000, 2), (100_000, 3)])
def test_irls_matches_statsmodels(n: int, seed: int) -> None:
    x, y = photometry(n, seed)
    fit = fit_irls(x, y)
    assert fit.method == "irls" and fit.converged and fit.n_samples == n
    # statsmodels' deviance sum rho(r / sigma²) divides by a variance (~1e-5 here), which turns
    # the ~1e-15 rounding of the coefficients (lstsq there, co-moments here) into ~1e-8
    # noise in the deviance: at tol=1e-8 rounding decides the last iterations, in
    # statsmodels as here. The coefficients are at the fixed point all the same.
    assert_matches_rlm(fit, statsmodels_rlm(x, y), iterations=5)
    # With a tolerance above that noise, every iteration and the stop are reproduced.
    assert_matches_rlm(fit_irls(x, y, tol=1e-5), statsmodels_rlm(x, y, tol=1e-5))


def test_irls_r_squared_is_phopros() -> None:
    x, y = photometry(10_000, 5)
    fit = fit_irls(x, y)
    resid = y - fit.reference(x)
    expected = 1.0 - np.sum(resid**2) / np.sum((y - y.mean()) ** 2)
    assert fit.r_squared == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize(
    ("c", "intercept", "maxiter"), [(4.685, True, 50), (3.0, False, 50), (3.0, True, 4)]
)
def test_irls_options_match_statsmodels(c: float, intercept: bool, maxiter: int) -> None:
    x, y = photometry(10_000, 6)
    if not intercept:
        y = y - 0.3  # a line through the origin, plus the artefacts
    fit = fit_irls(x, y, c=c, intercept=intercept, maxiter=maxiter, tol=1e-5)
    ref = statsmodels_rlm(x, y, c=c, intercept=intercept, maxiter=maxiter, tol=1e-5)
    assert_matches_rlm(fit, ref)
    assert fit.converged is (maxiter == 50)


def test_irls_blocked_equals_whole() -> None:
    x, y = photometry(20_000, 7)
    chunks = (1, 7000, 3, 9000, 3996)
    blocked = fitting.solve_irls(local_reducer(split(x, chunks), split(y, chunks)))
    whole = fit_irls(x, y)
    assert rel(blocked.slope, whole.slope) < 1e-10
    assert rel(blocked.intercept, whole.intercept) < 1e-10
    assert blocked.n_iter == whole.n_iter


def test_irls_that_cycles_ends_where_iterating_to_maxiter_ends() -> None:
    # with tol=0 only an exact fixed point converges; rounding keeps these iterates going
    # round a cycle of 3 states instead
    x, y = photometry(2000, 35)
    # fit_irls(maxiter=m) iterates until m (2 at least: the OLS fit counts as the first)
    # unless its states repeat: the first repeat of a line and scale gives the reference
    state_at: dict[int, tuple[float, ...]] = {}
    for m in range(2, 200):
        fit = fit_irls(x, y, tol=0.0, maxiter=m)
        state = (fit.intercept, fit.slope, fit.scale)
        if state in state_at.values():
            break
        state_at[m] = state
    else:
        pytest.fail("the iterates of this input no longer cycle: pick another")
    first = next(k for k, v in state_at.items() if v == state)
    period = m - first
    assert period >= 2
    # the line and scale decide every later iteration, so the states go round from `first`
    # (and 54,321 iterations are read off the cycle, not run)
    for maxiter in (m + 1, m + period + 1, 1000, 1001, 54_321):
        fit = fit_irls(x, y, tol=0.0, maxiter=maxiter)
        assert fit.n_iter == maxiter and not fit.converged
        assert (fit.intercept, fit.slope, fit.scale) == state_at[first + (maxiter - first) % period]


def test_irls_perfect_fit_stops_on_zero_scale() -> None:
    x = np.arange(11.0)
    fit = fit_irls(x, 1.0 + 2.0 * x)
    assert (fit.intercept, fit.slope, fit.scale, fit.n_iter) == (1.0, 2.0, 0.0, 1)
    assert not fit.converged


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fit", [fit_ols, fit_irls])
def test_fit_input_errors(fit: Callable[..., FitResult]) -> None:
    good = np.linspace(1.0, 2.0, 10)
    bad = good.copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match=r"signal must be finite, got 1 NaN"):
        fit(good, bad)
    bad[3] = np.inf
    with pytest.raises(ValueError, match=r"isosbestic must be finite, got 0 NaN and 1 inf"):
        fit(bad, good)
    with pytest.raises(
        ValueError, match=r"isosbestic and signal must have the same length.*10 and 9"
    ):
        fit(good, good[:9])
    with pytest.raises(ValueError, match=r"signal must be 1-D .*got shape \(2, 5\)"):
        fit(good, good.reshape(2, 5))
    with pytest.raises(
        TypeError, match=r"isosbestic must be a real numeric array, got dtype complex"
    ):
        fit(good + 1j, good)
    with pytest.raises(ValueError, match=r"isosbestic is constant .*singular"):
        fit(np.full(10, 1.5), good)


def test_too_few_samples() -> None:
    with pytest.raises(ValueError, match=r"fit_ols needs at least 2 samples .* got 1"):
        fit_ols([1.0], [2.0])
    with pytest.raises(ValueError, match=r"fit_irls needs at least 3 samples .* got 2"):
        fit_irls([1.0, 2.0], [2.0, 3.0])
    assert fit_irls([1.0, 2.0], [2.0, 4.5], intercept=False).slope > 0


def test_zero_isosbestic_without_intercept() -> None:
    with pytest.raises(ValueError, match=r"isosbestic is all zero"):
        fit_ols(np.zeros(5), np.ones(5), intercept=False)


@pytest.mark.parametrize(
    ("option", "match"),
    [
        ({"c": 0.0}, r"c must be a finite number > 0 .* got 0.0"),
        ({"c": float("inf")}, r"c must be a finite number > 0"),
        ({"maxiter": 0}, r"maxiter must be an integer >= 1, got 0"),
        ({"maxiter": 2.5}, r"maxiter must be an integer >= 1, got 2.5"),
        ({"tol": -1.0}, r"tol must be a number >= 0, got -1.0"),
    ],
)
def test_irls_option_errors(option: dict[str, float], match: str) -> None:
    x = np.linspace(1.0, 2.0, 10)
    with pytest.raises(ValueError, match=match):
        fit_irls(x, x, **option)  # type: ignore[arg-type]
