"""Detrend-retrend references against a step-by-step computation and statsmodels' RLM."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import statsmodels.api as sm
from numpy.typing import NDArray

from neurobatch import synthetic
from neurobatch.kernels import bleaching, detrend

FS = 100.0
RECORDING = synthetic.photometry_recording(duration_s=300.0, fs=FS, seed=5)
TIME = RECORDING["time"].values + 12.5  # not starting at 0: the curves are in absolute time
SIGNAL = RECORDING["signal"].values
ISOSBESTIC = RECORDING["isosbestic"].values
WINDOW = int(FS * 5.0)


def step_by_step_detrend(method: str, intercept: bool) -> tuple[NDArray[np.float64], Any]:
    """The detrend-retrend reference computed step by step; the line by statsmodels' RLM."""
    b_sig = bleaching.fit_bleaching(SIGNAL, TIME, window=WINDOW).reference(TIME)
    b_iso = bleaching.fit_bleaching(ISOSBESTIC, TIME, window=WINDOW).reference(TIME)
    d_iso = (ISOSBESTIC - b_iso) / b_iso
    d_sig = (SIGNAL - b_sig) / b_sig
    params = None
    if method == "detrend_fit_retrend":
        exog = sm.add_constant(d_iso) if intercept else d_iso[:, None]
        rlm = sm.RLM(d_sig, exog, M=sm.robust.norms.TukeyBiweight(c=3.0)).fit(maxiter=1000)
        params = rlm.params
        d_iso = rlm.fittedvalues
    return d_iso * b_sig + b_sig, params


@pytest.mark.parametrize(
    ("method", "intercept"),
    [("detrend_retrend", True), ("detrend_fit_retrend", True), ("detrend_fit_retrend", False)],
)
def test_fit_detrend_equals_the_step_by_step_reference(
    method: detrend.DetrendMethod, intercept: bool
) -> None:
    expected, params = step_by_step_detrend(method, intercept)
    fit = detrend.fit_detrend(
        SIGNAL,
        ISOSBESTIC,
        TIME,
        method=method,
        window=WINDOW,
        intercept=intercept,
    )
    np.testing.assert_allclose(fit.reference(ISOSBESTIC, TIME), expected, rtol=1e-10)
    record = fit.to_dict()
    assert record["method"] == method
    assert record["signal_bleaching"] == fit.signal.to_dict()
    assert record["isosbestic_bleaching"]["a1"] == fit.isosbestic.curve.a1
    residual = SIGNAL - expected
    r2 = 1.0 - residual @ residual / np.sum((SIGNAL - SIGNAL.mean()) ** 2)
    assert record["r_squared"] == pytest.approx(r2, rel=1e-9)
    if params is None:
        assert fit.line is None and "slope" not in record
        return
    assert fit.line is not None
    coefficients = [fit.line.intercept, fit.line.slope] if intercept else [fit.line.slope]
    np.testing.assert_allclose(coefficients, params, rtol=1e-8)
    assert record["slope"] == fit.line.slope and record["has_intercept"] is intercept
    assert record["intercept"] == (fit.line.intercept if intercept else 0.0)


def test_fit_detrend_refuses_an_unknown_method() -> None:
    with pytest.raises(ValueError, match="method must be 'detrend_retrend' or"):
        detrend.fit_detrend(SIGNAL, ISOSBESTIC, TIME, method="detrend", window=WINDOW)  # type: ignore[arg-type]
