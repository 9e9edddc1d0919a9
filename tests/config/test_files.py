"""Reading, validating and dumping pipeline files (:mod:`neurobatch.config.files`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from neurobatch.config import (
    FilterConfig,
    PipelineConfig,
    dump_config,
    load_config,
    loader_arguments,
    validate_config,
    validate_loader,
)
from neurobatch.errors import ConfigError
from neurobatch.io.loaders import LOADERS
from pipeline_files import EXAMPLE, EXAMPLE_TOML, edited, minimal, write


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


def test_validate_config_rejects_a_non_mapping() -> None:
    with pytest.raises(ConfigError, match=r"p\.yaml: expected a mapping of sections"):
        validate_config([1, 2], source="p.yaml")  # type: ignore[arg-type]


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


def test_loader_arguments_round_trip(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, EXAMPLE))
    arguments = loader_arguments(config.loader)  # type: ignore[arg-type]
    assert "format" not in arguments
    assert arguments["event_cols"] == ["trial_cue", "lever1", "lever2", "shock"]
    model = LOADERS["photometry-csv"].arguments.model_validate(arguments)
    assert model.event_names() == ["trial_cue", "lever1", "lever2", "shock"]
