"""The blocked event-triggered average equals pynapple's and a per-event NumPy loop.

pynapple (a test-only dependency) is the parity reference: ``compute_event_triggered_average``
on a ``Tsd``/``TsdFrame``/``TsdTensor`` of the signal and a ``TsGroup`` of the events, with
``binsize = 1 / sampling_rate``. Two things make its inputs "the same" as ours:

- pynapple puts each sample in a time bin by comparing its timestamp with bin edges rounded to
  the nanosecond, so the timestamps given to it are rounded to the nanosecond too (and the
  rates have a sample period that is a whole number of nanoseconds);
- its default epoch ends at the last sample's time and drops that sample, and a ``TsGroup``
  restricts its units to its own time support: both get the signal's span
  ``[start_time, start_time + n / fs]`` explicitly. The default is tested on its own below.
"""

from __future__ import annotations

import logging
import re
import warnings
from typing import Any

import dask
import dask.array as da
import numpy as np
import pynapple as nap
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from conftest import raise_if_dask_computes
from neurobatch.engine import blocked
from neurobatch.errors import EmptyUnitWarning
from strategies import chunkings, split_everies

TOL = 1e-12
N = 60
RATES = (10.0, 100.0, 1000.0, 1250.0)
STARTS = (0.0, -1.25, 3.5)


def make_events(
    rng: np.random.Generator, n_events: int, n_units: int, n: int, t0: float, fs: float
) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """Random events, ~10 % before and ~10 % after the signal, never near a sample boundary.

    Each event lies between 5 % and 95 % of a sample period past a sample time, so its sample
    is ``floor((t - t0) * fs)`` beyond doubt (events on the grid are tested on their own).
    """
    k = rng.integers(-n // 10, n + n // 10, n_events)
    times = t0 + (k + rng.uniform(0.05, 0.95, n_events)) / fs
    return times, rng.integers(0, n_units, n_events)


def loop_eta(
    x: NDArray[np.float64],
    t0: float,
    fs: float,
    times: NDArray[np.float64],
    labels: NDArray[Any],
    ids: NDArray[Any],
    n_before: int,
    n_after: int,
    edges: str = "zeros",
) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """The definition, one event at a time: zeros outside the signal, or the event left out."""
    n = x.shape[0]
    offsets = range(-n_before, n_after + 1)
    out = np.full((len(ids), len(offsets), *x.shape[1:]), np.nan)
    used = np.zeros(len(ids), dtype=np.int64)
    for row, unit in enumerate(ids):
        total = np.zeros((len(offsets), *x.shape[1:]))
        for t in times[labels == unit]:
            c = int(np.floor((t - t0) * fs))
            if not 0 <= c < n:
                continue
            if edges == "exclude" and not n_before <= c < n - n_after:
                continue
            for i, k in enumerate(offsets):
                if 0 <= c + k < n:
                    total[i] += x[c + k]
            used[row] += 1
        if used[row]:
            out[row] = total / used[row]
    return out, used


def pynapple_eta(
    x: NDArray[np.float64],
    t0: float,
    fs: float,
    times: NDArray[np.float64],
    labels: NDArray[Any],
    ids: NDArray[Any],
    window: tuple[float, float],
    *,
    default_epoch: bool = False,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """pynapple's ETA, transposed to ``(unit, offset, ...)``, and its offsets in seconds."""
    n = x.shape[0]
    stamps = np.round(t0 + np.arange(n) / fs, 9)
    ep = None if default_epoch else nap.IntervalSet(start=t0, end=t0 + n / fs)
    data: Any
    if x.ndim == 1:
        data = nap.Tsd(t=stamps, d=x, time_support=ep)
    elif x.ndim == 2:
        data = nap.TsdFrame(t=stamps, d=x, time_support=ep)
    else:
        data = nap.TsdTensor(t=stamps, d=x, time_support=ep)
    support = data.time_support
    group = nap.TsGroup(
        {
            row: nap.Ts(t=np.sort(times[labels == unit]), time_support=support)
            for row, unit in enumerate(ids)
        },
        time_support=support,
    )
    with warnings.catch_warnings():
        if window == (0.0, 0.0):
            # pynapple's output then has one timestamp: its time support (an IntervalSet from
            # 0 to 0) warns "Some epochs have no duration", and its rate divides by zero
            warnings.filterwarnings("ignore", "Some epochs have no duration", UserWarning)
            warnings.filterwarnings("ignore", "divide by zero", RuntimeWarning)
        eta = nap.compute_event_triggered_average(
            data, group, binsize=1.0 / fs, window=window, epochs=support
        )
    return np.moveaxis(np.asarray(eta.values), 0, 1), np.asarray(eta.index.values)


def check(
    x: NDArray[np.float64],
    chunks: tuple[tuple[int, ...], ...],
    *,
    fs: float,
    t0: float,
    n_before: int,
    n_after: int,
    n_units: int,
    seed: int,
    split_every: int | None = None,
) -> None:
    """Ours equals the loop (both edge modes) and pynapple (zeros), for one input.

    The graphs are built lazily, then computed together (one round trip to the scheduler).
    """
    rng = np.random.default_rng(seed)
    times, labels = make_events(rng, 10 * n_units, n_units, x.shape[0], t0, fs)
    ids = np.arange(n_units + 1)  # the last unit never has an event
    signal = da.from_array(x, chunks=chunks)
    args: dict[str, Any] = {
        "sampling_rate": fs,
        "start_time": t0,
        "unit_ids": ids,
        "split_every": split_every,
    }
    # pynapple's offsets can overshoot the window by one sample: ours takes its grid's ends
    theirs, index = pynapple_eta(x, t0, fs, times, labels, ids, (n_before / fs, n_after / fs))
    windows = {"zeros": (-n_before / fs, n_after / fs), "pynapple": (index[0], index[-1])}
    if n_before + n_after < x.shape[0]:  # else no window fits inside the signal
        windows["exclude"] = windows["zeros"]
    results: dict[str, blocked.BlockedEta] = {}
    with raise_if_dask_computes():
        for case, window_s in windows.items():
            edges = "exclude" if case == "exclude" else "zeros"
            # the last unit, and any other without usable events (e.g. all excluded)
            with pytest.warns(EmptyUnitWarning, match=rf"NaN: (.*, )?{n_units}\.$"):
                results[case] = blocked.event_triggered_average(
                    signal, times, labels, window_s=window_s, edges=edges, **args
                )
    computed = dict(zip(results, dask.compute(*(r.eta for r in results.values())), strict=True))

    for case, result in results.items():
        out = computed[case]
        assert result.eta.chunks == ((n_units + 1,), (len(result.offsets),), *signal.chunks[1:])
        assert result.eta.dtype == out.dtype == np.float64
        if case == "pynapple":
            np.testing.assert_allclose(result.offset_times, index, rtol=0, atol=TOL)
            if np.sum(index > 0) >= x.shape[0]:
                # pynapple adds an event once it has read the samples after its window, so
                # with n_after >= n_samples it adds none (and still divides): all zeros
                assert np.all(theirs == 0.0)
                continue
            some = result.n_used > 0
            np.testing.assert_allclose(out[some], theirs[some], rtol=TOL, atol=TOL)
            # a unit without events: pynapple gives zeros, we give NaN (and warned above)
            assert np.all(theirs[~some] == 0.0)
            assert np.isnan(out[~some]).all()
            continue
        np.testing.assert_array_equal(result.offsets, np.arange(-n_before, n_after + 1))
        expected, used = loop_eta(x, t0, fs, times, labels, ids, n_before, n_after, case)
        np.testing.assert_allclose(out, expected, rtol=TOL, atol=TOL)
        np.testing.assert_array_equal(result.n_used, used)
        counted = result.n_used + result.n_before + result.n_after
        if case == "exclude":
            counted = counted + result.n_clipped
        np.testing.assert_array_equal(counted, np.bincount(labels, minlength=n_units + 1))


@given(
    chunks=chunkings(N, max_chunks=10),
    n_columns=st.sampled_from([0, 3]),
    column_chunks=chunkings(3),
    n_before=st.integers(0, 8),
    n_after=st.integers(0, 8),
    fs=st.sampled_from(RATES),
    t0=st.sampled_from(STARTS),
    n_units=st.sampled_from([1, 4]),
    split_every=split_everies(),
    seed=st.integers(0, 2**16),
)
def test_equals_pynapple_and_the_loop(
    scheduler: str,
    chunks: tuple[int, ...],
    n_columns: int,
    column_chunks: tuple[int, ...],
    n_before: int,
    n_after: int,
    fs: float,
    t0: float,
    n_units: int,
    split_every: int | None,
    seed: int,
) -> None:
    rng = np.random.default_rng(seed)
    if n_columns:
        x = rng.standard_normal((N, n_columns))
        all_chunks: tuple[tuple[int, ...], ...] = (chunks, column_chunks)
    else:
        x = rng.standard_normal(N)
        all_chunks = (chunks,)
    check(
        x,
        all_chunks,
        fs=fs,
        t0=t0,
        n_before=n_before,
        n_after=n_after,
        n_units=n_units,
        seed=seed,
        split_every=split_every,
    )


@pytest.mark.slow_hypothesis
@settings(max_examples=200)
@given(
    chunks=chunkings(N),
    n_columns=st.sampled_from([0, 1, 2]),
    n_before=st.integers(0, N + 5),
    n_after=st.integers(0, N + 5),
    fs=st.sampled_from(RATES),
    t0=st.sampled_from(STARTS),
    n_units=st.integers(1, 6),
    split_every=split_everies(),
    seed=st.integers(0, 2**16),
)
def test_equals_pynapple_and_the_loop_many_examples(
    chunks: tuple[int, ...],
    n_columns: int,
    n_before: int,
    n_after: int,
    fs: float,
    t0: float,
    n_units: int,
    split_every: int | None,
    seed: int,
) -> None:
    rng = np.random.default_rng(seed)
    shape = (N, n_columns) if n_columns else (N,)
    check(
        rng.standard_normal(shape),
        (chunks, *((-1,) if n_columns else ())),
        fs=fs,
        t0=t0,
        n_before=n_before,
        n_after=n_after,
        n_units=n_units,
        seed=seed,
        split_every=split_every,
    )


@pytest.mark.parametrize(
    ("shape", "chunks", "n_before", "n_after", "split_every"),
    [
        pytest.param((N,), ((1,) * N,), 5, 3, 2, id="size-1-chunks"),
        pytest.param((N,), ((N,),), 4, 4, None, id="single-chunk"),
        pytest.param((N, 2), ((2,) * 30, (1, 1)), 7, 6, 2, id="chunks-smaller-than-window"),
        pytest.param((N, 3), ((13, 1, 2, 44), (3,)), 10, 2, 3, id="uneven"),
        pytest.param((N,), ((7,) * 8 + (4,),), 40, 30, None, id="window-longer-than-signal"),
        pytest.param((N, 2, 3), ((7,) * 8 + (4,), (1, 1), (2, 1)), 3, 5, 2, id="tsd-tensor"),
    ],
)
def test_equals_pynapple_and_the_loop_at_the_edges(
    shape: tuple[int, ...],
    chunks: tuple[tuple[int, ...], ...],
    n_before: int,
    n_after: int,
    split_every: int | None,
) -> None:
    x = np.random.default_rng(3).standard_normal(shape)
    check(
        x,
        chunks,
        fs=100.0,
        t0=-1.25,
        n_before=n_before,
        n_after=n_after,
        n_units=3,
        seed=7,
        split_every=split_every,
    )


def test_events_on_the_sample_times_fall_in_those_samples() -> None:
    """An event at a sample's time, exactly or rounded to the ns, averages from that sample."""
    fs, t0 = 1000.0, 0.25
    x = np.random.default_rng(2).standard_normal(N)
    k = np.array([0, 3, 17, 29, 41, 57, 59])
    ids = np.array([0])
    expected, _ = loop_eta(x, 0.0, 1.0, k + 0.5, np.zeros(k.size, int), ids, 3, 3)
    for times in (t0 + k / fs, np.round(t0 + k / fs, 9), t0 + k * (1 / fs)):
        result = blocked.event_triggered_average(
            da.from_array(x, chunks=11), times, sampling_rate=fs, window_s=0.003, start_time=t0
        )
        np.testing.assert_array_equal(result.offsets, np.arange(-3, 4))
        np.testing.assert_allclose(result.eta.compute(), expected, rtol=TOL, atol=TOL)
        assert result.n_used.tolist() == [k.size]
    rounded = np.round(t0 + k / fs, 9)
    theirs, _ = pynapple_eta(x, t0, fs, rounded, np.zeros(k.size, int), ids, (0.003, 0.003))
    np.testing.assert_allclose(result.eta.compute(), theirs, rtol=TOL, atol=TOL)


def test_pynapple_default_epoch_drops_the_last_sample() -> None:
    """pynapple's default epoch ``[t_0, t_{n-1}]`` ignores the last sample: ours on x[:-1]."""
    fs, t0 = 100.0, 3.5
    x = np.random.default_rng(4).standard_normal(N)
    times = t0 + (np.array([2, 30, 55, 58, 59, 59]) + 0.5) / fs  # two events in sample 59
    labels = np.array([0, 0, 0, 1, 1, 2])
    ids = np.arange(3)
    theirs, _ = pynapple_eta(x, t0, fs, times, labels, ids, (0.02, 0.03), default_epoch=True)
    with pytest.warns(EmptyUnitWarning, match=r"NaN: 2\.$"):  # unit 2's only event: sample 59
        ours = blocked.event_triggered_average(
            x[:-1], times, labels, sampling_rate=fs, window_s=(-0.02, 0.03), start_time=t0
        )
    np.testing.assert_allclose(ours.eta.compute()[:2], theirs[:2], rtol=TOL, atol=TOL)
    assert ours.n_after.tolist() == [0, 1, 1]
    assert np.all(theirs[2] == 0.0)
    # on the whole signal, the last sample and the events in it count
    whole = blocked.event_triggered_average(
        x, times, labels, sampling_rate=fs, window_s=(-0.02, 0.03), start_time=t0
    )
    expected, _ = loop_eta(x, t0, fs, times, labels, ids, 2, 3)
    np.testing.assert_allclose(whole.eta.compute(), expected, rtol=TOL, atol=TOL)
    assert whole.n_used.tolist() == [3, 2, 1]


def test_pynapple_lag_grid_can_overshoot_the_window() -> None:
    """pynapple's ``np.arange(0, 0.2 + 0.1, 0.1)`` has 4 points: a lag at 0.3 s > 0.2 s."""
    x = np.arange(N, dtype=np.float64)
    times, labels, ids = np.array([2.05]), np.array([0]), np.array([0])
    theirs, index = pynapple_eta(x, 0.0, 10.0, times, labels, ids, (0.0, 0.2))
    np.testing.assert_allclose(index, [0.0, 0.1, 0.2, 0.3], atol=TOL)
    ours = blocked.event_triggered_average(x, times, sampling_rate=10.0, window_s=(0.0, 0.2))
    np.testing.assert_array_equal(ours.offsets, [0, 1, 2])
    np.testing.assert_array_equal(ours.eta.compute(), theirs[:, :3])


def test_nan_in_the_signal_raises_where_pynapple_gives_zeros() -> None:
    x = np.arange(N, dtype=np.float64)
    x[21] = np.nan
    times, labels, ids = np.array([2.05, 4.05]), np.array([0, 0]), np.array([0])
    theirs, _ = pynapple_eta(x, 0.0, 10.0, times, labels, ids, (0.1, 0.1))
    np.testing.assert_allclose(theirs[0], [(19 + 39) / 2, (20 + 40) / 2, (0 + 41) / 2])
    ours = blocked.event_triggered_average(
        da.from_array(x, chunks=7), times, sampling_rate=10.0, window_s=0.1
    )
    with pytest.raises(ValueError, match=r"must be finite, got 1 NaN"):
        ours.eta.compute()


def test_bookkeeping_and_edges() -> None:
    fs = 10.0
    x = np.arange(20.0)
    #               before  sample 0  sample 1  sample 10  sample 19  after  at the end
    times = np.array([-0.01, 0.0, 0.15, 1.05, 1.95, 2.3, 2.0])
    labels = np.array(["a", "a", "b", "b", "b", "b", "c"])
    with pytest.warns(EmptyUnitWarning, match=r"NaN: 'c'\.$"):
        zeros = blocked.event_triggered_average(
            x, times, labels, sampling_rate=fs, window_s=(-0.1, 0.2), unit_ids=["b", "a", "c"]
        )
    assert zeros.unit_ids.tolist() == ["b", "a", "c"]
    assert zeros.n_used.tolist() == [3, 1, 0]
    assert zeros.n_before.tolist() == [0, 1, 0]
    assert zeros.n_after.tolist() == [1, 0, 1]
    assert zeros.n_clipped.tolist() == [1, 1, 0]  # sample 19 (needs 20, 21), sample 0 (needs -1)
    assert zeros.edges == "zeros" and zeros.sampling_rate == fs
    np.testing.assert_allclose(zeros.offset_times, [-0.1, 0.0, 0.1, 0.2], atol=TOL)
    expected_b = (np.array([0, 1, 2, 3]) + np.array([9, 10, 11, 12]) + [18, 19, 0, 0]) / 3
    out = zeros.eta.compute()
    np.testing.assert_allclose(out[0], expected_b, rtol=TOL)
    np.testing.assert_allclose(out[1], [0, 0, 1, 2], rtol=TOL)
    assert np.isnan(out[2]).all()

    with pytest.warns(EmptyUnitWarning, match=r"NaN: 'a', 'c'\.$"):
        excluded = blocked.event_triggered_average(
            x, times, labels, sampling_rate=fs, window_s=(-0.1, 0.2), edges="exclude"
        )
    assert excluded.unit_ids.tolist() == ["a", "b", "c"]
    assert excluded.n_used.tolist() == [0, 2, 0]
    assert excluded.n_clipped.tolist() == [1, 1, 0]
    out = excluded.eta.compute()
    np.testing.assert_allclose(out[1], (np.arange(4.0) + np.arange(9.0, 13.0)) / 2, rtol=TOL)
    assert np.isnan(out[[0, 2]]).all()


def test_empty_units_warn_once_when_the_graph_is_built() -> None:
    with pytest.warns(EmptyUnitWarning, match=r"^2 unit\(s\) have no usable events, .*'y', 'z'\.$"):
        result = blocked.event_triggered_average(
            np.ones(10), [0.35], ["x"], sampling_rate=10.0, window_s=0.1, unit_ids=["x", "y", "z"]
        )
    out = result.eta.compute()  # warnings are errors here: computing warns no more
    np.testing.assert_array_equal(out[0], [1.0, 1.0, 1.0])
    assert np.isnan(out[1:]).all()


def test_the_graph_is_lazy_and_the_signal_is_not_rechunked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    x = np.random.default_rng(5).standard_normal((N, 4))
    signal = da.from_array(x, chunks=((2,) * 30, (3, 1)))
    times, labels = make_events(np.random.default_rng(6), 30, 3, N, 0.0, 100.0)
    with raise_if_dask_computes(), caplog.at_level(logging.DEBUG, "neurobatch.engine.blocked"):
        result = blocked.event_triggered_average(
            signal, times, labels, sampling_rate=100.0, window_s=(-0.05, 0.04)
        )
    assert "32 of 32 frame blocks in their windows, each read by one task" in caplog.text
    assert re.search(r"event_triggered_average: \d+ of 30 events used", caplog.text)
    assert not any("rechunk" in str(name) for name in result.eta.dask.layers)
    assert result.eta.chunks == ((3,), (10,), (3, 1))
    expected, _ = loop_eta(x, 0.0, 100.0, times, labels, np.arange(3), 5, 4)
    np.testing.assert_allclose(result.eta.compute(), expected, rtol=TOL, atol=TOL)


def test_signals_of_more_dimensions_flatten_their_trailing_axes() -> None:
    x = np.random.default_rng(8).standard_normal((N, 2, 2, 3))
    times, labels = make_events(np.random.default_rng(9), 20, 2, N, 1.0, 10.0)
    signal = da.from_array(x, chunks=(9, 1, -1, -1))
    result = blocked.event_triggered_average(
        signal, times, labels, sampling_rate=10.0, window_s=(-0.3, 0.2), start_time=1.0
    )
    assert result.eta.shape == (2, 6, 2, 2, 3)
    expected, _ = loop_eta(x, 1.0, 10.0, times, labels, np.arange(2), 3, 2)
    np.testing.assert_allclose(result.eta.compute(), expected, rtol=TOL, atol=TOL)
    with pytest.raises(ValueError, match=r"one chunk along each axis after the second"):
        blocked.event_triggered_average(
            signal.rechunk((9, 1, 1, -1)), times, labels, sampling_rate=10.0, window_s=0.1
        )


@pytest.mark.parametrize(
    ("signal", "kwargs", "error", "match"),
    [
        (np.ones(5), {"sampling_rate": 0.0}, ValueError, r"sampling_rate must be a finite .*> 0"),
        (np.ones(5), {"sampling_rate": "10"}, TypeError, r"sampling_rate must be a real number"),
        (np.ones(5), {"start_time": np.nan}, ValueError, r"start_time must be finite"),
        (np.ones(5), {"window_s": (0.1, 0.2)}, ValueError, r"start <= 0 <= stop, got \(0\.1"),
        (np.ones(5), {"window_s": -0.1}, ValueError, r"window_s must be a number of seconds"),
        (np.ones(5), {"window_s": "0.1"}, TypeError, r"window_s must be .* got '0\.1'"),
        (np.ones(5), {"window_s": (0.1,)}, TypeError, r"window_s must be"),
        (np.ones(5), {"edges": "nan"}, ValueError, r"edges must be one of 'zeros', 'exclude'"),
        (
            np.ones(5),
            {"edges": "exclude", "window_s": 0.3},
            ValueError,
            r"spans 7 samples, more than the signal's 5",
        ),
        (np.ones(5), {"split_every": 1}, ValueError, r"split_every must be an integer >= 2"),
        (np.float64(1.0), {}, ValueError, r"signal must have a time axis first"),
        (np.ones(0), {}, ValueError, r"at least one sample, got shape \(0,\)"),
        (np.array(["a"] * 5), {}, TypeError, r"signal must hold real numbers"),
        (np.ones(5), {"event_times": [np.nan]}, ValueError, r"event_times must be finite"),
        (np.ones(5), {"event_times": ["a"]}, TypeError, r"event_times must be numeric"),
        (np.ones(5), {"units": [0, 1]}, ValueError, r"event_times and units must have the same"),
        (np.ones(5), {"unit_ids": [1]}, ValueError, r"units holds 1 label\(s\) missing"),
    ],
)
def test_bad_input_raises_one_clear_error(
    signal: Any, kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    args: dict[str, Any] = {
        "event_times": [0.25],
        "units": None,
        "sampling_rate": 10.0,
        "window_s": 0.1,
        **kwargs,
    }
    with pytest.raises(error, match=match):
        blocked.event_triggered_average(signal, **args)


def test_without_units_all_events_are_unit_0() -> None:
    x = np.arange(10.0)
    result = blocked.event_triggered_average(
        x, [0.35, 0.55], sampling_rate=10.0, window_s=(0.0, 0.1)
    )
    assert result.unit_ids.tolist() == [0]
    np.testing.assert_array_equal(result.eta.compute(), [[4.0, 5.0]])
    with pytest.warns(EmptyUnitWarning, match=r"NaN: 0\.$"):
        empty = blocked.event_triggered_average(x, [], sampling_rate=10.0, window_s=0.1)
    assert empty.eta.shape == (1, 3)
    assert np.isnan(empty.eta.compute()).all()
