"""Tests of sidecar metadata (``annotation``): templates, formats, keys and bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from neurobatch.errors import ConfigError, InputError
from neurobatch.io.loaders import (
    PhotometryCSVArguments,
    load_photometry_csv,
    read_sidecar,
    resolve_sidecar,
)
from photometry_files import recording_frame, write_csv, write_text

# ---------------------------------------------------------------------------------------------
# Sidecars
# ---------------------------------------------------------------------------------------------


def test_resolve_sidecar_templates(tmp_path: Path) -> None:
    csv = str(tmp_path / "day1" / "exp_1.csv")
    assert resolve_sidecar(csv, "{stem}.json") == str(tmp_path / "day1" / "exp_1.json")
    assert resolve_sidecar(csv, "{name}.yaml") == str(tmp_path / "day1" / "exp_1.csv.yaml")
    assert resolve_sidecar(csv, "../meta/{parent}.json") == str(tmp_path / "meta" / "day1.json")
    block = str(tmp_path / "day1" / "block-3")
    assert resolve_sidecar(block, "annotation.json", target="folder") == str(
        tmp_path / "day1" / "block-3" / "annotation.json"
    )
    assert resolve_sidecar(csv, "/abs/{stem}.json") == "/abs/exp_1.json"
    assert resolve_sidecar(csv, "memory://meta/{stem}.json") == "memory://meta/exp_1.json"
    with pytest.raises(ConfigError, match=r"sidecar template '\{subject\}\.json' is malformed"):
        resolve_sidecar(csv, "{subject}.json")


def test_sidecar_json_yaml_and_key(tmp_path: Path) -> None:
    csv = str(tmp_path / "exp_1.csv")
    write_text(tmp_path / "exp_1.json", json.dumps({"A": {"subject": "a"}, "B": {"x": [1, 2]}}))
    assert read_sidecar(csv, "{stem}.json") == {"A": {"subject": "a"}, "B": {"x": [1, 2]}}
    assert read_sidecar(csv, "{stem}.json", key="B") == {"x": [1, 2]}
    write_text(tmp_path / "exp_1.yml", "subject: m1\nweights: [20.5, 21]\nborn: 2024-01-02\n")
    assert read_sidecar(csv, "{stem}.yml") == {
        "subject": "m1",
        "weights": [20.5, 21],
        "born": "2024-01-02",
    }
    write_text(tmp_path / "exp_1.meta", '{"subject": "m2"}')
    assert read_sidecar(csv, "{stem}.meta", fmt="json") == {"subject": "m2"}


@pytest.mark.parametrize(
    ("name", "content", "kwargs", "match"),
    [
        pytest.param(
            "exp.json",
            None,
            {},
            r"^sidecar '.*exp\.json' of '.*exp\.csv' does not exist \(annotation template "
            r"'\{stem\}\.json'\)$",
            id="missing",
        ),
        pytest.param(
            "exp.json",
            '{\n  "subject": "m1",\n  "age": 60\n  "sex": "F"\n}',
            {},
            r"^sidecar '.*exp\.json' is not valid JSON: line 4 column 3: Expecting ',' "
            r"delimiter$",
            id="invalid-json",
        ),
        pytest.param(
            "exp.yaml",
            "subject: m1\nage: [60\nsex: F\n",
            {},
            r"^sidecar '.*exp\.yaml' is not valid YAML: line 3 column 4: expected ',' or ']', "
            r"but got ':'$",
            id="invalid-yaml",
        ),
        pytest.param(
            "exp.yaml",
            "!!python/object/apply:os.system ['echo unsafe']\n",
            {},
            r"is not valid YAML: line 1 column 1: could not determine a constructor for the tag "
            r"'tag:yaml.org,2002:python/object/apply:os.system'",
            id="unsafe-yaml",
        ),
        pytest.param(
            "exp.json", "[1, 2]", {}, r"sidecar '.*' holds a list; expected a mapping$", id="list"
        ),
        pytest.param(
            "exp.yaml",
            "",
            {},
            r"holds nothing \(an empty document\); expected a mapping",
            id="empty",
        ),
        pytest.param(
            "exp.json",
            '{"A": {"s": 1}}',
            {"key": "B"},
            r"sidecar '.*exp\.json' has no top-level key 'B' \(its keys: 'A'\)$",
            id="missing-key",
        ),
        pytest.param(
            "exp.json",
            '{"A": 3}',
            {"key": "A"},
            r"sidecar '.*exp\.json': key 'A' holds an int; expected a mapping$",
            id="key-not-mapping",
        ),
    ],
)
def test_sidecar_bad_input(
    tmp_path: Path, name: str, content: str | None, kwargs: dict[str, Any], match: str
) -> None:
    if content is not None:
        write_text(tmp_path / name, content)
    template = "{stem}" + Path(name).suffix
    with pytest.raises(InputError, match=match):
        read_sidecar(str(tmp_path / "exp.csv"), template, **kwargs)


def test_sidecar_cannot_overwrite_loader_attrs(tmp_path: Path) -> None:
    frame, _ = recording_frame(n=50, events=[])
    path = write_csv(tmp_path / "exp.csv", frame)
    write_text(tmp_path / "exp.json", json.dumps({"subject": "m1", "source": "elsewhere"}))
    with pytest.raises(
        InputError,
        match=r"^sidecar '.*exp\.json' of '.*exp\.csv' sets 'source', which the loader sets "
        r"itself \(reserved: event_names, n_samples, sampling_rate, source\); rename that key$",
    ):
        load_photometry_csv(str(path), {"annotation": "{stem}.json"})


def test_annotation_arguments_are_checked() -> None:
    with pytest.raises(ValidationError, match=r"uses \{subject\}; only \{stem\}, \{name\}"):
        PhotometryCSVArguments(annotation="{subject}.json")
    with pytest.raises(ValidationError, match=r"cannot tell the format of sidecar 'meta.txt'"):
        PhotometryCSVArguments(annotation="meta.txt")
    assert PhotometryCSVArguments(annotation="meta.txt", annotation_format="yaml").annotation
