"""The preprocess section's fits and corrections: PhoPro's methods, users' functions, and the
combinations refused before anything runs (one line each, saying what is expected)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from neurobatch.config import PreprocessConfig, load_config, validate_config
from neurobatch.errors import ConfigError
from pipeline_files import minimal


def preprocess(**section: Any) -> PreprocessConfig:
    return validate_config(minimal(preprocess=section), source="p.yaml").preprocess


@pytest.mark.parametrize(
    ("section", "fit", "correction"),
    [
        ({"fit": "detrend_retrend"}, "detrend_retrend", "dff"),
        ({"fit": "detrend_fit_retrend", "correction": "df"}, "detrend_fit_retrend", "df"),
        ({"correction": "dbb"}, "bleaching", "dbb"),  # PhoPro's dB/B: its bleaching fit
        ({"correction": "db"}, "bleaching", "db"),
        ({"fit": "bleaching", "correction": "dbb"}, "bleaching", "dbb"),
        ({"fit": "none", "correction": "none"}, "none", "none"),
        ({"fit": "lab.fits:biexp", "correction": "dff"}, "lab.fits:biexp", "dff"),
        ({"fit": "ols", "correction": "fits/mine.py:zdff"}, "ols", "fits/mine.py:zdff"),
        ({"fit": "none", "correction": "lab.corr:mine"}, "none", "lab.corr:mine"),
    ],
)
def test_accepted_combinations(section: dict[str, Any], fit: str, correction: str) -> None:
    params = preprocess(**section)
    assert (params.fit.method, params.correction) == (fit, correction)


def test_window_is_a_positive_duration() -> None:
    assert (
        preprocess(fit={"method": "bleaching", "window_s": 2.5}, correction="dbb").fit.window_s
        == 2.5
    )
    assert preprocess().fit.window_s == 5.0  # PhoPro's window_dur_sec
    with pytest.raises(
        ConfigError, match=r"preprocess\.fit\.window_s: input should be greater than 0"
    ):
        preprocess(fit={"method": "bleaching", "window_s": 0}, correction="dbb")


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (
            {"fit": "none", "correction": "dff"},
            (
                r"p\.yaml: preprocess\.correction: correction 'dff' needs a fitted reference, and "
                r"fit is 'none'; expected correction: none, or a fit \(ols, irls, detrend_retrend, "
                r"detrend_fit_retrend with an isosbestic channel; bleaching without\)$"
            ),
        ),
        (
            {"fit": "bleaching", "correction": "dff"},
            (
                r"preprocess\.correction: correction 'dff' is for a fitted isosbestic, and fit "
                r"'bleaching' fits the signal's own bleaching; expected correction dbb or db"
            ),
        ),
        (
            {"fit": "irls", "correction": "db"},
            (
                r"preprocess\.correction: correction 'db' is for the single-channel bleaching "
                r"fit, and fit 'irls' fits the isosbestic; expected correction dff or df, or fit: "
                r"bleaching$"
            ),
        ),
        (
            {"correction": "dB/B"},
            (
                r"preprocess\.correction: got 'dB/B'; expected 'dff', 'df', 'dbb', 'db', 'none' or "
                r"'module:function'; did you mean 'dbb'\?$"
            ),
        ),
        (
            {"fit": "IRLS"},
            (
                r"preprocess\.fit\.method: got 'IRLS'; expected 'ols', 'irls', 'detrend_retrend', "
                r"'detrend_fit_retrend', 'bleaching', 'none' or 'module:function'; did you mean "
                r"'irls'\?$"
            ),
        ),
        ({"fit": "detrend_retrnd"}, r"did you mean 'detrend_retrend'\?$"),
        ({"fit": "lab.fits:"}, r"preprocess\.fit\.method: got 'lab\.fits:'; expected"),
    ],
)
def test_refused_in_one_line(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        preprocess(**section)
    lines = str(caught.value).splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("p.yaml: preprocess.")
    assert re.search(message, lines[0]), lines[0]


def test_a_pipeline_file_with_fit_none_and_dff_fails_to_load(tmp_path: Path) -> None:
    """The issue's case: it used to pass validation, then fail every item."""
    (tmp_path / "data").mkdir()
    file = tmp_path / "pipeline.yaml"
    file.write_text(
        "name: single\ninput: {url: data}\n"
        "loader: {format: photometry-csv, isosbestic_col: null}\n"
        "preprocess: {fit: none, correction: dff}\noutput: {url: out}\n"
    )
    with pytest.raises(ConfigError, match="correction 'dff' needs a fitted reference"):
        load_config(file)
