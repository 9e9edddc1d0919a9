"""``neurobatch provenance OUT``: the summary table, the resource plot, a missing record."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import matplotlib.image
import numpy as np
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

from neurobatch.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
T0 = datetime(2025, 3, 14, 9, 26, 53, tzinfo=UTC)


def _process(
    name: str, process_type: ProcessName, start_s: float, end_s: float, n_trials: int | None = None
) -> DataProcess:
    offsets = np.linspace(start_s, end_s, 12, endpoint=False)
    cpu = 50.0 + 40.0 * np.sin(offsets)
    ram = 30.0 + offsets
    return DataProcess(
        name=name,
        process_type=process_type,
        stage=ProcessStage.PROCESSING,
        code=Code(url="https://example.org/neurobatch", name=f"neurobatch.{name}", version="1"),
        experimenters=[],
        start_date_time=T0 + timedelta(seconds=start_s),
        end_date_time=T0 + timedelta(seconds=end_s),
        output_parameters={
            "items": {"done": 3, "failed": 1, "skipped": 0},
            "workers": ["tcp://127.0.0.1:40001", "tcp://127.0.0.1:40002"],
            **({} if n_trials is None else {"n_trials": n_trials}),
        },
        resources=ResourceUsage(
            os="Linux",
            architecture="x86_64",
            ram=16.0,
            ram_unit=MemoryUnit.GB,
            cpu_usage=[
                ResourceTimestamped(timestamp=T0 + timedelta(seconds=float(s)), usage=float(u))
                for s, u in zip(offsets, cpu, strict=True)
            ],
            ram_usage=[
                ResourceTimestamped(timestamp=T0 + timedelta(seconds=float(s)), usage=float(u))
                for s, u in zip(offsets, ram, strict=True)
            ],
        ),
    )


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """An output folder with a processing.json of three stages."""
    processing = Processing(
        data_processes=[
            _process("ingest", ProcessName.FILE_FORMAT_CONVERSION, 0.0, 6.0),
            _process("preprocess", ProcessName.DF_F_ESTIMATION, 6.0, 9.0),
            _process("trials", ProcessName.ANALYSIS, 9.0, 15.0, n_trials=240),
        ]
    )
    (tmp_path / "processing.json").write_text(processing.model_dump_json(indent=2))
    return tmp_path


def _assert_real_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    # not a blank canvas: drawn lines and shading give many distinct colours
    assert np.unique(image.reshape(-1, image.shape[2]), axis=0).shape[0] > 10


def test_prints_one_row_per_stage(out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["provenance", str(out)]) == 0
    captured = capsys.readouterr()
    for name in ("ingest", "preprocess", "trials"):
        assert name in captured.out
    assert "3 data process(es)" in captured.out
    assert "CPU mean %" in captured.out
    assert "6.0 s" in captured.out  # ingest's duration
    assert "240" in captured.out  # the trials stage's n_trials
    assert "None" not in captured.out and "<NA>" not in captured.out
    assert captured.err == ""
    assert not (out / "processing.png").exists()


def test_plot_writes_a_png_to_the_default_path(
    out: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["provenance", str(out), "--plot"]) == 0
    path = out / "processing.png"
    assert str(path) in capsys.readouterr().out
    _assert_real_png(path)


def test_plot_writes_to_the_given_path(
    out: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "figures" / "usage.png"
    assert main(["provenance", str(out), "--plot", str(path)]) == 0
    assert f"resource usage plot: {path}" in capsys.readouterr().out
    _assert_real_png(path)
    svg = tmp_path / "figures" / "usage.svg"
    assert main(["provenance", str(out), "--plot", str(svg)]) == 0
    assert svg.read_bytes().startswith(b"<?xml")
    assert b"preprocess" in svg.read_bytes()


def test_a_plot_path_of_unknown_format_is_one_line(
    out: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["provenance", str(out), "--plot", str(out / "usage.jpeg")]) == 1
    err = capsys.readouterr().err
    assert "neurobatch provenance: error: cannot tell the figure format" in err
    assert len(err.strip().splitlines()) == 1


def test_a_missing_record_is_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["provenance", str(tmp_path / "nothing")]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err
    assert f"{tmp_path / 'nothing' / 'processing.json'}" in err
    assert err.startswith("neurobatch provenance: error: no processing record at ")
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_an_invalid_record_is_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "processing.json").write_text('{"data_processes": [{"name": "x"}]}')
    assert main(["provenance", str(tmp_path)]) == 1
    warning, error = capsys.readouterr().err.strip().splitlines()
    assert "not a valid processing record" in warning and "read 0 of the 1" in warning
    assert error.startswith("neurobatch provenance: error: no readable processing record")


def test_a_long_run_is_drawn_in_minutes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    processing = Processing(
        data_processes=[
            _process("ingest", ProcessName.FILE_FORMAT_CONVERSION, 0.0, 1200.0),
            _process("trials", ProcessName.ANALYSIS, 1200.0, 1500.0, n_trials=12),
        ]
    )
    (tmp_path / "processing.json").write_text(processing.model_dump_json())
    svg = tmp_path / "usage.svg"
    assert main(["provenance", str(tmp_path), "--plot", str(svg)]) == 0
    assert "20:00.0" in capsys.readouterr().out  # ingest's duration, minutes:seconds
    text = svg.read_text()
    assert "(min)" in text and "over 25.0 min" in text


def test_a_damaged_record_is_read_as_far_as_it_goes(
    out: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A record cut short inside its third process (a full disk, a killed copy)."""
    text = (out / "processing.json").read_text()
    (out / "processing.json").write_text(text[: text.index('"name": "trials"')])
    assert main(["provenance", str(out)]) == 0
    printed = capsys.readouterr()
    assert "2 data process(es)" in printed.out
    assert "│ ingest" in printed.out and "│ preprocess" in printed.out
    assert "│ trials" not in printed.out
    [warning] = printed.err.splitlines()
    assert str(out / "processing.json") in warning
    assert "read 2 of the 2 data process(es)" in warning


def test_a_record_moved_aside_by_a_run_is_still_read(
    out: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (out / "processing.json").read_text()
    aside = out / "processing.json.damaged-20260101T000000000000Z"
    aside.write_text(text.replace('"stage": "Processing"', '"stage": 12', 1))
    later = Processing(data_processes=[_process("trials", ProcessName.ANALYSIS, 99.0, 100.0)])
    (out / "processing.json").write_text(later.model_dump_json())
    assert main(["provenance", str(out)]) == 0
    printed = capsys.readouterr()
    # the first process of the old record is damaged; its other two, and the new one, are read
    assert "3 data process(es)" in printed.out
    [warning] = printed.err.splitlines()
    assert aside.name in warning and "read 2 of the 3" in warning


def test_nothing_readable_is_one_line(out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (out / "processing.json").write_bytes(b"\x00\xff not json")
    assert main(["provenance", str(out)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2  # what was damaged, then why nothing can be shown
    assert err[-1].startswith("neurobatch provenance: error: no readable processing record")
