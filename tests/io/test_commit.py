"""Commits are atomic; the inventories they record find what changed since."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pytest
import zarr

from endpoint import Endpoint
from neurobatch.errors import StorageError, StoreDamagedError
from neurobatch.io import files
from neurobatch.io.commit import COMMIT_MARKER, commit, inventory, read_commit, remove, verify
from neurobatch.io.zarr import ZarrFormat, open_dataset, write_dataset
from stores import CHUNKED, recording
from zarr_formats import FORMATS, chunk_key, chunk_path, committed

# --- commits ----------------------------------------------------------------------------------


def test_commit_is_written_last_and_read_back(tmp_path: Path) -> None:
    url = str(tmp_path / "items" / "a" / "recording.zarr")
    assert read_commit(url) is None
    write_dataset(recording(100), url, chunk_memory=2**20)
    assert read_commit(url) is None  # data without a marker: not done
    marker = {"params": "abc", "n_trials": np.int64(12), "finished": "2026-01-01T00:00:00"}
    commit(url, marker)
    assert read_commit(url) == {"params": "abc", "n_trials": 12, "finished": "2026-01-01T00:00:00"}
    assert sorted(p for p in os.listdir(url) if p.startswith(COMMIT_MARKER)) == [COMMIT_MARKER]
    commit(url, {"params": "def"})  # replaced whole
    assert read_commit(url) == {"params": "def"}
    open_dataset(url)  # the marker does not disturb zarr

    write_dataset(recording(100), url, chunk_memory=2**20)  # a rewrite un-commits first
    assert read_commit(url) is None


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", ""])
def test_unreadable_commit_means_not_done(tmp_path: Path, content: str) -> None:
    (tmp_path / COMMIT_MARKER).write_text(content)
    assert read_commit(str(tmp_path)) is None


def test_remove_cleans_a_partial_output(tmp_path: Path) -> None:
    url = str(tmp_path / "trials.zarr")
    write_dataset(recording(100), url, chunk_memory=2**20)
    commit(url, {"params": "x"})
    remove(url)
    assert not os.path.exists(url)
    remove(url)  # absent: nothing to do


def test_marker_file_is_plain_json(tmp_path: Path) -> None:
    commit(str(tmp_path), {"params": "abc", "nested": {"a": [1, 2]}})
    assert json.loads((tmp_path / COMMIT_MARKER).read_text()) == {
        "params": "abc",
        "nested": {"a": [1, 2]},
    }


# --- inventories and verification -------------------------------------------------------------


def chunk_sizes(url: str, name: str) -> dict[str, int]:
    """The chunk objects of array ``name`` in a local store: key to size in bytes."""
    folder = Path(url) / name
    return {
        p.relative_to(folder).as_posix(): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in ("zarr.json", ".zarray", ".zattrs")
    }


@FORMATS
def test_inventory_counts_stored_chunks_not_the_grid(
    tmp_path: Path, zarr_format: ZarrFormat
) -> None:
    ds = recording()  # 10,000 samples in chunks of 4096: two full chunks, 1808 in the last
    ds["signal"][4096:8192] = np.nan  # chunk c/1 holds only the fill value: never written
    url = str(tmp_path / "recording.zarr")
    write_dataset(ds, url, chunk_memory=CHUNKED, zarr_format=zarr_format)
    nested = zarr.open_group(url, mode="a").create_group("units")
    nested.create_array("rate", shape=(3,), dtype="f8", chunks=(2,))[:] = [1.0, 2.0, 3.0]

    found = inventory(url)
    assert sorted(found) == [
        "event_name",
        "event_time",
        "isosbestic",
        "signal",
        "time",
        "units/rate",
    ]
    signal = chunk_sizes(url, "signal")
    assert sorted(signal) == [chunk_key(i, zarr_format=zarr_format) for i in (0, 2)]
    assert found["signal"] == {
        "shape": [10_000],
        "chunks": [4096],
        "stored_chunks": 2,
        "stored_bytes": sum(signal.values()),
    }
    assert found["isosbestic"]["stored_chunks"] == 3
    assert found["isosbestic"]["stored_bytes"] == sum(chunk_sizes(url, "isosbestic").values())
    assert found["units/rate"] == {
        "shape": [3],
        "chunks": [2],
        "stored_chunks": 2,
        "stored_bytes": sum(chunk_sizes(url, "units/rate").values()),
    }
    np.testing.assert_array_equal(open_dataset(url).signal.values, ds.signal.values)
    assert inventory(str(tmp_path / "absent.zarr")) == {}


def test_commit_records_the_inventory_only_when_asked(tmp_path: Path) -> None:
    url = str(tmp_path / "recording.zarr")
    write_dataset(recording(), url, chunk_memory=CHUNKED)
    commit(url, {"params": "abc"})
    assert read_commit(url) == {"params": "abc"}
    commit(url, {"params": "abc", "arrays": "stale"}, arrays=True)
    marker = read_commit(url)
    assert marker is not None
    assert marker["params"] == "abc"
    assert marker["arrays"] == inventory(url)
    assert sorted(p for p in os.listdir(url) if p.startswith(COMMIT_MARKER)) == [COMMIT_MARKER]


@FORMATS
def test_verify_an_intact_store_and_an_older_marker(
    tmp_path: Path, zarr_format: ZarrFormat
) -> None:
    url = str(tmp_path / "recording.zarr")
    marker = committed(recording(), url, zarr_format=zarr_format)
    assert verify(url, marker) == []
    assert verify(url, marker, zarr_format=zarr_format) == []
    open_dataset(url).load()  # reading changes nothing
    assert verify(url, marker) == []
    assert verify(url, {"params": "abc"}) == []  # committed before inventories: intact


@FORMATS
def test_verify_names_a_store_in_the_other_format(tmp_path: Path, zarr_format: ZarrFormat) -> None:
    url = str(tmp_path / "recording.zarr")
    marker = committed(recording(), url, zarr_format=zarr_format)
    other = 5 - zarr_format
    assert verify(url, marker, zarr_format=other) == [
        (
            f"the store is in Zarr format {zarr_format}, and Zarr format {other} is asked "
            "(output.zarr_format)"
        )
    ]
    stage = tmp_path / "nothing"  # a stage that stored nothing: no store, no format to check
    commit(str(stage), {"params": "abc"}, arrays=True)
    assert verify(str(stage), read_commit(str(stage)) or {}, zarr_format=other) == []


@FORMATS
def test_verify_names_a_deleted_chunk(tmp_path: Path, zarr_format: ZarrFormat) -> None:
    url = str(tmp_path / "recording.zarr")
    marker = committed(recording(), url, zarr_format=zarr_format)
    chunk_path(url, "signal", 1, zarr_format=zarr_format).unlink()
    key = chunk_key(1, zarr_format=zarr_format)
    assert verify(url, marker) == [
        f"array 'signal': 2 of 3 stored chunks present (chunk {key} missing)"
    ]
    # zarr alone reads the hole as the fill value, silently
    assert np.isnan(open_dataset(url).signal.values[4096:8192]).all()


@FORMATS
def test_verify_a_deleted_chunk_beside_a_never_written_one(
    tmp_path: Path, zarr_format: ZarrFormat
) -> None:
    ds = recording()
    ds["signal"][4096:8192] = np.nan
    url = str(tmp_path / "recording.zarr")
    marker = committed(ds, url, zarr_format=zarr_format)
    chunk_path(url, "signal", 2, zarr_format=zarr_format).unlink()
    one, two = (chunk_key(i, zarr_format=zarr_format) for i in (1, 2))
    assert verify(url, marker) == [
        (
            f"array 'signal': 1 of 2 stored chunks present (1 missing among {one}, {two}; the "
            "others absent were never written (they hold only the fill value))"
        )
    ]
    zarr.open_array(f"{url}/signal", mode="r+")[4096:] = 1.0  # c/1 and c/2 written anew
    assert verify(url, marker) == [
        "array 'signal': 3 stored chunks, 2 recorded (chunks were written after the commit)"
    ]


@FORMATS
def test_verify_names_a_truncated_chunk_and_a_resized_or_missing_array(
    tmp_path: Path, zarr_format: ZarrFormat
) -> None:
    url = str(tmp_path / "recording.zarr")
    marker = committed(recording(), url, zarr_format=zarr_format)
    first = chunk_key(0, zarr_format=zarr_format)
    before = chunk_sizes(url, "signal")[first]
    with open(chunk_path(url, "signal", 0, zarr_format=zarr_format), "r+b") as f:
        f.truncate(before - 100)
    zarr.open_array(f"{url}/isosbestic", mode="r+").resize((5000,))
    remove(f"{url}/event_time")
    zarr.open_group(url, mode="a").create_array("extra", shape=(2,), dtype="f8")
    recorded = marker["arrays"]["signal"]["stored_bytes"]
    assert verify(url, marker) == [
        "array 'event_time' is missing (recorded with shape (4,))",
        (
            "array 'isosbestic': shape (5000,), (10000,) recorded (it was resized or "
            "rewritten after the commit)"
        ),
        (
            f"array 'signal': {recorded - 100:,} stored bytes, {recorded:,} recorded (a chunk "
            "was truncated or replaced)"
        ),
        "array 'extra' is in the store but not in the commit record",
    ]
    with pytest.raises(StoreDamagedError, match=rf"array 'signal': chunk {first} failed its CRC"):
        open_dataset(url).signal.values  # noqa: B018


def test_verify_on_a_memory_filesystem() -> None:
    url = "memory://integrity/items/a/recording.zarr"
    fs = fsspec.filesystem("memory")
    root = "/integrity/items/a/recording.zarr"
    try:
        marker = committed(recording(), url)
        assert marker["arrays"]["signal"]["stored_chunks"] == 3
        assert verify(url, marker) == []
        fs.rm(f"{root}/signal/c.2")
        content = fs.cat_file(f"{root}/isosbestic/c.0")
        fs.pipe_file(f"{root}/isosbestic/c.0", content[:-7])
        recorded = marker["arrays"]["isosbestic"]["stored_bytes"]
        assert verify(url, marker) == [
            (
                f"array 'isosbestic': {recorded - 7:,} stored bytes, {recorded:,} recorded (a "
                "chunk was truncated or replaced)"
            ),
            "array 'signal': 2 of 3 stored chunks present (chunk c.2 missing)",
        ]
        with pytest.raises(StoreDamagedError, match=rf"^{url}: array 'isosbestic': chunk c.0"):
            open_dataset(url).isosbestic.values  # noqa: B018
    finally:
        remove(url)
    assert verify(url, marker) == [
        f"array {name!r} is missing (recorded with shape {shape})"
        for name, shape in [
            ("event_name", (4,)),
            ("event_time", (4,)),
            ("isosbestic", (10_000,)),
            ("signal", (10_000,)),
            ("time", (10_000,)),
        ]
    ]


def test_an_unreachable_store_is_never_taken_for_a_damaged_one(
    s3_options: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = "s3://lab/commit-outage/recording.zarr"
    with Endpoint(s3_options["client_kwargs"]["endpoint_url"]) as relay:
        so = relay.options(s3_options)
        write_dataset(recording(100), url, chunk_memory=2**20, storage_options=so)
        commit(url, {"params": "abc"}, arrays=True, storage_options=so)
        marker = read_commit(url, storage_options=so)
        assert marker is not None
        # the metadata reads fail for a moment: retried, the store verifies as intact
        relay.down_at(rb"GET \S*/zarr\.json", seconds=1.0)
        assert verify(url, marker, storage_options=so) == []
        assert relay.outages == 1
        # they keep failing: an error naming the store, never a list of "damage" (which
        # would have the store removed and redone)
        monkeypatch.setattr(files, "RETRY_SECONDS", 1.0)
        relay.down_at(rb"GET \S*/zarr\.json")
        with pytest.raises(StorageError, match=f"^cannot reach the storage listing {url} "):
            verify(url, marker, storage_options=so)
