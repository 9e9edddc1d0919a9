"""The pipeline file: models, YAML/TOML loading, errors for people, dumps and imports."""

from __future__ import annotations

import json
import pickle
import sys
import textwrap
from pathlib import Path
from typing import Any

import cloudpickle  # type: ignore[import-untyped]
import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml

from neurobatch.config import (
    FilterConfig,
    PipelineConfig,
    TrialsConfig,
    dump_config,
    import_object,
    load_config,
    loader_arguments,
    split_object_ref,
    validate_config,
    validate_loader,
)
from neurobatch.errors import ConfigError
from neurobatch.io.loaders import LOADERS

EXAMPLE = """\
name: lever-task                       # required, str
experimenters: [Jane Doe]              # optional list[str]
input:
  url: ./data                          # relative to the pipeline file
  pattern: "experiment_*.csv"          # glob relative to url; None = every entry
  recursive: false
  target: file                         # file | folder
  storage_options: {}                  # passed to fsspec
loader:
  format: photometry-csv
  time_col: time
  signal_col: signal
  isosbestic_col: isosbestic           # null = single-channel
  event_cols: [trial_cue, lever1, lever2, shock]
  annotation: "{stem}.json"            # sidecar template relative to the input's folder
  label: null                          # optional suffix for the item id
preprocess:
  filter: {cutoff_hz: 3.0, order: 4}   # null = no filter
  fit: {method: irls, intercept: true, c: 3.0, maxiter: 1000}   # or the shorthand `fit: ols`
  correction: dff                      # dff | df | none
  normalization: none                  # none | zscore | nullz
trials:                                # optional section: absent = no trial extraction
  align_to: trial_cue                  # str or list[str]
  bounds_s: [-8, 8]
  center_on: [lever1, lever2]          # str or list, default []
  baseline_bounds_s: null
  tolerances_s: {lever1: [2, 4], shock: null}
  normalization: none                  # none | zscore | zero | mad | amp
  check_overlap: true
  all_events: true
  window_alignment: nearest            # nearest | interp
  invalid_window_policy: drop          # drop | error
  event_conflict: first                # first | last | all | mean
passdown_metadata: [source]
hooks: {id_builder: null, post_load: null, post_preprocess: null, post_trials: null}
output:
  url: ./out                           # relative to the pipeline file
  formats: [zarr, parquet]             # subset of zarr | parquet | csv | h5ad
  dashboards: null                     # null | svg | png
  storage_options: {}
cluster: {kind: local, n_workers: null, threads_per_worker: 1, memory_limit: 2GiB,
          dashboard_address: "127.0.0.1:0"}
engine: {max_in_flight: null, chunk_memory: 64MiB}
"""

EXAMPLE_TOML = """\
name = "lever-task"
passdown_metadata = ["source"]

[input]
url = "data"
pattern = "experiment_*.csv"

[loader]
format = "photometry-csv"
event_cols = ["trial_cue", "lever1", "lever2", "shock"]

[preprocess]
filter = {cutoff_hz = 3.0, order = 4}
fit = "ols"

[trials]
align_to = "trial_cue"
bounds_s = [-8, 8]
center_on = ["lever1", "lever2"]
tolerances_s = {lever1 = [2, 4]}

[output]
url = "out"

[cluster]
memory_limit = "1GiB"
"""


def write(tmp_path: Path, text: str, name: str = "pipeline.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def edited(tmp_path: Path, old: str, new: str, *, base: str = EXAMPLE, name: str = "") -> Path:
    """The example with one edit, written to a file."""
    assert old in base, old
    suffix = ".toml" if base is EXAMPLE_TOML else ".yaml"
    return write(tmp_path, base.replace(old, new, 1), name or f"pipeline{suffix}")


def minimal(**sections: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "demo",
        "input": {"url": "data"},
        "loader": {"format": "photometry-csv", "event_cols": ["cue", "lever"]},
        "output": {"url": "out"},
    }
    data.update(sections)
    return data


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def test_example_yaml_loads(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, EXAMPLE))
    assert config.name == "lever-task"
    assert config.experimenters == ["Jane Doe"]
    # relative paths are relative to the pipeline file, whatever the working directory
    assert config.input.url == str(tmp_path / "data")
    assert config.output.url == str(tmp_path / "out")
    assert config.input.pattern == "experiment_*.csv"
    loader = config.loader
    assert not isinstance(loader, list | str)
    assert loader.format == "photometry-csv"  # type: ignore[attr-defined]
    assert isinstance(loader, LOADERS["photometry-csv"].arguments)
    assert loader.event_names() == ["trial_cue", "lever1", "lever2", "shock"]
    assert config.preprocess.filter == FilterConfig(cutoff_hz=3.0, order=4)
    assert config.preprocess.fit.method == "irls"
    assert config.preprocess.fit.maxiter == 1000
    assert config.trials is not None
    assert config.trials.align_to == "trial_cue"
    assert config.trials.bounds_s == (-8.0, 8.0)
    assert config.trials.tolerances_s == {"lever1": (2.0, 4.0), "shock": None}
    assert config.passdown_metadata == ["source"]
    assert config.cluster.memory_limit == 2 * 2**30
    assert config.engine.chunk_memory == 64 * 2**20


def test_example_toml_loads(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, EXAMPLE_TOML, "pipeline.toml"))
    assert config.input.url == str(tmp_path / "data")
    assert config.preprocess.fit.method == "ols"  # the shorthand
    assert config.cluster.memory_limit == 2**30
    assert config.trials is not None
    assert config.trials.center_on == ["lever1", "lever2"]


def test_yaml_and_toml_give_the_same_config(tmp_path: Path) -> None:
    from_toml = load_config(write(tmp_path, EXAMPLE_TOML, "pipeline.toml"))
    data = tomllib_load(tmp_path / "pipeline.toml")
    yaml_path = write(tmp_path, yaml.safe_dump(data), "pipeline.yml")
    assert load_config(yaml_path) == from_toml


def tomllib_load(path: Path) -> dict[str, Any]:
    import tomllib

    with path.open("rb") as f:
        return tomllib.load(f)


def test_urls_with_a_protocol_and_absolute_paths_are_left_alone(tmp_path: Path) -> None:
    text = EXAMPLE.replace("url: ./data ", "url: s3://lab-bucket/photometry/ ").replace(
        "url: ./out ", f"url: {tmp_path / 'elsewhere'} "
    )
    config = load_config(write(tmp_path, text))
    assert config.input.url == "s3://lab-bucket/photometry/"
    assert config.output.url == str(tmp_path / "elsewhere")


def test_file_references_are_made_absolute(tmp_path: Path) -> None:
    text = EXAMPLE.replace("id_builder: null", "id_builder: hooks/ids.py:build").replace(
        "post_load: null", "post_load: mylab.hooks:post_load"
    )
    config = load_config(write(tmp_path, text))
    assert config.hooks.id_builder == f"{tmp_path / 'hooks' / 'ids.py'}:build"
    assert config.hooks.post_load == "mylab.hooks:post_load"  # a module: left alone, not imported


def test_filter_can_be_switched_off(tmp_path: Path) -> None:
    config = load_config(edited(tmp_path, "filter: {cutoff_hz: 3.0, order: 4}", "filter: null"))
    assert config.preprocess.filter is None
    toml = EXAMPLE_TOML.replace("filter = {cutoff_hz = 3.0, order = 4}", "filter = false")
    assert load_config(write(tmp_path, toml, "p.toml")).preprocess.filter is None


def test_defaults() -> None:
    config = validate_config(minimal())
    assert config.trials is None
    assert config.preprocess.filter == FilterConfig()
    assert config.preprocess.fit.method == "irls"
    assert config.preprocess.correction == "dff"
    assert config.output.formats == ["zarr", "parquet"]
    assert config.cluster.kind == "local"
    assert config.cluster.dashboard_address == "127.0.0.1:0"


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match=r"pipeline\.json: unsupported pipeline file type"):
        load_config(write(tmp_path, "{}", "pipeline.json"))
    with pytest.raises(ConfigError, match=r"pipeline\.yaml: line \d+, column \d+: invalid YAML"):
        load_config(write(tmp_path, "name: x\ninput: [a\n"))
    with pytest.raises(ConfigError, match=r"pipeline\.toml: invalid TOML: .*line 1"):
        load_config(write(tmp_path, "name = \n", "pipeline.toml"))
    with pytest.raises(ConfigError, match=r"pipeline\.yaml: expected a mapping of sections"):
        load_config(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match=r"key 'name' appears twice in one mapping"):
        load_config(write(tmp_path, "name: a\nname: b\n"))


def test_yaml_is_loaded_safely(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(write(tmp_path, "name: !!python/object/apply:os.system ['true']\n"))


# ---------------------------------------------------------------------------------------------
# Errors for people
# ---------------------------------------------------------------------------------------------


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
            r"preprocess\.fit\.method: got 'irsl'; expected 'ols', 'irls' or 'none'; did you mean 'irls'\?",
        ),
        (
            "correction: dff",
            "correction: dF/F",
            r"preprocess\.correction: got 'dF/F'; expected 'dff', 'df' or 'none'",
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
            r"pipeline\.toml: preprocess\.fit\.method: got 'OLS'; expected 'ols', 'irls' or 'none'",
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
        r"'filter', 'fit', 'correction', 'normalization'$",
    ):
        validate_config(minimal(preprocess={"zzz": 1}))


def test_validate_config_rejects_a_non_mapping() -> None:
    with pytest.raises(ConfigError, match=r"p\.yaml: expected a mapping of sections"):
        validate_config([1, 2], source="p.yaml")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------


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


def test_loader_list_is_validated_item_by_item() -> None:
    loader = [
        {"format": "photometry-csv", "event_cols": ["cue"], "label": "a"},
        {"format": "photometry-csv", "event_colz": ["cue"], "label": "b"},
    ]
    with pytest.raises(
        ConfigError,
        match=r"<config>: loader\[1\]\.event_colz: unknown argument of "
        r"loader format 'photometry-csv'; did you mean 'event_cols'\?",
    ):
        validate_config(minimal(loader=loader))
    loader[1] = {"format": "photometry-csv", "event_cols": ["other"], "label": "b"}
    trials = {"align_to": "cue", "bounds_s": [-1, 1]}
    with pytest.raises(
        ConfigError,
        match=r"trials\.align_to: unknown event 'cue' \(loader\[1\] "
        r"provides 'other'\)",
    ):
        validate_config(minimal(loader=loader, trials=trials))
    loader[1] = {"format": "photometry-csv", "event_cols": ["cue"], "label": "a"}
    with pytest.raises(
        ConfigError, match=r"<config>: loader\[1\]\.label: 'a' is also loader\[0\]'s label"
    ):
        validate_config(minimal(loader=loader, trials=trials))
    loader[1] = {"format": "photometry-csv", "event_cols": ["cue"], "label": "b"}
    config = validate_config(minimal(loader=loader, trials=trials))
    assert isinstance(config.loader, list)
    assert [m.label for m in config.loader] == ["a", "b"]  # type: ignore[attr-defined]


def test_loader_resolver_reference() -> None:
    config = validate_config(
        minimal(loader="mylab.loaders:for_input", trials={"align_to": "any", "bounds_s": [-1, 1]})
    )
    # a resolver is not imported now, and its events are checked at discovery
    assert config.loader == "mylab.loaders:for_input"
    assert "mylab" not in sys.modules
    with pytest.raises(ConfigError, match=r"loader: expected 'module:function' or "):
        validate_config(minimal(loader="photometry-csv"))
    with pytest.raises(
        ConfigError, match=r"loader: expected a mapping with a 'format' key, a list"
    ):
        validate_config(minimal(loader=3))
    with pytest.raises(
        ConfigError, match=r"loader\[0\]: expected a mapping with a 'format' key, got 'x'"
    ):
        validate_config(minimal(loader=["x"]))


def test_validate_loader_accepts_a_formats_own_arguments() -> None:
    arguments = LOADERS["photometry-csv"].arguments.model_validate({"event_cols": ["cue"]})
    mapping = validate_loader(arguments, source="here")
    assert mapping.format == "photometry-csv"
    assert mapping.event_names() == ["cue"]
    with pytest.raises(
        ConfigError,
        match=r"^x\.csv: loader\.signal: unknown argument .*did you "
        r"mean 'signal_col'\?$",
    ):
        validate_loader({"format": "photometry-csv", "signal": "a"}, source="x.csv")


def test_split_object_ref() -> None:
    assert split_object_ref("a.b:C.d") == ("a.b", "C.d", False)
    assert split_object_ref("C:\\lab\\hooks.py:f") == ("C:\\lab\\hooks.py", "f", True)
    for bad in ["", "f", "mod:", ":f", "my-lab:f", "mod:f-g", "mod:1f"]:
        with pytest.raises(ValueError, match="expected 'module:function'"):
            split_object_ref(bad)


# ---------------------------------------------------------------------------------------------
# Schema, dumps, stage parameters
# ---------------------------------------------------------------------------------------------


def test_json_schema_validates_the_example(tmp_path: Path) -> None:
    schema = PipelineConfig.model_json_schema()
    assert schema["additionalProperties"] is False
    assert set(LOADERS) <= set(json.dumps(schema).split('"'))
    data = yaml.safe_load(EXAMPLE)
    jsonschema.validate(data, schema)  # memory sizes as strings, every section
    data["preprocess"]["fit"] = "ols"
    data["preprocess"]["filter"] = False
    data["trials"]["center_on"] = "lever1"
    jsonschema.validate(data, schema)
    data["preprocess"]["filter"] = {"cutof_hz": 3}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, schema)


def test_dump_config_is_json_safe_and_round_trips(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, EXAMPLE))
    dumped = dump_config(config)
    assert json.loads(json.dumps(dumped)) == dumped
    assert next(iter(dumped["loader"])) == "format"
    assert dumped["trials"]["bounds_s"] == [-8.0, 8.0]
    assert dumped["cluster"]["memory_limit"] == 2 * 2**30
    assert PipelineConfig.model_validate(dumped) == config
    listed = validate_config(minimal(loader=[{"format": "photometry-csv"}] * 2))
    assert [m["format"] for m in dump_config(listed)["loader"]] == ["photometry-csv"] * 2


def test_config_pickles(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, EXAMPLE))
    assert pickle.loads(pickle.dumps(config)) == config


def test_loader_arguments_round_trip(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, EXAMPLE))
    arguments = loader_arguments(config.loader)  # type: ignore[arg-type]
    assert "format" not in arguments
    assert arguments["event_cols"] == ["trial_cue", "lever1", "lever2", "shock"]
    model = LOADERS["photometry-csv"].arguments.model_validate(arguments)
    assert model.event_names() == ["trial_cue", "lever1", "lever2", "shock"]


def test_import_object_from_a_module() -> None:
    assert import_object("json:dumps") is json.dumps
    assert import_object("pathlib:Path.cwd") == Path.cwd
    with pytest.raises(
        ConfigError,
        match=r"cannot import 'json:dump_s': module 'json' has no "
        r"attribute 'dump_s'; did you mean 'dumps'\?",
    ):
        import_object("json:dump_s")
    with pytest.raises(
        ConfigError,
        match=r"cannot import 'no_such_module_xyz:f': "
        r"ModuleNotFoundError",
    ):
        import_object("no_such_module_xyz:f")
    with pytest.raises(ConfigError, match=r"cannot import 'f': expected 'module:function'"):
        import_object("f")


def test_import_object_from_a_file(tmp_path: Path) -> None:
    folder = tmp_path / "hooks"
    folder.mkdir()
    (folder / "ids.py").write_text(
        textwrap.dedent(
            """
            import dataclasses

            @dataclasses.dataclass
            class Box:
                value: int

            def build(x):
                return f"id-{x}"
            """
        )
    )
    build = import_object("hooks/ids.py:build", base_dir=tmp_path)
    assert build(3) == "id-3"
    # the same file is imported once per process
    assert import_object(f"{folder / 'ids.py'}:build") is build
    assert import_object(f"{folder / 'ids.py'}:Box")(1).value == 1
    # functions from a file pickle by value: a Dask worker need not import the file
    payload = cloudpickle.dumps(build)
    module_name = build.__module__
    saved = sys.modules.pop(module_name)
    try:
        assert pickle.loads(payload)(4) == "id-4"
    finally:
        sys.modules[module_name] = saved

    with pytest.raises(
        ConfigError,
        match=r"cannot import 'hooks/ids.py:biuld': module .* has no "
        r"attribute 'biuld'; did you mean 'build'\?",
    ):
        import_object("hooks/ids.py:biuld", base_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"cannot import 'hooks/none.py:f': file .* not found"):
        import_object("hooks/none.py:f", base_dir=tmp_path)
    (folder / "broken.py").write_text("raise ValueError('boom')\n")
    with pytest.raises(ConfigError, match=r"cannot import 'hooks/broken.py:f': ValueError: boom"):
        import_object("hooks/broken.py:f", base_dir=tmp_path)
