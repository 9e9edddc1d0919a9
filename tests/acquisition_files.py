"""What the tests of the acquisition-system loaders share: a recording to write, the same data
in PhoPro's CSV layout, and a pipeline run of each to compare."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from distributed import Client
from numpy.typing import NDArray


@dataclass
class Planted:
    """A recording as the tests plant it: times, channels, and event onsets (sample indices)."""

    time: NDArray[np.float64]
    signal: NDArray[np.float64]
    isosbestic: NDArray[np.float64]
    onsets: dict[str, NDArray[np.intp]]

    def levels(self, name: str, *, width: int = 3) -> NDArray[np.uint8]:
        """A digital line high for ``width`` samples from each onset of ``name``."""
        line = np.zeros(self.time.size, dtype=np.uint8)
        for i in self.onsets[name]:
            line[i : i + width] = 1
        return line

    def event_times(self, name: str) -> NDArray[np.float64]:
        return self.time[self.onsets[name]]


def planted(
    n: int, fs: float, *, seed: int, events: Sequence[str] = ("cue", "lever"), t0: float = 0.0
) -> Planted:
    """A photometry recording: a slow decay plus noise, the isosbestic tracking it, and
    events every few seconds (trial cues, then a lever press 2-4 s after some)."""
    rng = np.random.default_rng(seed)
    time = t0 + np.arange(n) / fs
    bleach = np.exp(-time / 300.0)
    isosbestic = 0.9 + 0.1 * bleach + 0.002 * rng.standard_normal(n)
    signal = 1.5 + 0.8 * (isosbestic - 0.9) + 0.01 * rng.standard_normal(n)
    step = int(8 * fs)
    cues = np.arange(int(4 * fs), n - int(8 * fs), step) + rng.integers(0, int(fs), size=1)
    onsets = {events[0]: cues}
    if len(events) > 1:
        presses = cues[::2] + rng.integers(int(2.2 * fs), int(3.8 * fs), size=cues[::2].size)
        onsets[events[1]] = presses
    return Planted(time, signal, isosbestic, onsets)


def write_phopro_csv(
    path: Path,
    time: NDArray[np.float64],
    signal: NDArray[np.float64],
    isosbestic: NDArray[np.float64],
    events: Mapping[str, NDArray[np.float64]],
) -> Path:
    """The same recording in PhoPro's CSV layout: one 0/1 flag column per event."""
    frame = pd.DataFrame({"time": time, "signal": signal, "isosbestic": isosbestic})
    for name, times in events.items():
        rows = np.searchsorted(time, times)
        if not np.array_equal(time[rows], times):
            raise ValueError(f"event {name!r} is not on a sample time")
        flags = np.zeros(time.size, dtype=np.int8)
        flags[rows] = 1
        frame[name] = flags
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path


def _config(data: Path, out: Path, pattern: str, loader: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "name": "acquisition",
        "input": {"url": str(data), "pattern": pattern},
        "loader": dict(loader),
        "preprocess": {"filter": {"cutoff_hz": 3.0, "order": 4}, "fit": "ols"},
        "trials": {
            "align_to": "cue",
            "center_on": ["lever"],
            "bounds_s": [-2.0, 3.0],
            "tolerances_s": {"lever": [2.0, 4.0]},
        },
        "output": {"url": str(out), "formats": ["zarr"]},
    }


def run_both(
    native: Path,
    pattern: str,
    loader: Mapping[str, Any],
    csvs: Path,
    out: Path,
    client: Client,
) -> tuple[xr.Dataset, xr.Dataset]:
    """Run the same pipeline on the native files and on their PhoPro-layout CSVs."""
    from neurobatch.engine.run import Pipeline  # only the end-to-end tests need the engine

    trials = []
    for data, pat, load, name in (
        (native, pattern, loader, "native"),
        (csvs, "*.csv", {"format": "photometry-csv", "event_cols": ["cue", "lever"]}, "csv"),
    ):
        summary = Pipeline(_config(data, out / name, pat, load)).run(client=client, progress=False)
        assert summary.n_failed == 0 and summary.n_done == 2, summary.items
        trials.append(xr.open_zarr(out / name / "trials.zarr").load())
    return trials[0], trials[1]


def assert_same_trials(native: xr.Dataset, csv: xr.Dataset) -> None:
    """The trials of the native files are those of the CSVs: values, events, ids."""
    assert native.sizes["trial"] == csv.sizes["trial"] > 0
    for name in ("dff", "rel_time", "trial_num", "experiment_id", "cue", "lever"):
        xr.testing.assert_equal(native[name], csv[name])
