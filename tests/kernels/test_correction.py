"""dF/F, dF and whole-signal normalisation against PhoPro's formulas."""

from __future__ import annotations

import numpy as np
import pytest

from neurobatch.kernels import correction


@pytest.fixture
def pair() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    reference = 2.0 + 0.1 * rng.standard_normal(1000)
    signal = reference * (1 + 0.05 * rng.standard_normal(1000))
    return signal, reference


def test_dff_and_df(pair) -> None:
    signal, reference = pair
    np.testing.assert_allclose(
        correction.correct(signal, reference, method="dff"), signal / reference - 1, atol=1e-14
    )
    np.testing.assert_array_equal(
        correction.correct(signal, reference, method="df"), signal - reference
    )
    np.testing.assert_array_equal(correction.correct(signal, reference, method="none"), signal)


def test_dff_floors_a_nonpositive_reference_at_float32_eps() -> None:
    eps = np.finfo(np.float32).eps
    out = correction.correct([1.0, 1.0], [0.0, -3.0], method="dff")
    np.testing.assert_array_equal(out, [1.0 / eps, 4.0 / eps])
    assert np.isfinite(out).all()


def test_normalisations_match_numpy(pair) -> None:
    x = pair[0]
    np.testing.assert_allclose(
        correction.normalize(x, method="zscore"), (x - x.mean()) / x.std(ddof=0), rtol=1e-12
    )
    np.testing.assert_allclose(correction.normalize(x, method="nullz"), x / x.std(), rtol=1e-12)
    np.testing.assert_array_equal(correction.normalize(x, method="none"), x)


def test_given_statistics_are_used_for_a_block(pair) -> None:
    x = pair[0]
    block = correction.normalize(x[:10], method="zscore", mean=x.mean(), std=x.std())
    np.testing.assert_allclose(block, ((x - x.mean()) / x.std())[:10], rtol=1e-12)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: correction.correct([1.0], [1.0], method="dF/F"), "method must be one of 'dff'"),
        (lambda: correction.correct([1.0, 2.0], [1.0], method="df"), "same length"),
        (lambda: correction.normalize([1.0, 1.0], method="zscore"), "constant signal"),
        (lambda: correction.normalize([1.0], method="robust"), "method must be one of 'zscore'"),
    ],
)
def test_bad_arguments_say_what_was_wrong(call, match) -> None:
    with pytest.raises(ValueError, match=match):
        call()
