"""A few channels of a recording before and after filtering (:func:`trace_snippet`)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from neurobatch.errors import InputError
from neurobatch.plots._common import (
    _DPI,
    FloatArray,
    _figure_format,
    _labels,
    _write_figure,
    envelope,
)

__all__ = ["trace_snippet"]

logger = logging.getLogger(__name__)


def _traces(data: xr.Dataset | xr.DataArray, name: str) -> tuple[xr.DataArray, dict[str, Any]]:
    """``traces(time, channel)`` of a Recording (or the array itself) and the attrs to scale it."""
    if isinstance(data, xr.Dataset):
        if "traces" not in data.data_vars:
            raise InputError(
                f"trace_snippet: {name} has no variable 'traces' (it has "
                f"{sorted(map(str, data.data_vars))}); expected traces(time, channel)."
            )
        array = data["traces"]
        attrs = {**data.attrs, **array.attrs}
    elif isinstance(data, xr.DataArray):
        array, attrs = data, dict(data.attrs)
    else:
        raise TypeError(
            f"trace_snippet: {name} must be an xarray Dataset or DataArray, got "
            f"{type(data).__name__}."
        )
    if array.dims != ("time", "channel"):
        raise InputError(
            f"trace_snippet: {name} traces have dimensions {array.dims}; expected (time, channel)."
        )
    if "time" not in array.coords:
        raise InputError(f"trace_snippet: {name} traces have no 'time' coordinate (seconds).")
    return array, attrs


_MICROVOLTS = ("uV", "µV", "μV", "microvolt", "microvolts")


def _microvolts(values: FloatArray, attrs: Mapping[str, Any]) -> tuple[FloatArray, str]:
    """Scale raw counts to µV by ``gain_uv`` unless the values say they are µV already."""
    if str(attrs.get("units", "")) in _MICROVOLTS:
        return values, "µV"
    gain = attrs.get("gain_uv")
    if isinstance(gain, int | float | np.number) and not isinstance(gain, bool) and gain > 0:
        return values * float(gain), "µV"
    return values, "a.u."


def _snippet_panel(
    ax: Axes,
    time: FloatArray,
    values: FloatArray,
    labels: Sequence[Any],
    *,
    unit: str,
    color: str,
    n_bins: int,
    heading: str,
) -> None:
    """Draw channels offset vertically, the first on top, each around its median."""
    centred = values - np.nanmedian(values, axis=0) if values.size else values
    spread = (
        np.nanpercentile(centred, 99.9, axis=0) - np.nanpercentile(centred, 0.1, axis=0)
        if centred.shape[0]
        else np.zeros(centred.shape[1])
    )
    spacing = float(np.nanmax(spread)) * 1.1 if spread.size and np.nanmax(spread) > 0 else 1.0
    offsets = spacing * np.arange(len(labels) - 1, -1, -1, dtype=np.float64)
    for i in range(len(labels)):
        t, lo, hi = envelope(time, centred[:, i], n_bins)
        if t.size == time.size:
            ax.plot(t, lo + offsets[i], color=color, linewidth=0.6)
        else:
            ax.fill_between(t, lo + offsets[i], hi + offsets[i], color=color, linewidth=0.5)
    ax.set_yticks(offsets, [str(label) for label in labels])
    ax.set_ylim(offsets.min() - spacing, offsets.max() + spacing)
    if time.size > 1:
        ax.set_xlim(float(time[0]), float(time[-1]))
    ax.set_xlabel("time (s)")
    ax.set_title(f"{heading} (spacing {spacing:.3g} {unit})", loc="left", fontsize="medium")


def trace_snippet(
    raw: xr.Dataset | xr.DataArray,
    filtered: xr.Dataset | xr.DataArray,
    path: str,
    *,
    channels: Sequence[Any] | None = None,
    seconds: tuple[float, float] | None = None,
    max_points: int = 4000,
    title: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> None:
    """Draw a few channels of a recording before and after filtering, side by side.

    Left the raw traces, right the filtered ones, over the same time window: each channel
    around its median, offset vertically (the first channel on top, labelled with its
    channel coordinate) by a spacing that keeps neighbours apart (1.1 times the largest
    0.1-99.9 percentile range of the panel), written in the panel's title. Values are shown
    in µV: an input whose ``units`` attribute says µV is drawn as is; otherwise an input
    with a ``gain_uv`` attribute (µV per bit, as a raw Recording has) is multiplied by it;
    otherwise the values are drawn unscaled ("a.u."). Only the window and the channels drawn
    are read from a lazy (Dask-backed) recording; a window longer than ``max_points / 2``
    samples is drawn as min/max bands (:func:`envelope`), so spikes stay visible.

    Parameters
    ----------
    raw, filtered : xarray.Dataset or xarray.DataArray
        Recordings with ``traces(time, channel)`` (or those arrays), ``time`` in seconds.
    path : str
        Where to write, a path or any fsspec URL; ``.png`` or ``.svg``.
    channels : sequence, optional
        Labels (values of the ``channel`` coordinate, else positions) of the channels to
        draw; by default 8 channels evenly spaced over the recording (all when fewer).
    seconds : (float, float), optional
        The window ``(start, stop)`` in seconds on the ``time`` coordinate (both ends
        included); by default the first 0.2 s of ``raw``.
    max_points : int, default 4000
        Points per trace after decimation, at least 4.
    title : str, optional
        The figure title; by default the window and the number of channels.
    storage_options : mapping, optional
        Passed to fsspec to open ``path``.

    Raises
    ------
    InputError
        If an input lacks ``traces(time, channel)`` or its ``time`` coordinate, a channel is
        not in an input, or the window holds no sample of an input.
    ValueError
        If the format cannot be told from ``path``, ``seconds`` is not ``(start, stop)``
        with ``start < stop``, or ``max_points < 4``.
    TypeError
        If an input is not an xarray object.

    See Also
    --------
    envelope : the decimation.

    Examples
    --------
    >>> from neurobatch.synthetic import ephys_recording
    >>> import scipy.signal
    >>> recording, _ = ephys_recording(n_channels=8, duration_s=0.5, fs=10_000.0)
    >>> sos = scipy.signal.butter(3, 300.0, "highpass", fs=10_000.0, output="sos")
    >>> filtered = recording.traces.copy(
    ...     data=scipy.signal.sosfiltfilt(sos, recording.traces.values * 2.34375, axis=0)
    ... ).assign_attrs(units="uV")
    >>> trace_snippet(recording, filtered, "memory://docs/snippet.png", seconds=(0.1, 0.2))
    >>> import fsspec
    >>> fsspec.filesystem("memory").cat_file("/docs/snippet.png")[:4]
    b'\\x89PNG'
    """
    fmt = _figure_format(path)
    fig = _trace_snippet(
        raw, filtered, channels=channels, seconds=seconds, max_points=max_points, title=title
    )
    n_bytes = _write_figure(fig, path, fmt, storage_options)
    logger.debug("trace snippet %s: %d bytes", path, n_bytes)


def _trace_snippet(
    raw: xr.Dataset | xr.DataArray,
    filtered: xr.Dataset | xr.DataArray,
    *,
    channels: Sequence[Any] | None = None,
    seconds: tuple[float, float] | None = None,
    max_points: int = 4000,
    title: str | None = None,
) -> Figure:
    """The figure of :func:`trace_snippet`, not written."""
    if isinstance(max_points, bool) or not isinstance(max_points, int | np.integer):
        raise TypeError(f"trace_snippet: max_points must be an int, got {max_points!r}.")
    if max_points < 4:
        raise ValueError(f"trace_snippet: max_points must be at least 4, got {max_points}.")
    raw_traces, raw_attrs = _traces(raw, "raw")
    filtered_traces, filtered_attrs = _traces(filtered, "filtered")
    if seconds is None:
        start = float(raw_traces["time"].values[0]) if raw_traces.sizes["time"] else 0.0
        seconds = (start, start + 0.2)
    if len(seconds) != 2 or not float(seconds[0]) < float(seconds[1]):
        raise ValueError(
            f"trace_snippet: seconds must be (start, stop) with start < stop, got {seconds!r}."
        )
    t0, t1 = float(seconds[0]), float(seconds[1])
    labels = _labels(raw_traces, "channel")
    if channels is None:
        picks = np.unique(np.linspace(0, labels.size - 1, min(8, labels.size)).round())
        chosen = [labels[int(i)] for i in picks.astype(np.int64)]
    else:
        chosen = list(channels)
    panels = []
    for name, traces, attrs in (
        ("raw", raw_traces, raw_attrs),
        ("filtered", filtered_traces, filtered_attrs),
    ):
        own = _labels(traces, "channel").tolist()
        positions = {label: i for i, label in enumerate(own)}
        missing = [c for c in chosen if c not in positions]
        if missing:
            raise InputError(
                f"trace_snippet: channels {missing} are not in {name}; it has "
                f"{len(own)} channels {own[:5]}{' ...' if len(own) > 5 else ''}."
            )
        window = traces.isel(channel=[positions[c] for c in chosen]).sel(time=slice(t0, t1))
        if window.sizes["time"] == 0:
            times = traces["time"].values
            span = f"{times[0]:.6g}-{times[-1]:.6g} s" if times.size else "no samples"
            raise InputError(
                f"trace_snippet: seconds=({t0}, {t1}) selects no sample of {name} "
                f"(its time spans {span})."
            )
        values, unit = _microvolts(np.asarray(window.values, dtype=np.float64), attrs)
        panels.append((name, np.asarray(window["time"].values, dtype=np.float64), values, unit))

    fig = Figure(figsize=(13.0, 1.2 + 0.55 * max(len(chosen), 4)), dpi=_DPI)
    axes = fig.subplots(1, 2, squeeze=False)[0]
    for ax, (name, time, values, unit), color in zip(
        axes, panels, ("black", "tab:blue"), strict=True
    ):
        _snippet_panel(
            ax,
            time,
            values,
            chosen,
            unit=unit,
            color=color,
            n_bins=max(2, int(max_points) // 2),
            heading=name,
        )
    axes[0].set_ylabel("channel")
    if title is None:
        title = f"{len(chosen)} channels, {t0:.4g}-{t1:.4g} s: raw and filtered"
    fig.suptitle(title)
    height = fig.get_figheight()
    fig.subplots_adjust(
        left=0.07, right=0.98, bottom=0.6 / height, top=1.0 - 0.75 / height, wspace=0.15
    )
    logger.debug("trace snippet: %d channels", len(chosen))
    return fig
