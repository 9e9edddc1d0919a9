"""The ``.h5ad`` writer: AnnData's own against the h5py blocks neurobatch wrote before.

``python -m benchmarks.h5ad_writer [--trials 200000] [--samples 16000] [--repeat 2]
[--scratch DIR]``

A trials store of ``--trials`` x ``--samples`` float32 windows (and the per-trial columns of
a photometry run) is written first; then each writer makes ``trials.h5ad`` from it in a
fresh process (:func:`benchmarks._measure.measure`), ``--repeat`` times, alternately and
first in turn, each into a new file (as a run writes it, into its staging folder: the last
one is removed first; replacing a file of that size costs the kernel seconds), the disk's
dirty pages written out (``os.sync``) before each:

- ``h5py-blocks``: the writer of neurobatch up to commit 1eef4ab: ``obs``, ``var`` and
  ``uns`` written by AnnData, then ``X`` created with h5py and filled block by block of
  trials (16 MiB of float64 each), each block computed from the store on the threaded
  scheduler;
- ``anndata``: :func:`neurobatch.io.export.write_h5ad` now: ``AnnData.write_h5ad`` with
  ``X`` a dask array in the same blocks, which AnnData streams into the file with
  ``dask.array.store`` (threaded scheduler, one block per thread at a time).

Reported per case: seconds (the write alone) and the resident memory of its process, sampled
every 20 ms during the write: its peak, and that peak above the resident memory when the
write began (after the imports). Both files are then compared: ``obs``, ``var`` and
``uns`` as AnnData reads them, ``X`` block by block, and ``X`` against the store. The
figures go to ``benchmarks/results/h5ad_writer.json`` and are printed; the store and the
files need about 3 x trials x samples x 4 bytes under ``--scratch``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from benchmarks._measure import TreeSampler, measure

#: Trials per appended item (a 1 h photometry recording has a few hundred).
ITEM_TRIALS = 2000
#: Bytes of X per block, as export.write_h5ad's default.
CHUNK_MEMORY = 16 * 2**20
RESULTS = Path(__file__).parent / "results"


def make_store(url: str, *, n_trials: int, n_samples: int) -> None:
    """A combined trials store of float32 windows, appended item by item."""
    from neurobatch.io.trials_store import append_trials

    rng = np.random.default_rng(19)
    rel_time = (np.arange(n_samples) - n_samples // 2) / 1000.0
    for k, start in enumerate(range(0, n_trials, ITEM_TRIALS)):
        n = min(ITEM_TRIALS, n_trials - start)
        dff = rng.standard_normal((n, n_samples), dtype=np.float32)
        dff += np.sin(rel_time, dtype=np.float32)
        item = xr.Dataset(
            {"dff": (("trial", "rel_time"), dff)},
            coords={
                "rel_time": rel_time,
                "trial_num": ("trial", np.arange(1, n + 1)),
                "start_time": ("trial", 30.0 * np.arange(n)),
                "stop_time": ("trial", 30.0 * np.arange(n) + 16.0),
                "trial_cue": ("trial", np.zeros(n)),
                "lever1": ("trial", np.where(rng.random(n) < 0.3, np.nan, rng.uniform(2, 4, n))),
                "item_id": ("trial", np.array([f"experiment_{k:03d}"] * n, dtype=object)),
                "experiment_id": ("trial", np.array([f"experiment_{k:03d}"] * n, dtype=object)),
                "subject": ("trial", np.array([f"m{k % 7}"] * n, dtype=object)),
            },
            attrs={"processed_variable": "dff", "sampling_rate": 1000.0},
        )
        append_trials(item, url)


def _ready(url: str) -> str:
    """The preparation of a case (run in its fresh process): the imports, nothing read."""
    import anndata  # noqa: F401
    import h5py  # noqa: F401

    import neurobatch.io.export  # noqa: F401

    return url


def write_h5py_blocks(url: str, *, path: str) -> dict[str, Any]:
    """neurobatch's writer up to commit 1eef4ab: AnnData writes obs, var and uns, then X
    is filled block by block with h5py (each block computed on the threaded scheduler)."""
    import anndata as ad
    import dask
    import h5py

    from neurobatch.io.export import _H5AD_CHUNK_MEMORY, _anndata
    from neurobatch.io.trials_store import open_trials

    trials = open_trials(url, chunk_memory=_H5AD_CHUNK_MEMORY)
    lazy = _anndata(trials, None, _H5AD_CHUNK_MEMORY)  # the same obs, var, uns and blocks
    ad.AnnData(obs=lazy.obs, var=lazy.var, uns=lazy.uns).write_h5ad(
        path, convert_strings_to_categoricals=False
    )
    with h5py.File(path, "r+") as f, dask.config.set(scheduler="threads"):
        x = f.create_dataset("X", shape=lazy.X.shape, dtype=lazy.X.dtype)
        x.attrs["encoding-type"] = "array"
        x.attrs["encoding-version"] = "0.2.0"
        start = 0
        for rows in lazy.X.chunks[0]:
            x[start : start + rows] = lazy.X[start : start + rows].compute()
            start += rows
    return {"blocks": len(lazy.X.chunks[0])}


def write_anndata(url: str, *, path: str) -> dict[str, Any]:
    """neurobatch's writer now: ``AnnData.write_h5ad`` streaming a dask X."""
    from neurobatch.io.export import write_h5ad

    write_h5ad(url, path)
    return {}


WRITERS = {"h5py-blocks": write_h5py_blocks, "anndata": write_anndata}


def write_sampled(url: str, *, writer: str, path: str) -> dict[str, Any]:
    """One writer, its process's resident memory sampled while it writes."""
    with TreeSampler(interval_s=0.02) as sampler:
        extra = WRITERS[writer](url, path=path)
    return {"sampled_peak_mb": sampler.peak_mb, "start_mb": sampler.baseline_mb, **extra}


def compare(url: str, paths: dict[str, str]) -> dict[str, Any]:
    """Both files hold the same AnnData, and their X the store's values (block by block)."""
    import anndata as ad
    import h5py
    import pandas as pd

    from neurobatch.io.trials_store import open_trials

    (name_a, a), (name_b, b) = paths.items()
    first, second = ad.read_h5ad(a, backed="r"), ad.read_h5ad(b, backed="r")
    pd.testing.assert_frame_equal(first.obs, second.obs)
    pd.testing.assert_frame_equal(first.var, second.var)
    assert json.dumps(first.uns, default=str) == json.dumps(second.uns, default=str)
    first.file.close()
    second.file.close()
    dff = open_trials(url).dff
    step = 2000
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        assert fa["X"].dtype == fb["X"].dtype == np.float32
        for start in range(0, fa["X"].shape[0], step):
            block = fa["X"][start : start + step]
            np.testing.assert_array_equal(block, fb["X"][start : start + step])
            if start in (0, (fa["X"].shape[0] - 1) // step * step):
                np.testing.assert_array_equal(block, dff[start : start + step].values)
    return {"equal": f"{name_a} and {name_b}: obs, var, uns and X equal; X equal to the store"}


def run(*, n_trials: int, n_samples: int, repeat: int, scratch: Path) -> dict[str, Any]:
    """Make the store, time each writer ``repeat`` times alternately, compare the files."""
    url = str(scratch / "trials.zarr")
    start = time.perf_counter()
    make_store(url, n_trials=n_trials, n_samples=n_samples)
    print(f"store: {n_trials} x {n_samples} float32 in {time.perf_counter() - start:.1f} s")
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in WRITERS}
    paths = {name: str(scratch / f"{name}.h5ad") for name in WRITERS}
    for attempt in range(repeat):
        order = list(WRITERS) if attempt % 2 == 0 else list(reversed(WRITERS))
        for name in order:
            Path(paths[name]).unlink(missing_ok=True)
            os.sync()  # the last write's pages reach the disk before this one starts
            result = measure(
                write_sampled,
                prepare=_ready,
                prepare_kwargs={"url": url},
                writer=name,
                path=paths[name],
            )
            runs[name].append(result)
            print(
                f"{name} #{attempt + 1}: {result['seconds']:.1f} s, peak "
                f"{result['sampled_peak_mb']:.0f} MB resident, "
                f"{result['sampled_peak_mb'] - result['start_mb']:.0f} MB above its start",
                flush=True,
            )
    cases = [
        {
            "name": name,
            "seconds": round(statistics.median(r["seconds"] for r in results), 2),
            "seconds_each": [round(r["seconds"], 2) for r in results],
            "peak_mb": round(max(r["sampled_peak_mb"] for r in results), 1),
            "above_start_mb": round(max(r["sampled_peak_mb"] - r["start_mb"] for r in results), 1),
        }
        for name, results in runs.items()
    ]
    x_mb = n_trials * n_samples * 4 / 2**20
    return {
        "settings": {"trials": n_trials, "samples": n_samples, "x_mb": x_mb, "repeat": repeat},
        "cases": cases,
        "check": compare(url, paths),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=200_000)
    parser.add_argument("--samples", type=int, default=16_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--scratch", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.scratch) as folder:
        result = run(
            n_trials=args.trials, n_samples=args.samples, repeat=args.repeat, scratch=Path(folder)
        )
    result["command"] = " ".join(["python -m benchmarks.h5ad_writer", *sys.argv[1:]])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "h5ad_writer.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
