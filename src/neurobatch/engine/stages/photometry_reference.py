"""The photometry kind's fitted reference and its correction (PhoPro's ``preprocess_signal``).

- :func:`fit_reference`: the reference the signal is corrected by, fitted now:

  - ``ols``, ``irls``: a line on the isosbestic (:mod:`neurobatch.engine.blocked.fitting`);
  - ``bleaching``: the signal's own bi-exponential photobleaching curve (single channel);
  - ``detrend_retrend``, ``detrend_fit_retrend``: the isosbestic's relative change carried
    onto the signal's bleaching curve (:mod:`neurobatch.engine.blocked.bleaching`);
  - ``module:function``: a user's fit, PhoPro's contract ``f(signal, isosbestic) ->
    (reference, params)``.

- :func:`correct`: the reference and the processed variable (dF/F, dF, dB/B, dB, none or a
  user's ``module:function``), lazily, then the whole-signal normalisation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import dask.array as da
import dask.base
import numpy as np
import xarray as xr

from neurobatch.config import FitConfig, PreprocessConfig, import_object
from neurobatch.engine import blocked
from neurobatch.engine.stages.base import code_hash
from neurobatch.engine.stages.base import source_of as _source
from neurobatch.errors import InputError
from neurobatch.io.commit import to_json_safe
from neurobatch.kernels import correction as correction_kernels
from neurobatch.kernels.bleaching import reference_r_squared
from neurobatch.kernels.fitting import FitResult
from neurobatch.kernels.reduction import local_reducer

logger = logging.getLogger(__name__)

__all__ = [
    "CORRECTED",
    "PROCESSED_VARIABLE",
    "Fitted",
    "correct",
    "describe_fit",
    "fit_reference",
    "function_hashes",
]

#: The processed variable's name for each built-in correction method.
PROCESSED_VARIABLE = {
    "dff": "dff",
    "df": "df",
    "dbb": "dbb",
    "db": "db",
    "none": "signal_corrected",
}
#: The processed variable's name for a correction given as ``module:function``.
CORRECTED = "corrected"

#: The fits of the isosbestic: a recording without one cannot have them.
_ISOSBESTIC_FITS = ("ols", "irls", "detrend_retrend", "detrend_fit_retrend")
_BUILTIN_FITS = (*_ISOSBESTIC_FITS, "bleaching", "none")


@dataclass(frozen=True)
class Fitted:
    """A fitted reference that is not a line on the isosbestic: a bleaching curve, a
    detrend-retrend reference or a user's, with what was fitted.

    Attributes
    ----------
    reference : dask.array.Array
        The reference along ``time``, with the signal's chunks (lazy for the built-in
        methods: each block from the fit's parameters).
    record : dict
        JSON: ``method``, ``r_squared`` and the method's own parameters.

    Examples
    --------
    >>> fit = Fitted(da.ones(3, chunks=2), {"method": "bleaching", "r_squared": 0.9})
    >>> fit.to_dict()["method"]
    'bleaching'
    """

    reference: da.Array
    record: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """The record (for the recording's ``attrs["fit"]``)."""
        return dict(self.record)


def _is_function(name: str) -> bool:
    """Whether a ``fit.method`` or ``correction`` names a user's ``module:function``."""
    return name not in _BUILTIN_FITS and name not in PROCESSED_VARIABLE


def function_hashes(params: PreprocessConfig) -> dict[str, str]:
    """The code identity of the user's functions a ``preprocess`` section names.

    Parameters
    ----------
    params : neurobatch.config.PreprocessConfig
        The section.

    Returns
    -------
    dict of str to str
        ``fit`` and/or ``correction`` to the hash of the function's source
        (:func:`~neurobatch.engine.stages.code_hash`); empty for built-in methods.

    Raises
    ------
    neurobatch.errors.ConfigError
        If a function cannot be imported.

    Examples
    --------
    >>> function_hashes(PreprocessConfig(fit="ols"))
    {}
    >>> sorted(function_hashes(PreprocessConfig(correction="numpy:subtract")))
    ['correction']
    """
    named = {"fit": params.fit.method, "correction": params.correction}
    return {key: code_hash(import_object(ref)) for key, ref in named.items() if _is_function(ref)}


def fit_reference(filtered: xr.Dataset, params: FitConfig) -> FitResult | Fitted:
    """Fit the reference of a filtered recording, now, on dask's current scheduler.

    Parameters
    ----------
    filtered : xarray.Dataset
        ``signal`` (and ``isosbestic``) along ``time``, with the ``sampling_rate``
        attribute (for the bleaching fits' window of ``int(fs * window_s)`` samples).
    params : neurobatch.config.FitConfig
        The method and its options (not ``none``).

    Returns
    -------
    neurobatch.kernels.fitting.FitResult or Fitted
        A line on the isosbestic (``ols``, ``irls``), or the reference itself.

    Raises
    ------
    neurobatch.errors.InputError
        If the method needs an isosbestic channel and the recording has none, or the fit
        is impossible (NaN, a constant channel, a recording shorter than the median
        window), or a user's function fails or returns something unusable.
    neurobatch.errors.ConfigError
        If a user's function cannot be imported.

    Examples
    --------
    >>> from neurobatch import synthetic
    >>> rec = synthetic.photometry_recording(duration_s=400.0, fs=20.0, seed=0)
    >>> fit = fit_reference(rec.drop_vars("isosbestic").chunk(time=3000),
    ...                     FitConfig(method="bleaching"))
    >>> fit.record["method"], fit.record["window"], fit.record["converged"]
    ('bleaching', 100, True)
    >>> fit.reference.chunks
    ((3000, 3000, 2000),)
    """
    method = params.method
    source = _source(filtered)
    if method in _ISOSBESTIC_FITS and "isosbestic" not in filtered:
        raise InputError(
            f"{source}: the {method} fit needs an isosbestic channel, and this recording has "
            "none (single-channel); expected isosbestic_col in the loader, or fit: bleaching "
            "with correction: dbb (PhoPro's dB/B), or fit: none with correction: none"
        )
    if _is_function(method):
        return _user_fit(filtered, method)
    sig = da.asarray(filtered["signal"].data)
    try:
        if method == "ols":
            return blocked.fit_ols(filtered["isosbestic"].data, sig, intercept=params.intercept)
        if method == "irls":
            return blocked.fit_irls(
                filtered["isosbestic"].data,
                sig,
                c=params.c,
                maxiter=params.maxiter,
                tol=params.tol,
                intercept=params.intercept,
            )
        return _bleaching_fit(filtered, params)
    except ValueError as error:
        raise InputError(f"{source}: the {method} fit failed: {error}") from error


def _bleaching_fit(filtered: xr.Dataset, params: FitConfig) -> Fitted:
    """The ``bleaching`` and ``detrend_*`` fits, with their lazy reference."""
    sig = da.asarray(filtered["signal"].data)
    time = np.asarray(filtered["time"].values, dtype=np.float64)
    window = int(float(filtered.attrs["sampling_rate"]) * params.window_s)
    times = da.from_array(time, chunks=sig.chunks)
    if params.method == "bleaching":
        fit = blocked.fit_bleaching(sig, time, window=window)
        fitted = Fitted(blocked.fitted_reference(fit, times), fit.to_dict())
    else:
        iso = da.asarray(filtered["isosbestic"].data).rechunk(sig.chunks)
        detrended = blocked.fit_detrend(
            sig,
            iso,
            time,
            method=params.method,  # type: ignore[arg-type]
            window=window,
            c=params.c,
            maxiter=params.maxiter,
            tol=params.tol,
            intercept=params.intercept,
        )
        fitted = Fitted(blocked.fitted_reference(detrended, times, iso), detrended.to_dict())
    if not fitted.record["converged"]:
        logger.warning(
            "%s: the %s fit did not converge (the optimiser stopped at its evaluation limit, "
            "as PhoPro's does): its curve is poorly determined; a longer recording or "
            "another window_s may help",
            _source(filtered),
            params.method,
        )
    return fitted


def _user_fit(filtered: xr.Dataset, ref: str) -> Fitted:
    """A user's fit on the whole filtered channels (PhoPro's contract for ``fit_using``)."""
    source = _source(filtered)
    function = import_object(ref)
    sig = da.asarray(filtered["signal"].data)
    iso = filtered["isosbestic"].data if "isosbestic" in filtered else None
    signal, isosbestic = dask.base.compute(sig, iso)
    try:
        result = function(signal, isosbestic)
    except Exception as error:
        raise InputError(
            f"{source}: the fit function {ref} raised {type(error).__name__}: {error}"
        ) from error
    reference, params = result if isinstance(result, tuple) and len(result) == 2 else (result, None)
    reference = _one_per_sample(reference, signal.shape[0], f"{source}: the fit function {ref}")
    try:
        params = to_json_safe(params, name="its params")
    except TypeError as error:
        raise InputError(f"{source}: the fit function {ref}: {error}") from error
    r2 = reference_r_squared(local_reducer([reference], [signal]))
    record = {"method": ref, "params": params, "r_squared": r2, "n_samples": signal.shape[0]}
    return Fitted(da.from_array(reference, chunks=sig.chunks), record)


def _one_per_sample(values: Any, n: int, who: str) -> np.ndarray:
    """A user's reference or corrected signal: finite, one float per sample."""
    try:
        out = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise InputError(
            f"{who} returned {type(values).__name__}; expected an array of {n} numbers "
            "(one per sample)"
        ) from error
    if out.shape != (n,):
        raise InputError(f"{who} returned shape {out.shape}; expected ({n},), one value per sample")
    bad = np.flatnonzero(~np.isfinite(out))
    if bad.size:
        raise InputError(
            f"{who} returned {bad.size} NaN or infinite value(s) (first at sample {bad[0]}); "
            "expected finite values"
        )
    return out


def _call_correction(
    signal: np.ndarray,
    reference: np.ndarray | None = None,
    *,
    function: Callable[..., Any],
    ref: str,
    source: str,
) -> np.ndarray:
    """One call of a user's correction on the whole signal (one block)."""
    try:
        result = function(signal, reference)
    except Exception as error:
        raise InputError(
            f"{source}: the correction function {ref} raised {type(error).__name__}: {error}"
        ) from error
    return _one_per_sample(result, signal.shape[0], f"{source}: the correction function {ref}")


def _user_correction(
    ref: str, signal: da.Array, reference: da.Array | None, source: str
) -> da.Array:
    """A user's correction ``f(signal, reference)`` on the whole arrays, lazily."""
    function = import_object(ref)
    arrays = (
        [signal.rechunk(-1)] if reference is None else [signal.rechunk(-1), reference.rechunk(-1)]
    )
    whole = da.map_blocks(
        _call_correction, *arrays, function=function, ref=ref, source=source, dtype=np.float64
    )
    return whole.rechunk(signal.chunks)


def correct(
    filtered: xr.Dataset,
    fit: FitResult | Fitted | None,
    *,
    correction: str,
    normalization: correction_kernels.Normalization,
) -> xr.Dataset:
    """Add the fitted ``reference`` and the corrected, normalised processed variable, lazily.

    Parameters
    ----------
    filtered : xarray.Dataset
        The filtered recording.
    fit : neurobatch.kernels.fitting.FitResult, Fitted or None
        The fit (:func:`fit_reference`); None when there is none.
    correction : str
        ``dff`` or ``dbb``: ``(signal - reference) / max(reference, float32 eps)``;
        ``df`` or ``db``: ``signal - reference``; ``none``: the signal itself; or a user's
        ``module:function``, called as ``f(signal, reference)`` on the whole arrays (the
        reference None without a fit) and returning one value per sample.
    normalization : {'none', 'zscore', 'nullz'}
        Whole-signal normalisation of the corrected signal (``ddof=0``).

    Returns
    -------
    xarray.Dataset
        ``filtered`` plus ``reference`` (when fitted) and the processed variable
        (:data:`PROCESSED_VARIABLE`, :data:`CORRECTED` for a function), with attrs ``fit``
        and ``processed_variable``.

    Raises
    ------
    neurobatch.errors.InputError
        If a built-in correction needs a reference and there is no fit.
    neurobatch.errors.ConfigError
        If a user's correction cannot be imported.

    Examples
    --------
    >>> from neurobatch.kernels.fitting import fit_ols
    >>> iso = np.linspace(1.0, 2.0, 5)
    >>> ds = xr.Dataset({"signal": ("time", 2 * iso * 1.1), "isosbestic": ("time", iso)})
    >>> out = correct(ds, fit_ols(iso, 2 * iso), correction="dff", normalization="none")
    >>> out.attrs["processed_variable"], np.round(out.dff.values, 6).tolist()
    ('dff', [0.1, 0.1, 0.1, 0.1, 0.1])
    """
    name = PROCESSED_VARIABLE.get(correction, CORRECTED)
    source = _source(filtered)
    out = filtered.copy()
    signal = da.asarray(filtered["signal"].data)
    reference: da.Array | None = None
    if fit is None:
        if correction in PROCESSED_VARIABLE and correction != "none":
            raise InputError(
                f"{source}: correction {correction!r} needs a fitted reference and there is "
                "none (fit: none); expected correction: none, or a fit"
            )
        out.attrs["fit"] = None
    else:
        if isinstance(fit, FitResult):
            iso = da.asarray(filtered["isosbestic"].data)
            reference = fit.intercept + fit.slope * iso if fit.has_intercept else fit.slope * iso
        else:
            reference = fit.reference
        out["reference"] = filtered["signal"].copy(data=reference)
        out.attrs["fit"] = fit.to_dict()
    if correction not in PROCESSED_VARIABLE:
        processed = _user_correction(correction, signal, reference, source)
    elif correction == "none":
        processed = signal
    else:
        processed = da.map_blocks(
            correction_kernels.correct, signal, reference, method=correction, dtype=np.float64
        )
    if normalization != "none":
        processed = blocked.normalize(processed, method=normalization)
    out[name] = filtered["signal"].copy(data=processed)
    out[name].attrs = {"correction": correction, "normalization": normalization}
    out.attrs["processed_variable"] = name
    return out


def describe_fit(fit: Mapping[str, Any]) -> str:
    """One line for the log: the method, the line on the isosbestic (ols, irls), the R².

    Examples
    --------
    >>> describe_fit({"method": "ols", "intercept": 0.5, "slope": 2.0, "r_squared": 0.9})
    'fit ols: reference = 0.5 + 2 * x, R² = 0.9000'
    >>> describe_fit({"method": "bleaching", "r_squared": 0.95})
    'fit bleaching, R² = 0.9500'
    """
    line = ""
    if fit["method"] in ("ols", "irls"):
        line = f": reference = {fit['intercept']:.6g} + {fit['slope']:.6g} * x"
    return f"fit {fit['method']}{line}, R² = {float(fit.get('r_squared', np.nan)):.4f}"
