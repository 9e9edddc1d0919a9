"""The output lock: one run per folder, stale locks taken over, races won by exactly one."""

from __future__ import annotations

import datetime
import getpass
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import fsspec
import pytest

from neurobatch.errors import OutputLockedError
from neurobatch.io.lock import LOCK_NAME, OutputLock, read_lock
from processes import wait_for

LOGGER = "neurobatch.io.lock"

# holds the lock of argv[1] (lease argv[2] s), touches argv[3], releases when argv[4] appears
HOLDER = """
import pathlib, sys, time
from neurobatch.io.lock import OutputLock
out, lease_s, ready, stop = sys.argv[1:5]
with OutputLock(out, lease_s=float(lease_s)):
    pathlib.Path(ready).touch()
    while not pathlib.Path(stop).exists():
        time.sleep(0.02)
"""

# races for the lock of argv[1] once argv[2]/go appears, writes won/lost to argv[2]/result-<i>
# and, when it won, holds the lock until argv[2]/stop appears
RACER = """
import os, pathlib, sys, time
from neurobatch.errors import OutputLockedError
from neurobatch.io.lock import OutputLock
out, folder, index = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3]
def report(result):
    (folder / f"result-{index}.tmp").write_text(result)
    os.replace(folder / f"result-{index}.tmp", folder / f"result-{index}")
(folder / f"ready-{index}").touch()
while not (folder / "go").exists():
    time.sleep(0.002)
lock = OutputLock(out, lease_s=60.0)
try:
    lock.acquire()
except OutputLockedError:
    report("lost")
    sys.exit(0)
report("won")
while not (folder / "stop").exists():
    time.sleep(0.02)
lock.release()
"""


def python(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", *args])


@contextmanager
def holder(out: Path | str, folder: Path, lease_s: float = 60.0) -> Iterator[Path]:
    """Another process holding the lock of ``out``; it releases when the yielded path exists."""
    ready, stop = folder / f"ready-{uuid.uuid4().hex}", folder / f"stop-{uuid.uuid4().hex}"
    process = python(HOLDER, str(out), str(lease_s), str(ready), str(stop))
    try:
        wait_for(ready, timeout=30)
        yield stop
    finally:
        stop.touch()
        process.wait(timeout=30)


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    process = python("pass")
    process.wait(timeout=30)
    return process.pid


def fake_lock(**fields: Any) -> bytes:
    """A lock file of another run, fresh unless ``fields`` say otherwise."""
    record = {
        "host": "elsewhere.example.org",
        "pid": 4242,
        "user": "ann",
        "started": "2026-12-06T14:00:00+00:00",
        "renewed": time.time(),
        "lease_s": 3600.0,
        "token": uuid.uuid4().hex,
        "command": "neurobatch run other.yaml",
    }
    return json.dumps(record | fields).encode()


def put(out: Path, data: bytes) -> None:
    """Replace the lock file of ``out`` atomically (as another run would)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "tmp").write_bytes(data)
    os.replace(out / "tmp", out / LOCK_NAME)


# --- one process --------------------------------------------------------------------------


def test_lock_names_its_holder(tmp_path: Path) -> None:
    with OutputLock(str(tmp_path), lease_s=30.0, command="neurobatch run a.yaml"):
        record = read_lock(str(tmp_path))
    assert record is not None
    assert record["host"] == socket.gethostname()
    assert record["pid"] == os.getpid()
    assert record["user"] == getpass.getuser()
    assert record["lease_s"] == 30.0
    assert record["command"] == "neurobatch run a.yaml"
    assert re.fullmatch("[0-9a-f]{32}", record["token"])
    started = datetime.datetime.fromisoformat(record["started"])
    assert started.utcoffset() == datetime.timedelta(0)
    assert abs(started.timestamp() - record["renewed"]) < 2


def test_second_lock_fails_with_one_line_naming_the_holder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    expected = (
        rf"^{re.escape(str(out))} is in use by another neurobatch run: "
        rf"host {re.escape(socket.gethostname())}, pid {os.getpid()}, "
        rf"user {re.escape(getpass.getuser())}, since \d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00 "
        rf"\(lock {re.escape(str(out / LOCK_NAME))}\); wait for it with --wait, "
        r"or remove the lock if that run is gone$"
    )
    with OutputLock(str(out)) as first:
        with pytest.raises(OutputLockedError, match=expected):
            OutputLock(str(out)).acquire()
        with pytest.raises(OutputLockedError, match="already held by this OutputLock"):
            first.acquire()
    OutputLock(str(out)).acquire()  # free again


def test_release_removes_the_lock_and_renewal_updates_it(tmp_path: Path) -> None:
    lock = OutputLock(f"file://{tmp_path}", lease_s=0.3)
    lock.acquire()
    first = read_lock(str(tmp_path))
    time.sleep(0.5)
    second = read_lock(str(tmp_path))
    assert first is not None and second is not None
    assert second["renewed"] > first["renewed"]
    assert second["token"] == first["token"] and not lock.lost
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists()
    assert read_lock(str(tmp_path)) is None
    lock.release()  # a second release does nothing


def test_lock_taken_over_is_lost_and_not_released(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lock = OutputLock(str(tmp_path), lease_s=0.3)
    lock.acquire()
    other = fake_lock()
    put(tmp_path, other)
    deadline = time.monotonic() + 10
    while not lock.lost and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lock.lost
    assert "lost the lock" in caplog.text and "elsewhere.example.org" in caplog.text
    lock.release()
    assert (tmp_path / LOCK_NAME).read_bytes() == other


@pytest.mark.parametrize("value", [0, -1.0, float("inf"), "60"])
def test_bad_lease_is_refused(tmp_path: Path, value: Any) -> None:
    with pytest.raises(ValueError, match=r"lease_s must be a positive number of seconds, got"):
        OutputLock(str(tmp_path), lease_s=value)


def test_memory_filesystem_best_effort() -> None:
    out = f"memory://lock-{uuid.uuid4().hex}/out"
    with (
        OutputLock(out),
        pytest.raises(OutputLockedError, match="is in use by another neurobatch run"),
    ):
        OutputLock(out).acquire()
    assert read_lock(out) is None
    fsspec.filesystem("memory").pipe_file(f"{out}/{LOCK_NAME}", b"{not json")
    with OutputLock(out):  # stale: taken over
        assert read_lock(out) is not None


# --- stale locks ----------------------------------------------------------------------------


def test_dead_process_on_this_host_is_taken_over(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pid = dead_pid()
    put(tmp_path, fake_lock(host=socket.gethostname(), pid=pid))
    with OutputLock(str(tmp_path)):
        assert read_lock(str(tmp_path))["pid"] == os.getpid()  # type: ignore[index]
    [record] = [r for r in caplog.records if r.name == LOGGER]
    assert record.levelno == logging.WARNING
    assert f"pid {pid}" in record.getMessage()
    assert f"its process {pid} is no longer running on this host" in record.getMessage()


def test_expired_lease_on_another_host_is_taken_over(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    put(tmp_path, fake_lock(renewed=time.time() - 100, lease_s=10.0))
    with OutputLock(str(tmp_path)):
        pass
    assert "took over the stale lock" in caplog.text
    assert "host elsewhere.example.org" in caplog.text and "lease of 10 s expired" in caplog.text


def test_invalid_lock_file_is_taken_over(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    put(tmp_path, b'{"host": "trunc')
    with OutputLock(str(tmp_path)):
        pass
    assert "not a JSON object" in caplog.text


def test_live_lock_on_another_host_is_kept(tmp_path: Path) -> None:
    other = fake_lock(pid=dead_pid())  # that pid means nothing on another host
    put(tmp_path, other)
    with pytest.raises(OutputLockedError, match=r"host elsewhere\.example\.org, pid \d+, user ann"):
        OutputLock(str(tmp_path)).acquire()
    assert (tmp_path / LOCK_NAME).read_bytes() == other


# --- other processes --------------------------------------------------------------------------


def test_live_process_blocks_until_it_releases(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    out = tmp_path / "out"
    with holder(out, tmp_path) as stop:
        holder_pid = read_lock(str(out))["pid"]  # type: ignore[index]
        with pytest.raises(OutputLockedError, match=rf"pid {holder_pid}, "):
            OutputLock(str(out)).acquire()
        threading.Timer(0.5, stop.touch).start()
        with OutputLock(str(out), wait=True, poll_s=0.05):
            assert read_lock(str(out))["pid"] == os.getpid()  # type: ignore[index]
    assert f"pid {holder_pid}" in caplog.text and "waiting for it" in caplog.text


def test_stale_lock_race_has_one_winner(tmp_path: Path) -> None:
    out = tmp_path / "out"
    put(out, fake_lock(host=socket.gethostname(), pid=dead_pid()))
    racers = [python(RACER, str(out), str(tmp_path), str(i)) for i in range(8)]
    try:
        for i in range(8):
            wait_for(tmp_path / f"ready-{i}", timeout=60)
        (tmp_path / "go").touch()
        for i in range(8):
            wait_for(tmp_path / f"result-{i}", timeout=60)
        results = [(tmp_path / f"result-{i}").read_text() for i in range(8)]
        assert sorted(results) == ["lost"] * 7 + ["won"]
        winner = racers[results.index("won")].pid
        assert read_lock(str(out))["pid"] == winner  # type: ignore[index]
    finally:
        (tmp_path / "stop").touch()
        for racer in racers:
            racer.wait(timeout=30)
    assert read_lock(str(out)) is None


# --- S3 (a real local server) -----------------------------------------------------------------


@pytest.fixture
def s3_out(s3_options: dict[str, Any]) -> str:
    return f"s3://lab/locks/{uuid.uuid4().hex}/out"


def test_s3_lock_fails_renews_and_releases(s3_out: str, s3_options: dict[str, Any]) -> None:
    fs = fsspec.filesystem("s3", **s3_options)
    with OutputLock(s3_out, storage_options=s3_options, lease_s=1.0) as lock:
        first = read_lock(s3_out, storage_options=s3_options)
        with pytest.raises(OutputLockedError, match=rf"^{s3_out} is in use .* pid {os.getpid()}"):
            OutputLock(s3_out, storage_options=s3_options).acquire()
        time.sleep(0.6)
        second = read_lock(s3_out, storage_options=s3_options)
        assert first is not None and second is not None
        assert second["renewed"] > first["renewed"] and not lock.lost
    assert not fs.exists(f"{s3_out}/{LOCK_NAME}")


def test_s3_stale_lock_is_taken_over(
    s3_out: str, s3_options: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    fs = fsspec.filesystem("s3", **s3_options)
    fs.pipe_file(f"{s3_out}/{LOCK_NAME}", fake_lock(renewed=time.time() - 100, lease_s=10.0))
    with OutputLock(s3_out, storage_options=s3_options):
        assert read_lock(s3_out, storage_options=s3_options)["pid"] == os.getpid()  # type: ignore[index]
    assert "took over the stale lock" in caplog.text and "lease of 10 s expired" in caplog.text
    live = fake_lock()
    fs.pipe_file(f"{s3_out}/{LOCK_NAME}", live)
    with pytest.raises(OutputLockedError, match=r"host elsewhere\.example\.org"):
        OutputLock(s3_out, storage_options=s3_options).acquire()


def test_s3_lock_taken_over_is_lost_and_not_released(
    s3_out: str, s3_options: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    fs = fsspec.filesystem("s3", **s3_options)
    lock = OutputLock(s3_out, storage_options=s3_options, lease_s=0.3)
    lock.acquire()
    other = fake_lock()
    fs.pipe_file(f"{s3_out}/{LOCK_NAME}", other)
    deadline = time.monotonic() + 10
    while not lock.lost and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lock.lost and "lost the lock" in caplog.text
    lock.release()
    assert fs.cat_file(f"{s3_out}/{LOCK_NAME}") == other


@pytest.mark.parametrize("stale", [False, True], ids=["free", "stale"])
def test_s3_race_has_one_winner(s3_out: str, s3_options: dict[str, Any], stale: bool) -> None:
    if stale:
        fs = fsspec.filesystem("s3", **s3_options)
        fs.pipe_file(f"{s3_out}/{LOCK_NAME}", b"{not json")
    n = 8
    barrier = threading.Barrier(n)
    locks = [OutputLock(s3_out, storage_options=s3_options) for _ in range(n)]
    results: list[str] = []

    def race(lock: OutputLock) -> None:
        barrier.wait()
        try:
            lock.acquire()
        except OutputLockedError:
            results.append("lost")
        else:
            results.append("won")

    threads = [threading.Thread(target=race, args=(lock,)) for lock in locks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    try:
        assert sorted(results) == ["lost"] * (n - 1) + ["won"]
    finally:
        for lock in locks:
            lock.release()
    assert read_lock(s3_out, storage_options=s3_options) is None
