"""The blocked spike-triggered average equals the whole-movie kernel, on real schedulers."""

from __future__ import annotations

import logging
import warnings
from typing import Any

import dask
import dask.array as da
import numpy as np
import pytest
import scipy.sparse
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from conftest import raise_if_dask_computes
from neurobatch.engine import blocked
from neurobatch.errors import EmptyUnitWarning
from neurobatch.kernels import sta
from strategies import chunkings, split_everies

TOL = 1e-12
N_FRAMES = 40
FPS = 30.0
ONSET = 0.5
MOVIE = np.random.default_rng(11).standard_normal((N_FRAMES, 3, 4))


def make_spikes(n_units: int, seed: int) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """About 8 spikes per unit, a few before, after or too early for the movie."""
    rng = np.random.default_rng(seed)
    n_spikes = 8 * n_units
    duration = N_FRAMES / FPS
    times = rng.uniform(ONSET - 0.1 * duration, ONSET + 1.1 * duration, n_spikes)
    return times, rng.integers(0, n_units, n_spikes)


def check_equals_whole(
    movie: da.Array, n_units: int, n_lags: int, seed: int, split_every: int | None = None
) -> blocked.BlockedSta:
    """Build lazily, compute on the configured scheduler, compare with the kernel."""
    times, units = make_spikes(n_units, seed)
    args: dict[str, Any] = {"fps": FPS, "n_lags": n_lags, "onset": ONSET}
    ids = np.arange(n_units)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmptyUnitWarning)
        with raise_if_dask_computes():
            result = blocked.blocked_sta(
                movie, times, units, unit_ids=ids, split_every=split_every, **args
            )
        whole = sta.spike_triggered_average(times, units, MOVIE, unit_ids=ids, **args)
    assert result.sta.chunks == ((n_units,), (n_lags,), *movie.chunks[1:])
    assert result.sta.dtype == np.float64
    out = result.sta.compute()
    assert out.dtype == np.float64
    assert out.shape == whole.sta.shape
    np.testing.assert_allclose(out, whole.sta, rtol=TOL, atol=TOL)
    for field in ("n_used", "n_before", "n_after", "n_too_early"):
        np.testing.assert_array_equal(getattr(result.bins, field), getattr(whole.bins, field))
    return result


@given(
    chunks=chunkings(N_FRAMES, max_chunks=10),
    y_chunks=chunkings(3),
    n_lags=st.integers(1, 8),
    split_every=split_everies(),
    n_units=st.sampled_from([3, 50]),
    seed=st.integers(0, 2**16),
)
def test_chunked_sta_equals_whole(
    scheduler: str,
    chunks: tuple[int, ...],
    y_chunks: tuple[int, ...],
    n_lags: int,
    split_every: int | None,
    n_units: int,
    seed: int,
) -> None:
    movie = da.from_array(MOVIE, chunks=(chunks, y_chunks, -1))
    check_equals_whole(movie, n_units, n_lags, seed, split_every)


@pytest.mark.parametrize(
    ("chunks", "n_lags", "split_every"),
    [
        pytest.param((1,) * N_FRAMES, 5, 2, id="size-1-chunks"),
        pytest.param((N_FRAMES,), 8, None, id="single-chunk"),
        pytest.param((2,) * 20, 7, 2, id="chunks-smaller-than-n_lags"),
        pytest.param((13, 1, 2, 24), 10, 3, id="uneven"),
        pytest.param((5,) * 8, N_FRAMES, None, id="window-as-long-as-the-movie"),
    ],
)
@pytest.mark.parametrize("n_units", [3, 50])
def test_chunked_sta_equals_whole_at_the_edges(
    scheduler: str, chunks: tuple[int, ...], n_lags: int, split_every: int | None, n_units: int
) -> None:
    movie = da.from_array(MOVIE, chunks=(chunks, -1, -1))
    check_equals_whole(movie, n_units, n_lags, seed=5, split_every=split_every)


@pytest.mark.slow_hypothesis
@settings(max_examples=200)
@given(
    chunks=chunkings(N_FRAMES),
    x_chunks=chunkings(4),
    n_lags=st.integers(1, N_FRAMES),
    split_every=split_everies(),
    n_units=st.integers(1, 60),
    seed=st.integers(0, 2**16),
)
def test_chunked_sta_equals_whole_many_examples(
    chunks: tuple[int, ...],
    x_chunks: tuple[int, ...],
    n_lags: int,
    split_every: int | None,
    n_units: int,
    seed: int,
) -> None:
    movie = da.from_array(MOVIE, chunks=(chunks, 1, x_chunks))
    with dask.config.set(scheduler="sync"):
        check_equals_whole(movie, n_units, n_lags, seed, split_every)


@pytest.mark.parametrize(
    "chunks",
    [(1,) * N_FRAMES, (2,) * 20, (13, 1, 2, 24), (N_FRAMES,)],
    ids=["size-1", "size-2", "uneven", "single"],
)
def test_float32_movie_chunked_equals_whole_to_float32_precision(
    scheduler: str, chunks: tuple[int, ...]
) -> None:
    """A float32 movie is multiplied in float32: any chunking, within 1e-6 of its magnitude."""
    movie32 = (10.0 + MOVIE).astype(np.float32)
    times, units = make_spikes(20, seed=3)
    args: dict[str, Any] = {"fps": FPS, "n_lags": 6, "onset": ONSET, "unit_ids": np.arange(20)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmptyUnitWarning)
        result = blocked.blocked_sta(
            da.from_array(movie32, chunks=(chunks, -1, -1)), times, units, **args
        )
        whole = sta.spike_triggered_average(times, units, movie32, **args)
        exact = sta.spike_triggered_average(times, units, movie32.astype(np.float64), **args)
    out = result.sta.compute()
    assert out.dtype == np.float64
    tolerance = 1e-6 * np.abs(movie32).max()
    np.testing.assert_allclose(out, whole.sta, rtol=0, atol=tolerance)
    np.testing.assert_allclose(out, exact.sta, rtol=0, atol=tolerance)


def test_each_leaf_reads_one_chunk_of_the_movie(caplog: pytest.LogCaptureFixture) -> None:
    """Chunks shorter than the window work without rechunking or halos: each leaf depends on
    its own chunk alone (its counts reach past it instead)."""
    movie = da.from_array(MOVIE, chunks=(2, 3, 4))
    times, units = make_spikes(4, seed=1)
    with caplog.at_level(logging.DEBUG, logger="neurobatch.engine.blocked"):
        result = blocked.blocked_sta(movie, times, units, fps=FPS, n_lags=7, onset=ONSET)
    assert "frame blocks in their windows, each read by one task" in caplog.text
    graph = dict(result.sta.__dask_graph__())
    leaves = leaf_tasks(result)
    assert f"{len(leaves)} of 20 frame blocks in their windows" in caplog.text
    for key in leaves:
        assert dask.core.get_dependencies(graph, key) == {(movie.name, key[2], 0, 0)}
    assert not any("rechunk" in str(layer) for layer in result.sta.dask.layers)
    assert movie.chunks[0] == (2,) * 20


def leaf_tasks(result: blocked.BlockedSta) -> dict[Any, Any]:
    """The leaf tasks of the STA's tree, by key."""
    graph = dict(result.sta.__dask_graph__())
    prefix = f"{result.sta.name}-partial"
    return {k: v for k, v in graph.items() if isinstance(k, tuple) and k[:2] == (prefix, 0)}


@pytest.mark.parametrize(
    ("every", "n_units", "kind"),
    [(1, 1, np.ndarray), (9, 50, scipy.sparse.sparray)],
    ids=["a-spike-every-frame", "a-spike-every-9-frames-of-50-units"],
)
def test_dense_blocks_carry_dense_counts(every: int, n_units: int, kind: type) -> None:
    """A block's counts travel as one byte a cell when that is smaller than sparse."""
    movie = da.from_array(MOVIE, chunks=(10, 3, 4))
    times = ONSET + (np.arange(0, N_FRAMES, every) + 0.5) / FPS
    units = np.zeros(times.size, int)
    args: dict[str, Any] = {"fps": FPS, "n_lags": 3, "onset": ONSET, "unit_ids": range(n_units)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmptyUnitWarning)
        result = blocked.blocked_sta(movie, times, units, **args)
        whole = sta.spike_triggered_average(times, units, MOVIE, **args)
    carried = [task[2] for task in leaf_tasks(result).values()]
    assert len(carried) == 4
    assert all(isinstance(counts, kind) for counts in carried)
    if kind is np.ndarray:
        assert all(counts.dtype == np.uint8 for counts in carried)
    np.testing.assert_allclose(result.sta.compute(), whole.sta, rtol=TOL, atol=TOL)


def test_tree_honours_split_every() -> None:
    movie = da.from_array(MOVIE, chunks=(1, 3, 4))
    times = np.arange(N_FRAMES) / FPS + ONSET + 0.001  # one spike in every frame
    result = blocked.blocked_sta(
        movie, times, np.zeros(N_FRAMES, int), fps=FPS, n_lags=3, onset=ONSET, split_every=2
    )
    graph = dict(result.sta.__dask_graph__())
    name = result.sta.name
    reducers = [k for k in graph if isinstance(k, tuple) and str(k[0]).startswith(name)]
    fan_ins = []
    for key in reducers:
        if key[0] == name or (key[0] == f"{name}-partial" and key[1] != 0):
            deps = dask.core.get_dependencies(graph, key)
            fan_ins.append(len(deps))
    # the windows of the spikes in frames 2 .. 39 reach all 40 blocks, added pairwise
    # (40 -> 20 -> 10 -> 5 -> 3 -> 2 -> 1; a group of one moves up as it is): 39 additions,
    # none of more than 2 partials.
    assert max(fan_ins) == 2
    assert len(fan_ins) == 39
    np.testing.assert_array_equal(result.bins.n_used, [N_FRAMES - 2])


def test_blocks_without_spikes_are_not_read() -> None:
    """Frames outside every usable spike's window are never loaded, nor checked."""
    poisoned = MOVIE.copy()
    poisoned[2] = np.nan  # block 0: no spike needs it
    movie = da.from_array(poisoned, chunks=(5, 3, 4))
    times = ONSET + np.array([20.5, 22.5, 24.5]) / FPS  # frames 20, 22, 24: block 4
    result = blocked.blocked_sta(movie, times, [0, 0, 1], fps=FPS, n_lags=3, onset=ONSET)
    whole = sta.spike_triggered_average(times, [0, 0, 1], MOVIE, fps=FPS, n_lags=3, onset=ONSET)
    np.testing.assert_allclose(result.sta.compute(), whole.sta, rtol=TOL, atol=TOL)

    poisoned[19] = np.nan  # in block 3, which the window of the spike in frame 20 reaches
    movie = da.from_array(poisoned, chunks=(5, 3, 4))
    result = blocked.blocked_sta(movie, times, [0, 0, 1], fps=FPS, n_lags=3, onset=ONSET)
    with pytest.raises(ValueError, match="frames_block must be finite, got 12 NaN"):
        result.sta.compute()


def test_empty_units_warn_when_the_graph_is_built() -> None:
    movie = da.from_array(MOVIE, chunks=(7, 3, 4))
    with pytest.warns(EmptyUnitWarning, match=r"2 unit\(s\) .*: 'late', 'silent'\."):
        result = blocked.blocked_sta(
            movie,
            [0.8, 0.9, 99.0],
            ["early", "early", "late"],
            fps=FPS,
            n_lags=4,
            onset=ONSET,
            unit_ids=["early", "late", "silent"],
        )
    out = result.sta.compute()  # warnings are errors here: computing warns no more
    assert np.isnan(out[1:]).all()
    assert np.isfinite(out[0]).all()
    assert result.bins.n_after.tolist() == [0, 1, 0]


def test_no_usable_spike_at_all_gives_nan() -> None:
    movie = da.from_array(MOVIE, chunks=(7, 3, 4))
    with pytest.warns(EmptyUnitWarning):
        result = blocked.blocked_sta(movie, [0.0], [1], fps=FPS, n_lags=2, onset=ONSET)
    assert np.isnan(result.sta.compute()).all()
    assert result.sta.shape == (1, 2, 3, 4)


def test_numpy_movie_is_accepted() -> None:
    times, units = make_spikes(3, seed=2)
    result = blocked.blocked_sta(MOVIE, times, units, fps=FPS, n_lags=3, onset=ONSET)
    whole = sta.spike_triggered_average(times, units, MOVIE, fps=FPS, n_lags=3, onset=ONSET)
    np.testing.assert_allclose(result.sta.compute(), whole.sta, rtol=TOL, atol=TOL)


@pytest.mark.parametrize(
    ("movie", "kwargs", "message"),
    [
        (
            da.zeros((10, 4), chunks=5),
            {},
            r"movie must be 3-D \(frame, y, x\), got shape \(10, 4\)",
        ),
        (
            da.zeros((10, 2, 2), chunks=5),
            {"split_every": 1},
            r"split_every must be an integer >= 2",
        ),
        (da.zeros((10, 2, 2), chunks=5), {"n_lags": 11}, r"n_lags must be .* \[1, n_frames=10\]"),
        (da.zeros((10, 2, 2), chunks=5), {"fps": -1.0}, r"fps must be a finite number > 0"),
    ],
)
def test_bad_arguments_are_value_errors(
    movie: da.Array, kwargs: dict[str, Any], message: str
) -> None:
    args: dict[str, Any] = {"fps": 1.0, "n_lags": 2}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        blocked.blocked_sta(movie, [0.5], [1], **args)


def test_unknown_chunk_sizes_are_refused() -> None:
    x = da.from_array(MOVIE, chunks=(10, 3, 4))
    movie = x[x[:, 0, 0] > -10]
    with pytest.raises(
        ValueError, match=r"unknown chunk sizes along frames; call movie\.compute_chunk_sizes\(\)"
    ):
        blocked.blocked_sta(movie, [0.5], [1], fps=1.0, n_lags=2)
