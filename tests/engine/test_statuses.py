"""Each stage of each item of a run: its status live while the run goes, and every run kept."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from distributed import Client

from neurobatch import synthetic
from neurobatch.cli import EXIT_SOME_FAILED, main
from neurobatch.config import load_config
from neurobatch.engine.layout import OutputLayout
from neurobatch.engine.ledger import item_states, read_records
from neurobatch.engine.run import Pipeline
from neurobatch.engine.statuses import live_run, read_record, read_runs, read_tasks

STAGES = ["ingest", "preprocess", "trials"]

#: A post_load hook (applied where preprocess reads the ingested recording) that holds
#: experiment_002 until the file ``go`` exists.
HOLDING_HOOK = '''
import pathlib
import time


def hold(recording):
    """post_load: experiment_002 waits (up to a minute) for {go!r} to exist; it fails at
    once when {go!r} + ".stop" does."""
    if str(recording.attrs.get("source", "")).endswith("experiment_002.csv"):
        deadline = time.monotonic() + 60
        while not pathlib.Path({go!r}).exists() and time.monotonic() < deadline:
            if pathlib.Path({go!r} + ".stop").exists():
                raise RuntimeError("stopped by the test")
            time.sleep(0.02)
    return recording
'''


def _pipeline(tmp_path: Path, data: Path, *, cluster: str, hooks: str = "") -> Path:
    """The demo's photometry pipeline over ``data``, writing to ``tmp_path/out``."""
    text = synthetic.demo_pipeline_file(tmp_path, "photometry").read_text()
    text = text.replace("url: data", f"url: {data}").replace("url: output", "url: out")
    text = text.replace("dashboards: png", "dashboards: null").replace(", h5ad", "")
    lines = [line for line in text.splitlines() if not line.startswith("cluster:")]
    path = tmp_path / "pipeline.yaml"
    path.write_text("\n".join([*lines, f"cluster: {cluster}", hooks]) + "\n")
    return path


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """Three short recordings, the third with a signal column holding text."""
    folder = tmp_path / "data"
    synthetic.write_photometry_batch(folder, n_items=3, duration_s=120.0, fs=20.0, seed=7)
    path = folder / "experiment_003.csv"
    lines = path.read_text().splitlines()
    cells = lines[5].split(",")
    cells[2] = "n/a"
    lines[5] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")
    return folder


def _by_stage(table: pd.DataFrame) -> dict[str, list[str]]:
    """item -> the statuses of its stages, in order."""
    return {
        str(item): rows.set_index("stage").loc[STAGES, "status"].tolist()
        for item, rows in table.groupby("item_id")
    }


def test_statuses_match_the_items_table_the_commits_and_the_spans(
    data: Path, tmp_path: Path, local_client: Client
) -> None:
    pipeline = Pipeline.from_file(_pipeline(tmp_path, data, cluster="{kind: local}"))
    layout = pipeline.layout
    pipeline.run(client=local_client, progress=False)
    [first] = read_runs(layout)["run"]
    tasks = read_tasks(layout, first)
    items = pd.read_parquet(Path(layout.url) / "items.parquet").set_index("item_id")
    failure = items.loc["experiment_003", "error"]
    assert _by_stage(tasks) == {
        "experiment_001": ["done"] * 3,
        "experiment_002": ["done"] * 3,
        "experiment_003": ["errored", "waiting", "waiting"],
    }
    reasons = tasks.set_index(["item_id", "stage"])["reason"]
    assert reasons["experiment_003", "ingest"] == failure
    assert reasons["experiment_003", "trials"] == "not run: ingest errored"
    # done exactly where the ledger has a commit of this run, errored where it failed
    states = item_states(layout.url).set_index("item_id")
    records = read_records(layout, list(items.index), STAGES)
    done = tasks[tasks["status"] == "done"]
    assert {(i, s) for i, s in zip(done["item_id"], done["stage"], strict=True)} == {
        key for key, record in records.items() if record["run"] == first
    }
    assert states.loc["experiment_003", "ingest"] == "failed"
    # start, duration, worker and host: the item's own provenance spans
    spans = json.loads((Path(layout.url) / "run.json").read_text())["items"]
    for outcome in spans:
        for span in outcome["spans"]:
            row = tasks[
                (tasks["item_id"] == outcome["item_id"]) & (tasks["stage"] == span["stage"])
            ]
            assert row["start"].item() == span["start"]
            assert row["seconds"].item() == pytest.approx(span["end"] - span["start"])
            assert row["worker"].item() == span["worker"] in local_client.nthreads()  # type: ignore[no-untyped-call]
            assert row["host"].item() == outcome["host"]["host"]
    record = read_record(layout, first)
    assert record["state"] == "finished" and record["reason"] is None
    assert record["counts"] == {
        "done": 2,
        "skipped": 0,
        "failed": 1,
        "abandoned": 0,
        "unfinished": 0,
    }
    assert record["n_items"] == 3 and record["items"][0]["item_id"] == "experiment_001"

    # a re-run: the done items skipped, the broken one errored again; then one item only
    pipeline.run(client=local_client, progress=False)
    pipeline.run(client=local_client, progress=False, only=["experiment_002"])
    runs = read_runs(layout)
    assert runs["run"].iloc[-1] == first and runs["state"].eq("finished").all()
    only, again = runs["run"].iloc[0], runs["run"].iloc[1]
    assert runs[["done", "skipped", "failed"]].to_numpy().tolist() == [
        [0, 1, 0],
        [0, 2, 1],
        [2, 0, 1],
    ]
    skipped = read_tasks(layout, again)
    assert _by_stage(skipped)["experiment_001"] == ["skipped"] * 3
    reasons = skipped.loc[skipped["item_id"] == "experiment_001", "reason"]
    assert reasons.eq("committed earlier with the same key").all()
    assert _by_stage(read_tasks(layout, only)) == {"experiment_002": ["skipped"] * 3}
    assert read_runs(layout, limit=1)["run"].tolist() == [only]


def _neurobatch(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "neurobatch.cli", *arguments],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _status_rows(printed: str) -> tuple[str, dict[tuple[str, str], str]]:
    """What ``neurobatch status OUT`` printed: its first line, and the status of each
    (item, stage) in its live table (empty when it showed no run live)."""
    lines = printed.splitlines()
    rows = {}
    for line in lines:
        cells = [cell.strip() for cell in line.strip("│┃ ").split("│")]
        if len(cells) >= 3 and cells[0].startswith("experiment_") and cells[1] in STAGES:
            rows[cells[0], cells[1]] = cells[2]
    return lines[0], rows


def _hold(layout: OutputLayout, deadline_s: float = 60.0) -> None:
    """Wait until the live table of the run going on shows experiment_002 held in
    preprocess and the others through."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        record = live_run(layout)
        if record is not None:
            statuses = _by_stage(read_tasks(layout, record["run"]))
            held = statuses["experiment_002"][1] == "started"
            others = statuses["experiment_001"][2], statuses["experiment_003"][0]
            if held and others in (("done", "errored"), ("skipped", "errored")):
                return
        time.sleep(0.1)
    raise AssertionError("never saw experiment_002 held in preprocess")


def test_status_shows_a_run_live_and_history_how_each_run_ended(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    go = tmp_path / "go"
    (tmp_path / "holding.py").write_text(HOLDING_HOOK.format(go=str(go)))
    hooks = f"hooks: {{post_load: '{tmp_path / 'holding.py'}:hold'}}"
    # threads of the driver's own process: a SIGKILL leaves nothing behind
    cluster = "{kind: local, processes: false, n_workers: 1, threads_per_worker: 2}"
    pipeline = _pipeline(tmp_path, data, cluster=cluster, hooks=hooks)
    out = tmp_path / "out"
    layout = OutputLayout(str(out))
    command = [sys.executable, "-m", "neurobatch.cli", "run", str(pipeline)]

    # 1: held, seen live by `neurobatch status` in another process, then killed
    run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _hold(layout)
        printed = _neurobatch("status", str(out))
        assert printed.returncode == 0, printed.stderr
        first, rows = _status_rows(printed.stdout)
        assert " running, started " in first and f"(pid {run.pid})" in first
        assert rows["experiment_002", "ingest"] == "done"
        assert rows["experiment_002", "preprocess"] == "started"
        assert rows["experiment_002", "trials"] == "waiting"
        assert rows["experiment_001", "trials"] == "done"
        assert rows["experiment_003", "ingest"] == "errored"
        run.send_signal(signal.SIGKILL)
    finally:
        run.kill()
        run.wait(timeout=30)
    [killed] = read_runs(layout)["run"]
    assert read_runs(layout)["state"].tolist() == ["killed"]
    assert main(["status", str(out)]) == 0  # no run going: today's view, and the last run
    first, rows = _status_rows(capsys.readouterr().out)
    assert rows == {} and first.endswith("stages ingest, preprocess, trials")

    # 2: held again (the others skipped), then stopped by SIGTERM
    run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _hold(layout)
        run.send_signal(signal.SIGTERM)
        # the held thread cannot be stopped: it fails at once, so the cluster closes at once
        (tmp_path / "go.stop").touch()
        assert run.wait(timeout=60) == 128 + signal.SIGTERM
        (tmp_path / "go.stop").unlink()
    finally:
        run.kill()
    # 3: let go: it finishes
    go.touch()
    assert main(["run", str(pipeline)]) == EXIT_SOME_FAILED  # experiment_003 fails
    capsys.readouterr()

    runs = read_runs(layout)
    assert runs["state"].tolist() == ["finished", "interrupted", "killed"]
    assert runs["run"].iloc[-1] == killed
    assert runs["reason"].iloc[1] == "stopped by SIGTERM"
    assert runs[["done", "skipped", "failed"]].to_numpy().tolist() == [
        [1, 1, 1],
        [0, 1, 1],
        [1, 0, 1],  # killed: as far as its table got
    ]
    assert runs["unfinished"].tolist() == [0, 1, 1]
    interrupted = read_tasks(layout, runs["run"].iloc[1])
    assert _by_stage(interrupted) == {
        "experiment_001": ["skipped"] * 3,
        "experiment_002": ["skipped", "started", "waiting"],
        "experiment_003": ["errored", "waiting", "waiting"],
    }
    finished = _by_stage(read_tasks(layout, runs["run"].iloc[0]))
    assert finished["experiment_002"] == ["skipped", "done", "done"]
    assert main(["history", str(out)]) == 0
    history = capsys.readouterr().out
    for state in ("finished", "interrupted", "killed"):
        assert state in history
    assert main(["history", str(out), runs["run"].iloc[1]]) == 0
    assert f"run {runs['run'].iloc[1]} interrupted" in capsys.readouterr().out
    assert main(["status", str(out)]) == 0
    last = capsys.readouterr().out.splitlines()[1]
    assert last.startswith(f"last run {runs['run'].iloc[0]}: finished")


def test_history_of_a_folder_no_run_wrote(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["history", str(tmp_path)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        (
            f"neurobatch history: error: {tmp_path} is not a neurobatch output folder: no "
            "manifest.parquet; expected the output.url of a run"
        )
    ]
    with pytest.raises(SystemExit) as exited:
        main(["history", str(tmp_path), "--limit", "0"])
    assert exited.value.code == 1
    assert "--limit: expected a positive whole number, got '0'" in capsys.readouterr().err


def test_an_item_abandoned_for_its_timeout(data: Path, tmp_path: Path) -> None:
    """An item held past ``engine.item_timeout_s`` on the driver's threads: abandoned."""
    (tmp_path / "holding.py").write_text(HOLDING_HOOK.format(go=str(tmp_path / "never")))
    hooks = f"hooks: {{post_load: '{tmp_path / 'holding.py'}:hold'}}\nengine: {{item_timeout_s: 2}}"
    cluster = "{kind: local, processes: false, n_workers: 1, threads_per_worker: 2}"
    config = load_config(_pipeline(tmp_path, data, cluster=cluster, hooks=hooks))
    summary = Pipeline(config).run(progress=False)
    layout = OutputLayout(config.output.url)
    [run_id] = read_runs(layout)["run"]
    tasks = read_tasks(layout, run_id)
    [held] = tasks[
        (tasks["item_id"] == "experiment_002") & (tasks["stage"] == "preprocess")
    ].to_dict("records")
    assert held["status"] == "abandoned"
    # the item's 2 s began with its ingest: its preprocess ends when it was given up
    assert 0 < held["seconds"] < 10
    error = str(summary.failures.set_index("item_id").loc["experiment_002", "error"])
    assert held["reason"] == error
    assert "still running after 2 s, in stage preprocess" in error
    assert read_runs(layout)[["done", "failed", "abandoned"]].iloc[0].tolist() == [1, 1, 1]


def test_status_live_on_an_object_store(
    s3_options: dict[str, Any], data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    go = tmp_path / "go"
    (tmp_path / "holding.py").write_text(HOLDING_HOOK.format(go=str(go)))
    hooks = f"hooks: {{post_load: '{tmp_path / 'holding.py'}:hold'}}"
    cluster = "{kind: local, processes: false, n_workers: 1, threads_per_worker: 2}"
    config = load_config(_pipeline(tmp_path, data, cluster=cluster, hooks=hooks))
    out = "s3://lab/statuses/out"
    output = config.output.model_copy(update={"url": out, "storage_options": s3_options})
    pipeline = Pipeline(config.model_copy(update={"output": output}))
    layout = pipeline.layout
    options = json.dumps(s3_options)
    run = threading.Thread(target=lambda: pipeline.run(progress=False))
    run.start()
    try:
        _hold(layout)
        assert main(["status", out, "--storage-options", options]) == 0
        first, rows = _status_rows(capsys.readouterr().out)
        assert " running, started " in first and f"(pid {os.getpid()})" in first
        assert rows["experiment_002", "preprocess"] == "started"
        assert rows["experiment_001", "trials"] == "done"
    finally:
        go.touch()
        run.join(timeout=120)
    assert main(["history", out, "--storage-options", options]) == 0
    printed = capsys.readouterr().out
    assert "finished" in printed and s3_options["secret"] not in printed
    [run_id] = read_runs(layout)["run"]
    assert _by_stage(read_tasks(layout, run_id))["experiment_002"] == ["done"] * 3
