"""The first stage of every kind: the input, whatever its format, becomes the item's Zarr."""

from __future__ import annotations

import logging

import xarray as xr

from neurobatch.engine.rates import check_sampling_rate
from neurobatch.engine.stages.base import Stage, StageContext, StageOutput
from neurobatch.io.loaders import load_recording, recorded_reads

logger = logging.getLogger(__name__)

__all__ = ["INGEST", "read_input"]


def read_input(context: StageContext) -> tuple[xr.Dataset, list[str]]:
    """The item's input, as its format's loader returns it, and the other files it read.

    Lazy formats come back dask-backed, chunked along time (or frames) from
    ``context.chunk_memory`` as the store chunks them. A stage that reads the input itself
    (one that needs no other stage) returns the other files in its
    :attr:`~neurobatch.engine.stages.StageOutput.sources`, so that their fingerprints join
    its key.

    Parameters
    ----------
    context : StageContext
        The item: its URL (or its copy in ``input.cache``), format and loader arguments,
        and the pipeline's storage options.

    Returns
    -------
    recording : xarray.Dataset
        The loaded input (no ``post_load`` hook applied).
    read : list of str
        The URLs of the other files the loader read (sidecars, SpikeGLX's ``.meta``).

    Raises
    ------
    neurobatch.errors.InputError
        What the loader raises, and a sampling rate implausible for the recording's kind
        (:func:`~neurobatch.engine.rates.check_sampling_rate`).
    """
    copy = context.input_copy
    with recorded_reads() as read:
        recording = load_recording(
            context.url if copy is None else copy.path,
            context.loader_arguments,
            format=context.format,
            storage_options=context.storage_options if copy is None else {},
            chunk_memory=context.chunk_memory,
        )
    if copy is not None:  # named by their remote URLs: the same keys and trials as without it
        read = [copy.remote(url) for url in read]
        if recording.attrs.get("source") == copy.path:
            recording.attrs["source"] = context.url
    check_sampling_rate(recording, source=context.url, arguments=context.loader_arguments)
    return recording, read


def _run_ingest(context: StageContext) -> StageOutput:
    logger.info("ingesting %s", context.url)
    recording, read = read_input(context)
    rate = recording.attrs.get("sampling_rate")
    return StageOutput(
        recording,
        record={"input": context.url, "sampling_rate": None if rate is None else float(rate)},
        sources=read,
        # a movie is chunked by frames, which may be large
        chunk_dim="time" if "time" in recording.dims else "frame",
    )


#: Load the input with its format's loader (arguments and sidecars are the item's) and store it.
#: Its parameters are the item's loader format and arguments, which join its input part.
INGEST = Stage(
    "ingest",
    run=_run_ingest,
    process="File format conversion",
    processing_stage="Processing",
    view_hook="post_load",
)
