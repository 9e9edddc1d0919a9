"""The photometry kind's reference fits and corrections (engine.stages.photometry_reference):
chunked equals whole against the kernels on SciPy-filtered channels, users' functions,
and the errors a person reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.signal
import xarray as xr
from distributed import Client
from hypothesis import given, settings
from hypothesis import strategies as st

from neurobatch import synthetic
from neurobatch.config import PreprocessConfig
from neurobatch.engine import stages
from neurobatch.engine.run import Pipeline
from neurobatch.engine.stages import photometry_reference as reference
from neurobatch.errors import InputError
from neurobatch.kernels import bleaching, detrend
from strategies import chunkings

FS = 20.0
# long enough for the bleaching fits to converge (at 200 s they stop at max_nfev, where a
# change of 1e-13 in the signal moves PhoPro's curve by 1e-2: see the kernels' tests)
RECORDING = synthetic.photometry_recording(duration_s=400.0, fs=FS, seed=4)
SINGLE = RECORDING.drop_vars("isosbestic")
N = RECORDING.sizes["time"]
TIME = RECORDING["time"].values
WINDOW = int(FS * 5.0)


def filtered(name: str) -> np.ndarray:
    """PhoPro's low-pass (3 Hz, order 4), written with SciPy alone."""
    sos = scipy.signal.butter(4, 3.0 / (FS / 2), "low", output="sos")
    return scipy.signal.sosfiltfilt(sos, RECORDING[name].values, padtype="odd")


SIG, ISO = filtered("signal"), filtered("isosbestic")
FLOOR = np.finfo(np.float32).eps


def preprocess(rec: xr.Dataset, chunks: tuple[int, ...] | int, **section: object) -> xr.Dataset:
    params = PreprocessConfig.model_validate(section)
    return stages.preprocess(rec.chunk(time=chunks), params).compute()


@settings(max_examples=5)
@given(chunks=chunkings(N, max_chunks=10), correction=st.sampled_from(["dbb", "db"]))
def test_bleaching_correction_chunked_equals_whole(
    chunks: tuple[int, ...], correction: str
) -> None:
    """Single channel: dB/B and dB by the signal's own bi-exponential curve."""
    out = preprocess(SINGLE, chunks, correction=correction)  # fit: bleaching by default
    curve = bleaching.fit_bleaching(SIG, TIME, window=WINDOW)
    expected_ref = curve.reference(TIME)
    expected = SIG - expected_ref
    if correction == "dbb":
        expected = expected / np.maximum(expected_ref, FLOOR)
    # the blocked filter equals SciPy's to ~1e-12, which moves a converged fit by ~1e-8
    np.testing.assert_allclose(out["reference"].values, expected_ref, rtol=1e-7)
    np.testing.assert_allclose(out[correction].values, expected, rtol=0, atol=1e-7)
    fit = out.attrs["fit"]
    assert fit["method"] == "bleaching" and fit["window"] == WINDOW and fit["converged"]
    assert fit["r_squared"] == pytest.approx(curve.r_squared, rel=1e-6)
    assert out.attrs["processed_variable"] == correction


@settings(max_examples=4)
@given(
    chunks=chunkings(N, max_chunks=8),
    method=st.sampled_from(["detrend_retrend", "detrend_fit_retrend"]),
    intercept=st.booleans(),
)
def test_detrend_chunked_equals_whole(
    chunks: tuple[int, ...], method: detrend.DetrendMethod, intercept: bool
) -> None:
    out = preprocess(RECORDING, chunks, fit={"method": method, "intercept": intercept})
    whole = detrend.fit_detrend(SIG, ISO, TIME, method=method, window=WINDOW, intercept=intercept)
    expected_ref = whole.reference(ISO, TIME)
    # two bi-exponential fits (and, for detrend_fit_retrend, an IRLS line between them):
    # least_squares stops within its tolerance (ftol 1e-8), and the blocked filter's 1e-12
    # differences move where it stops along the curves' flat valley by up to a few 1e-6
    # relative (found by hypothesis: chunks (1024, 6976), 2.3e-6)
    np.testing.assert_allclose(out["reference"].values, expected_ref, rtol=2e-5)
    expected = (SIG - expected_ref) / np.maximum(expected_ref, FLOOR)
    np.testing.assert_allclose(out["dff"].values, expected, rtol=0, atol=2e-5)
    fit = out.attrs["fit"]
    assert fit["method"] == method and fit["converged"]
    assert fit["signal_bleaching"]["tau1"] == pytest.approx(whole.signal.curve.tau1, rel=1e-4)
    assert ("slope" in fit) == (method == "detrend_fit_retrend")


LAB = """
import numpy as np


def ols(signal, isosbestic):
    design = np.column_stack([np.ones_like(isosbestic), isosbestic])
    params, *_ = np.linalg.lstsq(design, signal, rcond=None)
    return design @ params, params


def log_ratio(signal, reference):
    return np.log(signal / reference)


def halves(signal, reference):
    return signal[: signal.size // 2]


def broken(signal, isosbestic):
    raise RuntimeError("no isosbestic today")
"""


@pytest.fixture
def lab(tmp_path: Path) -> str:
    path = tmp_path / "lab.py"
    path.write_text(LAB)
    return str(path)


def test_user_fit_and_correction(lab: str) -> None:
    """Fits and corrections as module:function get PhoPro's arguments: whole arrays."""
    out = preprocess(
        RECORDING, (1000, 7, N - 1007), fit=f"{lab}:ols", correction=f"{lab}:log_ratio"
    )
    design = np.column_stack([np.ones_like(ISO), ISO])
    (b0, b1), *_ = np.linalg.lstsq(design, SIG, rcond=None)
    np.testing.assert_allclose(out["corrected"].values, np.log(SIG / (b0 + b1 * ISO)), rtol=1e-9)
    fit = out.attrs["fit"]
    assert fit["method"] == f"{lab}:ols"
    np.testing.assert_allclose(fit["params"], [b0, b1], rtol=1e-9)
    assert out["corrected"].attrs["correction"] == f"{lab}:log_ratio"
    # a module's function; without a fit, the correction gets no reference
    subtract = preprocess(RECORDING, 1500, fit="ols", correction="numpy:subtract")
    np.testing.assert_array_equal(
        subtract["corrected"].values, subtract["signal"] - subtract["reference"]
    )


def test_user_function_errors_name_the_function(lab: str) -> None:
    rec = RECORDING.assign_attrs(source="mouse3.csv")
    with pytest.raises(
        InputError,
        match=rf"mouse3.csv: the fit function {lab}:broken raised RuntimeError: no isosbestic today",
    ):
        preprocess(rec, 2000, fit=f"{lab}:broken", correction="df")
    with pytest.raises(
        InputError,
        match=rf"mouse3.csv: the correction function {lab}:halves returned shape \(4000,\); expected \(8000,\)",
    ):
        preprocess(rec, 2000, fit="ols", correction=f"{lab}:halves")


def test_isosbestic_fits_need_an_isosbestic() -> None:
    rec = SINGLE.assign_attrs(source="single.csv")
    for method in ("ols", "detrend_retrend"):
        with pytest.raises(
            InputError,
            match=rf"single.csv: the {method} fit needs an isosbestic channel.*fit: bleaching",
        ):
            preprocess(rec, 2000, fit=method)


def test_bleaching_fit_of_a_short_recording_says_so() -> None:
    rec = SINGLE.isel(time=slice(0, 60)).assign_attrs(source="short.csv")
    with pytest.raises(
        InputError,
        match=r"short\.csv: the bleaching fit failed: the photobleaching fit's median window is 100 "
        r"samples and the signal has only 60",
    ):
        stages.preprocess(rec.chunk(time=30), PreprocessConfig(filter=None, correction="dbb"))


def test_user_functions_join_the_key(lab: str, tmp_path: Path) -> None:
    params = PreprocessConfig(fit=f"{lab}:ols", correction="df")
    first = reference.function_hashes(params)
    assert list(first) == ["fit"]
    Path(lab).write_text(LAB.replace("rcond=None", "rcond=1e-12"))
    assert reference.function_hashes(params) != first
    assert reference.function_hashes(PreprocessConfig()) == {}


def test_pipeline_runs_a_user_fit_and_redoes_it_when_edited(
    lab: str, tmp_path: Path, local_client: Client
) -> None:
    """On the LocalCluster's worker processes, from a file; editing it redoes preprocess."""
    data = tmp_path / "data"
    synthetic.write_photometry_batch(data, n_items=2, duration_s=120.0, fs=FS, seed=1)
    config = {
        "name": "lab-fit",
        "input": {"url": str(data), "pattern": "*.csv"},
        "loader": {"format": "photometry-csv", "event_cols": list(synthetic.EVENT_NAMES)},
        "preprocess": {"fit": f"{lab}:ols", "correction": "df"},
        "trials": {"align_to": "trial_cue", "bounds_s": [-2.0, 4.0]},
        "output": {"url": str(tmp_path / "out")},
    }
    first = Pipeline(config).run(client=local_client, progress=False)
    assert first.n_failed == 0 and set(first.items["fit_method"]) == {f"{lab}:ols"}
    assert Pipeline(config).run(client=local_client, progress=False).n_skipped == 2
    Path(lab).write_text(LAB.replace("rcond=None", "rcond=1e-12"))
    again = Pipeline(config).run(client=local_client, progress=False)
    assert set(again.items["stages_run"]) == {"preprocess,trials"}
