"""Spike binning: exclusion counts at the edges, sparse counts, unit labels, bad types."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse

from neurobatch.kernels import binning


def test_exclusion_counts_at_the_edges() -> None:
    # 10 fps from onset 2 s, 5 frames (2.0 .. 2.5 s), window of 3 frames.
    times = [1.99, 2.0, 2.15, 2.2, 2.25, 2.49, 2.5, 9.0, 2.35]
    units = ["x", "x", "x", "x", "y", "y", "y", "y", "z"]
    bins = binning.bin_spikes(times, units, fps=10.0, onset=2.0, n_frames=5, n_lags=3)
    assert bins.unit_ids.tolist() == ["x", "y", "z"]
    # x: 1.99 before; 2.0 and 2.15 in frames 0, 1: too early; 2.2 in frame 2: used.
    assert bins.n_before.tolist() == [1, 0, 0]
    assert bins.n_too_early.tolist() == [2, 0, 0]
    assert bins.n_used.tolist() == [1, 2, 1]
    # y: 2.5 s is the end of the movie (frame 5 of 5), so it is after, as is 9 s.
    assert bins.n_after.tolist() == [0, 2, 0]
    totals = bins.n_used + bins.n_before + bins.n_after + bins.n_too_early
    assert totals.tolist() == [4, 4, 1]
    assert isinstance(bins.counts, scipy.sparse.csc_array)
    assert bins.counts.shape == (3, 5)
    assert bins.counts.toarray().tolist() == [[0, 0, 1, 0, 0], [0, 0, 1, 0, 1], [0, 0, 0, 1, 0]]
    np.testing.assert_allclose(bins.lag_times, [0.0, 0.1, 0.2])


def test_counts_are_sparse_and_sum_repeated_frames() -> None:
    rng = np.random.default_rng(1)
    times = np.concatenate([np.full(4, 0.51), rng.uniform(0, 100, 5000)])
    units = np.concatenate([np.zeros(4, int), rng.integers(0, 2000, 5000)])
    bins = binning.bin_spikes(times, units, fps=10.0, n_frames=1000, n_lags=3)
    assert bins.counts.nnz <= 5000
    assert bins.counts.dtype == np.int32
    assert bins.counts[0, 5] == 4
    assert int(bins.counts.sum()) == int(bins.n_used.sum())


@pytest.mark.parametrize("with_unit_ids", [False, True])
def test_integer_labels_of_any_span_give_the_same_bins(with_unit_ids: bool) -> None:
    """Labels within a small span are looked up in a table, others sorted: the same bins."""
    rng = np.random.default_rng(2)
    times = rng.uniform(0, 50, 300)
    small = rng.integers(-3, 4, 300)
    labels = {
        "small span": small,
        "int8": small.astype(np.int8),
        "huge span": np.where(small > 0, small * 10**12, small),
        "strings": np.array([f"u{v + 3}" for v in small]),  # sorted as the integers
    }
    results = []
    for units in labels.values():
        ids = np.unique(units)[::-1] if with_unit_ids else None
        results.append(
            binning.bin_spikes(times, units, fps=1.0, n_frames=50, n_lags=3, unit_ids=ids)
        )
    first = results[0]
    assert first.unit_ids.tolist() == (
        list(range(3, -4, -1)) if with_unit_ids else list(range(-3, 4))
    )
    for bins in results[1:]:
        assert (bins.counts != first.counts).nnz == 0
        for field in ("n_used", "n_before", "n_after", "n_too_early"):
            np.testing.assert_array_equal(getattr(bins, field), getattr(first, field))
    assert results[1].unit_ids.dtype == np.int8


def test_bad_types_are_type_errors() -> None:
    with pytest.raises(TypeError, match=r"n_lags must be an integer, got 2\.5"):
        binning.bin_spikes([0.5], [1], fps=1.0, n_frames=5, n_lags=2.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="spike_times must be numeric"):
        binning.bin_spikes(["a"], [1], fps=1.0, n_frames=5, n_lags=2)
