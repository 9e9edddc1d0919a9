"""LOWESS against statsmodels' own, on random, tied and outlying data."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from statsmodels.nonparametric.smoothers_lowess import lowess as sm_lowess

from neurobatch.kernels.lowess import lowess


@settings(max_examples=30)
@given(
    n=st.integers(min_value=2, max_value=400),
    frac=st.sampled_from([0.05, 0.2, 2.0 / 3.0, 1.0]),
    it=st.integers(min_value=0, max_value=3),
    ties=st.booleans(),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_lowess_equals_statsmodels(n: int, frac: float, it: int, ties: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = np.sort(rng.uniform(0.0, 50.0, n))
    if ties:
        x = np.round(x)  # repeated abscissae
    y = np.sin(x / 5.0) + 0.2 * rng.standard_normal(n)
    y[rng.random(n) < 0.1] += 4.0  # outliers for the robustness iterations
    with np.errstate(divide="ignore", invalid="ignore"):  # tied neighbourhoods: radius 0
        expected = sm_lowess(y, x, frac=frac, it=it, return_sorted=False)
    np.testing.assert_allclose(lowess(y, x, frac=frac, it=it), expected, rtol=1e-12)


def test_lowess_refuses_unsorted_or_short_input() -> None:
    with pytest.raises(ValueError, match="sorted increasing"):
        lowess([1.0, 2.0, 3.0], [2.0, 1.0, 3.0])
    with pytest.raises(ValueError, match="at least 2 values"):
        lowess([1.0], [1.0])
