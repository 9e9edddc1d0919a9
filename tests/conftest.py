"""Shared fixtures: a real ``distributed.LocalCluster`` and the schedulers to compare on."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dask
import pytest
from distributed import Client, LocalCluster
from hypothesis import HealthCheck, settings

from neurobatch import synthetic
from neurobatch.config import load_config
from neurobatch.engine.run import Pipeline

# the default profile (CI's) draws the same examples on every run, so that a pass or a
# failure repeats; the "slow" profile (HYPOTHESIS_PROFILE=slow) explores new ones
settings.register_profile(
    "default",
    max_examples=25,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.register_profile(
    "slow",
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(scope="session")
def local_client() -> Iterator[Client]:
    """A real two-process ``LocalCluster`` on loopback, shared by the whole session."""
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            memory_limit="2GiB",
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        yield client


@pytest.fixture(params=["threads", "distributed"])
def scheduler(request: pytest.FixtureRequest) -> Iterator[str]:
    """Make dask compute on the threaded scheduler, then on the real LocalCluster.

    Both lazy collections (``.compute()``) and eager engine functions that compute
    internally use the scheduler set here for the duration of the test.
    """
    get: Any = "threads"
    if request.param == "distributed":
        get = request.getfixturevalue("local_client").get
    with dask.config.set(scheduler=get):
        yield request.param


@pytest.fixture(scope="session")
def photometry_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The photometry demo's inputs (3 recordings of 3 min at 100 Hz) and pipeline file."""
    folder = tmp_path_factory.mktemp("photometry-demo")
    synthetic.write_photometry_batch(folder / "data", n_items=3, duration_s=180.0, fs=100.0, seed=3)
    return synthetic.demo_pipeline_file(folder, "photometry")


@pytest.fixture(scope="session")
def photometry_reference(
    photometry_demo: Path, local_client: Client, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The output folder of the photometry demo run on the session's LocalCluster."""
    out = tmp_path_factory.mktemp("photometry-reference") / "out"
    config = load_config(photometry_demo)
    output = config.output.model_copy(update={"url": str(out), "dashboards": None})
    Pipeline(config.model_copy(update={"output": output})).run(client=local_client)
    return out


@contextmanager
def raise_if_dask_computes() -> Iterator[None]:
    """Fail if anything inside the block computes a dask graph (graph building must be lazy)."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("dask computed inside a block that must only build a graph")

    with dask.config.set(scheduler=refuse):
        yield


@pytest.fixture(scope="session")
def s3_options() -> Iterator[dict[str, Any]]:
    """A real local S3 server (moto) with a bucket, and the fsspec options to reach it."""
    # heavy imports: only when an S3 test runs
    import boto3  # type: ignore[import-untyped]
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        # moto accepts any credentials: distinctive ones, so that a test can look for leaks
        key, secret = "AKIANEUROBATCH0TEST1", "nb/TestSecret+doNotWrite0123456789"
        credentials = {"aws_access_key_id": key, "aws_secret_access_key": secret}
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **credentials)
        client.create_bucket(Bucket="lab")
        yield {
            "key": key,
            "secret": secret,
            "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
        }
    finally:
        server.stop()
