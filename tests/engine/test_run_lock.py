"""One run per output folder: the lock, concurrent runs, a stale lock, a kill mid-combine."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from distributed import Client

from neurobatch.cli import main
from neurobatch.engine.run import Pipeline
from neurobatch.errors import OutputLockedError
from neurobatch.io.lock import read_lock
from neurobatch.io.trials_store import open_trials
from runs import assert_same_results


def _pipeline(photometry_demo: Path, folder: Path, out: str, **output: Any) -> Path:
    pipeline = yaml.safe_load(photometry_demo.read_text())
    pipeline["input"]["url"] = str(photometry_demo.parent / "data")
    pipeline["output"] |= {"url": out, "dashboards": None, **output}
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(pipeline, sort_keys=False))
    return path


def _start(path: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "neurobatch", "run", str(path), "--workers", "1"],
            start_new_session=True,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )


def _wait_for(condition: Any, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while not condition():
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_a_second_run_on_the_same_folder_exits_at_once(
    photometry_demo: Path,
    photometry_reference: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    path = _pipeline(photometry_demo, tmp_path, str(out))
    first = _start(path, tmp_path / "first.log")
    try:
        _wait_for(lambda: read_lock(str(out)) is not None, first, tmp_path / "first.log")
        holder = read_lock(str(out))
        assert holder is not None and holder["pid"] == first.pid
        started = time.monotonic()
        assert main(["run", str(path)]) == 1
        assert time.monotonic() - started < 30  # at once, not after the first run
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1
        assert f"pid {first.pid}" in error and socket.gethostname() in error
        assert "in use by another neurobatch run" in error
        # --wait: the second run waits its turn and then skips everything
        assert main(["run", str(path), "--wait", "--workers", "1"]) == 0
        assert "3 item(s): 0 done, 3 skipped" in capsys.readouterr().out
    finally:
        first.wait(timeout=300)
    assert first.returncode == 0, (tmp_path / "first.log").read_text()
    assert read_lock(str(out)) is None
    assert_same_results(out, photometry_reference, rerun=True)  # every trial once


def test_two_runs_on_the_local_s3_server(
    photometry_demo: Path,
    photometry_reference: Path,
    local_client: Client,
    s3_options: dict[str, Any],
    tmp_path: Path,
) -> None:
    out = "s3://lab/lock-test/out"
    path = _pipeline(photometry_demo, tmp_path, out, storage_options=s3_options)
    holding = threading.Event()
    finished: list[Any] = []

    def first() -> None:
        pipeline = Pipeline.from_file(path)
        pipeline.discover = _signalled(pipeline.discover, holding)  # type: ignore[method-assign]
        finished.append(pipeline.run(client=local_client))

    thread = threading.Thread(target=first)
    thread.start()
    assert holding.wait(60)
    with pytest.raises(OutputLockedError, match="in use by another neurobatch run"):
        Pipeline.from_file(path).run(client=local_client)
    thread.join(300)
    assert finished and finished[0].n_done == 3
    assert read_lock(out, storage_options=s3_options) is None
    assert_same_results(out, photometry_reference, **s3_options)


def _signalled(discover: Any, event: threading.Event) -> Any:
    """The first run's discover, which says when the run holds the lock, then gives the
    second run time to try."""

    def wrapped() -> Any:
        event.set()
        time.sleep(2.0)
        return discover()

    return wrapped


def test_a_stale_lock_is_taken_over_with_a_warning(
    photometry_demo: Path,
    photometry_reference: Path,
    local_client: Client,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    out = tmp_path / "out"
    path = _pipeline(photometry_demo, tmp_path, str(out))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    out.mkdir()
    lock = {
        "host": socket.gethostname(),
        "pid": gone.pid,
        "user": "someone",
        "started": "2026-01-01T00:00:00+00:00",
        "renewed": time.time(),
        "lease_s": 3600,
        "token": "0" * 32,
    }
    (out / ".neurobatch-lock.json").write_text(json.dumps(lock))
    with caplog.at_level("WARNING", logger="neurobatch"):
        Pipeline.from_file(path).run(client=local_client)
    assert any(f"pid {gone.pid}" in m and "stale" in m for m in caplog.messages), caplog.messages
    assert_same_results(out, photometry_reference)


def test_a_kill_during_the_combine_leaves_the_previous_outputs(
    photometry_demo: Path, local_client: Client, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    path = _pipeline(photometry_demo, tmp_path, str(out))
    Pipeline.from_file(path).run(client=local_client)
    before = open_trials(str(out / "trials.zarr")).load()
    h5ad = (out / "trials.h5ad").read_bytes()

    # new trial windows: every item's trials are redone and combined anew
    pipeline = yaml.safe_load(path.read_text())
    pipeline["trials"]["bounds_s"] = [-4, 4]
    path.write_text(yaml.safe_dump(pipeline, sort_keys=False))
    log = tmp_path / "driver.log"
    driver = _start(path, log)
    try:
        _wait_for(lambda: list(out.glob(".staging/*/trials.zarr")), driver, log)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    # the previous complete outputs are there and readable
    after = open_trials(str(out / "trials.zarr")).load()
    assert after.identical(before)
    assert (out / "trials.h5ad").read_bytes() == h5ad

    # the next run takes the dead run's lock over and ends with the new windows
    summary = Pipeline.from_file(path).run(client=local_client)
    assert summary.n_failed == 0
    trials = open_trials(str(out / "trials.zarr"))
    assert float(trials["rel_time"].max()) < 4
    assert not list(out.glob(".staging/*"))
    fresh = tmp_path / "fresh"
    pipeline["output"]["url"] = str(fresh)
    path.write_text(yaml.safe_dump(pipeline, sort_keys=False))
    Pipeline.from_file(path).run(client=local_client)
    assert_same_results(out, fresh, rerun=True)
