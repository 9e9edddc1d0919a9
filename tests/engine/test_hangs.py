"""Runs that must end: a worker process frozen mid-item (SIGSTOP), and inputs on a storage
endpoint that accepts connections and never answers."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import psutil
import pytest
from distributed import Client

from neurobatch import synthetic
from neurobatch.cli import EXIT_SOME_FAILED, main
from neurobatch.engine.layout import FAILURE_MARKER, OutputLayout
from neurobatch.engine.statuses import read_runs, read_tasks
from processes import ProcessCluster, dask_processes
from runs import assert_same_results
from silent import silent_server

STOPPING_HOOK = '''
import os
import signal


def stop_once(recording):
    """post_load: the first time experiment_002 is read, its worker process writes its id
    to {marker!r} and stops itself (SIGSTOP); after that every recording passes."""
    if str(recording.attrs.get("source", "")).endswith("experiment_002.csv"):
        try:
            marker = os.open({marker!r}, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return recording
        os.write(marker, str(os.getpid()).encode())
        os.close(marker)
        os.kill(os.getpid(), signal.SIGSTOP)
    return recording
'''

TIMEOUT_S = 4


@pytest.fixture(scope="module")
def processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessCluster]:
    """``dask scheduler`` and two ``dask worker`` processes (each under its nanny)."""
    with dask_processes(tmp_path_factory.mktemp("hangs-cluster"), n_workers=2) as cluster:
        yield cluster


def stopping_pipeline(data: Path, tmp_path: Path, *, engine: str) -> tuple[Path, Path]:
    """The photometry demo's pipeline over ``data`` with the stopping hook and ``engine``
    settings, on an existing scheduler; returns the file and the marker the hook writes."""
    marker = tmp_path / "stopped.pid"
    hook = tmp_path / "hooks.py"
    hook.write_text(STOPPING_HOOK.format(marker=str(marker)))
    text = synthetic.demo_pipeline_file(tmp_path, "photometry").read_text()
    text = text.replace("url: data", f"url: {data}")
    text = text.replace("url: output", f"url: {tmp_path / 'out'}").replace("dashboards: png", "")
    cluster = "kind: address, address: tcp://replaced:1, allow_insecure: true"
    text = re.sub(r"(?m)^cluster: .*$", f"cluster: {{{cluster}}}", text)
    text += f"hooks: {{post_load: '{hook}:stop_once'}}\nengine: {{{engine}}}\n"
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(text)
    return pipeline, marker


def run_on(processes: ProcessCluster, pipeline: Path) -> int:
    """``neurobatch run`` on the worker processes."""
    workers = str(len(processes.workers))
    return main(["run", str(pipeline), "--cluster", processes.address, "--workers", workers])


def assert_restarted(processes: ProcessCluster, marker: Path) -> None:
    """The stopped worker process is gone, and a fresh one took its place."""
    stopped = int(marker.read_text())
    assert not psutil.pid_exists(stopped)
    with Client(processes.address, set_as_default=False) as client:
        client.wait_for_workers(len(processes.workers), timeout=30)
        pids = set(client.run(os.getpid).values())
    assert stopped not in pids and len(pids) == len(processes.workers)


def test_a_frozen_worker_is_restarted_and_its_item_retried(
    processes: ProcessCluster,
    photometry_demo: Path,
    photometry_reference: Path,
    tmp_path: Path,
) -> None:
    data = photometry_demo.parent / "data"
    engine = f"item_timeout_s: {TIMEOUT_S}, retries: 1"
    pipeline, marker = stopping_pipeline(data, tmp_path, engine=engine)
    assert run_on(processes, pipeline) == 0
    # the first attempt stopped its process; the retry, on a fresh one, finished the item
    assert marker.exists()
    assert_restarted(processes, marker)
    assert_same_results(tmp_path / "out", photometry_reference)
    assert not (tmp_path / "out" / "items" / "experiment_002" / FAILURE_MARKER).exists()


def test_a_frozen_worker_without_retries_fails_its_item_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    synthetic.write_photometry_batch(data, n_items=4, duration_s=120.0, fs=20.0, seed=5)
    # on one worker (two task slots), a task per item: when experiment_002 stops the
    # worker, the scheduler gives it experiment_004's task, still waiting, as soon as the
    # driver takes back the two it has, and fails it (KilledWorker) when the restart kills
    # the worker: the driver submits it again
    engine = f"item_timeout_s: {TIMEOUT_S}, retries: 0, max_in_flight: 4"
    pipeline, marker = stopping_pipeline(data, tmp_path, engine=engine)
    with dask_processes(tmp_path, n_workers=1) as one_worker:
        assert run_on(one_worker, pipeline) == EXIT_SOME_FAILED
        assert_restarted(one_worker, marker)
    out = tmp_path / "out"
    items = pd.read_parquet(out / "items.parquet").set_index("item_id")
    failed = items.index[items["status"] == "failed"].tolist()
    assert failed == ["experiment_002"] and (items["status"] == "done").sum() == 3
    error = items.loc["experiment_002", "error"]
    # the hook stopped the process as preprocess read the ingested recording
    assert error == (
        f"{data / 'experiment_002.csv'}: still running after {TIMEOUT_S} s, in stage "
        f"preprocess (engine.item_timeout_s: {TIMEOUT_S}); its worker was restarted, "
        "1 attempt(s) in all (engine.retries: 0); expected to finish within it"
    )
    assert f"FAILED experiment_002: {error}" in capsys.readouterr().out
    failure = json.loads((out / "items" / "experiment_002" / FAILURE_MARKER).read_text())
    assert failure["stage"] == "preprocess" and failure["error"] == error
    assert "lost with a restarted worker; submitted again" in (out / "logs" / "run.log").read_text()
    # the three others are combined
    trials = pd.read_parquet(out / "trials_obs.parquet")
    assert set(trials["item_id"]) == set(items.index) - {"experiment_002"}
    # its stage was abandoned on its worker (reported through the scheduler)
    layout = OutputLayout(str(out))
    [run_id] = read_runs(layout)["run"]
    tasks = read_tasks(layout, run_id).set_index(["item_id", "stage"])
    assert tasks.loc[("experiment_002", "preprocess"), "status"] == "abandoned"
    assert tasks.loc[("experiment_002", "preprocess"), "reason"] == error
    assert read_runs(layout)[["done", "failed", "abandoned"]].iloc[0].tolist() == [3, 0, 1]


def test_inputs_on_a_silent_endpoint_end_the_run_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with silent_server() as server:
        storage_options = {
            "key": "k",
            "secret": "s",
            "client_kwargs": {"endpoint_url": server.endpoint, "region_name": "us-east-1"},
        }
        pipeline = tmp_path / "pipeline.yaml"
        pipeline.write_text(
            "name: silent\n"
            "input: {url: 's3://bucket/data', pattern: '*.csv', storage_options: "
            f"{json.dumps(storage_options)}}}\n"
            "loader: {format: photometry-csv, event_cols: [trial_cue]}\n"
            "trials: {align_to: trial_cue, bounds_s: [-2, 4]}\n"
            f"output: {{url: '{tmp_path / 'out'}'}}\n"
            "engine: {storage_timeouts: {connect_s: 1, read_s: 0.5, attempts: 2}}\n"
        )
        status = main(["run", str(pipeline)])
        attempts = len(server.accepted)
    [line] = capsys.readouterr().err.strip().splitlines()
    assert status == 1
    assert line.startswith("neurobatch run: error: input.url 's3://bucket/data' cannot be listed")
    assert f'Read timeout on endpoint URL: "{server.endpoint}/bucket/data"' in line
    assert attempts == 2
