"""The filter suite: neurobatch's blocked zero-phase band-pass against whole-array SciPy.

Input: a SpikeGLX-like recording (int16, 64 channels at 30 kHz, interleaved ``.bin`` with
its ``.meta``) from :func:`neurobatch.synthetic.ephys_recording` (seed 0) and
:func:`~neurobatch.synthetic.write_spikeglx`: 20 minutes (4.3 GiB: the synthesised first
minute repeated) in the full suite, more than four times the 1 GiB memory limit of each
worker; one minute with ``--quick``.

Filter: 300-6000 Hz Butterworth band-pass of order 3, zero phase (``sosfiltfilt`` with odd
padding), on the samples in µV (int16 times the gain): the ``filter`` pipeline's defaults
(:class:`neurobatch.config.EphysFilterConfig`).

Cases, each in a fresh process:

- **SciPy, one core**: ``scipy.signal.sosfiltfilt`` with the same sections on a whole array
  (read from the ``.bin``, converted to float64 µV, filtered, cast to float32), with one
  BLAS/OpenMP thread. The whole recording would not fit a worker (its float64 copy alone
  is 17 GiB in the full suite), so it runs on the recording's first seconds, a slice whose
  float64 copy is a sixth of a worker's memory limit: its first call in a fresh process
  (as the whole array would be filtered: into new memory), in three processes; the median
  gives one core's rate. The ideal is that rate times the number of worker cores (2).
- **neurobatch, filter stage**: on a ``LocalCluster`` of 2 workers x 1 thread with 1 GiB
  each (started, and its workers' imports done, before the clock starts): the SpikeGLX
  loader (lazy), :func:`neurobatch.engine.stages.filter_traces` and
  :func:`neurobatch.io.zarr.write_dataset` into a Zarr store of float32 µV, with the chunk
  memory a pipeline run derives from its workers when the file sets none
  (:meth:`neurobatch.config.EngineConfig.chunk_budget`: a sixty-fourth of a worker thread's
  memory, 16 MiB here). This is the target case. Then one worker is retired for the series'
  other point (on the recording's first quarter in the full suite).
- **neurobatch, filter pipeline** (full suite only): the same cluster running
  ``Pipeline.run`` of a ``filter`` pipeline on the file (its filter stage reads the
  ``.bin`` itself; no raw copy), with the engine's defaults: what a user runs.

Peak memory is the driver, nannies and workers summed, sampled every 50 ms; the Dask task
stream gives the share of the workers' time spent in tasks and the task kinds that take it.

Check: the stored result against ``sosfiltfilt`` on the recording's first and last
seconds (where block edges and both true ends of the recording fall), beyond the
filter's settling depth from the slices' cut ends: the maximum absolute deviation in µV
and relative to the signal's peak (float32 storage rounds at about 6e-8 relative).
"""

from __future__ import annotations

import importlib
import math
import os
import resource
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from benchmarks._measure import ONE_THREAD, TreeSampler, in_fresh_process

CHANNELS = 64
FS = 30_000.0
BAND = (300.0, 6000.0)
ORDER = 3
WORKER_MEMORY = 2**30
DURATION_S = {True: 60.0, False: 1200.0}
BASE_S = 60.0
SCIPY_REPEATS = 3
TARGET_SHARE = 0.70


def _sos() -> np.ndarray:
    from neurobatch.kernels import filters

    return filters.butter_sos("bandpass", BAND, fs=FS, order=ORDER)


def _scipy_rows() -> int:
    """Rows of the SciPy slice: its float64 copy is a sixth of a worker's memory limit."""
    return int(WORKER_MEMORY / 6 / (8 * CHANNELS))


# --- cases (each runs in a fresh process) -----------------------------------------------------


def generate(folder: str, duration_s: float) -> dict[str, Any]:
    """Write the recording as ``folder/rec_g0_t0.imec0.ap.bin`` (+ ``.meta``).

    Up to a minute is synthesised (:func:`neurobatch.synthetic.ephys_recording`, seed 0);
    a longer recording repeats that minute (synthesis runs at ~25 MB/s, copying far faster).
    """
    import dask.array as da
    import xarray as xr

    from neurobatch import synthetic

    start = time.perf_counter()
    base = synthetic.ephys_recording(
        n_channels=CHANNELS, duration_s=min(duration_s, BASE_S), fs=FS, seed=0
    ).recording
    if duration_s > BASE_S:
        block = da.from_array(base["traces"].values, chunks=(2**18, -1))
        repeats = math.ceil(duration_s / BASE_S)
        traces = da.concatenate([block] * repeats)[: round(duration_s * FS)]
        base = xr.Dataset(
            {"traces": (("time", "channel"), traces)},
            coords={"channel": base["channel"]},
            attrs=base.attrs,
        )
    path = Path(folder) / "rec_g0_t0.imec0.ap.bin"
    synthetic.write_spikeglx(base, str(path))
    return {
        "path": str(path),
        "bytes": path.stat().st_size,
        "gain_uv": float(base.attrs["gain_uv"]),
        "seconds": time.perf_counter() - start,
    }


def scipy_case(path: str, rows: int, gain_uv: float) -> dict[str, Any]:
    """``sosfiltfilt`` on the first ``rows`` samples of every channel: a first call, then again.

    The first call, in a fresh process, is what filtering a whole recording costs: every
    array it makes is new memory. The second reuses memory the first has touched, which a
    whole recording cannot (on this kind of virtual machine first touches dominate).
    """
    import scipy.signal

    sos = _sos()
    raw = np.memmap(path, dtype="<i2", mode="r", shape=(rows, CHANNELS))
    seconds = []
    system = []
    with TreeSampler() as memory:
        for _ in range(2):
            cpu = _cpu_times()
            start = time.perf_counter()
            x = np.asarray(raw, dtype=np.float64) * gain_uv
            y = scipy.signal.sosfiltfilt(sos, x, axis=0, padtype="odd").astype(np.float32)
            seconds.append(time.perf_counter() - start)
            user, sys_s = (b - a for a, b in zip(cpu, _cpu_times(), strict=True))
            system.append(100 * sys_s / max(user + sys_s, 1e-9))
            del x, y
    return {
        "first_s": seconds[0],
        "again_s": seconds[1],
        "sys_pct": system[0],
        "again_sys_pct": system[1],
        "peak_mb": memory.peak_mb,
    }


def _task_summary(stream: list[dict[str, Any]], wall: float, threads: int) -> dict[str, Any]:
    """Tasks run, the share of worker-thread time spent computing them, the top task kinds."""
    from dask.utils import key_split

    busy: dict[str, float] = {}
    for task in stream:
        for part in task.get("startstops", ()):
            if part["action"] == "compute":
                name = key_split(task["key"])
                busy[name] = busy.get(name, 0.0) + part["stop"] - part["start"]
    total = sum(busy.values())
    top = sorted(busy.items(), key=lambda item: -item[1])[:4]
    return {
        "tasks": len(stream),
        "busy_share": total / (wall * threads) if wall > 0 else float("nan"),
        "task_seconds": {name: round(s, 2) for name, s in top},
    }


def _cpu_times() -> tuple[float, float]:
    """This process's user and system CPU seconds so far (run on each worker)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def _stage_run(
    client: Any, path: str, out: str, chunk_memory: int, share: float = 1.0
) -> dict[str, Any]:
    """The SpikeGLX loader, the filter stage and the Zarr write, timed and sampled.

    ``share`` < 1 filters only that first part of the recording.
    """
    from distributed import get_task_stream

    from neurobatch.config import EphysFilterConfig
    from neurobatch.engine import stages
    from neurobatch.io.loaders import load_recording
    from neurobatch.io.zarr import write_dataset

    workers = client.run(os.getpid)
    before = client.run(_cpu_times)
    with TreeSampler() as memory, get_task_stream(client) as stream:
        start = time.perf_counter()
        recording = load_recording(path, {}, format="spikeglx", chunk_memory=chunk_memory)
        if share < 1:
            recording = recording.isel(time=slice(0, round(share * recording.sizes["time"])))
        filtered = stages.filter_traces(recording, EphysFilterConfig(), chunk_memory=chunk_memory)
        write_dataset(filtered, out, chunk_memory=chunk_memory)
        seconds = time.perf_counter() - start
    after = client.run(_cpu_times)
    user = sum(after[w][0] - before[w][0] for w in after)
    system = sum(after[w][1] - before[w][1] for w in after)
    samples = int(np.prod(recording["traces"].shape))
    return _case("neurobatch filter stage", workers, seconds, memory, samples, stream.data) | {
        "worker_cpu_s": user + system,
        "worker_sys_pct": 100 * system / max(user + system, 1e-9),
        "out": out,
    }


def _case(
    name: str,
    workers: dict[str, int],
    seconds: float,
    memory: TreeSampler,
    samples: int,
    tasks: list[dict[str, Any]],
) -> dict[str, Any]:
    """One neurobatch case: its rate, the process tree's and the workers' peaks, its tasks."""
    return {
        "name": f"{name}, {len(workers)} worker(s)",
        "workers": len(workers),
        "seconds": seconds,
        "peak_mb": memory.peak_mb,
        "samples": samples,
        "rate": samples / seconds,
        "worker_peak_mb": max(memory.process_peak_mb(pid) for pid in workers.values()),
        **_task_summary(tasks, seconds, len(workers)),
    }


def _pipeline_run(client: Any, path: str, folder: Path) -> dict[str, Any]:
    """``Pipeline.run`` of a ``filter`` pipeline on the file (no raw copy: the filter reads it)."""
    from distributed import get_task_stream

    from neurobatch.engine.run import Pipeline

    settings = {
        "name": "filter-benchmark",
        "kind": "filter",
        "input": {"url": str(Path(path).parent), "pattern": "*.ap.bin"},
        "loader": {"format": "spikeglx"},
        "filter": {"cutoff_hz": list(BAND), "order": ORDER},
        "output": {"url": str(folder)},
    }
    workers = client.run(os.getpid)
    with TreeSampler() as memory, get_task_stream(client) as stream:
        start = time.perf_counter()
        summary = Pipeline(settings).run(client=client, progress=False)
        seconds = time.perf_counter() - start
    if summary.n_done != 1:
        raise RuntimeError(f"the filter pipeline did not finish its item:\n{summary}")
    shutil.rmtree(folder, ignore_errors=True)
    samples = Path(path).stat().st_size // 2
    name = "neurobatch filter pipeline"
    return _case(name, workers, seconds, memory, samples, stream.data)


def neurobatch_case(
    path: str,
    scratch: str,
    *,
    pipeline: bool,
    worker_memory: int,
    one_worker_share: float,
) -> dict[str, Any]:
    """On one LocalCluster of 2 workers x 1 thread: the stage, the pipeline; then on 1 worker.

    The cluster is started, and its workers import what the tasks need, before any clock
    starts; for the 1-worker point one of the two workers is retired. The stage runs with
    the chunk memory that ``Pipeline.run`` derives from these workers.
    """
    from neurobatch.config import EngineConfig, LocalClusterConfig
    from neurobatch.engine import cluster

    start = time.perf_counter()
    config = LocalClusterConfig(
        n_workers=2, threads_per_worker=1, memory_limit=worker_memory, dashboard_address=None
    )
    runs: list[dict[str, Any]] = []
    with cluster.connect(config) as client:
        for module in ("neurobatch.engine.stages", "neurobatch.io.zarr", "scipy.signal"):
            client.run(importlib.import_module, module)
        startup = time.perf_counter() - start
        base = max(client.run(lambda: psutil.Process().memory_info().rss).values()) / 2**20
        workers = client.scheduler_info()["workers"].values()
        chunk_memory = EngineConfig().chunk_budget(
            min(w["memory_limit"] // w["nthreads"] for w in workers)
        )
        # the pipeline first: its output (the filtered traces, ~2x the recording) is
        # removed before the stage's is written
        piped = None if not pipeline else _pipeline_run(client, path, Path(scratch) / "pipeline")
        runs.append(_stage_run(client, path, str(Path(scratch) / "filtered-2.zarr"), chunk_memory))
        if piped is not None:
            runs.append(piped)
        client.retire_workers(n=1)
        while len(client.scheduler_info()["workers"]) != 1:
            time.sleep(0.1)
        one = _stage_run(
            client, path, str(Path(scratch) / "filtered-1.zarr"), chunk_memory, one_worker_share
        )
        shutil.rmtree(one.pop("out"), ignore_errors=True)
        runs.append(one)
    return {
        "runs": runs,
        "cluster_start_s": startup,
        "worker_base_mb": base,
        "chunk_memory": chunk_memory,
    }


def check(path: str, out: str, gain_uv: float, rows: int) -> dict[str, Any]:
    """The stored result against ``sosfiltfilt`` on the first and last ``rows`` samples."""
    import scipy.signal

    from neurobatch.io.zarr import open_dataset
    from neurobatch.kernels import filters

    sos = _sos()
    depth = filters.overlap_depth(sos)
    stored = open_dataset(out)["traces"]
    n = stored.shape[0]
    raw = np.memmap(path, dtype="<i2", mode="r", shape=(n, CHANNELS))
    rows = min(rows, n)
    worst = 0.0
    peak = 0.0
    for a, b, keep in ((0, rows, slice(0, rows - depth)), (n - rows, n, slice(depth, rows))):
        reference = scipy.signal.sosfiltfilt(
            sos, np.asarray(raw[a:b], dtype=np.float64) * gain_uv, axis=0, padtype="odd"
        )[keep]
        ours = stored[a:b].values[keep].astype(np.float64)
        worst = max(worst, float(np.abs(ours - reference).max()))
        peak = max(peak, float(np.abs(reference).max()))
    return {
        "max_abs_dev_uv": worst,
        "max_rel_dev": worst / peak,
        "signal_peak_uv": peak,
        "samples_checked": 2 * (rows - depth) * CHANNELS,
        "depth": depth,
        "dtype": str(stored.dtype),
    }


# --- the suite --------------------------------------------------------------------------------


def run_suite(*, quick: bool, scratch: Path) -> dict[str, Any]:
    duration = DURATION_S[quick]
    scratch.mkdir(parents=True, exist_ok=True)
    data = scratch / "data"
    data.mkdir(exist_ok=True)
    made = in_fresh_process(generate, folder=str(data), duration_s=duration)
    print(
        f"filter: generated {made['bytes'] / 2**30:.2f} GiB ({CHANNELS} ch x {duration:g} s) "
        f"in {made['seconds']:.0f} s",
        flush=True,
    )
    rows = _scipy_rows()
    scipy_runs = [
        in_fresh_process(
            scipy_case, env=ONE_THREAD, path=made["path"], rows=rows, gain_uv=made["gain_uv"]
        )
        for _ in range(SCIPY_REPEATS)
    ]
    scipy_s = statistics.median(r["first_s"] for r in scipy_runs)
    again_s = statistics.median(r["again_s"] for r in scipy_runs)
    one_core = rows * CHANNELS / scipy_s
    print(f"filter: scipy one core {one_core / 1e6:.1f} M samples/s", flush=True)
    measured = in_fresh_process(
        neurobatch_case,
        path=made["path"],
        scratch=str(scratch),
        pipeline=not quick,
        worker_memory=WORKER_MEMORY,
        one_worker_share=1.0 if quick else 0.25,
        timeout_s=1800,
    )
    runs = measured["runs"]
    main, one_worker = runs[0], runs[-1]
    print(
        f"filter: neurobatch {main['rate'] / 1e6:.1f} M samples/s on 2 workers, "
        f"{one_worker['rate'] / 1e6:.1f} M on 1",
        flush=True,
    )
    checked = in_fresh_process(
        check, path=made["path"], out=main["out"], gain_uv=made["gain_uv"], rows=rows
    )
    shutil.rmtree(main["out"], ignore_errors=True)

    ideal = one_core * 2
    share = main["rate"] / ideal
    scipy_seconds = rows / FS
    cases: list[dict[str, Any]] = [
        {
            "name": f"scipy sosfiltfilt whole array, 1 core (first {scipy_seconds:.1f} s)",
            "seconds": scipy_s,
            "peak_mb": max(r["peak_mb"] for r in scipy_runs),
            "msamples_per_s": one_core / 1e6,
            "channel_samples": rows * CHANNELS,
            "sys_pct": statistics.median(r["sys_pct"] for r in scipy_runs),
            "note": f"median of {SCIPY_REPEATS} fresh processes: "
            + ", ".join(f"{r['first_s']:.2f}" for r in scipy_runs)
            + f" s; a second call in the same process {again_s:.2f} s "
            f"({rows * CHANNELS / again_s / 1e6:.1f} M/s, "
            f"{statistics.median(r['again_sys_pct'] for r in scipy_runs):.0f} % system time)",
        }
    ]
    labels = ["scipy, 1 core"]
    for run in runs:
        rate = run["rate"]
        kind = "pipeline" if "pipeline" in run["name"] else "stage"
        labels.append(f"{kind}, {run['workers']} worker(s)")
        cases.append(
            {
                "name": run["name"],
                "seconds": run["seconds"],
                "peak_mb": run["peak_mb"],
                "msamples_per_s": rate / 1e6,
                "channel_samples": run["samples"],
                "pct_of_ideal": 100 * rate / (one_core * run["workers"]),
                "worker_peak_mb": run["worker_peak_mb"],
                "sys_pct": run.get("worker_sys_pct"),
                "tasks": run["tasks"],
                "busy_share": run["busy_share"],
                "task_seconds": run["task_seconds"],
            }
        )
    memory_ratio = made["bytes"] / WORKER_MEMORY
    targets = [
        {
            "name": "blocked rate, share of the ideal (2 workers)",
            "value": 100 * share,
            "unit": "%",
            "target": ">= 70 %",
            "met": share >= TARGET_SHARE and (quick or memory_ratio >= 4),
            "why": f"ideal = {one_core / 1e6:.1f} M samples/s (scipy, 1 core) x 2 = "
            f"{ideal / 1e6:.1f} M; ours {main['rate'] / 1e6:.1f} M; workers busy "
            f"{100 * main['busy_share']:.0f} % of the time"
            + ("" if quick else f"; data {memory_ratio:.1f}x a worker's memory"),
        },
        {
            "name": "check: blocked result equals scipy (max relative deviation)",
            "value": checked["max_rel_dev"],
            "unit": "",
            "target": "<= 1e-6 (float32 storage)",
            "met": checked["max_rel_dev"] <= 1e-6,
            "why": f"max |deviation| {checked['max_abs_dev_uv']:.2g} µV of a "
            f"{checked['signal_peak_uv']:.0f} µV peak, over "
            f"{checked['samples_checked']:,} channel-samples at both ends",
        },
    ]
    series = [
        {
            "name": "filter rate against workers",
            "x_label": "workers (1 thread each)",
            "y_label": "M channel-samples / s",
            "x": [1, 2],
            "lines": {
                "neurobatch blocked": [one_worker["rate"] / 1e6, main["rate"] / 1e6],
                "ideal (scipy 1 core x workers)": [one_core / 1e6, 2 * one_core / 1e6],
                "scipy whole array, 1 core": [one_core / 1e6, one_core / 1e6],
            },
        },
        {
            "name": "peak memory (driver + workers)",
            "x_label": "",
            "y_label": "MB",
            "x": labels,
            "lines": {"peak MB": [c["peak_mb"] for c in cases]},
        },
    ]
    return {
        "suite": "filter",
        "settings": {
            "recording": f"{CHANNELS} ch x {duration:g} s at {FS / 1000:g} kHz, int16 SpikeGLX",
            "recording_mb": made["bytes"] / 2**20,
            "filter": f"Butterworth band-pass {BAND[0]:g}-{BAND[1]:g} Hz, order {ORDER}, "
            "zero phase, float32 µV stored",
            "worker_memory_mb": WORKER_MEMORY // 2**20,
            "recording_over_worker_memory": memory_ratio,
            "chunk_memory_mb": measured["chunk_memory"] / 2**20,
            "scipy_slice_s": scipy_seconds,
            "generate_s": made["seconds"],
            "cluster_start_s": measured["cluster_start_s"],
            "worker_base_mb": measured["worker_base_mb"],
        },
        "cases": cases,
        "targets": targets,
        "series": series,
        "check": checked,
        "notes": [
            (
                f"SciPy runs on the first {scipy_seconds:.1f} s (a float64 copy of "
                f"{rows * CHANNELS * 8 / 2**20:.0f} MB): the whole recording would not fit one "
                "worker. Its time is its first call in a fresh process (as a whole recording "
                "would be filtered), reading the int16 samples and converting them to µV as "
                "neurobatch does; neurobatch's time also includes writing compressed Zarr."
            ),
            (
                "Rates are channel-samples per second; cluster start-up and worker imports are "
                "not timed (cluster_start_s in the JSON)."
                + ("" if quick else " The 1-worker point filters the recording's first quarter.")
            ),
            (
                "busy_share: the share of the workers' thread time spent in tasks (Dask's task "
                "stream); task_seconds: the task kinds that took the most of it; "
                "sys_pct: the share of CPU time spent in the kernel, the workers' for neurobatch "
                "(mostly page faults of new memory)."
            ),
        ],
    }
