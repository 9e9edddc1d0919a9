"""The first stage of every kind: the input, whatever its format, becomes the item's Zarr."""

from __future__ import annotations

import logging

from neurobatch.engine.stages.base import Stage, StageContext, StageOutput
from neurobatch.io.loaders import load_recording, recorded_reads

logger = logging.getLogger(__name__)

__all__ = ["INGEST"]


def _run_ingest(context: StageContext) -> StageOutput:
    logger.info("ingesting %s", context.url)
    with recorded_reads() as read:
        recording = load_recording(
            context.url,
            context.loader_arguments,
            format=context.format,
            storage_options=context.config.input.storage_options,
            chunk_memory=context.chunk_memory,
        )
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
