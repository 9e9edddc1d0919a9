"""Parity with PhoPro's own ``PhotometryPipeline`` on the same files and settings.

PhoPro (the ``phopro`` test dependency) is what photometry labs run today: the same
generated batch through both pipelines must give the same dF/F trials (to 1e-6 absolute;
PhoPro casts its fitted reference to float32) and the same per-trial columns — except for
the faults PHOTOMETRY.md lists, each pinned by a test of its own here.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from distributed import Client

from neurobatch import synthetic
from neurobatch.engine.run import Pipeline

FS = 100.0
EVENTS = list(synthetic.EVENT_NAMES)
TRIALS = {
    "align_to": "trial_cue",
    "center_on": ["lever1", "lever2"],
    "bounds_s": [-8.0, 8.0],
    "tolerances_s": {"lever1": [2.0, 4.0], "lever2": [2.0, 4.0], "shock": None},
}


@pytest.fixture(scope="module")
def phopro() -> Any:
    """PhoPro's pipeline module (its import takes ~20 s, so once per module).

    A missing PhoPro fails the tests rather than skipping them: parity is a requirement.
    """
    try:
        return importlib.import_module("PhoPro.core.PhotometryPipeline")
    except ImportError as error:
        raise ImportError(
            "PhoPro (the parity reference) is missing: install the 'test' extra"
        ) from error


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("parity") / "data"
    synthetic.write_photometry_batch(folder, n_items=3, duration_s=400.0, fs=FS, seed=11)
    return folder


def _phopro_run(phopro: Any, data: Path, out: Path, fit: str) -> Any:
    from PhoPro.core.PhotometryLoader import CSVLoader

    pipeline = phopro.PhotometryPipeline(data, "file", CSVLoader, pattern="*.csv")
    return pipeline.run(
        loader_kwargs=lambda path: {
            "event_cols": EVENTS,
            "annotation_file": str(path.with_suffix(".json")),
        },
        preprocess_kwargs={"cutoff_frequency": 3.0, "order": 4, "fit_using": fit.upper()},
        trial_extraction_kwargs={
            "align_to": TRIALS["align_to"],
            "trial_bounds": tuple(TRIALS["bounds_s"]),
            "center_on": TRIALS["center_on"],
            "event_tolerences": {
                k: None if v is None else tuple(v) for k, v in TRIALS["tolerances_s"].items()
            },
        },
        output_dir=out,
        passdown_metadata=["source", "subject", "age"],
    )


def _neurobatch_run(data: Path, out: Path, fit: str, client: Client) -> xr.Dataset:
    Pipeline(
        {
            "name": "parity",
            "input": {"url": str(data), "pattern": "*.csv"},
            "loader": {
                "format": "photometry-csv",
                "event_cols": EVENTS,
                "annotation": "{stem}.json",
            },
            "preprocess": {"filter": {"cutoff_hz": 3.0, "order": 4}, "fit": fit},
            "trials": TRIALS,
            "passdown_metadata": ["source", "subject", "age"],
            "output": {"url": str(out), "formats": ["zarr", "parquet", "h5ad"]},
        }
    ).run(client=client, progress=False)
    return xr.open_zarr(out / "trials.zarr").load()


@pytest.fixture(scope="module", params=["irls", "ols"])
def both(
    request: pytest.FixtureRequest,
    phopro: Any,
    batch: Path,
    tmp_path_factory: pytest.TempPathFactory,
    local_client: Client,
) -> tuple[Any, xr.Dataset, Path]:
    fit = request.param
    theirs = _phopro_run(phopro, batch, tmp_path_factory.mktemp(f"phopro-{fit}"), fit)
    out = tmp_path_factory.mktemp(f"neurobatch-{fit}")
    ours = _neurobatch_run(batch, out, fit, local_client)
    return theirs, ours, out


def test_same_trials_and_columns(both: tuple[Any, xr.Dataset, Path]) -> None:
    theirs, ours, _ = both
    obs = theirs.obs
    sources = sorted(set(obs["source"]))
    assert len(sources) == 2  # PhoPro drops experiment_001 whole (see below)
    for source in sources:
        mine = ours.isel(trial=np.flatnonzero(ours["source"].values == source))
        rows = np.flatnonzero(obs["source"].to_numpy() == source)
        assert mine.sizes["trial"] == rows.size > 5
        assert mine["dff"].dtype == np.float32  # preprocess.dtype, the default
        np.testing.assert_allclose(mine["dff"].values, theirs.X[rows], rtol=0, atol=1e-6)
        np.testing.assert_allclose(mine["rel_time"].values, theirs.ts, rtol=0, atol=1e-12)
        for column in ["trial_num", "start_time", "stop_time", *EVENTS, "subject", "age"]:
            expected = obs[column].to_numpy()[rows]
            if expected.dtype.kind == "f":
                np.testing.assert_allclose(mine[column].values, expected, atol=1e-9)
            else:
                assert mine[column].values.tolist() == expected.tolist(), column


def test_one_bad_trial_drops_only_that_trial(both: tuple[Any, xr.Dataset, Path]) -> None:
    """PhoPro drops experiment_001 whole for its one double lever press; we drop the trial."""
    theirs, ours, out = both
    first = str(min(Path(theirs.obs["source"].iloc[0]).parent.glob("*.csv")))
    assert first not in set(theirs.obs["source"])
    assert (ours["source"].values == first).sum() > 5
    items = pd.read_parquet(out / "items.parquet").set_index("item_id")
    assert "center_on events found at lever1=" in items.loc["experiment_001", "dropped"]


def test_phopro_reads_our_h5ad(phopro: Any, both: tuple[Any, xr.Dataset, Path]) -> None:
    from PhoPro.core.PhotometryData import PhotometryData

    _, ours, out = both
    data = PhotometryData.read_h5ad(str(out / "trials.h5ad"))
    np.testing.assert_array_equal(data.X, ours["dff"].values)
    np.testing.assert_array_equal(data.ts, ours["rel_time"].values)
    assert data.obs["experiment_id"].astype(str).tolist() == ours["experiment_id"].values.tolist()
    assert data.n_trials == ours.sizes["trial"]
    assert data.freq == pytest.approx(FS)
