"""The pipeline file: pydantic models, loading from YAML or TOML, and errors for people.

A pipeline file names its inputs, the loader that reads them, the preprocessing and trial
settings, the hooks, the outputs and the cluster. Every section is a pydantic model with
``extra="forbid"``, so a misspelled key is an error, and :func:`load_config` turns pydantic's
errors into a :class:`~neurobatch.errors.ConfigError` with one line per problem: the file, the
dotted field path, what was wrong and, for unknown keys, formats and event names, the closest
known name::

    pipeline.yaml: preprocess.filter.cutof_hz: unknown key; did you mean 'cutoff_hz'?

The loader section is checked against the registry of :mod:`neurobatch.io.loaders`: the
``format`` picks the arguments model of that loader, and every event name that the ``trials``
section uses must be one the loader provides.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import logging
import os
import re
import sys
import tomllib
import types
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeAlias, Union

import yaml
from dask.utils import parse_bytes
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from neurobatch.errors import ConfigError
from neurobatch.io.loaders import LOADERS

__all__ = [
    "AdaptiveConfig",
    "AddressClusterConfig",
    "ClusterConfig",
    "EngineConfig",
    "FilterConfig",
    "FitConfig",
    "HooksConfig",
    "InputConfig",
    "JobqueueClusterConfig",
    "KubernetesClusterConfig",
    "LoaderField",
    "LoaderMapping",
    "LocalClusterConfig",
    "OutputConfig",
    "PipelineConfig",
    "PreprocessConfig",
    "StageConfig",
    "TlsConfig",
    "TrialsConfig",
    "config_error_lines",
    "dump_config",
    "import_object",
    "load_config",
    "loader_arguments",
    "split_object_ref",
    "trial_event_names",
    "validate_config",
    "validate_loader",
]

logger = logging.getLogger(__name__)


#: What a pipeline does with its items.
Kind = Literal["photometry", "filter", "sta", "custom"]

# ---------------------------------------------------------------------------------------------
# Small types
# ---------------------------------------------------------------------------------------------

_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
_DOTTED = re.compile(rf"{_IDENTIFIER}(?:\.{_IDENTIFIER})*")


def split_object_ref(ref: str) -> tuple[str, str, bool]:
    """Split a ``"module:function"`` or ``"path/file.py:function"`` reference.

    Parameters
    ----------
    ref : str
        The reference. The part before the last ``:`` is a dotted module name or the path of
        a ``.py`` file; the part after it is a dotted attribute path (``Class.method``).

    Returns
    -------
    target : str
        The module name or file path.
    attribute : str
        The dotted attribute path inside it.
    is_file : bool
        Whether ``target`` is a file path.

    Raises
    ------
    ValueError
        If ``ref`` does not have that shape.

    Examples
    --------
    >>> split_object_ref("mylab.hooks:build_id")
    ('mylab.hooks', 'build_id', False)
    >>> split_object_ref("hooks/resolve.py:loader_for")
    ('hooks/resolve.py', 'loader_for', True)
    >>> split_object_ref("build_id")
    Traceback (most recent call last):
    ...
    ValueError: expected 'module:function' or 'path/to/file.py:function', got 'build_id'
    """
    expected = f"expected 'module:function' or 'path/to/file.py:function', got {ref!r}"
    target, sep, attribute = ref.rpartition(":")
    if not sep or not target or _DOTTED.fullmatch(attribute) is None:
        raise ValueError(expected)
    is_file = target.endswith(".py")
    if not is_file and _DOTTED.fullmatch(target) is None:
        raise ValueError(expected)
    return target, attribute, is_file


def _check_object_ref(value: str) -> str:
    split_object_ref(value)
    return value


ObjectRef = Annotated[
    str,
    AfterValidator(_check_object_ref),
    WithJsonSchema({"type": "string", "pattern": r"^.+:[A-Za-z_][A-Za-z0-9_.]*$"}),
]
"""A ``"module:function"`` or ``"path/to/file.py:function"`` string, checked but not imported."""


def _parse_memory(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return parse_bytes(value)
        except (ValueError, TypeError) as e:
            raise ValueError(
                f"expected a memory size such as '2GiB', '512MB' or a number of bytes, "
                f"got {value!r}"
            ) from e
    return value


MemorySize = Annotated[
    int,
    BeforeValidator(_parse_memory),
    Field(gt=0),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "exclusiveMinimum": 0},
                {"type": "string", "description": "a size such as '2GiB' or '512MB'"},
            ]
        }
    ),
]
"""A memory size in bytes; strings such as ``"2GiB"`` are parsed by ``dask.utils.parse_bytes``."""


def _one_or_many_tag(value: Any) -> str | None:
    if isinstance(value, str):
        return "@one"
    if isinstance(value, list | tuple):
        return "@many"
    return None


EventNames = Annotated[
    Union[Annotated[str, Tag("@one")], Annotated[list[str], Tag("@many")]],  # noqa: UP007
    Discriminator(
        _one_or_many_tag,
        custom_error_type="event_names_type",
        custom_error_message="expected an event name or a list of event names",
    ),
]


def _as_list(value: Any) -> Any:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return value


NameList = Annotated[
    list[str],
    BeforeValidator(_as_list),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}),
]
"""A list of names; a single string is a list of one."""

Bounds = tuple[float, float]


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        allow_inf_nan=False,
        use_attribute_docstrings=True,
        validate_assignment=True,
    )


def _problem(loc: tuple[str | int, ...], kind: str, message: str, value: Any) -> InitErrorDetails:
    return InitErrorDetails(type=PydanticCustomError(kind, message), loc=loc, input=value)


def _raise_problems(title: str, problems: list[InitErrorDetails]) -> None:
    if problems:
        raise ValidationError.from_exception_data(title, problems)


def _check_bounds(value: Bounds | None, *, strict: bool = True) -> Bounds | None:
    if value is None:
        return None
    lo, hi = value
    if lo > hi or (strict and lo == hi):
        relation = "lo < hi" if strict else "lo <= hi"
        raise ValueError(f"expected [lo, hi] with {relation}, got [{lo:g}, {hi:g}]")
    return value


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------


class InputConfig(_Model):
    """Where the inputs are and which entries are inputs."""

    url: str
    """An fsspec URL or a local path; relative paths are relative to the pipeline file."""
    pattern: str | None = None
    """A glob relative to ``url``; ``None`` takes every (non-hidden) entry."""
    recursive: bool = False
    """Also look in sub-folders, at any depth."""
    target: Literal["file", "folder"] = "file"
    """Whether an input is a file or a folder (a TDT block is a folder)."""
    storage_options: dict[str, Any] = Field(default_factory=dict)
    """Passed to fsspec, e.g. credentials or an endpoint URL."""

    @field_validator("url")
    @classmethod
    def _url_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("expected a URL or a path, got an empty string")
        return value


class FilterConfig(_Model):
    """A zero-phase Butterworth filter applied to both channels."""

    type: Literal["lowpass", "highpass", "bandpass", "bandstop"] = "lowpass"
    """The filter type."""
    cutoff_hz: float | tuple[float, float] = 3.0
    """The -3 dB frequency in Hz; a ``[low, high]`` pair for ``bandpass`` and ``bandstop``."""
    order: int = Field(default=4, ge=1)
    """The filter order (the forward-backward filter has twice this order)."""

    @model_validator(mode="after")
    def _check_cutoff(self) -> FilterConfig:
        band = self.type in ("bandpass", "bandstop")
        cutoff = self.cutoff_hz
        if band:
            if not isinstance(cutoff, tuple):
                message = f"a {self.type} filter needs [low, high] in Hz, got {cutoff!r}"
            elif not 0 < cutoff[0] < cutoff[1]:
                message = f"expected [low, high] with 0 < low < high, got {list(cutoff)!r}"
            else:
                return self
        elif isinstance(cutoff, tuple):
            message = f"a {self.type} filter needs one frequency in Hz, got {list(cutoff)!r}"
        elif cutoff <= 0:
            message = f"expected a frequency > 0 Hz, got {cutoff!r}"
        else:
            return self
        raise ValidationError.from_exception_data(
            "FilterConfig", [_problem(("cutoff_hz",), "cutoff", message, cutoff)]
        )


class EphysFilterConfig(FilterConfig):
    """The ``filter`` pipeline: zero-phase Butterworth filtering of every channel."""

    type: Literal["lowpass", "highpass", "bandpass", "bandstop"] = "bandpass"
    """The filter type."""
    cutoff_hz: float | tuple[float, float] = (300.0, 6000.0)
    """The -3 dB frequency in Hz; ``[low, high]`` for ``bandpass`` and ``bandstop``."""
    order: int = Field(default=3, ge=1)
    """The filter order (the forward-backward filter has twice this order)."""
    common_reference: Literal["none", "median"] = "none"
    """Subtract the median over channels from every sample before filtering."""
    dtype: Literal["float32", "float64"] = "float32"
    """The stored filtered traces, in µV (float32 halves the bytes; its rounding, about
    1e-7 relative, is far below any recording's noise)."""
    snippet_s: tuple[float, float] | None = None
    """A ``[start, stop]`` window in seconds for the raw-versus-filtered figure (with
    ``output.dashboards``); by default the first 0.2 s."""


class StaConfig(_Model):
    """The ``sta`` pipeline: spike-triggered averages of units over a stimulus movie."""

    n_lags: int = Field(default=10, ge=1)
    """Frames in the average's window: lag ``k`` is ``k`` frames before the spike's frame."""
    delay_frames: int | None = Field(default=None, ge=1)
    """The collapsed STRF is the mean of lags ``0 .. delay_frames - 1`` (frames
    ``N - delay + 1 .. N``, the retinal-ganglion pipeline's definition: a delay of 5 is the
    mean of frames N-4 .. N); by default all ``n_lags``."""
    units: list[int | str] | None = None
    """Only these units (by id), in this order; by default every unit of the recording."""

    @model_validator(mode="after")
    def _check_delay(self) -> StaConfig:
        if self.delay_frames is not None and self.delay_frames > self.n_lags:
            raise ValidationError.from_exception_data(
                "StaConfig",
                [
                    _problem(
                        ("delay_frames",),
                        "delay",
                        f"expected at most n_lags ({self.n_lags}) frames, got {self.delay_frames}",
                        self.delay_frames,
                    )
                ],
            )
        return self


class FitConfig(_Model):
    """How the isosbestic channel is fitted to the signal."""

    method: Literal["ols", "irls", "none"] = "irls"
    """Least squares, robust IRLS with Tukey's biweight (PhoPro's default), or no fit
    (single-channel recordings; then ``correction`` must be ``none``)."""
    intercept: bool = True
    """Fit ``signal ≈ b0 + b1 * isosbestic`` (else ``b1 * isosbestic``)."""
    c: float = Field(default=3.0, gt=0)
    """Tukey's tuning constant (IRLS only)."""
    maxiter: int = Field(default=1000, ge=1)
    """The most IRLS iterations."""
    tol: float = Field(default=1e-8, ge=0)
    """IRLS stops once the deviance changes by at most this much."""


def _fit_shorthand(value: Any) -> Any:
    if isinstance(value, str):
        return {"method": value}
    return value


def _filter_off(value: Any) -> Any:
    # TOML has no null: `filter = false` or `filter = "none"` switch the filter off there
    if value is False or (isinstance(value, str) and value.lower() == "none"):
        return None
    return value


def _preprocess_schema(schema: dict[str, Any]) -> None:
    properties = schema.get("properties", {})
    if "fit" in properties:
        fit = properties["fit"]
        ref = {key: fit.pop(key) for key in ("$ref", "allOf") if key in fit}
        fit["anyOf"] = [ref, {"type": "string", "enum": ["ols", "irls"]}]
    if "filter" in properties:
        properties["filter"].setdefault("anyOf", []).extend([{"const": False}, {"const": "none"}])


class PreprocessConfig(_Model):
    """Filtering, isosbestic fit, correction and whole-signal normalisation."""

    model_config = ConfigDict(json_schema_extra=_preprocess_schema)

    filter: Annotated[FilterConfig | None, BeforeValidator(_filter_off)] = Field(
        default_factory=FilterConfig
    )
    """The low-pass filter; ``null`` (or ``false``) for none."""
    fit: Annotated[FitConfig, BeforeValidator(_fit_shorthand)] = Field(default_factory=FitConfig)
    """The isosbestic fit; ``ols`` and ``irls`` are shorthands for ``{method: ...}``."""
    correction: Literal["dff", "df", "none"] = "dff"
    """``dff = (signal - reference) / reference``, ``df = signal - reference``, or none."""
    normalization: Literal["none", "zscore", "nullz"] = "none"
    """Whole-signal normalisation after the correction."""


class TrialsConfig(_Model):
    """Event-aligned trial windows (PhoPro's ``extract_trial_data``)."""

    align_to: EventNames
    """The alignment event, or several pooled (then each trial records its ``align_event``)."""
    bounds_s: Bounds
    """The window ``[lo, hi]`` in seconds around the trial centre."""
    center_on: NameList = Field(default_factory=list)
    """Events that re-centre a trial when found in it (later names win)."""
    baseline_bounds_s: Bounds | None = None
    """The baseline window around the alignment event, for trial normalisation."""
    tolerances_s: dict[str, Bounds | None] = Field(default_factory=dict)
    """Per event, where to look for it relative to the alignment; ``null`` = the bounds."""
    normalization: Literal["none", "zscore", "zero", "mad", "amp"] = "none"
    """Per-trial normalisation against the baseline window."""
    check_overlap: bool = True
    """Two ``center_on`` events in one trial make that trial invalid."""
    all_events: bool = True
    """Annotate every event, not only ``center_on`` ones and those with a tolerance."""
    window_alignment: Literal["nearest", "interp"] = "nearest"
    """Snap windows to samples, or interpolate onto an exact grid."""
    invalid_window_policy: Literal["drop", "error"] = "drop"
    """What to do with a window that runs past the recording."""
    event_conflict: Literal["first", "last", "all", "mean"] = "first"
    """Which occurrence to report when an event occurs several times in one window."""

    @field_validator("bounds_s")
    @classmethod
    def _bounds(cls, value: Bounds) -> Bounds:
        _check_bounds(value)
        return value

    @field_validator("baseline_bounds_s")
    @classmethod
    def _baseline(cls, value: Bounds | None) -> Bounds | None:
        return _check_bounds(value)

    @model_validator(mode="after")
    def _cross_checks(self) -> TrialsConfig:
        problems: list[InitErrorDetails] = []
        for name, bounds in self.tolerances_s.items():
            try:
                _check_bounds(bounds, strict=False)
            except ValueError as e:
                problems.append(_problem(("tolerances_s", name), "bounds", str(e), bounds))
        if isinstance(self.align_to, list):
            if not self.align_to:
                problems.append(
                    _problem(("align_to",), "empty", "expected at least one event name", [])
                )
            for i, name in _duplicates(self.align_to):
                problems.append(
                    _problem(("align_to", i), "duplicate", f"event {name!r} listed twice", name)
                )
        for i, name in _duplicates(self.center_on):
            problems.append(
                _problem(("center_on", i), "duplicate", f"event {name!r} listed twice", name)
            )
        if self.normalization != "none" and self.baseline_bounds_s is None:
            problems.append(
                _problem(
                    ("baseline_bounds_s",),
                    "baseline_missing",
                    f"normalization {self.normalization!r} needs a baseline window "
                    "[lo, hi] in seconds around the alignment event",
                    None,
                )
            )
        _raise_problems("TrialsConfig", problems)
        return self


def _duplicates(names: Sequence[str]) -> Iterable[tuple[int, str]]:
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            yield i, name
        seen.add(name)


class HooksConfig(_Model):
    """User functions run at fixed points, named as ``module:function`` or ``file.py:function``."""

    id_builder: ObjectRef | None = None
    """Called with the loaded recording, returns its ``experiment_id``."""
    post_load: ObjectRef | None = None
    """Called with the loaded recording Dataset, returns a Dataset."""
    post_preprocess: ObjectRef | None = None
    """Called with the processed Dataset, returns a Dataset."""
    post_trials: ObjectRef | None = None
    """Called with the trials Dataset, returns a Dataset."""


class StageConfig(_Model):
    """A stage of the user's own, after the kind's: ``module:function`` or ``file.py:function``.

    The function takes the outputs of the stages it ``needs`` (xarray Datasets, in that
    order) and ``params`` as keyword arguments, and returns a Dataset (or None). It is
    stored, keyed (its source code included), resumed, logged and recorded like a built-in.
    """

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """The stage's name: its group in each item's store and its name in provenance."""
    run: ObjectRef
    """The function."""
    needs: NameList | None = None
    """The stages whose outputs it takes; by default the stage before it."""
    params: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments of the function (JSON values)."""


OutputFormat = Literal["zarr", "parquet", "csv", "h5ad"]


def _default_formats() -> list[OutputFormat]:
    return ["zarr", "parquet"]


class OutputConfig(_Model):
    """Where results go and in which formats."""

    url: str
    """An fsspec URL or a local path; relative paths are relative to the pipeline file."""
    formats: list[OutputFormat] = Field(default_factory=_default_formats, min_length=1)
    """The combined outputs to write."""
    dashboards: Literal["svg", "png"] | None = None
    """One figure per item in this format, or none."""
    storage_options: dict[str, Any] = Field(default_factory=dict)
    """Passed to fsspec."""

    @field_validator("formats")
    @classmethod
    def _unique_formats(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))


class LocalClusterConfig(_Model):
    """A ``distributed.LocalCluster`` on this machine, bound to 127.0.0.1."""

    kind: Literal["local"] = "local"
    n_workers: int | None = Field(default=None, ge=1)
    """The number of worker processes; ``null`` for as many as fit the machine's cores."""
    threads_per_worker: int = Field(default=1, ge=1)
    """Threads in each worker process."""
    memory_limit: MemorySize | None = 2 * 2**30
    """Memory per worker (``2GiB``); ``null`` for no limit."""
    dashboard_address: str | None = "127.0.0.1:0"
    """Where the dashboard listens; ``null`` for no dashboard."""


class TlsConfig(_Model):
    """Client certificates for a scheduler that requires TLS (``tls://`` addresses)."""

    ca_file: str
    """The certificate authority that signed the scheduler's certificate."""
    cert: str
    """The client's certificate (PEM)."""
    key: str | None = None
    """The client's private key (PEM), when it is not inside ``cert``."""


class AddressClusterConfig(_Model):
    """An existing Dask scheduler, such as one started with ``dask scheduler``."""

    kind: Literal["address"] = "address"
    address: Annotated[str, Field(pattern=r"^(tcp|tls|inproc|ucx|ws|wss)://.+")]
    """The scheduler's address, such as ``tcp://10.0.0.5:8786``."""
    tls: TlsConfig | None = None
    """Client certificates; required by ``tls://`` schedulers that ask for them."""
    n_workers: int = Field(default=1, ge=1)
    """Wait until this many workers are connected before starting."""
    timeout_s: float = Field(default=60.0, gt=0)
    """How long to wait for the scheduler and its workers."""


class AdaptiveConfig(_Model):
    """Adaptive scaling: Dask adds and removes workers between these bounds as work waits."""

    minimum: int = Field(default=0, ge=0)
    """The fewest workers."""
    maximum: int = Field(ge=1)
    """The most workers."""

    @model_validator(mode="after")
    def _ordered(self) -> AdaptiveConfig:
        if self.minimum > self.maximum:
            raise ValueError(f"minimum {self.minimum} is above maximum {self.maximum}")
        return self


class JobqueueClusterConfig(_Model):
    """Workers submitted as batch jobs by dask-jobqueue (``SLURMCluster``, ``PBSCluster``).

    ``cores``, ``processes`` and ``memory`` are per job, as in dask-jobqueue: a job of
    ``cores: 8, processes: 2, memory: 32GiB`` runs two workers of four threads and 16 GiB.
    Settings left ``null`` come from dask-jobqueue's configuration (``jobqueue.slurm`` or
    ``jobqueue.pbs`` in ``~/.config/dask/jobqueue.yaml``).
    """

    kind: Literal["slurm", "pbs"]
    n_workers: int = Field(default=1, ge=1)
    """Worker processes to start (``n_workers / processes`` jobs); ignored when adaptive."""
    adaptive: AdaptiveConfig | None = None
    """Scale between ``minimum`` and ``maximum`` workers instead of a fixed number."""
    cores: int = Field(default=1, ge=1)
    """Cores of one job."""
    processes: int = Field(default=1, ge=1)
    """Worker processes in one job; each gets ``cores / processes`` threads."""
    memory: MemorySize = 4 * 2**30
    """Memory of one job, shared by its worker processes."""
    walltime: str = "01:00:00"
    """The jobs' time limit (``HH:MM:SS``)."""
    queue: str | None = None
    """The partition (SLURM) or queue (PBS)."""
    account: str | None = None
    """The account or project charged."""
    job_directives: list[str] = Field(default_factory=list)
    """More scheduler directives, such as ``--gres=gpu:1`` or ``-l place=scatter``."""
    job_script_prologue: list[str] = Field(default_factory=list)
    """Shell lines run in the job before the worker starts (``module load ...``)."""
    python: str | None = None
    """The workers' Python; the driver's own interpreter by default."""
    interface: str | None = None
    """The network interface the scheduler and workers listen on (``ib0``)."""
    scheduler_host: str | None = None
    """The address the scheduler binds to, when not that of ``interface``."""
    local_directory: str | None = None
    """Workers' spill and scratch folder on the compute nodes."""
    log_directory: str | None = None
    """Where the jobs' output and error files go."""
    dashboard_address: str | None = "127.0.0.1:0"
    """Where the scheduler's dashboard listens; ``null`` for no dashboard."""
    timeout_s: float = Field(default=600.0, gt=0)
    """How long to wait for the first worker to start (jobs may queue)."""

    @model_validator(mode="after")
    def _whole_threads(self) -> JobqueueClusterConfig:
        if self.cores % self.processes:
            raise ValueError(
                f"cores {self.cores} is not a multiple of processes {self.processes}; "
                "every worker process needs a whole number of threads"
            )
        return self


class KubernetesClusterConfig(_Model):
    """A ``DaskCluster`` resource run by the Dask Kubernetes operator (``KubeCluster``)."""

    kind: Literal["kubernetes"] = "kubernetes"
    name: str = "neurobatch"
    """The DaskCluster's name."""
    namespace: str | None = None
    """The namespace; the current context's by default."""
    image: str = "ghcr.io/neurobatch/neurobatch:latest"
    """A container image with neurobatch installed (see ``deploy/docker``)."""
    n_workers: int = Field(default=2, ge=1)
    """Worker pods; the initial number when adaptive."""
    adaptive: AdaptiveConfig | None = None
    """Scale between ``minimum`` and ``maximum`` workers."""
    threads_per_worker: int = Field(default=1, ge=1)
    """Threads in each worker pod, also its CPU request."""
    memory: MemorySize = 4 * 2**30
    """Memory request and limit of each worker pod; Dask's own limit is 90 % of it, leaving
    room for the nanny process before the kernel would kill the pod."""
    env: dict[str, str] = Field(default_factory=dict)
    """Plain environment of the scheduler and workers (not for credentials)."""
    env_from_secrets: list[str] = Field(default_factory=list)
    """Kubernetes Secrets whose keys become the scheduler's and workers' environment
    (object-store credentials: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ...)."""
    timeout_s: float = Field(default=600.0, gt=0)
    """How long to wait for the cluster and its first worker."""


#: The cluster models by their union tag (``@`` tags stay out of error paths).
_CLUSTER_MODELS: dict[str, type[BaseModel]] = {
    "@local": LocalClusterConfig,
    "@address": AddressClusterConfig,
    "@jobqueue": JobqueueClusterConfig,
    "@kubernetes": KubernetesClusterConfig,
}


def _cluster_tag(value: Any) -> str | None:
    kind = (
        value.get("kind", "local") if isinstance(value, Mapping) else getattr(value, "kind", None)
    )
    return "@jobqueue" if kind in ("slurm", "pbs") else f"@{kind}"


_CLUSTER_KINDS = ("local", "address", "slurm", "pbs", "kubernetes")


def _known_cluster_kind(value: Any) -> Any:
    kind = value.get("kind", "local") if isinstance(value, Mapping) else None
    if kind is not None and kind not in _CLUSTER_KINDS:
        close = difflib.get_close_matches(str(kind), _CLUSTER_KINDS, n=1)
        raise PydanticCustomError(
            "cluster_kind",
            "unknown kind '{kind}'; "
            + (f"did you mean {close[0]!r}?" if close else "expected one of {expected}"),
            {"kind": kind, "expected": ", ".join(_CLUSTER_KINDS)},
        )
    return value


ClusterConfig: TypeAlias = Annotated[
    Union[  # noqa: UP007
        Annotated[LocalClusterConfig, Tag("@local")],
        Annotated[AddressClusterConfig, Tag("@address")],
        Annotated[JobqueueClusterConfig, Tag("@jobqueue")],
        Annotated[KubernetesClusterConfig, Tag("@kubernetes")],
    ],
    Discriminator(
        _cluster_tag,
        custom_error_type="cluster_kind",
        custom_error_message="expected kind 'local', 'address', 'slurm', 'pbs' or 'kubernetes'",
    ),
    BeforeValidator(_known_cluster_kind),
]
"""The Dask cluster a pipeline runs on, chosen by ``kind`` (``local`` when absent)."""


class EngineConfig(_Model):
    """How the engine schedules items."""

    max_in_flight: int | None = Field(default=None, ge=1)
    """The most items submitted at once; ``null`` for twice the worker threads."""
    chunk_memory: MemorySize = 64 * 2**20
    """The memory budget of one chunk, from which chunk lengths follow. Unset, a run
    derives it from its workers (:meth:`chunk_budget`): a sixty-fourth of a worker
    thread's share of its worker's memory limit, at most ``64MiB`` (and ``64MiB`` when the
    workers have no limit), so that a task's float64 temporaries stay well within it."""
    retries: int = Field(default=2, ge=0)
    """How many times Dask reruns an item whose worker died (or whose task failed outside
    the item's own error handling) before the item fails."""
    item_timeout_s: float | None = Field(default=None, gt=0)
    """An item still running after this many seconds on its worker fails with a message
    (``null``: no limit). Its thread cannot be stopped: it is left to end, and may not
    commit anything."""

    def chunk_budget(self, thread_memory: int | None) -> int:
        """Return the chunk memory to use where each worker thread has ``thread_memory`` bytes.

        ``chunk_memory`` when it was set; otherwise a sixty-fourth of ``thread_memory``
        (a worker's memory limit over its threads), at most the 64 MiB default. A
        filter task holds about ten chunks (raw chunks, two float64 copies of its block,
        its result) beside a worker's ~260 MB of imports: at a sixty-fourth, a 512 MiB
        worker peaks near two thirds of its limit.

        Parameters
        ----------
        thread_memory : int or None
            Bytes of worker memory per thread; None (or 0) when the workers have no limit.

        Returns
        -------
        int
            Bytes per chunk.

        Examples
        --------
        >>> EngineConfig().chunk_budget(2**29)
        8388608
        >>> EngineConfig().chunk_budget(None), EngineConfig().chunk_budget(2**34)
        (67108864, 67108864)
        >>> EngineConfig(chunk_memory="32MiB").chunk_budget(2**29)
        33554432
        """
        if "chunk_memory" in self.model_fields_set or not thread_memory:
            return self.chunk_memory
        return max(1, min(self.chunk_memory, thread_memory // 64))


# ---------------------------------------------------------------------------------------------
# Loader mappings: one model per registered format, the format's arguments plus `format`
# ---------------------------------------------------------------------------------------------


def _class_name(fmt: str) -> str:
    words = re.split(r"[^A-Za-z0-9]+", fmt)
    return "".join(word[:1].upper() + word[1:] for word in words if word) + "Loader"


def _build_loader_models() -> dict[str, type[BaseModel]]:
    models: dict[str, type[BaseModel]] = {}
    for fmt, spec in sorted(LOADERS.items()):
        name = _class_name(fmt)
        model = create_model(
            name,
            __base__=spec.arguments,
            __module__=__name__,
            __doc__=f"Loader arguments of the {fmt!r} format, with ``format: {fmt}``.",
            format=(Literal[fmt], Field(description="The input format.")),
        )
        # module-level names make the models picklable (a config travels to the workers)
        globals()[name] = model
        models[fmt] = model
    return models


_LOADER_MODELS = _build_loader_models()
_FORMAT_TAG = "@"


def _format_tag(value: Any) -> str | None:
    if isinstance(value, Mapping) and "format" in value:
        return _FORMAT_TAG + str(value["format"])
    if isinstance(value, BaseModel) and hasattr(value, "format"):
        return _FORMAT_TAG + str(value.format)
    return None


def _loader_tag(value: Any) -> str | None:
    if isinstance(value, str):
        return "@resolver"
    if isinstance(value, list | tuple):
        return "@list"
    if isinstance(value, Mapping | BaseModel):
        return "@mapping"
    return None


def _tagged_union(members: Sequence[Any]) -> Any:
    # a Union of one member collapses to that member, which a Discriminator rejects
    choices = (*members, Annotated[None, Tag("@never")]) if len(members) == 1 else tuple(members)
    return Union[choices]  # noqa: UP007


if TYPE_CHECKING:
    LoaderMapping: TypeAlias = BaseModel
    LoaderField: TypeAlias = BaseModel | list[BaseModel] | str
else:
    LoaderMapping = Annotated[
        _tagged_union(
            [Annotated[model, Tag(_FORMAT_TAG + fmt)] for fmt, model in _LOADER_MODELS.items()]
        ),
        Discriminator(
            _format_tag,
            custom_error_type="loader_format_missing",
            custom_error_message="expected a mapping with a 'format' key",
        ),
    ]
    LoaderField = Annotated[
        Union[  # noqa: UP007
            Annotated[LoaderMapping, Tag("@mapping")],
            Annotated[list[LoaderMapping], Tag("@list")],
            Annotated[ObjectRef, Tag("@resolver")],
        ],
        Discriminator(
            _loader_tag,
            custom_error_type="loader_type",
            custom_error_message=(
                "expected a mapping with a 'format' key, a list of such mappings, or a "
                "'module:function' resolver"
            ),
        ),
    ]

_LOADER_ADAPTER: TypeAdapter[Any] = TypeAdapter(LoaderField)


def loader_arguments(mapping: BaseModel) -> dict[str, Any]:
    """The validated arguments of one loader mapping, JSON-safe, without ``format``.

    Parameters
    ----------
    mapping : LoaderMapping
        A validated loader mapping (``config.loader`` or one element of it).

    Returns
    -------
    dict
        Keyword arguments for ``LOADERS[mapping.format].arguments``.

    Examples
    --------
    >>> from neurobatch.io.loaders import LOADERS
    >>> m = validate_loader({"format": "photometry-csv"}, source="example")
    >>> args = loader_arguments(m)
    >>> "format" in args, sorted(args) == sorted(
    ...     LOADERS["photometry-csv"].arguments.model_fields)
    (False, True)
    """
    return mapping.model_dump(mode="json", exclude={"format"})


# ---------------------------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------------------------


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
    wanted = LOADERS[fmt].target
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
        _raise_problems("PipelineConfig", problems)
        return self

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


# ---------------------------------------------------------------------------------------------
# Errors for people
# ---------------------------------------------------------------------------------------------


def _suggest(name: Any, known: Iterable[str]) -> str | None:
    matches = difflib.get_close_matches(str(name), list(known), n=1, cutoff=0.6)
    return matches[0] if matches else None


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _annotation_models(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    models: list[type[BaseModel]] = []
    for arg in getattr(annotation, "__args__", ()) or ():
        models.extend(_annotation_models(arg))
    return list(dict.fromkeys(models))


def _model_at(start: type[BaseModel] | None, loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The model class validated at ``loc`` (the parent of an unknown key), if one is known."""
    model = start
    for part in loc:
        if isinstance(part, str) and part.startswith(_FORMAT_TAG):
            if part in _CLUSTER_MODELS:
                model = _CLUSTER_MODELS[part]
            elif part[1:] in _LOADER_MODELS:
                model = _LOADER_MODELS[part[1:]]
            continue
        if isinstance(part, int):
            continue
        if model is None or part not in model.model_fields:
            model = None
            continue
        candidates = _annotation_models(model.model_fields[part].annotation)
        model = candidates[0] if len(candidates) == 1 else None
    return model


def _display_path(loc: Sequence[str | int]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part.startswith(_FORMAT_TAG):
            continue
        else:
            text += ("." if text else "") + part
    return text


def _loader_format(loc: Sequence[str | int]) -> str | None:
    fmt = None
    for part in loc:
        if isinstance(part, str) and part.startswith(_FORMAT_TAG) and part[1:] in LOADERS:
            fmt = part[1:]
    return fmt


def _format_list() -> str:
    return ", ".join(repr(fmt) for fmt in sorted(LOADERS))


def _describe(
    error: Mapping[str, Any], start: type[BaseModel] | None, prefix: tuple[str | int, ...]
) -> tuple[str, str]:
    """(dotted path, message) for one pydantic error; ``start`` is validated below ``prefix``."""
    own: tuple[str | int, ...] = tuple(error["loc"])
    loc = (*prefix, *own)
    kind: str = error["type"]
    value = error.get("input")
    ctx = error.get("ctx") or {}
    path = _display_path(loc)
    fmt = _loader_format(loc)

    if kind == "extra_forbidden":
        model = _model_at(start, own[:-1])
        known = [k for k in model.model_fields if k != "format"] if model is not None else []
        what = f"unknown argument of loader format {fmt!r}" if fmt else "unknown key"
        suggestion = _suggest(loc[-1], known)
        if suggestion:
            return path, f"{what}; did you mean {suggestion!r}?"
        if known:
            return path, f"{what}; expected one of {', '.join(repr(k) for k in known)}"
        return path, what
    if kind == "missing" and loc and isinstance(loc[-1], int):
        # every tuple of a pipeline file is a [lo, hi] pair
        return _display_path(loc[:-1]), f"expected [lo, hi], got {_short(value)}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return path, f"expected a mapping, got {_short(value)}"
    if kind == "missing":
        what = f"argument of loader format {fmt!r}" if fmt else "key"
        return path, f"required {what} is missing"
    if kind == "loader_format_missing" and isinstance(value, Mapping) and "format" in value:
        name = value["format"]
        message = f"unknown loader format {name!r}"
        suggestion = _suggest(name, LOADERS)
        if suggestion:
            message += f"; did you mean {suggestion!r}?"
        return _join(path, "format"), f"{message} (known formats: {_format_list()})"
    if kind == "loader_format_missing":
        if isinstance(value, Mapping):
            return _join(path, "format"), f"required key is missing; one of {_format_list()}"
        return path, f"expected a mapping with a 'format' key, got {_short(value)}"
    if kind == "literal_error":
        options = re.findall(r"'((?:[^'\\]|\\.)*)'", str(ctx.get("expected", "")))
        message = f"got {_short(value)}; expected {ctx.get('expected', '')}"
        suggestion = _suggest(value, options) if isinstance(value, str) else None
        if suggestion:
            message += f"; did you mean {suggestion!r}?"
        return path, message
    message = str(error["msg"])
    for noise in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(noise)
    message = message[:1].lower() + message[1:]
    builtin = "url" in error and kind not in ("value_error", "assertion_error")
    if builtin:
        message += f" (got {_short(value)})"
    return path, message


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def config_error_lines(
    error: ValidationError,
    *,
    source: str,
    start: type[BaseModel] | None = None,
    prefix: tuple[str | int, ...] = (),
) -> list[str]:
    """One line per problem of a pydantic ``ValidationError``, for people.

    Parameters
    ----------
    error : pydantic.ValidationError
        What pydantic raised.
    source : str
        What the lines start with: the pipeline file, or the input a resolver ran for.
    start : type of BaseModel, optional
        The model that was validated (for the known keys behind suggestions); ``None`` for a
        loader mapping.
    prefix : tuple, optional
        A location to put before every error's own (``("loader",)`` for a resolver's result).

    Returns
    -------
    list of str
        ``"<source>: <dotted.path>: <what was wrong>"`` lines.

    Examples
    --------
    >>> try:
    ...     FilterConfig.model_validate({"cutof_hz": 3})
    ... except ValidationError as e:
    ...     print(config_error_lines(e, source="pipeline.yaml", start=FilterConfig,
    ...                              prefix=("preprocess", "filter"))[0])
    pipeline.yaml: preprocess.filter.cutof_hz: unknown key; did you mean 'cutoff_hz'?
    """
    lines = []
    for item in error.errors(include_url=True):
        path, message = _describe(item, start, prefix)
        lines.append(f"{source}: {path}: {message}" if path else f"{source}: {message}")
    return list(dict.fromkeys(lines))


def validate_config(data: Mapping[str, Any], *, source: str = "<config>") -> PipelineConfig:
    """Validate a parsed pipeline file.

    Parameters
    ----------
    data : Mapping
        The file's content, as parsed from YAML or TOML.
    source : str, default "<config>"
        The name that starts each error line (the file).

    Returns
    -------
    PipelineConfig
        The validated configuration.

    Raises
    ------
    ConfigError
        With one line per problem: the source, the dotted field path and what was wrong.

    Examples
    --------
    >>> validate_config({"name": "x", "input": {"url": "d"},
    ...                  "loader": {"format": "photometry-csv"},
    ...                  "output": {"url": "o"}, "preproces": {}}, source="p.yaml")
    Traceback (most recent call last):
    ...
    neurobatch.errors.ConfigError: p.yaml: preproces: unknown key; did you mean 'preprocess'?
    """
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{source}: expected a mapping of sections at the top level, got {_short(data)}"
        )
    try:
        return PipelineConfig.model_validate(dict(data))
    except ValidationError as e:
        lines = config_error_lines(e, source=source, start=PipelineConfig)
        raise ConfigError("\n".join(lines)) from None


def validate_loader(value: Any, *, source: str) -> Any:
    """Validate a loader value: a mapping, a list of mappings or a resolver reference.

    Parameters
    ----------
    value : Mapping, list of Mapping, str or LoaderMapping
        What the ``loader`` key holds or a resolver returned. A loader format's own
        arguments model instance is accepted too.
    source : str
        What error lines start with (the pipeline file, or the input a resolver ran for).

    Returns
    -------
    LoaderMapping or list of LoaderMapping or str
        Validated mappings (each also an instance of its format's arguments model, with a
        ``format`` attribute), or the resolver reference.

    Raises
    ------
    ConfigError
        Naming ``source``, the field (``loader.<key>`` or ``loader[i].<key>``), what was
        wrong and the closest known name.

    Examples
    --------
    >>> m = validate_loader({"format": "photometry-csv"}, source="x.csv")
    >>> m.format
    'photometry-csv'
    >>> validate_loader({"format": "photometry-cvs"}, source="x.csv")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    neurobatch.errors.ConfigError: x.csv: loader.format: unknown loader format 'photometry-cvs'; did you mean 'photometry-csv'? (known formats: ...)
    """
    value = _plain_loader(value)
    try:
        return _LOADER_ADAPTER.validate_python(value)
    except ValidationError as e:
        lines = config_error_lines(e, source=source, prefix=("loader",))
        raise ConfigError("\n".join(lines)) from None


def _plain_loader(value: Any) -> Any:
    """Turn a format's own arguments model instance into a mapping with ``format``."""
    if isinstance(value, list | tuple):
        return [_plain_loader(v) for v in value]
    if isinstance(value, BaseModel) and not hasattr(value, "format"):
        for fmt, spec in LOADERS.items():
            if isinstance(value, spec.arguments):
                return {"format": fmt, **value.model_dump()}
    return value


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that rejects a key given twice in one mapping."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"key {key!r} appears twice in one mapping (first on line {seen[key] + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=True)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_unique_mapping,
)


def _parse_yaml(text: str, source: str) -> Any:
    try:
        # a SafeLoader subclass: only plain data, never Python objects
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = " ".join(str(p) for p in (e.context, e.problem) if p)
        raise ConfigError(f"{source}: {where}invalid YAML: {problem}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: invalid YAML: {e}") from None


def _parse_toml(text: str, source: str) -> Any:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: invalid TOML: {e}") from None


def _is_local(url: str) -> bool:
    return "://" not in url and "::" not in url


def _local_path(url: str, base_dir: Path) -> str:
    if not _is_local(url):
        return url
    path = os.path.expanduser(url)
    if not os.path.isabs(path):
        path = os.path.join(base_dir, path)
    return os.path.normpath(path)


def _ref_path(ref: Any, base_dir: Path) -> Any:
    if not isinstance(ref, str):
        return ref
    try:
        target, attribute, is_file = split_object_ref(ref)
    except ValueError:
        return ref  # validation reports it
    if not is_file:
        return ref
    return f"{_local_path(target, base_dir)}:{attribute}"


def _resolve_relative(data: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    data = dict(data)
    for section in ("input", "output"):
        value = data.get(section)
        if isinstance(value, Mapping) and isinstance(value.get("url"), str):
            data[section] = {**value, "url": _local_path(value["url"], base_dir)}
    if isinstance(data.get("loader"), str):
        data["loader"] = _ref_path(data["loader"], base_dir)
    hooks = data.get("hooks")
    if isinstance(hooks, Mapping):
        data["hooks"] = {key: _ref_path(ref, base_dir) for key, ref in hooks.items()}
    return data


def load_config(path: str | os.PathLike[str]) -> PipelineConfig:
    """Read and validate a pipeline file (``.yaml``, ``.yml`` or ``.toml``).

    Relative local paths in ``input.url``, ``output.url`` and ``file.py:function``
    references (hooks, a loader resolver) are made absolute against the file's folder; URLs
    with a protocol (``s3://``, ``memory://``) are left alone.

    Parameters
    ----------
    path : str or os.PathLike
        The pipeline file.

    Returns
    -------
    PipelineConfig
        The validated configuration.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ConfigError
        If the file cannot be parsed or does not validate: one line per problem, each naming
        the file, the dotted field path, what was wrong and, for unknown names, the closest
        known one.

    See Also
    --------
    validate_config : the same for an already parsed mapping.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "pipeline.toml").write_text('''
    ... name = "demo"
    ... input = {url = "data", pattern = "*.csv"}
    ... loader = {format = "photometry-csv"}
    ... output = {url = "out"}
    ... [preprocess]
    ... fit = "ols"
    ... filter = false
    ... ''')
    >>> config = load_config(folder / "pipeline.toml")
    >>> config.input.url == str(folder / "data"), config.preprocess.filter
    (True, None)
    """
    source = os.fspath(path)
    file = Path(source)
    suffix = file.suffix.lower()
    if suffix not in (".yaml", ".yml", ".toml"):
        raise ConfigError(
            f"{source}: unsupported pipeline file type {file.suffix!r}; "
            "expected .yaml, .yml or .toml"
        )
    text = file.read_text(encoding="utf-8")
    data = _parse_toml(text, source) if suffix == ".toml" else _parse_yaml(text, source)
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{source}: expected a mapping of sections at the top level, got {_short(data)}"
        )
    data = _resolve_relative(dict(data), file.resolve().parent)
    logger.debug("loaded pipeline file %s", source)
    return validate_config(data, source=source)


# ---------------------------------------------------------------------------------------------
# Provenance and parameter hashes
# ---------------------------------------------------------------------------------------------


def _dump_loader(loader: Any) -> Any:
    if isinstance(loader, str):
        return loader
    if isinstance(loader, list):
        return [_dump_loader(m) for m in loader]
    return {"format": loader.format, **loader_arguments(loader)}


def dump_config(config: PipelineConfig) -> dict[str, Any]:
    """The whole configuration as JSON-safe plain data (for provenance and hashes).

    Parameters
    ----------
    config : PipelineConfig
        The configuration.

    Returns
    -------
    dict
        Nested dicts, lists, strings, numbers, booleans and ``None`` only; loader mappings
        start with their ``format``. ``PipelineConfig.model_validate`` of it gives ``config``
        back.

    Examples
    --------
    >>> import json
    >>> config = PipelineConfig.model_validate({
    ...     "name": "demo", "input": {"url": "data"},
    ...     "loader": {"format": "photometry-csv"}, "output": {"url": "out"},
    ...     "cluster": {"memory_limit": "1GiB"}})
    >>> d = dump_config(config)
    >>> d["cluster"]["memory_limit"], list(d["loader"])[0]
    (1073741824, 'format')
    >>> PipelineConfig.model_validate(json.loads(json.dumps(d))) == config
    True
    """
    data = config.model_dump(mode="json")
    data["loader"] = _dump_loader(config.loader)
    return data


# ---------------------------------------------------------------------------------------------
# Importing user functions
# ---------------------------------------------------------------------------------------------


def _file_module(path: Path, ref: str) -> types.ModuleType:
    key = hashlib.blake2b(str(path).encode(), digest_size=6).hexdigest()
    stem = re.sub(r"\W", "_", path.stem)
    name = f"neurobatch_user_{stem}_{key}"
    if not path.is_file():
        raise ConfigError(f"cannot import {ref!r}: file {str(path)!r} not found")
    # imported again when the file changed: a long-lived session (a notebook) sees an edit
    info = path.stat()
    stamp = (info.st_mtime_ns, info.st_size)
    loaded = sys.modules.get(name)
    if loaded is not None and getattr(loaded, "__neurobatch_stamp__", None) == stamp:
        return loaded
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot import {ref!r}: {str(path)!r} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    module.__neurobatch_stamp__ = stamp  # type: ignore[attr-defined]
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        raise ConfigError(f"cannot import {ref!r}: {type(e).__name__}: {e}") from e
    try:
        import cloudpickle

        # workers cannot import a module loaded from a file path: send its functions by value
        cloudpickle.register_pickle_by_value(module)
    except (ImportError, ValueError):  # pragma: no cover - cloudpickle comes with distributed
        logger.debug("cloudpickle unavailable: %s pickles by reference", name)
    return module


def import_object(ref: str, *, base_dir: str | os.PathLike[str] | None = None) -> Any:
    """Import the object a ``"module:function"`` or ``"path/to/file.py:function"`` names.

    Parameters
    ----------
    ref : str
        The reference; the attribute part may be dotted (``Class.method``).
    base_dir : str or os.PathLike, optional
        The folder a relative file path is relative to (default: the working directory).
        :func:`load_config` already makes the references in a pipeline file absolute.

    Returns
    -------
    object
        The named object. A file is imported once per process, as a module named after
        its path, and its functions pickle by value (so Dask workers need not import it).

    Raises
    ------
    ConfigError
        If the reference is malformed, the module or file cannot be imported, or the
        attribute does not exist.

    Examples
    --------
    >>> import_object("os.path:join")("a", "b") == __import__("os").path.join("a", "b")
    True
    >>> import_object("os.path:jion")
    Traceback (most recent call last):
    ...
    neurobatch.errors.ConfigError: cannot import 'os.path:jion': module 'posixpath' has no attribute 'jion'; did you mean 'join'?
    """
    try:
        target, attribute, is_file = split_object_ref(ref)
    except ValueError as e:
        raise ConfigError(f"cannot import {ref!r}: {e}") from None
    module: types.ModuleType
    if is_file:
        path = Path(os.path.expanduser(target))
        if not path.is_absolute():
            path = Path(base_dir if base_dir is not None else os.getcwd()) / path
        module = _file_module(path.resolve(), ref)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            raise ConfigError(f"cannot import {ref!r}: {type(e).__name__}: {e}") from e
    obj: Any = module
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            owner = (
                f"module {obj.__name__!r}"
                if isinstance(obj, types.ModuleType)
                else (f"{type(obj).__name__} {getattr(obj, '__qualname__', obj)!r}")
            )
            message = f"cannot import {ref!r}: {owner} has no attribute {part!r}"
            public = [n for n in dir(obj) if not n.startswith("_")]
            suggestion = _suggest(part, public)
            if suggestion:
                message += f"; did you mean {suggestion!r}?"
            raise ConfigError(message) from None
    return obj
