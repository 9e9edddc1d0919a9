"""The whole pipeline file, and the checks across its sections."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any, TypeAlias, Union

from pydantic import BaseModel, Discriminator, Field, Tag, field_validator, model_validator
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

__all__ = ["PipelineConfig", "SourceConfig", "trial_event_names"]


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


def _target_problem(
    target: str, mapping: BaseModel, *, where: str, at: tuple[str | int, ...]
) -> InitErrorDetails | None:
    fmt = str(mapping.format)  # type: ignore[attr-defined]
    wanted = LOADER_FORMATS[fmt].target
    if wanted == target:
        return None
    return _problem(
        (*at, "target"),
        "target_mismatch",
        f"{target!r}, but {where} format {fmt!r} reads {wanted}s; set target: {wanted}",
        target,
    )


def _mappings(loader: Any, at: str = "loader") -> list[tuple[str, BaseModel]]:
    if loader is None or isinstance(loader, str):
        return []
    if isinstance(loader, list):
        return [(f"{at}[{i}]", m) for i, m in enumerate(loader)]
    return [(f"the {at}" if at == "loader" else at, loader)]


class SourceConfig(InputConfig):
    """One data source of several: ``input`` as a list, each with its own URL, pattern and
    loader; their items merge into one manifest.

    Examples
    --------
    >>> source = SourceConfig.model_validate({
    ...     "name": "rig2", "url": "exports", "files": ["m1.csv", "m2.csv"],
    ...     "loader": {"format": "photometry-csv", "signal_col": "G"}})
    >>> source.name, source.loader.format, source.files
    ('rig2', 'photometry-csv', ['m1.csv', 'm2.csv'])
    """

    name: str = ""
    """A short name, unique among the sources: its items' ids are ``<name>__<id>``, so that
    inputs of the same name in two sources stay apart and a source added later changes no
    other source's ids."""
    loader: LoaderField | None = None
    """The source's loader (a mapping, a list, or a resolver); the pipeline's ``loader`` when
    absent."""

    @field_validator("name")
    @classmethod
    def _usable_in_ids(cls, value: str) -> str:
        if value and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,39}", value):
            raise ValueError(
                f"{value!r} cannot start an item id; expected up to 40 letters, digits, "
                "'_', '.' or '-', starting with a letter or digit"
            )
        return value


def _input_tag(value: Any) -> str:
    return "@list" if isinstance(value, list) else "@mapping"


if TYPE_CHECKING:
    InputField: TypeAlias = InputConfig | list[SourceConfig]
else:
    InputField = Annotated[
        Union[  # noqa: UP007
            Annotated[InputConfig, Tag("@mapping")],
            Annotated[list[SourceConfig], Tag("@list")],
        ],
        Discriminator(_input_tag),
    ]


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
    input: InputField
    """Where the inputs are: one mapping, or a list of sources (:class:`SourceConfig`), each
    with its own URL, pattern and loader."""
    loader: LoaderField | None = None
    """A mapping with ``format`` (one job per input), a list of them (several jobs per
    input), or a ``module:function`` resolver called with each input URL; for a list of
    sources, the loader of those without their own."""
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

    @property
    def sources(self) -> list[SourceConfig]:
        """The data sources, each with its loader: one, unnamed, for an ``input`` mapping.

        Examples
        --------
        >>> config = PipelineConfig.model_validate({
        ...     "name": "demo", "output": {"url": "out"},
        ...     "loader": {"format": "photometry-csv"},
        ...     "input": [{"name": "a", "url": "rig-a"},
        ...               {"name": "b", "url": "rig-b",
        ...                "loader": {"format": "photometry-parquet"}}]})
        >>> [(s.name, s.loader.format) for s in config.sources]
        [('a', 'photometry-csv'), ('b', 'photometry-parquet')]
        """
        if isinstance(self.input, list):
            return [
                source
                if source.loader is not None
                else source.model_copy(update={"loader": self.loader})
                for source in self.input
            ]
        return [SourceConfig.model_validate(self.input.model_dump() | {"loader": self.loader})]

    def source(self, name: str) -> SourceConfig:
        """The source called ``name`` (``""``: the one of an ``input`` mapping).

        Examples
        --------
        >>> config = PipelineConfig.model_validate({
        ...     "name": "demo", "input": {"url": "data"}, "output": {"url": "out"},
        ...     "loader": {"format": "photometry-csv"}})
        >>> config.source("").url
        'data'
        """
        for source in self.sources:
            if source.name == name:
                return source
        known = ", ".join(repr(s.name) for s in self.sources)
        raise KeyError(f"no source {name!r} in the pipeline; its sources: {known}")

    @model_validator(mode="after")
    def _cross_checks(self) -> PipelineConfig:
        problems = self._source_problems()
        listed = isinstance(self.input, list)
        for i, source in enumerate(self.sources):
            at: tuple[str | int, ...] = ("input", i) if listed else ("input",)
            own = isinstance(self.input, list) and self.input[i].loader is not None
            loader_at = (*at, "loader") if own else ("loader",)
            problems.extend(self._loader_problems(source, at, loader_at))
            problems.extend(self._output_problems(source, at))
        problems.extend(self._kind_problems())
        _raise_problems("PipelineConfig", problems)
        return self

    def _source_problems(self) -> list[InitErrorDetails]:
        """A list of sources: each named, each name once, each with a loader."""
        if not isinstance(self.input, list):
            if self.loader is None:
                return [_problem(("loader",), "missing", "Field required", None)]
            return []
        problems: list[InitErrorDetails] = []
        seen: dict[str, int] = {}
        if not self.input:
            problems.append(_problem(("input",), "no_sources", "expected at least one source", []))
        for i, source in enumerate(self.input):
            if not source.name:
                message = "a source of a list needs a name (its items' ids start with it)"
                problems.append(_problem(("input", i, "name"), "missing_name", message, None))
            elif source.name in seen:
                message = f"{source.name!r} is also input[{seen[source.name]}]'s name"
                problems.append(_problem(("input", i, "name"), "duplicate", message, source.name))
            seen.setdefault(source.name, i)
            if source.loader is None and self.loader is None:
                message = "no loader: give this source one, or the pipeline a loader"
                problems.append(_problem(("input", i, "loader"), "missing_loader", message, None))
        return problems

    def _loader_problems(
        self, source: SourceConfig, at: tuple[str | int, ...], location: tuple[str | int, ...]
    ) -> list[InitErrorDetails]:
        """Labels, targets and events of one source's loader mappings (``location``: where
        its loader is in the file)."""
        problems: list[InitErrorDetails] = []
        name = ".".join(f"[{p}]" if isinstance(p, int) else p for p in location)
        name = name.replace(".[", "[")
        labels: dict[str, int] = {}
        for i, (where, mapping) in enumerate(_mappings(source.loader, name)):
            label = getattr(mapping, "label", None)
            if isinstance(source.loader, list) and label is not None:
                if label in labels:
                    problems.append(
                        _problem(
                            (*location, i, "label"),
                            "duplicate_label",
                            f"{label!r} is also {name}[{labels[label]}]'s label; the jobs of "
                            "one input need different labels",
                            label,
                        )
                    )
                labels.setdefault(label, i)
            target = _target_problem(source.target, mapping, where=where, at=at)
            if target is not None:
                problems.append(target)
            if self.trials is not None:
                problems.extend(
                    _event_problems(self.trials, mapping, where=where, prefix=("trials",))
                )
        return problems

    def _output_problems(
        self, source: SourceConfig, at: tuple[str | int, ...]
    ) -> list[InitErrorDetails]:
        """The output folder must lie where no source's search reaches."""
        how = output_reach(
            source.url,
            self.output.url,
            pattern=source.pattern,
            recursive=source.recursive,
            target=source.target,
            input_options=source.storage_options,
            output_options=self.output.storage_options,
        )
        if how is None:
            return []
        source_name = "" if at == ("input",) else f" (input[{at[1]}])"
        message = (
            f"{self.output.url!r} {how}{source_name}: the next run would take its files as "
            "inputs; expected an output folder outside the input folder (put output.url "
            "elsewhere)"
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
