"""Reading, validating and dumping pipeline files (:mod:`neurobatch.config.files`)."""

from __future__ import annotations

import json
import re
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
from neurobatch.config.files import MAX_PIPELINE_FILE_BYTES, MAX_PIPELINE_VALUES
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


def test_a_file_over_the_size_limit_is_refused_before_parsing(tmp_path: Path) -> None:
    assert MAX_PIPELINE_FILE_BYTES == 2**20
    valid = minimal()
    filler = "# " + "x" * 78 + "\n"
    # a valid pipeline file padded with comments to just over 1 MiB ...
    text = yaml.safe_dump(valid)
    text += filler * ((MAX_PIPELINE_FILE_BYTES - len(text)) // len(filler) + 1)
    big = write(tmp_path, text)
    size = big.stat().st_size
    assert size == len(text) > MAX_PIPELINE_FILE_BYTES
    with pytest.raises(ConfigError) as error:
        load_config(big)
    assert str(error.value) == (
        f"{big}: the file is {size / 2**20:.3g} MiB ({size} bytes), over the 1 MiB "
        "(1048576 bytes) limit of a pipeline file (a pipeline file takes a few KiB); is it "
        "the right file?"
    )
    # ... and the same text cut to the limit is read
    at_limit = text[: MAX_PIPELINE_FILE_BYTES - 1] + "\n"
    assert load_config(write(tmp_path, at_limit)).name == valid["name"]
    # 50 MB, as in the attack: refused in one line, whatever it holds
    huge = tmp_path / "huge.yaml"
    with huge.open("wb") as f:
        f.truncate(50 * 10**6)
    with pytest.raises(
        ConfigError, match=r"^\S+huge\.yaml: the file is 47\.7 MiB \(50000000 bytes\)"
    ):
        load_config(huge)


def test_yaml_aliases_that_expand_beyond_the_limit_are_refused(tmp_path: Path) -> None:
    # a billion laughs in a storage option, which takes any value: 600 bytes, 10**8 values
    levels = ['a0: &a0 ["x","x","x","x","x","x","x","x","x","x"]']
    for i in range(1, 8):
        levels.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]")
    data = yaml.safe_dump(minimal()) + "\n"
    text = data.replace(
        "input:\n", "input:\n  storage_options:\n" + "".join(f"    {line}\n" for line in levels), 1
    )
    path = write(tmp_path, text)
    assert path.stat().st_size < 1000
    with pytest.raises(ConfigError) as error:
        load_config(path)
    line = re.fullmatch(
        rf"{re.escape(str(path))}: its anchors and aliases expand to (\d+) values, over the "
        rf"limit of {MAX_PIPELINE_VALUES} \(a pipeline file holds a few hundred\); expected "
        "aliases that are not nested in one another",
        str(error.value),
    )
    assert line is not None, str(error.value)
    assert int(line[1]) > 10**8  # a7 alone is 10**8 strings
    # a few aliases are fine: they expand to what they stand for
    shared = data.replace("input:\n", "input:\n  storage_options: {a: &o [1, 2], b: *o}\n", 1)
    assert load_config(write(tmp_path, shared)).input.storage_options == {"a": [1, 2], "b": [1, 2]}


def test_a_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_bytes(yaml.safe_dump(minimal()).encode("utf-16"))
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value) == (
        f"{path}: byte 0 (b'\\xff') is not UTF-8; expected a UTF-8 text file"
    )
    # a UTF-8 byte-order mark (Windows editors write one) is read
    path.write_bytes(yaml.safe_dump(minimal()).encode("utf-8-sig"))
    assert load_config(path).name == minimal()["name"]


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


@pytest.mark.parametrize(
    ("fit", "method"),
    [
        ("fit: fits/lab.py:line", "{folder}/fits/lab.py:line"),
        ("fit: {method: fits/lab.py:line, intercept: false}", "{folder}/fits/lab.py:line"),
        ("fit: {method: ../shared/lab.py:line}", "{parent}/shared/lab.py:line"),
        ("fit: mylab.fits:line", "mylab.fits:line"),  # a module: left alone, not imported
        ("fit: ols", "ols"),
        ("fit: {intercept: false}", "irls"),
    ],
)
def test_preprocess_function_files_are_relative_to_the_pipeline_file(
    tmp_path: Path, fit: str, method: str
) -> None:
    folder = tmp_path / "pipelines"
    folder.mkdir()
    text = edited(
        folder,
        "fit: {method: irls, intercept: true, c: 3.0, maxiter: 1000}",
        fit,
    ).read_text()
    text = text.replace("correction: dff", "correction: fits/lab.py:divide")
    config = load_config(write(folder, text))
    expected = method.format(folder=folder, parent=tmp_path)
    assert config.preprocess.fit.method == expected
    assert config.preprocess.correction == f"{folder / 'fits' / 'lab.py'}:divide"


def test_preprocess_function_files_in_toml(tmp_path: Path) -> None:
    text = EXAMPLE_TOML.replace('fit = "ols"', 'fit = "lab.py:line"\ncorrection = "dff"')
    path = tmp_path / "pipeline.toml"
    path.write_text(text)
    config = load_config(path)
    assert config.preprocess.fit.method == f"{tmp_path / 'lab.py'}:line"
    assert config.preprocess.correction == "dff"


def test_input_cache_is_a_local_folder_relative_to_the_pipeline_file(tmp_path: Path) -> None:
    data = minimal(input={"url": "s3://lab/raw", "cache": "raw-cache"})
    config = load_config(write(tmp_path, yaml.safe_dump(data)))
    assert config.input.cache == str(tmp_path / "raw-cache")
    assert config.input.url == "s3://lab/raw"
    sources = [{"name": "rig1", "url": "s3://lab/rig1", "cache": "raw-cache"}]
    listed = load_config(write(tmp_path, yaml.safe_dump(minimal(input=sources))))
    assert listed.source("rig1").cache == str(tmp_path / "raw-cache")  # each source's own
    data["input"]["cache"] = "s3://lab/cache"
    with pytest.raises(
        ConfigError, match=r"input\.cache: expected a local folder, got 's3://lab/cache'"
    ):
        load_config(write(tmp_path, yaml.safe_dump(data)))
