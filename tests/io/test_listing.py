"""Listing input folders (:mod:`neurobatch.io.listing`): real symbolic links, loops, outputs."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest

from neurobatch.engine.layout import MANIFEST, OutputLayout
from neurobatch.io.listing import (
    OUTPUT_FILES,
    OUTPUT_MARKERS,
    list_entries,
    output_marker,
    walk_local,
)
from neurobatch.io.lock import LOCK_NAME, OutputLock


def files(root: Path, names: list[str]) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(name)


def reference_walk(root: Path) -> dict[str, str]:
    """Independent reference: ``os.walk`` with ``followlinks=True`` and no loop guard, cut
    at a depth that a loop-free tree never reaches, as relative path -> entry type."""
    found = {}
    for folder, dirs, names in os.walk(root, followlinks=True):
        rel = Path(folder).relative_to(root)
        if len(rel.parts) > 8:
            dirs.clear()
            continue
        for name in dirs:
            found[(rel / name).as_posix()] = "directory"
        for name in names:
            if (Path(folder) / name).exists():
                found[(rel / name).as_posix()] = "file"
    return found


# ---------------------------------------------------------------------------------------------
# Symbolic links
# ---------------------------------------------------------------------------------------------


def test_linked_files_and_folders_are_listed_with_their_targets_stats(tmp_path: Path) -> None:
    data, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    files(data, ["a.csv", "sub/b.csv"])
    files(elsewhere, ["c.csv", "deep/d.csv", "e.csv"])
    (data / "c-link.csv").symlink_to(elsewhere / "c.csv")
    (data / "linked").symlink_to(elsewhere / "deep", target_is_directory=True)
    (data / "sub" / "relative.csv").symlink_to("../../elsewhere/e.csv")
    listed = walk_local(str(data))
    # the same tree as os.walk following links (which has no loop here)
    assert {k: v["type"] for k, v in listed.items()} == reference_walk(data)
    assert list(listed) == sorted(listed)
    assert set(listed) == {
        "a.csv",
        "c-link.csv",
        "linked",
        "linked/d.csv",
        "sub",
        "sub/b.csv",
        "sub/relative.csv",
    }
    for relative, info in listed.items():
        assert info["name"] == f"{data}/{relative}"
        assert info["islink"] == (relative not in ("a.csv", "sub", "sub/b.csv"))
        if info["type"] == "file":  # the target's size and time, not the link's
            st = (data / relative).stat()
            assert (info["size"], info["mtime"]) == (st.st_size, st.st_mtime)
    link = data / "c-link.csv"
    assert link.lstat().st_size != link.stat().st_size
    os.utime(elsewhere / "c.csv", (1e9, 1e9))  # the target changes: so does what is listed
    assert walk_local(str(data))["c-link.csv"]["mtime"] == 1e9


@pytest.mark.parametrize(
    "loop",
    [
        pytest.param(lambda data: (data / "sub" / "up", data), id="to-the-input-folder"),
        pytest.param(lambda data: (data / "sub" / "deeper" / "up", data / "sub"), id="ancestor"),
        pytest.param(lambda data: (data / "sub" / "self", data / "sub"), id="to-itself"),
        pytest.param(lambda data: (data / "root", Path("/")), id="to-the-root-of-the-disk"),
        pytest.param(lambda data: (data / "parent", data.parent), id="above-the-input-folder"),
    ],
)
def test_a_link_to_a_folder_that_holds_it_is_a_loop_named_in_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, loop: object
) -> None:
    data = tmp_path / "data"
    files(data, ["a.csv", "sub/b.csv", "sub/deeper/c.csv"])
    link, target = loop(data)  # type: ignore[operator]
    link.symlink_to(target, target_is_directory=True)
    with caplog.at_level(logging.WARNING, logger="neurobatch.io.listing"):
        listed = walk_local(str(data))
    assert set(listed) == {"a.csv", "sub", "sub/b.csv", "sub/deeper", "sub/deeper/c.csv"}
    (record,) = caplog.records
    assert record.getMessage() == (
        f"{link} is a symbolic link to {target}, a folder that contains it (a loop): not followed"
    )


def test_links_between_two_folders_end(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # a -> b and b -> a, both outside the input folder; and a chain of links
    data, a, b = tmp_path / "data", tmp_path / "a", tmp_path / "b"
    files(a, ["x.csv"])
    files(b, ["y.csv"])
    (a / "to-b").symlink_to(b, target_is_directory=True)
    (b / "to-a").symlink_to(a, target_is_directory=True)
    data.mkdir()
    (data / "a").symlink_to(a, target_is_directory=True)
    (data / "chain").symlink_to(data / "a", target_is_directory=True)
    with caplog.at_level(logging.WARNING, logger="neurobatch.io.listing"):
        listed = walk_local(str(data))
    assert set(listed) == {"a", "a/x.csv", "a/to-b", "a/to-b/y.csv"}
    assert [r.getMessage() for r in caplog.records] == [
        (
            f"{data}/a/to-b/to-a is a symbolic link to {a}, a folder that contains it (a loop): "
            "not followed"
        )
    ]


def test_each_file_is_listed_once_real_paths_first(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    files(data, ["z-real.csv", "sub/b.csv"])
    (data / "a-alias.csv").symlink_to(data / "z-real.csv")  # sorts first, listed as the real
    (data / "also-sub").symlink_to(data / "sub", target_is_directory=True)
    with caplog.at_level(logging.INFO, logger="neurobatch.io.listing"):
        listed = walk_local(str(data))
    assert set(listed) == {"sub", "sub/b.csv", "z-real.csv"}
    assert f"{data}/a-alias.csv: the same file as 'z-real.csv', listed once" in caplog.messages
    # hard links are real paths: both listed, as before
    os.link(data / "z-real.csv", data / "hard.csv")
    assert {"hard.csv", "z-real.csv"} <= set(walk_local(str(data)))


def test_a_broken_link_is_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    files(tmp_path, ["a.csv"])
    (tmp_path / "gone.csv").symlink_to(tmp_path / "nowhere.csv")
    with caplog.at_level(logging.WARNING, logger="neurobatch.io.listing"):
        assert list(walk_local(str(tmp_path))) == ["a.csv"]
    assert caplog.messages == [
        (
            f"{tmp_path}/gone.csv is a symbolic link to {tmp_path}/nowhere.csv, which cannot be "
            "reached (No such file or directory): skipped"
        )
    ]


def test_depth_and_hidden_entries(tmp_path: Path) -> None:
    files(tmp_path / "data", ["a.csv", "s/b.csv", "s/t/c.csv", ".hidden/d.csv"])
    (tmp_path / "data" / "l").symlink_to(tmp_path / "data" / "s" / "t")
    root = str(tmp_path / "data")
    assert set(walk_local(root, maxdepth=1, hidden=False)) == {"a.csv", "s", "l"}
    # l is the same folder as s/t: listed once, under its real path
    assert set(walk_local(root, maxdepth=2, hidden=False)) == {"a.csv", "s", "s/b.csv", "s/t"}
    everything = walk_local(root)
    assert {".hidden", ".hidden/d.csv", "s/t/c.csv"} <= set(everything)
    assert "l" not in everything  # the real path s/t came first


# ---------------------------------------------------------------------------------------------
# Output folders inside input folders
# ---------------------------------------------------------------------------------------------


def test_the_markers_are_what_an_output_folder_holds() -> None:
    layout = OutputLayout("/o")
    assert OUTPUT_FILES == (MANIFEST, "logs")
    assert layout.manifest == f"/o/{OUTPUT_FILES[0]}"
    assert layout.run_log.startswith(f"/o/{OUTPUT_FILES[1]}/")
    assert OUTPUT_MARKERS == (LOCK_NAME, f"{LOCK_NAME}.guard")
    assert output_marker({LOCK_NAME}) == LOCK_NAME
    assert output_marker({"manifest.parquet"}) is None


@pytest.fixture
def with_an_old_output(tmp_path: Path) -> Iterator[Path]:
    """An input folder holding, besides its inputs, an output folder that a real lock used."""
    data = tmp_path / "data"
    files(data, ["a.csv", "day2/b.csv"])
    out = data / "day2" / "results"
    out.mkdir(parents=True)
    with OutputLock(str(out), command="test"):
        assert (out / LOCK_NAME).exists()
        yield data


@pytest.mark.parametrize("held", [True, False], ids=["while-held", "after-the-run"])
def test_a_local_output_folder_is_left_out(
    with_an_old_output: Path, caplog: pytest.LogCaptureFixture, held: bool
) -> None:
    data = with_an_old_output
    out = data / "day2" / "results"
    files(out, ["trials_obs.csv", "logs/x.csv"])
    if not held:  # the guard stays after the run: still an output folder
        (out / LOCK_NAME).unlink()
    with caplog.at_level(logging.WARNING, logger="neurobatch.io.listing"):
        listed = walk_local(str(data))
    assert set(listed) == {"a.csv", "day2", "day2/b.csv"}
    marker = LOCK_NAME if held else f"{LOCK_NAME}.guard"
    assert caplog.messages == [
        (
            f"{out} is a neurobatch output folder (it holds {marker}): not listed as input; keep "
            "output folders outside input folders"
        )
    ]


def test_an_output_folder_is_left_out_of_remote_listings(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fs = fsspec.filesystem("memory")
    root = f"/listing-{os.urandom(4).hex()}"
    for name in [
        "a.csv",
        "old/manifest.parquet",
        "old/trials_obs.csv",
        "old/logs/run.log",
        "old/items/a/ingest/zarr.json",
        "blocks/b1/x.tev",
        "blocks/b2/.neurobatch-lock.json",
        "blocks/b2/trials_obs.csv",
    ]:
        fs.pipe(f"{root}/{name}", b"x")
    try:
        with caplog.at_level(logging.WARNING, logger="neurobatch.io.listing"):
            found = list_entries(fs, root, pattern="*.csv", recursive=True, local=False)
            assert list(found) == ["a.csv"]
            folders = list_entries(
                fs, f"{root}/blocks", pattern="b*", recursive=False, local=False, folders=True
            )
        assert list(folders) == ["b1"]  # b2 holds a lock: seen by listing one level deeper
        lock = (
            f"{root}/blocks/b2 is a neurobatch output folder (it holds .neurobatch-lock.json): "
            "not listed as input; keep output folders outside input folders"
        )
        assert caplog.messages == [
            lock,
            (
                f"{root}/old is a neurobatch output folder (it holds manifest.parquet and logs): "
                "not listed as input; keep output folders outside input folders"
            ),
            lock,
        ]
    finally:
        fs.rm(root, recursive=True)


def test_an_output_folder_beside_the_inputs_is_said_only_when_searched(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    files(tmp_path, ["a.csv", "out/manifest.parquet", "out/logs/run.log"])
    with caplog.at_level(logging.DEBUG, logger="neurobatch.io.listing"):
        # "*.csv" at the top: the search never goes into out/ (DEBUG)
        assert list_entries(
            fs_local(), str(tmp_path), pattern="*.csv", recursive=False, local=True
        ) == {"a.csv": walk_local(str(tmp_path), maxdepth=1)["a.csv"]}
        # folders at the top: out/ would have been one (WARNING)
        assert list_entries(
            fs_local(), str(tmp_path), pattern=None, recursive=False, local=True, folders=True
        ).keys() == {"a.csv"}
    assert [r.levelname for r in caplog.records if "output folder" in r.getMessage()] == [
        "DEBUG",
        "DEBUG",  # the reference walk above
        "WARNING",
    ]


def fs_local() -> fsspec.AbstractFileSystem:
    return fsspec.filesystem("file")
