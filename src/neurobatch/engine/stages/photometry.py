"""The photometry kind: ingest -> preprocess -> trials, as PhoPro's ``PhotometryPipeline``.

The operations take DESIGN.md's datasets (a Recording, a Processed recording) backed by
dask arrays — usually opened from an item's Zarr store — and return new ones whose
variables are still lazy; only what a step must know to go on is computed (the fit
coefficients, the trial plan from the time axis and the events).

- :func:`filter_channels`: zero-phase low-pass of every channel.
- :func:`fit_reference`: the reference: a line on the isosbestic (OLS, robust IRLS), the
  signal's photobleaching curve, a detrend-retrend reference, or a user's fit
  (:mod:`.photometry_reference`).
- :func:`correct`: the fitted reference, the correction (dF/F, dF, dB/B, dB, or a user's)
  and the whole-signal normalisation.
- :func:`preprocess`: the three above, as PhoPro's ``preprocess_signal``.
- :func:`cut_trials`: the event-aligned trials of the processed variable.

The stages :data:`PREPROCESS` and :data:`TRIALS` run them on an item.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from neurobatch.chunking import IN_MEMORY_CHUNKS
from neurobatch.config import FilterConfig, PipelineConfig, PreprocessConfig, TrialsConfig
from neurobatch.engine import blocked
from neurobatch.engine.hooks import apply_hook
from neurobatch.engine.stages.base import FigureContext, Stage, StageContext, StageOutput
from neurobatch.engine.stages.base import source_of as _source
from neurobatch.engine.stages.photometry_reference import (
    PROCESSED_VARIABLE,
    correct,
    describe_fit,
    fit_reference,
    function_hashes,
)
from neurobatch.errors import InputError
from neurobatch.io.zarr import open_dataset, write_dataset
from neurobatch.kernels import filters
from neurobatch.kernels import trials as trial_kernels

logger = logging.getLogger(__name__)

__all__ = [
    "PREPROCESS",
    "PROCESSED_VARIABLE",
    "TRIALS",
    "correct",
    "cut_trials",
    "events_of",
    "filter_channels",
    "fit_reference",
    "preprocess",
]

CHANNELS = ("signal", "isosbestic")


def _channels(ds: xr.Dataset) -> list[str]:
    return [name for name in CHANNELS if name in ds.data_vars]


def filter_channels(recording: xr.Dataset, params: FilterConfig | None) -> xr.Dataset:
    """Filter ``signal`` and ``isosbestic`` with a zero-phase Butterworth filter, lazily.

    By default a low-pass, as PhoPro: ``butter(order, cutoff / (fs / 2), "low",
    output="sos")`` then ``sosfiltfilt`` with
    SciPy's default odd padding, as PhoPro does; blocked with an overlap derived from the
    filter's impulse response (:func:`neurobatch.engine.blocked.zero_phase_filter`).

    Parameters
    ----------
    recording : xarray.Dataset
        A Recording with ``signal`` (and ``isosbestic``) along ``time`` and the
        ``sampling_rate`` attribute.
    params : neurobatch.config.FilterConfig or None
        Type (low-pass by default), cutoff and order; None returns the recording unchanged.

    Returns
    -------
    xarray.Dataset
        The recording with its channels filtered (dask-backed).

    Raises
    ------
    neurobatch.errors.InputError
        If the cutoff is not below the Nyquist frequency or the recording is too short
        for the filter's padding.

    Examples
    --------
    >>> from neurobatch.config import FilterConfig
    >>> t = np.arange(2000) / 100.0
    >>> rec = xr.Dataset({"signal": ("time", np.sin(t) + np.sin(40 * t))}, coords={"time": t},
    ...                  attrs={"sampling_rate": 100.0, "source": "demo"})
    >>> out = filter_channels(rec.chunk(time=500), FilterConfig(cutoff_hz=3.0, order=4))
    >>> bool(abs(out.signal - np.sin(t)).isel(time=slice(200, -200)).max() < 0.01)
    True
    """
    if params is None:
        return recording
    fs = float(recording.attrs["sampling_rate"])
    if not max(np.atleast_1d(params.cutoff_hz)) < fs / 2:
        raise InputError(
            f"{_source(recording)}: the filter cutoff {params.cutoff_hz} Hz is not below the "
            f"Nyquist frequency {fs / 2:g} Hz of this recording (sampled at {fs:g} Hz); "
            "expected a lower cutoff_hz"
        )
    sos = filters.butter_sos(params.type, params.cutoff_hz, fs=fs, order=params.order)
    try:
        filters.validate_signal_length(recording.sizes["time"], sos)
    except ValueError as error:
        raise InputError(f"{_source(recording)}: {error}") from error
    out = recording.copy()
    for name in _channels(recording):
        out[name] = recording[name].copy(
            data=blocked.zero_phase_filter(da.asarray(recording[name].data), sos, axis=0)
        )
    return out


def preprocess(
    recording: xr.Dataset,
    params: PreprocessConfig,
    *,
    persist: Callable[[xr.Dataset], xr.Dataset] = lambda ds: ds,
) -> xr.Dataset:
    """Filter, fit, correct and normalise one recording, as PhoPro's ``preprocess_signal``.

    Parameters
    ----------
    recording : xarray.Dataset
        A Recording, usually dask-backed from its Zarr store.
    params : neurobatch.config.PreprocessConfig
        The ``preprocess`` section of the pipeline file.
    persist : callable, optional
        Applied to the filtered channels before the fit reads them (several times for
        IRLS): e.g. ``xarray.Dataset.persist`` when they fit in memory, or a write to
        Zarr and a re-open when they do not. By default they are recomputed.

    Returns
    -------
    xarray.Dataset
        The Processed recording (lazy): see :func:`correct`.

    Examples
    --------
    >>> from neurobatch import synthetic
    >>> from neurobatch.config import PreprocessConfig
    >>> rec = synthetic.photometry_recording(duration_s=120.0, fs=100.0, seed=0)
    >>> params = PreprocessConfig(fit="ols", correction="dff")
    >>> out = preprocess(rec.chunk(time=4000), params)
    >>> out.attrs["processed_variable"], out.attrs["fit"]["method"]
    ('dff', 'ols')
    >>> bool(abs(out.dff - rec.true_dff).isel(time=slice(1000, -1000)).mean() < 0.01)
    True
    """
    filtered = persist(filter_channels(recording, params.filter))
    fit = None if params.fit.method == "none" else fit_reference(filtered, params.fit)
    return correct(filtered, fit, correction=params.correction, normalization=params.normalization)


def events_of(recording: xr.Dataset) -> dict[str, np.ndarray]:
    """The events of a Recording as a mapping of name to sorted occurrence times.

    Every name in ``attrs["event_names"]`` is present, with an empty array when it never
    occurs.

    Parameters
    ----------
    recording : xarray.Dataset
        With ``event_time(event)`` and coordinate ``event_name(event)``.

    Returns
    -------
    dict of str to numpy.ndarray

    Examples
    --------
    >>> rec = xr.Dataset({"event_time": ("event", [2.0, 1.0])},
    ...                  coords={"event_name": ("event", ["b", "a"])},
    ...                  attrs={"event_names": ["a", "b", "c"]})
    >>> {k: v.tolist() for k, v in events_of(rec).items()}
    {'a': [1.0], 'b': [2.0], 'c': []}
    """
    names = list(recording.attrs.get("event_names", []))
    if "event_time" not in recording:
        return {name: np.empty(0) for name in names}
    times = np.asarray(recording["event_time"].values, dtype=np.float64)
    labels = np.asarray(recording["event_name"].values, dtype=object)
    names += [name for name in dict.fromkeys(labels.tolist()) if name not in names]
    return {name: np.sort(times[labels == name]) for name in names}


def _describe_events(events: Mapping[str, np.ndarray]) -> str:
    return ", ".join(f"{name} x{times.size}" for name, times in events.items()) or "none"


def cut_trials(
    processed: xr.Dataset,
    params: TrialsConfig,
    *,
    item_id: str,
    experiment_id: str,
    passdown: Mapping[str, Any] | None = None,
) -> tuple[xr.Dataset, trial_kernels.TrialPlan]:
    """Cut the event-aligned trials of the processed variable, lazily.

    The plan (which trials, where, which events in each) comes from the time axis and the
    event table alone (:func:`neurobatch.kernels.trials.plan_trials`); the windows are a
    blocked gather over the processed variable
    (:func:`neurobatch.engine.blocked.extract_trials`).

    Parameters
    ----------
    processed : xarray.Dataset
        A Processed recording (see :func:`preprocess`).
    params : neurobatch.config.TrialsConfig
        The ``trials`` section of the pipeline file.
    item_id, experiment_id : str
        Written on every trial.
    passdown : mapping, optional
        Metadata copied into one per-trial column each.

    Returns
    -------
    trials : xarray.Dataset
        DESIGN.md's Trials: the processed variable ``(trial, rel_time)`` and the per-trial
        coordinates.
    plan : neurobatch.kernels.trials.TrialPlan
        Which candidates were dropped and why.

    Raises
    ------
    neurobatch.errors.InputError
        If an alignment event never occurs, or the plan is impossible (e.g. an invalid
        window with ``invalid_window_policy='error'``).

    Examples
    --------
    >>> from neurobatch.config import TrialsConfig
    >>> t = np.arange(1000) / 10.0
    >>> ds = xr.Dataset({"dff": ("time", np.sin(t)), "event_time": ("event", [20.0, 50.0])},
    ...                 coords={"time": t, "event_name": ("event", ["cue", "cue"])},
    ...                 attrs={"sampling_rate": 10.0, "processed_variable": "dff",
    ...                        "event_names": ["cue"]})
    >>> trials, plan = cut_trials(ds.chunk(time=300), TrialsConfig(align_to="cue",
    ...                           bounds_s=(-1.0, 2.0)), item_id="a", experiment_id="a")
    >>> trials.dff.shape, trials.trial_num.values.tolist()
    ((2, 30), [1, 2])
    """
    name = processed.attrs["processed_variable"]
    events = events_of(processed)
    align = [params.align_to] if isinstance(params.align_to, str) else list(params.align_to)
    if not any(events.get(a, np.empty(0)).size for a in align):
        raise InputError(
            f"{_source(processed)}: the alignment event {' / '.join(map(repr, align))} never "
            f"occurs (events found: {_describe_events(events)}); expected at least one"
        )
    try:
        plan = trial_kernels.plan_trials(
            processed["time"].values,
            events,
            align_to=params.align_to,
            bounds_s=params.bounds_s,
            center_on=params.center_on,
            baseline_bounds_s=params.baseline_bounds_s,
            tolerances_s=params.tolerances_s,
            normalization=params.normalization,
            check_overlap=params.check_overlap,
            all_events=params.all_events,
            window_alignment=params.window_alignment,
            invalid_window_policy=params.invalid_window_policy,
            event_conflict=params.event_conflict,
            fs=float(processed.attrs["sampling_rate"]),
        )
    except ValueError as error:
        raise InputError(f"{_source(processed)}: {error}") from error
    for number, reason in plan.dropped.items():
        logger.info("%s: trial candidate %d dropped: %s", item_id, number, reason)
    data = blocked.extract_trials(da.asarray(processed[name].data), plan)
    n = plan.n_trials
    # the obs table's order (PhoPro's): trial_num, start/stop_time, the events, then metadata
    coords: dict[str, Any] = {"rel_time": plan.rel_time}
    for column, values in plan.table().items():
        coords[column] = ("trial", values.astype(object) if values.dtype.kind == "U" else values)
    coords["item_id"] = ("trial", np.full(n, item_id, dtype=object))
    coords["experiment_id"] = ("trial", np.full(n, experiment_id, dtype=object))
    for key, value in (passdown or {}).items():
        if key in coords:
            raise InputError(
                f"{_source(processed)}: passdown_metadata {key!r} would overwrite the trial "
                "column of the same name; expected a metadata key that is not an event or a "
                "trial column"
            )
        coords[key] = ("trial", _column(value, n))
    trials = xr.Dataset(
        {name: (("trial", "rel_time"), data)},
        coords=coords,
        attrs={
            "processed_variable": name,
            "sampling_rate": float(processed.attrs["sampling_rate"]),
        },
    )
    trials[name].attrs = dict(processed[name].attrs)
    return trials, plan


def _column(value: Any, n: int) -> np.ndarray:
    """One passed-down metadata value repeated on every trial."""
    if isinstance(value, bool | int | float | np.number | np.bool_):
        return np.full(n, value)
    if value is None:
        return np.full(n, np.nan)
    text = value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)
    return np.full(n, text, dtype=object)


# --- the stages ------------------------------------------------------------------------------


def _persist(context: StageContext) -> Callable[[xr.Dataset], xr.Dataset]:
    """Keep the filtered channels for the fit's passes: in memory, or in a scratch store."""
    storage_options = context.config.output.storage_options

    def persist(filtered: xr.Dataset) -> xr.Dataset:
        nbytes = sum(filtered[name].nbytes for name in CHANNELS if name in filtered)
        if nbytes <= IN_MEMORY_CHUNKS * context.chunk_memory:
            logger.debug("filtered channels (%d bytes) kept in memory for the fit", nbytes)
            return filtered.persist()
        url = f"{context.scratch_url}/filtered.zarr"
        logger.info("filtered channels (%d bytes) go through %s for the fit", nbytes, url)
        write_dataset(
            filtered, url, chunk_memory=context.chunk_memory, storage_options=storage_options
        )
        return open_dataset(url, storage_options=storage_options)

    return persist


def _run_preprocess(context: StageContext) -> StageOutput:
    recording = context.inputs["ingest"]
    logger.info(
        "preprocessing (%d samples at %g Hz)",
        recording.sizes["time"],
        recording.attrs.get("sampling_rate", float("nan")),
    )
    processed = preprocess(recording, context.config.preprocess, persist=_persist(context))
    processed = apply_hook(context.hooks, "post_preprocess", processed)
    processed = _stored_as(processed, context.config.preprocess.dtype)
    fit = processed.attrs.get("fit")
    if fit:
        logger.info("%s", describe_fit(fit))
    return StageOutput(processed, record={"fit": fit})


def _stored_as(ds: xr.Dataset, dtype: str) -> xr.Dataset:
    """``ds`` with its floating-point signals (data variables along ``time`` or
    ``rel_time``: channels, windows) cast to ``dtype``; coordinates (time, per-trial
    columns) and other variables keep theirs."""
    cast = {
        name: variable.astype(dtype)
        for name, variable in ds.data_vars.items()
        if variable.dtype.kind == "f"
        and variable.dtype != dtype
        and {"time", "rel_time"} & set(map(str, variable.dims))
    }
    return ds.assign(cast)


def _passdown(metadata: Mapping[str, Any], keys: list[str], item_id: str) -> dict[str, Any]:
    values = {}
    for key in keys:
        if key not in metadata:
            logger.warning(
                "%s: passdown_metadata %r is not in this recording's metadata (keys: %s); "
                "its column is empty for this item",
                item_id,
                key,
                ", ".join(sorted(metadata)),
            )
        values[key] = metadata.get(key)
    return values


def _run_trials(context: StageContext) -> StageOutput:
    config = context.config
    assert config.trials is not None  # the stage runs only with a trials section
    experiment_id = context.experiment_id()
    trials, plan = cut_trials(
        context.inputs["preprocess"],
        config.trials,
        item_id=context.item_id,
        experiment_id=experiment_id,
        passdown=_passdown(context.metadata, config.passdown_metadata, context.item_id),
    )
    trials = apply_hook(context.hooks, "post_trials", trials).compute()
    trials = _stored_as(trials, config.preprocess.dtype)
    dropped = {str(number): reason for number, reason in plan.dropped.items()}
    for number, reason in dropped.items():
        logger.warning("trial candidate %s dropped: %s", number, reason)
    logger.info("%d trials", trials.sizes["trial"])
    record = {"n_trials": trials.sizes["trial"], "dropped": dropped, "experiment_id": experiment_id}
    return StageOutput(trials, record=record)


def _preprocess_parameters(config: PipelineConfig) -> dict[str, Any]:
    parameters = config.preprocess.model_dump(mode="json")
    # a user's fit or correction: its source joins the key, so that editing it redoes
    code = function_hashes(config.preprocess)
    return parameters | {"code": code} if code else parameters


def _trials_parameters(config: PipelineConfig) -> dict[str, Any]:
    trials = None if config.trials is None else config.trials.model_dump(mode="json")
    return {"trials": trials, "passdown_metadata": list(config.passdown_metadata)}


def _has_trials(config: PipelineConfig) -> bool:
    return config.trials is not None


#: Filter, fit, correct and normalise the ingested recording (PhoPro's ``preprocess_signal``).
PREPROCESS = Stage(
    "preprocess",
    run=_run_preprocess,
    needs=("ingest",),
    parameters=_preprocess_parameters,
    hooks=("post_load", "post_preprocess"),
    chunk_dim="time",
    process="dF/F estimation",
    processing_stage="Processing",
)

#: Cut the event-aligned trials of the processed variable (PhoPro's ``extract_trials``).
TRIALS = Stage(
    "trials",
    run=_run_trials,
    needs=("preprocess",),
    parameters=_trials_parameters,
    hooks=("id_builder", "post_trials"),
    store="trials",
    enabled=_has_trials,
)


def trial_types(trials: xr.Dataset | None, config: PipelineConfig) -> Any:
    """Each trial's type (:func:`neurobatch.plots.trial_labels`), or None without trials."""
    from neurobatch import plots

    if trials is None or config.trials is None or "trial_num" not in trials.coords:
        return None
    align = config.trials.align_to
    columns = [*config.trials.center_on, "align_event", "trial_num"]
    return plots.trial_labels(
        {c: trials[c].values for c in columns if c in trials.coords},
        center_on=config.trials.center_on,
        align_to=align if isinstance(align, str) else "",
    )


def figures(context: FigureContext) -> None:
    """The item's dashboard: the processed signal, the fit and the trials."""
    from neurobatch import plots  # matplotlib: imported only when dashboards are asked for

    processed = context.open("preprocess")
    assert processed is not None  # figures are drawn after every stage committed
    # the title names the experiment and the fit (method, R²): let the dashboard compose it
    processed = processed.assign_attrs(experiment_id=context.experiment_id)
    path = context.path("")
    so = context.config.output.storage_options
    trials = context.open("trials")
    plots.dashboard(
        processed, trials, path, group_by=trial_types(trials, context.config), storage_options=so
    )
    logger.info("dashboard written to %s", path)
