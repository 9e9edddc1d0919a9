"""A run's CPU and RAM usage over time, stage by stage, from its ``processing.json`` record."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from neurobatch.plots._common import _DPI, FloatArray, _figure_format, _write_figure

if TYPE_CHECKING:
    from aind_data_schema.core.processing import (
        DataProcess,
        Processing,
    )

__all__ = ["resource_usage"]

logger = logging.getLogger(__name__)

#: Runs longer than this are drawn in minutes rather than seconds.
_MINUTES_AFTER_S = 600.0

#: A process's span: its name, start and end, seconds since the run's start.
_Span = tuple[str, float, float]
#: A process's samples: its name, then CPU times and values, RAM times and values.
_Series = tuple[str, FloatArray, FloatArray, FloatArray, FloatArray]

#: Idle stretches longer than this fraction of the active time are cut ...
_GAP_MIN_FRACTION = 0.1
#: ... to a band this fraction of the active time wide.
_GAP_FRACTION = 0.04


@dataclass(frozen=True)
class _GapAxis:
    """A time axis that cuts the idle gaps between activity down to a narrow band.

    Runs appended to one ``processing.json`` can be hours apart: drawn on a linear axis each
    is a sliver. Every stretch of time with no process running that is longer than
    :data:`_GAP_MIN_FRACTION` of the active time is drawn :data:`_GAP_FRACTION` of the
    active time wide; the rest of the axis is linear. ``knots`` maps real seconds (first
    column) to drawn seconds (second), piecewise linearly.
    """

    knots: FloatArray
    gaps: tuple[tuple[float, float], ...]
    active: float
    total: float

    @classmethod
    def of(cls, spans: Sequence[_Span], series: Sequence[_Series]) -> _GapAxis:
        """The axis of these process spans (and samples, which may run past a span)."""
        intervals = sorted((start, end) for _, start, end in spans)
        for _, cpu_t, _, ram_t, _ in series:
            intervals.extend((float(t), float(t)) for t in (*cpu_t, *ram_t))
        intervals.sort()
        merged: list[list[float]] = []
        for start, end in intervals:
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        total = max(end for _, end in merged) if merged else 0.0
        active = sum(end - start for start, end in merged)
        candidates = [(a[1], b[0]) for a, b in itertools.pairwise(merged)]
        min_gap = max(_GAP_MIN_FRACTION * active, 1e-9)
        gaps = tuple((a, b) for a, b in candidates if b - a > min_gap)
        width = _GAP_FRACTION * active if active > 0 else 1.0
        real, drawn, shift = [0.0], [0.0], 0.0
        for a, b in gaps:
            real += [a, b]
            drawn += [a - shift, a - shift + width]
            shift += (b - a) - width
        real.append(max(total, real[-1]))
        drawn.append(real[-1] - shift)
        return cls(np.column_stack([real, drawn]), gaps, active if gaps else total, total)

    @property
    def width(self) -> float:
        """The drawn length of the whole axis, seconds."""
        return float(self.knots[-1, 1])

    def __call__(self, t: Any) -> Any:
        """Drawn seconds of real seconds ``t`` (a number or an array)."""
        drawn = np.interp(t, self.knots[:, 0], self.knots[:, 1])
        return float(drawn) if np.ndim(drawn) == 0 else drawn

    def real(self, x: float) -> float:
        """Real seconds of drawn seconds ``x``."""
        return float(np.interp(x, self.knots[:, 1], self.knots[:, 0]))

    def mark_gaps(self, axes: Sequence[Axes], scale: float, unit: str) -> None:
        """Hatch each cut gap in ``axes`` and write how long it was over the first."""
        for a, b in self.gaps:
            left, right = self(a) / scale, self(b) / scale
            for ax in axes:
                ax.axvspan(left, right, facecolor="0.92", hatch="//", edgecolor="0.6", lw=0)
            axes[0].text(
                (left + right) / 2,
                1.0,
                f"+{(b - a) / scale:.3g} {unit}",
                transform=axes[0].get_xaxis_transform(),
                ha="center",
                va="bottom",
                fontsize="x-small",
                color="0.3",
            )


def _usage_series(
    processes: Sequence[DataProcess], t0: datetime
) -> tuple[list[_Span], list[_Series]]:
    """Each process's span and sampled CPU and RAM series, in seconds since ``t0``."""

    def seconds(points: Sequence[Any]) -> FloatArray:
        return np.asarray([(p.timestamp - t0).total_seconds() for p in points], dtype=np.float64)

    spans: list[_Span] = []
    series: list[_Series] = []
    for process in processes:
        resources = process.resources
        cpu = list(resources.cpu_usage or []) if resources is not None else []
        ram = list(resources.ram_usage or []) if resources is not None else []
        start = (process.start_date_time - t0).total_seconds()
        last = max([start, *seconds(cpu).tolist(), *seconds(ram).tolist()])
        end = (
            (process.end_date_time - t0).total_seconds()
            if process.end_date_time is not None
            else last
        )
        spans.append((process.name, start, end))
        series.append(
            (
                process.name,
                seconds(cpu),
                np.asarray([p.usage for p in cpu], dtype=np.float64),
                seconds(ram),
                np.asarray([p.usage for p in ram], dtype=np.float64),
            )
        )
    return spans, series


def _usage_figure(n_spans: int) -> tuple[Figure, Axes, Axes, Axes]:
    """The figure with a lane per process on top, then the CPU and RAM panels."""
    fig = Figure(figsize=(12.0, 6.5 + 0.18 * n_spans), dpi=_DPI)
    grid = fig.add_gridspec(
        3,
        1,
        height_ratios=(0.12 * n_spans + 0.3, 1.0, 1.0),
        left=0.09,
        right=0.98,
        bottom=0.09,
        top=0.9,
        hspace=0.12,
    )
    ax_lanes = fig.add_subplot(grid[0, 0])
    ax_cpu = fig.add_subplot(grid[1, 0], sharex=ax_lanes)
    ax_ram = fig.add_subplot(grid[2, 0], sharex=ax_lanes)
    return fig, ax_lanes, ax_cpu, ax_ram


def _draw_lanes(ax_lanes: Axes, shaded: Sequence[Axes], spans: list[_Span], scale: float) -> None:
    """A bar per process span in its lane, and the span lightly shaded in ``shaded``."""
    for i, (_, start, end) in enumerate(spans):
        color = f"C{i % 10}"
        ax_lanes.barh(i, (end - start) / scale, left=start / scale, height=0.7, color=color)
        for ax in shaded:
            ax.axvspan(start / scale, end / scale, color=color, alpha=0.08, linewidth=0)
    ax_lanes.set_yticks(range(len(spans)), [name for name, _, _ in spans], fontsize="small")
    ax_lanes.set_ylim(len(spans) - 0.5, -0.5)
    ax_lanes.tick_params(labelbottom=False, length=0)
    for side in ("top", "right", "bottom"):
        ax_lanes.spines[side].set_visible(False)


def _draw_usage(ax_cpu: Axes, ax_ram: Axes, series: list[_Series], scale: float) -> None:
    """Each process's CPU and RAM samples as points joined by lines, in its colour."""
    for i, (_, cpu_t, cpu_v, ram_t, ram_v) in enumerate(series):
        color = f"C{i % 10}"
        if cpu_t.size:
            ax_cpu.plot(cpu_t / scale, cpu_v, "o-", color=color, markersize=3, linewidth=1.0)
        if ram_t.size:
            ax_ram.plot(ram_t / scale, ram_v, "o-", color=color, markersize=3, linewidth=1.0)
    for ax, label in ((ax_cpu, "CPU (%)"), (ax_ram, "RAM (%)")):
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0.0)
        ax.grid(True, axis="y", color="0.85", linewidth=0.6)
    ax_cpu.tick_params(labelbottom=False)


def resource_usage(
    processing: Processing,
    path: str,
    *,
    storage_options: Mapping[str, Any] | None = None,
    title: str | None = None,
) -> None:
    """Draw a run's CPU and RAM usage over time, stage by stage, and write it as PNG or SVG.

    Two stacked panels share the time axis: CPU % (top) and RAM % (bottom), each data
    process's sampled series (``resources.cpu_usage`` and ``resources.ram_usage``) drawn as
    points joined by lines in the process's colour. Above them a lane per process shows its
    ``[start, end]`` as a bar labelled with its name (the stages of a batch overlap, as
    items are pipelined), and the same span is lightly shaded in the panels. Times are
    relative to the earliest start, in seconds, or in minutes when the processes were
    active for more than 10 minutes. Runs appended to one record may lie hours apart: each
    idle stretch between processes longer than a tenth of the active time is cut to a
    narrow hatched band labelled with its length, and the tick labels give the real time
    since the start, so every run keeps its width. A process with no end time is shaded up
    to its last sample.

    Parameters
    ----------
    processing : Processing
        The run's record, e.g. from
        :func:`neurobatch.engine.provenance_summary.read_processing`.
    path : str
        Where to write the figure, any fsspec URL; the format comes from the extension
        (``.png`` or ``.svg``).
    storage_options : mapping, optional
        Passed to fsspec to open ``path``.
    title : str, optional
        The figure title; by default the number of processes and the run's span.

    Raises
    ------
    ValueError
        If the format cannot be told from ``path``, or ``processing`` has no data process.

    See Also
    --------
    dashboard : the per-item figures.

    Examples
    --------
    >>> from datetime import datetime, timedelta, timezone
    >>> from aind_data_schema.components.identifiers import Code
    >>> from aind_data_schema.core.processing import (
    ...     DataProcess, Processing, ProcessStage, ResourceTimestamped, ResourceUsage)
    >>> from aind_data_schema_models.process_names import ProcessName
    >>> from aind_data_schema_models.units import MemoryUnit
    >>> t0 = datetime(2025, 1, 1, 12, 0, tzinfo=timezone.utc)
    >>> points = [ResourceTimestamped(timestamp=t0 + timedelta(seconds=s), usage=10.0 * s)
    ...           for s in range(6)]
    >>> ingest = DataProcess(
    ...     name="ingest",
    ...     process_type=ProcessName.FILE_FORMAT_CONVERSION,
    ...     stage=ProcessStage.PROCESSING,
    ...     code=Code(url="https://example.org/neurobatch", name="neurobatch.ingest",
    ...               version="0.1.0"),
    ...     experimenters=[],
    ...     start_date_time=t0,
    ...     end_date_time=t0 + timedelta(seconds=5),
    ...     resources=ResourceUsage(os="Linux", architecture="x86_64", ram=16.0,
    ...                             ram_unit=MemoryUnit.GB, cpu_usage=points, ram_usage=points),
    ... )
    >>> resource_usage(Processing(data_processes=[ingest]), "memory://docs/usage.svg")
    >>> import fsspec
    >>> memory = fsspec.filesystem("memory")
    >>> memory.cat_file("/docs/usage.svg")[:5]
    b'<?xml'
    >>> memory.rm("/docs", recursive=True)
    """
    fmt = _figure_format(path)
    fig = _resource_usage(processing, title=title)
    n_bytes = _write_figure(fig, path, fmt, storage_options)
    logger.debug("resource usage %s: wrote %d bytes", path, n_bytes)


def _resource_usage(processing: Processing, *, title: str | None = None) -> Figure:
    """The figure of :func:`resource_usage`, not written."""
    processes = list(processing.data_processes)
    if not processes:
        raise ValueError("the processing record has no data process to draw.")
    t0 = min(p.start_date_time for p in processes)
    spans, series = _usage_series(processes, t0)
    axis = _GapAxis.of(spans, series)
    scale, unit = (60.0, "min") if axis.active > _MINUTES_AFTER_S else (1.0, "s")

    # a lane per process on top (stages of a batch overlap: items are pipelined), and each
    # process's span lightly shaded in its colour under its own CPU and RAM series; idle
    # gaps between runs are cut to a narrow band so that every run keeps its width
    fig, ax_lanes, ax_cpu, ax_ram = _usage_figure(len(spans))
    squeezed = [(name, axis(start), axis(end)) for name, start, end in spans]
    _draw_lanes(ax_lanes, (ax_cpu, ax_ram), squeezed, scale)
    _draw_usage(
        ax_cpu,
        ax_ram,
        [(n, axis(ct), cv, axis(rt), rv) for n, ct, cv, rt, rv in series],
        scale,
    )
    axis.mark_gaps((ax_lanes, ax_cpu, ax_ram), scale, unit)
    ax_ram.xaxis.set_major_formatter(
        FuncFormatter(lambda x, _: f"{axis.real(x * scale) / scale:.4g}")
    )
    cut = " (idle gaps cut)" if axis.gaps else ""
    ax_ram.set_xlabel(f"time since {t0.isoformat(timespec='seconds')} ({unit}){cut}")
    ax_ram.set_xlim(0.0, max(axis.width, 1e-9) / scale)
    if title is None:
        title = (
            f"resource usage: {len(spans)} data process{'es' if len(spans) != 1 else ''} "
            f"over {axis.total / scale:.1f} {unit}"
        )
        if axis.gaps:
            title += f", {axis.active / scale:.1f} {unit} active"
    fig.suptitle(title)
    return fig
