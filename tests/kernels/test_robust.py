"""The robust fit's passes and tables, against NumPy and statsmodels over every sample."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import pytest
import statsmodels.api as sm
from hypothesis import given, settings
from numpy.typing import NDArray

from neurobatch import synthetic
from neurobatch.kernels import filters, fitting, robust
from neurobatch.kernels.median import _value_window
from neurobatch.kernels.reduction import Reducer, local_reducer
from strategies import chunkings

Array = NDArray[np.float64]
C = 3.0


def recording(seed: int, *, seconds: float = 60.0, units: float = 1.0) -> tuple[Array, Array]:
    """A synthetic photometry recording at 1 kHz, low-passed at 3 Hz as the pipeline does;
    ``units`` rescales it (1000: millivolts)."""
    rec = synthetic.photometry_recording(duration_s=seconds, fs=1000.0, seed=seed)
    sos = filters.butter_sos("lowpass", 3.0, fs=1000.0)
    x = filters.zero_phase_filter(rec.isosbestic.values, sos) * units
    y = filters.zero_phase_filter(rec.signal.values, sos) * units
    return x, y


def split(a: Array, chunks: tuple[int, ...]) -> list[Array]:
    return np.split(a, np.cumsum(chunks)[:-1])


def residuals(x: Array, y: Array, line: tuple[float, float]) -> Array:
    return y - (line[0] + line[1] * x)


def direct_sums(x: Array, y: Array, line: tuple[float, float], cs: float, x0: float) -> Array:
    """The Tukey-weighted sums straight from their definition."""
    r = residuals(x, y, line)
    w = np.where(np.abs(r) < cs, (1.0 - (r / cs) ** 2) ** 2, 0.0)
    dx = x - x0
    return np.array(
        [w.sum(), (w * dx).sum(), (w * dx**2).sum(), (w * r).sum(), (w * dx * r).sum(),
         (w * r**2).sum()]
    )  # fmt: skip


def direct_deviance(r: Array, s2: float) -> float:
    """statsmodels' deviance of RLM: ``Σ ρ(r / σ²)`` with Tukey's ρ."""
    return float(sm.robust.norms.TukeyBiweight(c=C).rho(r / s2).sum())


def assert_close(actual: Any, expected: Any, rel: float) -> None:
    actual, expected = np.asarray(actual), np.asarray(expected)
    scale = np.abs(expected).max()
    assert np.abs(actual - expected).max() <= rel * scale, (actual, expected)


# --- the weighted pass ------------------------------------------------------------------------

X, Y = recording(0)
LINE = (0.1, 1.778)
X0 = float(X.mean())


@settings(max_examples=20)
@given(chunkings(X.size))
def test_weighted_pass_is_the_tukey_sums_on_any_chunking(chunks: tuple[int, ...]) -> None:
    chunk = partial(robust.tukey_sums_chunk, line=LINE, inv_cs2=1.0 / (C * 6e-4) ** 2, x0=X0)
    sums = local_reducer(split(X, chunks), split(Y, chunks))(chunk, robust.sums_combine)
    assert_close(sums, direct_sums(X, Y, LINE, C * 6e-4, X0), 1e-12)


@pytest.mark.parametrize("intercept", [True, False])
def test_step_is_the_weighted_least_squares_of_the_residuals(intercept: bool) -> None:
    cs = C * 6e-4
    sums = robust.tukey_sums_chunk(X, Y, line=LINE, inv_cs2=1.0 / cs**2, x0=X0)
    (d0, d1), ssr = robust.tukey_step(sums, x0=X0, intercept=intercept)
    r = residuals(X, Y, LINE)
    w = np.where(np.abs(r) < cs, (1.0 - (r / cs) ** 2) ** 2, 0.0)
    design = np.column_stack([np.ones_like(X), X]) if intercept else X[:, None]
    root = np.sqrt(w)
    solution, *_ = np.linalg.lstsq(design * root[:, None], r * root, rcond=None)
    expected = solution if intercept else np.array([0.0, solution[0]])
    assert_close([d0, d1], expected, 1e-9)
    assert ssr == pytest.approx(float((w * (r - d0 - d1 * X) ** 2).sum()), rel=1e-9)


def test_constant_isosbestic_is_singular() -> None:
    x = np.full(100, 2.0)
    sums = robust.tukey_sums_chunk(x, x, line=(0.0, 1.0), inv_cs2=1.0, x0=2.0)
    with pytest.raises(ValueError, match="isosbestic is constant"):
        robust.tukey_step(sums, x0=2.0, intercept=True)


# --- the residual pass ------------------------------------------------------------------------


@pytest.mark.parametrize("rel", [None, 0.01, -0.5, 3.0])
def test_residual_pass_median_is_exact_and_deviance_statsmodels(rel: float | None) -> None:
    """The median is exact whether the window holds it, misses it, or there is none."""
    r = residuals(X, Y, LINE)
    median = float(np.median(np.abs(r)))
    window = None if rel is None else _value_window(median * (1.0 + rel), 0.02)
    s2 = 2e-7
    found, table = robust._residual_pass(
        local_reducer(
            split(X, (5000, 30000, X.size - 35000)), split(Y, (5000, 30000, X.size - 35000))
        ),
        LINE,
        n=X.size,
        c=C,
        s2=s2,
        window=window,
    )
    assert table is None
    assert found.median == median
    assert found.scale == np.median(np.abs(r) / fitting.MAD_NORMALIZATION)
    assert found.deviance == pytest.approx(direct_deviance(r, s2), rel=1e-13)
    # without a window, 60,000 values are collected at once; a missed window costs passes
    assert (found.passes == 1) is (rel in (None, 0.01))


def test_sample_window_holds_the_median() -> None:
    x, y = recording(3, seconds=600.0)
    sample = robust._sample_chunk(x, y, step=x.size // robust._SAMPLE_SIZE)
    for line in [LINE, (0.0, 1.7), (0.2, 1.8)]:
        window = sample.median_window(line)
        assert window is not None
        key, _ = _value_window(float(np.median(np.abs(residuals(x, y, line)))), 0.0)
        assert window[0] <= key <= window[1]


# --- tables -----------------------------------------------------------------------------------


def build_table(
    x: Array, y: Array, reduce: Reducer, *, step: float = 1e-6
) -> tuple[robust._Table, robust._TableSpec, float]:
    """The table of the robust line of (x, y), planned as the fit would after a step that
    moved the residuals by about ``step`` times their median; and the line's σ²."""
    fit = fitting.fit_irls(x, y)
    line = (fit.intercept, fit.slope)
    median = float(np.median(np.abs(residuals(x, y, line))))
    previous = (line[0] + step * median, line[1])
    a = np.sort(np.abs(residuals(x, y, previous)))
    before = robust._Residuals(
        deviance=0.0, scale=float(np.median(a)) / fitting.MAD_NORMALIZATION,
        middle=(float(a[(a.size - 1) // 2]), float(a[a.size // 2])), passes=1,
    )  # fmt: skip
    cs = C * before.scale
    sums = direct_sums(x, y, previous, cs, float(x.mean()))
    _, ssr = robust.tukey_step(sums, x0=float(x.mean()), intercept=True)
    s2 = ssr / (x.size - 2)
    spec = robust._plan_table(
        line=line,
        previous=previous,
        x_range=(float(x.min()), float(x.max())),
        x0=float(x.mean()),
        x_exp=0,
        residuals=before,
        c=C,
        dev_cut=C * s2,
        previous_dev_cut=C * s2 * (1.0 + 1e-4),
        rounding=0.0,
        limit=1.0,
    )
    assert spec is not None
    _, table = robust._residual_pass(reduce, line, n=x.size, c=C, s2=s2, window=None, table=spec)
    assert table is not None
    return table, spec, s2


def lines_within(spec: robust._TableSpec, x: Array, seed: int) -> list[tuple[float, float]]:
    """Lines whose residuals are within half the table's margin of the reference's."""
    rng = np.random.default_rng(seed)
    span = float(x.max() - x.min())
    lines = []
    for _ in range(5):
        d1 = rng.uniform(-1, 1) * spec.margin / (4.0 * span)
        d0 = rng.uniform(-1, 1) * spec.margin / 4.0 - d1 * float(x.mean())
        lines.append((spec.line[0] + d0, spec.line[1] + d1))
    return lines


@pytest.mark.parametrize("units", [1.0, 1e3])
def test_table_gives_the_passes_results(units: float) -> None:
    """Volts: the deviance's cut-off holds few samples (kept as they are); millivolts: it
    holds most of them (summed in a second table)."""
    x, y = recording(1, units=units)
    table, spec, _ = build_table(x, y, local_reducer([x], [y]))
    assert spec.dev_table is (units > 1.0)
    assert (table.dev_moments is not None) is (units > 1.0)
    assert table.x.size < 0.1 * x.size  # a few per cent are kept as they are
    x0 = spec.x0
    for line in lines_within(spec, x, seed=1):
        for cs in np.linspace(spec.cut[0], spec.cut[1], 3):
            sums = table.tukey_sums(line, float(cs))
            assert sums is not None
            assert_close(sums, direct_sums(x, y, line, float(cs), x0), 1e-11)
        r = residuals(x, y, line)
        for t in np.linspace(spec.dev_cut[0], spec.dev_cut[1], 5)[1:-1]:
            found = table.residuals(line, float(t) / C)
            assert found is not None
            assert found.median == float(np.median(np.abs(r)))
            assert found.scale == np.median(np.abs(r) / fitting.MAD_NORMALIZATION)
            assert found.deviance == pytest.approx(direct_deviance(r, float(t) / C), rel=1e-12)
            assert found.passes == 0


def test_table_declines_what_it_was_not_built_for() -> None:
    table, spec, s2 = build_table(X, Y, local_reducer([X], [Y]))
    inside = spec.line
    assert table.tukey_sums(inside, spec.cut[0]) is not None
    assert table.residuals(inside, s2) is not None
    span = float(X.max() - X.min())
    for moved in [
        (inside[0] + 2 * spec.margin, inside[1]),
        (inside[0], inside[1] + 2 * spec.margin / span),
    ]:
        assert table.tukey_sums(moved, spec.cut[0]) is None
        assert table.residuals(moved, s2) is None
    assert table.tukey_sums(inside, spec.cut[0] * 0.999) is None
    assert table.tukey_sums(inside, spec.cut[1] * 1.001) is None
    assert table.residuals(inside, spec.dev_cut[1] * 1.001 / C) is None


@settings(max_examples=10)
@given(chunkings(X.size))
def test_table_is_the_same_on_any_chunking(chunks: tuple[int, ...]) -> None:
    whole, spec, s2 = build_table(X, Y, local_reducer([X], [Y]))
    table, _, _ = build_table(X, Y, local_reducer(split(X, chunks), split(Y, chunks)))
    assert table.below == whole.below and table.x.size == whole.x.size
    assert_close(table.moments, whole.moments, 1e-13)
    for line in lines_within(spec, X, seed=2):
        assert_close(
            table.tukey_sums(line, spec.cut[0]), whole.tukey_sums(line, spec.cut[0]), 1e-13
        )
        a, b = table.residuals(line, s2), whole.residuals(line, s2)
        assert a is not None and b is not None
        assert a.median == b.median
        assert a.deviance == pytest.approx(b.deviance, rel=1e-13)


# --- the fit ----------------------------------------------------------------------------------


def counting(reduce: Reducer) -> tuple[Reducer, list[Callable[..., Any]]]:
    calls: list[Callable[..., Any]] = []

    def counted(chunk: Callable[..., Any], combine: Callable[..., Any], /) -> Any:
        calls.append(chunk)
        return reduce(chunk, combine)

    return counted, calls


@pytest.mark.parametrize("units", [1.0, 1e3])
def test_fit_takes_its_later_iterations_from_a_table(units: float) -> None:
    x, y = recording(4, seconds=120.0, units=units)
    reduce, calls = counting(local_reducer([x], [y]))
    fit = fitting.solve_irls(reduce, maxiter=1000)
    ref = sm.RLM(y, sm.add_constant(x), M=sm.robust.norms.TukeyBiweight(c=C)).fit(maxiter=1000)
    assert fit.converged
    assert_close([fit.intercept, fit.slope], ref.params, 1e-11)
    assert fit.scale == pytest.approx(ref.scale, rel=1e-9)
    # OLS, the sample, then two passes an iteration until the line settles: one builds a
    # table, which answers every later iteration
    tables = [c for c in calls if isinstance(c, partial) and c.keywords.get("table")]
    assert len(tables) == 1
    assert len(calls) < fit.n_iter
