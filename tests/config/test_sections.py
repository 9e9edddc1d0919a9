"""The sections of the pipeline file (:mod:`neurobatch.config.sections`)."""

from __future__ import annotations

import pytest

from neurobatch.config import (
    FilterConfig,
    TrialsConfig,
    validate_config,
)
from neurobatch.errors import ConfigError
from pipeline_files import minimal


def test_defaults() -> None:
    config = validate_config(minimal())
    assert config.trials is None
    assert config.preprocess.filter == FilterConfig()
    assert config.preprocess.fit.method == "irls"
    assert config.preprocess.correction == "dff"
    assert config.output.formats == ["zarr", "parquet"]
    assert config.cluster.kind == "auto"
    assert config.cluster.dashboard_address == "127.0.0.1:0"


def test_fit_shorthand_and_mapping() -> None:
    assert validate_config(minimal(preprocess={"fit": "ols"})).preprocess.fit.method == "ols"
    fit = validate_config(
        minimal(preprocess={"fit": {"method": "irls", "c": 4.685}})
    ).preprocess.fit
    assert (fit.method, fit.c, fit.intercept) == ("irls", 4.685, True)
    with pytest.raises(ConfigError, match=r"preprocess\.fit\.c: input should be greater than 0"):
        validate_config(minimal(preprocess={"fit": {"c": 0}}))


def test_band_filters_need_a_pair() -> None:
    band = FilterConfig(type="bandpass", cutoff_hz=(0.5, 10.0))
    assert band.cutoff_hz == (0.5, 10.0)
    with pytest.raises(
        ConfigError, match=r"filter\.cutoff_hz: a bandpass filter needs \[low, high\]"
    ):
        validate_config(minimal(preprocess={"filter": {"type": "bandpass", "cutoff_hz": 3}}))
    with pytest.raises(
        ConfigError, match=r"filter\.cutoff_hz: expected \[low, high\] with 0 < low < high"
    ):
        validate_config(minimal(preprocess={"filter": {"type": "bandstop", "cutoff_hz": [10, 1]}}))
    with pytest.raises(
        ConfigError, match=r"filter\.cutoff_hz: a lowpass filter needs one frequency"
    ):
        validate_config(minimal(preprocess={"filter": {"cutoff_hz": [1, 2]}}))


def test_trials_forms_are_kept() -> None:
    one = TrialsConfig(align_to="cue", bounds_s=(-1, 1), center_on="lever")
    assert one.align_to == "cue"  # a single name: no pooling, no align_event column
    assert one.center_on == ["lever"]
    pooled = TrialsConfig(align_to=["cue"], bounds_s=(-1, 1))
    assert pooled.align_to == ["cue"]  # a list, even of one: pooled
    zero = TrialsConfig(align_to="cue", bounds_s=(-1, 1), tolerances_s={"cue": (0, 0)})
    assert zero.tolerances_s == {"cue": (0.0, 0.0)}


def test_memory_sizes() -> None:
    config = validate_config(
        minimal(cluster={"memory_limit": "512MB"}, engine={"chunk_memory": 1000})
    )
    assert config.cluster.memory_limit == 512 * 10**6
    assert config.engine.chunk_memory == 1000
    assert validate_config(minimal(cluster={"memory_limit": None})).cluster.memory_limit is None
