"""Stages as objects, and the kinds of pipeline as lists of them.

A :class:`Stage` is the engine's unit of work (:mod:`.base`); a :class:`Kind` is a list of
stages with what to draw of an item. The built-in kinds:

- ``photometry``: ingest -> preprocess -> trials (:mod:`.photometry`);
- ``filter``: filter, which reads the raw recording itself; ingest -> filter with
  ``filter.copy_raw: true`` (:mod:`.ephys`);
- ``sta``: ingest -> sta (:mod:`.sta`);
- ``custom``: ingest, then the user's own stages.

A user's stages (:func:`stage`, or ``stages:`` in the pipeline file) follow a kind's;
:func:`pipeline_stages` puts them together and checks what each needs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

from neurobatch.config import PipelineConfig, resolve_object
from neurobatch.engine.stages import ephys, photometry, sta
from neurobatch.engine.stages.base import (
    FigureContext,
    Kind,
    Stage,
    StageContext,
    StageOutput,
    code_hash,
    key_parts,
    stage,
    stale_reason,
)
from neurobatch.engine.stages.ephys import FILTER, FILTER_FROM_COPY, RAW_COPY, filter_traces
from neurobatch.engine.stages.ingest import INGEST
from neurobatch.engine.stages.nwb import NWB_EXPORT
from neurobatch.engine.stages.photometry import (
    CHANNELS,
    PREPROCESS,
    PROCESSED_VARIABLE,
    TRIALS,
    correct,
    cut_trials,
    events_of,
    filter_channels,
    fit_reference,
    preprocess,
)
from neurobatch.engine.stages.sta import STA, spike_triggered_average
from neurobatch.errors import ConfigError

__all__ = [
    "CHANNELS",
    "KINDS",
    "PROCESSED_VARIABLE",
    "FigureContext",
    "Kind",
    "Stage",
    "StageContext",
    "StageOutput",
    "code_hash",
    "correct",
    "cut_trials",
    "events_of",
    "filter_channels",
    "filter_traces",
    "fit_reference",
    "key_parts",
    "pipeline_stages",
    "preprocess",
    "spike_triggered_average",
    "stage",
    "stale_reason",
]

#: The built-in kinds of pipeline.
KINDS = {
    "photometry": Kind(
        "photometry",
        (INGEST, PREPROCESS, TRIALS),
        figures=photometry.figures,
        trials="trials",
    ),
    "filter": Kind(
        "filter", (RAW_COPY, FILTER_FROM_COPY, FILTER), on_cluster=True, figures=ephys.figures
    ),
    "sta": Kind("sta", (INGEST, STA), on_cluster=True, figures=sta.figures),
    "custom": Kind("custom", (INGEST,)),
}


def pipeline_stages(config: PipelineConfig, extra: Iterable[Stage] = ()) -> list[Stage]:
    """The stages a pipeline file runs on each item, in order.

    The kind's built-in stages (those its file enables), then the file's ``stages:``, then
    ``extra`` (stages given from Python), then the NWB export when ``output.formats`` asks
    for ``nwb``. A user's stage that names no ``needs`` takes the output of the stage
    before it.

    Parameters
    ----------
    config : neurobatch.config.PipelineConfig
        The pipeline file.
    extra : iterable of Stage, optional
        More stages, after the file's.

    Returns
    -------
    list of Stage

    Raises
    ------
    neurobatch.errors.ConfigError
        If two stages share a name, or a stage needs one that does not run before it.

    Examples
    --------
    >>> config = PipelineConfig.model_validate({"name": "s", "input": {"url": "d"},
    ...     "loader": {"format": "photometry-csv", "event_cols": ["cue"]},
    ...     "output": {"url": "o"}, "trials": {"align_to": "cue", "bounds_s": [-1, 1]}})
    >>> [s.name for s in pipeline_stages(config)]
    ['ingest', 'preprocess', 'trials']
    >>> late = stage(lambda processed: None, name="late", needs=["nothing"])
    >>> pipeline_stages(config, [late])
    Traceback (most recent call last):
    ...
    neurobatch.errors.ConfigError: stage 'late' needs 'nothing', which does not run before it; expected one of ingest, preprocess, trials
    """
    stages = [s for s in KINDS[config.kind].stages if s.enabled(config)]
    for section in config.stages:
        function = resolve_object(section.run)
        stages.append(
            stage(function, name=section.name, needs=section.needs, params=section.params)
        )
    stages.extend(extra)
    # a user's stage that names no needs takes the output of the stage before it
    stages = [
        replace(each, needs=(stages[i - 1].name,))
        if each.function is not None and not each.needs and i
        else each
        for i, each in enumerate(stages)
    ]
    # the NWB export goes last: it stores nothing a stage without needs could take
    if config.kind == "photometry" and NWB_EXPORT.enabled(config):
        stages.append(NWB_EXPORT)
    _check_order(stages, config)
    return stages


def _check_order(stages: Sequence[Stage], config: PipelineConfig) -> None:
    seen: list[str] = []
    for each in stages:
        if each.name in seen:
            raise ConfigError(
                f"two stages are named {each.name!r}; expected a name of its own for each "
                f"(taken: {', '.join(seen)})"
            )
        for need in each.needs:
            if need not in seen:
                # the filter kind stores the raw recording (its ingest) only when asked to
                hint = (
                    "; a filter pipeline stores the raw recording as 'ingest' only with "
                    "filter.copy_raw: true"
                    if need == "ingest" and config.kind == "filter"
                    else ""
                )
                raise ConfigError(
                    f"stage {each.name!r} needs {need!r}, which does not run before it; "
                    f"expected one of {', '.join(seen)}{hint}"
                )
        seen.append(each.name)
