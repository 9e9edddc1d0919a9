"""Whole-file writes under storage faults: a full or read-only disk (a real tmpfs), and an S3
endpoint that goes away (a relay in front of the local S3 server)."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path
from typing import Any

import fsspec
import pytest

from disks import resize, small_disk
from endpoint import Endpoint
from neurobatch.errors import StorageError
from neurobatch.io import files
from neurobatch.io.commit import commit, read_commit


@pytest.fixture
def endpoint(s3_options: dict[str, Any]) -> Any:
    with Endpoint(s3_options["client_kwargs"]["endpoint_url"]) as relay:
        yield relay


def test_a_full_disk_keeps_the_old_file_and_leaves_nothing_else(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", "256k") as disk:
        path = disk / "out" / "run.json"
        files.write_text(str(path), "the old version\n")
        with pytest.raises(StorageError) as caught:
            files.write_bytes(str(path), b"x" * 2**20)
        assert str(caught.value) == (
            f"no space left on device writing {path}; free space or choose another output.url"
        )
        assert caught.value.errno == errno.ENOSPC
        assert isinstance(caught.value, OSError)
        assert path.read_text() == "the old version\n"
        assert sorted(os.listdir(path.parent)) == ["run.json"]  # no aside file left

        resize(disk, "4m")  # more room: the same write goes through
        files.write_bytes(str(path), b"x" * 2**20)
        assert path.stat().st_size == 2**20


def test_a_read_only_output_is_named_with_the_fix(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", "256k") as disk:
        resize(disk, "256k,ro")
        with pytest.raises(StorageError, match=r"^read-only file system writing ") as caught:
            files.write_text(str(disk / "out" / "run.json"), "{}")
        assert str(caught.value).endswith("; choose a writable output.url")
        assert str(disk / "out") in str(caught.value)
        assert "\n" not in str(caught.value)


def test_a_short_outage_is_ridden_out(
    endpoint: Endpoint, s3_options: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    so = endpoint.options(s3_options)
    url = "s3://lab/files-outage/out/run.json"
    endpoint.down_at(rb"PUT /lab/files-outage/", seconds=1.5)
    with caplog.at_level(logging.INFO, logger="neurobatch.io.files"):
        files.write_text(url, '{"run": 1}', storage_options=so)
    assert fsspec.filesystem("s3", **s3_options).cat_file(url) == b'{"run": 1}'
    assert "writing s3://lab/files-outage/out/run.json" in caplog.text
    assert "trying again" in caplog.text


def test_a_longer_outage_is_one_line_and_never_taken_for_absent(
    endpoint: Endpoint, s3_options: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    so = endpoint.options(s3_options)
    store = "s3://lab/files-outage/items/a/ingest"
    commit(store, {"key": "k"}, storage_options=so)
    monkeypatch.setattr(files, "RETRY_SECONDS", 1.0)
    endpoint.down()
    with pytest.raises(StorageError) as caught:
        read_commit(store, storage_options=so)  # not None: "not done" would have it redone
    message = str(caught.value)
    assert message.startswith(
        f"cannot reach the storage reading {store}/.neurobatch-commit.json (EndpointConnectionError"
    )
    assert message.endswith("re-run once it is reachable: items already done are kept")
    assert "\n" not in message
    endpoint.up()
    assert read_commit(store, storage_options=so) == {"key": "k"}


def test_retries_inside_a_retried_call_share_its_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(files, "RETRY_SECONDS", 1.0)
    outer_calls = 0

    def refused() -> None:
        raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")

    def outer() -> None:
        nonlocal outer_calls
        outer_calls += 1
        files.retried(refused, url="s3://lab/inner", action="reading")

    with pytest.raises(StorageError, match=r"^cannot reach the storage reading s3://lab/outer"):
        files.retried(outer, url="s3://lab/outer", action="reading")
    assert outer_calls == 1  # the inner retries used the whole time: no second round


def test_what_is_transient() -> None:
    from botocore.exceptions import EndpointConnectionError, NoCredentialsError

    assert files.is_transient(EndpointConnectionError(endpoint_url="http://127.0.0.1:1"))
    assert files.is_transient(OSError(errno.EBUSY, "SlowDown"))  # s3fs's 503
    assert files.is_transient(TimeoutError("read timed out"))
    assert not files.is_transient(NoCredentialsError())
    assert not files.is_transient(OSError(errno.EACCES, "Permission denied"))
    assert not files.is_transient(PermissionError(errno.EACCES, "Permission denied"))
    assert not files.is_transient(KeyboardInterrupt())
    given_up = files.storage_error(
        ConnectionResetError(errno.ECONNRESET, "reset"), "s3://lab/x", action="reading"
    )
    given_up.__cause__ = ConnectionResetError(errno.ECONNRESET, "reset")
    assert files.is_transient(given_up)  # raised before it was retried
