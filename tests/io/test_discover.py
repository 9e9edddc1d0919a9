"""Discovery: real folder trees and memory:// stores into manifests."""

from __future__ import annotations

import json
import logging
import os
import re
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import pandas as pd
import pytest

from neurobatch.config import PipelineConfig, TrialsConfig, load_config
from neurobatch.errors import ConfigError, InputError, InputNotFoundError, NoInputsError
from neurobatch.io.discover import (
    MANIFEST_COLUMNS,
    discover,
    discover_config,
    fingerprint,
    safe_id,
)
from neurobatch.io.loaders import LOADERS

CSV = {"format": "photometry-csv", "event_cols": ["cue", "lever"]}
TDT = {
    "format": "tdt",
    "box": "A",
    "signal_label": "_465",
    "isosbestic_label": "_405",
    "event_labels": ["Cue"],
}
CSV_BYTES = b"time,signal,isosbestic,cue,lever\n0.0,1.0,1.0,0,0\n0.1,1.0,1.0,1,0\n"
SAFE = re.compile(r"[A-Za-z0-9._-]+")


def tree(root: Path, names: list[str]) -> Path:
    """Files (``name``) and folders (``name/``) under ``root``."""
    for name in names:
        path = root / name
        if name.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(CSV_BYTES)
    return root


def ids(manifest: pd.DataFrame) -> list[str]:
    return list(manifest["item_id"])


@pytest.fixture
def memory_root() -> Iterator[str]:
    """A fresh folder in fsspec's (process-global) memory filesystem."""
    fs = fsspec.filesystem("memory")
    root = f"/discover-{os.urandom(4).hex()}"
    yield f"memory://{root.lstrip('/')}"
    if fs.exists(root):
        fs.rm(root, recursive=True)


# ---------------------------------------------------------------------------------------------
# Local folder trees
# ---------------------------------------------------------------------------------------------


def test_manifest_columns_order_and_values(tmp_path: Path) -> None:
    tree(tmp_path, ["experiment_2.csv", "experiment_1.csv", "experiment_10.csv", "notes.txt"])
    manifest = discover({"url": str(tmp_path), "pattern": "experiment_*.csv"}, CSV)
    assert tuple(manifest.columns) == MANIFEST_COLUMNS
    assert ids(manifest) == ["experiment_1", "experiment_10", "experiment_2"]
    assert list(manifest["url"]) == sorted(manifest["url"])
    assert manifest["url"].iloc[0] == str(tmp_path / "experiment_1.csv")
    assert (manifest["size"] == len(CSV_BYTES)).all()
    assert manifest["size"].dtype == "int64"
    assert (manifest["format"] == "photometry-csv").all()
    assert manifest["fingerprint"].str.fullmatch(r"[0-9a-f]{16}").all()
    arguments = manifest["loader_arguments"].iloc[0]
    assert json.loads(json.dumps(arguments)) == arguments
    assert "format" not in arguments
    model = LOADERS["photometry-csv"].arguments.model_validate(arguments)
    assert model.event_names() == ["cue", "lever"]


def test_recursive_and_pattern(tmp_path: Path) -> None:
    tree(tmp_path, ["a.csv", "sub/b.csv", "sub/deeper/c.csv", "sub/d.txt"])
    flat = discover({"url": str(tmp_path), "pattern": "*.csv"}, CSV)
    assert ids(flat) == ["a"]
    deep = discover({"url": str(tmp_path), "pattern": "*.csv", "recursive": True}, CSV)
    assert ids(deep) == ["a", "sub__b", "sub__deeper__c"]
    assert deep["url"].iloc[2] == str(tmp_path / "sub" / "deeper" / "c.csv")
    # a pattern with a folder in it
    assert ids(discover({"url": str(tmp_path), "pattern": "sub/*.csv"}, CSV)) == ["sub__b"]
    # no pattern: every entry of the right kind, hidden ones skipped
    tree(tmp_path, [".DS_Store", ".hidden/e.csv"])
    every = discover({"url": str(tmp_path), "recursive": True}, CSV)
    assert ids(every) == ["a", "sub__b", "sub__d", "sub__deeper__c"]
    assert ids(discover({"url": str(tmp_path)}, CSV)) == ["a"]
    # ... unless the pattern names them
    assert ids(discover({"url": str(tmp_path), "pattern": ".h*/*.csv"}, CSV)) == ["_hidden__e"]


def test_a_single_file_is_one_input(tmp_path: Path) -> None:
    tree(tmp_path, ["one.csv"])
    manifest = discover({"url": str(tmp_path / "one.csv")}, CSV)
    assert ids(manifest) == ["one"]
    assert manifest["url"].iloc[0] == str(tmp_path / "one.csv")


def test_folder_targets(tmp_path: Path) -> None:
    tree(
        tmp_path,
        ["block-1/a.tev", "block-1/a.tsq", "block-2/a.tev", "loose.csv", "nested/block-3/a.tev"],
    )
    tdt = TDT
    manifest = discover({"url": str(tmp_path), "target": "folder"}, tdt)
    assert ids(manifest) == ["block-1", "block-2", "nested"]
    assert manifest["size"].iloc[0] == 2 * len(CSV_BYTES)  # the files inside
    deep = discover(
        {"url": str(tmp_path), "target": "folder", "pattern": "block-*", "recursive": True}, tdt
    )
    assert ids(deep) == ["block-1", "block-2", "nested__block-3"]


def test_folder_fingerprint_follows_the_files_inside(tmp_path: Path) -> None:
    tree(tmp_path, ["block-1/a.tev", "block-2/a.tev"])
    tdt = TDT
    search = {"url": str(tmp_path), "target": "folder"}
    before = discover(search, tdt).set_index("item_id")["fingerprint"]
    (tmp_path / "block-2" / "b.tsq").write_bytes(b"x")
    after = discover(search, tdt).set_index("item_id")["fingerprint"]
    assert after["block-1"] == before["block-1"]
    assert after["block-2"] != before["block-2"]


def test_fingerprint_changes_when_a_file_changes(tmp_path: Path) -> None:
    tree(tmp_path, ["a.csv", "b.csv"])
    search = {"url": str(tmp_path)}
    first = discover(search, CSV).set_index("item_id")["fingerprint"]
    assert discover(search, CSV).set_index("item_id")["fingerprint"].equals(first)
    # another size
    (tmp_path / "a.csv").write_bytes(CSV_BYTES + b"0.2,1.0,1.0,0,1\n")
    second = discover(search, CSV).set_index("item_id")["fingerprint"]
    assert second["a"] != first["a"]
    assert second["b"] == first["b"]
    # the same size, written later
    stat = (tmp_path / "b.csv").stat()
    os.utime(tmp_path / "b.csv", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    third = discover(search, CSV).set_index("item_id")["fingerprint"]
    assert third["b"] != second["b"]


def test_fingerprint_prefers_a_content_hash() -> None:
    a = {"size": 5, "ETag": '"abc"', "LastModified": "2024-01-01"}
    b = {"size": 5, "ETag": '"abc"', "LastModified": "2025-01-01"}
    assert fingerprint(a) == fingerprint(b)  # re-uploaded, same bytes
    assert fingerprint(a) != fingerprint({**a, "ETag": '"abd"'})
    assert fingerprint({"size": 5, "mtime": 1.0}) != fingerprint({"size": 5, "mtime": 2.0})


def test_symbolic_links_are_followed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # the attack: 8 inputs, 2 of them symbolic links (one file, one in a linked folder)
    data, store = tmp_path / "data", tmp_path / "store"
    tree(data, [f"r{i}.csv" for i in range(6)])
    tree(store, ["r6.csv", "day/r7.csv"])
    (data / "r6.csv").symlink_to(store / "r6.csv")
    (data / "day").symlink_to(store / "day", target_is_directory=True)
    (data / "day-again").symlink_to(data / "day", target_is_directory=True)  # the same folder
    (data / "loop").symlink_to(data, target_is_directory=True)
    search = {"url": str(data), "pattern": "*.csv", "recursive": True}
    with caplog.at_level(logging.WARNING, logger="neurobatch.io.listing"):
        manifest = discover(search, CSV)
    assert ids(manifest) == ["day__r7", *(f"r{i}" for i in range(7))]  # 8 of 8, by URL
    by_id = manifest.set_index("item_id")
    assert by_id.loc["r6", "url"] == str(data / "r6.csv")  # the path through the link
    assert by_id.loc["day__r7", "url"] == str(data / "day" / "r7.csv")
    assert caplog.messages == [
        (
            f"{data}/loop is a symbolic link to {data}, a folder that contains it (a loop): not "
            "followed"
        )
    ]
    # stable: the same ids and fingerprints again; the target's change shows through the link
    assert discover(search, CSV).equals(manifest)
    (store / "r6.csv").write_bytes(CSV_BYTES * 2)
    after = discover(search, CSV).set_index("item_id")["fingerprint"]
    assert after["r6"] != by_id.loc["r6", "fingerprint"]
    assert after.drop("r6").equals(by_id["fingerprint"].drop("r6"))


def test_linked_folder_inputs_and_files_inside_them(tmp_path: Path) -> None:
    data, store = tmp_path / "data", tmp_path / "store"
    tree(data, ["block-1/a.tev"])
    tree(store, ["block-2/a.tev", "shared/b.tsq"])
    (data / "block-2").symlink_to(store / "block-2", target_is_directory=True)
    (data / "block-1" / "b.tsq").symlink_to(store / "shared" / "b.tsq")
    search = {"url": str(data), "target": "folder"}
    manifest = discover(search, TDT).set_index("item_id")
    assert list(manifest.index) == ["block-1", "block-2"]
    assert manifest.loc["block-1", "size"] == 2 * len(CSV_BYTES)  # the linked file counts
    (store / "shared" / "b.tsq").write_bytes(b"changed")
    assert (
        discover(search, TDT).set_index("item_id").loc["block-1", "fingerprint"]
        != (manifest.loc["block-1", "fingerprint"])
    )


def test_an_output_folder_inside_the_input_is_not_input(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tree(tmp_path, ["a.csv", "old-run/trials_obs.csv", "old-run/manifest.parquet", "old-run/logs/"])
    with caplog.at_level(logging.WARNING, logger="neurobatch.io.listing"):
        manifest = discover({"url": str(tmp_path), "pattern": "*.csv", "recursive": True}, CSV)
    assert ids(manifest) == ["a"]
    assert caplog.messages == [
        (
            f"{tmp_path}/old-run is a neurobatch output folder (it holds manifest.parquet and "
            "logs): not listed as input; keep output folders outside input folders"
        )
    ]


# ---------------------------------------------------------------------------------------------
# Item ids
# ---------------------------------------------------------------------------------------------


def test_ids_are_stable_across_runs(tmp_path: Path) -> None:
    names = ["z.csv", "b/a.csv", "a b.csv", "a_b.csv", "é.csv"]
    tree(tmp_path / "one", names)
    tree(tmp_path / "two", list(reversed(names)))  # created in another order
    first = discover({"url": str(tmp_path / "one"), "recursive": True}, CSV)
    second = discover({"url": str(tmp_path / "two"), "recursive": True}, CSV)
    again = discover({"url": str(tmp_path / "two"), "recursive": True}, CSV)
    assert ids(first) == ids(second) == ids(again)
    assert again.equals(second)


def test_ids_are_safe_and_unique(tmp_path: Path) -> None:
    names = [
        "a b.csv",  # collides with a_b.csv once made safe
        "a_b.csv",
        "x/y.csv",  # collides with x__y.csv
        "x__y.csv",
        "séance 1.csv",
        "实验.csv",  # collides with 记录.csv
        "记录.csv",
        "-rf.csv",
        "trailing.",
        "a" * 200 + ".csv",
    ]
    tree(tmp_path, names)
    manifest = discover({"url": str(tmp_path), "recursive": True}, CSV)
    got = ids(manifest)
    assert len(got) == len(names)
    assert len(set(got)) == len(got)
    for item_id in got:
        assert SAFE.fullmatch(item_id), item_id
        assert item_id not in (".", "..")
        assert not item_id.startswith((".", "-"))
        assert not item_id.endswith(".")
        assert len(item_id) <= 120
    by_url = dict(
        zip(
            manifest["url"].map(lambda u: Path(u).relative_to(tmp_path).as_posix()),
            got,
            strict=True,
        )
    )
    assert by_url["séance 1.csv"] == "seance_1"
    assert by_url["-rf.csv"] == "_rf"
    assert re.fullmatch(r"a_b-[0-9a-f]{8}", by_url["a b.csv"])
    assert re.fullmatch(r"a_b-[0-9a-f]{8}", by_url["a_b.csv"])
    assert re.fullmatch(r"x__y-[0-9a-f]{8}", by_url["x/y.csv"])
    # the hash suffix depends on the input alone: the same after another run
    assert ids(discover({"url": str(tmp_path), "recursive": True}, CSV)) == got


def test_hidden_and_dot_names(tmp_path: Path) -> None:
    tree(tmp_path, [".a.csv", "..csv", "b.csv"])
    assert ids(discover({"url": str(tmp_path)}, CSV)) == ["b"]
    # named by the pattern: taken, and their ids are not hidden names
    assert ids(discover({"url": str(tmp_path), "pattern": ".*"}, CSV)) == ["__csv", "_a"]
    dots = discover(
        {"url": str(tmp_path), "pattern": "b.csv"},
        [{**CSV, "label": ".."}, {**CSV, "label": "."}, {**CSV, "label": "a/../b"}],
    )
    assert ids(dots) == ["b-__", "b-_", "b-a_.._b"]


def test_safe_id() -> None:
    assert safe_id("a/b c.csv") == "a_b_c.csv"
    assert safe_id(".") == "_"
    assert safe_id("...") == "___"
    assert safe_id("ok-1.2_x") == "ok-1.2_x"
    assert safe_id("naïve") == "naive"


# ---------------------------------------------------------------------------------------------
# memory:// and other fsspec URLs
# ---------------------------------------------------------------------------------------------


def test_memory_urls(memory_root: str) -> None:
    fs = fsspec.filesystem("memory")
    root = memory_root.removeprefix("memory://")
    for name in ["b.csv", "a.csv", "sub/c.csv", "sub/d.json"]:
        fs.pipe(f"/{root}/{name}", CSV_BYTES)
    manifest = discover({"url": memory_root, "pattern": "*.csv", "recursive": True}, CSV)
    assert ids(manifest) == ["a", "b", "sub__c"]
    assert list(manifest["url"]) == [
        f"{memory_root}/a.csv",
        f"{memory_root}/b.csv",
        f"{memory_root}/sub/c.csv",
    ]
    with fsspec.open(manifest["url"].iloc[2], "rb") as f:
        assert f.read() == CSV_BYTES
    before = manifest.set_index("item_id")["fingerprint"]
    fs.pipe(f"/{root}/b.csv", CSV_BYTES + b"0.2,1,1,0,0\n")
    after = discover({"url": memory_root + "/", "pattern": "*.csv"}, CSV)
    assert after.set_index("item_id")["fingerprint"]["b"] != before["b"]
    assert after.set_index("item_id")["fingerprint"]["a"] == before["a"]


def test_s3_urls(s3_options: dict[str, Any]) -> None:
    fs = fsspec.filesystem("s3", **s3_options)
    for name in ["photometry/b.csv", "photometry/a.csv", "photometry/mouse 2/c.csv"]:
        fs.pipe(f"lab/{name}", CSV_BYTES)
    search = {
        "url": "s3://lab/photometry/",
        "pattern": "*.csv",
        "recursive": True,
        "storage_options": s3_options,
    }
    manifest = discover(search, CSV)
    assert ids(manifest) == ["a", "b", "mouse_2__c"]
    assert list(manifest["url"]) == [
        "s3://lab/photometry/a.csv",
        "s3://lab/photometry/b.csv",
        "s3://lab/photometry/mouse 2/c.csv",
    ]
    with fsspec.open(manifest["url"].iloc[2], "rb", **s3_options) as f:
        assert f.read() == CSV_BYTES
    # the ETag: re-uploading the same bytes keeps the fingerprint, other bytes change it
    before = manifest.set_index("item_id")["fingerprint"]
    fs.pipe("lab/photometry/a.csv", CSV_BYTES)
    fs.pipe("lab/photometry/b.csv", CSV_BYTES.replace(b"0.1", b"0.2"))
    after = discover(search, CSV).set_index("item_id")["fingerprint"]
    assert after["a"] == before["a"]
    assert after["b"] != before["b"]
    with pytest.raises(InputNotFoundError, match=r"input\.url 's3://lab/nothing' does not exist"):
        discover({**search, "url": "s3://lab/nothing"}, CSV)


# ---------------------------------------------------------------------------------------------
# Fan-out
# ---------------------------------------------------------------------------------------------


def test_fan_out_by_list(tmp_path: Path) -> None:
    tree(tmp_path, ["a.csv", "b.csv"])
    labelled = [{**CSV, "label": "left"}, {**CSV, "signal_col": "other", "label": "right"}]
    manifest = discover({"url": str(tmp_path)}, labelled)
    assert ids(manifest) == ["a-left", "a-right", "b-left", "b-right"]
    assert [a["signal_col"] for a in manifest["loader_arguments"]] == [
        "signal",
        "other",
        "signal",
        "other",
    ]
    numbered = discover({"url": str(tmp_path)}, [CSV, CSV, {**CSV, "label": "x y"}])
    assert ids(numbered)[:3] == ["a-1", "a-2", "a-x_y"]
    # a list of one is one job: no suffix
    assert ids(discover({"url": str(tmp_path)}, [CSV])) == ["a", "b"]
    with pytest.raises(
        ConfigError,
        match=r"^loader\[1\]\.label: 'left' is also "
        r"loader\[0\]'s label",
    ):
        discover({"url": str(tmp_path)}, [labelled[0], labelled[0]])


RESOLVER = """
def by_name(url):
    if url.name == "pair.csv":  # a pathlib.Path
        return [
            {"format": "photometry-csv", "event_cols": ["cue"], "label": "green"},
            {"format": "photometry-csv", "event_cols": ["cue"], "label": "red",
             "signal_col": "red"},
        ]
    return {"format": "photometry-csv", "event_cols": ["cue"]}

def misspelled(url):
    return {"format": "photometry-csv", "event_col": ["cue"]}

def no_such_format(url):
    return [{"format": "photometry-csv"}, {"format": "csv"}]

def other_events(url):
    return {"format": "photometry-csv", "event_cols": ["tone"]}

def not_a_mapping(url):
    return "photometry-csv"

def fails(url):
    raise KeyError(url)

def none_for_b(url):
    return [] if url.name == "b.csv" else {"format": "photometry-csv"}

NOT_CALLABLE = 3
"""


@pytest.fixture
def resolver_file(tmp_path: Path) -> Path:
    path = tmp_path / "code" / "resolve.py"
    path.parent.mkdir()
    path.write_text(textwrap.dedent(RESOLVER))
    return path


def test_fan_out_by_resolver_file(tmp_path: Path, resolver_file: Path) -> None:
    data = tree(tmp_path / "data", ["single.csv", "pair.csv"])
    manifest = discover({"url": str(data)}, f"{resolver_file}:by_name")
    assert ids(manifest) == ["pair-green", "pair-red", "single"]
    assert [a["signal_col"] for a in manifest["loader_arguments"]] == ["signal", "red", "signal"]
    # relative to the pipeline file when it comes from one
    (tmp_path / "pipeline.yaml").write_text(
        textwrap.dedent(
            """
            name: resolved
            input: {url: data, pattern: "*.csv"}
            loader: code/resolve.py:by_name
            trials: {align_to: cue, bounds_s: [-1, 1]}
            output: {url: out}
            """
        )
    )
    config = load_config(tmp_path / "pipeline.yaml")
    assert config.loader == f"{resolver_file}:by_name"
    assert discover_config(config).equals(manifest)


def test_fan_out_by_resolver_callable(tmp_path: Path) -> None:
    data = tree(tmp_path, ["a.csv", "b.csv"])
    seen: list[str] = []

    def resolver(url: Path) -> list[dict[str, Any]]:
        seen.append(url)
        return [CSV, CSV]

    manifest = discover({"url": str(data)}, resolver)
    assert seen == [tmp_path / "a.csv", tmp_path / "b.csv"]
    assert ids(manifest) == ["a-1", "a-2", "b-1", "b-2"]


def test_a_resolver_may_skip_an_input(tmp_path: Path, resolver_file: Path) -> None:
    data = tree(tmp_path / "data", ["a.csv", "b.csv"])
    manifest = discover({"url": str(data)}, f"{resolver_file}:none_for_b")
    assert ids(manifest) == ["a"]
    tree(tmp_path / "only-b", ["b.csv"])
    with pytest.raises(
        InputError,
        match=r"no jobs: the loader resolver .* returned no mappings "
        r"for any of the 1 inputs",
    ):
        discover({"url": str(tmp_path / "only-b")}, f"{resolver_file}:none_for_b")


@pytest.mark.parametrize(
    ("function", "message"),
    [
        (
            "misspelled",
            (
                r"^{url}: loader\.event_col: unknown argument of loader format 'photometry-csv'; "
                r"did you mean 'event_cols'\?$"
            ),
        ),
        (
            "no_such_format",
            r"^{url}: loader\[1\]\.format: unknown loader format 'csv'",
        ),
        (
            "other_events",
            r"^{url}: trials\.align_to: unknown event 'cue' \(loader provides 'tone'\)$",
        ),
        (
            "not_a_mapping",
            r"^{url}: loader resolver .*:not_a_mapping' returned 'str'; expected a mapping",
        ),
        ("fails", r"^{url}: loader resolver .*:fails' failed: KeyError: "),
    ],
)
def test_resolver_errors_name_the_input(
    tmp_path: Path, resolver_file: Path, function: str, message: str
) -> None:
    data = tree(tmp_path / "data", ["a.csv"])
    url = re.escape(str(data / "a.csv"))
    trials = TrialsConfig(align_to="cue", bounds_s=(-1, 1))
    with pytest.raises(ConfigError, match=message.format(url=url)):
        discover({"url": str(data)}, f"{resolver_file}:{function}", trials=trials)


def test_resolver_import_errors(tmp_path: Path, resolver_file: Path) -> None:
    data = tree(tmp_path / "data", ["a.csv"])
    with pytest.raises(ConfigError, match=r"has no attribute 'by_nam'; did you mean 'by_name'\?"):
        discover({"url": str(data)}, f"{resolver_file}:by_nam")
    with pytest.raises(ConfigError, match=r"names a 'int', not a function"):
        discover({"url": str(data)}, f"{resolver_file}:NOT_CALLABLE")


def test_static_loader_events_are_checked_too(tmp_path: Path) -> None:
    data = tree(tmp_path, ["a.csv"])
    trials = TrialsConfig(align_to="cue", bounds_s=(-1, 1), center_on=["levre"])
    with pytest.raises(
        ConfigError,
        match=r"^trials\.center_on\[0\]: unknown event "
        r"'levre'; did you mean 'lever'\?",
    ):
        discover({"url": str(data)}, CSV, trials=trials)


def test_format_and_target_must_agree(tmp_path: Path) -> None:
    data = tree(tmp_path, ["a.csv"])
    with pytest.raises(
        ConfigError,
        match=r"loader\.format: format 'tdt' reads folders, but "
        r"input\.target is 'file'",
    ):
        discover({"url": str(data)}, TDT)


# ---------------------------------------------------------------------------------------------
# Nothing to do
# ---------------------------------------------------------------------------------------------


def test_missing_url_and_no_matches(tmp_path: Path, memory_root: str) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(
        InputNotFoundError,
        match=rf"input\.url '{re.escape(str(missing))}' "
        r"does not exist",
    ):
        discover({"url": str(missing)}, CSV)
    with pytest.raises(FileNotFoundError):
        discover({"url": f"{memory_root}/nowhere"}, CSV)
    tree(tmp_path, ["a.txt", "sub/"])
    with pytest.raises(
        InputNotFoundError,
        match=r"no inputs: input\.url '.*' with pattern "
        r"'\*\.csv' \(not recursively, target: file\) matched nothing$",
    ):
        discover({"url": str(tmp_path), "pattern": "*.csv"}, CSV)
    with pytest.raises(
        InputNotFoundError,
        match=r"with pattern 'sub' \(recursively, target: "
        r"file\) matched nothing; it matched 1 folders: is input\.target right\?",
    ):
        discover({"url": str(tmp_path), "pattern": "sub", "recursive": True}, CSV)
    with pytest.raises(InputError, match=r"is a file, but input\.target is 'folder'"):
        discover({"url": str(tmp_path / "a.txt"), "target": "folder"}, TDT)


def test_discover_config_on_the_example(tmp_path: Path) -> None:
    tree(tmp_path / "data", ["experiment_1.csv", "experiment_2.csv", "experiment_1.json"])
    (tmp_path / "pipeline.yaml").write_text(
        textwrap.dedent(
            """
            name: lever-task
            input: {url: ./data, pattern: "experiment_*.csv"}
            loader:
              format: photometry-csv
              event_cols: [trial_cue, lever1, lever2, shock]
              annotation: "{stem}.json"
            trials: {align_to: trial_cue, bounds_s: [-8, 8], center_on: [lever1, lever2]}
            output: {url: ./out}
            """
        )
    )
    manifest = discover_config(load_config(tmp_path / "pipeline.yaml"))
    assert ids(manifest) == ["experiment_1", "experiment_2"]
    assert manifest["url"].iloc[0] == str(tmp_path / "data" / "experiment_1.csv")
    assert manifest["loader_arguments"].iloc[0]["annotation"] == "{stem}.json"


# ---------------------------------------------------------------------------------------------
# Ready flags
# ---------------------------------------------------------------------------------------------


def test_a_ready_flag_keeps_only_complete_folders(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``target: folder``: the flag is inside the input folder; the others wait, counted."""
    tree(tmp_path, ["s1/a.tev", "s1/raw_session.flag", "s2/a.tev", "s3/a.tev", "s3/b/x"])
    search = {"url": str(tmp_path), "target": "folder", "ready_flag": "raw_session.flag"}
    with caplog.at_level(logging.INFO, logger="neurobatch.io.listing"):
        assert ids(discover(search, TDT)) == ["s1"]
    [line] = [r.getMessage() for r in caplog.records if "ready flag" in r.getMessage()]
    assert line.startswith("2 input(s) under ") and "'raw_session.flag'" in line
    (tmp_path / "s3" / "raw_session.flag").write_bytes(b"")
    assert ids(discover(search, TDT)) == ["s1", "s3"]
    # a path inside the folder, and the flag counted in the folder's fingerprint like any file
    nested = {**search, "ready_flag": "b/x"}
    assert ids(discover(nested, TDT)) == ["s3"]


def test_a_ready_flag_beside_files(tmp_path: Path) -> None:
    """``target: file``: the flag lies in the file's folder; recursive and not."""
    tree(tmp_path, ["m1/a.csv", "m1/b.csv", "m1/.done", "m2/c.csv", "d.csv"])
    deep = {"url": str(tmp_path), "pattern": "*.csv", "recursive": True, "ready_flag": ".done"}
    assert ids(discover(deep, CSV)) == ["m1__a", "m1__b"]
    one_level = {"url": str(tmp_path), "pattern": "*/*.csv", "ready_flag": ".done"}
    assert ids(discover(one_level, CSV)) == ["m1__a", "m1__b"]
    (tmp_path / ".done").write_bytes(b"")  # the top folder's own flag
    assert ids(discover({**deep, "recursive": False}, CSV)) == ["d"]
    single = {"url": str(tmp_path / "m2" / "c.csv"), "ready_flag": ".done"}
    with pytest.raises(NoInputsError, match=r"has no ready flag '\.done' beside it yet"):
        discover(single, CSV)
    (tmp_path / "m2" / ".done").write_bytes(b"")
    assert ids(discover(single, CSV)) == ["c"]


def test_a_ready_flag_above_the_files(tmp_path: Path) -> None:
    """IBL's layout: the rig writes ``raw_session.flag`` at the session's top, the
    recordings one folder below it (``../raw_session.flag``, from the files)."""
    sessions = ["ZM_1/2024-05-02/001", "ZM_1/2024-05-03/001", "ZM_2/2024-05-03/002"]
    tree(tmp_path, [f"{s}/raw_photometry_data/photometry.csv" for s in sessions])
    (tmp_path / sessions[1] / "raw_session.flag").write_bytes(b"")
    deep = {"url": str(tmp_path), "pattern": "*.csv", "recursive": True}
    for search in (deep, {"url": str(tmp_path), "pattern": "*/*/*/raw_photometry_data/*.csv"}):
        flagged = {**search, "ready_flag": "../raw_session.flag"}
        assert ids(discover(flagged, CSV)) == [
            "ZM_1__2024-05-03__001__raw_photometry_data__photometry"
        ]
    # a flag above input.url is never found
    below = {
        "url": str(tmp_path / "ZM_1"),
        "pattern": "*/*/*/*.csv",
        "ready_flag": "../../../../raw_session.flag",
    }
    with pytest.raises(NoInputsError):
        discover(below, CSV)


def test_a_ready_flag_with_listed_files(tmp_path: Path) -> None:
    tree(tmp_path, ["s1/a.csv", "s1/raw_session.flag", "s2/a.csv"])
    listed = {"url": str(tmp_path), "files": ["s1/a.csv", "s2/a.csv"]}
    flagged = {**listed, "ready_flag": "raw_session.flag"}
    assert ids(discover(flagged, CSV)) == ["s1__a"]
    with pytest.raises(NoInputsError, match=r"none of the 1 listed input\(s\) of .* has its"):
        discover({**flagged, "files": ["s2/a.csv"]}, CSV)


def test_a_source_with_nothing_ready_waits_while_the_others_run(tmp_path: Path) -> None:
    tree(tmp_path, ["rig1/s1/a.csv", "rig1/s1/raw_session.flag", "rig2/s2/b.csv"])

    def config(*flags: str | None) -> PipelineConfig:
        return PipelineConfig.model_validate(
            {
                "name": "rigs",
                "input": [
                    {
                        "name": name,
                        "url": str(tmp_path / name),
                        "pattern": "*/*.csv",
                        "ready_flag": flag,
                    }
                    for name, flag in zip(("rig1", "rig2"), flags, strict=True)
                ],
                "loader": CSV,
                "output": {"url": str(tmp_path / "out")},
            }
        )

    flagged = config("raw_session.flag", "raw_session.flag")
    assert ids(discover_config(flagged)) == ["rig1__s1__a"]
    (tmp_path / "rig1" / "s1" / "raw_session.flag").unlink()
    with pytest.raises(NoInputsError, match="none of the 2 sources has an input with its ready"):
        discover_config(flagged)
    assert ids(discover_config(config("raw_session.flag", None))) == ["rig2__s2__b"]


def test_no_ready_input_is_no_inputs_not_a_missing_url(tmp_path: Path) -> None:
    tree(tmp_path, ["s1/a.tev"])
    search = {"url": str(tmp_path), "target": "folder", "ready_flag": "raw_session.flag"}
    with pytest.raises(
        NoInputsError, match=r"matched nothing with its ready flag 'raw_session\.flag'"
    ):
        discover(search, TDT)
    with pytest.raises(InputNotFoundError) as missing:
        discover({**search, "url": str(tmp_path / "gone")}, TDT)
    assert not isinstance(missing.value, NoInputsError)


@pytest.mark.parametrize("flag", ["", "/abs.flag", "..", "a/../b", "a//b", "./x", "x/"])
def test_a_ready_flag_must_be_a_relative_path(tmp_path: Path, flag: str) -> None:
    with pytest.raises(ConfigError, match=r"input\.ready_flag: expected a file name or a relative"):
        path = tmp_path / "pipeline.yaml"
        path.write_text(
            f"name: x\ninput: {{url: data, ready_flag: {json.dumps(flag)}}}\n"
            "loader: {format: photometry-csv}\noutput: {url: out}\n"
        )
        load_config(path)


def test_ready_flags_on_s3_come_from_one_listing(
    s3_options: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """On an object store the flags are read from the listing: no request per input (the
    S3 server's own request log says which requests discovery made)."""
    fs = fsspec.filesystem("s3", **s3_options)
    sessions = [f"flagged/subject/2024-01-0{i}/00{i}" for i in range(1, 7)]
    for i, session in enumerate(sessions):
        fs.pipe(f"lab/{session}/raw_data/a.tev", CSV_BYTES)
        if i % 2 == 0:
            fs.pipe(f"lab/{session}/raw_session.flag", b"")
    search = {
        "url": "s3://lab/flagged/",
        "pattern": "*/*/*",
        "target": "folder",
        "ready_flag": "raw_session.flag",
        "storage_options": s3_options,
    }
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="werkzeug"):
        manifest = discover(search, TDT)
    assert ids(manifest) == [
        "subject__2024-01-01__001",
        "subject__2024-01-03__003",
        "subject__2024-01-05__005",
    ]
    requests = [r.getMessage() for r in caplog.records if r.name == "werkzeug"]
    assert requests, "the server logs each request"
    # no request for a flag itself; each folder listed once (the flagged sessions are then
    # listed whole for their fingerprints, the others not at all)
    assert not [line for line in requests if "raw_session.flag" in line]
    folders = [
        re.search(r"prefix=([^&]*)&delimiter=/&encoding", line)  # max-keys=1: exists(root)
        for line in requests
    ]
    listed = [m.group(1) for m in folders if m is not None]
    assert len(listed) == len(set(listed)) and "flagged/subject/2024-01-02/002/" in listed
    whole = [line for line in requests if "&delimiter=&" in line]
    assert len(whole) == 3 and not [line for line in whole if "002/" in line]
    fs.pipe(f"lab/{sessions[1]}/raw_session.flag", b"")
    assert len(discover(search, TDT)) == 4  # a flag written since: the next listing sees it
