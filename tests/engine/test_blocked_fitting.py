"""Blocked isosbestic fits: chunked equals whole, on threads and on a real LocalCluster."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dask
import dask.array as da
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from conftest import raise_if_dask_computes
from neurobatch.engine import blocked
from neurobatch.kernels import fitting
from strategies import chunkings, split_everies

N = 1_500


def photometry(n: int, seed: int) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Isosbestic with a bleaching drift; signal = 0.3 + 0.8 iso + noise + artefacts."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, n)
    iso = 1.5 + 0.3 * np.exp(-t / 0.3) + 0.004 * rng.standard_normal(n)
    sig = 0.3 + 0.8 * iso + 0.003 * rng.standard_normal(n)
    for start in rng.integers(0, n - 40, size=3):
        sig[start : start + 40] += rng.normal(0.2, 0.05)
    return iso, sig


def chunked(a: NDArray[Any], chunks: Any) -> da.Array:
    """``da.from_array`` with a type (dask's is untyped)."""
    return da.from_array(a, chunks=chunks)  # type: ignore[no-untyped-call,no-any-return]


X, Y = photometry(N, 0)
WHOLE_OLS = {True: fitting.fit_ols(X, Y), False: fitting.fit_ols(X, Y, intercept=False)}
WHOLE_IRLS = fitting.fit_irls(X, Y)


def rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b) if b else abs(a)


@settings(max_examples=8)
@given(
    x_chunks=chunkings(N, max_chunks=6),
    y_chunks=chunkings(N, max_chunks=6),
    split_every=split_everies(),
    intercept=st.booleans(),
)
def test_ols_chunked_equals_whole(
    scheduler: str,
    x_chunks: tuple[int, ...],
    y_chunks: tuple[int, ...],
    split_every: int | None,
    intercept: bool,
) -> None:
    fit = blocked.fit_ols(
        chunked(X, chunks=(x_chunks,)),
        chunked(Y, chunks=(y_chunks,)),
        intercept=intercept,
        split_every=split_every,
    )
    whole = WHOLE_OLS[intercept]
    assert rel(fit.slope, whole.slope) < 1e-12
    assert rel(fit.intercept, whole.intercept) < 1e-12
    assert rel(fit.r_squared, whole.r_squared) < 1e-12
    assert (fit.method, fit.n_samples, fit.has_intercept) == ("ols", N, intercept)


def assert_irls_equal(fit: fitting.FitResult, whole: fitting.FitResult) -> None:
    assert rel(fit.slope, whole.slope) < 1e-10
    assert rel(fit.intercept, whole.intercept) < 1e-10
    assert fit.scale is not None and whole.scale is not None
    assert rel(fit.scale, whole.scale) < 1e-10
    assert rel(fit.r_squared, whole.r_squared) < 1e-10
    assert fit.method == "irls" and fit.converged


# IRLS computes ~2 passes per iteration until a table takes over; each pass is a round trip
# to the scheduler (0.1 to 0.5 s on a loaded 2-core LocalCluster, more when unequal chunks
# are rechunked every pass), so the hypothesis search runs on threads and the real cluster
# gets an explicit uneven chunking (the OLS tests cover unequal chunks on both schedulers).


@settings(max_examples=5)
@given(x_chunks=chunkings(N), y_chunks=chunkings(N), split_every=split_everies())
def test_irls_chunked_equals_whole(
    x_chunks: tuple[int, ...], y_chunks: tuple[int, ...], split_every: int | None
) -> None:
    fit = blocked.fit_irls(
        chunked(X, chunks=(x_chunks,)),
        chunked(Y, chunks=(y_chunks,)),
        split_every=split_every,
    )
    assert_irls_equal(fit, WHOLE_IRLS)


def test_irls_chunked_equals_whole_on_scheduler(scheduler: str) -> None:
    chunks = ((1, 600, 2, 500, 397),)
    fit = blocked.fit_irls(
        chunked(X, chunks=chunks), chunked(Y, chunks=chunks), split_every=2, tol=1e-5
    )
    assert_irls_equal(fit, fitting.fit_irls(X, Y, tol=1e-5))


@settings(max_examples=5)
@given(chunks=chunkings(N), intercept=st.booleans())
def test_persisted_inputs_are_fitted_in_memory(chunks: tuple[int, ...], intercept: bool) -> None:
    """Persisted blocks: every pass runs on them in this process (no dask compute at all)."""
    x, y = dask.persist(chunked(X, chunks=(chunks,)), chunked(Y, chunks=(chunks,)))
    with raise_if_dask_computes():
        fit = blocked.fit_irls(x, y, intercept=intercept)
        ols = blocked.fit_ols(x, y, intercept=intercept)
    assert_irls_equal(fit, fitting.fit_irls(X, Y, intercept=intercept))
    assert rel(ols.slope, WHOLE_OLS[intercept].slope) < 1e-12
    assert rel(ols.intercept, WHOLE_OLS[intercept].intercept) < 1e-12


@pytest.mark.slow_hypothesis
@settings(max_examples=6)
@given(
    x_chunks=chunkings(N, max_chunks=40),
    y_chunks=chunkings(N, max_chunks=40),
    split_every=split_everies(),
    seed=st.integers(0, 2**16),
)
def test_irls_chunked_equals_whole_many(
    x_chunks: tuple[int, ...], y_chunks: tuple[int, ...], split_every: int | None, seed: int
) -> None:
    x, y = photometry(N, seed)
    fit = blocked.fit_irls(
        chunked(x, chunks=(x_chunks,)),
        chunked(y, chunks=(y_chunks,)),
        split_every=split_every,
    )
    assert_irls_equal(fit, fitting.fit_irls(x, y))


@pytest.mark.parametrize("intercept", [True, False])
def test_size_one_chunks_and_single_chunk(scheduler: str, intercept: bool) -> None:
    x, y = X[:12], Y[:12]
    for chunks in (1, 12):
        dx, dy = chunked(x, chunks=chunks), chunked(y, chunks=chunks)
        ols = blocked.fit_ols(dx, dy, intercept=intercept, split_every=2)
        assert rel(ols.slope, fitting.fit_ols(x, y, intercept=intercept).slope) < 1e-12
        irls = blocked.fit_irls(dx, dy, intercept=intercept, split_every=2)
        whole = fitting.fit_irls(x, y, intercept=intercept)
        assert rel(irls.slope, whole.slope) < 1e-10
        assert irls.n_iter == whole.n_iter


def test_numpy_and_float32_inputs() -> None:
    fit = blocked.fit_ols(X.astype(np.float32), Y.astype(np.float32))
    assert fit == fitting.fit_ols(X.astype(np.float32), Y.astype(np.float32))


def test_input_errors() -> None:
    x = chunked(X, chunks=500)
    with pytest.raises(
        ValueError, match=r"isosbestic and signal must have the same length.*1500 and 1499"
    ):
        blocked.fit_ols(x, x[:-1])
    with pytest.raises(ValueError, match=r"signal must be 1-D .*got shape \(3, 500\)"):
        blocked.fit_irls(x, chunked(X.reshape(3, 500), chunks=100))
    with pytest.raises(TypeError, match=r"isosbestic must be a real numeric array, got dtype <U1"):
        blocked.fit_ols(chunked(np.array(["a"] * 1500), chunks=500), x)
    with pytest.raises(ValueError, match=r"split_every must be an integer >= 2 .* got 1"):
        blocked.fit_ols(x, x, split_every=1)
    with pytest.raises(ValueError, match=r"isosbestic has unknown chunk sizes"):
        blocked.fit_ols(x[x > 0], x[x > 0])
    with pytest.raises(ValueError, match=r"c must be a finite number > 0"):
        blocked.fit_irls(x, x, c=-1.0)


@pytest.mark.parametrize("fit", [blocked.fit_ols, blocked.fit_irls])
def test_non_finite_data_and_singular_fit(fit: Callable[..., fitting.FitResult]) -> None:
    bad = X.copy()
    bad[700] = np.nan
    with pytest.raises(ValueError, match=r"isosbestic and signal must be finite"):
        fit(chunked(X, chunks=400), chunked(bad, chunks=400))
    with pytest.raises(ValueError, match=r"isosbestic is constant"):
        fit(chunked(np.full(N, 1.5), chunks=400), chunked(Y, chunks=400))
