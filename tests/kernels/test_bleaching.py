"""The bi-exponential photobleaching fit against an independent reference: NumPy loops,
statsmodels' LOWESS and SciPy's ``least_squares`` driven step by step."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numpy.typing import NDArray
from scipy.optimize import least_squares
from statsmodels.nonparametric.smoothers_lowess import lowess as sm_lowess

from neurobatch import synthetic
from neurobatch.kernels import bleaching

FS = 100.0
RECORDING = synthetic.photometry_recording(duration_s=300.0, fs=FS, seed=5)
TIME = RECORDING["time"].values + 12.5  # not starting at 0: the curve is in absolute time
SIGNAL = RECORDING["signal"].values
ISOSBESTIC = RECORDING["isosbestic"].values
WINDOW = int(FS * 5.0)


def reference_bleaching(x: NDArray[np.float64], t: NDArray[np.float64], window: int) -> Any:
    """The bi-exponential fit written out from PhoPro's description, with NumPy loops,
    statsmodels' LOWESS and SciPy's least_squares."""
    stride = window // 2
    starts = range(0, x.size - window + 1, stride)
    medians = np.array([np.median(x[s : s + window]) for s in starts])
    times = t[[s + window // 2 for s in starts]]
    resid = medians - sm_lowess(medians, times, frac=0.05, it=3, return_sorted=False)
    scale = 1.4826 * np.median(np.abs(resid - np.median(resid)))
    span, lo, hi = t.max() - t.min(), x.min(), x.max()
    r = hi - lo
    lower = [0, span / 1000, 0, span / 100, lo - r]
    upper = [5 * r, 5 * span, 5 * r, 10 * span, hi + r]
    dt = times[-1] - times[0]
    guess = [medians[0] - medians[-1], dt / 10, (medians[0] - medians[-1]) / 2, dt, medians[-1]]
    start = np.clip(guess, lower, upper)

    def residuals(p: NDArray[np.float64]) -> Any:
        return medians - (p[0] * np.exp(-times / p[1]) + p[2] * np.exp(-times / p[3]) + p[4])

    fit = least_squares(residuals, start, bounds=(lower, upper), loss="soft_l1", f_scale=scale)
    a1, tau1, a2, tau2, c = fit.x
    return a1 * np.exp(-t / tau1) + a2 * np.exp(-t / tau2) + c, fit.x


@given(
    n=st.integers(min_value=2, max_value=300),
    window=st.integers(min_value=2, max_value=60),
    stride=st.one_of(st.none(), st.integers(min_value=1, max_value=70)),
)
def test_strided_median_equals_a_loop(n: int, window: int, stride: int | None) -> None:
    x = np.random.default_rng(n).standard_normal(n)
    if n < window:
        with pytest.raises(ValueError, match=f"window is {window} samples and the signal"):
            bleaching.strided_median(x, window, stride=stride)
        return
    step = window // 2 if stride is None else stride
    starts = list(range(0, n - window + 1, step))
    medians, centres = bleaching.strided_median(x, window, stride=stride)
    np.testing.assert_array_equal(medians, [np.median(x[s : s + window]) for s in starts])
    np.testing.assert_array_equal(centres, [s + window // 2 for s in starts])


def test_robust_scale_and_its_fallbacks() -> None:
    r = np.array([0.5, -1.0, 2.0, 7.0, -3.0])
    assert bleaching.robust_scale(r, r) == pytest.approx(1.4826 * np.median(np.abs(r - 0.5)))
    flat_mad = np.array([0.0, 0.0, 0.0, 1.0])  # MAD 0: the standard deviation
    assert bleaching.robust_scale(flat_mad, flat_mad) == pytest.approx(np.std(flat_mad))
    assert bleaching.robust_scale(np.zeros(3), np.array([-4.0, 1.0])) == pytest.approx(5e-6)


@pytest.mark.parametrize("name", ["signal", "isosbestic"])
def test_fit_bleaching_equals_the_written_out_fit(name: str) -> None:
    x = RECORDING[name].values
    curve, params = reference_bleaching(x, TIME, WINDOW)
    fit = bleaching.fit_bleaching(x, TIME, window=WINDOW)
    np.testing.assert_allclose(fit.reference(TIME), curve, rtol=1e-12)
    c = fit.curve
    np.testing.assert_allclose([c.a1, c.tau1, c.a2, c.tau2, c.c], params, rtol=1e-10)
    residual = x - curve
    expected_r2 = 1.0 - residual @ residual / np.sum((x - x.mean()) ** 2)
    assert fit.r_squared == pytest.approx(expected_r2, rel=1e-10)
    assert (fit.n_samples, fit.window, fit.stride, c.converged) == (x.size, WINDOW, 250, True)
    record = fit.to_dict()
    assert record["method"] == "bleaching" and record["tau2"] == c.tau2


def test_fit_bleaching_recovers_a_planted_curve() -> None:
    t = np.arange(200_000) / 100.0
    planted = 2.0 + 0.6 * np.exp(-t / 90.0) + 0.4 * np.exp(-t / 900.0)
    noisy = planted + 0.002 * np.random.default_rng(0).standard_normal(t.size)
    fit = bleaching.fit_bleaching(noisy, t, window=500)
    assert np.abs(fit.reference(t) - planted).max() < 2e-3
    assert sorted([fit.curve.tau1, fit.curve.tau2]) == pytest.approx([90.0, 900.0], rel=0.1)


def test_fit_bleaching_errors_say_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="window is 500 samples and the signal has only 100"):
        bleaching.fit_bleaching(SIGNAL[:100], TIME[:100], window=500)
    with pytest.raises(ValueError, match="window must be an integer >= 2"):
        bleaching.fit_bleaching(SIGNAL, TIME, window=1)
    with pytest.raises(ValueError, match="the signal is constant"):
        bleaching.fit_bleaching(np.ones(2000), TIME[:2000], window=500)
    with pytest.raises(ValueError, match="signal must be finite, got 1 NaN"):
        bleaching.fit_bleaching(np.where(TIME == TIME[7], np.nan, SIGNAL), TIME, window=500)
    with pytest.raises(ValueError, match="signal must have the signal's 30000 samples, got 29999"):
        bleaching.fit_bleaching(SIGNAL[:-1], TIME, window=500)
