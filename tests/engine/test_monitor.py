"""The ResourceMonitor scheduler plugin on real clusters: samples, tasks, registration."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pandas as pd
import pytest
from distributed import Client, LocalCluster

from neurobatch.engine.monitor import DRIVER, HANDLER, Recorder, ResourceMonitor
from neurobatch.errors import NeurobatchError
from processes import WorkerCPU


@pytest.fixture
def own_client() -> Iterator[Client]:
    """A fresh in-process cluster of two workers: a scheduler no other test registered on."""
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=2,
            processes=False,
            memory_limit="1GiB",
            dashboard_address=None,
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        yield client


#: A builtin that keeps one core busy for about a second (the workers cannot import
#: functions defined in this test module).
BURN = (sum, range(100_000_000))


def test_samples_every_worker_with_its_limit_and_threads(local_client: Client) -> None:
    with Recorder(local_client) as recorder:
        with WorkerCPU(local_client) as measured:
            futures = [local_client.submit(*BURN, key=f"burn-{i}", pure=False) for i in range(2)]
            local_client.gather(futures)
        time.sleep(1.0)  # the last heartbeats
        samples, tasks = recorder.poll()
    info = local_client.scheduler_info()["workers"]
    on_workers = samples[samples["worker"] != DRIVER]
    assert set(on_workers["worker"]) == set(info)
    for address, rows in on_workers.groupby("worker"):
        assert (rows["nthreads"] == info[address]["nthreads"]).all()
        assert (rows["memory_limit"] == info[address]["memory_limit"]).all()
        assert (rows["memory"] > 0).all()
        # each worker kept one core busy for about a second (less of it on a loaded
        # machine): a heartbeat shows most of what the kernel counted
        assert measured.share[address] > 0.2
        assert rows["cpu"].max() > 60 * measured.share[address]
    # the driver samples itself alongside
    assert (samples["worker"] == DRIVER).sum() >= 2
    # at about the interval: at least one sample per worker per second
    span = on_workers["time"].max() - on_workers["time"].min()
    assert len(on_workers) / len(info) >= span
    # the tasks, where and when they ran, as the scheduler saw them
    who_has = local_client.who_has(futures)
    ran = tasks.set_index("key")
    for future in futures:
        row = ran.loc[future.key]
        assert row["worker"] in who_has[future.key]
        assert row["state"] == "memory"
        assert 0.2 < row["stop"] - row["start"] < 30


def test_a_poll_within_the_interval_reuses_what_was_fetched(local_client: Client) -> None:
    """poll(reuse_within=...) asks the scheduler only when its last answer is older."""
    with Recorder(local_client) as recorder:
        time.sleep(3 * recorder.interval)
        first, _ = recorder.poll()
        assert len(first)
        time.sleep(3 * recorder.interval)  # the monitor has sampled again meanwhile
        reused, _ = recorder.poll(reuse_within=60.0)
        assert len(reused) == len(first)
        fetched, _ = recorder.poll(reuse_within=recorder.interval)
        assert len(fetched) > len(first)
        pd.testing.assert_frame_equal(fetched.iloc[: len(first)], first)


def test_registration_is_idempotent_and_the_buffer_is_bounded(
    own_client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    small = ResourceMonitor(interval=0.02, max_samples=5)
    own_client.register_plugin(small)
    with Recorder(own_client) as recorder:  # keeps the registered monitor: idempotent
        kept = own_client.run_on_scheduler(
            lambda dask_scheduler: dask_scheduler.plugins[ResourceMonitor.name]
        )
        assert (kept.interval, kept.samples.maxlen) == (0.02, 5)
        time.sleep(1.0)
        with caplog.at_level(logging.WARNING, logger="neurobatch"):
            samples, _ = recorder.poll()
    assert recorder.lost > 0
    assert "left the monitor's buffer" in caplog.text
    assert (samples["worker"] != DRIVER).sum() == 5


def test_a_missing_handler_is_a_clear_error(own_client: Client) -> None:
    with Recorder(own_client) as recorder:
        own_client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.handlers.pop(HANDLER))
        with pytest.raises(NeurobatchError, match="no 'neurobatch_resources' handler"):
            recorder.poll()
