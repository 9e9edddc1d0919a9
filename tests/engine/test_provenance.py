"""processing.json from real runs: valid AIND records with measured resources, appended."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import fsspec
import pandas as pd
import pytest
from aind_data_schema.core.processing import Processing
from distributed import Client

from neurobatch import synthetic
from neurobatch.engine.monitor import ResourceMonitor
from neurobatch.engine.provenance import StageRecord, append_processing, build_processing
from neurobatch.engine.provenance_summary import read_processing
from neurobatch.engine.run import Pipeline, RunError
from neurobatch.redact import REDACTED
from processes import WorkerCPU, dask_processes, wait_for

EVENTS = list(synthetic.EVENT_NAMES)


def _config(data: str, out: Path, **changes: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "name": "provenance-test",
        "experimenters": ["Ada Lovelace"],
        "input": {"url": data, "pattern": "*.csv"},
        "loader": {"format": "photometry-csv", "event_cols": EVENTS, "annotation": "{stem}.json"},
        "preprocess": {"filter": {"cutoff_hz": 3.0, "order": 4}, "fit": "ols"},
        "trials": {"align_to": "trial_cue", "bounds_s": [-4.0, 8.0]},
        "output": {"url": str(out), "formats": ["zarr", "parquet"]},
    }
    return config | changes


def _read(path: Path) -> Processing:
    return Processing.model_validate_json(path.read_text())


@pytest.fixture(scope="module")
def small_batch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("small")
    synthetic.write_photometry_batch(folder, n_items=3, duration_s=300.0, fs=100.0, seed=3)
    return folder


@pytest.fixture(scope="module")
def long_batch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two recordings long enough that the robust fit keeps a worker busy for seconds."""
    folder = tmp_path_factory.mktemp("long")
    synthetic.write_photometry_batch(folder, n_items=2, duration_s=1800.0, fs=1000.0, seed=4)
    return folder


def test_a_run_leaves_a_valid_record_with_measured_resources(
    long_batch: Path, tmp_path: Path, local_client: Client
) -> None:
    out = tmp_path / "out"
    config = _config(str(long_batch), out, preprocess={"fit": {"method": "irls"}})
    before = datetime.now().astimezone()
    with WorkerCPU(local_client) as measured:
        summary = Pipeline(config).run(client=local_client)
    after = datetime.now().astimezone()

    processing = _read(out / "processing.json")  # validates
    assert processing.process_names == ["ingest", "preprocess", "trials", "combine"]
    assert processing.dependency_graph == {
        "ingest": [],
        "preprocess": ["ingest"],
        "trials": ["preprocess"],
        "combine": ["trials"],
    }
    assert [p.name for p in processing.pipelines or []] == ["provenance-test"]
    workers = set(local_client.scheduler_info()["workers"])
    for process in processing.data_processes:
        assert process.experimenters == ["Ada Lovelace"]
        assert process.pipeline_name == "provenance-test"
        assert process.code.parameters is not None
        # the stages' times nest inside the run's
        assert process.end_date_time is not None
        assert before <= process.start_date_time <= process.end_date_time <= after
        wall = (process.end_date_time - process.start_date_time).total_seconds()
        usage = process.resources
        assert usage is not None
        assert usage.cpu_usage is not None and usage.ram_usage is not None
        # at least one sample per second of stage wall time
        assert len(usage.cpu_usage) >= max(1, math.floor(wall)), process.name
        assert len(usage.ram_usage) == len(usage.cpu_usage)
        assert all(0 < u.usage < 100 for u in usage.ram_usage)
        assert usage.system_memory is not None and usage.system_memory > 0
        assert usage.os and usage.architecture
        if wall >= 1:  # a span shorter than the interval takes the first sample after it
            assert all(
                process.start_date_time <= u.timestamp <= process.end_date_time
                for u in usage.cpu_usage
            )
        outputs = process.output_parameters.model_dump()  # type: ignore[union-attr]
        assert outputs["items"] == {"done": 2, "failed": 0, "skipped": 0}
        if process.name != "combine":
            assert set(outputs["workers"]) <= workers
            assert usage.cpu_usage is not None
            assert usage.cpu_cores == len(outputs["workers"])  # one thread per worker
            assert usage.ram == pytest.approx(
                2 * 2**30 / 1e9 * len(outputs["workers"]), abs=1e-3
            )  # GB
    by_name = {p.name: p for p in processing.data_processes}
    # parsing, filtering and fitting are CPU-heavy: a worker ran flat out while the items
    # ran (the stages of a 30 min item are now shorter than a second each: all of them),
    # as far as the machine let it: the busiest sample shows at least most of the share
    # of a core the busiest worker had over the whole run, as the kernel counted it
    busiest = max(
        u.usage
        for name in ("ingest", "preprocess", "trials")
        for u in by_name[name].resources.cpu_usage or []  # type: ignore[union-attr]
    )
    assert max(measured.share.values()) > 0.2
    assert busiest > 60 * max(measured.share.values())
    ingest = by_name["ingest"].code
    assert ingest.input_data is not None
    assert sorted(a.url for a in ingest.input_data) == sorted(
        str(p) for p in long_batch.glob("*.csv")
    )
    combine = by_name["combine"].output_parameters.model_dump()  # type: ignore[union-attr]
    assert combine["n_trials"] == summary.n_trials

    # one record per item beside its outputs, relative paths from there
    items = pd.read_parquet(out / "items.parquet").set_index("item_id")
    for item_id, row in items.iterrows():
        record = _read(out / "items" / str(item_id) / "processing.json")
        assert record.process_names == ["ingest", "preprocess", "trials"]
        assert [str(p.output_path) for p in record.data_processes] == [
            "ingest",
            "preprocess",
            "trials",
        ]
        for process in record.data_processes:
            assert (out / "items" / str(item_id) / str(process.output_path)).is_dir()
            assert process.resources is not None and process.resources.cpu_cores == 1
        fit = record.data_processes[1].output_parameters.model_dump()["fit"]  # type: ignore[union-attr]
        assert fit["slope"] == pytest.approx(row["fit_slope"])
        assert (
            record.data_processes[2].output_parameters.model_dump()["n_trials"] == row["n_trials"]
        )  # type: ignore[union-attr]


def test_a_later_run_appends_and_leaves_earlier_entries_alone(
    small_batch: Path, tmp_path: Path, local_client: Client
) -> None:
    out = tmp_path / "out"
    Pipeline(_config(str(small_batch), out)).run(client=local_client)
    first = _read(out / "processing.json")
    item = min((out / "items").iterdir())
    first_item = _read(item / "processing.json")

    # other trial settings: only trials (and the combined outputs) run again
    changed = _config(str(small_batch), out, trials={"align_to": "trial_cue", "bounds_s": [-2, 4]})
    Pipeline(changed).run(client=local_client)
    second = _read(out / "processing.json")
    assert second.process_names == [*first.process_names, "trials_1", "combine_1"]
    assert len(set(second.process_names)) == len(second.process_names)
    assert second.data_processes[:4] == first.data_processes
    graph = second.dependency_graph or {}
    assert graph["trials_1"] == ["preprocess"]  # it read the first run's preprocessed signal
    assert graph["combine_1"] == ["trials_1"]
    assert {k: graph[k] for k in first.process_names} == first.dependency_graph
    trials_1 = second.data_processes[4].output_parameters.model_dump()  # type: ignore[union-attr]
    assert trials_1["items"] == {"done": 3, "failed": 0, "skipped": 0}
    assert second.data_processes[4].code.parameters.model_dump()["trials"]["bounds_s"] == [-2, 4]  # type: ignore[union-attr]
    item_record = _read(item / "processing.json")
    assert item_record.process_names == ["ingest", "preprocess", "trials", "trials_1"]
    assert item_record.data_processes[:3] == first_item.data_processes

    # nothing changed: items are skipped, only the combined outputs are rebuilt
    Pipeline(changed).run(client=local_client)
    third = _read(out / "processing.json")
    assert third.process_names[-1] == "combine_2"
    assert (third.dependency_graph or {})["combine_2"] == ["trials_1"]
    assert _read(item / "processing.json") == item_record

    # everything again: every stage renamed, each linked to its own run's upstream
    Pipeline(changed).run(client=local_client, reprocess=True)
    fourth = _read(out / "processing.json")
    assert fourth.process_names[-4:] == ["ingest_1", "preprocess_1", "trials_2", "combine_3"]
    graph = fourth.dependency_graph or {}
    assert graph["ingest_1"] == []
    assert graph["preprocess_1"] == ["ingest_1"]
    assert graph["trials_2"] == ["preprocess_1"]


def test_a_failed_run_still_leaves_its_record(tmp_path: Path, local_client: Client) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "broken.csv").write_text("time,signal\n0,1\n")
    with pytest.raises(RunError):
        Pipeline(_config(str(data), tmp_path / "out")).run(client=local_client)
    processing = _read(tmp_path / "out" / "processing.json")
    ingest = processing.data_processes[0]
    assert ingest.name == "ingest"
    outputs = ingest.output_parameters.model_dump()  # type: ignore[union-attr]
    assert outputs["items"] == {"done": 0, "failed": 1, "skipped": 0}
    assert "broken" in outputs["failures"]


@pytest.fixture
def preloaded_cluster(tmp_path: Path) -> Iterator[str]:
    """``dask scheduler --preload neurobatch.engine.monitor`` and two ``dask worker``s."""
    with dask_processes(
        tmp_path, scheduler_arguments=["--preload", "neurobatch.engine.monitor"]
    ) as cluster:
        yield str(cluster.scheduler_file)


def test_a_scheduler_started_by_hand_with_the_preload(
    small_batch: Path, tmp_path: Path, preloaded_cluster: str
) -> None:
    with Client(scheduler_file=preloaded_cluster, set_as_default=False) as client:
        client.wait_for_workers(2, timeout=60)
        # the preload registered the monitor before any client did (its errors are only
        # logged by the scheduler, so look)
        registered = client.run_on_scheduler(
            lambda dask_scheduler: type(dask_scheduler.plugins[ResourceMonitor.name]).__name__
        )
        assert registered == "ResourceMonitor"
        workers = set(client.scheduler_info()["workers"])
        Pipeline(_config(str(small_batch), tmp_path / "out")).run(client=client)
    processing = _read(tmp_path / "out" / "processing.json")
    ingest = processing.data_processes[0]
    outputs = ingest.output_parameters.model_dump()  # type: ignore[union-attr]
    assert set(outputs["workers"]) == workers
    assert ingest.resources is not None and ingest.resources.cpu_cores == 2
    assert ingest.resources.ram == pytest.approx(2 * 2**30 / 1e9, abs=1e-3)  # two 1 GiB workers
    per_item = {
        _read(path).data_processes[0].output_parameters.model_dump()["workers"][0]  # type: ignore[union-attr]
        for path in (tmp_path / "out" / "items").glob("*/processing.json")
    }
    assert per_item == workers  # samples from both workers made it into the records


def test_no_credential_is_written_anywhere(
    small_batch: Path, tmp_path: Path, local_client: Client, s3_options: dict[str, Any]
) -> None:
    fs = fsspec.filesystem("s3", **s3_options)
    for path in small_batch.iterdir():
        fs.put_file(str(path), f"lab/secret-test/{path.name}")
    config = _config("s3://lab/secret-test", tmp_path / "out")
    config["input"]["storage_options"] = s3_options
    Pipeline(config).run(client=local_client)

    # a hook whose error message quotes the key: still not written
    key = s3_options["key"]

    def leaky(ds: Any) -> Any:
        raise ValueError(f"cannot reach the bucket with key {key}")

    with pytest.raises(RunError):
        Pipeline(config).run(client=local_client, hooks={"post_trials": leaky}, reprocess=True)

    secrets = [s3_options["key"].encode(), s3_options["secret"].encode()]
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert len(files) > 20
    for path in files:
        content = path.read_bytes()
        assert not any(secret in content for secret in secrets), path
    processing = _read(tmp_path / "out" / "processing.json")
    parameters = processing.pipelines[0].parameters.model_dump()  # type: ignore[index, union-attr]
    assert parameters["input"]["storage_options"]["key"] == REDACTED
    assert parameters["input"]["storage_options"]["secret"] == REDACTED
    assert "with key ***" in (tmp_path / "out" / "logs" / "run.log").read_text()


#: An Azure connection string, as ``adlfs`` takes it in ``storage_options``.
AZURE_KEY = "c2VjcmV0LWF6dXJlLWtleQ=="
CONNECTION_STRING = (
    f"DefaultEndpointsProtocol=https;AccountName=lab;AccountKey={AZURE_KEY};"
    "EndpointSuffix=core.windows.net"
)


def test_credentials_are_hidden_by_value_wherever_they_appear(
    small_batch: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection string, a credential from the environment, one quoted in an error."""
    environment_secret = "wJalrXUtnFEMI-environment"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", environment_secret)
    config = _config(str(small_batch), tmp_path / "out")
    # local files ignore the option; its value must still not be written
    config["input"]["storage_options"] = {"connection_string": CONNECTION_STRING}

    def leaky(ds: Any) -> Any:
        raise ValueError(f"denied: {environment_secret} / AccountKey={AZURE_KEY}")

    Pipeline(config).run(progress=False)  # the default cluster: in this process
    with pytest.raises(RunError):
        Pipeline(config).run(progress=False, hooks={"post_trials": leaky}, reprocess=True)

    secrets = [environment_secret.encode(), AZURE_KEY.encode()]
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert len(files) > 20
    for path in files:
        content = path.read_bytes()
        assert not any(secret in content for secret in secrets), path
    assert "denied: *** / AccountKey=***" in (tmp_path / "out" / "logs" / "run.log").read_text()
    processing = _read(tmp_path / "out" / "processing.json")
    parameters = processing.pipelines[0].parameters.model_dump()  # type: ignore[index, union-attr]
    assert parameters["input"]["storage_options"]["connection_string"] == REDACTED


def test_a_job_prologue_export_is_not_written(tmp_path: Path) -> None:
    """What the README advises for SLURM/PBS credentials stays out of processing.json."""
    config = _config("s3://lab/data", tmp_path / "out")
    config["cluster"] = {
        "kind": "slurm",
        "job_script_prologue": [
            "module load python",
            "export AWS_ACCESS_KEY_ID=AKIAPROLOGUEKEY",
            "export AWS_SECRET_ACCESS_KEY='prologue/secret+value'",
        ],
    }
    parameters = Pipeline(config).config.model_dump(mode="json")
    now = time.time()
    record = StageRecord("ingest", now, now + 1, [], {"cluster": parameters["cluster"]}, "items")
    url = str(tmp_path / "processing.json")
    processing = build_processing(
        [record],
        pipeline_name="p",
        pipeline_parameters=parameters,
        samples=pd.DataFrame(),
        hosts={},
        notes="the key was 'prologue/secret+value'",
    )
    append_processing(url, processing)
    text = Path(url).read_text()
    assert "AKIAPROLOGUEKEY" not in text and "prologue/secret+value" not in text
    stored = _read(Path(url))
    prologue = stored.pipelines[0].parameters.model_dump()["cluster"]["job_script_prologue"]  # type: ignore[index, union-attr]
    assert prologue == [
        "module load python",
        "export AWS_ACCESS_KEY_ID=***",
        "export AWS_SECRET_ACCESS_KEY=***",
    ]
    assert stored.notes == "the key was '***'"


def test_a_damaged_record_is_moved_aside_and_a_new_one_started(
    small_batch: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    config = _config(str(small_batch), out)
    Pipeline(config).run(progress=False)
    damaged = (out / "processing.json").read_text()[:-200]  # cut short
    (out / "processing.json").write_text(damaged)
    with caplog.at_level("WARNING", logger="neurobatch"):
        Pipeline(config).run(progress=False, reprocess=True)
    [aside] = out.glob("processing.json.damaged-*")
    assert aside.read_text() == damaged
    [warning] = [r.getMessage() for r in caplog.records if "moved it to" in r.getMessage()]
    assert str(out / "processing.json") in warning and str(aside) in warning
    record = _read(out / "processing.json")  # valid: this run's processes only
    assert [p.name for p in record.data_processes] == ["ingest", "preprocess", "trials", "combine"]


def test_a_terminated_run_records_what_it_did(small_batch: Path, tmp_path: Path) -> None:
    """SIGTERM (a batch system's time limit) ends the run through its cleanups."""
    hook = tmp_path / "slow.py"
    hook.write_text("import time\n\ndef post_trials(ds):\n    time.sleep(600)\n")
    config = _config(str(small_batch), tmp_path / "out")
    config["hooks"] = {"post_trials": f"{hook}:post_trials"}
    config["cluster"] = {"n_workers": 1, "memory_limit": "1GiB"}
    pipeline_file = tmp_path / "pipeline.yaml"  # JSON is YAML
    pipeline_file.write_text(json.dumps(config))
    command = [sys.executable, "-m", "neurobatch.cli", "run", str(pipeline_file)]
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        # wait until an item is inside its (endless) trials stage
        wait_for(tmp_path / "out" / "items" / "experiment_001" / "preprocess", 120)
        time.sleep(1.0)
        run.send_signal(signal.SIGTERM)
        status = run.wait(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
    assert status == 128 + signal.SIGTERM
    processing = _read(tmp_path / "out" / "processing.json")
    assert processing.notes is not None
    assert processing.notes.startswith("run interrupted (SystemExit: 143) after 0 of 3 item(s)")
    assert processing.process_names == ["combine"]


UPSTREAM = {"ingest": [], "preprocess": ["ingest"]}


def test_records_append_atomically_on_object_storage(s3_options: dict[str, Any]) -> None:
    url = "s3://lab/provenance-test/processing.json"

    def run(*stages: str) -> Processing:
        now = time.time()
        records = [
            StageRecord(s, now, now + 1, [], {"stage": s}, "items", upstream=UPSTREAM[s])
            for s in stages
        ]
        return build_processing(
            records,
            pipeline_name="s3",
            pipeline_parameters={"input": {"storage_options": s3_options}},
            samples=pd.DataFrame(),
            hosts={},
            experimenters=["Ada Lovelace"],
        )

    first = append_processing(
        url, run("ingest", "preprocess"), upstream=UPSTREAM, storage_options=s3_options
    )
    second = append_processing(
        url, run("preprocess"), upstream=UPSTREAM, storage_options=s3_options
    )
    stored = read_processing(url, storage_options=s3_options)
    assert stored == second
    assert stored is not None and stored.process_names == ["ingest", "preprocess", "preprocess_1"]
    assert stored.data_processes[:2] == first.data_processes
    assert (stored.dependency_graph or {})["preprocess_1"] == ["ingest"]
    fs = fsspec.filesystem("s3", **s3_options)
    assert fs.ls("lab/provenance-test") == ["lab/provenance-test/processing.json"]  # no leftovers
    assert s3_options["secret"].encode() not in fs.cat_file("lab/provenance-test/processing.json")
