"""Spike binning and STA partial sums equal a plain per-spike loop."""

from __future__ import annotations

import itertools
import math
import warnings
from typing import Any

import numpy as np
import pytest
import scipy.sparse
from hypothesis import given
from hypothesis import strategies as st
from numpy.typing import NDArray

from neurobatch.errors import EmptyUnitWarning
from neurobatch.kernels import binning, sta

TOL = 1e-12
#: A float32 movie's STA, as a share of the movie's largest magnitude (module docstring).
TOL32 = 1e-6


def reference_sta(
    spike_times: list[float],
    units: list[Any],
    frames: NDArray[Any],
    *,
    fps: float,
    n_lags: int,
    onset: float = 0.0,
    unit_ids: list[Any] | None = None,
) -> tuple[list[Any], NDArray[np.float64], dict[str, list[int]]]:
    """The STA the slow obvious way: one spike at a time, one lag at a time."""
    ids = sorted(set(units)) if unit_ids is None else list(unit_ids)
    row = {u: i for i, u in enumerate(ids)}
    n_frames = frames.shape[0]
    total = np.zeros((len(ids), n_lags, *frames.shape[1:]))
    tally = {k: [0] * len(ids) for k in ("used", "before", "after", "too_early")}
    for t, u in zip(spike_times, units, strict=True):
        frame = math.floor((t - onset) * fps)
        if frame < 0:
            tally["before"][row[u]] += 1
        elif frame >= n_frames:
            tally["after"][row[u]] += 1
        elif frame - (n_lags - 1) < 0:
            tally["too_early"][row[u]] += 1
        else:
            tally["used"][row[u]] += 1
            for lag in range(n_lags):
                total[row[u], lag] += frames[frame - lag]
    mean = np.full_like(total, np.nan)
    for i, n in enumerate(tally["used"]):
        if n:
            mean[i] = total[i] / n
    return ids, mean, tally


@st.composite
def recordings(draw: st.DrawFn) -> dict[str, Any]:
    """A small movie and spikes, some of them before, after or too early for the movie."""
    n_frames = draw(st.integers(1, 30))
    shape = (n_frames, draw(st.integers(1, 3)), draw(st.integers(1, 4)))
    fps = draw(st.sampled_from([1.0, 7.5, 30.0, 60.0]))
    onset = draw(st.sampled_from([0.0, -0.3, 2.5]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    n_spikes = draw(st.integers(0, 60))
    n_units = draw(st.integers(1, 6))
    duration = n_frames / fps
    times = rng.uniform(onset - 0.2 * duration, onset + 1.2 * duration, n_spikes)
    return {
        "frames": rng.standard_normal(shape),
        "spike_times": times.tolist(),
        "units": rng.integers(0, n_units, n_spikes).tolist(),
        "fps": fps,
        "onset": onset,
        "n_lags": draw(st.integers(1, n_frames)),
    }


@given(rec=recordings())
def test_sta_equals_per_spike_loop(rec: dict[str, Any]) -> None:
    ids, expected, tally = reference_sta(**rec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmptyUnitWarning)
        result = sta.spike_triggered_average(**rec)
    assert result.bins.unit_ids.tolist() == ids
    assert result.sta.dtype == np.float64
    assert result.sta.shape == (len(ids), rec["n_lags"], *rec["frames"].shape[1:])
    np.testing.assert_allclose(result.sta, expected, rtol=TOL, atol=TOL)
    assert result.bins.n_used.tolist() == tally["used"]
    assert result.bins.n_before.tolist() == tally["before"]
    assert result.bins.n_after.tolist() == tally["after"]
    assert result.bins.n_too_early.tolist() == tally["too_early"]


@given(rec=recordings(), data=st.data())
def test_blocks_combined_equal_the_whole(rec: dict[str, Any], data: st.DataObject) -> None:
    """Cutting the movie anywhere (blocks of one frame, empty blocks) and adding the partials
    of the blocks, each with its own frames and the counts reaching n_lags - 1 frames past
    them, gives the whole sum; dense counts give what sparse ones give."""
    frames, n_lags = rec["frames"], rec["n_lags"]
    bins = binning.bin_spikes(
        rec["spike_times"],
        rec["units"],
        fps=rec["fps"],
        onset=rec["onset"],
        n_frames=frames.shape[0],
        n_lags=n_lags,
    )
    counts = sta._pad_counts(bins.counts, n_lags)
    cuts = sorted(data.draw(st.lists(st.integers(0, frames.shape[0]), max_size=5)))
    edges = [0, *cuts, frames.shape[0]]
    parts = [
        sta.sta_chunk(counts[:, a : b + n_lags - 1], frames[a:b], n_lags=n_lags)
        for a, b in itertools.pairwise(edges)
    ]
    dense = [
        sta.sta_chunk(counts[:, a : b + n_lags - 1].toarray(), frames[a:b], n_lags=n_lags)
        for a, b in itertools.pairwise(edges)
    ]
    whole = sta.sta_chunk(counts, frames, n_lags=n_lags)
    _, expected, _ = reference_sta(**rec)
    for combined in (sta.sta_combine(parts), sta.sta_combine(dense)):
        np.testing.assert_allclose(combined["total"], whole["total"], rtol=TOL, atol=TOL)
        np.testing.assert_array_equal(combined["n"], bins.n_used)
        used = bins.n_used > 0
        np.testing.assert_allclose(
            sta.sta_agg(combined, warn=False)[used], expected[used], rtol=TOL, atol=TOL
        )
    np.testing.assert_array_equal(whole["n"], bins.n_used)


def test_unit_ids_fix_the_rows_and_name_empty_units() -> None:
    frames = np.arange(8.0).reshape(8, 1, 1)
    times, units = [0.45, 0.65, 0.05], [3, 3, 1]
    with pytest.warns(EmptyUnitWarning, match=r"2 unit\(s\) have no usable spikes.*: 9, 1\."):
        result = sta.spike_triggered_average(
            times, units, frames, fps=10.0, n_lags=2, unit_ids=[9, 3, 1]
        )
    assert result.bins.unit_ids.tolist() == [9, 3, 1]
    assert result.bins.n_used.tolist() == [0, 2, 0]
    assert result.bins.n_too_early.tolist() == [0, 0, 1]
    assert np.isnan(result.sta[[0, 2]]).all()
    np.testing.assert_allclose(result.sta[1, :, 0, 0], [5.0, 4.0], rtol=TOL)


def test_all_units_empty_gives_nan_not_a_crash() -> None:
    frames = np.zeros((4, 2, 2))
    with pytest.warns(EmptyUnitWarning, match="'a'"):
        result = sta.spike_triggered_average([-1.0, 100.0], ["a", "a"], frames, fps=1.0, n_lags=2)
    assert result.sta.shape == (1, 2, 2, 2)
    assert np.isnan(result.sta).all()
    assert (result.bins.n_before.tolist(), result.bins.n_after.tolist()) == ([1], [1])


def test_no_spikes_at_all() -> None:
    result = sta.spike_triggered_average([], [], np.ones((3, 1, 1)), fps=1.0, n_lags=1)
    assert result.sta.shape == (0, 1, 1, 1)


def test_many_empty_units_are_named_up_to_ten() -> None:
    part: sta.StaPartial = {"total": np.zeros((12, 1, 1, 1)), "n": np.zeros(12, np.int64)}
    with pytest.warns(EmptyUnitWarning, match=r"12 unit\(s\).*: 0, 1, .*, 9 and 2 more\."):
        out = sta.sta_agg(part)
    assert np.isnan(out).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sta.sta_agg(part, warn=False)


def test_integer_movie_gives_float64() -> None:
    frames = np.arange(24, dtype=np.uint8).reshape(6, 2, 2)
    result = sta.spike_triggered_average([0.5, 5.5], [0, 0], frames, fps=1.0, n_lags=1)
    assert result.sta.dtype == np.float64
    np.testing.assert_allclose(result.sta[0, 0], (frames[0] + frames[5]) / 2.0)


def test_float32_movie_is_multiplied_in_float32_within_its_tolerance() -> None:
    """Float32 products over steps of <= 4096 frames, added in float64: within 1e-6 of the
    movie's largest magnitude of the float64 sums, also for a movie far from zero."""
    rng = np.random.default_rng(4)
    frames = (100.0 + rng.standard_normal((9_000, 2, 3))).astype(np.float32)
    times = rng.uniform(0, 9_000, 4_000)
    units = rng.integers(0, 3, 4_000)
    result = sta.spike_triggered_average(times, units, frames, fps=1.0, n_lags=4)
    ids, expected, _ = reference_sta(
        times.tolist(), units.tolist(), frames.astype(np.float64), fps=1.0, n_lags=4
    )
    assert result.sta.dtype == np.float64
    assert result.bins.unit_ids.tolist() == ids
    np.testing.assert_allclose(result.sta, expected, rtol=0, atol=TOL32 * np.abs(frames).max())
    assert not np.array_equal(result.sta, expected)  # float32 products: not the float64 sums


@pytest.mark.parametrize(
    ("n_units", "n_spikes", "dense"),
    [(3, 6, False), (3, 600, True), (200, 8000, True)],
    ids=["sparse-block", "dense-block", "dense-block-in-many-steps"],
)
def test_sparse_and_dense_blocks_equal_the_loop(n_units: int, n_spikes: int, dense: bool) -> None:
    """Blocks with few spikes per cell take the sparse product, the others the dense one,
    whose lag-stacked weights take several steps of frames when there are many units."""
    rng = np.random.default_rng(5)
    frames = rng.standard_normal((400, 2, 2))
    times = rng.uniform(0, 400, n_spikes)
    units = rng.integers(0, n_units, n_spikes)
    bins = binning.bin_spikes(times, units, fps=1.0, n_frames=400, n_lags=5)
    assert (bins.counts.nnz >= sta._DENSE_MIN_DENSITY * bins.n_units * 396) == dense
    if n_units == 200:
        assert sta._STACK_BYTES // (bins.n_units * 5 * 8) < 396  # more than one step
    result = sta.spike_triggered_average(times, units, frames, fps=1.0, n_lags=5)
    _, expected, _ = reference_sta(times.tolist(), units.tolist(), frames, fps=1.0, n_lags=5)
    np.testing.assert_allclose(result.sta, expected, rtol=TOL, atol=TOL)


def test_collapsed_strf_is_the_mean_over_the_first_lags() -> None:
    """The retinal-ganglion "collapsed" STRF: mean over frames N-4 .. N for a 5-frame delay."""
    rng = np.random.default_rng(3)
    frames = rng.standard_normal((50, 3, 3))
    times = rng.uniform(0, 50, 40)
    result = sta.spike_triggered_average(times, np.zeros(40, int), frames, fps=1.0, n_lags=8)
    windows = [frames[n - 4 : n + 1].mean(axis=0) for n in np.floor(times).astype(int) if n >= 7]
    np.testing.assert_allclose(
        result.sta[0, :5].mean(axis=0), np.mean(windows, axis=0), rtol=TOL, atol=TOL
    )


MOVIE = np.zeros((5, 2, 2))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fps": 0.0}, r"fps must be a finite number > 0 \(frames per second\), got 0.0"),
        ({"fps": -30.0}, r"fps must be .* > 0.*got -30.0"),
        ({"fps": float("nan")}, r"fps must be a finite number > 0.*got nan"),
        ({"n_lags": 0}, r"n_lags must be an integer in \[1, n_frames=5\], got 0"),
        ({"n_lags": 6}, r"n_lags must be an integer in \[1, n_frames=5\], got 6"),
        ({"onset": float("inf")}, r"onset must be finite \(seconds\), got inf"),
        ({"spike_times": [0.5, float("nan")]}, r"spike_times must be finite, got 1 NaN"),
        ({"spike_times": [float("inf"), 0.5]}, r"spike_times must be finite, got 0 NaN and 1 inf"),
        ({"spike_times": [0.5]}, r"spike_times and units must have the same length.*1 and 2"),
        ({"frames": np.zeros((5, 4))}, r"frames must be 3-D \(frame, y, x\), got shape \(5, 4\)"),
        (
            {"frames": np.where(np.arange(20).reshape(5, 2, 2) == 7, np.nan, 0.0)},
            r"frames must be finite, got 1 NaN and 0 infinite value\(s\) \(first at index",
        ),
        ({"unit_ids": [1]}, r"units holds 1 label\(s\) missing from unit_ids: \[2\]"),
        ({"unit_ids": [1, 2, 1]}, r"unit_ids must be unique, got repeated label\(s\) \[1\]"),
    ],
)
def test_bad_arguments_are_value_errors(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {
        "spike_times": [0.5, 1.5],
        "units": [1, 2],
        "frames": MOVIE,
        "fps": 1.0,
        "n_lags": 2,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        sta.spike_triggered_average(**args)


def test_sta_chunk_checks_its_layout() -> None:
    counts = np.array([[1, 0, 2]])
    with pytest.raises(
        ValueError, match=r"counts_block must hold the block's 3 frame\(s\) and the 1 after"
    ):
        sta.sta_chunk(counts, np.zeros((3, 1, 1)), n_lags=2)
    for negative in (np.array([[1, -1, 0]]), scipy.sparse.csc_array(np.array([[1, -1, 0]]))):
        with pytest.raises(ValueError, match="counts_block must hold spike counts >= 0, got -1"):
            sta.sta_chunk(negative, np.zeros((2, 1, 1)), n_lags=2)
    with pytest.raises(ValueError, match=r"counts_block must be 2-D .*got shape \(3,\)"):
        sta.sta_chunk(np.array([1, 0, 2]), np.zeros((2, 1, 1)), n_lags=2)
    with pytest.raises(ValueError, match="n_lags must be an integer >= 1, got 0"):
        sta.sta_chunk(counts, np.zeros((4, 1, 1)), n_lags=0)
    with pytest.raises(ValueError, match="frames_block must be finite"):
        sta.sta_chunk(counts, np.full((2, 1, 1), np.inf), n_lags=2)
    with pytest.raises(ValueError, match="parts must hold at least one partial"):
        sta.sta_combine([])
