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
- **spikeinterface against neurobatch, whole processes** (on 60 s; in the full suite on
  20 min too): spikeinterface 0.105.3 in a virtual environment of its own (it pins
  ``zarr < 3``; :func:`spikeinterface_python` makes it on first use, with our NumPy and
  SciPy), running :mod:`benchmarks.peers.spikeinterface_filter` (``scale_to_uV``,
  ``common_reference(reference="global", operator="median")``, ``bandpass_filter`` with the
  same band, order, Butterworth sections and forward-backward direction, float32, then
  ``save(format="zarr", n_jobs=2, chunk_duration="1s")``), against ``neurobatch run`` of a
  ``filter`` pipeline with ``common_reference: median`` on 2 workers x 1 thread (of the
  cluster kind the engine picks by default), no raw copy: each timed
  from its process's start to its exit, imports, cluster and all
  (:func:`benchmarks._measure.run_measured`), alternately, the median of 3 runs (one in
  the full suite on 20 min). Both apply the same operations in the same order: samples
  to µV, the median over channels subtracted, the band-pass, float32 stored. The target:
  neurobatch at least 1.5x faster.

Peak memory is the driver, nannies and workers summed, sampled every 50 ms; the Dask task
stream gives the share of the workers' time spent in tasks and the task kinds that take it.

Check: the stored result against ``sosfiltfilt`` on the recording's first and last
seconds (where block edges and both true ends of the recording fall), beyond the
filter's settling depth from the slices' cut ends: the maximum absolute deviation in µV
and relative to the signal's peak (float32 storage rounds at about 6e-8 relative). The two
tools' outputs are compared on 10 s in the middle of the recording (away from its ends,
where both pad as ``sosfiltfilt`` does), each against the whole-array reference (median
reference, then ``sosfiltfilt``) and against each other: spikeinterface filters each 1-s
chunk with a margin of 5 periods of the low cutoff (500 samples) on each side and drops
it, so its result is off the whole-array one near its chunk edges by what the filter's
response still holds after 500 samples; neurobatch's overlap is where that response has
decayed to 1e-12 (:func:`neurobatch.kernels.filters.overlap_depth`).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import yaml

from benchmarks._measure import ONE_THREAD, TreeSampler, in_fresh_process, run_measured

CHANNELS = 64
FS = 30_000.0
BAND = (300.0, 6000.0)
ORDER = 3
WORKER_MEMORY = 2**30
DURATION_S = {True: 60.0, False: 1200.0}
BASE_S = 60.0
SCIPY_REPEATS = 3
TARGET_SHARE = 0.70
#: spikeinterface in its own environment, with the NumPy and SciPy of ours.
SPIKEINTERFACE = "spikeinterface==0.105.3"
PEER_SCRIPT = Path(__file__).parent / "peers" / "spikeinterface_filter.py"
#: Both tools' jobs: spikeinterface's processes, neurobatch's workers (1 thread each).
PEER_JOBS = 2
#: spikeinterface's chunks: its default, ``chunk_duration="1s"``.
PEER_CHUNK_S = 1.0
PEER_CHUNK = f"{PEER_CHUNK_S:g}s"
#: The peer comparison's sizes: 60 s (``--quick``), and 20 min in the full suite.
PEER_DURATIONS_S = {True: (60.0,), False: (60.0, 1200.0)}
#: Runs of each tool, alternately, per size (the median counts).
PEER_REPEATS = {60.0: 3, 1200.0: 1}
#: The seconds in the middle of the recording where the two outputs are compared.
PEER_CHECK_S = 10.0
TARGET_SPEEDUP = 1.5


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
    # worker processes (kind local): the default kind may run the workers in this process
    config = LocalClusterConfig(
        kind="local",
        n_workers=2,
        threads_per_worker=1,
        memory_limit=worker_memory,
        dashboard_address=None,
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


# --- spikeinterface against neurobatch, whole processes ---------------------------------------


def spikeinterface_python() -> Path:
    """The Python of spikeinterface's own virtual environment, made on first use.

    spikeinterface pins ``zarr < 3`` (neurobatch needs Zarr 3), so it lives in a virtual
    environment of its own, under ``$XDG_CACHE_HOME/neurobatch-benchmarks/`` (``~/.cache``
    by default): :data:`SPIKEINTERFACE` with ``zarr < 3``, and the NumPy and SciPy versions
    of this environment (the same ``sosfiltfilt`` on both sides), installed with ``uv``
    (this environment's, else the one on ``PATH``; pip without either). A marker file names
    what was installed; an environment without it, or with another list, is made again.
    """
    wanted = [
        SPIKEINTERFACE,
        "zarr<3",
        *(f"{name}=={importlib.metadata.version(name)}" for name in ("numpy", "scipy")),
    ]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    root = cache / "neurobatch-benchmarks" / SPIKEINTERFACE.replace("==", "-")
    python = root / "bin" / "python"
    marker = root / "neurobatch-installed.txt"
    if marker.exists() and marker.read_text().split() == wanted:
        return python
    print(f"filter: making spikeinterface's environment in {root}", flush=True)
    shutil.rmtree(root, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    install = (
        [uv, "pip", "install", "--quiet", "--python", str(python)]
        if uv
        else [str(python), "-m", "pip", "install", "--quiet"]
    )
    subprocess.run([*install, *wanted], check=True)
    marker.write_text("\n".join(wanted) + "\n")
    return python


def _pipeline_file(folder: Path, data: Path, out: Path) -> Path:
    """The ``filter`` pipeline of the comparison: the suite's filter with a median reference."""
    config = {
        "name": "filter-vs-spikeinterface",
        "kind": "filter",
        "input": {"url": str(data), "pattern": "*.ap.bin"},
        "loader": {"format": "spikeglx"},
        "filter": {
            "type": "bandpass",
            "cutoff_hz": list(BAND),
            "order": ORDER,
            "common_reference": "median",
            "dtype": "float32",
        },
        "output": {"url": str(out)},
        "cluster": {"n_workers": PEER_JOBS, "threads_per_worker": 1},
    }
    path = folder / "filter-vs-spikeinterface.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _window(n: int) -> tuple[int, int]:
    """The rows compared: :data:`PEER_CHECK_S` seconds in the middle of ``n`` samples."""
    rows = min(n // 2, round(PEER_CHECK_S * FS))
    start = (n - rows) // 2
    return start, start + rows


def stored_window(url: str, variable: str) -> np.ndarray:
    """The compared rows of a stored ``(time, channel)`` array, as float64.

    Zarr 3 reads both tools' stores: neurobatch's (v3) and spikeinterface's (v2).
    """
    import zarr

    array = zarr.open_array(f"{url}/{variable}", mode="r")
    a, b = _window(array.shape[0])
    return np.asarray(array[a:b], dtype=np.float64)


def reference_window(path: str, gain_uv: float) -> np.ndarray:
    """The compared rows as the whole array would give them: µV, median reference, sosfiltfilt.

    Filtered over the rows and the filter's settling depth on each side, then trimmed:
    equal to the whole-array result to about 1e-12 of the signal.
    """
    import scipy.signal

    from neurobatch.kernels import filters

    sos = _sos()
    depth = filters.overlap_depth(sos)
    n = os.path.getsize(path) // (2 * CHANNELS)
    a, b = _window(n)
    raw = np.memmap(path, dtype="<i2", mode="r", shape=(n, CHANNELS))
    uv = np.asarray(raw[a - depth : b + depth], dtype=np.float64) * gain_uv
    uv -= np.median(uv, axis=1, keepdims=True)
    return np.asarray(scipy.signal.sosfiltfilt(sos, uv, axis=0, padtype="odd")[depth:-depth])


def _agreement(folder: Path, path: str, gain_uv: float) -> dict[str, Any]:
    """Deviations of the two tools' windows from the whole-array result and each other, µV."""
    ours = np.load(folder / "neurobatch.npy")
    theirs = np.load(folder / "spikeinterface.npy")
    exact = reference_window(path, gain_uv)
    start, _ = _window(os.path.getsize(path) // (2 * CHANNELS))
    chunk = round(PEER_CHUNK_S * FS)
    worst = start + int(np.abs(theirs - exact).max(axis=1).argmax())
    return {
        "neurobatch_vs_exact_uv": float(np.abs(ours - exact).max()),
        "spikeinterface_vs_exact_uv": float(np.abs(theirs - exact).max()),
        "spikeinterface_vs_neurobatch_uv": float(np.abs(theirs - ours).max()),
        "signal_peak_uv": float(np.abs(exact).max()),
        "spikeinterface_worst_from_chunk_edge": min(worst % chunk, chunk - worst % chunk),
        "channel_samples_compared": int(exact.size),
    }


def peer_comparison(path: str, gain_uv: float, folder: Path, duration: float) -> dict[str, Any]:
    """spikeinterface's script and ``neurobatch run``, alternately, on one recording.

    Each run is a whole process (:func:`benchmarks._measure.run_measured`); after each
    tool's first run the compared window of its output is kept (as ``.npy``) and the
    output removed, so that only one output is ever on disk.
    """
    python = spikeinterface_python()
    folder.mkdir(parents=True)
    outputs = {"neurobatch": folder / "neurobatch", "spikeinterface": folder / "si.zarr"}
    pipeline = _pipeline_file(folder, Path(path).parent, outputs["neurobatch"])
    commands = {
        "neurobatch": [sys.executable, "-m", "neurobatch", "run", str(pipeline)],
        "spikeinterface": [
            str(python),
            str(PEER_SCRIPT),
            path,
            str(outputs["spikeinterface"]),
            *("--channels", str(CHANNELS), "--fs", str(FS), "--gain-uv", repr(gain_uv)),
            *("--band", *map(str, BAND), "--order", str(ORDER)),
            *("--n-jobs", str(PEER_JOBS), "--chunk-duration", PEER_CHUNK),
        ],
    }
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in commands}
    for i in range(PEER_REPEATS[duration]):
        for name in sorted(commands, reverse=bool(i % 2)):  # alternately first
            runs[name].append(run_measured(commands[name], log=folder / f"{name}-{i}.log"))
            if i == 0:
                stored = (
                    str(next((outputs[name] / "items").glob("*/filter")))
                    if name == "neurobatch"
                    else str(outputs[name])
                )
                variable = "traces" if name == "neurobatch" else "traces_seg0"
                np.save(folder / f"{name}.npy", stored_window(stored, variable))
            shutil.rmtree(outputs[name])
    seconds = {name: statistics.median(r["seconds"] for r in runs[name]) for name in runs}
    return {
        "duration_s": duration,
        "runs": runs,
        "seconds": seconds,
        "speedup": seconds["spikeinterface"] / seconds["neurobatch"],
        "agreement": _agreement(folder, path, gain_uv),
    }


def _peer_cases(peers: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The comparison's cases (one per tool and size) and targets (one per size)."""
    cases, targets = [], []
    for peer in peers:
        size = f"{CHANNELS} ch x {_duration(peer['duration_s'])}"
        for name, label in (
            ("spikeinterface", f"{SPIKEINTERFACE} (n_jobs={PEER_JOBS}), {size}"),
            ("neurobatch", f"neurobatch run ({PEER_JOBS} workers), {size}"),
        ):
            runs = peer["runs"][name]
            cases.append(
                {
                    "name": label,
                    "seconds": peer["seconds"][name],
                    "peak_mb": max(r["peak_mb"] for r in runs),
                    "cpu_s": statistics.median(r["cpu_s"] for r in runs),
                    "msamples_per_s": peer["duration_s"]
                    * FS
                    * CHANNELS
                    / peer["seconds"][name]
                    / 1e6,
                    "note": "whole process; "
                    + ("median of " if len(runs) > 1 else "")
                    + ", ".join(f"{r['seconds']:.2f}" for r in runs)
                    + " s"
                    + (f"; imports {runs[0]['import_s']:.1f} s" if "import_s" in runs[0] else ""),
                }
            )
        check = peer["agreement"]
        targets.append(
            {
                "name": f"filter + median reference to Zarr against spikeinterface, {size}",
                "value": peer["speedup"],
                "unit": "x",
                "target": f">= {TARGET_SPEEDUP:g}x",
                "met": peer["speedup"] >= TARGET_SPEEDUP,
                "why": f"spikeinterface {peer['seconds']['spikeinterface']:.2f} s, neurobatch "
                f"{peer['seconds']['neurobatch']:.2f} s (whole processes); outputs agree to "
                f"{check['spikeinterface_vs_neurobatch_uv']:.2g} µV of a "
                f"{check['signal_peak_uv']:.0f} µV peak (neurobatch to "
                f"{check['neurobatch_vs_exact_uv']:.2g} µV of the whole-array result, "
                f"spikeinterface to {check['spikeinterface_vs_exact_uv']:.2g} µV, worst "
                f"{check['spikeinterface_worst_from_chunk_edge']} samples from one of its "
                "chunk edges)",
            }
        )
    return cases, targets


def _duration(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 120 else f"{seconds:g} s"


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
    peers = []
    for seconds in PEER_DURATIONS_S[quick]:
        source = (
            made
            if seconds == duration
            else in_fresh_process(generate, folder=str(scratch / "peer-data"), duration_s=seconds)
        )
        peer = peer_comparison(
            source["path"], source["gain_uv"], scratch / f"peers-{seconds:g}", seconds
        )
        print(
            f"filter: {_duration(seconds)}: spikeinterface {peer['seconds']['spikeinterface']:.2f}"
            f" s, neurobatch run {peer['seconds']['neurobatch']:.2f} s: "
            f"{peer['speedup']:.2f}x",
            flush=True,
        )
        peers.append(peer)

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
    peer_cases, peer_targets = _peer_cases(peers)
    cases += peer_cases
    labels += [
        f"{tool}, {_duration(peer['duration_s'])}"
        for peer in peers
        for tool in ("spikeinterface", "neurobatch run")
    ]
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
        *peer_targets,
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
        {
            "name": "against spikeinterface (whole processes)",
            "x_label": f"recording ({CHANNELS} channels)",
            "y_label": "seconds, start to exit",
            "x": [_duration(peer["duration_s"]) for peer in peers],
            "lines": {
                tool: [peer["seconds"][name] for peer in peers]
                for name, tool in (
                    ("spikeinterface", SPIKEINTERFACE),
                    ("neurobatch", "neurobatch run"),
                )
            },
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
            "spikeinterface": SPIKEINTERFACE,
            "spikeinterface_chunk": PEER_CHUNK,
        },
        "cases": cases,
        "targets": targets,
        "series": series,
        "check": checked,
        "peers": [
            {"duration_s": peer["duration_s"], "runs": peer["runs"], **peer["agreement"]}
            for peer in peers
        ],
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
            (
                f"spikeinterface ({SPIKEINTERFACE}, its own virtual environment with zarr < 3 "
                "and our NumPy and SciPy) and neurobatch run as whole processes, timed from "
                "start to exit, imports, worker start-up and writing included, alternately "
                f"(the median of each): spikeinterface with n_jobs={PEER_JOBS} and "
                f"chunk_duration={PEER_CHUNK!r} (its default), neurobatch on {PEER_JOBS} "
                "workers of 1 thread with its default chunk memory. read_binary with the "
                ".meta's gain stands in for read_spikeglx, whose reader needs a probe part "
                "number the synthetic .meta does not have. Both store float32 µV, compressed "
                "(spikeinterface: Blosc zstd; neurobatch: Blosc lz4, with a CRC-32C per chunk)."
            ),
        ],
    }
