"""``neurobatch watch``: real watch processes on real folders, stopped by real signals."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fsspec
import psutil
import pytest
import yaml

from neurobatch.engine.ledger import item_states
from neurobatch.engine.run import Pipeline
from neurobatch.engine.watch import watch as watch_pipeline
from neurobatch.io.lock import OutputLock, read_lock
from photometry_files import EVENTS, recording_frame
from processes import still_alive
from runs import assert_same_results
from slurm import slurm_unavailable

#: Seconds between cycles in these tests.
INTERVAL = 1.0
#: How long any one wait may take on a loaded machine before the test fails.
TIMEOUT = 120.0


def _config(folder: Path, **input: Any) -> dict[str, Any]:
    return {
        "name": "watched",
        "input": {"url": str(folder / "data"), "pattern": "*.csv", **input},
        "loader": {"format": "photometry-csv", "event_cols": list(EVENTS)},
        "trials": {"align_to": "trial_cue", "bounds_s": [-1, 2]},
        "passdown_metadata": ["source"],
        "output": {"url": str(folder / "out")},
        "cluster": {"n_workers": 1, "processes": False, "memory_limit": "1GiB"},
    }


def _pipeline_file(folder: Path, config: dict[str, Any]) -> Path:
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _recording(path: Path, seed: int) -> None:
    """A small photometry CSV that appears whole (written aside, then renamed into place),
    as a copy to the folder would appear."""
    frame, _ = recording_frame(n=400, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    aside = path.parent.parent / f".{path.name}.part"
    frame.to_csv(aside, index=False)
    os.replace(aside, path)


class Watch:
    """A ``neurobatch watch`` process, its stderr in a file."""

    def __init__(self, pipeline: Path, *options: str) -> None:
        self.log = pipeline.parent / "watch.stderr"
        self.out = pipeline.parent / "out"
        with self.log.open("wb") as sink:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "neurobatch", "watch", str(pipeline), *options],
                stdout=subprocess.DEVNULL,
                stderr=sink,
            )
        self.command = psutil.Process(self.process.pid)
        self.children: dict[int, float] = {}

    def cycles(self) -> list[str]:
        """The cycle lines logged so far (stderr, and the same in OUT/logs/watch.log)."""
        return [line for line in self.log.read_text().splitlines() if " cycle " in line]

    def wait_until(self, condition: Callable[[], bool]) -> None:
        def ready() -> bool:
            assert self.process.poll() is None, self.log.read_text()
            with contextlib.suppress(psutil.Error):
                for child in self.command.children(recursive=True):
                    self.children[child.pid] = child.create_time()
            return condition()

        _wait_until(ready, lambda: self.log.read_text())

    def wait_for_cycle(self, number: int) -> str:
        self.wait_until(lambda: len(self.cycles()) >= number)
        return self.cycles()[number - 1]

    def wait_for_line(self, pattern: str) -> int:
        """Wait for a cycle whose line matches; its number."""
        self.wait_until(lambda: any(re.search(pattern, line) for line in self.cycles()))
        return _cycle_of(self.cycles(), pattern)

    def state(self, item: str) -> str | None:
        """The item's state per the output folder's ledger (None: not in the manifest)."""
        try:
            states = item_states(str(self.out)).set_index("item_id")["status"]
        except FileNotFoundError:
            return None
        return None if item not in states.index else str(states[item])

    def stop(self, signum: int = signal.SIGTERM) -> int:
        self.process.send_signal(signum)
        return self.process.wait(timeout=TIMEOUT)

    def left_behind(self) -> list[int]:
        """The watch's child processes (workers, nannies, ...) still alive after it exited."""
        return still_alive(self.children)


@pytest.fixture
def watches() -> Iterator[list[Watch]]:
    """Every watch a test starts is killed at its end, whatever happened."""
    started: list[Watch] = []
    yield started
    for watch in started:
        if watch.process.poll() is None:
            watch.process.kill()
            watch.process.wait()


def _cycle_of(lines: list[str], pattern: str) -> int:
    """The number of the first cycle whose line matches."""
    for line in lines:
        if re.search(pattern, line):
            return int(line.split(" cycle ", 1)[1].split(":", 1)[0])
    raise AssertionError(f"no cycle matches {pattern!r}: {lines}")


def test_a_file_added_is_processed_at_the_next_cycle(tmp_path: Path, watches: list[Watch]) -> None:
    """The issue's criterion: a file added while the watch runs is committed by the next
    cycle to start after it appeared (within one interval plus its own processing); the
    combined outputs then equal a plain run's over both files. SIGTERM between cycles exits
    0 and leaves no worker process behind."""
    config = _config(tmp_path)
    config["cluster"] = {"n_workers": 1, "processes": True, "memory_limit": "1GiB"}
    _recording(tmp_path / "data" / "m0.csv", seed=0)
    watch = Watch(_pipeline_file(tmp_path, config), "--interval", str(INTERVAL))
    watches.append(watch)
    first = watch.wait_for_cycle(1)
    assert (
        first.endswith(" s") and "found 1, new or changed 1: 1 done, 0 skipped, 0 failed" in first
    )
    assert watch.state("m0") == "done"

    before = len(watch.cycles())  # the cycle under way may have listed the folder already
    _recording(tmp_path / "data" / "m1.csv", seed=1)
    ran = watch.wait_for_line(r"found 2, new or changed 1: 1 done")
    assert watch.state("m1") == "done"
    lines = watch.cycles()
    assert ran <= before + 2, lines
    assert all("new or changed 0;" in line for line in lines[1 : ran - 1]), lines
    watch.wait_for_cycle(ran + 1)  # between cycles now, at most a second
    assert "found 2, new or changed 0;" in watch.cycles()[ran]

    assert watch.stop() == 0, watch.log.read_text()
    assert "SIGTERM: stopping" in watch.log.read_text()
    assert watch.children, "the local cluster ran worker processes"
    assert watch.left_behind() == []
    assert read_lock(str(watch.out)) is None
    # OUT's own log holds the same lines
    assert (watch.out / "logs" / "watch.log").read_text().splitlines() == watch.cycles()
    reference = tmp_path / "reference"
    Pipeline({**_config(tmp_path), "output": {"url": str(reference)}}).run(progress=False)
    assert_same_results(watch.out, reference)


def test_a_session_waits_for_its_ready_flag(tmp_path: Path, watches: list[Watch]) -> None:
    config = _config(tmp_path, pattern="*/*.csv", ready_flag="raw_session.flag")
    data = tmp_path / "data"
    _recording(data / "s1" / "photometry.csv", seed=0)
    (data / "s1" / "raw_session.flag").write_bytes(b"")
    _recording(data / "s2" / "photometry.csv", seed=1)  # still being acquired: no flag
    watch = Watch(_pipeline_file(tmp_path, config), "--interval", str(INTERVAL))
    watches.append(watch)
    assert "found 1, new or changed 1: 1 done" in watch.wait_for_cycle(1)
    assert "found 1, new or changed 0;" in watch.wait_for_cycle(2)
    assert watch.state("s1__photometry") == "done"
    assert watch.state("s2__photometry") is None  # not even in the manifest

    (data / "s2" / "raw_session.flag").write_bytes(b"")
    assert watch.wait_for_line(r"found 2, new or changed 1: 1 done") >= 3
    assert watch.state("s2__photometry") == "done"
    assert watch.stop() == 0


def test_failed_cycles_do_not_stop_the_watch(tmp_path: Path, watches: list[Watch]) -> None:
    """The input folder gone, then the output locked by another run: each a cycle's line,
    and the watch goes on; an item that fails waits for its input to change."""
    data = tmp_path / "data"
    _recording(data / "m0.csv", seed=0)
    watch = Watch(_pipeline_file(tmp_path, _config(tmp_path)), "--interval", str(INTERVAL))
    watches.append(watch)
    watch.wait_for_cycle(1)

    data.rename(tmp_path / "elsewhere")
    watch.wait_until(lambda: "does not exist" in watch.cycles()[-1])
    assert re.search(r"cycle \d+: failed: input\.url '.*data' does not exist; ", watch.cycles()[-1])
    (tmp_path / "elsewhere").rename(data)
    _recording(data / "m1.csv", seed=1)
    watch.wait_for_line(r"found 2, new or changed 1: 1 done")

    with OutputLock(str(watch.out), wait=True, poll_s=0.1, command="neurobatch run (manual)"):
        _recording(data / "m2.csv", seed=2)
        watch.wait_until(lambda: "in use by another neurobatch run" in watch.cycles()[-1])
        assert watch.state("m2") is None
    watch.wait_for_line(r"found 3, new or changed 1: 1 done")

    (data / "m3.csv").write_text("time,signal\nnot,numbers\n")  # fails as an item
    failed = watch.wait_for_line(r"found 4, new or changed 1: 0 done, 0 skipped, 1 failed")
    assert watch.state("m3") == "failed"
    watch.wait_for_cycle(failed + 2)
    assert all("new or changed 0;" in line for line in watch.cycles()[failed:]), watch.cycles()
    _recording(data / "m3.csv", seed=3)  # fixed: changed, so run again
    watch.wait_for_line(r"found 4, new or changed 1: 1 done")
    assert watch.state("m3") == "done"
    assert watch.stop() == 0


def test_sigterm_during_a_cycle_interrupts_it_as_a_run(
    tmp_path: Path, watches: list[Watch]
) -> None:
    """A stop during a cycle ends its run through the run's cleanups: exit 143, the
    provenance marked interrupted, the lock released, no process left."""
    # long enough to be stopped in; short enough that the worker, which cannot be
    # interrupted in it, is not killed only after distributed's 24 s close timeout
    hook = tmp_path / "slow.py"
    hook.write_text("import time\n\ndef post_trials(ds):\n    time.sleep(5)\n")
    config = _config(tmp_path)
    config["hooks"] = {"post_trials": f"{hook}:post_trials"}
    config["cluster"] = {"n_workers": 1, "processes": True, "memory_limit": "1GiB"}
    _recording(tmp_path / "data" / "m0.csv", seed=0)
    watch = Watch(_pipeline_file(tmp_path, config), "--interval", str(INTERVAL))
    watches.append(watch)
    preprocessed = watch.out / "items" / "m0" / "preprocess"
    watch.wait_until(preprocessed.exists)
    time.sleep(0.5)  # into the endless hook
    assert watch.stop() == 128 + signal.SIGTERM
    assert watch.left_behind() == []
    assert read_lock(str(watch.out)) is None
    notes = json.loads((watch.out / "processing.json").read_text())["notes"]
    assert notes.startswith("run interrupted (SystemExit: 143)")


def test_once_runs_one_cycle_with_the_exit_status_of_run(tmp_path: Path) -> None:
    data = tmp_path / "data"
    path = _pipeline_file(tmp_path, _config(tmp_path))
    command = [sys.executable, "-m", "neurobatch", "watch", str(path), "--once"]

    def once() -> subprocess.CompletedProcess[str]:
        return subprocess.run(command, check=False, capture_output=True, text=True, timeout=TIMEOUT)

    data.mkdir()
    empty = once()  # nothing there yet: nothing to do
    assert empty.returncode == 0, empty.stderr
    assert empty.stderr.rstrip().endswith("cycle 1: found 0, new or changed 0; 0.0 s")
    for seed in range(2):
        _recording(data / f"m{seed}.csv", seed=seed)
    (data / "m2.csv").write_text("time,signal\nnot,numbers\n")
    some_failed = once()
    assert some_failed.returncode == 2, some_failed.stderr
    assert "found 3, new or changed 3: 2 done, 0 skipped, 1 failed (first m2: " in (
        some_failed.stderr
    )
    _recording(data / "m2.csv", seed=2)
    fixed = once()
    assert fixed.returncode == 0, fixed.stderr
    assert "found 3, new or changed 3: 1 done, 2 skipped, 0 failed" in fixed.stderr
    assert [line.split(" ", 1)[1].split(";")[0] for line in fixed.stderr.splitlines()] == [
        "cycle 1: found 3, new or changed 3: 1 done, 2 skipped, 0 failed"
    ]
    assert len((tmp_path / "out" / "logs" / "watch.log").read_text().splitlines()) == 3
    (tmp_path / "elsewhere").mkdir()
    data.rename(tmp_path / "elsewhere" / "data")
    gone = once()
    assert gone.returncode == 1
    assert gone.stderr.strip().splitlines()[-1].startswith("neurobatch watch: error: input.url")


def test_interval_must_be_positive(tmp_path: Path) -> None:
    path = _pipeline_file(tmp_path, _config(tmp_path))
    refused = subprocess.run(
        [sys.executable, "-m", "neurobatch", "watch", str(path), "--interval", "-5"],
        check=False,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert refused.returncode == 1
    last = refused.stderr.strip().splitlines()[-1]
    assert (
        last == "neurobatch watch: error: argument --interval: must be a positive number, got '-5'"
    )


# ---------------------------------------------------------------------------------------------
# deploy/: the systemd unit and the SLURM job
# ---------------------------------------------------------------------------------------------

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_the_systemd_unit_verifies(tmp_path: Path) -> None:
    """systemd's own check, on the unit with its ``neurobatch`` pointing at this one (the
    only error it gives as shipped is the program missing until it is installed)."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    shipped = (DEPLOY / "systemd" / "neurobatch-watch.service").read_text()
    assert "ExecStart=/opt/neurobatch/venv/bin/neurobatch watch /etc/neurobatch/pipeline.yaml" in (
        shipped
    )
    here = shutil.which("neurobatch", path=os.path.dirname(sys.executable))
    assert here is not None
    unit = tmp_path / "neurobatch-watch.service"
    unit.write_text(shipped.replace("/opt/neurobatch/venv/bin/neurobatch", here))
    checked = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stderr
    assert checked.stderr == "", checked.stderr


def _job_state(job: str) -> dict[str, str]:
    shown = subprocess.run(
        ["scontrol", "show", "job", job], check=True, capture_output=True, text=True, timeout=30
    ).stdout
    return dict(field.split("=", 1) for field in shown.split() if "=" in field)


def test_the_slurm_job_requeues_on_the_time_limit_signal_only(tmp_path: Path) -> None:
    """On a real SLURM: the time limit's signal (USR1, as ``--signal=B:USR1@120`` sends it)
    stops the watch and requeues the job; ``scancel`` stops it for good."""
    script = DEPLOY / "slurm" / "watch.sbatch"
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)
    if (reason := slurm_unavailable()) is not None:
        pytest.skip(reason)
    _recording(tmp_path / "data" / "m0.csv", seed=0)
    path = _pipeline_file(tmp_path, _config(tmp_path))
    job = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--mem=1G",
            "--cpus-per-task=1",
            "--time=00:10:00",
            f"--output={tmp_path}/job-%j.out",
            f"--export=ALL,NEUROBATCH_ENV={sys.prefix}",
            str(script),
            str(path),
            "--interval",
            str(INTERVAL),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    output = tmp_path / f"job-{job}.out"
    try:
        _wait_for_text(output, " cycle 2: found 1, new or changed 0;")
        subprocess.run(["scancel", "--batch", "--signal=USR1", job], check=True, timeout=30)
        _wait_for_text(output, "stopped for the time limit (exit 0), requeueing job")
        _wait_until(lambda: _job_state(job).get("Restarts") == "1")
        # back in the queue (COMPLETING, REQUEUED, then PENDING), not ended
        assert _job_state(job)["JobState"] not in ("CANCELLED", "COMPLETED", "FAILED")
    finally:
        subprocess.run(["scancel", job], check=True, timeout=30)
    _wait_until(lambda: _job_state(job)["JobState"] == "CANCELLED")
    assert "SIGTERM: stopping" in output.read_text()


def _wait_until(condition: Callable[[], bool], log: Callable[[], str] = str) -> None:
    """Poll ``condition`` until it holds; fail after :data:`TIMEOUT`, showing ``log()``."""
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, f"timed out; {log()}"
        time.sleep(0.05)


def _wait_for_text(path: Path, text: str) -> None:
    _wait_until(lambda: path.exists() and text in path.read_text(), path.read_text)


def test_a_watch_writing_to_s3_keeps_its_log_there(
    tmp_path: Path, s3_options: dict[str, Any]
) -> None:
    """On an object store, which cannot append, OUT/logs/watch.log is rewritten whole with
    each cycle's line added."""
    _recording(tmp_path / "data" / "m0.csv", seed=0)
    config = _config(tmp_path)
    config["output"] = {"url": "s3://lab/watch-out", "storage_options": s3_options}
    pipeline = Pipeline(config)
    first = watch_pipeline(pipeline, once=True)
    assert first.summary is not None and first.summary.n_done == 1
    _recording(tmp_path / "data" / "m1.csv", seed=1)
    second = watch_pipeline(pipeline, once=True)
    assert second.summary is not None and (second.summary.n_done, second.summary.n_skipped) == (
        1,
        1,
    )
    with fsspec.open("s3://lab/watch-out/logs/watch.log", "r", **s3_options) as log:
        lines = log.read().splitlines()
    assert [line.split(" ", 1)[1].split(";")[0] for line in lines] == [
        "cycle 1: found 1, new or changed 1: 1 done, 0 skipped, 0 failed",
        "cycle 1: found 2, new or changed 2: 1 done, 1 skipped, 0 failed",
    ]
