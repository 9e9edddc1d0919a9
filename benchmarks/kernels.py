"""Kernel benchmarks: blocked operators against the whole-array and per-spike references.

Run ``python -m benchmarks.kernels`` (``--quick`` for a smaller run). Each case runs in a
fresh process, so its peak resident memory is its own; the comparisons run side by side in
one invocation and the ratios are printed, then written to ``benchmarks/results/kernels.json``.

- zero-phase band-pass (300-6000 Hz, 30 kHz, 32 channels): ``scipy.signal.sosfiltfilt`` on
  the whole array on one core, against the blocked filter on the threaded scheduler with
  one thread per core; the ideal is the one-core rate times the number of cores.
- robust isosbestic fit on one hour at 1 kHz (3.6 M samples): statsmodels ``RLM`` with
  ``TukeyBiweight(c=3)`` (PhoPro's default fit), against the blocked IRLS; and the IRLS
  kernel's CPU seconds per hour of recording over several synthetic hours (target <= 2 s).
- spike-triggered average: a per-spike Python loop against the blocked STA.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._measure import measure

RESULTS = Path(__file__).parent / "results"


# --- inputs (deterministic) -----------------------------------------------------------------


def _warm_up() -> None:
    """Pay the one-off costs (imports, dask's first compute) before anything is timed."""
    import dask.array as da

    import neurobatch.engine.blocked  # noqa: F401

    da.ones(4, chunks=2).sum().compute(scheduler="threads")


def ephys(seconds: float, channels: int) -> np.ndarray:
    _warm_up()
    rng = np.random.default_rng(0)
    n = int(seconds * 30_000)
    return rng.standard_normal((n, channels)).cumsum(axis=0) * 0.01 + rng.standard_normal(
        (n, channels)
    )


def photometry(seconds: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    from neurobatch import synthetic
    from neurobatch.kernels import filters

    _warm_up()
    rec = synthetic.photometry_recording(duration_s=seconds, fs=1000.0, seed=seed)
    sos = filters.butter_sos("lowpass", 3.0, fs=1000.0)
    return (
        filters.zero_phase_filter(rec.isosbestic.values, sos),
        filters.zero_phase_filter(rec.signal.values, sos),
    )


def photometry_seeds(seconds: float, seeds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [photometry(seconds, seed) for seed in range(seeds)]


def movie(n_frames: int) -> dict[str, Any]:
    from neurobatch import synthetic

    _warm_up()
    ds = synthetic.movie_with_spikes(
        n_frames=n_frames, height=32, width=32, n_units=200, n_lags=10, mean_rate_hz=25.0
    )
    return {
        "frames": ds.frames.values.astype(np.float64),
        "spike_times": ds.spike_time.values,
        "units": ds.unit.values,
        "fps": ds.attrs["fps"],
        "onset": ds.attrs["stimulus_onset"],
    }


# --- cases ----------------------------------------------------------------------------------


def filter_scipy(x: np.ndarray) -> dict[str, Any]:
    import scipy.signal

    from neurobatch.kernels import filters

    sos = filters.butter_sos("bandpass", (300.0, 6000.0), fs=30_000.0, order=3)
    scipy.signal.sosfiltfilt(sos, x, axis=0, padtype="odd")  # single-threaded
    return {"samples": x.size}


def filter_blocked(x: np.ndarray, *, workers: int) -> dict[str, Any]:
    import dask.array as da

    from neurobatch.engine import blocked
    from neurobatch.kernels import filters

    sos = filters.butter_sos("bandpass", (300.0, 6000.0), fs=30_000.0, order=3)
    lazy = da.from_array(x, chunks=(2**18, -1))
    out = np.empty_like(x)
    da.store(blocked.zero_phase_filter(lazy, sos), out, scheduler="threads", num_workers=workers)
    return {"samples": x.size}


def irls_statsmodels(data: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
    import statsmodels.api as sm

    isosbestic, signal = data
    fit = sm.RLM(signal, sm.add_constant(isosbestic), M=sm.robust.norms.TukeyBiweight(c=3)).fit()
    return {"samples": signal.size, "slope": float(fit.params[1])}


def irls_blocked(data: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
    import dask
    import dask.array as da

    from neurobatch.engine import blocked

    isosbestic, signal = data
    with dask.config.set(scheduler="threads"):
        fit = blocked.fit_irls(
            da.from_array(isosbestic, chunks=2**19), da.from_array(signal, chunks=2**19)
        )
    return {"samples": signal.size, "slope": fit.slope, "iterations": fit.n_iter}


def irls_per_hour(data: list[tuple[np.ndarray, np.ndarray]], *, hours: float) -> dict[str, Any]:
    """The whole-array IRLS kernel on each recording, with PhoPro's ``maxiter`` (1000): CPU
    seconds per hour of recording (the fit alone, on this process's one thread)."""
    from neurobatch.kernels import fitting

    per_hour, iterations, converged = [], [], 0
    for isosbestic, signal in data:
        start = time.process_time()
        fit = fitting.fit_irls(isosbestic, signal, maxiter=1000)
        per_hour.append((time.process_time() - start) / hours)
        iterations.append(fit.n_iter)
        converged += fit.converged
    return {
        "recordings": len(data),
        "cpu_s_per_hour": per_hour,
        "median_s_per_hour": statistics.median(per_hour),
        "mean_s_per_hour": statistics.mean(per_hour),
        "max_s_per_hour": max(per_hour),
        "iterations": iterations,
        "converged": converged,
    }


def sta_loop(data: dict[str, Any], *, n_lags: int) -> dict[str, Any]:
    frames, fps, onset = data["frames"], data["fps"], data["onset"]
    totals: dict[int, np.ndarray] = {}
    counts: dict[int, int] = {}
    for t, unit in zip(data["spike_times"], data["units"], strict=True):
        frame = int(np.floor((t - onset) * fps))
        if frame - (n_lags - 1) < 0 or frame >= len(frames):
            continue
        window = frames[frame - n_lags + 1 : frame + 1][::-1]
        if unit in totals:
            totals[unit] += window
            counts[unit] += 1
        else:
            totals[unit] = window.copy()
            counts[unit] = 1
    return {"spikes": len(data["spike_times"]), "units": len(totals)}


def sta_blocked(data: dict[str, Any], *, n_lags: int, workers: int) -> dict[str, Any]:
    import dask.array as da

    from neurobatch.engine import blocked

    result = blocked.blocked_sta(
        da.from_array(data["frames"], chunks=(2000, -1, -1)),
        data["spike_times"],
        data["units"],
        fps=data["fps"],
        n_lags=n_lags,
        onset=data["onset"],
    )
    result.sta.compute(scheduler="threads", num_workers=workers)
    return {"spikes": len(data["spike_times"]), "units": int(result.bins.n_units)}


# --- driver ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.kernels", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller inputs (about a minute)")
    args = parser.parse_args(argv)
    workers = len(os.sched_getaffinity(0))
    ephys_s, ephys_ch = (10.0, 16) if args.quick else (30.0, 32)
    photometry_s = 600.0 if args.quick else 3600.0
    frames = 5_000 if args.quick else 20_000
    n_lags = 10
    print(
        f"neurobatch kernel benchmarks on {platform.processor() or platform.machine()}, "
        f"{workers} core(s); quick={args.quick}",
        flush=True,
    )

    ephys_input = {"prepare": ephys, "prepare_kwargs": {"seconds": ephys_s, "channels": ephys_ch}}
    scipy_filter = measure(filter_scipy, **ephys_input)
    blocked_filter = measure(filter_blocked, workers=workers, **ephys_input)
    photometry_input = {"prepare": photometry, "prepare_kwargs": {"seconds": photometry_s}}
    rlm = measure(irls_statsmodels, **photometry_input)
    irls = measure(irls_blocked, **photometry_input)
    seeds = 4 if args.quick else 10
    hours = measure(
        irls_per_hour,
        prepare=photometry_seeds,
        prepare_kwargs={"seconds": photometry_s, "seeds": seeds},
        hours=photometry_s / 3600,
    )
    movie_input = {"prepare": movie, "prepare_kwargs": {"n_frames": frames}}
    loop = measure(sta_loop, n_lags=n_lags, **movie_input)
    sta = measure(sta_blocked, n_lags=n_lags, workers=workers, **movie_input)

    scipy_rate = scipy_filter["samples"] / scipy_filter["seconds"]
    blocked_rate = blocked_filter["samples"] / blocked_filter["seconds"]
    rows = [
        (
            f"zero-phase band-pass, {ephys_s:g} s x {ephys_ch} ch at 30 kHz",
            f"scipy whole array, 1 core: {scipy_rate / 1e6:.1f} M samples/s",
            f"blocked, {workers} threads: {blocked_rate / 1e6:.1f} M samples/s",
            (
                f"{blocked_rate / scipy_rate:.2f}x scipy; "
                f"{blocked_rate / (workers * scipy_rate):.0%} of ideal ({workers} x 1 core)"
            ),
        ),
        (
            f"robust IRLS fit, {photometry_s / 3600:g} h at 1 kHz ({irls['samples']:,} samples)",
            f"statsmodels RLM: {rlm['seconds']:.1f} s, peak {rlm['peak_mb']:.0f} MB",
            (
                f"blocked IRLS: {irls['seconds']:.2f} s ({irls['iterations']} iterations), "
                f"peak {irls['peak_mb']:.0f} MB (inputs+imports {irls['baseline_mb']:.0f} MB)"
            ),
            (
                f"{rlm['seconds'] / irls['seconds']:.0f}x faster; slopes {rlm['slope']:.6f} / "
                f"{irls['slope']:.6f}"
            ),
        ),
        (
            f"IRLS kernel per hour of recording, {seeds} recordings (seeds 0-{seeds - 1})",
            "target: <= 2 s per hour",
            (
                f"CPU {hours['median_s_per_hour']:.2f} s/h median, "
                f"{hours['mean_s_per_hour']:.2f} mean, {hours['max_s_per_hour']:.2f} max; "
                f"{hours['converged']}/{seeds} converged, iterations {hours['iterations']}"
            ),
            (
                f"{'met' if hours['median_s_per_hour'] <= 2.0 else 'missed'}: the median hour "
                f"takes {hours['median_s_per_hour'] / 2.0:.0%} of the 2 s"
            ),
        ),
        (
            (
                f"spike-triggered average, {frames:,} frames 32x32, {sta['units']} units, "
                f"{sta['spikes']:,} spikes, {n_lags} lags"
            ),
            f"per-spike loop: {loop['seconds']:.2f} s",
            f"blocked STA, {workers} threads: {sta['seconds']:.2f} s",
            f"{loop['seconds'] / sta['seconds']:.1f}x faster",
        ),
    ]
    for name, reference, ours, ratio in rows:
        print(f"\n{name}\n  {reference}\n  {ours}\n  -> {ratio}", flush=True)
    results = {
        "machine": {"cores": workers, "platform": platform.platform()},
        "quick": args.quick,
        "filter": {"scipy": scipy_filter, "blocked": blocked_filter},
        "irls": {"statsmodels": rlm, "blocked": irls, "kernel_per_hour": hours},
        "sta": {"loop": loop, "blocked": sta},
    }
    RESULTS.mkdir(exist_ok=True)
    name = "kernels-quick.json" if args.quick else "kernels.json"
    (RESULTS / name).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
