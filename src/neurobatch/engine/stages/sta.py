"""The sta kind: ingest -> sta, every unit's spike-triggered average over a stimulus movie."""

from __future__ import annotations

import itertools
import logging
import warnings
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
from distributed import futures_of

from neurobatch.config import PipelineConfig, StaConfig
from neurobatch.engine import blocked
from neurobatch.engine.stages.base import FigureContext, Stage, StageContext, StageOutput
from neurobatch.engine.stages.base import source_of as _source
from neurobatch.errors import EmptyUnitWarning, InputError

logger = logging.getLogger(__name__)

__all__ = ["STA", "spike_triggered_average"]

#: The per-unit spike counts kept in the stage's record.
COUNTS = ("n_spikes", "n_before", "n_after", "n_too_early")


def spike_triggered_average(movie: xr.Dataset, params: StaConfig) -> xr.Dataset:
    """Every unit's spike-triggered average over the stimulus movie, lazily.

    A tree reduction of per-block products of spike counts and frames
    (:func:`neurobatch.engine.blocked.blocked_sta`), never a loop over spikes: memory per
    task is one block of frames and one partial sum, whatever the movie's length. A spike
    at time ``t`` falls in frame ``N = floor((t - onset) * fps)``; spikes before the movie,
    after it, or too early for the whole window are excluded and counted per unit.

    Parameters
    ----------
    movie : xarray.Dataset
        A Movie: ``frames(frame, y, x)`` chunked along ``frame``, ``spike_time(spike)`` with
        coordinate ``unit(spike)``, optionally ``unit_ids(unit)`` (to keep units without
        spikes), and attrs ``fps`` and ``stimulus_onset``.
    params : neurobatch.config.StaConfig
        ``n_lags``, ``delay_frames`` for the collapsed STRF, optional ``units``.

    Returns
    -------
    xarray.Dataset
        ``sta(unit, lag, y, x)`` (float64, NaN for a unit without usable spikes; lazy),
        ``strf(unit, y, x)`` the mean of lags ``0 .. delay_frames - 1``, and per unit
        ``n_spikes`` (used), ``n_before``, ``n_after``, ``n_too_early``; coordinates ``lag``
        (frames) and ``lag_time`` (seconds).

    Warns
    -----
    neurobatch.errors.EmptyUnitWarning
        Naming each unit without a usable spike.

    Examples
    --------
    >>> from neurobatch.config import StaConfig
    >>> frames = np.arange(10.0).reshape(10, 1, 1)
    >>> movie = xr.Dataset({"frames": (("frame", "y", "x"), frames),
    ...                     "spike_time": ("spike", [0.55, 0.75, 0.05])},
    ...                    coords={"unit": ("spike", [1, 1, 1])},
    ...                    attrs={"fps": 10.0, "stimulus_onset": 0.0}).chunk(frame=4)
    >>> out = spike_triggered_average(movie, StaConfig(n_lags=3, delay_frames=2))
    >>> out.sta.values[0, :, 0, 0].tolist(), out.strf.values[0, 0, 0].item()
    ([6.0, 5.0, 4.0], 5.5)
    >>> out.n_spikes.values.tolist(), out.n_too_early.values.tolist()
    ([2], [1])
    """
    missing = [name for name in ("frames", "spike_time") if name not in movie]
    missing += [name for name in ("fps",) if name not in movie.attrs]
    if missing:
        raise InputError(
            f"{_source(movie)}: no {', '.join(missing)}; expected a movie with "
            "frames(frame, y, x), spike_time(spike) with unit(spike), and the fps attribute"
        )
    frames = movie["frames"].transpose("frame", "y", "x")
    data = frames.data if isinstance(frames.data, da.Array) else da.from_array(frames.values)
    names = ["spike_time", "unit"]
    if params.units is None and "unit_ids" in movie:
        names.append("unit_ids")
    spikes = _read_spikes([movie[name].data for name in names])
    unit_ids: Any = params.units if len(spikes) == 2 else spikes[2]
    fps = float(movie.attrs["fps"])
    onset = float(movie.attrs.get("stimulus_onset", 0.0))
    try:
        result = blocked.blocked_sta(
            data,
            np.asarray(spikes[0]),
            np.asarray(spikes[1]),
            fps=fps,
            n_lags=params.n_lags,
            onset=onset,
            unit_ids=unit_ids,
        )
    except ValueError as error:
        raise InputError(f"{_source(movie)}: {error}") from None
    bins = result.bins
    delay = params.delay_frames or params.n_lags
    sta = xr.DataArray(
        result.sta,
        dims=("unit", "lag", "y", "x"),
        coords={"unit": bins.unit_ids, "lag": bins.lags, "lag_time": ("lag", bins.lag_times)},
    )
    return xr.Dataset(
        {
            "sta": sta,
            "strf": sta.isel(lag=slice(0, delay)).mean("lag"),
            "n_spikes": ("unit", bins.n_used),
            "n_before": ("unit", bins.n_before),
            "n_after": ("unit", bins.n_after),
            "n_too_early": ("unit", bins.n_too_early),
        },
        attrs={
            "source": _source(movie),
            "fps": fps,
            "stimulus_onset": onset,
            "n_lags": params.n_lags,
            "delay_frames": delay,
        },
    )


def _read_spikes(arrays: list[Any]) -> list[Any]:
    """The spike arrays, computed here for the binning.

    Read straight from storage: no round trip through a worker, unless they were persisted
    on a cluster. A stored array comes back chunk by chunk (as delayed objects), so that a
    single chunk is not copied once more, as dask copies the only chunk of a computed array
    (two copies of 36 MB for 4.5 M spikes).
    """
    if futures_of(arrays):
        return list(da.compute(*arrays))
    chunks = [x.to_delayed().ravel().tolist() if isinstance(x, da.Array) else [x] for x in arrays]
    read = iter(da.compute(*itertools.chain.from_iterable(chunks), scheduler="sync"))
    return [
        next(read) if len(parts) == 1 else np.concatenate([next(read) for _ in parts])
        for parts in chunks
    ]


def _run_sta(context: StageContext) -> StageOutput:
    movie = context.inputs["ingest"]
    params = context.config.sta
    assert params is not None  # the config's cross-checks say so for kind sta
    logger.info(
        "spike-triggered averages of %d spikes over %d frames, %d lags",
        movie.sizes.get("spike", 0),
        movie.sizes.get("frame", 0),
        params.n_lags,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", EmptyUnitWarning)
        result = spike_triggered_average(movie, params)
    for warning in caught:
        logger.warning("%s", warning.message)
    counts = {name: int(result[name].sum()) for name in COUNTS}
    logger.info(
        "%d units; spikes used %d, excluded %d before the movie, %d after it, %d too early "
        "for the window",
        result.sizes["unit"],
        *counts.values(),
    )
    return StageOutput(result, record={"n_units": result.sizes["unit"], **counts})


def _sta_parameters(config: PipelineConfig) -> dict[str, Any]:
    return {"sta": None if config.sta is None else config.sta.model_dump(mode="json")}


#: Every unit's spike-triggered average and collapsed STRF.
STA = Stage(
    "sta",
    run=_run_sta,
    needs=("ingest",),
    parameters=_sta_parameters,
    hooks=("post_load",),
    chunk_dim="unit",
)


def figures(context: FigureContext) -> None:
    """Every unit's STA over the lags, and the collapsed STRFs."""
    from neurobatch import plots  # matplotlib: imported only when figures are asked for

    result = context.open("sta")
    assert result is not None
    so = context.config.output.storage_options
    plots.sta_grid(result, context.path(".sta"), storage_options=so)
    plots.strf(result["strf"], context.path(".strf"), storage_options=so)
    logger.info("STA and STRF figures written to %s", context.path(".*"))
