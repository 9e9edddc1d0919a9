"""Faults during a run: an item that hangs in the driver's process, and the retries of items
whose worker died."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
from distributed import Client

from neurobatch.config import LocalClusterConfig, load_config
from neurobatch.engine.cluster import connect
from neurobatch.engine.layout import FAILURE_MARKER
from neurobatch.engine.run import Pipeline
from neurobatch.io.commit import read_commit
from neurobatch.io.trials_store import open_trials

HANGING_HOOK = '''
import os
import time


def hang_on_the_second(recording):
    """post_load: the second recording hangs until {release!r} exists; the others pass."""
    if str(recording.attrs.get("source", "")).endswith("experiment_002.csv"):
        while not os.path.exists({release!r}):
            time.sleep(0.1)
    return recording
'''


def test_a_hanging_item_is_cut_off_by_the_timeout(photometry_demo: Path, tmp_path: Path) -> None:
    """In the driver's own process (an in-process cluster's threads), where nothing can stop
    it, the item times itself: it fails, and its thread is left to end without committing.
    On worker processes the driver restarts the worker instead (test_hangs.py)."""
    timeout_s, release = 3.0, tmp_path / "release"
    hook = tmp_path / "hooks.py"
    hook.write_text(HANGING_HOOK.format(release=str(release)))
    config = load_config(photometry_demo)
    out = tmp_path / "out"
    config = config.model_copy(
        update={
            "output": config.output.model_copy(update={"url": str(out), "dashboards": None}),
            "hooks": config.hooks.model_copy(update={"post_load": f"{hook}:hang_on_the_second"}),
            "engine": config.engine.model_copy(update={"item_timeout_s": timeout_s}),
        }
    )
    with connect(LocalClusterConfig(n_workers=2, processes=False)) as client:
        summary = Pipeline(config).run(client=client)

    items = summary.items.set_index("item_id")
    assert items["status"].to_dict() == {
        "experiment_001": "done",
        "experiment_002": "failed",
        "experiment_003": "done",
    }
    error = items.loc["experiment_002", "error"]
    assert error.startswith(str(photometry_demo.parent / "data" / "experiment_002.csv"))
    # the post_load hook runs as preprocess reads the ingested recording
    assert "still running after 3 s, in stage preprocess (engine.item_timeout_s: 3)" in error
    # the failure is recorded beside the item's outputs and in its log
    item = out / "items" / "experiment_002"
    failure = json.loads((item / FAILURE_MARKER).read_text())
    assert failure["stage"] == "preprocess" and failure["error"] == error
    assert error in (out / "logs" / "experiment_002.log").read_text()
    # the abandoned thread goes on when released (Python cannot stop it), preprocesses, and
    # is refused its commit
    release.touch()
    deadline = time.monotonic() + 60
    while not (item / "preprocess").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (item / "preprocess").exists(), "the abandoned thread never went on"
    time.sleep(2.0)
    assert read_commit(str(item / "preprocess")) is None
    assert read_commit(str(item / "trials")) is None
    assert json.loads((item / FAILURE_MARKER).read_text()) == failure
    # the combined trials hold the two finished items only
    trials = open_trials(str(out / "trials.zarr"))
    assert set(pd.unique(trials["item_id"].to_numpy())) == {"experiment_001", "experiment_003"}


def test_the_next_success_removes_the_failure_marker(
    photometry_demo: Path, local_client: Client, tmp_path: Path
) -> None:
    config = load_config(photometry_demo)
    out = tmp_path / "out"
    config = config.model_copy(
        update={
            "output": config.output.model_copy(update={"url": str(out), "dashboards": None}),
            "engine": config.engine.model_copy(update={"retries": 1}),
        }
    )
    marker = out / "items" / "experiment_001" / FAILURE_MARKER
    marker.parent.mkdir(parents=True)
    marker.write_text(json.dumps({"stage": "ingest", "error": "an earlier failure"}))
    summary = Pipeline(config).run(client=local_client)
    assert summary.n_failed == 0
    assert not marker.exists()
    # the scheduler reruns a task whose worker died as many times as engine.retries says
    allowed = local_client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.allowed_failures)
    assert allowed == 1
