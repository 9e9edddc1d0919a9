"""Trial planning: events, centring, dropped trials and the table, and validation."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from neurobatch.kernels import trials as tk
from neurobatch.kernels import windows as wk

# --- the semantics, one by one ----------------------------------------------------------------


def test_alignment_column_reports_the_trials_own_alignment_event() -> None:
    # cues 1 s apart, bounds +-3 s: PhoPro's cue column says -1.0 for trials 2 and 3 (the
    # previous cue); the trial's own cue is at offset 0, or -0.5 when a lever re-centres it
    time = np.arange(200) / 10.0
    result = wk.trials(
        np.zeros(200),
        time,
        {"cue": [5.0, 6.0, 7.0], "lever": [6.5]},
        align_to="cue",
        center_on="lever",
        tolerances_s={"lever": (0.0, 0.9)},
        bounds_s=(-3.0, 3.0),
    )
    np.testing.assert_array_equal(result.table["cue"], [0.0, -0.5, 0.0])
    np.testing.assert_array_equal(result.table["lever"], [np.nan, 0.0, np.nan])


def test_alignment_event_comes_first_with_all_then_its_other_occurrences() -> None:
    time = np.arange(200) / 10.0
    plan = tk.plan_trials(
        time,
        {"cue": [5.0, 6.0, 7.0]},
        align_to="cue",
        bounds_s=(-1.5, 1.5),
        event_conflict="all",
    )
    table = plan.table()
    assert list(table) == [
        "trial_num",
        "start_time",
        "stop_time",
        "cue",
        "cue_occurrence_2",
        "cue_occurrence_3",
    ]
    np.testing.assert_array_equal(table["cue"], [0.0, 0.0, 0.0])
    np.testing.assert_allclose(table["cue_occurrence_2"], [1.0, -1.0, -1.0])
    np.testing.assert_allclose(table["cue_occurrence_3"], [np.nan, 1.0, np.nan])


def test_pooled_alignment_adds_alignments_and_align_event_columns() -> None:
    time = np.arange(200) / 10.0
    table = tk.plan_trials(
        time,
        {"cue": [5.0, 9.0], "tone": [7.0]},
        align_to=["cue", "tone"],
        bounds_s=(-1.0, 1.0),
        all_events=False,
    ).table()
    assert list(table) == ["trial_num", "start_time", "stop_time", "ALIGNMENTS", "align_event"]
    assert table["align_event"].tolist() == ["cue", "tone", "cue"]
    np.testing.assert_array_equal(table["start_time"], [4.0, 6.0, 8.0])


def test_check_overlap_drops_only_the_conflicting_trial_and_says_which() -> None:
    time = np.arange(300) / 10.0
    events = {"cue": [5.0, 10.0, 15.0], "l1": [5.5, 10.5], "l2": [10.7, 20.0]}
    opts: dict[str, Any] = {
        "align_to": "cue",
        "center_on": ["l1", "l2"],
        "bounds_s": (-1.0, 2.0),
        "tolerances_s": {"l1": (0.0, 1.0), "l2": (0.0, 1.0)},
    }
    plan = tk.plan_trials(time, events, **opts)
    np.testing.assert_array_equal(plan.overlap, [False, True, False])
    np.testing.assert_array_equal(plan.keep, [True, False, True])
    assert list(plan.dropped) == [2]
    assert plan.dropped[2] == (
        "trial candidate 2 (cue at 10 s): center_on events found at l1=10.5 s, l2=10.7 s; dropped"
    )
    table = plan.table()
    np.testing.assert_array_equal(table["trial_num"], [1, 2])
    np.testing.assert_allclose(table["start_time"], [4.5, 14.0])
    # without check_overlap the later centring event wins
    plan = tk.plan_trials(time, events, check_overlap=False, **opts)
    np.testing.assert_allclose(plan.centers, [5.5, 10.7, 15.0])
    assert not plan.dropped


def test_a_centring_alignment_event_counts_as_found_at_the_trial_itself() -> None:
    time = np.arange(300) / 10.0
    plan = tk.plan_trials(
        time,
        {"cue": [5.0, 6.0], "lever": [6.4]},
        align_to="cue",
        center_on=["cue", "lever"],
        bounds_s=(-1.0, 1.0),
        tolerances_s={"lever": (0.0, 0.5)},
        check_overlap=False,
    )
    # trial 1 finds the next cue within its bounds but keeps its own; trial 2 moves to lever
    np.testing.assert_allclose(plan.centers, [5.0, 6.4])


def test_events_are_clipped_to_the_recording() -> None:
    time = np.arange(100) / 10.0  # 0 .. 9.9 s
    table = tk.plan_trials(
        time,
        {"cue": [1.0], "lever": [-0.3, 0.5]},
        align_to="cue",
        bounds_s=(-1.0, 1.0),
        tolerances_s={"lever": (-2.0, 0.0)},
    ).table()
    np.testing.assert_allclose(table["lever"], [-0.5])  # -0.3 s is before the recording


def test_invalid_windows_are_dropped_or_raise() -> None:
    time = np.arange(100) / 10.0
    events = {"cue": [0.5, 5.0, 9.5]}
    plan = tk.plan_trials(time, events, align_to="cue", bounds_s=(-1.0, 1.0))
    np.testing.assert_array_equal(plan.invalid_window, [True, False, True])
    assert plan.n_trials == 1
    assert "its window runs past the recording [0, 9.9] s" in plan.dropped[1]
    with pytest.raises(
        ValueError,
        match=r"2 trial\(s\) have windows past the recording: "
        r"trial candidate 1 \(cue at 0.5 s\).*candidate 3",
    ):
        tk.plan_trials(
            time, events, align_to="cue", bounds_s=(-1.0, 1.0), invalid_window_policy="error"
        )


def test_windows_touching_both_ends_are_valid() -> None:
    time = np.arange(100) / 10.0
    result = wk.trials(
        np.arange(100.0), time, {"cue": [1.0, 8.9]}, align_to="cue", bounds_s=(-1.0, 1.0)
    )
    assert result.plan.n_trials == 2
    np.testing.assert_array_equal(result.data[0], np.arange(0.0, 20.0))
    np.testing.assert_array_equal(result.data[1], np.arange(79.0, 99.0))
    with pytest.raises(ValueError, match="no trials remain"):
        tk.plan_trials(time, {"cue": [0.95]}, align_to="cue", bounds_s=(-1.0, 1.0))


def test_a_baseline_past_the_recording_drops_the_trial_even_without_normalization() -> None:
    time = np.arange(100) / 10.0
    plan = tk.plan_trials(
        time,
        {"cue": [0.5, 5.0]},
        align_to="cue",
        bounds_s=(0.0, 1.0),
        baseline_bounds_s=(-1.0, 0.0),
    )
    assert plan.n_trials == 1
    assert "its baseline window runs past" in plan.dropped[1]


def test_the_plan_is_read_only() -> None:
    plan = tk.plan_trials(np.arange(100) / 10.0, {"cue": [5.0]}, align_to="cue", bounds_s=(-1, 1))
    with pytest.raises(ValueError, match="read-only"):
        plan.windows.starts[0] = 3
    with pytest.raises(TypeError):
        plan.event_offsets["cue"] = np.zeros(1)  # type: ignore[index]


# --- validation -------------------------------------------------------------------------------


TIME = np.arange(100) / 10.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"events": {}}, r"events must be a non-empty mapping"),
        (
            {"align_to": "tone"},
            (
                r"align_to names unknown event\(s\) \['tone'\]; available "
                r"events: \['cue', 'lever'\]"
            ),
        ),
        (
            {"events": {"cue": [], "lever": [1.0]}},
            (
                r"align_to event\(s\) \['cue'\] never occur; occurrences per available event: "
                r"\{'cue': 0, 'lever': 1\}"
            ),
        ),
        ({"align_to": []}, r"align_to must name at least one event"),
        ({"center_on": ["lever", "press"]}, r"center_on names unknown event\(s\) \['press'\]"),
        (
            {"tolerances_s": {"press": (0, 1)}},
            (
                r"tolerances_s names unknown event\(s\) "
                r"\['press'\]; available events"
            ),
        ),
        (
            {"tolerances_s": {"lever": (1, 0)}},
            (
                r"tolerances_s\['lever'\] must be finite with "
                r"lo <= hi, got \(1.0, 0.0\)"
            ),
        ),
        ({"bounds_s": (1.0, 1.0)}, r"bounds_s must be finite with lo < hi, got \(1.0, 1.0\)"),
        ({"bounds_s": (2.0, -1.0)}, r"bounds_s must be finite with lo < hi"),
        ({"bounds_s": (0.0, 0.01)}, r"bounds_s \(0.0, 0.01\) is shorter than one sample"),
        ({"bounds_s": (-1.0,)}, r"bounds_s must be a pair \(lo, hi\)"),
        (
            {"baseline_bounds_s": (0.0, -1.0), "normalization": "zscore"},
            r"baseline_bounds_s must be finite with lo < hi",
        ),
        ({"normalization": "zscore"}, r"normalization 'zscore' needs baseline_bounds_s"),
        (
            {"normalization": "z"},
            (
                r"normalization must be one of 'none', 'zscore', 'zero', "
                r"'mad', 'amp'; got 'z'"
            ),
        ),
        ({"window_alignment": "linear"}, r"window_alignment must be one of"),
        ({"event_conflict": "any"}, r"event_conflict must be one of"),
        ({"invalid_window_policy": "skip"}, r"invalid_window_policy must be one of"),
        ({"fs": 0.0}, r"fs must be a positive, finite sampling rate in Hz, got 0.0"),
        ({"fs": -10.0}, r"fs must be a positive"),
        ({"fs": 20.0}, r"fs is 20.0 Hz but the time axis is sampled at 10.0"),
        ({"time": TIME[::-1]}, r"time must be strictly increasing, got time\[0\] = 9.9"),
        ({"time": np.r_[TIME[:-1], np.nan]}, r"time must be finite, got 1 NaN"),
        ({"time": [1.0]}, r"time must be 1-D with at least 2 samples"),
        ({"events": {"cue": [np.inf]}}, r"events\['cue'\] must be finite"),
        ({"events": {"cue": [1.0], "trial_num": [2.0]}}, r"event name 'trial_num' is reserved"),
    ],
)
def test_plan_validation(kwargs: dict[str, Any], match: str) -> None:
    args: dict[str, Any] = {
        "time": TIME,
        "events": {"cue": [5.0], "lever": [5.5]},
        "align_to": "cue",
        "bounds_s": (-1.0, 1.0),
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        tk.plan_trials(args.pop("time"), args.pop("events"), **args)
