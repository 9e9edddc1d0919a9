"""Storage timeouts and bounded attempts (neurobatch.io.storage) against an endpoint that
accepts connections and never answers: every read ends, after as many attempts as set."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import fsspec
import pytest

from neurobatch.config.sections import StorageTimeoutsConfig
from neurobatch.io import storage
from neurobatch.io.loaders import load_recording
from silent import SilentServer, silent_server

SHORT = StorageTimeoutsConfig(connect_s=1.0, read_s=0.5, attempts=2)


@pytest.fixture
def short_timeouts() -> Iterator[StorageTimeoutsConfig]:
    """Timeouts of half a second, two attempts; the defaults again afterwards."""
    storage.configure(SHORT)
    try:
        yield SHORT
    finally:
        storage.configure(StorageTimeoutsConfig())


def s3_options(server: SilentServer, **extra: Any) -> dict[str, Any]:
    """fsspec options that point S3 at ``server``."""
    client_kwargs = {"endpoint_url": server.endpoint, "region_name": "us-east-1"}
    return {"key": "k", "secret": "s", "client_kwargs": client_kwargs} | extra


def test_an_s3_read_from_a_silent_endpoint_ends_after_its_attempts(
    short_timeouts: StorageTimeoutsConfig,
) -> None:
    with silent_server() as server, pytest.raises(OSError) as raised:
        load_recording(
            "s3://bucket/x.csv", {}, format="photometry-csv", storage_options=s3_options(server)
        )
    # one line naming the object (at the endpoint) and saying it timed out
    [line] = str(raised.value).splitlines()
    assert line == f'Read timeout on endpoint URL: "{server.endpoint}/bucket/x.csv"'
    assert storage.is_timeout(raised.value)
    # botocore's attempts only: s3fs's own retry loop does not multiply them (it made 25)
    assert len(server.accepted) == short_timeouts.attempts


@pytest.mark.parametrize(
    ("config_kwargs", "attempts"),
    [
        # a setting of the user's own keeps neurobatch's timeouts and attempts
        ({"s3": {"addressing_style": "path"}}, SHORT.attempts),
        # the user's own retries win
        ({"retries": {"total_max_attempts": 1, "mode": "standard"}}, 1),
    ],
)
def test_a_filesystems_own_config_kwargs_are_merged_with_the_timeouts(
    short_timeouts: StorageTimeoutsConfig, config_kwargs: dict[str, Any], attempts: int
) -> None:
    with (
        silent_server() as server,
        pytest.raises(OSError) as raised,
        fsspec.open(
            "s3://bucket/x.csv", "rb", **s3_options(server, config_kwargs=config_kwargs)
        ) as f,
    ):
        f.read()
    assert storage.is_timeout(raised.value)
    assert len(server.accepted) == attempts


def test_the_environment_of_botocore_wins_over_the_attempts(
    short_timeouts: StorageTimeoutsConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with silent_server() as server, pytest.raises(OSError):
        fsspec.filesystem("s3", **s3_options(server)).cat_file("bucket/x.csv")
    assert len(server.accepted) == 1


def test_an_http_read_from_a_silent_endpoint_ends(short_timeouts: StorageTimeoutsConfig) -> None:
    # aiohttp's own default waits 5 minutes for the whole answer
    with silent_server() as server, pytest.raises(OSError) as raised:
        fsspec.filesystem("http", skip_instance_cache=True).cat_file(f"{server.endpoint}/x.csv")
    assert storage.is_timeout(raised.value)
    assert len(server.accepted) == 1


def test_a_timeout_of_the_users_own_wins_over_http_defaults(
    short_timeouts: StorageTimeoutsConfig,
) -> None:
    aiohttp = pytest.importorskip("aiohttp")
    own = aiohttp.ClientTimeout(total=7)
    fs = fsspec.filesystem("http", client_kwargs={"timeout": own}, skip_instance_cache=True)
    theirs = fsspec.asyn.sync(fs.loop, fs.set_session)
    ours = fsspec.asyn.sync(
        fs.loop, fsspec.filesystem("http", skip_instance_cache=True).set_session
    )
    try:
        assert theirs.timeout == own
        assert (ours.timeout.sock_connect, ours.timeout.sock_read) == (1.0, 0.5)
        assert ours.timeout.total is None
    finally:
        for session in (theirs, ours):
            fsspec.asyn.sync(fs.loop, session.close)


def test_s3fs_gets_the_timeouts_when_fsspec_first_imports_it() -> None:
    # a fresh process: neurobatch does not import s3fs (0.3 s) until an S3 filesystem is made
    script = """
import sys
import fsspec
from neurobatch.config.sections import StorageTimeoutsConfig
from neurobatch.io import storage
storage.configure(StorageTimeoutsConfig(connect_s=3, read_s=7, attempts=2))
assert "s3fs" not in sys.modules
fs = fsspec.filesystem("s3a", anon=True)
print(type(fs).__module__, fs.connect_timeout, fs.read_timeout, fs.retries)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == ["s3fs.core", "3.0", "7.0", "1"]
