"""Shared helpers of the store tests: a Recording dataset, committed stores, damaged chunks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from neurobatch.io.commit import commit, read_commit
from neurobatch.io.zarr import write_dataset

RNG = np.random.default_rng(20260101)


def recording(n: int = 10_000, *, rate: float = 1000.0) -> xr.Dataset:
    """A Recording dataset as a loader returns it (numpy-backed, ``<U`` event names)."""
    time = 12.5 + np.arange(n) / rate + RNG.normal(0.0, 1e-7, n)  # as read from a file
    return xr.Dataset(
        {
            "signal": ("time", RNG.normal(size=n)),
            "isosbestic": ("time", RNG.normal(size=n)),
            "event_time": ("event", np.array([12.6, 13.1, 13.100000000000001, 19.25])),
        },
        coords={
            "time": time,
            "event_name": ("event", np.array(["trial_cue", "lever1", "trial_cue", "shock"])),
        },
        attrs={
            "sampling_rate": (n - 1) / (time[-1] - time[0]),
            "event_names": ["trial_cue", "lever1", "lever2", "shock"],
            "source": "memory://lab/experiment_1.csv",
            "n_samples": n,
            "subject": {"id": "m12", "weights_g": [21.5, 22.0], "implant": None},
            "fit": {"slope": np.float64(0.75), "converged": True, "n_iter": np.int64(7)},
        },
    )


CHUNKED = 24 * 4096  # signal, isosbestic and time: 24 bytes a sample, so 4096-sample chunks


def flip_byte(path: Path, *, at: int = 100) -> None:
    """Change one byte of a file in place; its size stays the same."""
    content = bytearray(path.read_bytes())
    content[at] ^= 0xFF
    path.write_bytes(bytes(content))


def committed(ds: xr.Dataset, url: str) -> dict[str, Any]:
    """Write ``ds`` in 4096-sample chunks, commit it with its inventory, return the marker."""
    write_dataset(ds, url, chunk_memory=CHUNKED)
    commit(url, {"params": "abc"}, arrays=True)
    marker = read_commit(url)
    assert marker is not None
    return dict(marker)
