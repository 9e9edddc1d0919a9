"""The NWB export of a photometry item (``output.formats: [nwb]``), as a stage after trials.

:data:`NWB_EXPORT` writes ``OUT/nwb/<item>.nwb`` (:mod:`neurobatch.io.nwb_export`) from the
item's ingested recording, its preprocessed recording and its trials. Being a stage, it is
keyed, skipped when its inputs and parameters have not changed, redone when they have, run
on the workers in parallel, and recorded in provenance; a failure fails its item in one
line, as any stage's. An item without trials (its alignment event never kept a window) has
no trials stored and so no NWB file.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import fsspec

from neurobatch.config import PipelineConfig
from neurobatch.engine.layout import OutputLayout
from neurobatch.engine.stages.base import Stage, StageContext, StageOutput
from neurobatch.io.nwb_export import NWB_SUFFIX, item_nwbfile, write_nwb

logger = logging.getLogger(__name__)

__all__ = ["NWB_EXPORT", "nwb_url"]


def nwb_url(config: PipelineConfig, item_id: str) -> str:
    """Where an item's NWB file goes: ``OUT/nwb/<item>.nwb``.

    Parameters
    ----------
    config : neurobatch.config.PipelineConfig
        The pipeline file.
    item_id : str
        The item.

    Returns
    -------
    str

    Examples
    --------
    >>> config = PipelineConfig.model_validate({"name": "p", "input": {"url": "d"},
    ...     "loader": {"format": "photometry-csv"}, "output": {"url": "s3://lab/out"}})
    >>> nwb_url(config, "experiment_001")
    's3://lab/out/nwb/experiment_001.nwb'
    """
    layout = OutputLayout(config.output.url, config.output.storage_options)
    return layout.path("nwb", item_id + NWB_SUFFIX)


def _modified(context: StageContext) -> dt.datetime | None:
    """The input's modification time, the session start when the metadata has none."""
    try:
        fs, path = fsspec.core.url_to_fs(context.url, **context.storage_options)
        info = fs.info(path)
    except (OSError, ValueError):
        return None
    for key in ("mtime", "LastModified", "last_modified", "created"):
        value = info.get(key)
        if isinstance(value, dt.datetime):
            return value
        if isinstance(value, int | float):
            return dt.datetime.fromtimestamp(float(value), tz=dt.UTC)
    return None


def _run_export(context: StageContext) -> StageOutput:
    config = context.config
    url = nwb_url(config, context.item_id)
    recording = context.inputs["ingest"]
    fallback = None
    if "session_start_time" not in recording.attrs:
        fallback = _modified(context)
        logger.warning(
            "the recording's metadata has no session_start_time; the NWB file's session starts "
            "at the input's modification time, %s (set session_start_time in the sidecar)",
            "unknown" if fallback is None else fallback.isoformat(),
        )
    nwbfile = item_nwbfile(
        recording=recording,
        processed=context.inputs["preprocess"],
        trials=context.inputs["trials"],
        item_id=context.item_id,
        experiment_id=context.experiment_id(),
        pipeline=config.name,
        align_to=None if config.trials is None else config.trials.align_to,
        experimenters=config.experimenters,
        session_start_fallback=fallback,
    )
    write_nwb(nwbfile, url, storage_options=config.output.storage_options)
    logger.info("NWB file %s", url)
    record: dict[str, Any] = {
        "nwb": url,
        "session_start_time": nwbfile.session_start_time.isoformat(),
    }
    return StageOutput(None, record=record)


def _export_parameters(config: PipelineConfig) -> dict[str, Any]:
    return {"pipeline": config.name, "experimenters": list(config.experimenters)}


def _exports_nwb(config: PipelineConfig) -> bool:
    return "nwb" in config.output.formats


#: Write the item's NWB file: after trials, when ``output.formats`` has ``nwb``.
NWB_EXPORT = Stage(
    "nwb",
    run=_run_export,
    needs=("ingest", "preprocess", "trials"),
    parameters=_export_parameters,
    process="File format conversion",
    processing_stage="Analysis",
    enabled=_exports_nwb,
)
