"""Per-unit spike-triggered averages, lag by lag (:func:`sta_grid`), and collapsed STRFs."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
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
)

__all__ = ["sta_grid", "strf"]

logger = logging.getLogger(__name__)

#: Largest figure side, inches: panels shrink beyond it.
_MAX_FIGURE_IN = 18.0
_STA_CMAP = "RdBu_r"
#: Inches above the STRF panels: the figure title, then the first row's panel titles.
_STRF_HEADER_IN = 0.95


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
    fmt = _figure_format(path)
    fig = _sta_grid(sta, units=units, max_units=max_units, title=title)
    n_bytes = _write_figure(fig, path, fmt, storage_options)
    logger.debug("sta grid %s: %d bytes", path, n_bytes)


def _sta_grid(
    sta: xr.Dataset | xr.DataArray,
    *,
    units: Sequence[Any] | None = None,
    max_units: int = 16,
    title: str | None = None,
) -> Figure:
    """The figure of :func:`sta_grid`, not written."""
    function = "sta_grid"
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
    logger.debug("sta grid: %d units x %d lags", n_rows, n_lags)
    return fig


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
    fmt = _figure_format(path)
    fig = _strf(strf, units=units, max_units=max_units, n_cols=n_cols, title=title)
    n_bytes = _write_figure(fig, path, fmt, storage_options)
    logger.debug("strf %s: %d bytes", path, n_bytes)


def _strf(
    strf: xr.Dataset | xr.DataArray,
    *,
    units: Sequence[Any] | None = None,
    max_units: int = 36,
    n_cols: int | None = None,
    title: str | None = None,
) -> Figure:
    """The figure of :func:`strf`, not written."""
    function = "strf"
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
        figsize=(
            0.4 + panel * n_cols,
            _STRF_HEADER_IN + 0.1 + (panel * ny / max(nx, 1) + 0.45) * n_rows,
        ),
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
    height = fig.get_figheight()
    # the figure title in the top 0.4 in, the first row's two-line panel titles below it
    fig.suptitle(title, y=1.0 - 0.08 / height, va="top")
    fig.subplots_adjust(
        left=0.02,
        right=0.98,
        bottom=0.1 / height,
        top=1.0 - _STRF_HEADER_IN / height,
        wspace=0.08,
        hspace=0.45,
    )
    logger.debug("strf: %d units", n)
    return fig
