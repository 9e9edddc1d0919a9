"""The min/max envelope decimation behind every figure."""

from __future__ import annotations

import itertools
from typing import Any

import dask.array as da
import numpy as np
import pytest

from neurobatch.plots import envelope

# --------------------------------------------------------------------------------------------
# envelope
# --------------------------------------------------------------------------------------------


def _lazy(a: np.ndarray, chunks: Any) -> Any:
    """``da.from_array`` with a type (dask's is untyped)."""
    return da.from_array(a, chunks=chunks)  # type: ignore[no-untyped-call]


def _reference_envelope(
    t: np.ndarray, x: np.ndarray, n_bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Plain-NumPy reference: a loop over the bins, each reduced with nanmin/nanmax."""
    n = x.size
    if n <= n_bins:
        return t, x, x
    edges = [i * n // n_bins for i in range(n_bins + 1)]
    lo = np.array([np.min(x[a:b]) for a, b in itertools.pairwise(edges)])
    hi = np.array([np.max(x[a:b]) for a, b in itertools.pairwise(edges)])
    return t[[i * (n - 1) // (n_bins - 1) for i in range(n_bins)]], lo, hi


@pytest.mark.parametrize(
    ("n", "n_bins"),
    [(1000, 10), (1003, 10), (997, 7), (10, 3), (5, 2), (2, 2), (7, 10), (1, 4), (0, 4)],
)
def test_envelope_matches_numpy_reference(n: int, n_bins: int) -> None:
    rng = np.random.default_rng(n * 31 + n_bins)
    t = np.sort(rng.uniform(0.0, 100.0, n))
    x = rng.standard_normal(n)
    got = envelope(t, x, n_bins)
    want = _reference_envelope(t, x, n_bins)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)
    assert all(a.shape == (min(n, n_bins),) for a in got)


def test_envelope_keeps_first_last_and_spikes() -> None:
    n = 100_003
    t = np.arange(n) / 1000.0
    x = np.zeros(n)
    x[12_345] = 50.0  # a one-sample artefact
    x[77_777] = -30.0
    tb, lo, hi = envelope(t, x, 500)
    assert tb[0] == t[0] and tb[-1] == t[-1]
    assert np.all(np.diff(tb) > 0)
    assert hi.max() == 50.0 and lo.min() == -30.0
    # every bin's representative time lies inside its bin
    edges = np.arange(501) * n // 500
    index = np.round(tb * 1000.0).astype(np.int64)
    assert np.all((edges[:-1] <= index) & (index < edges[1:]))
    # the artefacts are in the bins holding their samples
    assert hi[np.searchsorted(edges, 12_345, side="right") - 1] == 50.0
    assert lo[np.searchsorted(edges, 77_777, side="right") - 1] == -30.0


def test_envelope_ignores_nan() -> None:
    x = np.array([np.nan, 1.0, 2.0, np.nan, np.nan, np.nan, 5.0, np.nan])
    _, lo, hi = envelope(np.arange(8.0), x, 4)
    np.testing.assert_array_equal(lo, [1.0, 2.0, np.nan, 5.0])
    np.testing.assert_array_equal(hi, [1.0, 2.0, np.nan, 5.0])


@pytest.mark.parametrize(
    "chunks",
    [(10_007,), (1000,) * 10 + (7,), (3, 4000, 1, 6002, 1), (2500, 0, 7507), (101,) * 99 + (8,)],
)
@pytest.mark.parametrize("n_bins", [2, 7, 1000, 2000])
def test_envelope_chunked_equals_unchunked(chunks: tuple[int, ...], n_bins: int) -> None:
    rng = np.random.default_rng(n_bins)
    x = rng.standard_normal(10_007)
    x[rng.integers(0, x.size, 50)] = np.nan
    t = np.arange(x.size) / 1000.0
    want = envelope(t, x, n_bins)
    got = envelope(t, _lazy(x, (chunks,)), n_bins)
    for g, w in zip(got, want, strict=True):
        assert isinstance(g, np.ndarray)
        np.testing.assert_array_equal(g, w)


def test_envelope_lazy_short_trace_is_returned_unchanged() -> None:
    x = np.arange(5.0)
    _, lo, hi = envelope(np.arange(5.0), _lazy(x, 2), 10)
    np.testing.assert_array_equal(lo, x)
    np.testing.assert_array_equal(hi, x)


def test_envelope_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"n_bins must be at least 2, got 1"):
        envelope(np.arange(4.0), np.arange(4.0), 1)
    with pytest.raises(TypeError, match=r"n_bins must be an int"):
        envelope(np.arange(4.0), np.arange(4.0), 2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"same length, got shapes \(4,\) and \(3,\)"):
        envelope(np.arange(4.0), np.arange(3.0), 2)
