"""The raw cache against a real local S3 server: copies equal the remote, a download killed
by SIGKILL resumes where it stopped, corrupt copies are refused, changed remotes fetched again."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pytest

from downloads import killed_midway
from neurobatch.errors import InputError
from neurobatch.io.cache import RECORDS, cache_path, fetch_file, fetch_input
from neurobatch.io.discover import discover, fingerprint

TDT = {"format": "tdt", "box": "1", "signal_label": "465A", "isosbestic_label": "405A"}
SIZE = 4 * 2**20
BLOCK = 32 * 2**10


def _bytes(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


@pytest.fixture
def s3(s3_options: dict[str, Any], request: pytest.FixtureRequest) -> Iterator[str]:
    """A prefix of its own in the test bucket."""
    prefix = f"s3://lab/cache/{request.node.name}"
    yield prefix
    fs = fsspec.filesystem("s3", **s3_options)
    if fs.exists(prefix):
        fs.rm(prefix, recursive=True)


class Reads:
    """The ranged reads a filesystem makes (``cat_file`` wrapped on its cached instance)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, options: dict[str, Any]) -> None:
        self.ranges: list[tuple[int, int]] = []
        fs = fsspec.filesystem("s3", **options)
        original = fs.cat_file

        def cat_file(path: str, start: int | None = None, end: int | None = None) -> bytes:
            data: bytes = original(path, start=start, end=end)
            self.ranges.append((start or 0, (start or 0) + len(data)))
            return data

        monkeypatch.setattr(fs, "cat_file", cat_file)

    @property
    def bytes(self) -> int:
        return sum(end - start for start, end in self.ranges)


def _put(url: str, data: bytes, options: dict[str, Any]) -> dict[str, Any]:
    fs, path = fsspec.core.url_to_fs(url, **options)
    fs.pipe_file(path, data)
    fs.invalidate_cache()
    info: dict[str, Any] = fs.info(path)
    return info


def _killed_midway(url: str, cache: Path, options: dict[str, Any]) -> int:
    have = killed_midway(url, cache, options, block=BLOCK)
    assert 0 < have < SIZE
    return have


def test_a_fetch_equals_the_remote_and_is_recorded(
    s3: str, s3_options: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _bytes(300_001, seed=1)
    info = _put(f"{s3}/x.bin", data, s3_options)

    path, downloaded = fetch_file(
        f"{s3}/x.bin", str(tmp_path), storage_options=s3_options, block_size=BLOCK
    )

    assert path == str(tmp_path / "s3" / "lab" / "cache" / s3.rsplit("/", 1)[1] / "x.bin")
    assert Path(path).read_bytes() == data and downloaded == len(data)
    record = json.loads(
        Path(tmp_path, RECORDS, "files", *Path(path).relative_to(tmp_path).parts)
        .with_name("x.bin.json")
        .read_text()
    )
    assert record["md5"] == hashlib.md5(data).hexdigest() == info["ETag"].strip('"')
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    assert record["verified"] == "md5" and record["size"] == len(data)
    assert record["fingerprint"] == fingerprint(info)
    assert sorted(p.name for p in Path(path).parent.iterdir()) == ["x.bin"]  # nothing else
    reads = Reads(monkeypatch, s3_options)
    assert fetch_file(f"{s3}/x.bin", str(tmp_path), storage_options=s3_options)[1] == 0
    assert reads.ranges == []


def test_a_download_killed_midway_resumes_and_verifies(
    s3: str, s3_options: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _bytes(SIZE, seed=2)
    _put(f"{s3}/big.bin", data, s3_options)
    have = _killed_midway(f"{s3}/big.bin", tmp_path, s3_options)
    local = Path(cache_path(str(tmp_path), f"{s3}/big.bin"))
    assert not local.exists()

    reads = Reads(monkeypatch, s3_options)
    path, downloaded = fetch_file(
        f"{s3}/big.bin", str(tmp_path), storage_options=s3_options, block_size=BLOCK
    )

    assert reads.ranges[0][0] == have  # only the rest was read
    assert reads.bytes == downloaded == SIZE - have
    assert Path(path).read_bytes() == data
    assert not Path(f"{path}.part").exists() and not Path(f"{path}.part.json").exists()


def test_a_corrupt_part_is_refused_in_one_line_and_removed(
    s3: str, s3_options: dict[str, Any], tmp_path: Path
) -> None:
    data = _bytes(SIZE, seed=3)
    info = _put(f"{s3}/big.bin", data, s3_options)
    _killed_midway(f"{s3}/big.bin", tmp_path, s3_options)
    local = Path(cache_path(str(tmp_path), f"{s3}/big.bin"))
    part = Path(f"{local}.part")
    with part.open("r+b") as f:  # a bit flipped on the disk
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0x10]))

    with pytest.raises(InputError) as raised:
        fetch_file(f"{s3}/big.bin", str(tmp_path), storage_options=s3_options, block_size=BLOCK)

    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"{s3}/big.bin: the downloaded copy is corrupt: its MD5 is ")
    assert f"expected {info['ETag'].strip(chr(34))} (the remote's ETag); it was removed" in message
    assert not part.exists() and not local.exists()
    # the next fetch starts over and verifies
    assert fetch_file(f"{s3}/big.bin", str(tmp_path), storage_options=s3_options)[1] == SIZE
    assert local.read_bytes() == data


def test_a_changed_remote_is_fetched_again(
    s3: str, s3_options: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"{s3}/big.bin"
    _put(url, _bytes(SIZE, seed=4), s3_options)
    _killed_midway(url, tmp_path, s3_options)  # a part of the old content
    new = _bytes(SIZE - 5, seed=5)
    info = _put(url, new, s3_options)

    reads = Reads(monkeypatch, s3_options)
    copy = fetch_input(
        url, str(tmp_path), fingerprint=fingerprint(info), storage_options=s3_options
    )

    assert copy is not None and copy.status == "fetched"
    assert reads.ranges[0][0] == 0 and reads.bytes == len(new)  # started over
    assert Path(copy.path).read_bytes() == new
    newer = _bytes(1000, seed=6)
    info = _put(url, newer, s3_options)
    copy = fetch_input(
        url, str(tmp_path), fingerprint=fingerprint(info), storage_options=s3_options
    )
    assert copy is not None and copy.bytes == 1000 and Path(copy.path).read_bytes() == newer
    reads.ranges.clear()
    copy = fetch_input(
        url, str(tmp_path), fingerprint=fingerprint(info), storage_options=s3_options
    )
    assert copy is not None and copy.status == "cached" and reads.ranges == []


def test_an_input_comes_with_its_sidecar_and_the_files_sharing_its_stem(
    s3: str, s3_options: dict[str, Any], tmp_path: Path
) -> None:
    files = {
        "run_g0_t0.imec0.ap.bin": b"\x01\x02" * 100,
        "run_g0_t0.imec0.ap.meta": b"nSavedChans=1\n",
        "run_g0_t0.imec0.lf.bin": b"\x03" * 10,
        "annotations/run_g0_t0.imec0.ap.json": b'{"subject": "m1"}',
    }
    for name, content in files.items():
        _put(f"{s3}/{name}", content, s3_options)
    url = f"{s3}/run_g0_t0.imec0.ap.bin"

    copy = fetch_input(
        url,
        str(tmp_path),
        loader_arguments={"annotation": "annotations/{stem}.json"},
        storage_options=s3_options,
    )

    assert copy is not None
    folder = Path(copy.path).parent
    cached = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
    assert cached == set(files) - {"run_g0_t0.imec0.lf.bin"}
    for name in cached:
        assert (folder / name).read_bytes() == files[name]
    assert copy.remote(str(folder / "run_g0_t0.imec0.ap.meta")).endswith(
        "lab/cache/" + s3.rsplit("/", 1)[1] + "/run_g0_t0.imec0.ap.meta"
    )


def test_a_folder_input_is_cached_whole_and_kept_equal_to_the_remote(
    s3: str, s3_options: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    block = {"Block-1.tev": _bytes(200_000, 7), "Block-1.tsq": _bytes(4_000, 8), "sub/x.txt": b"x"}
    for name, content in block.items():
        _put(f"{s3}/blocks/Block-1/{name}", content, s3_options)
    where = {"url": f"{s3}/blocks", "target": "folder", "storage_options": s3_options}
    row = discover(where, TDT).iloc[0]

    copy = fetch_input(
        row["url"],
        str(tmp_path),
        fingerprint=row["fingerprint"],
        target="folder",
        storage_options=s3_options,
        block_size=BLOCK,
    )

    assert copy is not None and copy.bytes == sum(map(len, block.values()))
    found = {
        str(p.relative_to(copy.path)): p.read_bytes()
        for p in Path(copy.path).rglob("*")
        if p.is_file()
    }
    assert found == block
    reads = Reads(monkeypatch, s3_options)
    again = fetch_input(
        row["url"],
        str(tmp_path),
        fingerprint=row["fingerprint"],
        target="folder",
        storage_options=s3_options,
    )
    assert again is not None and again.status == "cached" and reads.ranges == []
    assert set(again.files) == {os.path.join(copy.path, name) for name in block}

    fs = fsspec.filesystem("s3", **s3_options)
    fs.rm_file(f"{s3}/blocks/Block-1/sub/x.txt".removeprefix("s3://"))
    _put(f"{s3}/blocks/Block-1/Block-1.tbk", b"new", s3_options)
    row = discover(where, TDT).iloc[0]
    copy = fetch_input(
        row["url"],
        str(tmp_path),
        fingerprint=row["fingerprint"],
        target="folder",
        storage_options=s3_options,
    )
    assert copy is not None and copy.bytes == 3  # only the new file
    names = {str(p.relative_to(copy.path)) for p in Path(copy.path).rglob("*") if p.is_file()}
    assert names == {"Block-1.tev", "Block-1.tsq", "Block-1.tbk"}


def test_a_local_input_is_read_in_place(tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_text("time,signal\n0,1\n")
    assert fetch_input(str(tmp_path / "x.csv"), str(tmp_path / "cache")) is None
    assert not (tmp_path / "cache").exists()


def test_a_multipart_upload_is_verified_by_its_size_and_its_etag_recorded(
    s3: str, s3_options: dict[str, Any], tmp_path: Path
) -> None:
    data = _bytes(6 * 2**20 + 7, seed=9)
    fs, path = fsspec.core.url_to_fs(f"{s3}/multi.bin", **s3_options)
    with fs.open(path, "wb", block_size=5 * 2**20) as f:  # over a block: a multipart upload
        f.write(data)
    fs.invalidate_cache()
    etag = str(fs.info(path)["ETag"]).strip('"')
    assert re.fullmatch(r"[0-9a-f]{32}-[0-9]+", etag)

    local, downloaded = fetch_file(f"{s3}/multi.bin", str(tmp_path), storage_options=s3_options)

    assert Path(local).read_bytes() == data and downloaded == len(data)
    record_path = Path(tmp_path, RECORDS, "files", *Path(local).relative_to(tmp_path).parts)
    record = json.loads(record_path.with_name("multi.bin.json").read_text())
    assert record["verified"] == "size" and record["etag"] == etag
    assert record["md5"] == hashlib.md5(data).hexdigest()


def test_two_fetches_of_one_file_at_once_download_it_once(
    s3: str, s3_options: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _bytes(SIZE, seed=10)
    _put(f"{s3}/shared.bin", data, s3_options)
    reads = Reads(monkeypatch, s3_options)

    def fetch() -> tuple[str, int]:
        return fetch_file(
            f"{s3}/shared.bin", str(tmp_path), storage_options=s3_options, block_size=BLOCK
        )

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: fetch(), range(2)))

    assert sorted(n for _, n in results) == [0, SIZE]  # one waited for the other's copy
    assert reads.bytes == SIZE
    assert Path(results[0][0]).read_bytes() == data
