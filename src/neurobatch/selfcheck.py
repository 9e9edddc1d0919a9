"""The self-check: every blocked operator on a cluster against its whole-array kernel.

It simulates photometry recordings and a stimulus movie with planted receptive fields,
runs the chain a photometry lab runs (zero-phase low-pass, isosbestic fit, dF/F, trial
windows) and the receptive-field reduction a vision lab runs, block by block on the
cluster, and reports for each step how far the blocked result is from the same kernel run
on the whole in-memory array.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import dask.base
import numpy as np
from distributed import Client

from neurobatch import synthetic
from neurobatch.engine import blocked
from neurobatch.kernels import correction, filters, fitting, sta, trials
from neurobatch.kernels import windows as window_kernels

logger = logging.getLogger(__name__)

__all__ = ["Check", "run_check"]


@dataclass(frozen=True)
class Check:
    """One demo step: the blocked result against the whole-array kernel.

    Attributes
    ----------
    step : str
        What ran.
    detail : str
        Its size and settings.
    seconds : float
        Wall time of the blocked run on the cluster.
    deviation : float
        Largest deviation from the whole-array kernel, relative to the result's scale.
    tolerance : float
        The largest deviation allowed.
    """

    step: str
    detail: str
    seconds: float
    deviation: float
    tolerance: float

    @property
    def ok(self) -> bool:
        """Whether the deviation is within the tolerance."""
        return bool(self.deviation <= self.tolerance)


def run_check(
    client: Client,
    workdir: str | Path,
    *,
    n_recordings: int = 2,
    duration_s: float = 600.0,
    fs: float = 1000.0,
    chunk_samples: int = 2**17,
    seed: int = 0,
    progress: Callable[[Check], None] | None = None,
) -> list[Check]:
    """Run every blocked operator on ``client``'s cluster and compare with the kernels.

    Parameters
    ----------
    client : distributed.Client
        The cluster to compute on.
    workdir : str or Path
        Folder for the simulated recordings' Zarr stores, which the workers read.
    n_recordings : int, default 2
        Number of simulated photometry recordings.
    duration_s : float, default 600
        Length of each recording in seconds.
    fs : float, default 1000
        Sampling rate in Hz.
    chunk_samples : int, default 131072
        Chunk length along time of the blocked arrays.
    seed : int, default 0
        Seed of the first recording (the others follow).
    progress : callable, optional
        Called with each :class:`Check` as soon as it is done.

    Returns
    -------
    list of Check
        One per step and recording, then the spike-triggered average.
    """
    checks: list[Check] = []

    def record(check: Check) -> None:
        checks.append(check)
        logger.info("%s (%s): deviation %.2e", check.step, check.detail, check.deviation)
        if progress is not None:
            progress(check)

    workdir = Path(workdir)
    with dask.config.set(scheduler=client.get):
        for i in range(n_recordings):
            rec = synthetic.photometry_recording(duration_s=duration_s, fs=fs, seed=seed + i)
            store = workdir / f"{rec.attrs['subject']}.zarr"
            _write_zarr(rec[["signal", "isosbestic"]], store, chunks=(chunk_samples,))
            for check in _photometry_checks(rec, store, fs=fs):
                record(check)
        record(_sta_check(workdir / "movie.zarr", seed=seed))
    return checks


def _photometry_checks(rec: Any, store: Path, *, fs: float) -> list[Check]:
    name = rec.attrs["subject"]
    n = rec.sizes["time"]
    signal = rec.signal.values
    isosbestic = rec.isosbestic.values
    sos = filters.butter_sos("lowpass", 3.0, fs=fs, order=4)
    lazy_signal = da.from_zarr(store, component="signal")
    lazy_iso = da.from_zarr(store, component="isosbestic")
    checks = []

    start = time.perf_counter()
    filtered_signal, filtered_iso = dask.base.persist(
        blocked.zero_phase_filter(lazy_signal, sos), blocked.zero_phase_filter(lazy_iso, sos)
    )
    whole_signal = filters.zero_phase_filter(signal, sos)
    whole_iso = filters.zero_phase_filter(isosbestic, sos)
    checks.append(
        Check(
            "zero-phase low-pass 3 Hz",
            f"{name}: 2 x {n:,} samples, {len(lazy_signal.chunks[0])} blocks",
            time.perf_counter() - start,
            _relative_deviation(filtered_signal.compute(), whole_signal),
            1e-9,
        )
    )

    for method, kernel_fit, blocked_fit in (
        ("ols", fitting.fit_ols, blocked.fit_ols),
        ("irls", fitting.fit_irls, blocked.fit_irls),
    ):
        start = time.perf_counter()
        fit = blocked_fit(filtered_iso, filtered_signal)
        seconds = time.perf_counter() - start
        reference = kernel_fit(whole_iso, whole_signal)
        coefficients = np.array([fit.intercept, fit.slope])
        expected = np.array([reference.intercept, reference.slope])
        checks.append(
            Check(
                f"isosbestic fit ({method})",
                f"{name}: slope {fit.slope:.4f}, R² {fit.r_squared:.3f}",
                seconds,
                float(np.abs(coefficients - expected).max() / np.abs(expected).max()),
                1e-9,
            )
        )

    start = time.perf_counter()
    lazy_reference = fit.intercept + fit.slope * filtered_iso
    dff = da.map_blocks(
        correction.correct, filtered_signal, lazy_reference, method="dff", dtype=np.float64
    ).persist()
    whole_dff = correction.correct(whole_signal, reference.reference(whole_iso), method="dff")
    plan = trials.plan_trials(
        rec.time.values,
        _events(rec),
        align_to="trial_cue",
        center_on=["lever1", "lever2"],
        bounds_s=(-4.0, 8.0),
        baseline_bounds_s=(-4.0, -1.0),
        tolerances_s={"lever1": (2.0, 4.0), "lever2": (2.0, 4.0), "shock": None},
        normalization="zscore",
    )
    windows = blocked.extract_trials(dff, plan).compute()
    checks.append(
        Check(
            "dF/F + trial windows",
            f"{name}: {plan.n_trials} trials x {plan.rel_time.size} samples, z-scored",
            time.perf_counter() - start,
            _relative_deviation(windows, window_kernels.extract_trials(whole_dff, plan)),
            1e-9,
        )
    )
    return checks


def _sta_check(store: Path, *, seed: int) -> Check:
    n_lags = 8
    movie = synthetic.movie_with_spikes(
        n_frames=30_000, height=16, width=16, n_units=40, n_lags=n_lags, seed=seed
    )
    _write_zarr(movie[["frames"]], store, chunks=(4096, 16, 16))
    fps = movie.attrs["fps"]
    onset = movie.attrs["stimulus_onset"]
    frames = movie.frames.values
    spike_times = movie.spike_time.values
    units = movie.unit.values
    start = time.perf_counter()
    result = blocked.blocked_sta(
        da.from_zarr(store, component="frames"),
        spike_times,
        units,
        fps=fps,
        n_lags=n_lags,
        onset=onset,
    )
    averages = result.sta.compute()
    seconds = time.perf_counter() - start
    whole = sta.spike_triggered_average(
        spike_times, units, frames, fps=fps, n_lags=n_lags, onset=onset
    )
    planted = movie.receptive_field.values.reshape(movie.sizes["unit_id"], -1)
    recovered = averages.reshape(len(averages), -1)
    correlation = np.median(
        [np.corrcoef(p, r)[0, 1] for p, r in zip(planted, recovered, strict=True)]
    )
    return Check(
        "spike-triggered average",
        f"{len(averages)} units, {spike_times.size:,} spikes, {frames.shape[0]:,} frames "
        f"16x16, {n_lags} lags; planted-RF correlation {correlation:.2f}",
        seconds,
        _relative_deviation(averages, whole.sta),
        # a float32 movie is multiplied in float32 (the blocked STA's products, as the
        # kernel's): both agree to float32 precision of the result's scale
        1e-6,
    )


def _write_zarr(dataset: Any, store: Path, *, chunks: tuple[int, ...]) -> None:
    # written by the driver from memory: a dask-chunked in-memory dataset would ship its
    # data to the cluster inside the graph
    encoding = {name: {"chunks": chunks} for name in dataset.data_vars}
    dataset.to_zarr(store, mode="w", consolidated=False, encoding=encoding)


def _events(rec: Any) -> dict[str, np.ndarray]:
    # every event the simulation can emit, even one that a short recording never shows
    names = rec.event_name.values
    return {
        name: rec.event_time.values[names == name]
        for name in ("trial_cue", "lever1", "lever2", "shock")
    }


def _relative_deviation(actual: np.ndarray, expected: np.ndarray) -> float:
    scale = max(float(np.nanmax(np.abs(expected))), np.finfo(np.float64).tiny)
    return float(np.nanmax(np.abs(actual - expected)) / scale)
