"""Reading a run's processing.json back and summarising it, one row per data process."""

from __future__ import annotations

import warnings
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from aind_data_schema.components.identifiers import Code
from aind_data_schema.core.processing import (
    DataProcess,
    Processing,
    ProcessStage,
    ResourceTimestamped,
    ResourceUsage,
)
from aind_data_schema_models.process_names import ProcessName
from aind_data_schema_models.units import MemoryUnit

from neurobatch.engine.provenance_summary import read_processing, summary
from neurobatch.errors import InputError

T0 = datetime(2025, 3, 14, 9, 26, 53, tzinfo=timezone(timedelta(hours=2)))


def _points(offsets: list[float], usage: list[float]) -> list[ResourceTimestamped]:
    return [
        ResourceTimestamped(timestamp=T0 + timedelta(seconds=s), usage=u)
        for s, u in zip(offsets, usage, strict=True)
    ]


def _process(
    name: str,
    process_type: ProcessName,
    *,
    start_s: float,
    end_s: float | None,
    output_parameters: dict[str, Any] | None = None,
    cpu: list[float] | None = None,
    ram: list[float] | None = None,
) -> DataProcess:
    resources = None
    if cpu is not None or ram is not None:
        resources = ResourceUsage(
            os="Linux",
            architecture="x86_64",
            cpu_cores=8,
            system_memory=32.0,
            system_memory_unit=MemoryUnit.GB,
            ram=32.0,
            ram_unit=MemoryUnit.GB,
            cpu_usage=_points([start_s + i for i in range(len(cpu))], cpu) if cpu else None,
            ram_usage=_points([start_s + i for i in range(len(ram))], ram) if ram else None,
        )
    return DataProcess(
        name=name,
        process_type=process_type,
        stage=ProcessStage.ANALYSIS if name.startswith("trials") else ProcessStage.PROCESSING,
        code=Code(url="https://example.org/neurobatch", name=f"neurobatch.{name}", version="1"),
        experimenters=[],
        start_date_time=T0 + timedelta(seconds=start_s),
        end_date_time=None if end_s is None else T0 + timedelta(seconds=end_s),
        output_path="items",
        output_parameters=output_parameters,
        resources=resources,
    )


CPU_INGEST = [12.5, 97.0, 88.25, 40.0]
RAM_INGEST = [30.0, 41.5, 39.0, 35.0]
CPU_TRIALS = [5.0, 7.0]
RAM_TRIALS = [44.0, 43.0]


@pytest.fixture
def processing() -> Processing:
    return Processing(
        data_processes=[
            _process(
                "ingest",
                ProcessName.FILE_FORMAT_CONVERSION,
                start_s=0.0,
                end_s=4.5,
                output_parameters={
                    "items": {"done": 7, "failed": 2, "skipped": 1},
                    "workers": ["tcp://127.0.0.1:40001", "tcp://127.0.0.1:40002"],
                    "failures": {"a": "boom", "b": "bang"},
                },
                cpu=CPU_INGEST,
                ram=RAM_INGEST,
            ),
            _process("preprocess", ProcessName.DF_F_ESTIMATION, start_s=4.5, end_s=10.0, cpu=None),
            _process(
                "trials",
                ProcessName.ANALYSIS,
                start_s=10.0,
                end_s=None,
                output_parameters={
                    "items": {"done": 10},
                    "workers": ["tcp://127.0.0.1:40001"],
                    "n_trials": 240,
                },
                cpu=CPU_TRIALS,
                ram=RAM_TRIALS,
            ),
        ]
    )


def test_summary_has_one_row_per_process_with_independent_statistics(
    processing: Processing,
) -> None:
    table = summary(processing)
    assert list(table.columns) == [
        "name",
        "process_type",
        "start",
        "seconds",
        "items_done",
        "items_failed",
        "items_skipped",
        "n_trials",
        "workers",
        "cpu_mean",
        "cpu_max",
        "ram_max",
        "samples",
    ]
    assert table["name"].tolist() == ["ingest", "preprocess", "trials"]
    assert table["process_type"].tolist() == [
        "File format conversion",
        "dF/F estimation",
        "Analysis",
    ]
    # start: aware timestamps of the same instants
    assert str(table["start"].dt.tz) == "UTC"
    assert table["start"].iloc[0] == pd.Timestamp(T0)
    assert table["start"].iloc[2] == pd.Timestamp(T0 + timedelta(seconds=10))
    np.testing.assert_array_equal(table["seconds"].to_numpy(), [4.5, 5.5, np.nan])
    assert table["items_done"].tolist() == [7, 0, 10]
    assert table["items_failed"].tolist() == [2, 0, 0]
    assert table["items_skipped"].tolist() == [1, 0, 0]
    assert table["n_trials"].dtype == "Int64"
    assert table["n_trials"].isna().tolist() == [True, True, False]
    assert table["n_trials"].iloc[2] == 240
    assert table["workers"].tolist() == [2, 0, 1]
    cpu = [np.array(CPU_INGEST), None, np.array(CPU_TRIALS)]
    ram = [np.array(RAM_INGEST), None, np.array(RAM_TRIALS)]
    expected_mean = [np.nan if c is None else np.mean(c) for c in cpu]
    expected_cpu_max = [np.nan if c is None else np.max(c) for c in cpu]
    expected_ram_max = [np.nan if r is None else np.max(r) for r in ram]
    np.testing.assert_allclose(table["cpu_mean"].to_numpy(), expected_mean, rtol=1e-15)
    np.testing.assert_array_equal(table["cpu_max"].to_numpy(), expected_cpu_max)
    np.testing.assert_array_equal(table["ram_max"].to_numpy(), expected_ram_max)
    assert table["samples"].tolist() == [4, 0, 2]


def test_summary_of_an_empty_record_has_the_columns_and_no_rows() -> None:
    table = summary(Processing(data_processes=[]))
    assert len(table) == 0
    assert "cpu_mean" in table.columns
    assert table["items_done"].dtype == np.int64


def test_summary_counts_samples_when_only_ram_was_sampled() -> None:
    process = _process(
        "combine", ProcessName.ANALYSIS, start_s=0.0, end_s=1.0, cpu=None, ram=[10.0, 20.0]
    )
    row = summary(Processing(data_processes=[process])).iloc[0]
    assert row["samples"] == 0
    assert np.isnan(row["cpu_mean"]) and np.isnan(row["cpu_max"])
    assert row["ram_max"] == 20.0


def test_appended_runs_keep_their_renamed_processes_in_order(processing: Processing) -> None:
    later = timedelta(minutes=5)
    second_run = Processing(
        data_processes=[
            p.model_copy(
                update={
                    "start_date_time": p.start_date_time + later,
                    "end_date_time": None if p.end_date_time is None else p.end_date_time + later,
                }
            )
            for p in processing.data_processes
        ]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "repeated processes ... Renaming"
        merged = processing + second_run
    table = summary(merged)
    assert table["name"].tolist() == [
        "ingest",
        "preprocess",
        "trials",
        "ingest_1",
        "preprocess_1",
        "trials_1",
    ]
    assert table["start"].is_monotonic_increasing
    assert table["start"].iloc[3] - table["start"].iloc[0] == pd.Timedelta(minutes=5)


def test_round_trip_through_a_file(processing: Processing, tmp_path: Path) -> None:
    path = tmp_path / "processing.json"
    path.write_text(processing.model_dump_json(indent=2))
    read = read_processing(str(path))
    assert read is not None
    assert read == Processing.model_validate_json(processing.model_dump_json())
    pd.testing.assert_frame_equal(summary(read), summary(processing))


def test_round_trip_through_memory_filesystem(processing: Processing) -> None:
    import fsspec

    memory = fsspec.filesystem("memory")
    memory.pipe_file("/provenance-test/processing.json", processing.model_dump_json().encode())
    try:
        read = read_processing("memory://provenance-test/processing.json")
        assert read is not None
        assert [p.name for p in read.data_processes] == ["ingest", "preprocess", "trials"]
    finally:
        memory.rm("/provenance-test", recursive=True)


def test_a_missing_file_is_none(tmp_path: Path) -> None:
    assert read_processing(str(tmp_path / "processing.json")) is None
    assert read_processing(str(tmp_path / "no" / "such" / "folder" / "processing.json")) is None


def test_an_invalid_record_is_one_line_naming_the_file_and_the_problem(
    processing: Processing, tmp_path: Path
) -> None:
    path = tmp_path / "processing.json"
    text = processing.model_dump_json(indent=2).replace(
        '"start_date_time": "2025-03-14T09:26:53+02:00"', '"start_date_time": "yesterday"', 1
    )
    assert "yesterday" in text
    path.write_text(text)
    with pytest.raises(InputError, match=r"processing\.json: not a valid processing record") as e:
        read_processing(str(path))
    message = str(e.value)
    assert "\n" not in message
    assert str(path) in message
    assert "data_processes.0.start_date_time" in message


def test_a_file_that_is_not_json_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "processing.json"
    path.write_text("{ not json\n\n")
    with pytest.raises(InputError, match="Invalid JSON") as e:
        read_processing(str(path))
    assert "\n" not in str(e.value)
    assert str(path) in str(e.value)
