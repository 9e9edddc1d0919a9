"""Blocked trial windows: chunked equals whole, exactly, on threads and a real LocalCluster."""

from __future__ import annotations

import logging
from typing import Any

import dask.array as da
import numpy as np
import pytest
from dask.array.utils import assert_eq
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import raise_if_dask_computes
from neurobatch.engine import blocked
from neurobatch.kernels import trials as tk
from neurobatch.kernels import windows as wk
from strategies import chunkings


def _check(result: da.Array, expected: np.ndarray) -> None:
    """Equal exactly, on the active scheduler; then declared chunks/dtype via assert_eq."""
    assert result.dtype == expected.dtype
    np.testing.assert_array_equal(result.compute(), expected)
    assert_eq(result, expected, check_chunks=True, check_graph=False)


def _new_tasks(result: da.Array, source: da.Array) -> int:
    return len(dict(result.__dask_graph__())) - len(dict(source.__dask_graph__()))


# --- gather -----------------------------------------------------------------------------------


@st.composite
def gather_cases(draw: st.DrawFn, *, extra: int = 0) -> dict[str, Any]:
    """A signal, a chunking (size-1 and smaller-than-window chunks included) and windows.

    ``extra`` samples beyond ``length`` are read per window (1 for interpolation).
    """
    n = draw(st.integers(2 + extra, 80))  # chunkings(1) is invalid (integers(1, 0))
    chunks = draw(chunkings(n))
    length = draw(st.integers(1, n - extra))
    last = n - length - extra
    starts = draw(st.lists(st.integers(0, last), max_size=20))
    if draw(st.booleans()):  # windows touching both ends
        starts += [0, last]
    channels = draw(st.sampled_from([None, 1, 3]))
    shape = (n,) if channels is None else (n, channels)
    x = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).standard_normal(shape)
    other = () if channels is None else (draw(st.sampled_from([(channels,), (1,) * channels])),)
    starts_arr = np.sort(np.array(starts, dtype=np.int64))
    return {"x": x, "chunks": (chunks, *other), "starts": starts_arr, "length": length}


@given(case=gather_cases())
def test_gather_windows_equals_whole(scheduler: str, case: dict[str, Any]) -> None:
    x, starts, length = case["x"], case["starts"], case["length"]
    with raise_if_dask_computes():
        result = blocked.gather_windows(da.from_array(x, chunks=case["chunks"]), starts, length)
    _check(result, x[starts[:, None] + np.arange(length)])


@pytest.mark.slow_hypothesis
@settings(max_examples=300)
@given(case=gather_cases())
def test_gather_windows_equals_whole_slow(case: dict[str, Any]) -> None:
    x, starts, length = case["x"], case["starts"], case["length"]
    result = blocked.gather_windows(da.from_array(x, chunks=case["chunks"]), starts, length)
    _check(result, x[starts[:, None] + np.arange(length)])


@given(case=gather_cases(extra=1), data=st.data())
def test_interpolate_windows_equals_whole(
    scheduler: str, case: dict[str, Any], data: st.DataObject
) -> None:
    x, starts, length = case["x"], case["starts"], case["length"]
    fractions = np.array(
        data.draw(
            st.lists(st.floats(0, 1, exclude_max=True), min_size=starts.size, max_size=starts.size)
        )
    )
    with raise_if_dask_computes():
        result = blocked.interpolate_windows(
            da.from_array(x, chunks=case["chunks"]), starts, fractions, length
        )
    _check(result, wk.interpolate_windows(x, starts, fractions, length))


@pytest.mark.parametrize(
    ("chunks", "starts", "length"),
    [
        ((1,) * 12, [0, 1, 5, 9], 3),  # size-1 chunks
        ((12,), [0, 4, 9], 3),  # a single chunk
        ((2, 3, 1, 4, 2), [0, 0, 2, 7], 5),  # chunks shorter than the window, duplicates
        ((5, 7), [0, 5], 7),  # windows touching both ends
        ((4, 4, 4), [], 3),  # no windows
        ((4, 4, 4), [0], 12),  # one window, the whole signal
    ],
)
def test_gather_windows_cases(
    scheduler: str, chunks: tuple[int, ...], starts: list[int], length: int
) -> None:
    x = np.arange(12.0) ** 2
    s = np.array(starts, dtype=np.int64)
    _check(
        blocked.gather_windows(da.from_array(x, chunks=chunks), s, length),
        x[s[:, None] + np.arange(length)],
    )


def test_gather_windows_declares_one_chunk_per_source_block_in_window_order() -> None:
    x = da.from_array(np.arange(20), chunks=(5, 5, 5, 5))
    result = blocked.gather_windows(x, [1, 2, 3, 11, 12, 16], 4)
    assert result.chunks == ((3, 2, 1), (4,))
    assert result.dtype == x.dtype


def test_gather_windows_along_another_axis_keeps_the_other_chunks() -> None:
    x = np.random.default_rng(3).standard_normal((4, 50))
    chunked = da.from_array(x, chunks=((1, 3), (7, 20, 23)))
    result = blocked.gather_windows(chunked, [0, 6, 40], 10, axis=1)
    assert result.chunks == ((2, 1), (10,), (1, 3))
    expected = wk.gather_windows(x, [0, 6, 40], 10, axis=1)
    np.testing.assert_array_equal(result.compute(scheduler="sync"), expected)


def test_the_graph_has_one_task_per_block_not_per_window(caplog: Any) -> None:
    n_blocks, length = 100, 250  # windows span up to 3 blocks of 100
    x = da.from_array(np.arange(10_000.0), chunks=100)
    starts = np.sort(np.random.default_rng(0).integers(0, 10_000 - length, 1_000))
    with caplog.at_level(logging.DEBUG, logger="neurobatch.engine.blocked"):
        result = blocked.gather_windows(x, starts, length)
    assert _new_tasks(result, x) <= n_blocks
    assert len(result.chunks[0]) <= n_blocks
    assert "1000 windows of 250 samples" in caplog.text
    assert "reaching up to 3 block(s) ahead" in caplog.text
    np.testing.assert_array_equal(
        result.compute(scheduler="sync"), np.arange(10_000.0)[starts[:, None] + np.arange(length)]
    )
    # with a chunked channel axis: one task per (time block, channel block)
    x2 = da.zeros((10_000, 4), chunks=(100, 2))
    result2 = blocked.gather_windows(x2, starts, length)
    assert _new_tasks(result2, x2) <= 2 * n_blocks


def test_blocks_without_windows_make_no_task() -> None:
    x = da.from_array(np.arange(100.0), chunks=10)
    result = blocked.gather_windows(x, [3, 95], 5)
    assert result.chunks == ((1, 1), (5,))
    assert _new_tasks(result, x) == 2


@pytest.mark.parametrize(
    ("starts", "length", "kwargs", "error", "match"),
    [
        (
            [5, 2],
            3,
            {},
            ValueError,
            (
                r"starts must be sorted \(non-decreasing\), got "
                r"starts\[0\] = 5 before starts\[1\] = 2"
            ),
        ),
        (
            [0, 18],
            3,
            {},
            ValueError,
            (
                r"starts must lie in \[0, 17\] for windows of 3 samples "
                r"in 20, got 18"
            ),
        ),
        ([0], 0, {}, ValueError, r"length must be a positive integer"),
        ([1.5], 3, {}, TypeError, r"starts must hold integers"),
        ([0], 3, {"axis": 1}, ValueError, r"axis must be in \[-1, 1\) for a 1-D signal, got 1"),
    ],
)
def test_gather_windows_validation(
    starts: list[Any], length: int, kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    x = da.zeros(20, chunks=5)
    with pytest.raises(error, match=match):
        blocked.gather_windows(x, starts, length, **kwargs)


def test_interpolate_windows_validation() -> None:
    x = da.zeros(20, chunks=5)
    with pytest.raises(ValueError, match=r"starts must lie in \[0, 16\] for windows of 4"):
        blocked.interpolate_windows(x, [17], [0.0], 3)  # reads length + 1 samples
    with pytest.raises(
        ValueError,
        match=r"fractions must have shape \(2,\) like starts, "
        r"got \(1,\)",
    ):
        blocked.interpolate_windows(x, [0, 1], [0.0], 3)


# --- whole trials: plan, gather, normalise ----------------------------------------------------


@st.composite
def trial_cases(draw: st.DrawFn) -> dict[str, Any]:
    fs = 10.0
    n = draw(st.integers(60, 160))
    time = np.arange(n) / fs
    t_end = float(time[-1])
    cues = draw(st.lists(st.floats(0.0, t_end), min_size=1, max_size=8))
    levers = draw(st.lists(st.floats(0.0, t_end), max_size=8))
    channels = draw(st.sampled_from([None, 2]))
    shape = (n,) if channels is None else (n, channels)
    x = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).standard_normal(shape)
    if draw(st.booleans()):
        x = x.astype(np.float32)
    other = () if channels is None else (draw(st.sampled_from([(2,), (1, 1)])),)
    options: dict[str, Any] = {
        "align_to": "cue",
        "bounds_s": (draw(st.floats(-2.0, -0.1)), draw(st.floats(0.1, 2.5))),
        "center_on": draw(st.sampled_from([(), ("lever",)])),
        "tolerances_s": {"lever": (-1.0, 1.5)},
        "baseline_bounds_s": (draw(st.floats(-1.5, -0.3)), draw(st.floats(-0.2, 0.5))),
        "normalization": draw(st.sampled_from(["none", "zscore", "zero", "mad", "amp"])),
        "window_alignment": draw(st.sampled_from(["nearest", "interp"])),
        "check_overlap": False,
    }
    try:
        plan = tk.plan_trials(time, {"cue": cues, "lever": levers}, **options)
    except ValueError as e:
        assert "no trials remain" in str(e)
        plan = tk.plan_trials(time, {"cue": [t_end / 2], "lever": []}, **options)
    return {"x": x, "chunks": (draw(chunkings(n)), *other), "plan": plan}


@given(case=trial_cases())
def test_extract_trials_equals_whole(scheduler: str, case: dict[str, Any]) -> None:
    x, plan = case["x"], case["plan"]
    with raise_if_dask_computes():
        result = blocked.extract_trials(da.from_array(x, chunks=case["chunks"]), plan)
    _check(result, wk.extract_trials(x, plan))


@pytest.mark.slow_hypothesis
@settings(max_examples=300)
@given(case=trial_cases())
def test_extract_trials_equals_whole_slow(case: dict[str, Any]) -> None:
    x, plan = case["x"], case["plan"]
    result = blocked.extract_trials(da.from_array(x, chunks=case["chunks"]), plan)
    _check(result, wk.extract_trials(x, plan))


@pytest.mark.parametrize("window_alignment", ["nearest", "interp"])
def test_extract_trials_keeps_trial_order_when_centring_reorders_windows(
    scheduler: str, window_alignment: tk.WindowAlignment
) -> None:
    time = np.arange(300) / 10.0
    # trial 1 (cue 2.0) re-centres on the lever at 12.0; trial 2 (cue 5.0) finds none
    plan = tk.plan_trials(
        time,
        {"cue": [2.0, 5.0], "lever": [12.0]},
        align_to="cue",
        center_on="lever",
        tolerances_s={"lever": (9.5, 10.5)},
        bounds_s=(-1.0, 1.0),
        baseline_bounds_s=(-1.0, 0.0),
        normalization="zscore",
        window_alignment=window_alignment,
    )
    assert plan.windows.starts[0] > plan.windows.starts[1]
    x = np.random.default_rng(5).standard_normal(300)
    _check(blocked.extract_trials(da.from_array(x, chunks=7), plan), wk.extract_trials(x, plan))


def test_extract_trials_matches_the_whole_array_convenience() -> None:
    time = np.arange(2_000) / 100.0
    x = np.sin(time) + 0.01 * time
    events = {"cue": [2.0, 5.5, 11.25, 17.0], "lever": [2.5, 12.0]}
    opts: dict[str, Any] = {
        "align_to": "cue",
        "center_on": "lever",
        "bounds_s": (-1.0, 2.0),
        "tolerances_s": {"lever": (0.0, 1.0)},
        "baseline_bounds_s": (-1.0, 0.0),
        "normalization": "mad",
    }
    whole = wk.trials(x, time, events, **opts)
    chunked = blocked.extract_trials(da.from_array(x, chunks=37), whole.plan)
    np.testing.assert_array_equal(chunked.compute(scheduler="sync"), whole.data)


def test_extract_trials_checks_the_length_against_the_plan() -> None:
    plan = tk.plan_trials(np.arange(100) / 10.0, {"cue": [5.0]}, align_to="cue", bounds_s=(-1, 1))
    with pytest.raises(
        ValueError,
        match=r"x must have plan.n_time = 100 samples along axis 0 "
        r"\(the time axis the plan was made from\), got 90",
    ):
        blocked.extract_trials(da.zeros(90, chunks=10), plan)
