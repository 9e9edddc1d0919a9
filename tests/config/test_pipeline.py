"""The whole pipeline file (:mod:`neurobatch.config.pipeline`)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml

from neurobatch.config import (
    PipelineConfig,
    load_config,
)
from neurobatch.io.loaders import LOADERS
from pipeline_files import EXAMPLE, write


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
