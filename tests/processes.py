"""A Dask cluster of real processes on loopback: ``dask scheduler`` and ``dask worker``s."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import psutil


@dataclass
class ProcessCluster:
    """A running ``dask scheduler`` and its ``dask worker`` processes."""

    address: str
    scheduler_file: Path
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def kill_worker(self, index: int) -> None:
        """SIGKILL worker ``index``'s whole process group (its nanny and its worker)."""
        process = self.workers[index]
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def wait_for(path: Path, timeout: float = 60.0) -> None:
    """Wait until ``path`` exists."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout} s")
        time.sleep(0.1)


@contextmanager
def dask_processes(
    folder: Path,
    n_workers: int = 2,
    memory_limit: str = "1GiB",
    scheduler_arguments: Sequence[str] = (),
) -> Iterator[ProcessCluster]:
    """Start ``dask scheduler`` and ``n_workers`` ``dask worker`` processes on 127.0.0.1.

    Each worker has one thread and ``memory_limit``, is named ``worker-<i>`` and runs in its
    own process group (so that a test can kill it whole). Workers are stopped before the
    scheduler; logs go to ``folder``.
    """
    dask = shutil.which("dask", path=os.path.dirname(sys.executable))
    assert dask is not None, "the dask command is installed with distributed"
    scheduler_file = folder / "scheduler.json"
    environment = os.environ | {"PYTHONWARNINGS": "ignore"}
    scheduler = subprocess.Popen(
        [
            dask,
            "scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--dashboard-address",
            "127.0.0.1:0",
            "--scheduler-file",
            str(scheduler_file),
            *scheduler_arguments,
        ],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=(folder / "scheduler.log").open("w"),
    )
    workers: list[subprocess.Popen[bytes]] = []
    try:
        wait_for(scheduler_file)
        address = json.loads(scheduler_file.read_text())["address"]
        for i in range(n_workers):
            workers.append(
                subprocess.Popen(
                    [
                        dask,
                        "worker",
                        address,
                        "--nthreads",
                        "1",
                        "--memory-limit",
                        memory_limit,
                        "--host",
                        "127.0.0.1",
                        "--no-dashboard",
                        "--name",
                        f"worker-{i}",
                    ],
                    env=environment,
                    stdout=subprocess.DEVNULL,
                    stderr=(folder / f"worker-{i}.log").open("w"),
                    start_new_session=True,
                )
            )
        yield ProcessCluster(address, scheduler_file, workers)
    finally:
        for process in [*workers, scheduler]:  # workers before the scheduler
            if process.poll() is not None:
                continue
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


class WorkerCPU:
    """The share of a core each worker process of a client really used over a block, as
    the kernel counted it (user + system time of the process over wall time), with which
    a sampled CPU figure is compared: on a loaded machine a busy worker gets less than a
    core, and both the samples and this reference show it."""

    def __init__(self, client: Any) -> None:
        import psutil

        self._processes = {
            address: psutil.Process(pid) for address, pid in client.run(os.getpid).items()
        }
        self.share: dict[str, float] = {}

    def __enter__(self) -> Self:
        self._start = time.monotonic(), {a: _cpu_s(p) for a, p in self._processes.items()}
        return self

    def __exit__(self, *exc: object) -> None:
        started, cpu = self._start
        wall = time.monotonic() - started
        self.share = {a: (_cpu_s(p) - cpu[a]) / wall for a, p in self._processes.items()}


def _cpu_s(process: Any) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def still_alive(seen: dict[int, float]) -> list[int]:
    """The processes of ``seen`` (pid -> ``create_time``) that still run: the same process
    (not a new one with a reused pid) and not a zombie."""

    def alive(pid: int, created: float) -> bool:
        try:
            process = psutil.Process(pid)
            return bool(process.create_time() == created and process.status() != "zombie")
        except psutil.NoSuchProcess:
            return False

    return [pid for pid, created in seen.items() if alive(pid, created)]
