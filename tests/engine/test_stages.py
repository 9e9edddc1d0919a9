"""Pipeline stages: chunked equals whole against an independent NumPy/SciPy computation."""

from __future__ import annotations

import functools

import dask.array as da
import numpy as np
import pydantic
import pytest
import scipy.signal
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import raise_if_dask_computes
from neurobatch import synthetic
from neurobatch.config import PreprocessConfig, TrialsConfig
from neurobatch.engine import stages
from neurobatch.errors import InputError
from neurobatch.kernels import windows as window_kernels
from strategies import chunkings

FS = 50.0
RECORDING = synthetic.photometry_recording(duration_s=240.0, fs=FS, seed=3)
N = RECORDING.sizes["time"]


def _expected(rec: xr.Dataset, *, fit: str, correction: str, normalization: str) -> np.ndarray:
    """PhoPro's preprocessing written out with NumPy and SciPy alone."""
    sos = scipy.signal.butter(4, 3.0 / (FS / 2), "low", output="sos")
    sig = scipy.signal.sosfiltfilt(sos, rec.signal.values, padtype="odd")
    iso = scipy.signal.sosfiltfilt(sos, rec.isosbestic.values, padtype="odd")
    if fit == "ols":
        design = np.column_stack([np.ones_like(iso), iso])
        (b0, b1), *_ = np.linalg.lstsq(design, sig, rcond=None)
        reference = b0 + b1 * iso
        out = {
            "dff": (sig - reference) / np.maximum(reference, np.finfo(np.float32).eps),
            "df": sig - reference,
        }[correction]
    else:
        out = sig
    if normalization == "zscore":
        out = (out - out.mean()) / out.std()
    elif normalization == "nullz":
        out = out / out.std()
    return out


@settings(max_examples=10)
@given(
    chunks=chunkings(N, max_chunks=6),
    correction=st.sampled_from(["dff", "df"]),
    normalization=st.sampled_from(["none", "zscore", "nullz"]),
)
def test_preprocess_chunked_equals_whole(
    chunks: tuple[int, ...], correction: str, normalization: str
) -> None:
    params = PreprocessConfig(fit="ols", correction=correction, normalization=normalization)
    processed = stages.preprocess(RECORDING.chunk(time=chunks), params)
    name = stages.PROCESSED_VARIABLE[correction]
    expected = _expected(RECORDING, fit="ols", correction=correction, normalization=normalization)
    np.testing.assert_allclose(processed[name].values, expected, rtol=1e-9, atol=1e-11)
    assert processed.attrs["fit"]["method"] == "ols"


def test_preprocess_is_lazy_after_the_fit() -> None:
    params = PreprocessConfig(fit="ols")
    rec = RECORDING.chunk(time=3000)
    filtered = stages.filter_channels(rec, params.filter).persist()
    fit = stages.fit_reference(filtered, params.fit)
    with raise_if_dask_computes():
        out = stages.correct(filtered, fit, correction="dff", normalization="none")
    assert out["dff"].chunks == ((3000,) * (N // 3000),)


def test_single_channel_needs_no_fit() -> None:
    rec = RECORDING.drop_vars("isosbestic").chunk(time=5000)
    params = PreprocessConfig(fit="none", correction="none")
    out = stages.preprocess(rec, params)
    expected = _expected(RECORDING, fit="none", correction="none", normalization="none")
    np.testing.assert_allclose(out["signal_corrected"].values, expected, rtol=1e-9, atol=1e-12)
    with pytest.raises(InputError, match=r"needs an isosbestic channel.*single-channel"):
        stages.preprocess(rec, PreprocessConfig(fit="ols", correction="dff"))
    # the section refuses it before any item runs; the stage's own check stays
    with pytest.raises(pydantic.ValidationError, match="correction 'dff' needs a fitted reference"):
        PreprocessConfig(fit="none", correction="dff")
    with pytest.raises(InputError, match="correction 'dff' needs a fitted reference"):
        stages.correct(rec, None, correction="dff", normalization="none")


def test_cutoff_above_nyquist_names_the_recording() -> None:
    rec = RECORDING.assign_attrs(source="mouse7.csv").chunk(time=5000)
    params = PreprocessConfig(filter={"cutoff_hz": 30.0, "order": 4}, fit="ols")
    with pytest.raises(InputError, match=r"mouse7.csv: the filter cutoff 30.0 Hz .* Nyquist"):
        stages.preprocess(rec, params)


@functools.cache
def _processed() -> xr.Dataset:
    return stages.preprocess(RECORDING.chunk(time=6000), PreprocessConfig(fit="ols")).compute()


@settings(max_examples=10)
@given(
    chunks=chunkings(N, max_chunks=8),
    normalization=st.sampled_from(["none", "zscore", "mad"]),
    alignment=st.sampled_from(["nearest", "interp"]),
)
def test_cut_trials_chunked_equals_whole(
    chunks: tuple[int, ...], normalization: str, alignment: str
) -> None:
    processed = _processed().chunk(time=chunks)
    params = TrialsConfig(
        align_to="trial_cue",
        center_on=["lever1", "lever2"],
        bounds_s=(-4.0, 6.0),
        baseline_bounds_s=None if normalization == "none" else (-3.0, -1.0),
        tolerances_s={"lever1": (2.0, 4.0), "lever2": (2.0, 4.0)},
        normalization=normalization,
        window_alignment=alignment,
    )
    passdown = {"subject": "mouse-003", "age": 63}
    trials, plan = stages.cut_trials(
        processed, params, item_id="it", experiment_id="exp", passdown=passdown
    )
    assert isinstance(trials["dff"].data, da.Array)  # only the plan was computed
    whole = window_kernels.trials(
        processed["dff"].values,
        RECORDING.time.values,
        stages.events_of(RECORDING),
        align_to="trial_cue",
        center_on=["lever1", "lever2"],
        bounds_s=(-4.0, 6.0),
        baseline_bounds_s=params.baseline_bounds_s,
        tolerances_s=params.tolerances_s,
        normalization=normalization,
        window_alignment=alignment,
        fs=FS,
    )
    np.testing.assert_array_equal(trials["dff"].values, whole.data)
    np.testing.assert_array_equal(trials["rel_time"].values, whole.rel_time)
    for column, values in whole.table.items():
        np.testing.assert_array_equal(trials[column].values, values)
    assert set(trials["experiment_id"].values) == {"exp"}
    assert trials["age"].values.tolist() == [63] * plan.n_trials
    assert trials.attrs["processed_variable"] == "dff"


def test_an_alignment_event_that_never_occurs_is_one_clear_line() -> None:
    rec = RECORDING.assign_attrs(source="mouse9.csv", event_names=["trial_cue", "reward"])
    processed = stages.preprocess(rec.chunk(time=5000), PreprocessConfig(fit="ols"))
    with pytest.raises(
        InputError, match=r"mouse9.csv: the alignment event 'reward' never occurs \(events found: "
    ):
        stages.cut_trials(
            processed,
            TrialsConfig(align_to="reward", bounds_s=(-1.0, 1.0)),
            item_id="a",
            experiment_id="a",
        )
