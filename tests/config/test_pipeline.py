"""The whole pipeline file (:mod:`neurobatch.config.pipeline`)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml

from neurobatch.config import (
    PipelineConfig,
    load_config,
    validate_config,
)
from neurobatch.errors import ConfigError
from neurobatch.io.loaders import LOADERS
from pipeline_files import EXAMPLE, minimal, write


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


def test_config_pickles(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, EXAMPLE))
    assert pickle.loads(pickle.dumps(config)) == config


# ---------------------------------------------------------------------------------------------
# The output folder must lie where the input's search does not reach
# ---------------------------------------------------------------------------------------------

AFTER = (
    ": the next run would take its files as inputs; expected an output folder outside the "
    "input folder (put output.url elsewhere)"
)


def refusal(input: dict[str, Any], output: str, **output_section: Any) -> str | None:
    """The one line validation gives for this input and output, or None when it passes."""
    data = minimal(input=input, output={"url": output, **output_section})
    if input.get("target") == "folder":
        data["loader"] = {"format": "zarr"}
    try:
        validate_config(data, source="p.yaml")
    except ConfigError as error:
        return str(error)
    return None


@pytest.mark.parametrize(
    ("input", "output", "how"),
    [
        pytest.param(
            {"url": "{root}/data", "pattern": "*.csv", "recursive": True},
            "{root}/data/out",
            "is inside input.url '{root}/data', which is searched recursively",
            id="recursive",
        ),
        pytest.param(
            {"url": "{root}/data", "recursive": True},
            "{root}/data/deep/down/out",
            "is inside input.url '{root}/data', which is searched recursively",
            id="recursive-deep",
        ),
        pytest.param(
            {"url": "{root}/data", "pattern": "*/*.csv"},
            "{root}/data/out",
            "is inside input.url '{root}/data', and input.pattern '*/*.csv' matches files "
            "inside it",
            id="pattern-reaches-in",
        ),
        pytest.param(
            {"url": "{root}/data", "pattern": "o*/**/*.csv"},
            "{root}/data/out/x",
            "is inside input.url '{root}/data', and input.pattern 'o*/**/*.csv' goes into it",
            id="double-star",
        ),
        pytest.param(
            {"url": "{root}/data", "target": "folder"},
            "{root}/data/out",
            "is inside input.url '{root}/data', and input.pattern (unset: every entry) "
            "matches it as an input folder",
            id="folder-target",
        ),
        pytest.param(
            {"url": "{root}/data", "pattern": "*.csv"},
            "{root}/data",
            "is input.url itself ('{root}/data')",
            id="the-same-folder",
        ),
        pytest.param(
            {"url": "{root}/data/./", "pattern": "*.csv", "recursive": True},
            "{root}/other/../data/out/",
            "is inside input.url '{root}/data/./', which is searched recursively",
            id="spelled-otherwise",
        ),
        pytest.param(
            {"url": "file://{root}/data", "recursive": True},
            "{root}/data/out",
            "is inside input.url 'file://{root}/data', which is searched recursively",
            id="file-url",
        ),
    ],
)
def test_an_output_the_input_search_reaches_is_refused(
    tmp_path: Path, input: dict[str, Any], output: str, how: str
) -> None:
    root = str(tmp_path)
    filled = {k: v.replace("{root}", root) if isinstance(v, str) else v for k, v in input.items()}
    out = output.replace("{root}", root)
    expected = f"p.yaml: output.url: {out!r} {how.replace('{root}', root)}{AFTER}"
    assert refusal(filled, out) == expected


@pytest.mark.parametrize(
    ("input", "output"),
    [
        # not recursive, and the pattern stays at the top
        ({"url": "{root}/data", "pattern": "*.csv"}, "{root}/data/out"),
        ({"url": "{root}/data"}, "{root}/data/out"),  # files only: the folder is not one
        # the pattern's folder is not the output's
        ({"url": "{root}/data", "pattern": "raw/*.csv"}, "{root}/data/out"),
        ({"url": "{root}/data", "pattern": "raw/**/*.csv"}, "{root}/data/out"),
        # beside the input, or a name that only starts the same
        ({"url": "{root}/data", "recursive": True}, "{root}/out"),
        ({"url": "{root}/data", "recursive": True}, "{root}/data-out"),
        # the input inside the output is the user's business
        ({"url": "{root}/out/data", "recursive": True}, "{root}/out"),
    ],
)
def test_an_output_the_input_search_does_not_reach_is_accepted(
    tmp_path: Path, input: dict[str, Any], output: str
) -> None:
    root = str(tmp_path)
    filled = {k: v.replace("{root}", root) if isinstance(v, str) else v for k, v in input.items()}
    assert refusal(filled, output.replace("{root}", root)) is None


def test_local_paths_are_compared_resolved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "real" / "data").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real", target_is_directory=True)
    search = {"url": str(tmp_path / "link" / "data"), "recursive": True}
    # the output named through the real path, the input through a symbolic link
    assert refusal(search, str(tmp_path / "real" / "data" / "out")) is not None
    # relative paths are relative to the working folder
    monkeypatch.chdir(tmp_path / "real")
    assert refusal({"url": "data", "recursive": True}, str(tmp_path / "real/data/out"))
    assert refusal({"url": "data", "recursive": True}, "data/../data/out")
    assert refusal({"url": "data", "recursive": True}, "out") is None
    # ~ is the home folder
    monkeypatch.setenv("HOME", str(tmp_path / "real"))
    assert refusal({"url": "~/data", "recursive": True}, str(tmp_path / "real/data/o"))


def test_remote_urls_are_compared_by_protocol_endpoint_and_path() -> None:
    recursive = {"url": "s3://lab/data/", "recursive": True}
    assert refusal(recursive, "s3://lab/data/out") == (
        "p.yaml: output.url: 's3://lab/data/out' is inside input.url 's3://lab/data/', which "
        f"is searched recursively{AFTER}"
    )
    assert refusal(recursive, "s3a://lab/data/./runs/../out")  # one protocol, normalised
    assert refusal(recursive, "simplecache::s3://lab/data/out")  # chained: the last store
    assert refusal(recursive, "s3://lab/data-2/out") is None
    assert refusal(recursive, "s3://other/data/out") is None
    assert refusal(recursive, "gcs://lab/data/out") is None
    assert refusal(recursive, "./lab/data/out") is None  # a local folder
    assert refusal({"url": "memory://lab/data", "recursive": True}, "memory://lab/data/o")
    # two endpoints are two stores; one named and one not may be the same
    minio = {"client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}
    elsewhere = {"endpoint_url": "http://10.0.0.5:9000"}
    on_minio = {**recursive, "storage_options": minio}
    assert refusal(on_minio, "s3://lab/data/out", storage_options=elsewhere) is None
    assert refusal(
        on_minio, "s3://lab/data/out", storage_options={"endpoint_url": "HTTP://127.0.0.1:9000/"}
    )
    assert refusal(on_minio, "s3://lab/data/out")


def test_load_config_refuses_an_output_inside_a_recursive_input(tmp_path: Path) -> None:
    text = EXAMPLE.replace("recursive: false", "recursive: true").replace(
        "url: ./out ", "url: ./data/results "
    )
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value) == (
        f"{path}: output.url: {str(tmp_path / 'data' / 'results')!r} is inside input.url "
        f"{str(tmp_path / 'data')!r}, which is searched recursively{AFTER}"
    )
