"""The filter kind, for raw ephys recordings larger than memory.

The filter stage reads the raw recording itself, lazily through its loader, and stores only
the filtered traces: no copy of the raw samples is written. With ``filter.copy_raw: true``
the kind is ingest -> filter instead: the raw recording is first stored in the item's group
(its ``ingest`` stage), for stages of the user's own that need it, and the filter reads that
copy. Both give the same filtered traces.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from neurobatch.chunking import chunk_length, row_bytes
from neurobatch.config import EphysFilterConfig, PipelineConfig
from neurobatch.engine import blocked
from neurobatch.engine.hooks import apply_hook
from neurobatch.engine.stages.base import FigureContext, Stage, StageContext, StageOutput
from neurobatch.engine.stages.base import source_of as _source
from neurobatch.engine.stages.ingest import INGEST, read_input
from neurobatch.errors import InputError
from neurobatch.kernels import filters

logger = logging.getLogger(__name__)

__all__ = [
    "FILTER",
    "FILTER_FROM_COPY",
    "RAW_COPY",
    "WORK_MEMORY",
    "copies_raw",
    "filter_traces",
]

#: The most bytes of one float64 copy of a filter task's block, its overlap included. The
#: kernel makes a few such copies: smaller ones stay nearer the caches (and, under glibc's
#: default dynamic mmap threshold, up to 32 MiB, malloc reuses them instead of mapping them
#: afresh, every page faulting). Filtering 64 channels x 60 s at 30 kHz (median reference)
#: into 32 MiB chunks on one thread (AMD EPYC, 32 MiB of L3), in CPU-s: blocks of one chunk
#: (65 MB of float64) 6.6-6.9 with Dask workers' malloc settings (a fixed trim threshold:
#: every large array mapped afresh), 6.1-6.4 with glibc's defaults; blocks of 16 MiB that
#: the write joins 5.5-6.1 and 4.5-4.8.
WORK_MEMORY = 16 * 2**20

#: A block is never cut shorter than this many overlap depths (the overlap is filtered by
#: both blocks beside it): at most 1/8 of the work is overlap.
_MIN_DEPTHS = 16


def filter_traces(
    recording: xr.Dataset,
    params: EphysFilterConfig,
    *,
    chunk_memory: int | None = None,
    work_memory: int = WORK_MEMORY,
) -> xr.Dataset:
    """Zero-phase filter every channel of an ephys recording, lazily, in µV.

    One task per output block (:func:`neurobatch.engine.blocked.zero_phase_filter`) reads
    the raw ``traces(time, channel)`` (integers, say) around the block, converts them to
    float64 and, when the recording has ``gain_uv``, microvolts; with ``common_reference:
    median`` subtracts the median over channels from every sample; filters each channel
    with a zero-phase Butterworth filter (equal to ``sosfiltfilt`` on the whole array to
    about 1e-12 relative); and casts to ``params.dtype``. No conversion or scaling runs as
    a task of its own. Channels stay whole in every block, so memory is a few blocks per
    task, whatever the recording's length.

    Parameters
    ----------
    recording : xarray.Dataset
        ``traces(time, channel)`` chunked along ``time`` only, and ``sampling_rate``.
    params : neurobatch.config.EphysFilterConfig
        Type, cutoff(s), order, common reference and the stored dtype.
    chunk_memory : int, optional
        The memory budget of one stored chunk, as
        :func:`neurobatch.io.zarr.write_dataset` takes it (``chunk_memory`` bytes of
        filtered traces and time stamps). The output's blocks tile the store's chunks: each
        chunk is cut into equal blocks of at most ``work_memory``, which the write joins
        back. By default the blocks tile the raw chunks.
    work_memory : int, default :data:`WORK_MEMORY`
        The most bytes of one float64 copy of a block with its overlap (a task holds about
        two, its raw chunks and its result), unless that would cut blocks shorter than 16
        times the overlap depth.

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
    stored: tuple[int, ...] = x.chunks[0]
    if chunk_memory is not None:
        # the output's rows as the store counts them: the filtered traces and the time stamps
        filtered_row = xr.Variable(("time", "channel"), np.empty((0, x.shape[1]), params.dtype))
        length = chunk_length(
            chunk_memory, bytes_per_sample=row_bytes([filtered_row, *coords.values()])
        )
        full, rest = divmod(x.shape[0], length)
        stored = (length,) * full + ((rest,) if rest else ())
    gain = recording.attrs.get("gain_uv")
    sos = filters.butter_sos(params.type, params.cutoff_hz, fs=fs, order=params.order)
    depth = filters.overlap_depth(sos)
    rows = max(work_memory // (8 * max(1, x.shape[1])) - 2 * depth, _MIN_DEPTHS * depth)
    chunks = _tiles(stored, rows)
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
            "filter": json.dumps(_settings(params)),
        },
    )
    out.attrs.pop("gain_uv", None)
    return out


def _tiles(chunks: tuple[int, ...], rows: int) -> tuple[int, ...]:
    """Each chunk cut into the fewest equal blocks (within one row) of at most ``rows``.

    Examples
    --------
    >>> _tiles((10, 10, 3), 4)
    (4, 3, 3, 4, 3, 3, 3)
    """
    blocks: list[int] = []
    for chunk in chunks:
        parts = max(1, -(-chunk // rows))
        size, extra = divmod(chunk, parts)
        blocks += [size + 1] * extra + [size] * (parts - extra)
    return tuple(blocks)


def _settings(params: EphysFilterConfig) -> dict[str, Any]:
    """What the filtered traces depend on in the ``filter`` section (whether the raw
    recording is also copied does not change them)."""
    return params.model_dump(mode="json", exclude={"copy_raw"})


def copies_raw(config: PipelineConfig) -> bool:
    """Whether a ``filter`` pipeline stores a copy of the raw recording before filtering.

    Only with ``filter.copy_raw: true``: by default the filter stage reads the input itself.

    Examples
    --------
    >>> config = PipelineConfig.model_validate({"name": "f", "kind": "filter",
    ...     "input": {"url": "d"}, "loader": {"format": "spikeglx"}, "output": {"url": "o"},
    ...     "filter": {"copy_raw": True}})
    >>> copies_raw(config)
    True
    """
    return config.filter is not None and config.filter.copy_raw


def _reads_input(config: PipelineConfig) -> bool:
    return not copies_raw(config)


def _run_filter(context: StageContext) -> StageOutput:
    params = context.config.filter
    assert params is not None  # the config's cross-checks say so for kind filter
    record: dict[str, Any] = {}
    sources: list[str] = []
    if "ingest" in context.inputs:
        recording = context.inputs["ingest"]
    else:  # no copy of the raw recording: read the input, lazily, as ingest would
        logger.info("reading %s", context.url)
        recording, sources = read_input(context)
        recording = apply_hook(context.hooks, "post_load", recording)
        # what the figure needs to read the raw traces again, and the item's experiment id
        # (which would otherwise be built from the stored copy)
        rate = recording.attrs.get("sampling_rate")
        record = {
            "input": context.url,
            "format": context.format,
            "loader_arguments": context.loader_arguments,
            "sampling_rate": None if rate is None else float(rate),
        }
        id_builder = context.hooks.get("id_builder")
        if id_builder is not None:
            record["experiment_id"] = str(id_builder(recording))
    logger.info(
        "filtering %d channels x %d samples at %g Hz",
        recording.sizes.get("channel", 1),
        recording.sizes["time"],
        recording.attrs.get("sampling_rate", float("nan")),
    )
    filtered = filter_traces(recording, params, chunk_memory=context.chunk_memory)
    record["shape"] = list(filtered["traces"].shape)
    return StageOutput(filtered, record=record, sources=sources)


def _filter_parameters(config: PipelineConfig) -> dict[str, Any]:
    return {"filter": None if config.filter is None else _settings(config.filter)}


#: Zero-phase band-pass (or low/high-pass) of every channel, with an optional median reference.
#: It reads the raw recording itself (it needs no stage, so its key has the input part:
#: the input's fingerprint, format and loader arguments, and the ``.meta``'s fingerprint).
FILTER = Stage(
    "filter",
    run=_run_filter,
    parameters=_filter_parameters,
    hooks=("post_load", "id_builder"),
    chunk_dim="time",
    process="Ephys preprocessing",
    processing_stage="Processing",
    enabled=_reads_input,
)

#: With ``filter.copy_raw: true``: the raw recording stored first (the ingest stage) ...
RAW_COPY = replace(INGEST, enabled=copies_raw)
#: ... and the filter reading that copy.
FILTER_FROM_COPY = replace(FILTER, needs=("ingest",), hooks=("post_load",), enabled=copies_raw)


def figures(context: FigureContext) -> None:
    """Raw against filtered traces over the first ``filter.snippet_s`` seconds.

    The raw traces come from the stored copy when there is one; otherwise from the input
    (only the window drawn is read), as its loader returns them, before ``post_load``.
    """
    from neurobatch import plots  # matplotlib: imported only when figures are asked for
    from neurobatch.io.loaders import load_recording

    filtered = context.open("filter")
    params = context.config.filter
    assert filtered is not None and params is not None
    if copies_raw(context.config):
        raw = context.open("ingest")
        assert raw is not None
    else:
        read = context.records["filter"]
        raw = load_recording(
            read["input"],
            read["loader_arguments"],
            format=read["format"],
            storage_options=context.storage_options,
        )
        if "channel" in raw.coords and "channel" in filtered.coords:
            raw = raw.sel(channel=filtered["channel"].values)  # those post_load kept
    path = context.path("")
    so = context.config.output.storage_options
    plots.trace_snippet(raw, filtered, path, seconds=params.snippet_s, storage_options=so)
    logger.info("filtered-trace figure written to %s", path)
