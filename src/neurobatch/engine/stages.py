"""Pipeline stages: Dataset -> Dataset, lazily, on the blocked operators.

A stage takes DESIGN.md's datasets (a Recording, a Processed recording) backed by dask
arrays — usually opened from an item's Zarr store — and returns new ones whose variables
are still lazy; only what a stage must know to go on is computed (the fit coefficients, the
trial plan from the time axis and the events). The pipeline decides where results are
stored and on which scheduler they are computed.

- :func:`filter_channels`: zero-phase low-pass of every channel.
- :func:`fit_reference`: the isosbestic fit (OLS or robust IRLS), one blocked reduction per pass.
- :func:`correct`: the fitted reference, the correction (dF/F, dF) and the whole-signal
  normalisation.
- :func:`preprocess`: the three above, as PhoPro's ``preprocess_signal``.
- :func:`cut_trials`: the event-aligned trials of the processed variable.
- :func:`filter_traces`: zero-phase filtering of every channel of an ephys recording.
- :func:`spike_triggered_average`: every unit's STA over a stimulus movie, and its
  collapsed STRF.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
from distributed import futures_of

from neurobatch.config import (
    EphysFilterConfig,
    FilterConfig,
    FitConfig,
    PreprocessConfig,
    StaConfig,
    TrialsConfig,
)
from neurobatch.engine import blocked
from neurobatch.errors import InputError
from neurobatch.io.store import chunk_length, row_bytes
from neurobatch.kernels import correction as correction_kernels
from neurobatch.kernels import filters
from neurobatch.kernels import trials as trial_kernels
from neurobatch.kernels.fitting import FitResult

logger = logging.getLogger(__name__)

__all__ = [
    "PROCESSED_VARIABLE",
    "correct",
    "cut_trials",
    "events_of",
    "filter_channels",
    "filter_traces",
    "fit_reference",
    "preprocess",
    "spike_triggered_average",
]

#: The processed variable's name for each correction method.
PROCESSED_VARIABLE = {"dff": "dff", "df": "df", "none": "signal_corrected"}

CHANNELS = ("signal", "isosbestic")


def _source(ds: xr.Dataset) -> str:
    return str(ds.attrs.get("source", "recording"))


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


def fit_reference(filtered: xr.Dataset, params: FitConfig) -> FitResult:
    """Fit the isosbestic channel to the signal: ``signal ≈ b0 + b1 * isosbestic``.

    Computed now, on dask's current scheduler: OLS is one blocked pass of co-moments; IRLS
    (Tukey's biweight, as statsmodels' ``RLM``) a few passes per iteration. Persist the
    inputs first when they are expensive to recompute.

    Parameters
    ----------
    filtered : xarray.Dataset
        With ``signal`` and ``isosbestic`` along ``time``.
    params : neurobatch.config.FitConfig
        ``method`` (``ols`` or ``irls``), ``intercept``, and for IRLS ``c`` and ``maxiter``.

    Returns
    -------
    neurobatch.kernels.fitting.FitResult

    Raises
    ------
    neurobatch.errors.InputError
        If the recording has no isosbestic channel, or the fit is impossible (NaN, a
        constant isosbestic, too few samples).

    Examples
    --------
    >>> from neurobatch.config import FitConfig
    >>> iso = np.linspace(1.0, 2.0, 100)
    >>> ds = xr.Dataset({"signal": ("time", 0.5 + 2 * iso), "isosbestic": ("time", iso)})
    >>> fit = fit_reference(ds.chunk(time=30), FitConfig(method="ols"))
    >>> round(fit.intercept, 6), round(fit.slope, 6)
    (0.5, 2.0)
    """
    if "isosbestic" not in filtered:
        raise InputError(
            f"{_source(filtered)}: the {params.method.upper()} fit needs an isosbestic "
            "channel, and this recording has none (single-channel); expected "
            "isosbestic_col in the loader, or fit: none with correction: none"
        )
    iso, sig = filtered["isosbestic"].data, filtered["signal"].data
    try:
        if params.method == "ols":
            return blocked.fit_ols(iso, sig, intercept=params.intercept)
        return blocked.fit_irls(
            iso,
            sig,
            c=params.c,
            maxiter=params.maxiter,
            tol=params.tol,
            intercept=params.intercept,
        )
    except ValueError as error:
        raise InputError(f"{_source(filtered)}: isosbestic fit failed: {error}") from error


def correct(
    filtered: xr.Dataset,
    fit: FitResult | None,
    *,
    correction: correction_kernels.Correction,
    normalization: correction_kernels.Normalization,
) -> xr.Dataset:
    """Add the fitted ``reference`` and the corrected, normalised processed variable, lazily.

    Parameters
    ----------
    filtered : xarray.Dataset
        The filtered recording.
    fit : neurobatch.kernels.fitting.FitResult or None
        The isosbestic fit; None when there is none (then ``correction`` must be ``none``).
    correction : {'dff', 'df', 'none'}
        ``(signal - reference) / max(reference, float32 eps)``, ``signal - reference``, or
        the signal itself.
    normalization : {'none', 'zscore', 'nullz'}
        Whole-signal normalisation of the corrected signal (``ddof=0``).

    Returns
    -------
    xarray.Dataset
        ``filtered`` plus ``reference`` (when fitted) and the processed variable
        (:data:`PROCESSED_VARIABLE`), with attrs ``fit`` and ``processed_variable``.

    Raises
    ------
    neurobatch.errors.InputError
        If a correction needs a reference and there is no fit.

    Examples
    --------
    >>> from neurobatch.kernels.fitting import fit_ols
    >>> iso = np.linspace(1.0, 2.0, 5)
    >>> ds = xr.Dataset({"signal": ("time", 2 * iso * 1.1), "isosbestic": ("time", iso)})
    >>> out = correct(ds, fit_ols(iso, 2 * iso), correction="dff", normalization="none")
    >>> out.attrs["processed_variable"], np.round(out.dff.values, 6).tolist()
    ('dff', [0.1, 0.1, 0.1, 0.1, 0.1])
    """
    name = PROCESSED_VARIABLE[correction]
    out = filtered.copy()
    signal = da.asarray(filtered["signal"].data)
    if fit is None:
        if correction != "none":
            raise InputError(
                f"{_source(filtered)}: correction {correction!r} needs a fitted reference and "
                "there is none (single-channel recording or fit: none); expected "
                "correction: none, or an isosbestic channel with a fit"
            )
        processed = signal
        out.attrs["fit"] = None
    else:
        iso = da.asarray(filtered["isosbestic"].data)
        reference = fit.intercept + fit.slope * iso if fit.has_intercept else fit.slope * iso
        out["reference"] = filtered["isosbestic"].copy(data=reference)
        processed = da.map_blocks(
            correction_kernels.correct, signal, reference, method=correction, dtype=np.float64
        )
        out.attrs["fit"] = fit.to_dict()
    if normalization != "none":
        processed = blocked.normalize(processed, method=normalization)
    out[name] = filtered["signal"].copy(data=processed)
    out[name].attrs = {"correction": correction, "normalization": normalization}
    out.attrs["processed_variable"] = name
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
    coords: dict[str, Any] = {
        "rel_time": plan.rel_time,
        "item_id": ("trial", np.full(n, item_id, dtype=object)),
        "experiment_id": ("trial", np.full(n, experiment_id, dtype=object)),
    }
    for column, values in plan.table().items():
        coords[column] = ("trial", values.astype(object) if values.dtype.kind == "U" else values)
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


# --- large recordings: ephys filtering and spike-triggered averages -------------------------


def filter_traces(
    recording: xr.Dataset, params: EphysFilterConfig, *, chunk_memory: int | None = None
) -> xr.Dataset:
    """Zero-phase filter every channel of an ephys recording, lazily, in µV.

    One task per output block (:func:`neurobatch.engine.blocked.zero_phase_filter`) reads
    the raw ``traces(time, channel)`` (integers, say) around the block, converts them to
    float64 and, when the recording has ``gain_uv``, microvolts; with ``common_reference:
    median`` subtracts the median over channels from every sample; filters each channel
    with a zero-phase Butterworth filter (equal to ``sosfiltfilt`` on the whole array to
    about 1e-12 relative); and casts to ``params.dtype``. No conversion, scaling or
    rechunking runs as a task of its own. Channels stay whole in every block, so memory is
    a few blocks per task, whatever the recording's length.

    Parameters
    ----------
    recording : xarray.Dataset
        ``traces(time, channel)`` chunked along ``time`` only, and ``sampling_rate``.
    params : neurobatch.config.EphysFilterConfig
        Type, cutoff(s), order, common reference and the stored dtype.
    chunk_memory : int, optional
        The memory budget of one stored chunk, as
        :func:`neurobatch.io.store.write_dataset` takes it: the output's blocks are the
        store's chunks (``chunk_memory`` bytes of filtered traces and time stamps), so the
        write stores each block as it is. A task holds about two float64 copies of its
        block (four times ``chunk_memory`` in float32), its raw chunks and its result. By
        default the blocks are the raw chunks.

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
    chunks = None
    if chunk_memory is not None:
        # the output's rows as the store counts them: the filtered traces and the time stamps
        filtered_row = xr.Variable(("time", "channel"), np.empty((0, x.shape[1]), params.dtype))
        chunks = min(
            x.shape[0],
            chunk_length(
                chunk_memory, bytes_per_sample=row_bytes([filtered_row, *coords.values()])
            ),
        )
    gain = recording.attrs.get("gain_uv")
    sos = filters.butter_sos(params.type, params.cutoff_hz, fs=fs, order=params.order)
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
            "filter": json.dumps(params.model_dump(mode="json")),
        },
    )
    out.attrs.pop("gain_uv", None)
    return out


def spike_triggered_average(movie: xr.Dataset, params: StaConfig) -> xr.Dataset:
    """Every unit's spike-triggered average over the stimulus movie, lazily.

    A tree reduction of per-block products of spike counts and frames
    (:func:`neurobatch.engine.blocked.blocked_sta`), never a loop over spikes: memory per
    task is one block of frames and one partial sum, whatever the movie's length. A spike
    at time ``t`` falls in frame ``N = floor((t - onset) * fps)``; spikes before the movie,
    after it, or too early for the whole window are excluded and counted per unit.

    Parameters
    ----------
    movie : xarray.Dataset
        A Movie: ``frames(frame, y, x)`` chunked along ``frame``, ``spike_time(spike)`` with
        coordinate ``unit(spike)``, optionally ``unit_ids(unit)`` (to keep units without
        spikes), and attrs ``fps`` and ``stimulus_onset``.
    params : neurobatch.config.StaConfig
        ``n_lags``, ``delay_frames`` for the collapsed STRF, optional ``units``.

    Returns
    -------
    xarray.Dataset
        ``sta(unit, lag, y, x)`` (float64, NaN for a unit without usable spikes; lazy),
        ``strf(unit, y, x)`` the mean of lags ``0 .. delay_frames - 1``, and per unit
        ``n_spikes`` (used), ``n_before``, ``n_after``, ``n_too_early``; coordinates ``lag``
        (frames) and ``lag_time`` (seconds).

    Warns
    -----
    neurobatch.errors.EmptyUnitWarning
        Naming each unit without a usable spike.

    Examples
    --------
    >>> from neurobatch.config import StaConfig
    >>> frames = np.arange(10.0).reshape(10, 1, 1)
    >>> movie = xr.Dataset({"frames": (("frame", "y", "x"), frames),
    ...                     "spike_time": ("spike", [0.55, 0.75, 0.05])},
    ...                    coords={"unit": ("spike", [1, 1, 1])},
    ...                    attrs={"fps": 10.0, "stimulus_onset": 0.0}).chunk(frame=4)
    >>> out = spike_triggered_average(movie, StaConfig(n_lags=3, delay_frames=2))
    >>> out.sta.values[0, :, 0, 0].tolist(), out.strf.values[0, 0, 0].item()
    ([6.0, 5.0, 4.0], 5.5)
    >>> out.n_spikes.values.tolist(), out.n_too_early.values.tolist()
    ([2], [1])
    """
    missing = [name for name in ("frames", "spike_time") if name not in movie]
    missing += [name for name in ("fps",) if name not in movie.attrs]
    if missing:
        raise InputError(
            f"{_source(movie)}: no {', '.join(missing)}; expected a movie with "
            "frames(frame, y, x), spike_time(spike) with unit(spike), and the fps attribute"
        )
    frames = movie["frames"].transpose("frame", "y", "x")
    data = frames.data if isinstance(frames.data, da.Array) else da.from_array(frames.values)
    names = ["spike_time", "unit"]
    if params.units is None and "unit_ids" in movie:
        names.append("unit_ids")
    arrays = [movie[name].data for name in names]
    # The spikes are binned here, so they are read here, straight from storage: no round trip
    # through a worker, unless they were persisted on a cluster.
    local = {} if futures_of(arrays) else {"scheduler": "sync"}
    spikes = da.compute(*arrays, **local)
    unit_ids: Any = params.units if len(spikes) == 2 else spikes[2]
    fps = float(movie.attrs["fps"])
    onset = float(movie.attrs.get("stimulus_onset", 0.0))
    try:
        result = blocked.blocked_sta(
            data,
            np.asarray(spikes[0]),
            np.asarray(spikes[1]),
            fps=fps,
            n_lags=params.n_lags,
            onset=onset,
            unit_ids=unit_ids,
        )
    except ValueError as error:
        raise InputError(f"{_source(movie)}: {error}") from None
    bins = result.bins
    delay = params.delay_frames or params.n_lags
    sta = xr.DataArray(
        result.sta,
        dims=("unit", "lag", "y", "x"),
        coords={"unit": bins.unit_ids, "lag": bins.lags, "lag_time": ("lag", bins.lag_times)},
    )
    return xr.Dataset(
        {
            "sta": sta,
            "strf": sta.isel(lag=slice(0, delay)).mean("lag"),
            "n_spikes": ("unit", bins.n_used),
            "n_before": ("unit", bins.n_before),
            "n_after": ("unit", bins.n_after),
            "n_too_early": ("unit", bins.n_too_early),
        },
        attrs={
            "source": _source(movie),
            "fps": fps,
            "stimulus_onset": onset,
            "n_lags": params.n_lags,
            "delay_frames": delay,
        },
    )
