"""Scaling: how the photometry pipeline's time and peak memory grow with the batch.

``run_suite(quick=..., scratch=...)`` runs ``neurobatch run`` (the photometry pipeline of
:mod:`benchmarks.photometry_batch`: 3 Hz low-pass, OLS fit, dF/F, lever-press trials, no
dashboards) as a separate process tree per case, measured by
:func:`benchmarks._measure.run_measured` (wall time; peak of the summed resident
memory of the driver and every worker), along three axes:

- items: 10, 50, 200 recordings of 1 min (quick: 4, 8, 16 of 2 min), on 2 workers;
- recording length: x1, x2, x4 (10, 20, 40 min; quick: 2, 4, 8 min) at 8 items, on 2
  workers;
- workers: 1 and 2 (a ``LocalCluster`` of one thread each, ``--workers``) on the length
  axis's longest batch (8 x 40 min; quick: 8 x 8 min).

Each case's wall time is split with what the run records in ``OUT/run.json`` (every item's
stage spans, its worker and its seconds inside its task): the start-up (the CLI's imports,
discovery, the cluster's start and the workers' imports, up to the first item's start),
the items phase (first item start to last item end) and the tail (combining, exports,
provenance, the cluster's shutdown). The share of time lost to scheduling is
``1 - sum(task seconds) / (seconds x worker threads)``, over the whole wall time and over
the items phase alone; each item is one task (its stages compute inside it). The
scheduler's own task records (the ResourceMonitor's) are not written to ``OUT``, so tasks
other than items (the driver's computes, when they reach the cluster) are not counted:
their time shows as time not in tasks.

Inputs are :func:`neurobatch.synthetic.write_photometry_batch` (seed 0, 1 kHz: recording
``k`` has seed ``k`` whatever the batch's size), generated once per size under
``scratch/data`` and reused by every case and later run of that size (generating is fast:
about 0.1 s per recording-minute). A case that two axes share runs once.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._measure import run_measured
from benchmarks.photometry_batch import TRIALS, pipeline_file
from neurobatch import synthetic

RATE_HZ = 1000.0
SEED = 0
THREADS_PER_WORKER = 1  # what pipeline_file asks for

#: The sizes of each mode. ``item_s``: the length on the items axis; ``lengths_s``: x1,
#: x2, x4 of the length axis, at ``length_items`` items; the workers axis runs the longest
#: recordings (the case it shares with the length axis), where an item's own work weighs
#: most against the driver's fixed work per item (as with hour-long recordings).
SIZES: dict[bool, dict[str, Any]] = {
    False: {
        "items": [10, 50, 200],
        "item_s": 60.0,
        "lengths_s": [600.0, 1200.0, 2400.0],
        "length_items": 8,
        "workers": [1, 2],
        "workers_items": 8,
        "workers_s": 2400.0,
        "axis_workers": 2,
    },
    # 2 min, not 1: the items must outweigh the start-up's run-to-run spread (a few s)
    True: {
        "items": [4, 8, 16],
        "item_s": 120.0,
        "lengths_s": [120.0, 240.0, 480.0],
        "length_items": 8,
        "workers": [1, 2],
        "workers_items": 8,
        "workers_s": 480.0,
        "axis_workers": 2,
    },
}

#: Linearity (deviation from a straight line) and flatness (memory) within this share.
TOLERANCE = 0.15
#: The speed-up from one worker to two.
SPEEDUP = 1.7


# --- inputs ----------------------------------------------------------------------------------


def _generated(scratch: Path, n_items: int, duration_s: float) -> Path:
    """The batch of ``n_items`` recordings of ``duration_s``, generated once."""
    folder = scratch / "data" / f"photometry-{n_items}x{duration_s:g}s-{RATE_HZ:g}Hz-seed{SEED}"
    if (folder / ".complete").exists():
        return folder
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    start = time.perf_counter()
    synthetic.write_photometry_batch(
        partial,
        n_items=n_items,
        duration_s=duration_s,
        fs=RATE_HZ,
        seed=SEED,
        processes=os.cpu_count() or 1,
    )
    (partial / ".complete").write_text(f"{time.perf_counter() - start:.1f} s\n")
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    print(
        f"scaling: generated {n_items} x {duration_s:g} s in {time.perf_counter() - start:.0f} s",
        file=sys.stderr,
        flush=True,
    )
    return folder


# --- one case --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    items: int
    duration_s: float
    workers: int

    @property
    def name(self) -> str:
        return f"{self.items} x {self.duration_s / 60:g} min, {self.workers} worker(s)"

    @property
    def slug(self) -> str:
        return f"n{self.items}-d{self.duration_s:g}-w{self.workers}"


def _run_case(case: Case, data: Path, scratch: Path) -> dict[str, Any]:
    folder = scratch / "runs" / case.slug
    shutil.rmtree(folder, ignore_errors=True)  # a first run: nothing to skip
    folder.mkdir(parents=True)
    config = pipeline_file(folder, data, trials=TRIALS, fit="ols", workers=case.workers)
    command = [
        sys.executable,
        "-m",
        "neurobatch.cli",
        "run",
        str(config),
        "--workers",
        str(case.workers),
    ]
    launched = time.time()
    measured = run_measured(command)
    out = folder / "out"
    run = json.loads((out / "run.json").read_text())
    failed = [i["item_id"] for i in run["items"] if i["status"] != "done"]
    if failed or len(run["items"]) != case.items:
        raise RuntimeError(
            f"scaling case {case.name}: {len(run['items'])} item(s), not done: {failed}\n"
            f"{measured['tail']}"
        )
    wall = float(measured["seconds"])
    threads = case.workers * THREADS_PER_WORKER
    starts = [min(s["start"] for s in i["spans"]) for i in run["items"]]
    ends = [max(s["end"] for s in i["spans"]) for i in run["items"]]
    task_s = [float(i["seconds"]) for i in run["items"]]
    startup = min(starts) - launched
    phase = max(ends) - min(starts)
    busy = sum(task_s)
    logged = _logged(out / "logs" / "run.log")
    # the start-up's parts: the driver's imports and discovery, the cluster's start, and
    # the workers' imports (unpickling the first task) up to the first item's start
    driver = logged.get("discovered", launched) - launched
    cluster = logged.get("cluster", launched + driver) - launched - driver
    # keep the logs; the stores are large and each case is a fresh run anyway
    shutil.copytree(out / "logs", folder / "logs")
    shutil.copyfile(out / "run.json", folder / "run.json")
    shutil.rmtree(out)
    return {
        "name": case.name,
        "seconds": wall,
        "peak_mb": float(measured["peak_mb"]),
        "items": case.items,
        "minutes": case.duration_s / 60,
        "workers": case.workers,
        "tasks": len(run["items"]),
        "startup_s": round(startup, 2),
        "driver_start_s": round(driver, 2),
        "cluster_start_s": round(cluster, 2),
        "workers_ready_s": round(startup - driver - cluster, 2),
        "items_phase_s": round(phase, 2),
        "tail_s": round(wall - startup - phase, 2),
        "task_s_mean": round(busy / len(task_s), 3),
        "lost_pct": round(100 * (1 - busy / (wall * threads)), 1),
        "lost_items_phase_pct": round(100 * (1 - busy / (phase * threads)), 1),
    }


def _logged(run_log: Path) -> dict[str, float]:
    """When the run logged its discovery and its cluster's start (epoch seconds)."""
    wanted = {"discovered": "neurobatch.io.discover: discovered", "cluster": "engine.cluster: "}
    found: dict[str, float] = {}
    for line in run_log.read_text().splitlines():
        for name, text in wanted.items():
            if name not in found and text in line:
                stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
                found[name] = stamp.timestamp()  # the log's local time
    return found


# --- figures ---------------------------------------------------------------------------------


def _line(x: list[float], y: list[float]) -> tuple[float, float, float]:
    """Least-squares ``y = a + b x``: a, b and the worst deviation relative to y."""
    b, a = np.polyfit(np.asarray(x, float), np.asarray(y, float), 1)
    fitted = a + b * np.asarray(x, float)
    worst = float(np.max(np.abs(np.asarray(y) - fitted) / np.asarray(y)))
    return float(a), float(b), worst


def _linear_target(
    name: str, x: list[float], rows: list[dict[str, Any]], unit: str, *, proportional: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Is the time after the start-up a straight line in ``x``?

    The start-up (imports, the cluster) is a fixed cost measured on its own; its spread
    from run to run (a few seconds on a shared machine) is noise, not a bend, so the line
    is fitted to the wall time less the start-up. The wall time's own line gives the fixed
    and per-unit costs.
    """
    wall = [r["seconds"] for r in rows]
    after = [r["seconds"] - r["startup_s"] for r in rows]
    phase = [r["items_phase_s"] for r in rows]
    a, b, worst_wall = _line(x, wall)
    a_after, b_after, worst = _line(x, after)
    spread = max(r["startup_s"] for r in rows) - min(r["startup_s"] for r in rows)
    why = (
        f"after the start-up: {a_after:.1f} s + {b_after:.2f} s per {unit} (the wall time: "
        f"{a:.1f} s + {b:.2f} s per {unit}, {100 * worst_wall:.1f} % from its line; start-up "
        f"spread {spread:.1f} s)"
    )
    if proportional:  # the items phase holds no fixed part: its time per unit is flat
        per_small, per_large = phase[0] / x[0], phase[-1] / x[-1]
        why += (
            f"; items phase per {unit} {per_large:.2f} s at {x[-1]:g} against "
            f"{per_small:.2f} s at {x[0]:g} ({100 * (per_large / per_small - 1):+.0f} %)"
        )
    inconclusive = b_after <= 0 or b_after * (x[-1] - x[0]) < 0.1 * after[0]
    if inconclusive:
        why = f"inconclusive: the time grows too little over the axis to test a line; {why}"
    met = worst <= TOLERANCE and not inconclusive
    target = {
        "name": name,
        "value": round(100 * worst, 1),
        "unit": "%",
        "target": f"<= {100 * TOLERANCE:g} % from a + b x",
        "met": met,
        "why": why,
    }
    fit = {
        "fixed_s": round(a, 2),
        f"per_{unit}_s": round(b, 3),
        "wall_worst_deviation_pct": round(100 * worst_wall, 1),
        "after_startup_fixed_s": round(a_after, 2),
        f"after_startup_per_{unit}_s": round(b_after, 3),
        "after_startup_worst_deviation_pct": round(100 * worst, 1),
    }
    return target, fit


def _median(rows: list[dict[str, Any]], key: str) -> float:
    return round(float(np.median([r[key] for r in rows])), 2)


def run_suite(*, quick: bool, scratch: Path) -> dict[str, Any]:
    """Run the scaling cases; see the module's docstring.

    Parameters
    ----------
    quick : bool
        The small sizes (a few minutes in all) instead of the full ones.
    scratch : pathlib.Path
        Where the inputs are generated (and reused) and the runs write.

    Returns
    -------
    dict
        ``suite``, ``settings``, ``cases``, ``targets``, ``series`` (the benchmarks'
        common shape) and ``fits``: the fixed and per-item (per-minute) costs.
    """
    sizes = SIZES[quick]
    scratch = Path(scratch)
    item_s, lengths, n_len = sizes["item_s"], sizes["lengths_s"], sizes["length_items"]
    n_workers, axis_workers = sizes["workers_items"], sizes["axis_workers"]
    by_items = [Case(n, item_s, axis_workers) for n in sizes["items"]]
    by_length = [Case(n_len, d, axis_workers) for d in lengths]
    workers_s = sizes["workers_s"]
    by_workers = [Case(n_workers, workers_s, w) for w in sizes["workers"]]
    results: dict[Case, dict[str, Any]] = {}
    for case in [*by_items, *by_length, *by_workers]:
        if case not in results:
            data = _generated(scratch, case.items, case.duration_s)
            results[case] = _run_case(case, data, scratch)
            r = results[case]
            print(
                f"scaling: {case.name}: {r['seconds']:.1f} s (start-up {r['startup_s']:.1f}, "
                f"items {r['items_phase_s']:.1f}, tail {r['tail_s']:.1f}), "
                f"{r['peak_mb']:.0f} MB",
                file=sys.stderr,
                flush=True,
            )

    items_rows = [results[c] for c in by_items]
    length_rows = [results[c] for c in by_length]
    workers_rows = [results[c] for c in by_workers]
    n = [float(c.items) for c in by_items]
    minutes = [c.duration_s / 60 for c in by_length]

    items_target, items_fit = _linear_target(
        "time linear in items (after start-up)", n, items_rows, "item", proportional=True
    )
    length_target, length_fit = _linear_target(
        "time linear in recording length (after start-up)",
        minutes,
        length_rows,
        "minute",
        proportional=False,
    )
    one, two = workers_rows[0], workers_rows[-1]
    speedup = one["seconds"] / two["seconds"]
    phase_speedup = one["items_phase_s"] / two["items_phase_s"]
    fixed = (one["startup_s"] + one["tail_s"], two["startup_s"] + two["tail_s"])
    small, large = items_rows[0], items_rows[-1]
    memory_change = large["peak_mb"] / small["peak_mb"] - 1
    targets = [
        items_target,
        length_target,
        {
            "name": f"1 -> 2 workers ({n_workers} x {workers_s / 60:g} min), wall time",
            "value": round(speedup, 2),
            "unit": "x",
            "target": f">= {SPEEDUP:g}x",
            "met": speedup >= SPEEDUP,
            "why": (
                f"{one['seconds']:.1f} s -> {two['seconds']:.1f} s, of which fixed (start-up "
                f"and tail) {fixed[0]:.1f} s -> {fixed[1]:.1f} s: it does not shrink with "
                f"workers (the workers' imports before the first item "
                f"{one['workers_ready_s']:.1f} s -> {two['workers_ready_s']:.1f} s)"
            ),
        },
        {
            "name": f"1 -> 2 workers ({n_workers} x {workers_s / 60:g} min), items phase",
            "value": round(phase_speedup, 2),
            "unit": "x",
            "target": f">= {SPEEDUP:g}x",
            "met": phase_speedup >= SPEEDUP,
            "why": (
                f"{one['items_phase_s']:.1f} s -> {two['items_phase_s']:.1f} s; mean task "
                f"{one['task_s_mean']:.2f} s -> {two['task_s_mean']:.2f} s, time not in tasks "
                f"{one['lost_items_phase_pct']:.0f} % -> {two['lost_items_phase_pct']:.0f} %"
            ),
        },
        {
            "name": "peak memory flat in items",
            "value": round(100 * memory_change, 1),
            "unit": "%",
            "target": f"within {100 * TOLERANCE:g} % ({large['items']} vs {small['items']} items)",
            "met": abs(memory_change) <= TOLERANCE,
            "why": f"{small['peak_mb']:.0f} MB at {small['items']} items, "
            f"{large['peak_mb']:.0f} MB at {large['items']}",
        },
    ]
    cases = list(results.values())
    fits = {
        "items": items_fit,
        "length": length_fit,
        # the fixed costs as measured in each run (medians over the cases)
        "startup_s": _median(cases, "startup_s"),
        "driver_start_s": _median(cases, "driver_start_s"),
        "cluster_start_s": _median(cases, "cluster_start_s"),
        "workers_ready_s": _median(cases, "workers_ready_s"),
        "tail_s": _median(cases, "tail_s"),
    }

    def lines(rows: list[dict[str, Any]]) -> dict[str, list[float]]:
        return {
            "wall": [r["seconds"] for r in rows],
            "after start-up": [round(r["seconds"] - r["startup_s"], 2) for r in rows],
            "items phase": [r["items_phase_s"] for r in rows],
            "start-up": [r["startup_s"] for r in rows],
        }

    series = [
        {
            "name": "time vs items",
            "x_label": f"items ({item_s / 60:g} min each, {axis_workers} workers)",
            "y_label": "seconds",
            "x": [c.items for c in by_items],
            "lines": lines(items_rows)
            | {
                "fit a + b n": [
                    round(items_fit["fixed_s"] + items_fit["per_item_s"] * x, 2) for x in n
                ]
            },
        },
        {
            "name": "time vs length",
            "x_label": f"minutes per recording ({n_len} items, {axis_workers} workers)",
            "y_label": "seconds",
            "x": minutes,
            "lines": lines(length_rows),
        },
        {
            "name": "peak MB vs items",
            "x_label": f"items ({item_s / 60:g} min each, {axis_workers} workers)",
            "y_label": "peak MB (driver + workers)",
            "x": [c.items for c in by_items],
            "lines": {"peak": [r["peak_mb"] for r in items_rows]},
        },
        {
            "name": "time vs workers",
            "x_label": f"workers ({n_workers} items of {workers_s / 60:g} min)",
            "y_label": "seconds",
            "x": [c.workers for c in by_workers],
            "lines": lines(workers_rows)
            | {
                "ideal items phase": [
                    round(one["items_phase_s"] / c.workers, 2) for c in by_workers
                ]
            },
        },
    ]
    return {
        "suite": "scaling",
        "settings": {
            "pipeline": "photometry: 3 Hz low-pass, OLS fit, dF/F, trials; zarr+parquet+h5ad",
            "rate_hz": RATE_HZ,
            "seed": SEED,
            "items": sizes["items"],
            "item_minutes": item_s / 60,
            "length_minutes": minutes,
            "length_items": n_len,
            "workers": sizes["workers"],
            "workers_items": n_workers,
            "workers_minutes": workers_s / 60,
            "axis_workers": axis_workers,
            "threads_per_worker": THREADS_PER_WORKER,
        },
        "cases": cases,
        "targets": targets,
        "series": series,
        "fits": fits,
    }
