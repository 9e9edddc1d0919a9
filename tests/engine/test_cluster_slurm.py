"""The photometry demo on a real SLURM cluster, through dask-jobqueue.

Needs a running SLURM cluster that this user can submit to, with room for two 1-core,
1 GiB jobs: CI starts a one-node cluster with ``deploy/slurm/start-local-slurm.sh``. Without
one (no ``sinfo``, or no idle node) the test is skipped and says why.

The workers must be able to reach the scheduler at 127.0.0.1, so the SLURM node is this
machine; the scheduler runs in the test process. Scheduler, workers and nannies speak TLS
with credentials made for the run, which the jobs read from files only this user can read;
no key is in a job script, SLURM's copy of it, a job's log or processing.json.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import dask
import pandas as pd
import pytest
import xarray as xr
from distributed import Client, LocalCluster

from neurobatch import synthetic
from neurobatch.config import ClusterConfig, JobqueueClusterConfig
from neurobatch.engine.cluster import connect
from neurobatch.engine.run import Pipeline
from slurm import slurm_unavailable

pytest.importorskip("dask_jobqueue", reason="needs dask-jobqueue (neurobatch[hpc])")


def _our_jobs(tag: str) -> set[str]:
    """The ids of the jobs SLURM knows (pending, running or completing) that carry ``tag``."""
    result = subprocess.run(
        ["squeue", "-h", "-o", "%i %k"], capture_output=True, text=True, timeout=30, check=True
    )
    rows = (line.split(" ", 1) for line in result.stdout.splitlines())
    return {row[0] for row in rows if row[1:] == [tag]}


@pytest.fixture
def slurm_config(tmp_path: Path) -> Iterator[JobqueueClusterConfig]:
    """Two one-core worker jobs, tagged with a comment of their own; those still queued
    afterwards are cancelled (closing the cluster should have done it)."""
    if (reason := slurm_unavailable()) is not None:
        pytest.skip(reason)
    tag = f"neurobatch-test-{uuid.uuid4().hex}"
    yield JobqueueClusterConfig(
        kind="slurm",
        n_workers=2,
        cores=1,
        processes=1,
        memory="1GiB",
        walltime="00:10:00",
        job_directives=[f"--comment={tag}"],
        scheduler_host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
        python=sys.executable,
        log_directory=str(tmp_path / "slurm-logs"),
        shared_temp_directory=str(tmp_path / "shared"),
        timeout_s=90,
    )
    leftovers = sorted(_our_jobs(tag))
    if leftovers:
        subprocess.run(["scancel", *leftovers], timeout=30, check=False)


def _demo(folder: Path, output: str, cluster: ClusterConfig | None = None) -> Pipeline:
    """The photometry demo (4 recordings of 60 s at 100 Hz) writing to ``folder/output``,
    its cluster section replaced by ``cluster`` if given."""
    if not (folder / "pipeline.yaml").exists():
        synthetic.write_photometry_batch(
            folder / "data", n_items=4, duration_s=60.0, fs=100.0, seed=0
        )
        synthetic.demo_pipeline_file(folder, "photometry")
    pipeline = Pipeline.from_file(folder / "pipeline.yaml")
    config = pipeline.config
    output_section = config.output.model_copy(
        update={"url": str(folder / output), "formats": ["zarr", "parquet"], "dashboards": None}
    )
    update = {"output": output_section} | ({} if cluster is None else {"cluster": cluster})
    pipeline.config = config.model_copy(update=update)
    return pipeline


def test_photometry_demo_on_slurm_matches_a_local_run(
    tmp_path: Path, slurm_config: JobqueueClusterConfig
) -> None:
    # the reference: the same pipeline on a LocalCluster of threads in this process (which
    # has imported everything already, so it costs only the computing)
    with (
        LocalCluster(
            n_workers=1,
            threads_per_worker=2,
            processes=False,
            dashboard_address=None,
        ) as cluster,
        Client(cluster, set_as_default=False) as local_client,
    ):
        local = _demo(tmp_path, "local").run(client=local_client, progress=False)
    assert local.n_done == 4

    with connect(slurm_config) as client:
        client.wait_for_workers(slurm_config.n_workers, timeout=slurm_config.timeout_s)
        tag = slurm_config.job_directives[0].removeprefix("--comment=")
        ours = _our_jobs(tag)
        # every worker runs inside one of the jobs the cluster submitted (os.getenv is
        # pickled by reference, so it reads the worker's environment, not this process's)
        job_of_worker = client.run(os.getenv, "SLURM_JOB_ID")
        submitted = {job.job_id for job in client.cluster.workers.values()}
        assert len(job_of_worker) == slurm_config.n_workers
        assert set(job_of_worker.values()) == submitted
        assert submitted == ours
        assert set(client.run(os.getenv, "OMP_NUM_THREADS").values()) == {"1"}
        # the workers' Dask read their profiler's setting from the job's environment
        profiler = client.run(dask.config.get, "distributed.worker.profile.enabled")
        assert set(profiler.values()) == {False}
        slurm_workers = set(job_of_worker)
        # TLS everywhere, with the credentials of a private folder of the shared one
        info = client.scheduler_info()
        nannies = [worker["nanny"] for worker in info["workers"].values()]
        assert info["address"].startswith("tls://127.0.0.1:")
        assert {address.split("://")[0] for address in [*slurm_workers, *nannies]} == {"tls"}
        [credentials] = (tmp_path / "shared").iterdir()
        assert _mode(credentials) == 0o700
        assert {p.name: _mode(p) for p in credentials.iterdir()} == {
            "cert.pem": 0o600,
            "key.pem": 0o600,
        }
        scripts = [
            subprocess.run(
                ["scontrol", "write", "batch_script", job, "-"],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            ).stdout
            for job in sorted(ours)
        ]
        assert all(f"--tls-key {credentials}/key.pem" in script for script in scripts)

        summary = _demo(tmp_path, "slurm", slurm_config).run(client=client, progress=False)

    assert summary.n_done == 4
    assert summary.n_trials == local.n_trials > 0
    # the items' stages ran on the SLURM workers only
    processing = json.loads((tmp_path / "slurm" / "processing.json").read_text())
    stages = {
        process["name"]: set(process["output_parameters"]["workers"])
        for process in processing["data_processes"]
    }
    for stage in ("ingest", "preprocess", "trials"):
        assert stages[stage] and stages[stage] <= slurm_workers, stage
    # and gave what a local run gives
    columns = ["item_id", "experiment_id", "status", "n_trials", "n_dropped", "dropped"]
    columns += ["fit_method", "fit_intercept", "fit_slope", "fit_r_squared", "fit_converged"]
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "slurm" / "items.parquet")[columns],
        pd.read_parquet(tmp_path / "local" / "items.parquet")[columns],
    )
    with (
        xr.open_zarr(tmp_path / "slurm" / "trials.zarr") as on_slurm,
        xr.open_zarr(tmp_path / "local" / "trials.zarr") as on_local,
    ):
        xr.testing.assert_identical(on_slurm.load(), on_local.load())
    # closing the cluster cancelled its jobs (each one is COMPLETING for a moment)
    assert _wait_until_gone(tag), f"jobs {sorted(_our_jobs(tag))} still queued"
    # and deleted the credentials; no key was written anywhere else
    assert list((tmp_path / "shared").iterdir()) == []
    written = [*scripts, (tmp_path / "slurm" / "processing.json").read_text()]
    written += [p.read_text() for p in (tmp_path / "slurm-logs").iterdir()]
    assert not [text for text in written if "PRIVATE KEY" in text]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _wait_until_gone(tag: str, timeout_s: float = 30.0) -> bool:
    """Wait for the cancelled jobs to leave the queue; False if some are still there."""
    deadline = time.monotonic() + timeout_s
    while _our_jobs(tag):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True
