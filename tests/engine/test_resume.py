"""Resume after the driver is killed, and ``neurobatch status``.

``neurobatch run`` is started as a real process with its own LocalCluster and killed with
SIGKILL, its workers too, once some items are committed. The combined trials it leaves
hold whole items only; a re-run skips exactly the committed items and ends with the same
trials as a run that was never interrupted; ``neurobatch status`` tells the states apart.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import fsspec
import pandas as pd
import psutil
import pytest
import xarray as xr
import yaml
from distributed import Client

from endpoint import Endpoint
from neurobatch import synthetic
from neurobatch.cli import main
from neurobatch.engine.layout import FAILURE_MARKER
from neurobatch.engine.ledger import (
    counts,
    item_states,
    write_manifest,
)
from neurobatch.engine.run import Pipeline
from neurobatch.errors import StorageError
from neurobatch.io import files
from neurobatch.io.commit import COMMIT_MARKER, commit
from neurobatch.io.trials_store import open_trials

N_ITEMS = 6
TRIALS_MARKER = f"trials/{COMMIT_MARKER}"


def _pipeline_file(folder: Path, data: Path, out: Path) -> Path:
    """The photometry demo's pipeline on ``data`` into ``out``: no figures, 2 items in flight."""
    path = synthetic.demo_pipeline_file(folder, "photometry")
    pipeline = yaml.safe_load(path.read_text())
    pipeline["input"]["url"] = str(data)
    pipeline["output"] |= {"url": str(out), "dashboards": None}
    pipeline["engine"] = {"max_in_flight": 2}
    path.write_text(yaml.safe_dump(pipeline, sort_keys=False))
    return path


def _committed(out: Path) -> set[str]:
    """The items whose last stage (trials) is committed."""
    return {p.parts[-3] for p in out.glob(f"items/*/{TRIALS_MARKER}")}


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the driver and every process of its group (its cluster's), and wait until
    none of them can write anything."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    deadline = time.monotonic() + 30
    while True:
        alive = []
        for p in psutil.process_iter():
            try:
                if os.getpgid(p.pid) == process.pid and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except (ProcessLookupError, psutil.NoSuchProcess):
                continue
        if not alive:
            return
        assert time.monotonic() < deadline, f"still alive after SIGKILL: {alive}"
        time.sleep(0.05)


def _status_rows(text: str, items: list[str]) -> dict[str, list[str]]:
    """The states printed on each item's row of the status table."""
    rows = {}
    for line in text.splitlines():
        for item in items:
            if re.search(rf"\b{re.escape(item)}\b", line):
                rows[item] = re.findall(r"\b(done|failed|pending)\b", line)
    return rows


def _reasons(text: str) -> dict[str, str]:
    """The reason column of each item's row, its wrapped lines joined without spaces."""
    reasons: dict[str, str] = {}
    item = ""
    for line in text.splitlines():
        cells = line.split("\u2502")[1:-1]  # the body's rows: │ item │ ... │ reason │
        if cells:
            item = cells[0].strip() or item
            reasons[item] = reasons.get(item, "") + "".join(cells[-1].split())
    return reasons


def _per_item(trials: xr.Dataset) -> dict[str, int]:
    return pd.Series(trials["item_id"].to_numpy()).value_counts().to_dict()


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory, local_client: Client) -> dict[str, Any]:
    """Six recordings of 2 min at 100 Hz and the trials of an uninterrupted run of them."""
    folder = tmp_path_factory.mktemp("resume")
    data = folder / "data"
    synthetic.write_photometry_batch(data, n_items=N_ITEMS, duration_s=120.0, fs=100.0, seed=11)
    reference = folder / "reference"
    _pipeline_file(folder / "reference-pipeline", data, reference)
    Pipeline.from_file(folder / "reference-pipeline" / "pipeline.yaml").run(client=local_client)
    trials = open_trials(str(reference / "trials.zarr")).load()
    return {"folder": folder, "data": data, "reference": trials}


def test_killed_driver_resumes_skipping_the_committed_items(
    batch: dict[str, Any],
    tmp_path: Path,
    local_client: Client,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    path = _pipeline_file(tmp_path, batch["data"], out)
    reference: xr.Dataset = batch["reference"]
    expected = _per_item(reference)
    assert len(expected) == N_ITEMS

    log = tmp_path / "driver.log"
    with log.open("wb") as sink:
        driver = subprocess.Popen(
            # one worker: it starts sooner, and items commit one at a time
            [sys.executable, "-m", "neurobatch", "run", str(path), "--workers", "1"],
            start_new_session=True,  # its LocalCluster's processes share its process group
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        # 2 items committed, the others still to come
        while len(_committed(out)) < 2:
            assert driver.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "no 2 items committed in 60 s"
            time.sleep(0.02)
    finally:
        _kill_group(driver)
    committed = _committed(out)  # nothing can commit any more
    assert 2 <= len(committed) < N_ITEMS, f"not killed mid-run: {len(committed)} committed"

    # the combined trials being built were never put in place: a first run killed leaves
    # no half-built trials.zarr (see test_engine_core for a kill with earlier outputs)
    assert not (out / "trials.zarr").exists()

    # status: the committed items done, the others pending
    assert main(["status", str(out)]) == 0
    printed = capsys.readouterr().out
    k = len(committed)
    assert f"{N_ITEMS} items: {k} done, 0 stale, 0 failed, {N_ITEMS - k} pending" in printed
    items = sorted(expected)
    rows = _status_rows(printed, items)
    for item in items:
        if item in committed:
            assert rows[item] == ["done"] * 3, (item, rows[item])
        else:
            assert rows[item][-1] == "pending", (item, rows[item])
    states = item_states(str(out)).set_index("item_id")
    assert set(states.index[states["status"] == "done"]) == committed
    assert set(states.index[states["status"] == "pending"]) == set(items) - committed

    # the re-run completes, skipping exactly the committed items
    summary = Pipeline.from_file(path).run(client=local_client)
    statuses = summary.items.set_index("item_id")["status"]
    assert set(statuses.index[statuses == "skipped"]) == committed
    assert set(statuses.index[statuses == "done"]) == set(items) - committed
    assert summary.n_skipped == k and summary.n_failed == 0

    # ... and ends with the uninterrupted run's trials exactly: none missing, none twice
    trials = open_trials(str(out / "trials.zarr")).load()
    assert _per_item(trials) == expected
    xr.testing.assert_identical(trials, reference)

    assert main(["status", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"{N_ITEMS} items: {N_ITEMS} done, 0 stale, 0 failed, 0 pending" in printed
    assert all(states == ["done"] * 3 for states in _status_rows(printed, items).values())


def test_status_shows_a_failed_item_with_its_reason(
    batch: dict[str, Any],
    tmp_path: Path,
    local_client: Client,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for name in ("experiment_001", "experiment_002"):
        for suffix in (".csv", ".json"):
            (data / f"{name}{suffix}").write_bytes((batch["data"] / f"{name}{suffix}").read_bytes())
    # a corrupt recording: its signal column holds text
    lines = (data / "experiment_002.csv").read_text().splitlines()
    lines[5] = ",".join(["4", "0.04", "n/a", *lines[5].split(",")[3:]])
    (data / "experiment_003.csv").write_text("\n".join(lines) + "\n")
    (data / "experiment_003.json").write_bytes((data / "experiment_002.json").read_bytes())
    out = tmp_path / "out"
    summary = Pipeline.from_file(_pipeline_file(tmp_path, data, out)).run(client=local_client)
    failures = summary.failures.set_index("item_id")["error"]
    assert list(failures.index) == ["experiment_003"]

    assert main(["status", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "3 items: 2 done, 0 stale, 1 failed, 0 pending" in printed
    rows = _status_rows(printed, ["experiment_001", "experiment_002", "experiment_003"])
    assert rows["experiment_001"] == rows["experiment_002"] == ["done"] * 3
    assert rows["experiment_003"] == ["failed", "pending", "pending"]
    states = item_states(str(out)).set_index("item_id")
    assert states.loc["experiment_003", "error"] == failures["experiment_003"]
    # the reason is printed whole (the table wraps it over lines of its last column)
    reasons = _reasons(printed)
    assert reasons["experiment_003"] == "".join(failures["experiment_003"].split())
    assert reasons["experiment_001"] == reasons["experiment_002"] == ""


def _status_folder(out: str, storage_options: dict[str, Any]) -> None:
    """An output folder of 4 items: a done, b failed, c begun, d not begun."""
    items = pd.DataFrame(
        {
            "item_id": ["a", "b", "c", "d"],
            "url": ["s3://lab/in/a.bin", "s3://lab/in/b.bin", "s3://lab/in/c.bin", "x"],
            "fingerprint": ["1", "2", "3", "4"],
            "format": ["spikeglx"] * 4,
        }
    )
    so = storage_options
    write_manifest(items, out, kind="filter", stages=["ingest", "filter"], storage_options=so)
    for url in (f"{out}/items/a/ingest", f"{out}/items/a/filter"):
        commit(url, {"key": "k", "run": "10"}, storage_options=so)
    commit(f"{out}/items/b/ingest", {"key": "k", "run": "10"}, storage_options=so)
    failure = {"stage": "filter", "error": "killed\nby the  OOM killer", "run": "11"}
    with fsspec.open(f"{out}/items/b/{FAILURE_MARKER}", "w", **so) as f:
        json.dump(failure, f)
    # c has a folder but nothing committed; d has no folder at all
    with fsspec.open(f"{out}/items/c/ingest/zarr.json", "w", **so) as f:
        f.write("{}")


STATUS_STATES = {
    "a": {"ingest": "done", "filter": "done", "status": "done"},
    "b": {"ingest": "done", "filter": "failed", "status": "failed"},
    "c": {"ingest": "pending", "filter": "pending", "status": "pending"},
    "d": {"ingest": "pending", "filter": "pending", "status": "pending"},
}


def test_status_reads_markers_on_s3(s3_options: dict[str, Any]) -> None:
    out = "s3://lab/status/out"
    _status_folder(out, s3_options)
    states = item_states(out, storage_options=s3_options).set_index("item_id")
    assert states[["ingest", "filter", "status"]].to_dict("index") == STATUS_STATES
    assert states.loc["b", "error"] == "killed by the OOM killer"
    assert states["error"].drop("b").isna().all()
    assert counts(states) == {"done": 1, "stale": 0, "failed": 1, "pending": 2}


def test_status_through_an_outage_never_guesses_a_state(
    s3_options: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = "s3://lab/status-outage/out"
    with Endpoint(s3_options["client_kwargs"]["endpoint_url"]) as relay:
        so = relay.options(s3_options)
        _status_folder(out, so)
        # the records' reads fail for a moment: read again, every state is right
        relay.down_at(rb"GET \S*/items/\w/", seconds=1.0)
        states = item_states(out, storage_options=so).set_index("item_id")
        assert relay.outages == 1
        assert states[["ingest", "filter", "status"]].to_dict("index") == STATUS_STATES

        # they keep failing: one line and the storage's exit status, never "pending"
        monkeypatch.setattr(files, "RETRY_SECONDS", 1.0)
        relay.down_at(rb"GET \S*/items/\w/")
        with pytest.raises(StorageError, match=f"^cannot reach the storage reading {out}/items"):
            item_states(out, storage_options=so)
        relay.up()
        relay.down_at(rb"GET \S*/items/\w/")
        assert main(["status", out, "--storage-options", json.dumps(so)]) == 4
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 1 and lines[0].startswith(
            f"neurobatch status: error: cannot reach the storage reading {out}/items"
        ), lines
        relay.up()
        states = item_states(out, storage_options=so).set_index("item_id")
        assert states[["ingest", "filter", "status"]].to_dict("index") == STATUS_STATES


def test_status_of_a_folder_that_no_run_wrote(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", str(tmp_path)]) == 1
    error = capsys.readouterr().err
    assert error.strip().splitlines() == [
        (
            f"neurobatch status: error: {tmp_path} is not a neurobatch output folder: no "
            "manifest.parquet; expected the output.url of a run"
        )
    ]
