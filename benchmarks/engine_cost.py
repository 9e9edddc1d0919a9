"""Engine cost: the CPU and wall time ``neurobatch run`` spends per small photometry item.

Run ``python -m benchmarks.engine_cost [--items N ...] [--out FILE] [--scratch DIR]``.

For each N (default 10 and 100) it generates, once, N recordings the size of PhoPro's
tutorial data (1000 s at 20 Hz, two channels and four event columns, PhoPro's CSV layout
with JSON sidecars: :func:`neurobatch.synthetic.write_photometry_batch`, seed 0), writes
the demo's pipeline (:data:`neurobatch.synthetic.DEMO_PIPELINE`: 3 Hz order-4 low-pass,
IRLS fit, dF/F, lever-press trials) with ``output.dashboards: null``, ``output.formats:
[zarr, parquet]`` and the default cluster (``kind: auto``) of 2 worker threads, and times
a fresh ``python -m neurobatch run PIPELINE`` (``sys.executable``, the environment passed
through, so ``PYTHONPATH`` decides which neurobatch runs).

Measured per run (:func:`benchmarks._measure.run_measured`):

- ``wall_s``: from the start of the command to its exit;
- ``cpu_s``: user + system seconds of the command and every descendant it waited for, from
  ``os.wait4`` (the LocalCluster's nannies run in the driver, its worker processes are
  the driver's children, joined when it closes, so their CPU is reaped into it). ``cpu_sampled_s`` is the check:
  the process tree's ``cpu_times`` sampled every 50 ms with psutil, the last value seen per
  process summed (it misses each process's last < 50 ms, so it reads a little low);
  ``survivors`` counts tree processes still alive when the command exited (not reaped by
  it, so not in ``cpu_s``; normally only multiprocessing's resource tracker, which exits
  just after, ~0.02 s), ``survivors_cpu_s`` their sampled CPU;
- ``files_items`` / ``files_out``: files under ``OUT/items`` and ``OUT``.

Start-up cost is taken out with the least-squares slope over N (with two sizes:
``(cpu(100) - cpu(10)) / 90``): CPU and wall seconds per item. Results go to ``--out``
(default ``benchmarks/results/engine_cost.json``) and a table is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

if not __package__:  # run as a file: make ``benchmarks`` importable (PYTHONPATH first)
    sys.path.append(str(Path(__file__).resolve().parents[1]))

from benchmarks._measure import run_measured
from neurobatch import synthetic

DURATION_S = 1000.0
RATE_HZ = 20.0
SEED = 0
WORKERS = 2


def generated(scratch: Path, n_items: int) -> Path:
    """The batch of ``n_items`` tutorial-sized recordings, generated once and reused."""
    folder = scratch / "data" / f"photometry-{n_items}x{DURATION_S:g}s-{RATE_HZ:g}Hz-seed{SEED}"
    if not (folder / ".complete").exists():
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        synthetic.write_photometry_batch(
            partial, n_items=n_items, duration_s=DURATION_S, fs=RATE_HZ, seed=SEED,
            processes=os.cpu_count() or 1,
        )  # fmt: skip
        (partial / ".complete").touch()
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
    return folder


def pipeline_file(folder: Path, data: Path) -> Path:
    """The demo's photometry pipeline on ``data``: no dashboards, Zarr and Parquet out."""
    config = yaml.safe_load(synthetic.DEMO_PIPELINE)
    config["input"]["url"] = str(data)
    config["output"] |= {"url": str(folder / "out"), "formats": ["zarr", "parquet"]}
    config["output"]["dashboards"] = None
    config["cluster"] = {"n_workers": WORKERS, "threads_per_worker": 1}
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def n_files(folder: Path) -> int:
    """Files (not folders) under ``folder``, recursively."""
    return sum(len(files) for _, _, files in os.walk(folder))


def run_once(scratch: Path, n_items: int) -> dict[str, Any]:
    """Generate (once), then time a fresh ``neurobatch run`` of ``n_items`` items."""
    data = generated(scratch, n_items)
    folder = scratch / "runs" / f"n{n_items}"
    shutil.rmtree(folder, ignore_errors=True)  # a first run each time: nothing skipped
    folder.mkdir(parents=True)
    command = [sys.executable, "-m", "neurobatch", "run", str(pipeline_file(folder, data))]
    measured = run_measured(command, log=folder / "run.log")
    out = folder / "out"
    run = json.loads((out / "run.json").read_text())
    done = sum(item["status"] == "done" for item in run["items"])
    if done != n_items:
        raise RuntimeError(f"{n_items} items asked, {done} done: see {folder / 'run.log'}")
    cpu = ("cpu_s", "cpu_user_s", "cpu_system_s", "cpu_rusage_children_s", "cpu_sampled_s")
    survivors = ("processes_seen", "survivors", "survivors_cpu_s")
    return {
        "items": n_items,
        "wall_s": measured["seconds"],
        **{key: measured[key] for key in (*cpu, *survivors, "peak_mb")},
        "files_items": n_files(out / "items"),
        "files_per_item": round(n_files(out / "items") / n_items, 2),
        "files_out": n_files(out),
    }


def slope(runs: list[dict[str, Any]], key: str) -> float:
    """Least-squares seconds per item of ``key`` over the runs (two runs: the difference)."""
    fit = statistics.linear_regression([r["items"] for r in runs], [r[key] for r in runs])
    return round(fit.slope, 4)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, nargs="+", default=[10, 100], help="N (10 100)")
    default_out = Path(__file__).parent / "results" / "engine_cost.json"
    parser.add_argument("--out", type=Path, default=default_out, help="the JSON to write")
    default_scratch = Path(tempfile.gettempdir()) / "neurobatch-engine-cost"
    parser.add_argument("--scratch", type=Path, default=default_scratch, help="data and runs")
    args = parser.parse_args(argv)
    if len(set(args.items)) < 2:
        parser.error("--items needs at least two different sizes for the slope")

    check = [sys.executable, "-c", "import neurobatch; print(neurobatch.__file__)"]
    engine = subprocess.run(check, capture_output=True, text=True, check=True).stdout.strip()
    load_before = os.getloadavg()
    print(f"engine_cost: neurobatch from {engine}; load {load_before}", flush=True)
    runs = [run_once(args.scratch, n) for n in sorted(args.items)]
    per = {k: slope(runs, k) for k in ("cpu_s", "cpu_sampled_s", "wall_s")}
    report = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
        "neurobatch": engine,
        "command": " ".join(sys.argv),
        "settings": {"duration_s": DURATION_S, "rate_hz": RATE_HZ, "workers": WORKERS},
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "runs": runs,
        "per_item": per,
    }
    print(f"\n{'N':>5}{'wall s':>9}{'CPU s':>9}{'sampled':>9}{'files/item':>12}{'files OUT':>11}")
    for r in runs:
        print(
            f"{r['items']:>5}{r['wall_s']:>9.2f}{r['cpu_s']:>9.2f}{r['cpu_sampled_s']:>9.2f}"
            f"{r['files_per_item']:>12g}{r['files_out']:>11}"
        )
    print(f"per item (slope): CPU {per['cpu_s']:.3f} s (sampled {per['cpu_sampled_s']:.3f} s), "
          f"wall {per['wall_s']:.3f} s")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
