"""The small batch: many recordings the size of PhoPro's tutorial data, against PhoPro.

``run_suite(quick=..., scratch=...)`` (``python -m benchmarks run --suite small``) measures,
side by side in one run, whole processes from their start to their exit:

1. **Against PhoPro.** 100 recordings (quick: 50) of 1000 s at 20 Hz, two channels and
   four event columns, made as PhoPro's tutorial data is
   (:func:`neurobatch.synthetic.write_photometry_batch`, ``fs=20``, ``duration_s=1000``,
   seed 0: PhoPro's CSV layout with JSON sidecars), processed with the settings of PhoPro's
   "Batch Processing" tutorial in both tools: 3 Hz order-4 low-pass, OLS fit, dF/F;
   trials aligned to ``trial_cue``, centred on ``lever1``/``lever2`` (tolerance 2-4 s,
   ``shock`` within the bounds), bounds -8 to 8 s, ``check_overlap``, ``all_events``,
   ``nearest`` windows, no trial normalisation (both tools' defaults for the last four).
   PhoPro runs :data:`benchmarks.photometry_batch.PHOPRO_SCRIPT` (its serial
   ``PhotometryPipeline``) in its own process; neurobatch runs ``python -m neurobatch run``
   on :func:`benchmarks.photometry_batch.pipeline_file` without a ``cluster`` section, so
   on the pipeline's default cluster. Both write their combined trials (PhoPro an
   ``.h5ad``; neurobatch Zarr, Parquet and ``.h5ad``). Target: neurobatch at least 2x
   faster.
2. **Engine cost per item**: the CPU seconds of the whole ``neurobatch run`` process tree
   (``os.wait4``: the driver and every worker process it waited for), per item, as the
   slope between the two largest batches of 3. (the start-up cancels out; the largest,
   because the default cluster may run a small batch in neurobatch's own process and a
   larger one on worker processes, each with its own start-up), minus the item's own
   computation. **The item's own computation** is measured in one fresh
   process with one BLAS/OpenMP thread (:data:`benchmarks._measure.ONE_THREAD`), on the
   same CSVs as 1. and the same pipeline file: for each recording in turn,
   :func:`neurobatch.io.loaders.csv.load_photometry_csv` (the CSV and its sidecar, as the
   ingest stage loads it), then on NumPy arrays :func:`neurobatch.kernels.filters.butter_sos`
   and :func:`~neurobatch.kernels.filters.zero_phase_filter` on each channel,
   :func:`neurobatch.kernels.fitting.fit_ols`, :func:`neurobatch.kernels.correction.correct`
   (dF/F) and :func:`neurobatch.kernels.windows.trials` (plan and cut, the events from
   :func:`neurobatch.engine.stages.photometry.events_of`), with the pipeline file's
   settings. The first recording runs once before the clock starts (imports and first
   calls); then ``time.process_time()`` (the process's CPU, user + system) over the loop
   over every recording, divided by their number, is the item's own computation. Nothing
   is written. Target: at most 20 ms of CPU per item.
3. **Linearity** over 100, 500 and 2000 items (quick: 20, 50, 200), one run each, as
   prefixes of one generated batch (each size a folder of hard links to the first ``n``
   CSVs and sidecars: the inputs are the same files for every size and tool). Time is
   linear in the number of items when each added item costs the same: the wall time
   grows by as many seconds per item from 500 to 2000 items as from 100 to 500, within
   15 %. Fixed costs (imports, the cluster's start, the fixed part of the tail) cancel in
   these differences; a cost per item that grows with the batch (discovery, keys,
   appends, provenance, combining) does not. Reported per size too: the start-up (from
   the command's launch to the first item's start, from ``run.json``'s stage spans: it
   holds the per-item work done before any item starts), the items phase (first item's
   start to the last one's end) per item, and the tail (after it: combined outputs,
   provenance, shutdown). And the peak of the process tree's summed resident memory at
   each size (flat: max / min within 15 %).

Every run records the processes its tree had (``processes``: 1 when the default cluster
ran in neurobatch's own process). PhoPro is also measured at the sizes of
:data:`PHOPRO_SIZES`: every size in the full run (its serial loop's CPU per item was
constant from 20 to 200 items, about 30 ms; it concatenates its combined trials once per
experiment, so the full sizes show whether that grows by 2000), only the compared size
with ``--quick`` (to keep it short). Each run is a fresh output folder (a first run:
nothing reused); neurobatch's outputs are deleted after each run, its ``run.log`` kept.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks._measure import ONE_THREAD, in_fresh_process, run_measured
from benchmarks.engine_cost import slope
from benchmarks.photometry_batch import EVENTS, PHOPRO_SCRIPT, TRIALS, pipeline_file
from neurobatch import synthetic
from neurobatch.config import load_config
from neurobatch.config.arguments import PhotometryCSVArguments
from neurobatch.engine.stages.photometry import events_of
from neurobatch.io.loaders.csv import load_photometry_csv
from neurobatch.kernels import correction, filters, fitting, windows

DURATION_S = 1000.0
RATE_HZ = 20.0
SEED = 0
FIT = "ols"  # the tutorial's fit_using='OLS'

#: Batch sizes of each mode (``quick`` -> sizes): the linearity runs.
SIZES = {False: [100, 500, 2000], True: [20, 50, 200]}
#: The size compared with PhoPro (one of :data:`SIZES`).
COMPARED = {False: 100, True: 50}
#: The sizes PhoPro also runs at.
PHOPRO_SIZES = {False: [100, 500, 2000], True: [50]}

SPEEDUP_TARGET = 2.0
ENGINE_COST_TARGET_S = 0.020
TOLERANCE = 0.15  # linearity and flat memory


# --- inputs ----------------------------------------------------------------------------------


def generate(scratch: Path, sizes: list[int]) -> dict[int, Path]:
    """Write the largest batch once; return a folder per size holding its first ``n`` items.

    The folders hold hard links (the same files, found by any discovery) to the CSVs and
    sidecars of :func:`neurobatch.synthetic.write_photometry_batch`, in the order it
    numbers them.
    """
    start = time.perf_counter()
    paths = synthetic.write_photometry_batch(
        scratch / "data" / "all",
        n_items=max(sizes),
        duration_s=DURATION_S,
        fs=RATE_HZ,
        seed=SEED,
        processes=os.cpu_count() or 1,
    )
    folders = {}
    for n in sizes:
        folder = scratch / "data" / f"n{n}"
        folder.mkdir(parents=True)
        for csv in paths[:n]:
            for path in (csv, csv.with_suffix(".json")):
                os.link(path, folder / path.name)
        folders[n] = folder
    print(
        f"small: generated {max(sizes)} x {DURATION_S:g} s at {RATE_HZ:g} Hz in "
        f"{time.perf_counter() - start:.0f} s",
        file=sys.stderr,
        flush=True,
    )
    return folders


# --- the runs --------------------------------------------------------------------------------


def run_phopro(data: Path, folder: Path) -> dict[str, Any]:
    """PhoPro's serial pipeline on ``data``, in its own process; its trials from its output."""
    folder.mkdir(parents=True)
    log = folder / "phopro.log"
    command = [
        sys.executable,
        "-c",
        PHOPRO_SCRIPT,
        str(data),
        str(folder / "out"),
        json.dumps(EVENTS),
        json.dumps(TRIALS),
    ]
    measured = run_measured(command, log=log)
    lines = [line for line in log.read_text().splitlines() if line.startswith("trials ")]
    shutil.rmtree(folder / "out", ignore_errors=True)
    return measured | {"trials": int(lines[-1].split()[1]) if lines else None}


def run_neurobatch(data: Path, folder: Path, n_items: int) -> dict[str, Any]:
    """A first ``neurobatch run`` of ``data`` on the default cluster; its phases from run.json."""
    folder.mkdir(parents=True)
    config = pipeline_file(folder, data, trials=TRIALS, fit=FIT, workers=None)
    launched = time.time()
    measured = run_measured(
        [sys.executable, "-m", "neurobatch", "run", str(config)], log=folder / "run.log"
    )
    out = folder / "out"
    run = json.loads((out / "run.json").read_text())
    items = run["items"]
    done = [i for i in items if i["status"] == "done"]
    if len(done) != n_items:
        raise RuntimeError(f"{n_items} items asked, {len(done)} done: see {folder / 'run.log'}")
    first = min(span["start"] for i in items for span in i["spans"])
    last = max(span["end"] for i in items for span in i["spans"])
    shutil.copyfile(out / "run.json", folder / "run.json")
    shutil.rmtree(out)  # the stores of 2000 items: each run is a first run anyway
    startup, phase = first - launched, last - first
    wall = measured["seconds"]
    return measured | {
        "trials": sum(i.get("records", {}).get("trials", {}).get("n_trials", 0) for i in done),
        "startup_s": round(startup, 2),
        "items_phase_s": round(phase, 2),
        "tail_s": round(wall - startup - phase, 2),
    }


def item_computation(pipeline: str, urls: list[str]) -> dict[str, Any]:
    """The item's own computation: neurobatch's loader and kernels on NumPy, per item.

    Run in a fresh process (:func:`benchmarks._measure.in_fresh_process`); see the module's
    docstring for exactly what runs. ``urls[0]`` runs once before the clock starts.

    Parameters
    ----------
    pipeline : str
        The pipeline file (its loader, preprocess and trials settings; OLS fit).
    urls : list of str
        The CSVs, each with its sidecar.

    Returns
    -------
    dict
        ``items``, ``cpu_s`` and ``wall_s`` (the whole loop), ``cpu_s_per_item``,
        ``wall_s_per_item`` and ``trials`` (cut in all).
    """
    config = load_config(pipeline)
    preprocess, trials, loader = config.preprocess, config.trials, config.loader
    if (
        not isinstance(loader, PhotometryCSVArguments)
        or preprocess.filter is None
        or preprocess.fit.method != "ols"
        or trials is None
    ):
        raise ValueError(
            f"{pipeline}: expected one photometry-csv loader, a filter, an OLS fit and trials"
        )
    low_pass = preprocess.filter

    def one(url: str) -> int:
        recording = load_photometry_csv(url, loader)
        fs = float(recording.attrs["sampling_rate"])
        sos = filters.butter_sos(low_pass.type, low_pass.cutoff_hz, fs=fs, order=low_pass.order)
        signal = filters.zero_phase_filter(recording["signal"].to_numpy(), sos)
        isosbestic = filters.zero_phase_filter(recording["isosbestic"].to_numpy(), sos)
        fit = fitting.fit_ols(isosbestic, signal, intercept=preprocess.fit.intercept)
        dff = correction.correct(signal, fit.reference(isosbestic), method=preprocess.correction)
        cut = windows.trials(
            dff, recording["time"].to_numpy(), events_of(recording), **trials.model_dump(), fs=fs
        )
        return int(cut.data.shape[0])

    one(urls[0])  # imports and first calls are not an item's cost
    cpu, wall = time.process_time(), time.perf_counter()
    n_trials = sum(one(url) for url in urls)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {
        "items": len(urls),
        "cpu_s": round(cpu, 3),
        "wall_s": round(wall, 3),
        "cpu_s_per_item": cpu / len(urls),
        "wall_s_per_item": wall / len(urls),
        "trials": n_trials,
    }


# --- the suite -------------------------------------------------------------------------------


def _spread(values: list[float]) -> float:
    """max / min - 1."""
    return max(values) / min(values) - 1


def _per_size(
    name: str, y_label: str, field: str, sizes: list[int], runs: dict[str, dict[int, Any]]
) -> dict[str, Any]:
    """A plot series of one measured field against the number of items, a line per tool."""
    return {
        "name": name,
        "x_label": "items",
        "y_label": y_label,
        "x": sizes,
        "lines": {k: [r[n][field] if n in r else None for n in sizes] for k, r in runs.items()},
    }


def run_suite(*, quick: bool, scratch: Path) -> dict[str, Any]:
    """Run the small-batch suite; see the module's docstring.

    Parameters
    ----------
    quick : bool
        The small sizes (20, 50, 200 items; 50 against PhoPro) instead of the full ones.
    scratch : pathlib.Path
        Where the inputs are generated and the runs write.

    Returns
    -------
    dict
        ``suite``, ``settings``, ``cases``, ``targets``, ``notes`` and ``series`` (the
        benchmarks' common shape), and ``runs``: every run's measurements.
    """
    sizes, compared, phopro_sizes = SIZES[quick], COMPARED[quick], PHOPRO_SIZES[quick]
    scratch = Path(scratch)
    data = generate(scratch, sizes)
    ours: dict[int, dict[str, Any]] = {}
    theirs: dict[int, dict[str, Any]] = {}
    for n in sizes:
        if n in phopro_sizes:
            theirs[n] = run_phopro(data[n], scratch / "runs" / f"phopro-{n}")
            print(f"small: PhoPro, {n} items: {theirs[n]['seconds']} s", file=sys.stderr)
        ours[n] = run_neurobatch(data[n], scratch / "runs" / f"neurobatch-{n}", n)
        print(f"small: neurobatch, {n} items: {ours[n]['seconds']} s", file=sys.stderr)
    urls = [str(p) for p in sorted(data[compared].glob("*.csv"))]
    own = in_fresh_process(
        item_computation,
        env=ONE_THREAD,
        pipeline=str(next((scratch / "runs" / f"neurobatch-{compared}").glob("*.yaml"))),
        urls=urls,
    )
    return summarise(quick=quick, ours=ours, theirs=theirs, own=own)


def summarise(
    *,
    quick: bool,
    ours: dict[int, dict[str, Any]],
    theirs: dict[int, dict[str, Any]],
    own: dict[str, Any],
) -> dict[str, Any]:
    """The suite's result from its measurements (those :func:`run_suite` returns in ``runs``).

    Parameters
    ----------
    quick : bool
        Which sizes were run.
    ours, theirs : dict of int to dict
        Each neurobatch and PhoPro run by batch size (:func:`run_neurobatch`,
        :func:`run_phopro`).
    own : dict
        The items' own computation (:func:`item_computation`).

    Returns
    -------
    dict
        See :func:`run_suite`.
    """
    sizes, compared, phopro_sizes = SIZES[quick], COMPARED[quick], PHOPRO_SIZES[quick]
    # 1. against PhoPro
    nb, pp = ours[compared], theirs[compared]
    speedup = pp["seconds"] / nb["seconds"]
    # 2. engine cost: the tree's CPU per item between the largest sizes, less the item's own
    largest = [{"items": n, "cpu_s": ours[n]["cpu_s"]} for n in sizes[-2:]]
    tree_cpu = slope(largest, "cpu_s")
    engine_cost = tree_cpu - own["cpu_s_per_item"]
    # 3. linearity and memory
    walls = [ours[n]["seconds"] for n in sizes]
    startups = [ours[n]["startup_s"] for n in sizes]
    added, added_after = (
        [(y[i + 1] - y[i]) / (sizes[i + 1] - sizes[i]) for i in range(len(sizes) - 1)]
        for y in (walls, [w - s for w, s in zip(walls, startups, strict=True)])
    )
    bend = added[-1] / added[0] - 1
    phase = [ours[n]["items_phase_s"] / n for n in sizes]
    peaks = [ours[n]["peak_mb"] for n in sizes]
    processes = [ours[n]["processes_seen"] for n in sizes]

    def each(values: list[Any], fmt: str) -> str:
        return ", ".join(f"{format(v, fmt)} at {n}" for n, v in zip(sizes, values, strict=True))

    clusters = each(processes, "d")
    targets = [
        {
            "name": f"{compared} recordings, speed-up over PhoPro",
            "value": round(speedup, 2),
            "unit": "x",
            "target": f">= {SPEEDUP_TARGET:g} x",
            "met": speedup >= SPEEDUP_TARGET,
            "why": f"PhoPro {pp['seconds']:.1f} s ({pp.get('import_s')} s importing), "
            f"neurobatch {nb['seconds']:.1f} s: start-up {nb['startup_s']:.1f} s, items "
            f"{nb['items_phase_s']:.1f} s, tail {nb['tail_s']:.1f} s; CPU {nb['cpu_s']:.1f} s "
            f"against PhoPro's {pp['cpu_s']:.1f} s",
        },
        {
            "name": "engine cost per item: CPU beyond the item's own computation",
            "value": round(1000 * engine_cost, 1),
            "unit": "ms",
            "target": f"<= {1000 * ENGINE_COST_TARGET_S:g} ms",
            "met": engine_cost <= ENGINE_COST_TARGET_S,
            "why": f"the process tree's CPU {1000 * tree_cpu:.0f} ms per item (os.wait4: "
            f"{largest[0]['cpu_s']:.1f} s at {sizes[-2]} items, {largest[1]['cpu_s']:.1f} s "
            f"at {sizes[-1]}) less the item's own computation, "
            f"{1000 * own['cpu_s_per_item']:.1f} ms (loader and kernels on NumPy, one "
            f"thread, {own['items']} items in a loop)",
        },
        {
            "name": f"time linear in items: seconds per added item, {sizes[-2]} -> {sizes[-1]} "
            f"against {sizes[0]} -> {sizes[1]}",
            "value": round(100 * bend, 1),
            "unit": "%",
            "target": f"within ±{100 * TOLERANCE:g} %",
            "met": abs(bend) <= TOLERANCE,
            "why": f"wall time {each(walls, '.1f')} s: "
            + ", ".join(
                f"{1000 * a:.1f} ms per item from {n0} to {n1} ({1000 * b:.1f} after the start-up)"
                for a, b, n0, n1 in zip(added, added_after, sizes, sizes[1:], strict=False)
            )
            + f"; start-up {each(startups, '.1f')} s; items phase "
            f"per item {each([1000 * v for v in phase], '.1f')} ms; tail "
            f"{each([ours[n]['tail_s'] for n in sizes], '.1f')} s; processes {clusters}",
        },
        {
            "name": "peak memory flat in items (driver and workers), max / min",
            "value": round(100 * _spread(peaks), 1),
            "unit": "%",
            "target": f"<= {100 * TOLERANCE:g} %",
            "met": _spread(peaks) <= TOLERANCE,
            "why": f"{each(peaks, 'd')} MB; processes {clusters} (1: the cluster in "
            "neurobatch's own process)",
        },
    ]

    def case(name: str, r: dict[str, Any], n: int) -> dict[str, Any]:
        return {
            "name": name,
            "seconds": r["seconds"],
            "peak_mb": r["peak_mb"],
            "cpu_s": r["cpu_s"],
            "s_per_item": round(r["seconds"] / n, 4),
            "vs_phopro": round(theirs[n]["seconds"] / r["seconds"], 2) if n in theirs else None,
            "trials": r["trials"],
            "processes": r["processes_seen"],
            "survivors": r["survivors"],
        }

    cases = []
    for n in sizes:
        if n in theirs:
            cases.append(case(f"PhoPro PhotometryPipeline (serial), {n} items", theirs[n], n))
        cases.append(case(f"neurobatch run (default cluster), {n} items", ours[n], n))
    cases.append(
        {
            "name": f"the items' own computation (loader + kernels, one thread), {own['items']} "
            "items",
            "seconds": own["wall_s"],
            "peak_mb": None,
            "cpu_s": own["cpu_s"],
            "s_per_item": round(own["wall_s_per_item"], 4),
            "trials": own["trials"],
        }
    )
    phopro_per_item = [theirs[n]["seconds"] / n for n in sizes if n in theirs]
    notes = [
        (
            "Times run from each command's start to its exit, imports included, for both "
            "tools; CPU is the whole process tree's (os.wait4)."
        ),
        "PhoPro's wall time per item: "
        + ", ".join(f"{theirs[n]['seconds'] / n:.3f} s at {n}" for n in sizes if n in theirs)
        + (
            f" ({100 * _spread(phopro_per_item):.0f} % apart; its start-up, imports "
            "included, is in every figure)"
            if len(phopro_per_item) > 1
            else ""
        ),
        (
            "Start-up: from the command's launch to the first item's start (run.json); the "
            "neurobatch cluster is the pipeline's default (no cluster section in the file)."
        ),
    ]
    alone = [n for n in sizes if ours[n]["processes_seen"] == 1]
    if alone and len(alone) < len(sizes):
        notes.append(
            "The default cluster ran in neurobatch's own process at "
            f"{', '.join(map(str, alone))} items and on worker processes at "
            f"{', '.join(str(n) for n in sizes if n not in alone)}: the start-ups differ by "
            "the workers' start, and the time per added item across that switch with them."
        )
    if pp["trials"] != nb["trials"]:
        notes.append(
            f"Trials at {compared} items: PhoPro {pp['trials']}, neurobatch {nb['trials']}: "
            "the first recording holds a trial with both levers pressed, for which PhoPro "
            "drops the whole experiment (check_overlap) and neurobatch that trial only."
        )
    labels = {"neurobatch": ours, "PhoPro": theirs}
    return {
        "suite": "small",
        "settings": {
            "items": sizes,
            "compared_at": compared,
            "phopro_items": phopro_sizes,
            "duration_s": DURATION_S,
            "rate_hz": RATE_HZ,
            "fit": FIT,
            "cluster": "default (no cluster section)",
        },
        "cases": cases,
        "targets": targets,
        "notes": notes,
        "runs": {"neurobatch": ours, "phopro": theirs, "item_computation": own},
        "series": [
            _per_size("wall time", "seconds", "seconds", sizes, labels),
            {
                "name": "wall time per item",
                "x_label": "items",
                "y_label": "seconds",
                "x": sizes,
                "lines": {
                    "neurobatch, items phase": phase,
                    "neurobatch": [ours[n]["seconds"] / n for n in sizes],
                    "PhoPro": [theirs[n]["seconds"] / n if n in theirs else None for n in sizes],
                },
            },
            _per_size("CPU (process tree)", "CPU seconds", "cpu_s", sizes, labels),
            _per_size("peak memory (process tree)", "MB", "peak_mb", sizes, labels),
        ],
    }
