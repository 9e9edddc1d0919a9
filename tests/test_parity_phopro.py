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


def _phopro_run(
    phopro: Any, data: Path, out: Path, preprocess: dict[str, Any], *, single: bool = False
) -> Any:
    from PhoPro.core.PhotometryLoader import CSVLoader

    pipeline = phopro.PhotometryPipeline(data, "file", CSVLoader, pattern="*.csv")
    return pipeline.run(
        loader_kwargs=lambda path: {
            "event_cols": EVENTS,
            "annotation_file": str(path.with_suffix(".json")),
            "isosbestic_col": None if single else "isosbestic",
        },
        preprocess_kwargs={"cutoff_frequency": 3.0, "order": 4, **preprocess},
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


def _neurobatch_run(
    data: Path, out: Path, preprocess: dict[str, Any], client: Client, *, single: bool = False
) -> xr.Dataset:
    Pipeline(
        {
            "name": "parity",
            "input": {"url": str(data), "pattern": "*.csv"},
            "loader": {
                "format": "photometry-csv",
                "event_cols": EVENTS,
                "annotation": "{stem}.json",
                "isosbestic_col": None if single else "isosbestic",
            },
            "preprocess": {"filter": {"cutoff_hz": 3.0, "order": 4}, **preprocess},
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
    theirs = _phopro_run(
        phopro, batch, tmp_path_factory.mktemp(f"phopro-{fit}"), {"fit_using": fit.upper()}
    )
    out = tmp_path_factory.mktemp(f"neurobatch-{fit}")
    ours = _neurobatch_run(batch, out, {"fit": fit}, local_client)
    return theirs, ours, out


def test_same_trials_and_columns(both: tuple[Any, xr.Dataset, Path]) -> None:
    assert_same_trials(*both[:2], "dff")


def assert_same_trials(theirs: Any, ours: xr.Dataset, variable: str) -> None:
    """The same trials, values (1e-6) and per-trial columns, experiment by experiment."""
    obs = theirs.obs
    sources = sorted(set(obs["source"]))
    assert len(sources) == 2  # PhoPro drops experiment_001 whole (see below)
    for source in sources:
        mine = ours.isel(trial=np.flatnonzero(ours["source"].values == source))
        rows = np.flatnonzero(obs["source"].to_numpy() == source)
        assert mine.sizes["trial"] == rows.size > 5
        assert mine[variable].dtype == np.float32  # preprocess.dtype, the default
        np.testing.assert_allclose(mine[variable].values, theirs.X[rows], rtol=0, atol=1e-6)
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


# --- PhoPro's other methods: the whole processed signal of one recording -----------------


def _phopro_preprocessed(phopro: Any, path: Path, *, single: bool, **kwargs: Any) -> Any:
    """PhoPro's ``preprocess_signal`` on one CSV (its own loader), 3 Hz order-4 low-pass."""
    from PhoPro.core.PhotometryExperiment import PhotometryExperiment

    experiment = PhotometryExperiment.load_CSV(
        str(path), isosbestic_col=None if single else "isosbestic", event_cols=EVENTS
    )
    experiment.preprocess_signal(cutoff_frequency=3.0, order=4, **kwargs)
    return experiment


def _neurobatch_preprocessed(path: Path, *, single: bool, **section: Any) -> xr.Dataset:
    """neurobatch's preprocess on the same CSV (its own loader), in uneven chunks."""
    from neurobatch.config import PreprocessConfig
    from neurobatch.engine import stages
    from neurobatch.io.loaders import load_recording

    arguments = {"event_cols": EVENTS, "isosbestic_col": None if single else "isosbestic"}
    rec = load_recording(str(path), arguments, format="photometry-csv")
    params = PreprocessConfig.model_validate({"filter": {"cutoff_hz": 3.0, "order": 4}, **section})
    n = rec.sizes["time"]
    return stages.preprocess(rec.chunk(time=(n // 3, 7, n - n // 3 - 7)), params).compute()


@pytest.mark.parametrize(
    ("theirs", "ours", "variable"),
    [
        ({"correction_method": "dB/B"}, {"correction": "dbb"}, "dbb"),
        ({"correction_method": "dB"}, {"correction": "db"}, "db"),
    ],
)
def test_single_channel_bleaching_correction(
    phopro: Any, batch: Path, theirs: dict[str, Any], ours: dict[str, Any], variable: str
) -> None:
    """Single channel: PhoPro's dB/B and dB, its bi-exponential fit, to 1e-8.

    On the same filtered signal the fit is PhoPro's bit for bit (tests/kernels); the blocked
    filter's 1e-12 moves the converged optimiser's stopping point by ~1e-10.
    """
    path = batch / "experiment_002.csv"
    expected = _phopro_preprocessed(phopro, path, single=True, **theirs)
    mine = _neurobatch_preprocessed(path, single=True, **ours)
    fit = mine.attrs["fit"]
    assert fit["method"] == "bleaching" and fit["converged"]
    np.testing.assert_allclose(mine[variable].values, expected.signal, rtol=0, atol=1e-8)
    np.testing.assert_allclose(mine["reference"].values, expected.fitted_ref, rtol=1e-9)
    recorded = expected.metadata["reference_fit"]
    assert recorded["type"] == "photobleaching"
    np.testing.assert_allclose(
        [fit[k] for k in ("a1", "tau1", "a2", "tau2", "c")], recorded["coeffs"], rtol=1e-6
    )
    assert fit["r_squared"] == pytest.approx(recorded["r2_val"], rel=1e-9)


def test_detrend_retrend(phopro: Any, batch: Path) -> None:
    """The same reference as PhoPro's; PhoPro records the sum of the two channels'
    parameters (``params_iso + params_exp`` on arrays), neurobatch each channel's own."""
    path = batch / "experiment_002.csv"
    expected = _phopro_preprocessed(phopro, path, single=False, fit_using="detrend_retrend")
    mine = _neurobatch_preprocessed(path, single=False, fit="detrend_retrend")
    np.testing.assert_allclose(mine["dff"].values, expected.signal, rtol=0, atol=1e-8)
    np.testing.assert_allclose(mine["reference"].values, expected.fitted_ref, rtol=1e-8)
    fit = mine.attrs["fit"]
    keys = ("a1", "tau1", "a2", "tau2", "c")
    signal = np.array([fit["signal_bleaching"][k] for k in keys])
    isosbestic = np.array([fit["isosbestic_bleaching"][k] for k in keys])
    # PhoPro's fault: five numbers, each the sum of the two channels' values
    np.testing.assert_allclose(
        expected.metadata["reference_fit"]["coeffs"], isosbestic + signal, rtol=1e-6
    )
    assert fit["r_squared"] == pytest.approx(expected.metadata["reference_fit"]["r2_val"])


def test_detrend_fit_retrend(phopro: Any, batch: Path) -> None:
    """Without intercept PhoPro runs (and adds the slope to each channel's parameters);
    with it (its default) PhoPro crashes; neurobatch fits either."""
    path = batch / "experiment_002.csv"
    expected = _phopro_preprocessed(
        phopro, path, single=False, fit_using="detrend_fit_retrend", add_intercept=False
    )
    mine = _neurobatch_preprocessed(
        path, single=False, fit={"method": "detrend_fit_retrend", "intercept": False}
    )
    # PhoPro casts the fitted dB/B to float32 before retrending: 5e-10 on the reference
    np.testing.assert_allclose(mine["dff"].values, expected.signal, rtol=0, atol=1e-6)
    np.testing.assert_allclose(mine["reference"].values, expected.fitted_ref, rtol=1e-7)
    fit = mine.attrs["fit"]
    assert fit["has_intercept"] is False and fit["intercept"] == 0.0
    keys = ("a1", "tau1", "a2", "tau2", "c")
    summed = [fit["signal_bleaching"][k] + fit["isosbestic_bleaching"][k] for k in keys]
    np.testing.assert_allclose(
        expected.metadata["reference_fit"]["coeffs"], np.add(summed, fit["slope"]), rtol=1e-6
    )
    with pytest.raises(ValueError, match="could not be broadcast together with shapes"):
        _phopro_preprocessed(phopro, path, single=False, fit_using="detrend_fit_retrend")
    with_intercept = _neurobatch_preprocessed(path, single=False, fit="detrend_fit_retrend")
    assert with_intercept.attrs["fit"]["has_intercept"] and with_intercept.attrs["fit"]["converged"]


LAB = """
import numpy as np


def ols(signal, isosbestic):
    design = np.column_stack([np.ones_like(isosbestic), isosbestic])
    params, *_ = np.linalg.lstsq(design, signal, rcond=None)
    return design @ params, list(params)


def log_ratio(signal, reference):
    return np.log(signal / reference)
"""


def test_fit_and_correction_functions(phopro: Any, batch: Path, tmp_path: Path) -> None:
    """A lab's own fit and correction: PhoPro's callables, neurobatch's module:function."""
    from neurobatch.config import import_object

    lab = tmp_path / "lab.py"
    lab.write_text(LAB)
    fit, correct = (import_object(f"{lab}:{name}") for name in ("ols", "log_ratio"))
    path = batch / "experiment_003.csv"
    expected = _phopro_preprocessed(
        phopro, path, single=False, fit_using=fit, correction_method=correct
    )
    mine = _neurobatch_preprocessed(
        path, single=False, fit=f"{lab}:ols", correction=f"{lab}:log_ratio"
    )
    np.testing.assert_allclose(mine["corrected"].values, expected.signal, rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        mine.attrs["fit"]["params"], expected.metadata["reference_fit"]["coeffs"]
    )


def test_single_channel_pipeline(
    phopro: Any, batch: Path, tmp_path: Path, local_client: Client
) -> None:
    """The whole pipeline on single-channel recordings, dB/B: the same trials as PhoPro's."""
    theirs = _phopro_run(
        phopro, batch, tmp_path / "phopro", {"correction_method": "dB/B"}, single=True
    )
    ours = _neurobatch_run(
        batch, tmp_path / "ours", {"correction": "dbb"}, local_client, single=True
    )
    assert_same_trials(theirs, ours, "dbb")
