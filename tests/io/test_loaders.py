"""Tests of :mod:`neurobatch.io.loaders`: the registry and :func:`load_recording`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pytest
import xarray as xr
from pydantic import BaseModel, ValidationError, create_model

from neurobatch.errors import ConfigError
from neurobatch.io.loaders import (
    LOADERS,
    LoaderArguments,
    PhotometryCSVArguments,
    PhotometryParquetArguments,
    TDTArguments,
    load_recording,
)
from photometry_files import EVENTS, recording_frame, write_csv

# ---------------------------------------------------------------------------------------------
# The registry
# ---------------------------------------------------------------------------------------------


def test_registry() -> None:
    assert {fmt: spec.target for fmt, spec in LOADERS.items()} == {
        "photometry-csv": "file",
        "photometry-parquet": "file",
        "tdt": "folder",
        "doric": "file",
        "neurophotometrics": "file",
        "pyphotometry": "file",
        "nwb-photometry": "file",
        "spikeglx": "file",
        "raw-binary": "file",
        "nwb": "file",
        "npy": "file",
        "zarr": "folder",  # a Zarr store is a folder
        "rgc-pickle": "file",
    }
    common = {
        "label",
        "annotation",
        "annotation_format",
        "annotation_key",
        "downsample",
        "downsample_method",
        "sampling_tolerance",
    }
    for fmt, spec in LOADERS.items():
        assert spec.format == fmt
        assert issubclass(spec.arguments, LoaderArguments)
        assert spec.arguments.model_config.get("extra") == "forbid"
        assert common <= set(spec.arguments.model_fields)
    csv = LOADERS["photometry-csv"].arguments.model_validate({"event_cols": ["a", "b"]})
    assert csv.event_names() == ["a", "b"]
    tdt = LOADERS["tdt"].arguments.model_validate(
        {"box": "A", "signal_label": "_465", "isosbestic_label": None, "event_labels": ["Cue"]}
    )
    assert tdt.event_names() == ["Cue"]
    with pytest.raises(ValidationError, match="isosbestic_label"):
        TDTArguments.model_validate({"box": "A", "signal_label": "_465"})


def test_arguments_validation() -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        PhotometryCSVArguments.model_validate({"event_columns": ["a"]})
    with pytest.raises(ValidationError, match=r"column 'time' is named twice"):
        PhotometryCSVArguments(signal_col="time")
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        PhotometryCSVArguments(downsample=0)
    # as PhoPro's CSVLoader: one name, a list or None
    assert PhotometryCSVArguments.model_validate({"event_cols": "cue"}).event_cols == ["cue"]
    assert PhotometryCSVArguments.model_validate({"event_cols": None}).event_cols == []


def test_config_style_subclass_round_trip() -> None:
    # the pipeline file adds `format` to each model and dumps it back without it
    for fmt, spec in LOADERS.items():
        tag: Any = Literal[fmt]
        model: type[BaseModel] = create_model("Tagged", __base__=spec.arguments, format=(tag, ...))
        required: dict[str, dict[str, Any]] = {
            "tdt": {"box": "A", "signal_label": "_465", "isosbestic_label": "_405"},
            "doric": {"signal_channel": "AIN01xAOUT02-LockIn", "isosbestic_channel": None},
            "raw-binary": {"n_channels": 4, "dtype": "int16", "sampling_rate": 30000.0},
            "npy": {"kind": "traces", "sampling_rate": 1000.0},
            "nwb-photometry": {"signal": 465, "isosbestic": 405},
        }
        raw = required.get(fmt, {})
        tagged = model.model_validate({"format": fmt, "label": "x", **raw})
        dumped = tagged.model_dump(mode="json", exclude={"format"})
        assert spec.arguments.model_validate(dumped).model_dump(mode="json") == dumped
        assert isinstance(tagged, spec.arguments)


def test_load_recording_arguments(tmp_path: Path) -> None:
    frame, _ = recording_frame(n=100)
    path = str(write_csv(tmp_path / "a.csv", frame))
    by_mapping = load_recording(path, {"event_cols": EVENTS}, format="photometry-csv")
    by_model = load_recording(
        path, PhotometryCSVArguments(event_cols=EVENTS), format="photometry-csv"
    )
    tagged = load_recording(
        path, {"format": "photometry-csv", "event_cols": EVENTS}, format="photometry-csv"
    )
    xr.testing.assert_identical(by_mapping, by_model)
    xr.testing.assert_identical(by_mapping, tagged)
    with pytest.raises(
        ConfigError, match=r"unknown loader format 'csv' \(known: 'photometry-csv', "
    ):
        load_recording(path, {}, format="csv")
    with pytest.raises(ConfigError, match=r"name format 'tdt', but this loader reads 'photometry"):
        load_recording(path, {"format": "tdt"}, format="photometry-csv")
    with pytest.raises(ConfigError, match=r"must be a PhotometryCSVArguments or a mapping, not a "):
        load_recording(path, PhotometryParquetArguments(), format="photometry-csv")
    with pytest.raises(
        ConfigError,
        match=r"^invalid loader arguments for format 'photometry-csv': downsample: Input should "
        r"be a valid integer.*; event_col: unknown argument; did you mean 'event_cols'\?$",
    ):
        load_recording(path, {"event_col": "x", "downsample": "x"}, format="photometry-csv")
