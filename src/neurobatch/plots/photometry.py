"""Per-item dashboards of a photometry recording, cheap enough to draw for every item.

:func:`dashboard` draws one figure per item: the filtered channels with the fitted reference,
the processed variable with event markers, a trial heatmap and mean ± SEM per trial type
(:func:`trial_labels`), every trace through the min/max :func:`~neurobatch.plots.envelope`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import numpy.typing as npt
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.gridspec import GridSpec
from matplotlib.ticker import MaxNLocator

from neurobatch.errors import InputError
from neurobatch.plots._common import (
    _DPI,
    _FORMATS,
    DashboardFormat,
    FloatArray,
    _bin_edges,
    _envelope_pending,
    _Pending,
    _resolve,
    _write_figure,
    envelope,
)

__all__ = ["dashboard", "trial_labels"]

logger = logging.getLogger(__name__)

_PROCESSED_VARIABLES: tuple[str, ...] = ("dff", "df", "signal_corrected")
_COLORS = {"signal": "tab:green", "isosbestic": "tab:purple", "reference": "black"}


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
    n_trials: int, labels: npt.NDArray[Any] | None
) -> list[tuple[str, npt.NDArray[np.bool_]]]:
    """Trial types: one group per distinct label (sorted), else one group ``all``."""
    if labels is None:
        return [("all", np.ones(n_trials, dtype=bool))]
    text = np.asarray(labels).astype(str)
    return [(name or "(none)", text == name) for name in sorted(set(text.tolist()))]


def trial_labels(
    obs: Mapping[str, npt.ArrayLike], *, center_on: Sequence[str] = (), align_to: str = ""
) -> npt.NDArray[np.str_]:
    """Label each trial with the event it is centred on: its trial type.

    A trial is centred on the last of ``center_on`` whose offset from the window centre is
    0 (the trials stage re-centres a trial on the ``center_on`` event found in it, later
    names winning); a trial with none is centred on its alignment event: ``align_event``
    when ``align_to`` pooled several names (that column is then in ``obs``), else
    ``align_to``.

    Parameters
    ----------
    obs : mapping of str to array_like
        Per-trial columns (a Trials Dataset's coordinates or the obs table): one offset
        column (seconds, NaN when absent) per event of ``center_on``, ``align_event`` when
        present, and ``trial_num`` (which gives the number of trials when there is no
        other).
    center_on : sequence of str, optional
        The trials stage's ``center_on`` events, in the pipeline file's order.
    align_to : str, optional
        The alignment event's name, for trials centred on no ``center_on`` event.

    Returns
    -------
    numpy.ndarray of str, shape (n_trials,)

    Raises
    ------
    InputError
        If a ``center_on`` event has no column in ``obs``.

    Examples
    --------
    >>> obs = {"lever1": [0.0, np.nan, np.nan], "lever2": [np.nan, 0.0, np.nan],
    ...        "trial_cue": [-1.5, -2.0, 0.0]}
    >>> trial_labels(obs, center_on=["lever1", "lever2"], align_to="trial_cue").tolist()
    ['lever1', 'lever2', 'trial_cue']
    """
    missing = [name for name in center_on if name not in obs]
    if missing:
        raise InputError(
            f"trial_labels: center_on events {missing} have no column in the trials; "
            f"expected one offset column per event (the columns are {sorted(obs)})."
        )
    sized = [key for key in (*center_on, "align_event", "trial_num") if key in obs]
    n = len(np.asarray(obs[sized[0]])) if sized else 0
    if "align_event" in obs:
        labels = np.asarray(obs["align_event"]).astype(str).astype(object)
    else:
        labels = np.full(n, align_to or "all", dtype=object)
    for name in center_on:  # later names win
        offset = np.asarray(obs[name], dtype=np.float64)
        labels[np.isfinite(offset) & (np.abs(offset) < 1e-9)] = name
    return labels.astype(str)


def _plan_recording(
    processed: xr.Dataset, variable: str, channels: list[str], time: FloatArray, n_bins: int
) -> dict[str, _Pending]:
    """Plan the envelopes of the channels and the processed variable, and the events."""
    plan = {c: _envelope_pending(time, processed[c].data, n_bins) for c in channels}
    plan["processed"] = _envelope_pending(time, processed[variable].data, n_bins)
    if "event_time" in processed.variables and "event_name" in processed.variables:
        plan["event_time"] = _Pending(processed["event_time"].data, np.asarray)
        plan["event_name"] = _Pending(processed["event_name"].data, np.asarray)
    return plan


def _plan_trials(
    plan: dict[str, _Pending], trials: xr.Dataset, variable: str, name: str, column: str | None
) -> tuple[FloatArray, int]:
    """Add the trials matrix and its per-trial columns to ``plan``; ``rel_time`` and count."""
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
    if column is not None and (column not in trials.variables or trials[column].dims != ("trial",)):
        raise InputError(
            f"dashboard of {name!r}: group_by {column!r} is not a per-trial column of the "
            f"trials (they have {sorted(str(c) for c in trials.coords if c != 'rel_time')})."
        )
    for key in ("experiment_id", column or "align_event"):
        if key in trials.variables and trials[key].dims == ("trial",):
            plan[f"column:{key}"] = _Pending(trials[key].data, np.asarray)
    return rel_time, n_trials


def _dashboard_figure(show_trials: bool) -> tuple[Figure, GridSpec]:
    """The figure and its grid: two rows, four with trials, and a narrow colorbar column."""
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
        hspace=0.45,
    )
    return fig, grid


def _draw_channels(ax: Axes, data: Mapping[str, Any], channels: list[str]) -> None:
    """Panel 1: the filtered channels with the fitted reference."""
    for channel in channels:
        env = data[channel]
        label = "reference (fitted isosbestic)" if channel == "reference" else channel
        _band(ax, env, color=_COLORS[channel], label=label, alpha=0.8)
    ax.set_ylabel("filtered signal")
    ax.legend(loc="upper right", fontsize="small")
    title = "filtered channels" + (" and fitted reference" if "reference" in channels else "")
    ax.set_title(title, loc="left", fontsize="medium", y=1.0, pad=4.0)
    ax.tick_params(labelbottom=False)


def _draw_processed(
    ax: Axes,
    env: tuple[FloatArray, FloatArray, FloatArray],
    variable: str,
    event_times: FloatArray,
    event_names: npt.NDArray[np.str_],
    time: FloatArray,
) -> None:
    """Panel 2: the processed variable with a vertical marker per event."""
    _band(ax, env, color="tab:blue", label=variable)
    if event_times.size:
        cycle = [f"C{i}" for i in range(1, 10)]
        for i, event in enumerate(dict.fromkeys(event_names.tolist())):
            ax.vlines(
                event_times[event_names == event],
                0.0,
                1.0,
                transform=ax.get_xaxis_transform(),
                colors=cycle[i % len(cycle)],
                linewidth=0.8,
                alpha=0.7,
                label=event,
            )
        ax.legend(loc="upper right", fontsize="small", ncols=2)
    ax.set_ylabel(variable)
    ax.set_xlabel("time (s)")
    ax.set_title(f"{variable} and events", loc="left", fontsize="medium", y=1.0, pad=4.0)
    if time.size:
        ax.set_xlim(time[0], time[-1])


def _draw_heatmap(
    fig: Figure,
    ax_heat: Axes,
    ax_bar: Axes,
    matrix: FloatArray,
    rel_time: FloatArray,
    variable: str,
    n_bins: int,
) -> None:
    """Panel 3: the trial heatmap (trials numbered from 1), its colorbar in ``ax_bar``."""
    limit = _colour_limit(matrix)
    n_trials = matrix.shape[0]
    image = ax_heat.imshow(
        _bin_mean(matrix, n_bins),
        aspect="auto",
        interpolation="nearest",
        cmap="RdBu_r",
        vmin=-limit,
        vmax=limit,
        origin="upper",
        extent=(rel_time[0], rel_time[-1], n_trials + 0.5, 0.5),
    )
    fig.colorbar(image, cax=ax_bar, label=variable)
    ax_heat.axvline(0.0, color="black", linestyle="--", linewidth=0.8)
    ax_heat.yaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax_heat.set_ylim(n_trials + 0.5, 0.5)
    ax_heat.set_ylabel("trial")
    ax_heat.set_xlabel("time from alignment (s)")
    ax_heat.set_title("trials", loc="left", fontsize="medium", y=1.0, pad=4.0)


def _draw_mean_sem(
    ax: Axes,
    matrix: FloatArray,
    rel_time: FloatArray,
    labels: npt.NDArray[Any] | None,
    variable: str,
    n_bins: int,
    group_name: str,
) -> None:
    """Panel 4: mean ± SEM over trials per group, with a vertical line at 0."""
    stats = {
        group: (*_mean_sem(matrix[mask]), int(mask.sum()))
        for group, mask in _trial_groups(matrix.shape[0], labels)
    }
    _draw_group_means(ax, rel_time, stats, variable, n_bins, group_name)


def _draw_group_means(
    ax: Axes,
    rel_time: FloatArray,
    stats: Mapping[str, tuple[FloatArray, FloatArray, int]],
    variable: str,
    n_bins: int,
    group_name: str,
) -> None:
    """Each group's ``(mean, sem, n)`` as a line in a ± SEM band, a vertical line at 0."""
    for i, (group, (mean, sem, n)) in enumerate(stats.items()):
        color = f"C{i % 10}"
        t_bins, lower, _ = envelope(rel_time, mean - sem, n_bins)
        _, _, upper = envelope(rel_time, mean + sem, n_bins)
        ax.fill_between(t_bins, lower, upper, color=color, alpha=0.25, linewidth=0)
        centre = envelope(rel_time, mean, n_bins)
        _band(ax, centre, color=color, label=f"{group} (n={n})")
    ax.axvline(0.0, color="black", linestyle="--", linewidth=0.8)
    ax.set_xlim(rel_time[0], rel_time[-1])
    ax.set_xlabel("time from alignment (s)")
    ax.set_ylabel(f"{variable} (mean ± SEM)")
    ax.legend(loc="upper right", fontsize="small", title=group_name, title_fontsize="small")


def _group_means(
    rel_time: FloatArray,
    stats: Mapping[str, tuple[FloatArray, FloatArray, int]],
    *,
    variable: str,
    group_name: str,
    title: str,
    max_points: int = 4000,
) -> Figure:
    """A figure of each group's mean ± SEM over ``rel_time`` (already reduced over trials)."""
    fig = Figure(figsize=(9.0, 3.6), dpi=_DPI)
    ax = fig.add_subplot()
    fig.subplots_adjust(left=0.1, right=0.97, bottom=0.15, top=0.88)
    _draw_group_means(ax, rel_time, stats, variable, max(2, max_points // 2), group_name)
    ax.set_title(title, loc="left", fontsize="medium")
    return fig


def dashboard(
    processed: xr.Dataset,
    trials: xr.Dataset | None,
    path: str,
    *,
    format: DashboardFormat | None = None,
    group_by: str | npt.ArrayLike | None = None,
    title: str | None = None,
    max_points: int = 4000,
    storage_options: Mapping[str, Any] | None = None,
) -> None:
    """Draw one item's dashboard and write it as SVG or PNG.

    Panels, top to bottom:

    1. the filtered ``signal`` and ``isosbestic`` with the fitted ``reference``
       (single-channel recordings: the signal only);
    2. the processed variable (``processed.attrs["processed_variable"]``, e.g. ``dff``)
       over time, with a vertical marker per event, one colour and legend entry per
       event name;
    3. with trials: the trial heatmap (trials numbered from 1 x ``rel_time`` in seconds),
       on a diverging colormap centred at 0 and clipped at the 99th percentile of
       ``|value|``, with a colorbar and a dashed line at the alignment (0 s);
    4. with trials: mean ± SEM over trials per group, one legend entry per group with its
       trial count, with a vertical line at 0. The groups come from ``group_by``: per-trial
       labels (e.g. :func:`trial_labels`, the trial types) or the name of a per-trial
       column of ``trials``; by default the trial's ``align_event`` when that column is
       present (trials aligned to pooled event names), otherwise one group ``all``.

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
    group_by : str or array_like, optional
        How to group trials in the mean ± SEM panel: a per-trial column of ``trials`` (any
        obs column: ``subject``, ``session``, ...) or one label per trial.
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
        If ``processed`` lacks ``signal`` or the processed variable, ``trials`` lacks
        the processed variable or the ``group_by`` column, or ``group_by`` labels are not
        one per trial.
    TypeError
        If ``max_points`` is not an integer.

    See Also
    --------
    envelope : the decimation.
    trial_labels : the trial types to group by.

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
    fig = _dashboard(processed, trials, group_by=group_by, title=title, max_points=max_points)
    n_bytes = _write_figure(fig, path, fmt, storage_options)
    logger.debug("dashboard %s: wrote %d bytes", path, n_bytes)


def _dashboard(
    processed: xr.Dataset,
    trials: xr.Dataset | None,
    *,
    group_by: str | npt.ArrayLike | None = None,
    title: str | None = None,
    max_points: int = 4000,
) -> Figure:
    """The figure of :func:`dashboard`, not written."""
    if isinstance(max_points, bool) or not isinstance(max_points, int | np.integer):
        raise TypeError(f"max_points must be an int, got {max_points!r}.")
    if max_points < 4:
        raise ValueError(f"max_points must be at least 4, got {max_points}.")
    n_bins = int(max_points) // 2
    name = str(processed.attrs.get("source", processed.attrs.get("experiment_id", "recording")))
    variable = _processed_variable(processed, name)
    if "signal" not in processed.data_vars:
        raise InputError(
            f"dashboard of {name!r}: the processed dataset has no 'signal' variable "
            f"(it has {sorted(map(str, processed.data_vars))})."
        )
    time = np.asarray(processed["time"].values, dtype=np.float64)

    # plan every array to materialise, so lazy inputs are computed in one pass
    channels = [c for c in ("signal", "isosbestic", "reference") if c in processed.data_vars]
    plan = _plan_recording(processed, variable, channels, time, n_bins)
    rel_time: FloatArray | None = None
    n_trials: int | None = None
    column = group_by if isinstance(group_by, str) else None
    if trials is not None:
        rel_time, n_trials = _plan_trials(plan, trials, variable, name, column)
    data = _resolve(plan)
    event_times: FloatArray = data.get("event_time", np.empty(0)).astype(np.float64)
    event_names: npt.NDArray[np.str_] = data.get("event_name", np.empty(0)).astype(str)
    matrix: FloatArray | None = data.get("trials")
    show_trials = matrix is not None and matrix.shape[0] > 0 and matrix.shape[1] > 1
    if group_by is None or column is not None:
        labels = data.get(f"column:{column or 'align_event'}")
        group_name = column or ("align_event" if labels is not None else "")
    else:
        labels, group_name = np.asarray(group_by), "trial type"
        if n_trials is not None and labels.shape != (n_trials,):
            raise InputError(
                f"dashboard of {name!r}: group_by has {labels.size} labels for {n_trials} "
                "trials; expected one label per trial."
            )
    logger.debug(
        "dashboard %s: %d samples -> %d bins per trace, %s trials",
        name,
        time.size,
        min(time.size, n_bins),
        n_trials,
    )

    fig, grid = _dashboard_figure(show_trials)
    ax_raw = fig.add_subplot(grid[0, 0])
    ax_proc = fig.add_subplot(grid[1, 0], sharex=ax_raw)
    _draw_channels(ax_raw, data, channels)
    _draw_processed(ax_proc, data["processed"], variable, event_times, event_names, time)
    if show_trials and matrix is not None and rel_time is not None:
        ax_heat = fig.add_subplot(grid[2, 0])
        ax_mean = fig.add_subplot(grid[3, 0], sharex=ax_heat)
        ax_bar = fig.add_subplot(grid[2, 1])
        _draw_heatmap(fig, ax_heat, ax_bar, matrix, rel_time, variable, n_bins)
        _draw_mean_sem(ax_mean, matrix, rel_time, labels, variable, n_bins, group_name)

    if title is None:
        experiment_id = _experiment_id(processed, data.get("column:experiment_id"))
        title = _title(processed, experiment_id, n_trials)
    fig.suptitle(title)
    return fig
