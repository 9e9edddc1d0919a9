"""The whole pipeline file, and the checks across its sections."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, model_validator
from pydantic_core import InitErrorDetails

from neurobatch.config.base import Kind, NameList, _Model, _problem, _raise_problems, _suggest
from neurobatch.config.cluster import ClusterConfig, LocalClusterConfig
from neurobatch.config.loaders import LOADER_FORMATS, LoaderField
from neurobatch.config.locations import output_reach
from neurobatch.config.sections import (
    EngineConfig,
    EphysFilterConfig,
    HooksConfig,
    InputConfig,
    OutputConfig,
    PreprocessConfig,
    StaConfig,
    StageConfig,
    TrialsConfig,
)

__all__ = ["PipelineConfig", "trial_event_names"]


def trial_event_names(trials: TrialsConfig) -> list[tuple[tuple[str | int, ...], str]]:
    """Every event name the trials section uses, with its field location.

    Parameters
    ----------
    trials : TrialsConfig
        The trials section.

    Returns
    -------
    list of (tuple, str)
        ``(location, name)`` pairs, the location relative to the section, for ``align_to``,
        ``center_on`` and the keys of ``tolerances_s``.

    Examples
    --------
    >>> t = TrialsConfig(align_to="cue", bounds_s=(-1, 1), center_on=["lever"],
    ...                  tolerances_s={"shock": None})
    >>> trial_event_names(t)
    [(('align_to',), 'cue'), (('center_on', 0), 'lever'), (('tolerances_s', 'shock'), 'shock')]
    """
    used: list[tuple[tuple[str | int, ...], str]] = []
    if isinstance(trials.align_to, str):
        used.append((("align_to",), trials.align_to))
    else:
        used.extend((("align_to", i), name) for i, name in enumerate(trials.align_to))
    used.extend((("center_on", i), name) for i, name in enumerate(trials.center_on))
    used.extend((("tolerances_s", name), name) for name in trials.tolerances_s)
    return used


def _event_problems(
    trials: TrialsConfig, mapping: BaseModel, *, where: str, prefix: tuple[str | int, ...]
) -> list[InitErrorDetails]:
    provided = list(mapping.event_names())  # type: ignore[attr-defined]
    problems = []
    for loc, name in trial_event_names(trials):
        if name in provided:
            continue
        message = f"unknown event {name!r}"
        suggestion = _suggest(name, provided)
        if suggestion:
            message += f"; did you mean {suggestion!r}?"
        known = ", ".join(repr(n) for n in provided) if provided else "no events"
        message += f" ({where} provides {known})"
        problems.append(_problem((*prefix, *loc), "unknown_event", message, name))
    return problems


def _target_problem(target: str, mapping: BaseModel, *, where: str) -> InitErrorDetails | None:
    fmt = str(mapping.format)  # type: ignore[attr-defined]
    wanted = LOADER_FORMATS[fmt].target
    if wanted == target:
        return None
    return _problem(
        ("input", "target"),
        "target_mismatch",
        f"{target!r}, but {where} format {fmt!r} reads {wanted}s; set target: {wanted}",
        target,
    )


def _mappings(loader: Any) -> list[tuple[str, BaseModel]]:
    if isinstance(loader, str):
        return []
    if isinstance(loader, list):
        return [(f"loader[{i}]", m) for i, m in enumerate(loader)]
    return [("the loader", loader)]


class PipelineConfig(_Model):
    """A whole pipeline file.

    Examples
    --------
    >>> config = PipelineConfig.model_validate({
    ...     "name": "demo",
    ...     "input": {"url": "data", "pattern": "*.csv"},
    ...     "loader": {"format": "photometry-csv"},
    ...     "preprocess": {"fit": "ols"},
    ...     "output": {"url": "out"},
    ... })
    >>> config.preprocess.fit.method, config.trials is None
    ('ols', True)
    """

    name: str = Field(min_length=1)
    """The pipeline's name (in provenance and summaries)."""
    kind: Kind = "photometry"
    """What it does: ``photometry`` (preprocess and trials, per item), ``filter`` (ephys
    filtering of recordings larger than memory), ``sta`` (spike-triggered averages over
    a stimulus movie) or ``custom`` (ingest, then the file's own ``stages``)."""
    experimenters: list[str] = Field(default_factory=list)
    """Who ran it (in provenance)."""
    input: InputConfig
    """Where the inputs are."""
    loader: LoaderField
    """A mapping with ``format`` (one job per input), a list of them (several jobs per
    input), or a ``module:function`` resolver called with each input URL."""
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    """Filtering, isosbestic fit, correction and normalisation."""
    trials: TrialsConfig | None = None
    """Trial extraction; absent for none."""
    passdown_metadata: NameList = Field(default_factory=list)
    """Metadata keys copied into per-trial columns."""
    filter: EphysFilterConfig | None = None
    """Settings of a ``filter`` pipeline."""
    sta: StaConfig | None = None
    """Settings of an ``sta`` pipeline."""
    hooks: HooksConfig = Field(default_factory=HooksConfig)
    """User functions run at fixed points."""
    stages: list[StageConfig] = Field(default_factory=list)
    """Stages of the user's own, run after the kind's on every item."""
    output: OutputConfig
    """Where results go."""
    cluster: ClusterConfig = Field(default_factory=LocalClusterConfig)
    """The Dask cluster."""
    engine: EngineConfig = Field(default_factory=EngineConfig)
    """Scheduling of items."""

    @model_validator(mode="after")
    def _cross_checks(self) -> PipelineConfig:
        problems: list[InitErrorDetails] = []
        labels: dict[str, int] = {}
        for i, (where, mapping) in enumerate(_mappings(self.loader)):
            label = getattr(mapping, "label", None)
            if isinstance(self.loader, list) and label is not None:
                if label in labels:
                    problems.append(
                        _problem(
                            ("loader", i, "label"),
                            "duplicate_label",
                            f"{label!r} is also loader[{labels[label]}]'s label; the jobs of "
                            "one input need different labels",
                            label,
                        )
                    )
                labels.setdefault(label, i)
            target = _target_problem(self.input.target, mapping, where=where)
            if target is not None:
                problems.append(target)
            if self.trials is not None:
                problems.extend(
                    _event_problems(self.trials, mapping, where=where, prefix=("trials",))
                )
        problems.extend(self._kind_problems())
        problems.extend(self._output_problems())
        _raise_problems("PipelineConfig", problems)
        return self

    def _output_problems(self) -> list[InitErrorDetails]:
        """The output folder must lie where the input's search does not reach."""
        how = output_reach(
            self.input.url,
            self.output.url,
            pattern=self.input.pattern,
            recursive=self.input.recursive,
            target=self.input.target,
            input_options=self.input.storage_options,
            output_options=self.output.storage_options,
        )
        if how is None:
            return []
        message = (
            f"{self.output.url!r} {how}: the next run would take its files as inputs; "
            "expected an output folder outside the input folder (put output.url elsewhere)"
        )
        return [_problem(("output", "url"), "output_inside_input", message, self.output.url)]

    def _kind_problems(self) -> list[InitErrorDetails]:
        """Each kind needs its own section and takes no other kind's."""
        problems = []
        own = {"photometry": "trials", "filter": "filter", "sta": "sta"}
        for kind, section in own.items():
            present = getattr(self, section) is not None
            if kind == self.kind and section != "trials" and not present:
                problems.append(
                    _problem(
                        (section,),
                        "missing_section",
                        f"a {kind} pipeline needs a {section} section",
                        None,
                    )
                )
            if kind != self.kind and present:
                problems.append(
                    _problem(
                        (section,),
                        "other_kind",
                        f"only for kind {kind}; this pipeline's kind is {self.kind}",
                        section,
                    )
                )
        if self.kind == "custom" and not self.stages:
            problems.append(
                _problem(
                    ("stages",),
                    "missing_section",
                    "a custom pipeline needs stages of its own after ingest",
                    None,
                )
            )
        return problems
