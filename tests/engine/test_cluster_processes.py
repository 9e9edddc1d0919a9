"""The demo pipeline on ``dask scheduler`` + ``dask worker`` processes, joined by address.

The same pipeline file must give the same results on a separately started cluster as on a
LocalCluster, and a worker killed mid-run (its nanny too, so its capacity is gone) must
cost nothing: Dask reruns its task elsewhere, and no item is lost or combined twice.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import xarray as xr
from distributed import Client

from neurobatch import synthetic
from neurobatch.cli import main
from neurobatch.config import PipelineConfig, load_config
from neurobatch.engine.pipeline import Pipeline, RunSummary
from neurobatch.io import store
from processes import dask_processes

N_ITEMS = 4


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The photometry demo's inputs and pipeline file (4 recordings of 5 min at 100 Hz)."""
    folder = tmp_path_factory.mktemp("demo")
    synthetic.write_photometry_batch(
        folder / "data", n_items=N_ITEMS, duration_s=300.0, fs=100.0, seed=3
    )
    return synthetic.demo_pipeline_file(folder, "photometry")


def _config(pipeline_file: Path, out: Path) -> PipelineConfig:
    config = load_config(pipeline_file)
    output = config.output.model_copy(update={"url": str(out), "dashboards": None})
    return config.model_copy(update={"output": output})


@pytest.fixture(scope="module")
def reference(demo: Path, local_client: Client, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's outputs from the session's LocalCluster."""
    out = tmp_path_factory.mktemp("reference") / "out"
    Pipeline(_config(demo, out)).run(client=local_client)
    return out


def _assert_same_results(out: Path, reference: Path) -> None:
    xr.testing.assert_identical(
        store.open_trials(str(out / "trials.zarr")).load(),
        store.open_trials(str(reference / "trials.zarr")).load(),
    )
    items = pd.read_parquet(out / "items.parquet").set_index("item_id").sort_index()
    expected = pd.read_parquet(reference / "items.parquet").set_index("item_id").sort_index()
    assert (items["status"] == "done").all()
    pd.testing.assert_series_equal(items["n_trials"], expected["n_trials"])


def test_the_demo_by_address_equals_a_local_cluster(
    demo: Path, reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    pipeline_file = tmp_path / "pipeline.yaml"
    text = demo.read_text().replace("url: data", f"url: {demo.parent / 'data'}")
    text = text.replace("url: output", f"url: {out}").replace("dashboards: png", "")
    pipeline_file.write_text(text)
    with dask_processes(tmp_path) as cluster:
        status = main(["run", str(pipeline_file), "--cluster", cluster.address, "--workers", "2"])
        with Client(cluster.address, set_as_default=False) as client:
            workers = set(client.scheduler_info()["workers"])
    assert status == 0, capsys.readouterr().err
    assert f"scheduler {cluster.address}: 2 worker(s)" in capsys.readouterr().out
    _assert_same_results(out, reference)
    # every item ran on one of the two worker processes, none in the driver
    ran_on = {item["worker"] for item in json.loads((out / "run.json").read_text())["items"]}
    assert len(workers) == 2 and ran_on <= workers


def test_a_worker_killed_mid_run_loses_nothing(demo: Path, reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    outcome: dict[str, Any] = {}
    with dask_processes(tmp_path) as cluster, Client(cluster.address) as client:
        client.wait_for_workers(2, timeout=60)
        run = threading.Thread(
            target=lambda: outcome.update(
                summary=Pipeline(_config(demo, out)).run(client=client, progress=False)
            )
        )
        run.start()
        # wait until an item is committed and the next ones are being processed, then
        # kill a worker that holds one (its nanny too, so the worker does not come back)
        victim = None
        deadline = time.monotonic() + 300
        while victim is None and run.is_alive() and time.monotonic() < deadline:
            committed = list((out / "items").glob(f"*/trials.zarr/{store.COMMIT_MARKER}"))
            busy = [w for w, keys in client.processing().items() if keys]
            if committed and busy:
                victim = client.scheduler_info()["workers"][busy[0]]["name"]
            else:
                time.sleep(0.05)
        assert victim is not None, "no item was in flight after the first commit"
        cluster.kill_worker(int(victim.removeprefix("worker-")))
        run.join(timeout=600)
        survivors = {w["name"] for w in client.scheduler_info()["workers"].values()}
    assert not run.is_alive()
    assert survivors == {"worker-0", "worker-1"} - {victim}
    summary: RunSummary = outcome["summary"]
    assert summary.n_failed == 0 and len(summary.items) == N_ITEMS
    _assert_same_results(out, reference)
    # the combined trials hold each item's trials once
    trials = store.open_trials(str(out / "trials.zarr"))
    per_item = pd.Series(trials["item_id"].to_numpy()).value_counts().sort_index()
    expected = pd.read_parquet(reference / "items.parquet").set_index("item_id")["n_trials"]
    assert per_item.to_dict() == expected[expected > 0].to_dict()
