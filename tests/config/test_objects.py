"""Importing user functions (:mod:`neurobatch.config.objects`)."""

from __future__ import annotations

import json
import pickle
import sys
import textwrap
from pathlib import Path

import cloudpickle  # type: ignore[import-untyped]
import pytest

from neurobatch.config import (
    import_object,
    split_object_ref,
)
from neurobatch.errors import ConfigError


def test_split_object_ref() -> None:
    assert split_object_ref("a.b:C.d") == ("a.b", "C.d", False)
    assert split_object_ref("C:\\lab\\hooks.py:f") == ("C:\\lab\\hooks.py", "f", True)
    for bad in ["", "f", "mod:", ":f", "my-lab:f", "mod:f-g", "mod:1f"]:
        with pytest.raises(ValueError, match="expected 'module:function'"):
            split_object_ref(bad)


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
