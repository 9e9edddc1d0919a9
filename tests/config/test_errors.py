"""Errors for people: one line per problem (:mod:`neurobatch.config.errors`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from neurobatch.config import (
    load_config,
    validate_config,
)
from neurobatch.errors import ConfigError
from pipeline_files import EXAMPLE, EXAMPLE_TOML, edited, minimal, write


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        # misspelled keys, at the top level and nested, with a suggestion
        (
            "name: lever-task",
            "nmae: lever-task",
            r"(?m)^\S*pipeline\.yaml: nmae: unknown key; did you mean 'name'\?",
        ),
        ("engine: {", "engin: {", r"pipeline\.yaml: engin: unknown key; did you mean 'engine'\?$"),
        (
            "filter: {cutoff_hz: 3.0",
            "filter: {cutof_hz: 3.0",
            r"pipeline\.yaml: preprocess\.filter\.cutof_hz: unknown key; did you mean 'cutoff_hz'\?$",
        ),
        (
            "  check_overlap: true",
            "  check_overlaps: true",
            r"trials\.check_overlaps: unknown key; did you mean 'check_overlap'\?",
        ),
        # a loader argument, checked against the format's own arguments model
        (
            "  time_col: time",
            "  time_colum: time",
            (
                r"pipeline\.yaml: loader\.time_colum: unknown argument of loader format "
                r"'photometry-csv'; did you mean 'time_col'\?"
            ),
        ),
        # an unknown format
        (
            "format: photometry-csv",
            "format: photometry-cvs",
            (
                r"loader\.format: unknown loader format 'photometry-cvs'; did you mean "
                r"'photometry-csv'\? \(known formats: .*'photometry-csv', "
            ),
        ),
        ("  format: photometry-csv\n", "", r"loader\.format: required key is missing; one of "),
        # unknown event names, wherever trials uses one
        (
            "align_to: trial_cue",
            "align_to: trial_cu",
            (
                r"trials\.align_to: unknown event 'trial_cu'; did you mean 'trial_cue'\? "
                r"\(the loader provides 'trial_cue', 'lever1', 'lever2', 'shock'\)"
            ),
        ),
        (
            "align_to: trial_cue",
            "align_to: [trial_cue, levr2]",
            r"trials\.align_to\[1\]: unknown event 'levr2'; did you mean 'lever2'\?",
        ),
        (
            "center_on: [lever1, lever2]",
            "center_on: [lever1, lever3]",
            r"trials\.center_on\[1\]: unknown event 'lever3'",
        ),
        (
            "tolerances_s: {lever1: [2, 4], shock: null}",
            "tolerances_s: {lever1: [2, 4], shok: null}",
            r"trials\.tolerances_s\.shok: unknown event 'shok'; did you mean 'shock'\?",
        ),
        # bad types and values
        (
            "order: 4",
            "order: four",
            r"preprocess\.filter\.order: input should be a valid integer.*\(got 'four'\)",
        ),
        (
            "order: 4",
            "order: 0",
            r"preprocess\.filter\.order: input should be greater than or equal to 1",
        ),
        (
            "cutoff_hz: 3.0",
            "cutoff_hz: -3.0",
            r"preprocess\.filter\.cutoff_hz: expected a frequency > 0 Hz",
        ),
        (
            "method: irls",
            "method: irsl",
            (
                r"preprocess\.fit\.method: got 'irsl'; expected 'ols', 'irls', 'detrend_retrend', "
                r"'detrend_fit_retrend', 'bleaching', 'none' or 'module:function'; did you mean "
                r"'irls'\?"
            ),
        ),
        (
            "correction: dff",
            "correction: dF/F",
            (
                r"preprocess\.correction: got 'dF/F'; expected 'dff', 'df', 'dbb', 'db', 'none' or "
                r"'module:function'; did you mean 'dff'\?"
            ),
        ),
        (
            "recursive: false",
            "recursive: maybe",
            r"input\.recursive: input should be a valid boolean",
        ),
        (
            "input:\n  url: ./data",
            "input: ./data\nx:\n  url: ./data",
            r"pipeline\.yaml: input: expected a mapping, got",
        ),
        (
            "bounds_s: [-8, 8]",
            "bounds_s: [8, -8]",
            r"trials\.bounds_s: expected \[lo, hi\] with lo < hi, got \[8, -8\]",
        ),
        (
            "bounds_s: [-8, 8]",
            "bounds_s: [-8]",
            r"trials\.bounds_s: expected \[lo, hi\], got \[-8\]",
        ),
        (
            "bounds_s: [-8, 8]",
            "bounds_s: [-8, .nan]",
            r"trials\.bounds_s\[1\]: input should be a finite number",
        ),
        (
            "tolerances_s: {lever1: [2, 4]",
            "tolerances_s: {lever1: [4, 2]",
            r"trials\.tolerances_s\.lever1: expected \[lo, hi\] with lo <= hi",
        ),
        (
            "baseline_bounds_s: null",
            "baseline_bounds_s: [0, -1]",
            r"trials\.baseline_bounds_s: expected \[lo, hi\] with lo < hi",
        ),
        (
            "  normalization: none                  # none | zscore | zero",
            "  normalization: zscore  #",
            r"trials\.baseline_bounds_s: normalization 'zscore' needs a baseline window",
        ),
        (
            "align_to: trial_cue",
            "align_to: 3",
            r"trials\.align_to: expected an event name or a list",
        ),
        (
            "align_to: trial_cue",
            "align_to: [trial_cue, trial_cue]",
            r"trials\.align_to\[1\]: event 'trial_cue' listed twice",
        ),
        (
            "memory_limit: 2GiB",
            "memory_limit: 2 gigs",
            r"cluster\.memory_limit: expected a memory size such as '2GiB'",
        ),
        (
            "chunk_memory: 64MiB",
            "chunk_memory: 0",
            r"engine\.chunk_memory: input should be greater than 0",
        ),
        (
            "formats: [zarr, parquet]",
            "formats: [zarr, parquets]",
            r"output\.formats\[1\]: .*did you mean 'parquet'\?",
        ),
        (
            "formats: [zarr, parquet]",
            "formats: []",
            r"output\.formats: list should have at least 1 item",
        ),
        (
            "name: lever-task",
            "name: ''",
            r"pipeline\.yaml: name: string should have at least 1 character",
        ),
        (
            "id_builder: null",
            "id_builder: mylab.hooks",
            r"hooks\.id_builder: expected 'module:function' or 'path/to/file\.py:function', got 'mylab\.hooks'",
        ),
        (
            "target: file",
            "target: folder",
            r"input\.target: 'folder', but the loader format 'photometry-csv' reads files; set target: file",
        ),
        (
            "output:\n  url: ./out",
            "output:\n  formats: [zarr]\n  dashboards: svg\n  storage_options: {}\nx:\n  url: ./out",
            r"output\.url: required key is missing",
        ),
    ],
)
def test_yaml_errors_name_file_field_and_fix(
    tmp_path: Path, old: str, new: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_config(edited(tmp_path, old, new))
    text = str(info.value)
    # one line per problem, each naming the file: never pydantic's raw multi-line dump
    assert all(
        line.startswith(str(tmp_path / "pipeline.yaml") + ": ") for line in text.splitlines()
    )
    assert "validation error" not in text
    assert "errors.pydantic.dev" not in text
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            'name = "lever-task"',
            'nam = "lever-task"',
            r"pipeline\.toml: nam: unknown key; did you mean 'name'\?",
        ),
        (
            "filter = {cutoff_hz = 3.0",
            "filter = {cutoff = 3.0",
            r"pipeline\.toml: preprocess\.filter\.cutoff: unknown key; did you mean 'cutoff_hz'\?",
        ),
        (
            'format = "photometry-csv"',
            'format = "photometry-csv"\nevent_col = ["x"]',
            (
                r"pipeline\.toml: loader\.event_col: unknown argument of loader format 'photometry-csv'; "
                r"did you mean 'event_cols'\?"
            ),
        ),
        (
            'format = "photometry-csv"',
            'format = "csv"',
            r"pipeline\.toml: loader\.format: unknown loader format 'csv'",
        ),
        (
            'align_to = "trial_cue"',
            'align_to = "cue"',
            r"pipeline\.toml: trials\.align_to: unknown event 'cue'",
        ),
        (
            'fit = "ols"',
            'fit = "OLS"',
            (
                r"pipeline\.toml: preprocess\.fit\.method: got 'OLS'; expected 'ols', 'irls', .*; "
                r"did you mean 'ols'\?"
            ),
        ),
        (
            "bounds_s = [-8, 8]",
            'bounds_s = ["a", 8]',
            r"pipeline\.toml: trials\.bounds_s\[0\]: input should be a valid number",
        ),
    ],
)
def test_toml_errors_name_file_field_and_fix(
    tmp_path: Path, old: str, new: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(edited(tmp_path, old, new, base=EXAMPLE_TOML))


def test_every_problem_gets_its_own_line(tmp_path: Path) -> None:
    text = (
        EXAMPLE.replace("nme", "nme")
        .replace("cutoff_hz: 3.0", "cutof_hz: 3.0")
        .replace("  time_col: time", "  time_colum: time")
        .replace("memory_limit: 2GiB", "memory_limit: lots")
    )
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    lines = str(info.value).splitlines()
    assert len(lines) == 3
    assert [line.split(": ")[1] for line in lines] == [
        "loader.time_colum",
        "preprocess.filter.cutof_hz",
        "cluster.memory_limit",
    ]


def test_unknown_key_without_a_close_match_lists_the_keys() -> None:
    with pytest.raises(
        ConfigError,
        match=r"<config>: preprocess\.zzz: unknown key; expected one of "
        r"'filter', 'fit', 'correction', 'normalization', 'dtype'$",
    ):
        validate_config(minimal(preprocess={"zzz": 1}))
