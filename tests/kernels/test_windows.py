"""Trial windows: the kernels against a plain-Python reference, PhoPro, and their edge
cases."""

from __future__ import annotations

import importlib.util
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, event, given, settings
from hypothesis import strategies as st

from neurobatch.kernels import grids as gk
from neurobatch.kernels import trials as tk
from neurobatch.kernels import windows as wk

# --- an independent reference: one trial at a time, in plain Python -------------------------


def _snap(value: float, t: list[float]) -> int:
    """Index of the nearest sample, ties to the earlier (scan all samples)."""
    best = 0
    for i in range(1, len(t)):
        if abs(t[i] - value) < abs(t[best] - value):
            best = i
    return best


def _interp(x: list[float], t: list[float], value: float) -> float:
    j = max(i for i in range(len(t)) if t[i] <= value)
    if j == len(t) - 1:
        return x[j]
    return x[j] + (value - t[j]) / (t[j + 1] - t[j]) * (x[j + 1] - x[j])


def _window(
    x: list[float], t: list[float], fs: float, centre: float, bounds: tuple[float, float], how: str
) -> tuple[list[float] | None, float, list[float]]:
    """(values or None when invalid, window centre, relative grid) of one window."""
    lo, hi = bounds
    n = round((hi - lo) * fs)
    if how == "nearest":
        ci = _snap(centre, t)
        first = round(lo * fs)
        start = ci + first
        grid = [(first + k) / fs for k in range(n)]
        if start < 0 or start + n > len(t):
            return None, t[ci], grid
        return [x[start + k] for k in range(n)], t[ci], grid
    grid = [lo + k / fs for k in range(n)]
    if centre + lo < t[0] or centre + hi > t[-1]:
        return None, centre, grid
    return [_interp(x, t, centre + g) for g in grid], centre, grid


def _normalise(values: list[float], base: list[float] | None, method: str) -> list[float]:
    if method == "none" or base is None:
        return values
    if method == "mad":
        med = statistics.median(base)
        scale = 1.4826 * statistics.median([abs(b - med) for b in base])
        return [(v - med) / scale if scale else math.copysign(math.inf, v - med) for v in values]
    mean = sum(base) / len(base)
    if method == "zero":
        return [v - mean for v in values]
    if method == "amp":
        peak = max(abs(v - mean) for v in values)
        return [(v - mean) / peak for v in values]
    std = math.sqrt(sum((b - mean) ** 2 for b in base) / len(base)) or np.finfo(float).eps
    return [(v - mean) / std for v in values]


def reference_trials(
    signal: Sequence[float],
    time: Sequence[float],
    events: Mapping[str, Sequence[float]],
    *,
    align_to: str | list[str],
    bounds_s: tuple[float, float],
    center_on: list[str] | tuple[str, ...] = (),
    baseline_bounds_s: tuple[float, float] | None = None,
    tolerances_s: Mapping[str, tuple[float, float] | None] | None = None,
    normalization: str = "none",
    check_overlap: bool = True,
    all_events: bool = True,
    window_alignment: str = "nearest",
    event_conflict: str = "first",
) -> tuple[list[list[float]], dict[str, list[Any]]] | None:
    """PHOTOMETRY.md "Trials", trial by trial; None when no trial remains."""
    x, t = [float(v) for v in signal], [float(v) for v in time]
    fs = (len(t) - 1) / (t[-1] - t[0])
    names = [align_to] if isinstance(align_to, str) else list(align_to)
    ev = {k: sorted(float(v) for v in vals) for k, vals in events.items()}
    tol: dict[str, tuple[float, float]] = {
        k: bounds_s if v is None else v for k, v in (tolerances_s or {}).items()
    }
    for name in ev if all_events else center_on:
        tol.setdefault(name, bounds_s)
    cands = sorted(
        ((a, names.index(n), n, i) for n in names for i, a in enumerate(ev[n])),
        key=lambda c: (c[0], c[1], c[3]),
    )

    # annotate every candidate (column widths come from all of them, kept or not)
    found_all: list[dict[str, list[float]]] = []
    for a, _, own_name, own_i in cands:
        found: dict[str, list[float]] = {}
        for name, (lo, hi) in tol.items():
            left, right = max(a + lo, t[0]), min(a + hi, t[-1])
            occ = [i for i, e in enumerate(ev[name]) if left <= e <= right]
            times = [ev[name][i] for i in occ]
            if name == own_name:
                others = [ev[name][i] for i in occ if i != own_i]
                found[name] = [a, *others] if event_conflict == "all" else [a]
            elif not times:
                found[name] = [math.nan]
            elif event_conflict == "first":
                found[name] = [times[0]]
            elif event_conflict == "last":
                found[name] = [times[-1]]
            elif event_conflict == "mean":
                # PhoPro's arithmetic: differences of running sums over all occurrences
                # (a few ulps off sum(times) / len(times), which can flip a snapping tie)
                running = [0.0]
                for e in ev[name]:
                    running.append(running[-1] + e)
                found[name] = [(running[occ[-1] + 1] - running[occ[0]]) / len(occ)]
            else:
                found[name] = times
        found_all.append(found)
    width = {name: max(1, *(len(f[name]) for f in found_all)) for name in tol}

    label = names[0] if len(names) == 1 else "ALIGNMENTS"
    rows: list[list[float]] = []
    table: dict[str, list[Any]] = {"trial_num": [], "start_time": [], "stop_time": []}
    for (a, _, own_name, _), found in zip(cands, found_all, strict=True):
        centre, n_found = a, 0
        for name in center_on:
            if not math.isnan(found[name][0]):
                centre, n_found = found[name][0], n_found + 1
        if check_overlap and n_found > 1:
            continue
        values, wc, grid = _window(x, t, fs, centre, bounds_s, window_alignment)
        base = None
        if baseline_bounds_s is not None:
            base, _, _ = _window(x, t, fs, a, baseline_bounds_s, window_alignment)
            if base is None:
                continue
        if values is None:
            continue

        def offset(e: float, wc: float = wc) -> float:
            if math.isnan(e):
                return math.nan
            return (t[_snap(e, t)] if window_alignment == "nearest" else e) - wc

        rows.append(_normalise(values, base, normalization))
        table["trial_num"].append(len(rows))
        table["start_time"].append(wc + grid[0])
        table["stop_time"].append(wc + grid[-1])
        cols = {label: offset(a)}
        for name in tol:
            padded = found[name] + [math.nan] * (width[name] - len(found[name]))
            cols[name] = offset(padded[0])
            for k in range(1, width[name]):
                cols[f"{name}_occurrence_{k + 1}"] = offset(padded[k])
        for column, v in cols.items():
            table.setdefault(column, []).append(v)
        if label == "ALIGNMENTS":
            table.setdefault("align_event", []).append(own_name)
    return (rows, table) if rows else None


# --- hypothesis: random recordings and options ----------------------------------------------


EVENT_NAMES = ("cue", "tone", "lever1", "lever2")


@st.composite
def recordings(draw: st.DrawFn) -> dict[str, Any]:
    fs = draw(st.sampled_from([10.0, 20.0, 7.5]))
    n = draw(st.integers(30, 120))
    t0 = draw(st.sampled_from([0.0, 3.7]))
    time = t0 + np.arange(n) / fs
    t_end = float(time[-1])

    def times(max_size: int) -> st.SearchStrategy[list[float]]:
        anywhere = st.floats(t0 - 1.0, t_end + 1.0, allow_nan=False)
        on_grid = st.sampled_from(time.tolist())  # exact samples: window edges
        between = st.sampled_from(((time[:-1] + time[1:]) / 2).tolist())  # snapping ties
        return st.lists(st.one_of(anywhere, on_grid, between), max_size=max_size)

    events = {
        "cue": draw(times(6).filter(lambda v: any(t0 <= e <= t_end for e in v))),
        "tone": draw(times(4)),
        "lever1": draw(times(5)),
        "lever2": draw(times(5)),
    }
    signal = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).standard_normal(n)
    return {"signal": signal, "time": time, "events": events}


def _bounds(lo: tuple[float, float], hi: tuple[float, float]) -> st.SearchStrategy[Any]:
    return st.tuples(st.floats(*lo), st.floats(*hi))


@st.composite
def options(draw: st.DrawFn) -> dict[str, Any]:
    normalization = draw(st.sampled_from(["none", "zscore", "zero", "mad", "amp"]))
    baseline = draw(_bounds((-2.0, -0.5), (-0.3, 0.5))) if normalization != "none" else None
    tolerances = draw(
        st.dictionaries(
            st.sampled_from(["lever1", "lever2", "tone"]),
            st.one_of(st.none(), _bounds((-1.0, 0.5), (0.5, 2.5))),
            max_size=3,
        )
    )
    return {
        "align_to": draw(st.sampled_from(["cue", ["cue", "tone"]])),
        "bounds_s": draw(_bounds((-2.5, -0.2), (0.2, 2.5))),
        "center_on": draw(st.sampled_from([(), ("lever1",), ("lever1", "lever2"), ("cue",)])),
        "baseline_bounds_s": baseline,
        "tolerances_s": tolerances,
        "normalization": normalization,
        "check_overlap": draw(st.booleans()),
        "all_events": draw(st.booleans()),
        "window_alignment": draw(st.sampled_from(["nearest", "interp"])),
        "event_conflict": draw(st.sampled_from(["first", "last", "all", "mean"])),
    }


def _check_against_reference(rec: dict[str, Any], opts: dict[str, Any]) -> None:
    expected = reference_trials(rec["signal"], rec["time"], rec["events"], **opts)
    if expected is None:
        with pytest.raises(ValueError, match="no trials remain"):
            wk.trials(rec["signal"], rec["time"], rec["events"], **opts)
        return
    rows, table = expected
    result = wk.trials(rec["signal"], rec["time"], rec["events"], **opts)
    assert list(result.table) == list(table)
    for name, column in table.items():
        got = result.table[name]
        if name == "align_event":
            assert got.tolist() == column
        elif opts["event_conflict"] == "mean" or opts["window_alignment"] == "interp":
            np.testing.assert_allclose(got, column, rtol=0, atol=1e-9, err_msg=name)
        else:  # snapped sample times: exact
            np.testing.assert_array_equal(got, np.array(column, dtype=got.dtype), err_msg=name)
    exact = opts["window_alignment"] == "nearest" and opts["normalization"] == "none"
    if exact:
        np.testing.assert_array_equal(result.data, np.array(rows))
    else:
        np.testing.assert_allclose(result.data, np.array(rows), rtol=1e-9, atol=1e-9)
    assert result.data.shape == (len(rows), result.rel_time.size)


@given(rec=recordings(), opts=options())
def test_trials_match_plain_python_reference(rec: dict[str, Any], opts: dict[str, Any]) -> None:
    _check_against_reference(rec, opts)


@pytest.mark.slow_hypothesis
@settings(max_examples=400)
@given(rec=recordings(), opts=options())
def test_trials_match_plain_python_reference_slow(
    rec: dict[str, Any], opts: dict[str, Any]
) -> None:
    _check_against_reference(rec, opts)


@pytest.mark.parametrize("window_alignment", ["nearest", "interp"])
@pytest.mark.parametrize("normalization", ["none", "zscore", "zero", "mad", "amp"])
@pytest.mark.parametrize("event_conflict", ["first", "last", "all", "mean"])
def test_trials_match_reference_on_a_fixed_recording(
    window_alignment: str, normalization: str, event_conflict: str
) -> None:
    fs = 20.0
    time = 1.0 + np.arange(400) / fs
    rec = {
        "signal": np.sin(time * 1.3) + 0.1 * np.cos(time * 7.0),
        "time": time,
        "events": {
            "cue": [3.0, 4.2, 9.0, 12.31, 19.5],
            "tone": [6.02, 15.0],
            "lever1": [3.5, 3.9, 9.4, 13.0, 16.1],
            "lever2": [4.6, 9.45, 17.0],
        },
    }
    opts = {
        "align_to": ["cue", "tone"],
        "bounds_s": (-1.5, 2.0),
        "center_on": ("lever1", "lever2"),
        "baseline_bounds_s": (-1.0, 0.0),
        "tolerances_s": {"lever1": (0.0, 1.0), "lever2": (0.0, 1.0)},
        "normalization": normalization,
        "check_overlap": True,
        "all_events": True,
        "window_alignment": window_alignment,
        "event_conflict": event_conflict,
    }
    _check_against_reference(rec, opts)


# --- the semantics, one by one ----------------------------------------------------------------


def test_flat_baselines_give_inf_or_nan_without_warnings() -> None:
    time = np.arange(100) / 10.0
    signal = np.r_[np.zeros(50), np.arange(50.0)]
    common: dict[str, Any] = {
        "align_to": "cue",
        "bounds_s": (-0.5, 0.5),
        "baseline_bounds_s": (-0.5, 0.0),
    }
    mad = wk.trials(signal, time, {"cue": [2.0, 7.0]}, normalization="mad", **common)
    assert np.isnan(mad.data[0]).all()  # 0 / 0
    zscore = wk.trials(signal, time, {"cue": [2.0]}, normalization="zscore", **common)
    np.testing.assert_array_equal(zscore.data, 0.0)  # zero std becomes eps, as in PhoPro
    amp = wk.trials(signal, time, {"cue": [2.0]}, normalization="amp", **common)
    assert np.isnan(amp.data).all()


def test_normalisations_by_hand() -> None:
    windows = np.array([[1.0, 2.0, 4.0]])
    baseline = np.array([[0.0, 1.0, 2.0, 7.0]])
    mean, std = 2.5, np.std([0.0, 1.0, 2.0, 7.0])
    np.testing.assert_allclose(wk.normalize_windows(windows, baseline, "zero"), windows - mean)
    np.testing.assert_allclose(
        wk.normalize_windows(windows, baseline, "zscore"), (windows - mean) / std
    )
    np.testing.assert_allclose(
        wk.normalize_windows(windows, baseline, "mad"), (windows - 1.5) / (1.4826 * 1.0)
    )
    np.testing.assert_allclose(
        wk.normalize_windows(windows, baseline, "amp"), (windows - mean) / 1.5
    )
    np.testing.assert_array_equal(wk.normalize_windows(windows, baseline, "none"), windows)


def test_several_channels_along_any_axis_match_each_channel() -> None:
    time = np.arange(300) / 20.0
    rng = np.random.default_rng(1)
    signal = rng.standard_normal((3, 300))
    opts: dict[str, Any] = {
        "align_to": "cue",
        "bounds_s": (-1.0, 1.5),
        "baseline_bounds_s": (-1.0, 0.0),
        "normalization": "zscore",
        "window_alignment": "interp",
    }
    events = {"cue": [2.0, 5.33, 9.1]}
    both = wk.trials(signal, time, events, axis=1, **opts)
    assert both.data.shape == (3, 50, 3)
    for c in range(3):
        one = wk.trials(signal[c], time, events, **opts)
        np.testing.assert_array_equal(both.data[:, :, c], one.data)


def test_gather_and_interpolate_by_hand() -> None:
    x = np.arange(10.0) ** 2
    np.testing.assert_array_equal(wk.gather_windows(x, [0, 7], 3), [[0, 1, 4], [49, 64, 81]])
    np.testing.assert_allclose(
        wk.interpolate_windows(x, [2, 6], [0.5, 0.0], 3),
        [[6.5, 12.5, 20.5], [36.0, 49.0, 64.0]],
    )
    assert wk.gather_windows(x, np.array([], dtype=np.int64), 4).shape == (0, 4)


# --- validation -------------------------------------------------------------------------------


TIME = np.arange(100) / 10.0


@pytest.mark.parametrize(
    ("signal", "match"),
    [
        (
            np.r_[np.zeros(99), np.nan],
            (
                r"signal must be finite, got 1 NaN and 0 infinite "
                r"value\(s\) \(first at index 99\)"
            ),
        ),
        (np.r_[np.zeros(99), np.inf], r"signal must be finite, got 0 NaN and 1 infinite"),
        (np.zeros(90), r"signal and time must have the same length along axis 0, got 90 and 100"),
    ],
)
def test_signal_validation(signal: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        wk.trials(signal, TIME, {"cue": [5.0]}, align_to="cue", bounds_s=(-1.0, 1.0))


def test_extract_checks_the_signal_against_the_plan() -> None:
    plan = tk.plan_trials(TIME, {"cue": [5.0]}, align_to="cue", bounds_s=(-1.0, 1.0))
    with pytest.raises(
        ValueError,
        match=r"signal must have plan.n_time = 100 samples along "
        r"axis 0 .* got 80",
    ):
        wk.extract_trials(np.zeros(80), plan)
    with pytest.raises(ValueError, match=r"axis must be in \[-1, 1\) for a 1-D signal, got 1"):
        wk.extract_trials(np.zeros(100), plan, axis=1)


@pytest.mark.parametrize(
    ("starts", "length", "error", "match"),
    [
        (
            [0, 8],
            3,
            ValueError,
            (
                r"starts must lie in \[0, 7\] for windows of 3 samples in 10, "
                r"got 8"
            ),
        ),
        ([-1], 3, ValueError, r"starts must lie in \[0, 7\].*got -1"),
        ([0], 0, ValueError, r"length must be a positive integer, got 0"),
        ([[0]], 2, ValueError, r"starts must be 1-D, got shape \(1, 1\)"),
        ([0.5], 2, TypeError, r"starts must hold integers, got dtype float64"),
    ],
)
def test_gather_validation(starts: Any, length: int, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        wk.gather_windows(np.zeros(10), starts, length)


def test_validate_starts_can_require_sorted() -> None:
    wk.validate_starts([3, 1], 2, 10)
    with pytest.raises(
        ValueError,
        match=r"starts must be sorted \(non-decreasing\), got "
        r"starts\[0\] = 3 before starts\[1\] = 1",
    ):
        wk.validate_starts([3, 1], 2, 10, require_sorted=True)


# --- PhoPro's own array functions -------------------------------------------------------------


def _load_phopro_module(name: str) -> ModuleType:
    """Load one of PhoPro's plain-NumPy modules by path (its package import takes ~20 s)."""
    spec = importlib.util.find_spec("PhoPro")
    if spec is None or spec.submodule_search_locations is None:
        raise ImportError("PhoPro (the parity reference) is missing: install the 'test' extra")
    path = Path(next(iter(spec.submodule_search_locations))) / "utils" / f"{name}.py"
    mod_spec = importlib.util.spec_from_file_location(f"_phopro_{name}", path)
    assert mod_spec is not None and mod_spec.loader is not None
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def phopro_window() -> ModuleType:
    return _load_phopro_module("window")


@pytest.fixture(scope="module")
def phopro_operations() -> ModuleType:
    return _load_phopro_module("operations")


@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(40, 200),
    fs=st.sampled_from([10.0, 20.0, 33.0]),
    bounds=_bounds((-2.0, -0.1), (0.1, 2.0)),
    n_centers=st.integers(1, 8),
)
def test_windows_match_phopro(
    phopro_window: ModuleType,
    seed: int,
    n: int,
    fs: float,
    bounds: tuple[float, float],
    n_centers: int,
) -> None:
    rng = np.random.default_rng(seed)
    time = 2.0 + np.arange(n) / fs
    signal = rng.standard_normal(n)
    centers = np.sort(rng.uniform(time[0] - 1.0, time[-1] + 1.0, n_centers))
    lever = np.where(rng.random(n_centers) < 0.3, np.nan, centers + rng.uniform(-1, 1, n_centers))
    rate = gk.estimate_fs(time)

    # nearest
    theirs = phopro_window.create_windows_nearest_1D(
        signal, time, {"lever": lever.copy()}, centers, bounds, rate
    )
    center_index, starts, invalid = gk.nearest_windows(centers, time, bounds, rate)
    _, rel_time = gk.nearest_grid(bounds, rate)
    np.testing.assert_array_equal(rel_time, theirs.time_grid)
    np.testing.assert_array_equal(time[center_index], theirs.centers)
    # PhoPro tests validity on times (centre + grid vs the ends), we on indices: they agree
    # except for a window exactly touching an end, where float rounding can flag PhoPro's
    touching = (starts == 0) | (starts + rel_time.size == n)
    np.testing.assert_array_equal(invalid[~touching], theirs.invalid_mask[~touching])
    assert not invalid[touching].any()
    ok = ~invalid & ~theirs.invalid_mask
    np.testing.assert_array_equal(
        wk.gather_windows(signal, starts[ok], rel_time.size), theirs.signals[ok]
    )
    present = ~np.isnan(lever)
    ours = np.full(n_centers, np.nan)
    ours[present] = time[gk.snap_to_samples(lever[present], time)]
    np.testing.assert_array_equal(ours - time[center_index], theirs.events["lever"])

    # interp
    theirs = phopro_window.create_windows_interp_1D(
        signal, time, {"lever": lever.copy()}, centers, bounds, rate
    )
    starts, fractions, invalid = gk.interp_windows(centers, time, bounds, rate)
    np.testing.assert_array_equal(gk.interp_grid(bounds, rate), theirs.time_grid)
    np.testing.assert_array_equal(invalid, theirs.invalid_mask)
    values = wk.interpolate_windows(
        signal, starts[~invalid], fractions[~invalid], theirs.time_grid.size
    )
    np.testing.assert_allclose(values, theirs.signals[~invalid], rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("method", "function"),
    [
        ("zscore", "zscore_signal"),
        ("zero", "center_signal"),
        ("mad", "mad_norm_signal"),
        ("amp", "amp_norm_signal"),
    ],
)
def test_normalisations_match_phopro(
    phopro_operations: ModuleType, method: tk.TrialNormalization, function: str
) -> None:
    rng = np.random.default_rng(7)
    windows = rng.standard_normal((9, 40))
    baseline = rng.standard_normal((9, 15))
    baseline[3] = 1.5  # a flat baseline: eps for zscore
    with np.errstate(divide="ignore", invalid="ignore"):  # PhoPro's mad divides by zero
        expected = getattr(phopro_operations, function)(windows, baseline)
    np.testing.assert_array_equal(wk.normalize_windows(windows, baseline, method), expected)


# --- PhoPro's whole extract_trial_data (slow: importing PhoPro takes ~20 s) -----------------


@pytest.fixture(scope="module")
def phopro_experiment() -> Any:
    return importlib.import_module("PhoPro.core.PhotometryExperiment").PhotometryExperiment


def _phopro_rejects_by_nominal_bounds(
    ours: wk.Trials | None, time: np.ndarray, opts: dict[str, Any]
) -> bool:
    if ours is None or opts["window_alignment"] != "nearest":
        return False
    lo, hi = opts["bounds_s"]
    centers = ours.plan.centers[ours.plan.keep]
    return bool(((centers + lo < time[0]) | (centers + hi > time[-1])).any())


@pytest.mark.slow_hypothesis
@settings(max_examples=60)
@given(rec=recordings(), opts=options())
def test_trials_match_phopro_extract_trial_data(
    phopro_experiment: Any, rec: dict[str, Any], opts: dict[str, Any]
) -> None:
    align_names = [opts["align_to"]] if isinstance(opts["align_to"], str) else opts["align_to"]
    # centring on an alignment event re-centres on its first occurrence in PhoPro (often the
    # previous cue): the alignment-column fault, fixed here and checked against the reference
    assume(not set(opts["center_on"]) & set(align_names))
    events = {k: np.sort(np.asarray(v, dtype=float)) for k, v in rec["events"].items()}
    exp = phopro_experiment(rec["signal"], None, rec["time"], events=events, metadata={})
    exp.signal = rec["signal"]
    try:
        ours = wk.trials(rec["signal"], rec["time"], events, **opts)
    except ValueError as e:
        assert "no trials remain" in str(e)
        ours = None
    # Known, documented difference: PhoPro rejects a nearest window by its nominal bounds
    # (c + lo < t0 or c + hi > t_end), we by the samples it actually takes; they differ only
    # for a window whose nominal end lies within one sample of the recording's end.
    assume(not _phopro_rejects_by_nominal_bounds(ours, rec["time"], opts))
    try:
        exp.extract_trial_data(
            align_to=opts["align_to"],
            trial_bounds=opts["bounds_s"],
            center_on=list(opts["center_on"]) or None,
            baseline_bounds=opts["baseline_bounds_s"],
            event_tolerences=dict(opts["tolerances_s"]),
            trial_normalization=opts["normalization"],
            check_overlap=opts["check_overlap"],
            all_events=opts["all_events"],
            window_alignment=opts["window_alignment"],
            event_conflict_logic=opts["event_conflict"],
        )
    except IndexError:
        # PhoPro's overlap error looks its culprits up among the event times by
        # searchsorted, which can index past the end (e.g. with 'mean' times)
        assert opts["check_overlap"]
        assert ours is None or ours.plan.overlap.any()
        event("PhoPro fails the experiment on an overlap")
        return
    except ValueError as e:
        if "over lap" in str(e):  # PhoPro fails the experiment; we drop those trials only
            assert ours is None or ours.plan.overlap.any()
            event("PhoPro fails the experiment on an overlap")
        else:
            assert "No trials remain" in str(e)
            assert ours is None
            event("no trials remain")
        return
    assert ours is not None
    # PhoPro tests nearest windows on times; skip the cases where one exactly touches an end
    starts = ours.plan.windows.starts
    touching = (starts == 0) | (starts + ours.plan.windows.length == ours.plan.n_time)
    assume(opts["window_alignment"] == "interp" or not touching.any())
    event(f"compared {ours.data.shape[0]} trial(s) ({opts['window_alignment']})")

    obs = exp.trial_data.adata.obs
    data = np.asarray(exp.trial_data.adata.X)
    assert data.shape == ours.data.shape
    if opts["window_alignment"] == "nearest":
        np.testing.assert_array_equal(ours.data, data)
    else:
        np.testing.assert_allclose(ours.data, data, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(np.asarray(exp.trial_data.adata.var["t"], float), ours.rel_time)

    def compared(columns: Sequence[str]) -> list[str]:
        return [c for c in columns if c.split("_occurrence_")[0] not in align_names]

    assert compared(list(obs.columns)) == compared(list(ours.table))
    for name in compared(list(obs.columns)):
        theirs = obs[name].to_numpy()
        if name == "align_event":
            assert theirs.tolist() == ours.table[name].tolist()
        else:
            np.testing.assert_allclose(
                ours.table[name], theirs.astype(float), rtol=0, atol=1e-9, err_msg=name
            )
