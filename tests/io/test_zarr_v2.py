"""Zarr format 2 stores open in a real zarr-python 2 environment, equal to what neurobatch reads.

spikeinterface, GuPPy and neuroconv pin ``zarr<3``: such an environment is made once (with
``uv``, from its cache: about a second) under ``$XDG_CACHE_HOME/neurobatch-tests/``, and
reads the stores in a subprocess with zarr 2 and xarray.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from distributed import Client

from neurobatch import synthetic
from neurobatch.engine.run import Pipeline
from neurobatch.io.trials_store import append_trials, open_trials
from neurobatch.io.zarr import ensure_group, open_dataset, write_dataset
from stores import flip_byte, recording
from zarr_formats import chunk_path

#: zarr-python 2, an xarray that still reads it, and this environment's NumPy.
ZARR2 = ["zarr<3", "xarray<2026", f"numpy=={importlib.metadata.version('numpy')}"]


@pytest.fixture(scope="session")
def zarr2_python() -> Path:
    """The Python of a zarr-python 2 environment, made on first use (skip if it cannot be)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    root = cache / "neurobatch-tests" / "zarr2"
    python = root / "bin" / "python"
    marker = root / "neurobatch-installed.txt"
    if marker.exists() and marker.read_text().split("\n")[:-1] == ZARR2:
        return python
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv is None:
        pytest.skip("no zarr-python 2 environment: uv, which makes it, is not installed")
    shutil.rmtree(root, ignore_errors=True)
    for command in (
        [uv, "venv", "--quiet", "--python", sys.executable, str(root)],
        [uv, "pip", "install", "--quiet", "--python", str(python), *ZARR2],
    ):
        made = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300)
        if made.returncode:
            reason = (made.stderr.strip().splitlines() or ["no output"])[-1]
            pytest.skip(f"no zarr-python 2 environment: {' '.join(command[:3])} failed: {reason}")
    marker.write_text("\n".join(ZARR2) + "\n")
    return python


#: Run in the zarr-python 2 environment: lists the groups' subgroups, opens the datasets with
#: xarray, reads the damaged array with zarr, and dumps what it found.
READER = """\
import json, sys
import numpy as np, xarray as xr, zarr

spec = json.loads(sys.argv[1])
found = {"zarr": zarr.__version__, "groups": {}, "datasets": {}}
for url in spec["groups"]:
    found["groups"][url] = sorted(zarr.open_group(url, mode="r").group_keys())
arrays = {}
for label, url in spec["datasets"].items():
    ds = xr.open_zarr(url)
    found["datasets"][label] = {"attrs": ds.attrs, "coords": sorted(map(str, ds.coords))}
    for name, variable in ds.variables.items():
        values = variable.values
        arrays[label + "/" + name] = values.astype(str) if values.dtype == object else values
if spec.get("damaged"):
    try:
        zarr.open_array(spec["damaged"], mode="r")[:]
    except Exception as error:
        found["damaged"] = type(error).__name__ + ": " + str(error)
np.savez(spec["dump"] + ".npz", **arrays)
with open(spec["dump"] + ".json", "w") as f:
    json.dump(found, f)
"""


def read_with_zarr2(
    python: Path,
    folder: Path,
    *,
    groups: list[Path],
    datasets: dict[str, Path],
    damaged: Path | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray[Any, Any]]]:
    """What :data:`READER` found, and the variables it read (``<label>/<name>``)."""
    script, dump = folder / "read_with_zarr2.py", folder / "zarr2-dump"
    script.write_text(READER)
    spec = {
        "groups": [str(g) for g in groups],
        "datasets": {label: str(url) for label, url in datasets.items()},
        "damaged": None if damaged is None else str(damaged),
        "dump": str(dump),
    }
    done = subprocess.run(
        [str(python), str(script), json.dumps(spec)], check=False, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    with np.load(f"{dump}.npz") as read:
        return json.loads(Path(f"{dump}.json").read_text()), dict(read)


def assert_read_alike(
    found: dict[str, Any], read: dict[str, np.ndarray[Any, Any]], label: str, ours: xr.Dataset
) -> None:
    """zarr 2 and xarray read ``label`` as neurobatch reads it: attributes, coordinates and
    every variable's values and type."""
    assert found["datasets"][label]["attrs"] == json.loads(json.dumps(ours.attrs))
    assert found["datasets"][label]["coords"] == sorted(map(str, ours.coords))
    names = {key.split("/", 1)[1] for key in read if key.split("/", 1)[0] == label}
    assert names == set(map(str, ours.variables))
    for name, variable in ours.variables.items():
        theirs, expected = read[f"{label}/{name}"], variable.values
        if expected.dtype == object:
            assert theirs.tolist() == [str(v) for v in expected.tolist()], (label, name)
        else:
            np.testing.assert_array_equal(theirs, expected, err_msg=f"{label}/{name}")
            assert theirs.dtype == expected.dtype, (label, name)


def trials(k: int, n: int, **columns: Any) -> xr.Dataset:
    coords = {
        "rel_time": np.arange(-5, 5) / 10.0,
        "trial_num": ("trial", np.arange(1, n + 1)),
        "start_time": ("trial", 20.0 * np.arange(n) + k),
        "stop_time": ("trial", 20.0 * np.arange(n) + k + 1.0),
        "trial_cue": ("trial", np.zeros(n)),
        "item_id": ("trial", np.array([f"item_{k}"] * n, dtype=object)),
        **{name: ("trial", values) for name, values in columns.items()},
    }
    dff = np.random.default_rng(k).normal(size=(n, 10)).astype(np.float32)
    return xr.Dataset(
        {"dff": (("trial", "rel_time"), dff)},
        coords=coords,
        attrs={"processed_variable": "dff", "sampling_rate": 10.0},
    )


def test_zarr2_reads_an_items_store_and_the_combined_trials(
    zarr2_python: Path, tmp_path: Path
) -> None:
    item, combined = tmp_path / "items" / "a", tmp_path / "trials.zarr"
    ensure_group(str(item), zarr_format=2)
    write_dataset(recording(5000), str(item / "ingest"), chunk_memory=2**16, zarr_format=2)
    # outer-joined columns: missing numbers (NaN), missing strings (""), an int column that
    # becomes float, a string column that a later item lacks; a count of 0 is not missing
    append_trials(
        trials(0, 30, lever=np.full(30, np.nan), sex=np.array(["F"] * 30), count=np.zeros(30, int)),
        str(combined),
        chunk_memory=2**10,
        zarr_format=2,
    )
    append_trials(trials(1, 25, shock=np.linspace(0, 1, 25)), str(combined))
    damaged = tmp_path / "damaged.zarr"
    shutil.copytree(item / "ingest", damaged)
    flip_byte(chunk_path(damaged, "signal", 0, zarr_format=2))

    found, read = read_with_zarr2(
        zarr2_python,
        tmp_path,
        groups=[item],
        datasets={"ingest": item / "ingest", "trials": combined},
        damaged=damaged / "signal",
    )
    assert found["zarr"].startswith("2.")
    assert found["groups"] == {str(item): ["ingest"]}
    assert found["damaged"].startswith("RuntimeError: Stored and computed crc32 checksum")
    ingest, both = open_dataset(str(item / "ingest")).load(), open_trials(str(combined)).load()
    assert_read_alike(found, read, "ingest", ingest)
    assert_read_alike(found, read, "trials", both)
    # what each side read is what was written (NaN and "" where an item lacks a column)
    assert both.sex.values.tolist() == ["F"] * 30 + [""] * 25
    assert np.isnan(both.shock.values[:30]).all() and np.isnan(both.lever.values).all()
    assert both["count"].dtype == np.float64 and (both["count"].values[:30] == 0).all()
    assert both.dff.dtype == np.float32


def formats_of(folder: Path) -> set[int]:
    """The Zarr formats of the groups and arrays under ``folder`` (its metadata documents)."""
    documents = {"zarr.json": 3, ".zgroup": 2, ".zarray": 2}
    return {documents[p.name] for p in folder.rglob("*") if p.name in documents}


def test_a_run_in_zarr_format_2_is_read_by_zarr2_and_reruns_as_in_format_3(
    zarr2_python: Path, tmp_path: Path, local_client: Client
) -> None:
    data, out = tmp_path / "data", tmp_path / "out"
    synthetic.write_photometry_batch(data, n_items=2, duration_s=120.0, fs=50.0, seed=3)
    config: dict[str, Any] = {
        "name": "zarr2",
        "input": {"url": str(data), "pattern": "*.csv"},
        "loader": {
            "format": "photometry-csv",
            "event_cols": list(synthetic.EVENT_NAMES),
            "annotation": "{stem}.json",
        },
        "preprocess": {"filter": {"cutoff_hz": 3.0, "order": 4}, "fit": "ols"},
        "trials": {
            "align_to": "trial_cue",
            "center_on": ["lever1", "lever2"],
            "bounds_s": [-4.0, 4.0],
            "tolerances_s": {"lever1": [2.0, 4.0], "lever2": [2.0, 4.0]},
        },
        "passdown_metadata": ["subject", "age"],
        "output": {"url": str(out), "formats": ["zarr", "parquet", "h5ad"], "zarr_format": 2},
    }
    first = Pipeline(config).run(client=local_client, progress=False)
    assert first.n_done == 2 and first.n_failed == 0
    assert formats_of(out / "items") == formats_of(out / "trials.zarr") == {2}
    items = sorted(p.name for p in (out / "items").iterdir())
    stages = ["ingest", "preprocess", "trials"]
    found, read = read_with_zarr2(
        zarr2_python,
        tmp_path,
        groups=[out / "items" / item for item in items],
        datasets={
            "trials.zarr": out / "trials.zarr",
            **{stage: out / "items" / items[0] / stage for stage in stages},
        },
    )
    assert found["groups"] == {str(out / "items" / item): stages for item in items}
    combined = open_trials(str(out / "trials.zarr")).load()
    assert_read_alike(found, read, "trials.zarr", combined)
    for stage in stages[:2]:
        url = out / "items" / items[0] / stage
        assert_read_alike(found, read, stage, open_dataset(str(url)).load())
    item_trials = open_trials(str(out / "items" / items[0] / "trials")).load()
    assert_read_alike(found, read, "trials", item_trials)
    # the obs table's columns in their meaning's order, not alphabetical
    obs = pd.read_parquet(out / "trials_obs.parquet")
    events = ["trial_cue", "lever1", "lever2"]
    head = ["trial_num", "start_time", "stop_time", *events]
    assert list(obs.columns[: len(head)]) == head
    assert list(obs.columns[-4:]) == ["item_id", "experiment_id", "subject", "age"]
    assert list(ad.read_h5ad(out / "trials.h5ad").obs.columns) == list(obs.columns)

    again = Pipeline(config).run(client=local_client, progress=False)
    assert again.n_skipped == 2 and again.n_done == 0  # committed Zarr 2 stages verify
    xr.testing.assert_identical(open_trials(str(out / "trials.zarr")).load(), combined)

    config["output"] = {**config["output"], "zarr_format": 3}
    rewritten = Pipeline(config).run(client=local_client, progress=False)
    assert rewritten.items["stages_run"].tolist() == [",".join(stages)] * 2
    assert formats_of(out / "items") == formats_of(out / "trials.zarr") == {3}
    xr.testing.assert_identical(open_trials(str(out / "trials.zarr")).load(), combined)
