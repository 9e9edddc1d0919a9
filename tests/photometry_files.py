"""Photometry recordings in PhoPro's layout, shared by the tests of the photometry loaders."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import xarray as xr
from numpy.typing import NDArray

EVENTS = ("trial_cue", "lever1", "lever2", "shock")


FlagStyle = Literal["bool", "int", "float", "lower", "sparse"]


def _flags(mask: NDArray[np.bool_], style: FlagStyle) -> Any:
    if style == "bool":
        return mask  # pandas writes True/False, as PhoPro's write_csv does
    if style == "int":
        return mask.astype(np.int8)
    if style == "float":
        return mask.astype(np.float64)  # 1.0 / 0.0
    if style == "lower":
        return np.where(mask, "true", "false")
    return np.where(mask, "1", "")  # empty = False


def recording_frame(
    n: int = 2000,
    fs: float = 100.0,
    *,
    seed: int = 0,
    events: Sequence[str] = EVENTS,
    style: FlagStyle = "bool",
    isosbestic: bool = True,
) -> tuple[pd.DataFrame, dict[str, NDArray[np.float64]]]:
    """A recording as PhoPro's wide frame, and the planted event times."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / fs
    frame = pd.DataFrame({"time": t, "signal": 1.6 + 0.01 * rng.standard_normal(n)})
    if isosbestic:
        frame["isosbestic"] = 0.9 + 0.01 * rng.standard_normal(n)
    planted = {}
    for k, name in enumerate(events):
        rows = np.sort(rng.choice(n, size=3 + k, replace=False))
        mask = np.zeros(n, dtype=bool)
        mask[rows] = True
        frame[name] = _flags(mask, style)
        planted[name] = t[rows]
    return frame, planted


def write_csv(path: Path, frame: pd.DataFrame, *, index: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=index)
    return path


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def events_of(ds: xr.Dataset, name: str) -> NDArray[np.float64]:
    return np.asarray(ds.event_time.values[ds.event_name.values == name])


def check_recording_shape(ds: xr.Dataset) -> None:
    """The Recording contract of IFACE.md: dtypes, sorted events, JSON-safe attrs."""
    assert ds.time.dtype == np.float64 and ds.signal.dtype == np.float64
    assert ds.signal.dims == ("time",)
    if "isosbestic" in ds:
        assert ds.isosbestic.dtype == np.float64
    assert ds.event_time.dims == ("event",) and ds.event_time.dtype == np.float64
    assert np.all(np.diff(ds.event_time.values) >= 0)
    assert set(ds.event_name.values.tolist()) <= set(ds.attrs["event_names"])
    assert ds.attrs["n_samples"] == ds.sizes["time"]
    json.dumps(ds.attrs)
