"""A cluster's size against the machine's, and a cluster of worker processes closed in order.

``connect`` refuses more threads than the machine has cores, or an absurd number of batch
jobs or pods, before it starts anything, unless forced; and a run on worker processes ends
without Dask's "Worker process still alive ... killing" or heartbeat tracebacks, even when
the workers take seconds to exit as they do on a loaded machine, while a worker that does
not exit at all is still reported.
"""

from __future__ import annotations

import atexit
import logging
import re
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import psutil
import pytest
from dask.system import CPU_COUNT

from neurobatch.config import (
    AdaptiveConfig,
    AddressClusterConfig,
    JobqueueClusterConfig,
    KubernetesClusterConfig,
    LocalClusterConfig,
)
from neurobatch.engine import cluster
from neurobatch.engine.cluster import MAX_WORKERS, check_cluster_size, connect
from neurobatch.errors import ConfigError

# ---------------------------------------------------------------------------------------------
# Sizes
# ---------------------------------------------------------------------------------------------


def _listening() -> set[Any]:
    """The addresses this process and its children listen on."""
    me = psutil.Process()
    return {
        c.laddr
        for p in [me, *me.children(recursive=True)]
        for c in p.net_connections("inet")
        if c.status == psutil.CONN_LISTEN
    }


@pytest.mark.parametrize(
    ("settings", "workers", "threads"),
    [
        pytest.param({"n_workers": CPU_COUNT + 1}, CPU_COUNT + 1, 1, id="workers"),
        pytest.param({"n_workers": 1, "threads_per_worker": CPU_COUNT + 1}, 1, CPU_COUNT + 1),
        pytest.param({"n_workers": 100_000}, 100_000, 1, id="the-attack"),
        # as many workers as fit when n_workers is null: one, still too many threads
        pytest.param({"threads_per_worker": 2 * CPU_COUNT}, 1, 2 * CPU_COUNT, id="fit"),
    ],
)
@pytest.mark.parametrize("processes", [True, False], ids=["worker-processes", "in-process"])
def test_more_threads_than_cores_are_refused_before_anything_starts(
    settings: dict[str, Any], workers: int, threads: int, processes: bool
) -> None:
    config = LocalClusterConfig(processes=processes, memory_limit="1GiB", **settings)
    before = _listening()
    with pytest.raises(ConfigError) as caught, connect(config):
        pass
    assert _listening() - before == set()  # no scheduler, worker or dashboard started
    message = str(caught.value)
    assert "\n" not in message
    assert message == (
        f"cluster: {workers} worker(s) x {threads} thread(s) is {workers * threads} threads, "
        f"more than this machine's {CPU_COUNT} core(s); expected at most {CPU_COUNT} threads "
        "in all, or --force (force=True) to start them anyway"
    )


def test_the_machine_size_is_accepted_and_force_starts_more() -> None:
    for config in (
        LocalClusterConfig(),  # as many workers as fit
        LocalClusterConfig(n_workers=CPU_COUNT),
        LocalClusterConfig(n_workers=1, threads_per_worker=CPU_COUNT),
    ):
        check_cluster_size(config)
    config = LocalClusterConfig(
        n_workers=1, threads_per_worker=CPU_COUNT + 1, processes=False, memory_limit="1GiB"
    )
    with connect(config, force=True) as client:
        assert list(client.nthreads().values()) == [CPU_COUNT + 1]


@pytest.mark.parametrize(
    ("config", "field", "value"),
    [
        (JobqueueClusterConfig(kind="slurm", n_workers=100_000), "n_workers", 100_000),
        (
            JobqueueClusterConfig(kind="pbs", adaptive=AdaptiveConfig(maximum=MAX_WORKERS + 1)),
            "adaptive.maximum",
            MAX_WORKERS + 1,
        ),
        (KubernetesClusterConfig(n_workers=MAX_WORKERS + 1), "n_workers", MAX_WORKERS + 1),
        (
            KubernetesClusterConfig(adaptive=AdaptiveConfig(minimum=1, maximum=50_000)),
            "adaptive.maximum",
            50_000,
        ),
    ],
)
def test_absurd_batch_clusters_are_refused_unless_forced(
    config: Any, field: str, value: int
) -> None:
    # before any job or pod is asked for: neither SLURM nor Kubernetes is needed here
    with pytest.raises(ConfigError) as caught, connect(config):
        pass
    assert str(caught.value) == (
        f"cluster: {field} {value} is more than {MAX_WORKERS} workers; expected at most "
        f"{MAX_WORKERS}, or --force (force=True) to start them anyway"
    )
    check_cluster_size(config, force=True)


def test_sizes_up_to_the_limits_pass() -> None:
    adaptive = AdaptiveConfig(maximum=MAX_WORKERS)
    check_cluster_size(JobqueueClusterConfig(kind="slurm", n_workers=MAX_WORKERS))
    check_cluster_size(JobqueueClusterConfig(kind="pbs", adaptive=adaptive))
    check_cluster_size(KubernetesClusterConfig(n_workers=MAX_WORKERS, adaptive=adaptive))
    # an existing scheduler has the workers it has
    check_cluster_size(AddressClusterConfig(address="tls://h:8786", n_workers=100_000))


# ---------------------------------------------------------------------------------------------
# Closing a cluster of worker processes
# ---------------------------------------------------------------------------------------------

#: What Dask prints when it gives up on a worker's exit, or when a worker outlives its
#: scheduler.
NOISE = re.compile(r"still alive|heartbeat|Traceback", re.IGNORECASE)

#: How long each worker process takes to exit in these tests: more than the 4 s Dask's
#: nannies wait by default (a loaded machine's workers took up to 5 s, measured).
EXIT_S = 5.0


class _Messages(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(self.format(record))


@pytest.fixture
def dask_warnings() -> Iterator[list[str]]:
    """Dask's warnings and errors in this process (the nannies' among them), with their
    tracebacks; worker processes write theirs to the file descriptor ``capfd`` reads."""
    handler = _Messages()
    logger = logging.getLogger("distributed")
    logger.addHandler(handler)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)


def _run_and_close(config: LocalClusterConfig) -> None:
    """Compute on the cluster, make each worker process take EXIT_S to exit, close it."""
    with connect(config) as client:
        assert client.submit(sum, [1, 2]).result() == 3
        # time.sleep runs when the worker's interpreter exits, after Dask's own closing
        client.run(atexit.register, time.sleep, EXIT_S)


def test_worker_processes_that_exit_slowly_close_quietly(
    capfd: pytest.CaptureFixture[str], dask_warnings: list[str]
) -> None:
    _run_and_close(LocalClusterConfig(kind="local", n_workers=2, memory_limit="1GiB"))
    captured = capfd.readouterr()
    assert dask_warnings == []
    assert not NOISE.findall(captured.err + captured.out), captured.err


def test_a_worker_that_does_not_exit_in_time_is_still_reported(
    dask_warnings: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # with Dask's own time (5 s, of which 4 s to exit) the test above would show it too
    monkeypatch.setattr(cluster, "WORKER_CLOSE_TIMEOUT_S", 2.0)
    _run_and_close(LocalClusterConfig(kind="local", n_workers=1, memory_limit="1GiB"))
    assert dask_warnings == ["Worker process still alive after 1.6 seconds, killing"]


# ---------------------------------------------------------------------------------------------
# An in-process worker in a process that holds more than its limit
# ---------------------------------------------------------------------------------------------


def test_an_in_process_worker_runs_in_a_process_holding_more_than_its_limit() -> None:
    # Dask's memory manager measures the whole process: a notebook's data (here 256 MiB of
    # ballast) would pause the worker at 80 % of its limit and a run would wait forever
    ballast = np.ones(256 * 2**20 // 8)
    assert psutil.Process().memory_info().rss > 128 * 2**20
    config = LocalClusterConfig(n_workers=1, processes=False, memory_limit="128MiB")
    with connect(config) as client:
        time.sleep(0.5)  # the memory monitor runs every 0.1 s
        assert client.submit(sum, [1, 2], pure=False).result(timeout=30) == 3
        [worker] = client.scheduler_info()["workers"].values()
        assert worker["memory_limit"] == 128 * 2**20  # still what sizes the chunks
        assert worker["status"] == "running"
    del ballast
