"""The resource plot: runs minutes or hours apart each keep their width."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
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

from neurobatch.plots.provenance import _resource_usage

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def _process(name: str, start_s: float, seconds: float) -> DataProcess:
    start = T0 + timedelta(seconds=start_s)
    points = [
        ResourceTimestamped(timestamp=start + timedelta(seconds=s), usage=50.0)
        for s in np.linspace(0.0, seconds, 5)
    ]
    return DataProcess(
        name=name,
        process_type=ProcessName.FILE_FORMAT_CONVERSION,
        stage=ProcessStage.PROCESSING,
        code=Code(url="https://example.org/neurobatch", name=f"neurobatch.{name}", version="1"),
        experimenters=[],
        start_date_time=start,
        end_date_time=start + timedelta(seconds=seconds),
        resources=ResourceUsage(
            os="Linux",
            architecture="x86_64",
            ram=16.0,
            ram_unit=MemoryUnit.GB,
            cpu_usage=points,
            ram_usage=points,
        ),
    )


def _bar_widths(figure: object) -> list[float]:
    lanes = figure.axes[0]  # type: ignore[attr-defined]
    return [bar.get_width() for bars in lanes.containers for bar in bars]


def test_runs_hours_apart_each_keep_their_width() -> None:
    # two runs of 20 s, 3 h apart: on a linear axis each would be 0.2 % of its width
    processing = Processing(
        data_processes=[_process("ingest", 0, 20), _process("ingest_1", 10_800, 20)]
    )
    figure = _resource_usage(processing)
    lanes = figure.axes[0]
    left, right = lanes.get_xlim()
    widths = _bar_widths(figure)
    assert len(widths) == 2
    for width in widths:
        assert width / (right - left) > 0.4
    # the real time is kept in the tick labels and the gap is written over it
    figure.canvas.draw()
    ram = figure.axes[2]
    tick_values = [float(t.get_text()) for t in ram.get_xticklabels() if t.get_text()]
    assert max(tick_values) > 10_000  # seconds since the first start, past the cut gap
    assert "idle gaps cut" in ram.get_xlabel()
    assert any(text.get_text() == "+1.08e+04 s" for text in lanes.texts)


def test_one_continuous_run_is_drawn_linearly() -> None:
    processing = Processing(data_processes=[_process("ingest", 0, 30), _process("trials", 10, 30)])
    figure = _resource_usage(processing)
    lanes = figure.axes[0]
    assert lanes.get_xlim() == (0.0, 40.0)
    assert _bar_widths(figure) == [30.0, 30.0]
    assert not lanes.texts
    assert "idle gaps cut" not in figure.axes[2].get_xlabel()
