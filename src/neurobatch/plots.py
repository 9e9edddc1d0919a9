"""Per-item dashboards of a photometry recording, cheap enough to draw for every item.

- :func:`dashboard`: one figure per item (raw channels with the fitted reference, the
  processed variable with event markers, a trial heatmap, mean ± SEM per trial type),
  written as SVG or PNG to any fsspec URL.
- :func:`envelope`: the min/max envelope decimation behind it, so that a 1-hour 1 kHz
  recording is drawn from a few thousand points while spikes and artefacts stay visible.
- :func:`resource_usage`: a run's CPU and RAM usage over time, stage by stage, from its
  ``processing.json`` record.
- :func:`sta_grid` and :func:`strf`: per-unit spike-triggered averages, lag by lag, and the
  collapsed STRF of each unit.
- :func:`trace_snippet`: a few channels of a recording before and after filtering.

Figures are built on :class:`matplotlib.figure.Figure` directly (no ``pyplot`` global
state), so dashboards can be drawn concurrently on the threads of a Dask worker. Inputs may
be NumPy- or Dask-backed; lazy inputs are reduced block by block in a single
``dask.compute`` call, never loaded at full resolution.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any, Literal

import fsspec
import numpy as np
import numpy.typing as npt
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from neurobatch.errors import InputError

if TYPE_CHECKING:
    from aind_data_schema.core.processing import (
        Processing,
    )

__all__ = ["dashboard", "envelope", "resource_usage", "sta_grid", "strf", "trace_snippet"]

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
DashboardFormat = Literal["svg", "png"]

_FORMATS: tuple[str, ...] = ("svg", "png")
_PROCESSED_VARIABLES: tuple[str, ...] = ("dff", "df", "signal_corrected")
_DPI = 100
_COLORS = {"signal": "tab:green", "isosbestic": "tab:purple", "reference": "black"}


# --------------------------------------------------------------------------------------------
# envelope decimation
# --------------------------------------------------------------------------------------------


def _bin_edges(n: int, n_bins: int) -> IntArray:
    """Start of each of ``n_bins`` contiguous bins over ``n`` samples, plus ``n``.

    Bin ``i`` holds samples ``[i * n // n_bins, (i + 1) * n // n_bins)``: sizes differ by at
    most one and, for ``n >= n_bins``, no bin is empty.
    """
    return (np.arange(n_bins + 1, dtype=np.int64) * n) // n_bins


def _bin_times(time: FloatArray, n_bins: int) -> FloatArray:
    """Time of sample ``i * (n - 1) // (n_bins - 1)`` for bin ``i``.

    That sample lies inside bin ``i`` of :func:`_bin_edges`, and the first and last bins get
    the first and last sample times exactly, so the decimated trace spans the recording.
    """
    n = time.size
    index = (np.arange(n_bins, dtype=np.int64) * (n - 1)) // (n_bins - 1)
    return time[index]


def _reduce_block(block: npt.NDArray[Any], starts: IntArray) -> FloatArray:
    """Per-bin ``[min; max]`` of one block (shape ``(2, len(starts))``), ignoring NaN."""
    if starts.size == 0:
        return np.empty((2, 0), dtype=np.float64)
    values = np.asarray(block, dtype=np.float64)
    return np.stack([np.fmin.reduceat(values, starts), np.fmax.reduceat(values, starts)])


@dataclass(frozen=True)
class _Pending:
    """An array to materialise (NumPy, or Dask to compute) and what to do with it after."""

    data: Any
    finish: Callable[[Any], Any]


def _is_lazy(x: object) -> bool:
    graph = getattr(x, "__dask_graph__", None)
    return callable(graph) and graph() is not None


def _resolve(pending: Mapping[str, _Pending]) -> dict[str, Any]:
    """Materialise every pending array, computing all lazy ones in one ``dask.compute``."""
    data = {key: p.data for key, p in pending.items()}
    lazy = [key for key, value in data.items() if _is_lazy(value)]
    if lazy:
        from dask.base import compute

        logger.debug("computing %d lazy arrays in one pass: %s", len(lazy), lazy)
        computed = compute(*(data[key] for key in lazy))  # type: ignore[no-untyped-call]
        data.update(zip(lazy, computed, strict=True))
    return {key: p.finish(data[key]) for key, p in pending.items()}


def _validate_envelope(time: npt.ArrayLike, values: Any, n_bins: int) -> FloatArray:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int | np.integer):
        raise TypeError(f"n_bins must be an int, got {n_bins!r} of type {type(n_bins).__name__}.")
    if n_bins < 2:
        raise ValueError(f"n_bins must be at least 2, got {n_bins}.")
    time_arr = np.asarray(time, dtype=np.float64)
    shape = tuple(getattr(values, "shape", np.shape(values)))
    if time_arr.ndim != 1 or len(shape) != 1 or shape[0] != time_arr.size:
        raise ValueError(
            "time and values must be 1-D arrays of the same length, got shapes "
            f"{time_arr.shape!r} and {shape!r}."
        )
    return time_arr


def _envelope_pending(time: FloatArray, values: Any, n_bins: int) -> _Pending:
    """Plan the envelope of ``values``; lazy values are reduced block by block."""
    n = time.size
    if n <= n_bins:

        def identity(v: Any) -> tuple[FloatArray, FloatArray, FloatArray]:
            arr = np.asarray(v, dtype=np.float64)
            return time.copy(), arr, arr.copy()

        return _Pending(values, identity)

    edges = _bin_edges(n, n_bins)
    times = _bin_times(time, n_bins)
    if not _is_lazy(values):
        values_arr = np.asarray(values)

        def eager(v: Any) -> tuple[FloatArray, FloatArray, FloatArray]:
            lo, hi = _reduce_block(v, edges[:-1])
            return times, lo, hi

        return _Pending(values_arr, eager)

    # One partial envelope per block: the bins overlapping the block, reduced over the
    # block's part of them; a bin straddling blocks appears once per block and the partial
    # results are merged in NumPy (fmin/fmax are associative).
    offsets = np.concatenate([[0], np.cumsum(values.chunks[0])]).astype(np.int64)
    first_bin = np.searchsorted(edges, offsets[:-1], side="right") - 1
    last_bin = np.searchsorted(edges, offsets[1:] - 1, side="right") - 1
    local_starts: list[IntArray] = []
    bin_ids: list[IntArray] = []
    for a, b, first, last in zip(offsets[:-1], offsets[1:], first_bin, last_bin, strict=True):
        if b == a:
            ids = np.empty(0, dtype=np.int64)
        else:
            ids = np.arange(first, last + 1, dtype=np.int64)
        bin_ids.append(ids)
        local_starts.append(np.maximum(edges[ids], a) - a)
    ids_all = np.concatenate(bin_ids)
    group_starts = np.flatnonzero(np.r_[True, ids_all[1:] != ids_all[:-1]])

    def block_envelope(block: npt.NDArray[Any], block_id: tuple[int, ...]) -> FloatArray:
        return _reduce_block(block, local_starts[block_id[-1]])

    partial = values.map_blocks(
        block_envelope,
        new_axis=0,
        chunks=((2,), tuple(int(ids.size) for ids in bin_ids)),
        dtype=np.float64,
        meta=np.empty((0, 0), dtype=np.float64),
    )

    def merge(p: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
        lo = np.fmin.reduceat(p[0], group_starts)
        hi = np.fmax.reduceat(p[1], group_starts)
        return times, lo, hi

    return _Pending(partial, merge)


def envelope(
    time: npt.ArrayLike, values: npt.ArrayLike, n_bins: int
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Decimate a trace to the minimum and maximum of each of ``n_bins`` contiguous bins.

    The ``n`` samples are split into ``n_bins`` contiguous bins whose sizes differ by at
    most one (bin ``i`` holds samples ``i * n // n_bins`` up to ``(i + 1) * n // n_bins``),
    and each bin is reduced to its minimum and maximum in a single pass
    (:func:`numpy.fmin.reduceat`), so a one-sample spike or artefact stays visible when the
    envelope is drawn as a band between ``lo`` and ``hi``. NaN is ignored; a bin of NaN only
    gives NaN. Dask-backed ``values`` are reduced block by block (bins may straddle blocks)
    and only the ``2 * n_bins`` results are brought back. With ``n <= n_bins`` the trace is
    returned unchanged (``lo`` and ``hi`` both equal to ``values``).

    Parameters
    ----------
    time : array_like, shape (n,)
        Sample times (any unit), usually increasing.
    values : array_like or dask.array.Array, shape (n,)
        Sample values.
    n_bins : int
        Number of bins, at least 2.

    Returns
    -------
    time : numpy.ndarray, shape (min(n, n_bins),)
        A representative time per bin: the time of sample ``i * (n - 1) // (n_bins - 1)``,
        which lies in bin ``i``; the first and last are the first and last sample times.
    lo, hi : numpy.ndarray, shape (min(n, n_bins),)
        The minimum and maximum of each bin, float64.

    Raises
    ------
    ValueError
        If ``time`` and ``values`` are not 1-D of the same length, or ``n_bins < 2``.
    TypeError
        If ``n_bins`` is not an integer.

    See Also
    --------
    dashboard : draws every trace through this envelope.

    Examples
    --------
    >>> t = np.arange(10.0)
    >>> x = np.array([0.0, 1, 2, 9, 4, 5, 6, -7, 8, 3])
    >>> tb, lo, hi = envelope(t, x, 3)
    >>> tb, lo, hi
    (array([0., 4., 9.]), array([ 0.,  4., -7.]), array([2., 9., 8.]))
    """
    time_arr = _validate_envelope(time, values, n_bins)
    result = _resolve({"envelope": _envelope_pending(time_arr, values, int(n_bins))})
    return result["envelope"]  # type: ignore[no-any-return]


# --------------------------------------------------------------------------------------------
# trial statistics
# --------------------------------------------------------------------------------------------


def _bin_mean(matrix: FloatArray, n_bins: int) -> FloatArray:
    """NaN-ignoring mean over ``n_bins`` contiguous column bins (unchanged if fewer columns)."""
    n = matrix.shape[1]
    if n <= n_bins:
        return matrix
    starts = _bin_edges(n, n_bins)[:-1]
    finite = np.isfinite(matrix)
    total = np.add.reduceat(np.where(finite, matrix, 0.0), starts, axis=1)
    count = np.add.reduceat(finite.astype(np.int64), starts, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan)


def _mean_sem(matrix: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Mean and standard error over trials (rows), ignoring NaN; NaN where undefined."""
    finite = np.isfinite(matrix)
    count = finite.sum(axis=0)
    zeroed = np.where(finite, matrix, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, zeroed.sum(axis=0) / count, np.nan)
        squares = np.where(finite, (matrix - mean) ** 2, 0.0).sum(axis=0)
        sem = np.where(count > 1, np.sqrt(squares / (count - 1) / count), np.nan)
    return mean, sem


def _colour_limit(matrix: FloatArray) -> float:
    finite = np.abs(matrix[np.isfinite(matrix)])
    if finite.size == 0:
        return 1.0
    limit = float(np.percentile(finite, 99.0))
    return limit if limit > 0 else 1.0


# --------------------------------------------------------------------------------------------
# dashboard
# --------------------------------------------------------------------------------------------


def _resolve_format(path: str, fmt: str | None) -> DashboardFormat:
    if fmt is None:
        suffix = PurePosixPath(path.split("?", 1)[0]).suffix.lower().lstrip(".")
        if suffix not in _FORMATS:
            raise ValueError(
                f"cannot tell the dashboard format from {path!r}: expected a path ending in "
                ".svg or .png, or format='svg' or 'png'."
            )
        fmt = suffix
    if fmt not in _FORMATS:
        raise ValueError(f"format must be 'svg' or 'png', got {fmt!r}.")
    return "svg" if fmt == "svg" else "png"


def _processed_variable(processed: xr.Dataset, name: str) -> str:
    variable = processed.attrs.get("processed_variable")
    if variable is None:
        found = [v for v in _PROCESSED_VARIABLES if v in processed.data_vars]
        if not found:
            raise InputError(
                f"dashboard of {name!r}: the processed dataset has no 'processed_variable' "
                f"attribute and none of the variables {list(_PROCESSED_VARIABLES)}; expected "
                "the output of the preprocess stage."
            )
        variable = found[0]
    if variable not in processed.data_vars:
        raise InputError(
            f"dashboard of {name!r}: processed_variable {variable!r} is not a variable of the "
            f"processed dataset (it has {sorted(map(str, processed.data_vars))})."
        )
    return str(variable)


def _fit_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    fit = attrs.get("fit")
    if isinstance(fit, str):
        try:
            fit = json.loads(fit)
        except ValueError:
            return {}
    return dict(fit) if isinstance(fit, Mapping) else {}


def _experiment_id(processed: xr.Dataset, from_trials: npt.NDArray[Any] | None) -> str:
    if from_trials is not None and from_trials.size:
        return str(from_trials[0])
    for key in ("experiment_id", "item_id", "source"):
        if key in processed.attrs:
            return str(processed.attrs[key])
    return "recording"


def _title(processed: xr.Dataset, experiment_id: str, n_trials: int | None) -> str:
    parts = [experiment_id]
    if n_trials is not None:
        parts.append(f"{n_trials} trial{'s' if n_trials != 1 else ''}")
    fit = _fit_attrs(processed.attrs)
    if "method" in fit:
        text = f"fit {fit['method']}"
        r_squared = fit.get("r_squared")
        if isinstance(r_squared, int | float) and np.isfinite(r_squared):
            text += f", R² = {r_squared:.3f}"
        parts.append(text)
    return " — ".join(parts)


def _band(
    ax: Axes,
    env: tuple[FloatArray, FloatArray, FloatArray],
    *,
    color: str,
    label: str,
    alpha: float = 1.0,
) -> None:
    """Draw an envelope as a band with an outline (a line where ``lo == hi``).

    The legend gets a line (an empty :class:`~matplotlib.lines.Line2D`), not a patch.
    """
    t, lo, hi = env
    ax.fill_between(t, lo, hi, color=color, edgecolor=color, linewidth=0.7, alpha=alpha)
    ax.plot([], [], color=color, alpha=alpha, label=label)


def _trial_groups(
    n_trials: int, align_event: npt.NDArray[Any] | None
) -> list[tuple[str, npt.NDArray[np.bool_]]]:
    """Trial types: the values of ``align_event`` when present, else one group ``all``."""
    if align_event is None:
        return [("all", np.ones(n_trials, dtype=bool))]
    labels = align_event.astype(str)
    return [(name or "(none)", labels == name) for name in sorted(set(labels.tolist()))]


def dashboard(
    processed: xr.Dataset,
    trials: xr.Dataset | None,
    path: str,
    *,
    format: DashboardFormat | None = None,
    title: str | None = None,
    max_points: int = 4000,
    storage_options: Mapping[str, Any] | None = None,
) -> None:
    """Draw one item's dashboard and write it as SVG or PNG.

    Panels, top to bottom:

    1. raw channels: the filtered ``signal`` and ``isosbestic`` with the fitted
       ``reference`` (single-channel recordings: the signal only);
    2. the processed variable (``processed.attrs["processed_variable"]``, e.g. ``dff``)
       over time, with a vertical marker per event, one colour and legend entry per
       event name;
    3. with trials: the trial heatmap (trial x ``rel_time``), on a diverging colormap
       centred at 0 and clipped at the 99th percentile of ``|value|``, with a colorbar;
    4. with trials: mean ± SEM over trials per trial type, with a vertical line at 0.
       The trial type is the trial's ``align_event`` when that column is present (trials
       aligned to pooled event names), otherwise every trial is in one group ``all``.

    Every trace is drawn through :func:`envelope` with ``max_points // 2`` bins (each bin
    a band from its minimum to its maximum), so a 1-hour 1 kHz recording draws from a few
    thousand points and its spikes and artefacts stay visible. Mean and SEM are computed
    over trials at full resolution, then drawn the same way; the heatmap shows the mean of
    each of ``max_points // 2`` bins along ``rel_time``. Lazy (Dask-backed) inputs are
    reduced block by block in one ``dask.compute`` call: the recording is never loaded at
    full resolution. The trials matrix (small, one item) is loaded whole.

    Parameters
    ----------
    processed : xarray.Dataset
        A Processed Dataset: ``signal(time)``, optionally ``isosbestic(time)`` and
        ``reference(time)``, the processed variable, optionally ``event_time(event)`` with
        coordinate ``event_name(event)``; attrs ``processed_variable`` and ``fit``.
    trials : xarray.Dataset or None
        The item's Trials Dataset (``trial`` x ``rel_time``), or None for no trial panels.
        A Trials Dataset with no trial (or a single ``rel_time``) also gives none; the
        title still counts the trials.
    path : str
        Where to write: a path or any fsspec URL (``memory://``, ``s3://``, ...). Missing
        parent folders are created.
    format : {"svg", "png"}, optional
        The file format; by default from the suffix of ``path``.
    title : str, optional
        The figure title; by default the experiment id, the number of trials and the fit
        method with its R² when present.
    max_points : int, default 4000
        Points per trace after decimation (``max_points // 2`` bins of min and max), at
        least 4.
    storage_options : mapping, optional
        Passed to fsspec to open ``path``.

    Raises
    ------
    ValueError
        If the format cannot be told from ``path`` or is not svg/png, or ``max_points < 4``.
    InputError
        If ``processed`` lacks ``signal`` or the processed variable, or ``trials`` lacks
        the processed variable.
    TypeError
        If ``max_points`` is not an integer.

    See Also
    --------
    envelope : the decimation.

    Examples
    --------
    >>> from neurobatch.synthetic import photometry_recording
    >>> rec = photometry_recording(duration_s=120.0, fs=50.0)
    >>> processed = rec.assign(
    ...     reference=1.6 / 0.9 * rec.isosbestic,
    ...     dff=rec.signal / (1.6 / 0.9 * rec.isosbestic) - 1.0,
    ... ).assign_attrs(processed_variable="dff", fit={"method": "ols", "r_squared": 0.9})
    >>> dashboard(processed, None, "memory://docs/dashboard.svg")
    >>> import fsspec
    >>> memory = fsspec.filesystem("memory")
    >>> memory.cat_file("/docs/dashboard.svg")[:5]
    b'<?xml'
    >>> memory.rm("/docs", recursive=True)
    """
    fmt = _resolve_format(path, format)
    if isinstance(max_points, bool) or not isinstance(max_points, int | np.integer):
        raise TypeError(f"max_points must be an int, got {max_points!r}.")
    if max_points < 4:
        raise ValueError(f"max_points must be at least 4, got {max_points}.")
    n_bins = int(max_points) // 2
    name = str(processed.attrs.get("source", path))
    variable = _processed_variable(processed, name)
    if "signal" not in processed.data_vars:
        raise InputError(
            f"dashboard of {name!r}: the processed dataset has no 'signal' variable "
            f"(it has {sorted(map(str, processed.data_vars))})."
        )
    time = np.asarray(processed["time"].values, dtype=np.float64)

    # plan every array to materialise, so lazy inputs are computed in one pass
    channels = [c for c in ("signal", "isosbestic", "reference") if c in processed.data_vars]
    plan = {c: _envelope_pending(time, processed[c].data, n_bins) for c in channels}
    plan["processed"] = _envelope_pending(time, processed[variable].data, n_bins)
    if "event_time" in processed.variables and "event_name" in processed.variables:
        plan["event_time"] = _Pending(processed["event_time"].data, np.asarray)
        plan["event_name"] = _Pending(processed["event_name"].data, np.asarray)
    rel_time: FloatArray | None = None
    n_trials: int | None = None
    if trials is not None:
        trial_variable = str(trials.attrs.get("processed_variable", variable))
        if trial_variable not in trials.data_vars:
            raise InputError(
                f"dashboard of {name!r}: the trials dataset has no variable {trial_variable!r} "
                f"(it has {sorted(map(str, trials.data_vars))})."
            )
        n_trials = int(trials.sizes.get("trial", 0))
        rel_time = np.asarray(trials["rel_time"].values, dtype=np.float64)
        plan["trials"] = _Pending(
            trials[trial_variable].transpose("trial", "rel_time").data,
            lambda v: np.asarray(v, dtype=np.float64),
        )
        for column in ("experiment_id", "align_event"):
            if column in trials.variables and trials[column].dims == ("trial",):
                plan[column] = _Pending(trials[column].data, np.asarray)
    data = _resolve(plan)
    event_times: FloatArray = data.get("event_time", np.empty(0)).astype(np.float64)
    event_names: npt.NDArray[np.str_] = data.get("event_name", np.empty(0)).astype(str)
    matrix: FloatArray | None = data.get("trials")
    show_trials = matrix is not None and matrix.shape[0] > 0 and matrix.shape[1] > 1
    logger.debug(
        "dashboard %s: %d samples -> %d bins per trace, %s trials",
        path,
        time.size,
        min(time.size, n_bins),
        n_trials,
    )

    # a fixed layout: constrained layout would double the drawing time
    height = 12.0 if show_trials else 6.5
    n_rows = 4 if show_trials else 2
    fig = Figure(figsize=(12.0, height), dpi=_DPI)
    grid = fig.add_gridspec(
        n_rows,
        2,
        width_ratios=[60, 1],
        height_ratios=[1.0, 1.0, 1.2, 1.0][:n_rows],
        left=0.08,
        right=0.92,
        bottom=0.6 / height,
        top=1.0 - 0.75 / height,
        wspace=0.03,
        hspace=0.35,
    )
    ax_raw = fig.add_subplot(grid[0, 0])
    ax_proc = fig.add_subplot(grid[1, 0], sharex=ax_raw)

    # 1. raw channels with the fitted reference
    for channel in channels:
        env = data[channel]
        label = "reference (fitted isosbestic)" if channel == "reference" else channel
        _band(ax_raw, env, color=_COLORS[channel], label=label, alpha=0.8)
    ax_raw.set_ylabel("filtered signal")
    ax_raw.legend(loc="upper right", fontsize="small")
    ax_raw.set_title("raw channels", loc="left", fontsize="medium", y=1.0, pad=4.0)
    ax_raw.tick_params(labelbottom=False)

    # 2. processed variable with event markers
    _band(ax_proc, data["processed"], color="tab:blue", label=variable)
    if event_times.size:
        cycle = [f"C{i}" for i in range(1, 10)]
        for i, event in enumerate(dict.fromkeys(event_names.tolist())):
            ax_proc.vlines(
                event_times[event_names == event],
                0.0,
                1.0,
                transform=ax_proc.get_xaxis_transform(),
                colors=cycle[i % len(cycle)],
                linewidth=0.8,
                alpha=0.7,
                label=event,
            )
        ax_proc.legend(loc="upper right", fontsize="small", ncols=2)
    ax_proc.set_ylabel(variable)
    ax_proc.set_xlabel("time (s)")
    ax_proc.set_title(f"{variable} and events", loc="left", fontsize="medium", y=1.0, pad=4.0)
    if time.size:
        ax_proc.set_xlim(time[0], time[-1])

    # 3. and 4. trials
    if show_trials and matrix is not None and rel_time is not None:
        ax_heat = fig.add_subplot(grid[2, 0])
        ax_mean = fig.add_subplot(grid[3, 0], sharex=ax_heat)
        ax_bar = fig.add_subplot(grid[2, 1])
        limit = _colour_limit(matrix)
        image = ax_heat.imshow(
            _bin_mean(matrix, n_bins),
            aspect="auto",
            interpolation="nearest",
            cmap="RdBu_r",
            vmin=-limit,
            vmax=limit,
            origin="upper",
            extent=(rel_time[0], rel_time[-1], matrix.shape[0] - 0.5, -0.5),
        )
        fig.colorbar(image, cax=ax_bar, label=variable)
        ax_heat.set_ylabel("trial")
        ax_heat.set_title("trials", loc="left", fontsize="medium", y=1.0, pad=4.0)
        ax_heat.tick_params(labelbottom=False)

        for i, (group, mask) in enumerate(_trial_groups(matrix.shape[0], data.get("align_event"))):
            mean, sem = _mean_sem(matrix[mask])
            color = f"C{i}"
            t_bins, lower, _ = envelope(rel_time, mean - sem, n_bins)
            _, _, upper = envelope(rel_time, mean + sem, n_bins)
            ax_mean.fill_between(t_bins, lower, upper, color=color, alpha=0.25, linewidth=0)
            centre = envelope(rel_time, mean, n_bins)
            _band(ax_mean, centre, color=color, label=f"{group} (n={int(mask.sum())})")
        ax_mean.axvline(0.0, color="black", linestyle="--", linewidth=0.8)
        ax_mean.set_xlim(rel_time[0], rel_time[-1])
        ax_mean.set_xlabel("time from alignment (s)")
        ax_mean.set_ylabel(f"{variable} (mean ± SEM)")
        ax_mean.legend(loc="upper right", fontsize="small")

    if title is None:
        experiment_id = _experiment_id(processed, data.get("experiment_id"))
        title = _title(processed, experiment_id, n_trials)
    fig.suptitle(title)

    buffer = io.BytesIO()
    if fmt == "svg":
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    else:  # fast zlib level: a third faster to encode, a fifth bigger
        fig.savefig(buffer, format="png", pil_kwargs={"compress_level": 1})
    fs, fs_path = fsspec.core.url_to_fs(path, **dict(storage_options or {}))
    parent = fs._parent(fs_path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    with fs.open(fs_path, "wb") as f:
        f.write(buffer.getvalue())
    logger.debug("dashboard %s: wrote %d bytes", path, buffer.tell())


# --------------------------------------------------------------------------------------------
# resource usage of a run (its processing.json)
# --------------------------------------------------------------------------------------------

#: Runs longer than this are drawn in minutes rather than seconds.
_MINUTES_AFTER_S = 600.0


def _figure_format(path: str) -> DashboardFormat:
    suffix = PurePosixPath(path.split("?", 1)[0]).suffix.lower().lstrip(".")
    if suffix not in _FORMATS:
        raise ValueError(
            f"cannot tell the figure format from {path!r}: expected a path ending in .png or .svg."
        )
    return "svg" if suffix == "svg" else "png"


def _write_figure(
    fig: Figure, path: str, fmt: DashboardFormat, storage_options: Mapping[str, Any] | None
) -> int:
    """Render ``fig`` and write it to any fsspec URL; returns the number of bytes."""
    buffer = io.BytesIO()
    if fmt == "svg":
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    else:
        fig.savefig(buffer, format="png", pil_kwargs={"compress_level": 1})
    fs, fs_path = fsspec.core.url_to_fs(path, **dict(storage_options or {}))
    parent = fs._parent(fs_path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    with fs.open(fs_path, "wb") as f:
        f.write(buffer.getvalue())
    return buffer.tell()


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
    items are pipelined), and the same span is lightly shaded in the panels. Times are relative to the
    earliest start, in seconds, or in minutes when the run spans more than 10 minutes. A
    process with no end time is shaded up to its last sample.

    Parameters
    ----------
    processing : Processing
        The run's record, e.g. from
        :func:`neurobatch.engine.provenance.read_processing`.
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
    processes = list(processing.data_processes)
    if not processes:
        raise ValueError("the processing record has no data process to draw.")
    t0 = min(p.start_date_time for p in processes)

    def seconds(points: Sequence[Any]) -> FloatArray:
        return np.asarray([(p.timestamp - t0).total_seconds() for p in points], dtype=np.float64)

    spans: list[tuple[str, float, float]] = []
    series: list[tuple[str, FloatArray, FloatArray, FloatArray, FloatArray]] = []
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
    total = max(
        max(end for _, _, end in spans),
        *(max(cpu_t.max(initial=0.0), ram_t.max(initial=0.0)) for _, cpu_t, _, ram_t, _ in series),
    )
    scale, unit = (60.0, "min") if total > _MINUTES_AFTER_S else (1.0, "s")

    # a lane per process on top (stages of a batch overlap: items are pipelined), and each
    # process's span lightly shaded in its colour under its own CPU and RAM series
    fig = Figure(figsize=(12.0, 6.5 + 0.18 * len(spans)), dpi=_DPI)
    grid = fig.add_gridspec(
        3,
        1,
        height_ratios=(0.12 * len(spans) + 0.3, 1.0, 1.0),
        left=0.09,
        right=0.98,
        bottom=0.09,
        top=0.9,
        hspace=0.12,
    )
    ax_lanes = fig.add_subplot(grid[0, 0])
    ax_cpu = fig.add_subplot(grid[1, 0], sharex=ax_lanes)
    ax_ram = fig.add_subplot(grid[2, 0], sharex=ax_lanes)
    for i, (_, start, end) in enumerate(spans):
        color = f"C{i % 10}"
        ax_lanes.barh(i, (end - start) / scale, left=start / scale, height=0.7, color=color)
        for ax in (ax_cpu, ax_ram):
            ax.axvspan(start / scale, end / scale, color=color, alpha=0.08, linewidth=0)
    ax_lanes.set_yticks(range(len(spans)), [name for name, _, _ in spans], fontsize="small")
    ax_lanes.set_ylim(len(spans) - 0.5, -0.5)
    ax_lanes.tick_params(labelbottom=False, length=0)
    for side in ("top", "right", "bottom"):
        ax_lanes.spines[side].set_visible(False)
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
    ax_ram.set_xlabel(f"time since {t0.isoformat(timespec='seconds')} ({unit})")
    ax_ram.set_xlim(0.0, max(total, 1e-9) / scale)
    if title is None:
        title = (
            f"resource usage: {len(spans)} data process{'es' if len(spans) != 1 else ''} "
            f"over {total / scale:.1f} {unit}"
        )
    fig.suptitle(title)
    n_bytes = _write_figure(fig, path, fmt, storage_options)
    logger.debug("resource usage %s: wrote %d bytes", path, n_bytes)


# --------------------------------------------------------------------------------------------
# spike-triggered averages and filtered traces (the `sta` and `filter` pipelines)
# --------------------------------------------------------------------------------------------

#: Largest figure side, inches: panels shrink beyond it.
_MAX_FIGURE_IN = 18.0
_STA_CMAP = "RdBu_r"


def _named_array(
    data: xr.Dataset | xr.DataArray, name: str, dims: tuple[str, ...], function: str
) -> tuple[xr.DataArray, xr.DataArray | None]:
    """The variable ``name`` with ``dims`` (and ``n_spikes(unit)`` when present), or raise."""
    if isinstance(data, xr.Dataset):
        if name not in data.data_vars:
            raise InputError(
                f"{function}: the dataset has no variable {name!r} (it has "
                f"{sorted(map(str, data.data_vars))}); expected {name}{dims}."
            )
        array = data[name]
        n_spikes = data["n_spikes"] if "n_spikes" in data.variables else None
    elif isinstance(data, xr.DataArray):
        array = data
        n_spikes = data.coords.get("n_spikes", None)
    else:
        raise TypeError(
            f"{function}: expected an xarray Dataset or DataArray, got {type(data).__name__}."
        )
    if array.dims != dims:
        raise InputError(f"{function}: {name} has dimensions {array.dims}; expected {name}{dims}.")
    if n_spikes is not None and n_spikes.dims != ("unit",):
        n_spikes = None
    return array, n_spikes


def _labels(array: xr.DataArray, dim: str) -> npt.NDArray[Any]:
    """The coordinate values along ``dim``, or positions where there is no coordinate."""
    if dim in array.coords:
        return np.asarray(array.coords[dim].values)
    return np.arange(array.sizes[dim])


def _select_units(
    array: xr.DataArray, units: Sequence[Any] | None, max_units: int, function: str
) -> npt.NDArray[np.intp]:
    """Positions along ``unit`` of the units to draw: ``units`` (labels) or the first ones."""
    if isinstance(max_units, bool) or not isinstance(max_units, int | np.integer):
        raise TypeError(f"{function}: max_units must be an int, got {max_units!r}.")
    if max_units < 1:
        raise ValueError(f"{function}: max_units must be at least 1, got {max_units}.")
    labels = _labels(array, "unit")
    if units is None:
        return np.arange(min(labels.size, int(max_units)), dtype=np.intp)
    wanted = list(units)
    positions = {label: i for i, label in enumerate(labels.tolist())}
    missing = [u for u in wanted if u not in positions]
    if missing:
        shown = ", ".join(map(repr, labels[:10].tolist()))
        raise InputError(
            f"{function}: units {missing} are not in the data; its units are {shown}"
            f"{' ...' if labels.size > 10 else ''}."
        )
    return np.asarray([positions[u] for u in wanted[: int(max_units)]], dtype=np.intp)


def _unit_caption(label: Any, n_spikes: npt.NDArray[Any] | None, row: int) -> str:
    text = f"unit {label}"
    if n_spikes is not None:
        text += f"\nn={int(n_spikes[row]):,}"
    return text


def _symmetric_limit(values: FloatArray) -> float:
    """Largest ``|value|`` over the finite values (1 when there is none or it is 0)."""
    finite = np.abs(values[np.isfinite(values)])
    limit = float(finite.max()) if finite.size else 0.0
    return limit if limit > 0 else 1.0


def _blank(ax: Axes, note: str | None) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    if note:
        ax.text(
            0.5,
            0.5,
            note,
            transform=ax.transAxes,
            ha="center",
            va="center",
            fontsize="small",
            color="0.4",
        )


def _image(ax: Axes, image: FloatArray, limit: float) -> None:
    ax.imshow(
        image,
        cmap=_STA_CMAP,
        vmin=-limit,
        vmax=limit,
        interpolation="nearest",
        origin="upper",
    )
    ax.set_xticks([])
    ax.set_yticks([])


def sta_grid(
    sta: xr.Dataset | xr.DataArray,
    path: str,
    *,
    units: Sequence[Any] | None = None,
    max_units: int = 16,
    title: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> None:
    """Draw each unit's spike-triggered average as a row of images, one per lag.

    Rows are units, columns are lags (lag 0, the spike's own frame, on the left). Each row
    has its own symmetric colour scale, ``±max |sta|`` of that unit on a diverging colormap
    (red above the mean stimulus, blue below), so weak and strong units are both visible;
    the row label gives the unit, its spike count (``n_spikes``) and that limit. A unit
    whose STA is NaN (no usable spikes) gets a blank row that says so. Column titles give
    the lag in frames, and in milliseconds before the spike when a float coordinate along
    ``lag`` (e.g. ``lag_time`` in seconds) is present. Only the units drawn are computed
    from a lazy (Dask-backed) STA.

    Parameters
    ----------
    sta : xarray.Dataset or xarray.DataArray
        The STA Dataset, ``sta(unit, lag, y, x)`` with ``n_spikes(unit)``, or the
        ``sta(unit, lag, y, x)`` array itself.
    path : str
        Where to write, a path or any fsspec URL; the format comes from the extension
        (``.png`` or ``.svg``). Missing parent folders are created.
    units : sequence, optional
        Labels (values of the ``unit`` coordinate, else positions) of the units to draw, in
        this order; by default the first ``max_units``.
    max_units : int, default 16
        Most units drawn (rows).
    title : str, optional
        The figure title; by default how many units and lags are shown.
    storage_options : mapping, optional
        Passed to fsspec to open ``path``.

    Raises
    ------
    InputError
        If ``sta`` lacks ``sta(unit, lag, y, x)`` or a label of ``units`` is not in it.
    ValueError
        If the format cannot be told from ``path`` or ``max_units < 1``.
    TypeError
        If ``sta`` is not an xarray object or ``max_units`` not an int.

    See Also
    --------
    strf : the collapsed STRF of each unit.

    Examples
    --------
    >>> noise = np.random.default_rng(0).normal(size=(2, 3, 5, 5))
    >>> sta = xr.Dataset(
    ...     {"sta": (("unit", "lag", "y", "x"), noise), "n_spikes": ("unit", [120, 0])},
    ...     coords={"unit": ["a", "b"], "lag": [0, 1, 2], "lag_time": ("lag", [0.0, 0.02, 0.04])},
    ... )
    >>> sta["sta"][1] = np.nan  # unit b has no spikes
    >>> sta_grid(sta, "memory://docs/sta.png")
    >>> import fsspec
    >>> fsspec.filesystem("memory").cat_file("/docs/sta.png")[:8]
    b'\\x89PNG\\r\\n\\x1a\\n'
    """
    function = "sta_grid"
    fmt = _figure_format(path)
    array, n_spikes_all = _named_array(sta, "sta", ("unit", "lag", "y", "x"), function)
    rows = _select_units(array, units, max_units, function)
    labels = _labels(array, "unit")[rows]
    values = np.asarray(array.isel(unit=rows).values, dtype=np.float64)
    n_spikes = None if n_spikes_all is None else np.asarray(n_spikes_all.values)[rows]
    n_rows, n_lags = int(rows.size), int(array.sizes["lag"])
    lags = _labels(array, "lag")
    lag_seconds = next(
        (
            np.asarray(c.values, dtype=np.float64)
            for name, c in array.coords.items()
            if name != "lag" and c.dims == ("lag",) and np.asarray(c.values).dtype.kind == "f"
        ),
        None,
    )
    ny, nx = int(array.sizes["y"]), int(array.sizes["x"])
    panel = min(1.3, _MAX_FIGURE_IN / max(n_lags, 1), _MAX_FIGURE_IN / max(n_rows, 1))
    aspect = ny / max(nx, 1)
    fig = Figure(
        figsize=(1.4 + panel * max(n_lags, 1), 0.9 + panel * aspect * max(n_rows, 1)),
        dpi=_DPI,
    )
    if n_rows == 0 or n_lags == 0:
        ax = fig.add_subplot()
        _blank(ax, "no unit to draw")
    else:
        axes = fig.subplots(n_rows, n_lags, squeeze=False)
        for r in range(n_rows):
            unit_sta = values[r]
            empty = not np.isfinite(unit_sta).any()
            limit = _symmetric_limit(unit_sta)
            caption = _unit_caption(labels[r], n_spikes, r)
            for k in range(n_lags):
                ax = axes[r, k]
                if empty:
                    _blank(ax, "no spikes: STA is NaN" if k == 0 else None)
                else:
                    _image(ax, unit_sta[k], limit)
                if r == 0:
                    head = f"lag {lags[k]}"
                    if lag_seconds is not None:
                        ms = round(float(lag_seconds[k]) * 1e3)
                        head += f"\n{-ms} ms"
                    ax.set_title(head, fontsize="small")
            axes[r, 0].set_ylabel(
                caption + ("" if empty else f"\n±{limit:.2g}"),
                rotation=0,
                ha="right",
                va="center",
                fontsize="small",
            )
    if title is None:
        total = int(array.sizes["unit"])
        title = f"spike-triggered average: {n_rows} of {total} units, {n_lags} lags"
    fig.suptitle(title)
    fig.subplots_adjust(
        left=min(0.45, 1.3 / fig.get_figwidth()),
        right=0.98,
        bottom=0.02,
        top=1.0 - min(0.4, 0.75 / fig.get_figheight()),
        wspace=0.05,
        hspace=0.08,
    )
    n_bytes = _write_figure(fig, path, fmt, storage_options)
    logger.debug("sta grid %s: %d units x %d lags, %d bytes", path, n_rows, n_lags, n_bytes)


def strf(
    strf: xr.Dataset | xr.DataArray,
    path: str,
    *,
    units: Sequence[Any] | None = None,
    max_units: int = 36,
    n_cols: int | None = None,
    title: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> None:
    """Draw each unit's collapsed spatio-temporal receptive field (STRF) as one image.

    The units fill a grid row by row (``n_cols`` per row). Each image has its own symmetric
    colour scale, ``±max |strf|`` of that unit, on a diverging colormap; its title gives the
    unit, its spike count (``n_spikes``) when present and that limit. A unit whose STRF is
    NaN (no usable spikes) gets a blank panel that says so. Only the units drawn are
    computed from a lazy input.

    Parameters
    ----------
    strf : xarray.Dataset or xarray.DataArray
        A Dataset with ``strf(unit, y, x)`` (and optionally ``n_spikes(unit)``), e.g. the
        STA Dataset, or the ``strf(unit, y, x)`` array itself.
    path : str
        Where to write, a path or any fsspec URL; ``.png`` or ``.svg``.
    units : sequence, optional
        Labels of the units to draw, in this order; by default the first ``max_units``.
    max_units : int, default 36
        Most units drawn.
    n_cols : int, optional
        Panels per row; by default about the square root of the number of units, at most 8.
    title : str, optional
        The figure title; by default how many units are shown.
    storage_options : mapping, optional
        Passed to fsspec to open ``path``.

    Raises
    ------
    InputError
        If ``strf`` lacks ``strf(unit, y, x)`` or a label of ``units`` is not in it.
    ValueError
        If the format cannot be told from ``path``, ``max_units < 1`` or ``n_cols < 1``.
    TypeError
        If ``strf`` is not an xarray object or ``max_units``/``n_cols`` not an int.

    See Also
    --------
    sta_grid : every lag of each unit.

    Examples
    --------
    >>> yy, xx = np.mgrid[0:9, 0:9]
    >>> blob = np.exp(-((yy - 4) ** 2 + (xx - 3) ** 2) / 4.0)
    >>> ds = xr.Dataset({"strf": (("unit", "y", "x"), np.stack([blob, -blob]))},
    ...                 coords={"unit": [3, 7]})
    >>> strf(ds, "memory://docs/strf.svg")
    >>> import fsspec
    >>> fsspec.filesystem("memory").cat_file("/docs/strf.svg")[:5]
    b'<?xml'
    """
    function = "strf"
    fmt = _figure_format(path)
    array, n_spikes_all = _named_array(strf, "strf", ("unit", "y", "x"), function)
    rows = _select_units(array, units, max_units, function)
    labels = _labels(array, "unit")[rows]
    values = np.asarray(array.isel(unit=rows).values, dtype=np.float64)
    n_spikes = None if n_spikes_all is None else np.asarray(n_spikes_all.values)[rows]
    n = int(rows.size)
    if n_cols is None:
        n_cols = max(1, min(8, int(np.ceil(np.sqrt(max(n, 1))))))
    elif isinstance(n_cols, bool) or not isinstance(n_cols, int | np.integer):
        raise TypeError(f"{function}: n_cols must be an int, got {n_cols!r}.")
    elif n_cols < 1:
        raise ValueError(f"{function}: n_cols must be at least 1, got {n_cols}.")
    n_cols = int(min(n_cols, max(n, 1)))
    n_rows = max(1, -(-n // n_cols))
    ny, nx = int(array.sizes["y"]), int(array.sizes["x"])
    panel = min(2.0, _MAX_FIGURE_IN / n_cols, _MAX_FIGURE_IN / n_rows)
    fig = Figure(
        figsize=(0.4 + panel * n_cols, 0.7 + (panel * ny / max(nx, 1) + 0.45) * n_rows),
        dpi=_DPI,
    )
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for i in range(n_rows * n_cols):
        ax = axes[i // n_cols, i % n_cols]
        if i >= n:
            _blank(ax, None if n else "no unit to draw")
            continue
        image = values[i]
        caption = _unit_caption(labels[i], n_spikes, i).replace("\n", ", ")
        if not np.isfinite(image).any():
            _blank(ax, "no spikes:\nSTRF is NaN")
            ax.set_title(caption, fontsize="small")
            continue
        limit = _symmetric_limit(image)
        _image(ax, image, limit)
        ax.set_title(f"{caption}\n±{limit:.2g}", fontsize="small")
    if title is None:
        title = f"collapsed STRF: {n} of {int(array.sizes['unit'])} units"
    fig.suptitle(title)
    fig.subplots_adjust(
        left=0.02,
        right=0.98,
        bottom=0.02,
        top=1.0 - min(0.3, 0.6 / fig.get_figheight()),
        wspace=0.08,
        hspace=0.45,
    )
    n_bytes = _write_figure(fig, path, fmt, storage_options)
    logger.debug("strf %s: %d units, %d bytes", path, n, n_bytes)


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
    n_bytes = _write_figure(fig, path, fmt, storage_options)
    logger.debug("trace snippet %s: %d channels, %d bytes", path, len(chosen), n_bytes)
