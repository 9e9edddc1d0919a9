"""The filter kind: ingest -> filter, for raw ephys recordings larger than memory."""

from __future__ import annotations

import json
import logging
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from neurobatch.chunking import chunk_length, row_bytes
from neurobatch.config import EphysFilterConfig, PipelineConfig
from neurobatch.engine import blocked
from neurobatch.engine.stages.base import FigureContext, Stage, StageContext, StageOutput
from neurobatch.engine.stages.base import source_of as _source
from neurobatch.errors import InputError
from neurobatch.kernels import filters

logger = logging.getLogger(__name__)

__all__ = ["FILTER", "filter_traces"]


def filter_traces(
    recording: xr.Dataset, params: EphysFilterConfig, *, chunk_memory: int | None = None
) -> xr.Dataset:
    """Zero-phase filter every channel of an ephys recording, lazily, in µV.

    One task per output block (:func:`neurobatch.engine.blocked.zero_phase_filter`) reads
    the raw ``traces(time, channel)`` (integers, say) around the block, converts them to
    float64 and, when the recording has ``gain_uv``, microvolts; with ``common_reference:
    median`` subtracts the median over channels from every sample; filters each channel
    with a zero-phase Butterworth filter (equal to ``sosfiltfilt`` on the whole array to
    about 1e-12 relative); and casts to ``params.dtype``. No conversion, scaling or
    rechunking runs as a task of its own. Channels stay whole in every block, so memory is
    a few blocks per task, whatever the recording's length.

    Parameters
    ----------
    recording : xarray.Dataset
        ``traces(time, channel)`` chunked along ``time`` only, and ``sampling_rate``.
    params : neurobatch.config.EphysFilterConfig
        Type, cutoff(s), order, common reference and the stored dtype.
    chunk_memory : int, optional
        The memory budget of one stored chunk, as
        :func:`neurobatch.io.zarr.write_dataset` takes it: the output's blocks are the
        store's chunks (``chunk_memory`` bytes of filtered traces and time stamps), so the
        write stores each block as it is. A task holds about two float64 copies of its
        block (four times ``chunk_memory`` in float32), its raw chunks and its result. By
        default the blocks are the raw chunks.

    Returns
    -------
    xarray.Dataset
        ``traces(time, channel)`` filtered, of ``params.dtype``, attrs ``units="uV"``.

    Raises
    ------
    neurobatch.errors.InputError
        If the recording has no ``traces``, a cutoff is not below the Nyquist frequency, or
        the recording is too short for the filter.

    Examples
    --------
    >>> from neurobatch.config import EphysFilterConfig
    >>> fs = 30_000.0
    >>> t = np.arange(30_000) / fs
    >>> raw = np.stack([np.sin(2 * np.pi * 10 * t) + np.sin(2 * np.pi * 1000 * t)] * 2, axis=1)
    >>> rec = xr.Dataset({"traces": (("time", "channel"), raw)}, coords={"time": t},
    ...                  attrs={"sampling_rate": fs}).chunk(time=8192)
    >>> out = filter_traces(rec, EphysFilterConfig(cutoff_hz=(300.0, 6000.0), dtype="float64"))
    >>> kept = out.traces.isel(time=slice(3000, -3000)).values
    >>> bool(np.abs(kept - raw[3000:-3000] + np.sin(2 * np.pi * 10 * t[3000:-3000])[:, None]).max() < 0.02)
    True
    """
    if "traces" not in recording:
        raise InputError(
            f"{_source(recording)}: no traces(time, channel) variable (variables: "
            f"{', '.join(map(str, recording.data_vars)) or 'none'}); expected an ephys recording"
        )
    fs = float(recording.attrs["sampling_rate"])
    if not max(np.atleast_1d(params.cutoff_hz)) < fs / 2:
        raise InputError(
            f"{_source(recording)}: the filter cutoff {params.cutoff_hz} Hz is not below the "
            f"Nyquist frequency {fs / 2:g} Hz of this recording (sampled at {fs:g} Hz); "
            "expected a lower cutoff_hz"
        )
    traces = recording["traces"].transpose("time", "channel")
    x = traces.data if isinstance(traces.data, da.Array) else da.from_array(traces.values)
    if x.numblocks[1] != 1:
        x = x.rechunk({1: -1})
    coords = {
        name: recording.coords[name] for name in ("time", "channel") if name in recording.coords
    }
    chunks = None
    if chunk_memory is not None:
        # the output's rows as the store counts them: the filtered traces and the time stamps
        filtered_row = xr.Variable(("time", "channel"), np.empty((0, x.shape[1]), params.dtype))
        chunks = min(
            x.shape[0],
            chunk_length(
                chunk_memory, bytes_per_sample=row_bytes([filtered_row, *coords.values()])
            ),
        )
    gain = recording.attrs.get("gain_uv")
    sos = filters.butter_sos(params.type, params.cutoff_hz, fs=fs, order=params.order)
    try:
        filtered = blocked.zero_phase_filter(
            x,
            sos,
            axis=0,
            scale=None if gain is None else float(gain),
            common_reference=params.common_reference,
            dtype=params.dtype,
            chunks=chunks,
        )
    except ValueError as error:
        raise InputError(f"{_source(recording)}: {error}") from None
    out = xr.Dataset(
        {"traces": (("time", "channel"), filtered)},
        coords=coords,
        attrs={
            **recording.attrs,
            "units": "uV" if gain is not None else "raw",
            "filter": json.dumps(params.model_dump(mode="json")),
        },
    )
    out.attrs.pop("gain_uv", None)
    return out


def _run_filter(context: StageContext) -> StageOutput:
    recording = context.inputs["ingest"]
    params = context.config.filter
    assert params is not None  # the config's cross-checks say so for kind filter
    logger.info(
        "filtering %d channels x %d samples at %g Hz",
        recording.sizes.get("channel", 1),
        recording.sizes["time"],
        recording.attrs.get("sampling_rate", float("nan")),
    )
    filtered = filter_traces(recording, params, chunk_memory=context.chunk_memory)
    return StageOutput(filtered, record={"shape": list(filtered["traces"].shape)})


def _filter_parameters(config: PipelineConfig) -> dict[str, Any]:
    return {"filter": None if config.filter is None else config.filter.model_dump(mode="json")}


#: Zero-phase band-pass (or low/high-pass) of every channel, with an optional median reference.
FILTER = Stage(
    "filter",
    run=_run_filter,
    needs=("ingest",),
    parameters=_filter_parameters,
    hooks=("post_load",),
    chunk_dim="time",
    process="Ephys preprocessing",
    processing_stage="Processing",
)


def figures(context: FigureContext) -> None:
    """Raw against filtered traces over the first ``filter.snippet_s`` seconds."""
    from neurobatch import plots  # matplotlib: imported only when figures are asked for

    raw, filtered = context.open("ingest"), context.open("filter")
    params = context.config.filter
    assert raw is not None and filtered is not None and params is not None
    path = context.path("")
    so = context.config.output.storage_options
    plots.trace_snippet(raw, filtered, path, seconds=params.snippet_s, storage_options=so)
    logger.info("filtered-trace figure written to %s", path)
