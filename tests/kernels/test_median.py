"""The exact blocked median against ``np.median``."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numpy.typing import NDArray

from neurobatch.kernels import median
from neurobatch.kernels.median import MedianSearch, exact_median, median_chunk, median_combine
from neurobatch.kernels.reduction import local_reducer
from strategies import chunkings


def split(a: NDArray[np.float64], chunks: tuple[int, ...]) -> list[NDArray[np.float64]]:
    return np.split(a, np.cumsum(chunks)[:-1])


# --- exact median ---------------------------------------------------------------------------


def blocked_median(values: NDArray[np.float64], chunks: tuple[int, ...]) -> float:
    return exact_median(local_reducer(split(values, chunks)))


@st.composite
def values_and_chunks(draw: st.DrawFn) -> tuple[NDArray[np.float64], tuple[int, ...]]:
    pool = draw(
        st.sampled_from(
            [
                st.floats(allow_nan=False, allow_infinity=False),
                st.sampled_from([-2.5, -0.0, 0.0, 1.0, 1.0 + 2**-52, 3.0]),  # ties
                st.integers(-3, 3).map(float),
            ]
        )
    )
    values = np.array(draw(st.lists(pool, min_size=1, max_size=60)), dtype=np.float64)
    # chunkings(1) cannot draw (its cut points would lie in an empty range)
    return values, draw(chunkings(values.size)) if values.size > 1 else (1,)


@given(values_and_chunks())
def test_exact_median_equals_numpy(case: tuple[NDArray[np.float64], tuple[int, ...]]) -> None:
    values, chunks = case
    assert blocked_median(values, chunks) == np.median(values)


@pytest.mark.parametrize("n", [400_001, 400_000])
def test_exact_median_narrowing_passes(n: int) -> None:
    """Too many values in the middle bins to collect at once: counting passes narrow."""
    rng = np.random.default_rng(8)
    values = np.round(rng.normal(1.03, 1e-3, n), 7)  # one first-pass bin, dense ties
    chunks = (n // 3, n // 3, n - 2 * (n // 3))
    reduce = local_reducer(split(values, chunks))
    search = MedianSearch()
    while not search.done:
        search.advance(reduce(partial(median_chunk, plan=search.plan), median_combine))
    assert search.median() == np.median(values)
    assert search.passes >= 3


def test_exact_median_all_equal_needs_no_collect() -> None:
    values = np.full(300_000, -7.25)
    assert blocked_median(values, (100_000, 200_000)) == -7.25


@pytest.mark.parametrize("guess", [0.0, 0.49, 0.5, 0.51, 1.0])
def test_exact_median_window(guess: float) -> None:
    """A window that holds the median ends in one pass; one that misses it still works."""
    values = np.random.default_rng(9).uniform(0.0, 1.0, 10_001)
    reduce = local_reducer(split(values, (5000, 5001)))
    window = median._value_window(guess, 0.01)
    search = MedianSearch(n=values.size, window=window)
    while not search.done:
        search.advance(reduce(partial(median_chunk, plan=search.plan), median_combine))
    assert search.median() == np.median(values)
    assert (search.passes == 1) is (guess == 0.5)


# --- errors ---------------------------------------------------------------------------------


def test_median_errors() -> None:
    with pytest.raises(ValueError, match=r"values must not hold NaN, got 1 in a block of 2"):
        exact_median(local_reducer([np.array([1.0, np.nan])]))
    with pytest.raises(ValueError, match=r"values must hold at least one value, got 0"):
        exact_median(local_reducer([np.array([])]))
    with pytest.raises(ValueError, match=r"same, non-zero number of blocks, got .*\[2, 1\]"):
        local_reducer([np.ones(1), np.ones(1)], [np.ones(2)])
    with pytest.raises(ValueError, match=r"not done"):
        MedianSearch().order_statistics()
