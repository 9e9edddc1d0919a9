"""Detrend-retrend references: the isosbestic's bleaching divided out, the signal's put back.

PhoPro 0.6.0's ``detrend_retrend`` and ``detrend_fit_retrend``
(``PhoPro.utils.reference_fitting``), each channel with its own photobleaching fit
(:mod:`neurobatch.kernels.bleaching`):

* ``detrend_retrend``: ``reference = d_iso * B_sig + B_sig`` with ``d_iso = (iso - B_iso) /
  B_iso`` the isosbestic's dB/B;
* ``detrend_fit_retrend``: the same after the robust line (IRLS, Tukey's biweight) from the
  isosbestic's dB/B to the signal's: ``reference = (b0 + b1 d_iso) * B_sig + B_sig``.

PhoPro records ``params_iso + params_exp`` (NumPy arrays: their sum, element by element)
for both, and ``detrend_fit_retrend`` adds the line's parameters to that: with an intercept
(its default) the shapes (5,) and (2,) do not broadcast and it raises. Here each channel's
curve and the line are kept apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from neurobatch.kernels.bleaching import (
    BleachingFit,
    _validate_channel,
    fit_bleaching,
    reference_r_squared,
)
from neurobatch.kernels.fitting import FitResult, fit_irls
from neurobatch.kernels.reduction import local_reducer

__all__ = [
    "DetrendFit",
    "DetrendMethod",
    "detrend",
    "detrend_reference",
    "fit_detrend",
    "retrend",
]

Float64Array = NDArray[np.float64]
DetrendMethod = Literal["detrend_retrend", "detrend_fit_retrend"]


def detrend(x: ArrayLike, curve: ArrayLike) -> Float64Array:
    """``(x - B) / B``: a channel's change relative to its bleaching curve (PhoPro's dB/B).

    Examples
    --------
    >>> detrend([2.0, 3.0], [1.0, 2.0])
    array([1. , 0.5])
    """
    x_arr = np.asarray(x, dtype=np.float64)
    b = np.asarray(curve, dtype=np.float64)
    return (x_arr - b) / b


def retrend(d: ArrayLike, curve: ArrayLike) -> Float64Array:
    """``d * B + B``: a relative change put back onto a bleaching curve.

    Examples
    --------
    >>> retrend([1.0, 0.5], [1.0, 2.0])
    array([2., 3.])
    """
    b = np.asarray(curve, dtype=np.float64)
    return np.asarray(d, dtype=np.float64) * b + b


@dataclass(frozen=True)
class DetrendFit:
    """A detrend-retrend reference: both channels' bleaching fits, and the line between.

    Attributes
    ----------
    method : {'detrend_retrend', 'detrend_fit_retrend'}
        The method.
    signal, isosbestic : BleachingFit
        Each channel's photobleaching fit.
    line : FitResult or None
        ``detrend_fit_retrend``: the IRLS fit of the signal's ``dB/B`` on the isosbestic's
        (its ``r_squared`` in that space). None for ``detrend_retrend``.
    r_squared : float
        PhoPro's R² of the signal against the final reference.

    Examples
    --------
    >>> from neurobatch.kernels.bleaching import BiExponential
    >>> curve = BleachingFit(BiExponential(0.0, 1.0, 0.0, 1.0, 2.0, True, 1), 0.0, 3, 2, 1)
    >>> fit = DetrendFit("detrend_retrend", curve, curve, None, 1.0)
    >>> fit.reference([3.0], [0.0]), fit.to_dict()["isosbestic_bleaching"]["c"]
    (array([3.]), 2.0)
    """

    method: DetrendMethod
    signal: BleachingFit
    isosbestic: BleachingFit
    line: FitResult | None
    r_squared: float

    def reference(self, isosbestic: ArrayLike, time: ArrayLike) -> Float64Array:
        """The reference at ``time`` from the isosbestic there (elementwise: any block)."""
        return detrend_reference(
            isosbestic, time, signal=self.signal, isosbestic_fit=self.isosbestic, line=self.line
        )

    def to_dict(self) -> dict[str, Any]:
        """The fit as JSON: the line's coefficients when fitted (its own R² in the
        detrended space as ``detrended_r_squared``), the R² of the signal against the
        reference, whether every step converged, and each channel's curve."""
        line: dict[str, Any] = {}
        converged = self.signal.curve.converged and self.isosbestic.curve.converged
        if self.line is not None:
            line = self.line.to_dict()
            line["detrended_r_squared"] = line.pop("r_squared")
            del line["method"]
            converged = converged and self.line.converged
        return {"method": self.method, **line} | {
            "r_squared": self.r_squared,
            "n_samples": self.signal.n_samples,
            "converged": converged,
            "signal_bleaching": self.signal.to_dict(),
            "isosbestic_bleaching": self.isosbestic.to_dict(),
        }


def detrend_reference(
    isosbestic: ArrayLike,
    time: ArrayLike,
    *,
    signal: BleachingFit,
    isosbestic_fit: BleachingFit,
    line: FitResult | None,
) -> Float64Array:
    """The detrend-retrend reference at ``time``: elementwise, so any block gives its own.

    ``d = (iso - B_iso) / B_iso``, then ``d = b0 + b1 d`` when there is a ``line``, and
    ``reference = d B_sig + B_sig``.

    Parameters
    ----------
    isosbestic : array_like
        The isosbestic at ``time``.
    time : array_like
        Times, seconds (the same shape).
    signal, isosbestic_fit : BleachingFit
        The signal's and the isosbestic's bleaching fits.
    line : neurobatch.kernels.fitting.FitResult or None
        The line between the detrended channels (``detrend_fit_retrend``).

    Returns
    -------
    numpy.ndarray of float64

    Examples
    --------
    >>> from neurobatch.kernels.bleaching import BiExponential
    >>> flat = BleachingFit(BiExponential(0.0, 1.0, 0.0, 1.0, 2.0, True, 1), 0.0, 3, 2, 1)
    >>> high = BleachingFit(BiExponential(0.0, 1.0, 0.0, 1.0, 4.0, True, 1), 0.0, 3, 2, 1)
    >>> detrend_reference([3.0], [0.0], signal=high, isosbestic_fit=flat, line=None)
    array([6.])
    """
    d = detrend(isosbestic, isosbestic_fit.reference(time))
    if line is not None:
        d = line.reference(d)
    return retrend(d, signal.reference(time))


def fit_detrend(
    signal: ArrayLike,
    isosbestic: ArrayLike,
    time: ArrayLike,
    *,
    method: DetrendMethod,
    window: int,
    stride: int | None = None,
    c: float = 3.0,
    maxiter: int = 1000,
    tol: float = 1e-8,
    intercept: bool = True,
) -> DetrendFit:
    """PhoPro's ``detrend_retrend`` and ``detrend_fit_retrend`` references of whole arrays.

    Each channel gets its own :func:`fit_bleaching`; the isosbestic's ``dB/B``
    (:func:`detrend`) is put back onto the signal's curve (:func:`retrend`), for
    ``detrend_fit_retrend`` after the robust line (:func:`neurobatch.kernels.fitting.
    fit_irls`) from the isosbestic's ``dB/B`` to the signal's.

    Parameters
    ----------
    signal, isosbestic : array_like, shape (n,)
        The (filtered) channels.
    time : array_like, shape (n,)
        The time axis, seconds.
    method : {'detrend_retrend', 'detrend_fit_retrend'}
        Whether to fit a line between the detrended channels.
    window : int
        The strided median's window, samples.
    stride : int, optional
        Its stride; by default ``window // 2``.
    c, maxiter, tol, intercept
        The IRLS fit's options (``detrend_fit_retrend``); see
        :func:`neurobatch.kernels.fitting.fit_irls`.

    Returns
    -------
    DetrendFit

    Raises
    ------
    TypeError, ValueError
        As :func:`fit_bleaching` and :func:`~neurobatch.kernels.fitting.fit_irls`, and if
        ``method`` is unknown.

    Examples
    --------
    >>> t = np.arange(30_000) / 50.0
    >>> bleach = 1.0 + 0.3 * np.exp(-t / 60.0) + 0.1 * np.exp(-t / 500.0)
    >>> wiggle = 0.01 * np.sin(t)
    >>> fit = fit_detrend(2.0 * bleach * (1 + wiggle), bleach * (1 + wiggle), t,
    ...                   method="detrend_fit_retrend", window=250)
    >>> round(fit.line.slope, 2), round(fit.r_squared, 4)
    (1.0, 1.0)
    """
    if method not in ("detrend_retrend", "detrend_fit_retrend"):
        raise ValueError(
            f"method must be 'detrend_retrend' or 'detrend_fit_retrend', got {method!r}."
        )
    t = _validate_channel("time", time)
    sig = _validate_channel("signal", signal, t.size)
    iso = _validate_channel("isosbestic", isosbestic, t.size)
    fits = [fit_bleaching(x, t, window=window, stride=stride) for x in (sig, iso)]
    line = None
    if method == "detrend_fit_retrend":
        d_iso = detrend(iso, fits[1].reference(t))
        d_sig = detrend(sig, fits[0].reference(t))
        line = fit_irls(d_iso, d_sig, c=c, maxiter=maxiter, tol=tol, intercept=intercept)
    reference = detrend_reference(iso, t, signal=fits[0], isosbestic_fit=fits[1], line=line)
    r2 = reference_r_squared(local_reducer([reference], [sig]))
    return DetrendFit(method, fits[0], fits[1], line, r2)
