"""The sections of the pipeline file: input, preprocessing, trials, hooks, stages, output, engine."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails

from neurobatch.chunking import CHUNK_MEMORY, chunk_budget
from neurobatch.config.base import (
    Bounds,
    EventNames,
    MemorySize,
    NameList,
    _check_bounds,
    _Model,
    _problem,
    _raise_problems,
    _short,
    _suggest,
)
from neurobatch.config.objects import ObjectRef, split_object_ref

__all__ = [
    "EngineConfig",
    "EphysFilterConfig",
    "FilterConfig",
    "FitConfig",
    "HooksConfig",
    "InputConfig",
    "OutputConfig",
    "OutputFormat",
    "PreprocessConfig",
    "StaConfig",
    "StageConfig",
    "StorageTimeoutsConfig",
    "TrialsConfig",
]


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
    files: list[str] | None = None
    """The inputs, listed: paths relative to ``url``, each of which must exist; instead of
    ``pattern``."""
    cache: str | None = None
    """A local folder to copy remote inputs to before they are processed, verified and
    resumed after a kill (:mod:`neurobatch.io.cache`); later runs read the copies. Relative
    paths are relative to the pipeline file. Local inputs are read in place."""

    @field_validator("cache")
    @classmethod
    def _cache_is_local(cls, value: str | None) -> str | None:
        if value is not None and ("://" in value or "::" in value or not value.strip()):
            raise ValueError(f"expected a local folder, got {value!r}")
        return value

    @field_validator("files")
    @classmethod
    def _relative_paths(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("files is empty; expected at least one input")
        for name in value or ():
            if "://" in name or name.startswith("/") or ".." in name.split("/"):
                raise ValueError(
                    f"{name!r} is not a path inside url; expected paths relative to url, "
                    "without '..'"
                )
        return value

    @model_validator(mode="after")
    def _files_or_pattern(self) -> InputConfig:
        if self.files is not None and (self.pattern is not None or self.recursive):
            raise ValueError("give files or pattern/recursive, not both")
        return self

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
    copy_raw: bool = False
    """Also store the raw recording in each item's group (its ``ingest`` stage, as other
    kinds do) before filtering, for stages of your own that need it. By default the filter
    reads the raw file itself and writes only the filtered traces: the same result, without
    writing (and storing) a copy of the raw samples."""


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


#: PhoPro's spellings of the methods, for the hint of a refused one.
_PHOPRO_NAMES = {"OLS": "ols", "IRLS": "irls", "dF/F": "dff", "dF": "df", "dB/B": "dbb", "dB": "db"}


def _named(names: tuple[str, ...]) -> Any:
    """A validator: one of ``names``, or a user's ``module:function`` (``file.py:function``)."""

    def check(value: str) -> str:
        if value in names:
            return value
        try:
            split_object_ref(value)
        except ValueError:
            expected = f"{', '.join(map(repr, names))} or 'module:function'"
            guess = _PHOPRO_NAMES.get(value) or _suggest(value.lower(), names)
            hint = f"; did you mean {guess!r}?" if guess else ""
            raise ValueError(f"got {_short(value)}; expected {expected}{hint}") from None
        return value

    return check


def _named_schema(names: tuple[str, ...]) -> Any:
    function = {"type": "string", "pattern": r"^.+:[A-Za-z_][A-Za-z0-9_.]*$"}
    return WithJsonSchema({"anyOf": [{"type": "string", "enum": list(names)}, function]})


#: The fits of the isosbestic, and the corrections that divide or subtract their reference.
ISOSBESTIC_FITS = ("ols", "irls", "detrend_retrend", "detrend_fit_retrend")
FIT_METHODS = (*ISOSBESTIC_FITS, "bleaching", "none")
CORRECTIONS = ("dff", "df", "dbb", "db", "none")
FitMethod = Annotated[str, AfterValidator(_named(FIT_METHODS)), _named_schema(FIT_METHODS)]
Correction = Annotated[str, AfterValidator(_named(CORRECTIONS)), _named_schema(CORRECTIONS)]


class FitConfig(_Model):
    """How the reference is fitted: to the isosbestic, or to the signal's own bleaching."""

    method: FitMethod = "irls"
    """``ols`` (least squares), ``irls`` (robust, Tukey's biweight: PhoPro's default),
    ``detrend_retrend`` (the isosbestic's dB/B carried onto the signal's bleaching curve),
    ``detrend_fit_retrend`` (the same through an IRLS line between the dB/B), ``bleaching``
    (the signal's bi-exponential bleaching curve: single channel), ``none``, or a function
    ``module:function`` called as ``f(signal, isosbestic) -> (reference, params)``."""
    intercept: bool = True
    """Fit ``signal ≈ b0 + b1 * isosbestic`` (else ``b1 * isosbestic``); ols, irls and
    detrend_fit_retrend."""
    c: float = Field(default=3.0, gt=0)
    """Tukey's tuning constant (irls, detrend_fit_retrend)."""
    maxiter: int = Field(default=1000, ge=1)
    """The most IRLS iterations."""
    tol: float = Field(default=1e-8, ge=0)
    """IRLS stops once the deviance changes by at most this much."""
    window_s: float = Field(default=5.0, gt=0)
    """The bleaching fits' median window in seconds (``int(fs * window_s)`` samples, every
    half window): bleaching, detrend_retrend, detrend_fit_retrend (PhoPro's window_dur_sec)."""


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
        fit["anyOf"] = [ref, {"type": "string"}]
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
    """The reference's fit; a method's name is a shorthand for ``{method: ...}``. By
    default ``irls``, and ``bleaching`` with correction ``dbb`` or ``db``."""
    correction: Correction = "dff"
    """``dff = (signal - reference) / reference``, ``df = signal - reference`` (isosbestic
    fits); ``dbb``, ``db``: the same with the bleaching fit (PhoPro's dB/B, dB); ``none``;
    or a function ``module:function`` called as ``f(signal, reference) -> corrected``."""
    normalization: Literal["none", "zscore", "nullz"] = "none"
    """Whole-signal normalisation after the correction."""
    dtype: Literal["float32", "float64"] = "float32"
    """How the processed signals, and so the trial windows, are stored; they are computed
    in float64 either way. float32 rounds each value by at most 6e-8 of itself: dF/F within
    1e-6 of PhoPro's (float64) for values below 16, at half the bytes to write and read."""

    @model_validator(mode="before")
    @classmethod
    def _bleaching_by_default(cls, data: Any) -> Any:
        # PhoPro's dB/B and dB correct by the signal's bleaching curve: that is their fit
        if isinstance(data, dict) and "fit" not in data and data.get("correction") in ("dbb", "db"):
            return {**data, "fit": "bleaching"}
        return data

    @model_validator(mode="after")
    def _check_correction(self) -> PreprocessConfig:
        fit, correction = self.fit.method, self.correction
        if fit == "none" and correction in CORRECTIONS[:4]:
            message = (
                f"correction {correction!r} needs a fitted reference, and fit is 'none'; "
                "expected correction: none, or a fit (ols, irls, detrend_retrend, "
                "detrend_fit_retrend with an isosbestic channel; bleaching without)"
            )
        elif fit == "bleaching" and correction in ("dff", "df"):
            message = (
                f"correction {correction!r} is for a fitted isosbestic, and fit 'bleaching' "
                "fits the signal's own bleaching; expected correction dbb or db (PhoPro's "
                "dB/B, dB)"
            )
        elif fit in ISOSBESTIC_FITS and correction in ("dbb", "db"):
            message = (
                f"correction {correction!r} is for the single-channel bleaching fit, and fit "
                f"{fit!r} fits the isosbestic; expected correction dff or df, or fit: bleaching"
            )
        else:
            return self
        raise ValidationError.from_exception_data(
            "PreprocessConfig", [_problem(("correction",), "combination", message, correction)]
        )


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


OutputFormat = Literal["zarr", "parquet", "csv", "h5ad", "nwb"]


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
    zarr_format: Literal[3, 2] = 3
    """The Zarr format of every store written (the items' stages, ``trials.zarr``): 2 for
    readers pinned to zarr-python 2 (spikeinterface, GuPPy, neuroconv); both are checksummed
    and read by neurobatch. A change rewrites the items' stores on the next run."""
    storage_options: dict[str, Any] = Field(default_factory=dict)
    """Passed to fsspec."""

    @field_validator("formats")
    @classmethod
    def _unique_formats(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))


class StorageTimeoutsConfig(_Model):
    """How long a storage call waits for an endpoint, and how often it is tried
    (:mod:`neurobatch.io.storage`): a call to an endpoint that never answers fails after
    about ``attempts`` x ``read_s`` seconds (with backoff between attempts)."""

    connect_s: float = Field(default=10.0, gt=0)
    """Seconds to wait for a connection."""
    read_s: float = Field(default=30.0, gt=0)
    """Seconds to wait for the next bytes of an answer."""
    attempts: int = Field(default=3, ge=1)
    """Tries of one S3 request in all (botocore's standard retry mode: exponential backoff
    with jitter); HTTP(S) requests are tried once."""


class EngineConfig(_Model):
    """How the engine schedules items."""

    max_in_flight: int | None = Field(default=None, ge=1)
    """The most items submitted at once; ``null`` for twice the worker threads."""
    chunk_memory: MemorySize = CHUNK_MEMORY
    """The memory budget of one chunk, from which chunk lengths follow. Unset, a run
    derives it from its workers (:meth:`chunk_budget`): a sixty-fourth of a worker
    thread's share of its worker's memory limit, at most ``64MiB`` (and ``64MiB`` when the
    workers have no limit), so that a task's float64 temporaries stay well within it."""
    retries: int = Field(default=2, ge=0)
    """How many times an item is run again, elsewhere, when its worker died (Dask reruns
    it), when its task failed outside the item's own error handling, or when it overran
    ``item_timeout_s`` on a worker process, before the item fails."""
    item_timeout_s: float | None = Field(default=None, gt=0)
    """An item still running after this many seconds fails (``null``: no limit). On worker
    processes the driver cancels its task, restarts the worker and runs the item again,
    up to ``retries`` times (:mod:`neurobatch.engine.tasks`); in the driver's own process
    (threads) the item fails at once and its thread, which cannot be stopped, may not
    commit anything."""
    storage_timeouts: StorageTimeoutsConfig = Field(default_factory=StorageTimeoutsConfig)
    """Connect and read timeouts and attempts of every storage call, in the driver and on
    every worker."""

    def chunk_budget(self, thread_memory: int | None) -> int:
        """Return the chunk memory to use where each worker thread has ``thread_memory`` bytes.

        ``chunk_memory`` when it was set; otherwise :func:`neurobatch.chunking.chunk_budget`
        (a sixty-fourth of ``thread_memory``, at most the 64 MiB default).

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
        if "chunk_memory" in self.model_fields_set:
            return self.chunk_memory
        return chunk_budget(thread_memory, at_most=self.chunk_memory)
