"""PhoPro's bi-exponential photobleaching fit.

A photobleaching curve is ``B(t) = a1 exp(-t / tau1) + a2 exp(-t / tau2) + c``, fitted
as PhoPro 0.6.0 does (``PhoPro.utils.reference_fitting.fit_photobleaching``):

1. The signal is reduced to the medians of windows of ``window`` samples taken every
   ``stride`` samples (:func:`strided_median`); each median stands at its window's centre.
2. A robust scale of the reduced series comes from its residuals around a LOWESS smooth
   (:func:`neurobatch.kernels.lowess.lowess`, ``frac=0.05``, 3 robustness iterations;
   :func:`robust_scale`).
3. ``scipy.optimize.least_squares`` fits the curve to the reduced series with the soft-L1
   loss at that scale, from PhoPro's initial guess and within its bounds
   (:func:`solve_bleaching`).

Only step 1 reads the whole signal; steps 2 and 3 run on the reduced series (one point
every ``stride`` samples), so a blocked run computes the medians block by block
(``neurobatch.engine.blocked.bleaching``) and then fits exactly as here. The two-channel
references built on these fits are in :mod:`neurobatch.kernels.detrend`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import least_squares

from neurobatch.kernels._validation import validate_finite, validate_same_length
from neurobatch.kernels.comoments import _r_squared, _ssr, comoments_chunk, comoments_combine
from neurobatch.kernels.lowess import lowess
from neurobatch.kernels.reduction import Reducer, local_reducer

__all__ = [
    "LOWESS_FRACTION",
    "LOWESS_ITERATIONS",
    "BiExponential",
    "BleachingFit",
    "bi_exponential",
    "fit_bleaching",
    "reference_r_squared",
    "robust_scale",
    "solve_bleaching",
    "strided_median",
    "window_starts",
]

Float64Array = NDArray[np.float64]

#: PhoPro's LOWESS span for the robust scale: 5 % of the reduced series.
LOWESS_FRACTION = 0.05
#: PhoPro's LOWESS robustness iterations.
LOWESS_ITERATIONS = 3
#: The scale of a normal distribution's MAD (PhoPro's ``mad_std``).
MAD_SCALE = 1.4826


# --- the curve ---------------------------------------------------------------------------


def bi_exponential(
    t: ArrayLike, a1: float, tau1: float, a2: float, tau2: float, c: float
) -> Float64Array:
    """PhoPro's photobleaching curve ``a1 exp(-t / tau1) + a2 exp(-t / tau2) + c``.

    Parameters
    ----------
    t : array_like
        Times, in seconds (the recording's own time axis, not shifted to 0).
    a1, tau1 : float
        Amplitude and time constant (s) of the fast component.
    a2, tau2 : float
        Amplitude and time constant (s) of the slow component.
    c : float
        The offset the curve decays to.

    Returns
    -------
    numpy.ndarray of float64
        The curve at ``t``, computed in PhoPro's order of operations.

    Examples
    --------
    >>> bi_exponential([0.0, 10.0], 2.0, 10.0, 1.0, 1e9, 3.0).round(6)
    array([6.      , 4.735759])
    """
    x = np.asarray(t, dtype=np.float64)
    return a1 * np.exp(-x / tau1) + a2 * np.exp(-x / tau2) + c


@dataclass(frozen=True)
class BiExponential:
    """The fitted parameters of :func:`bi_exponential`, and how the optimiser ended.

    Attributes
    ----------
    a1, tau1, a2, tau2, c : float
        The curve's parameters (see :func:`bi_exponential`).
    converged : bool
        ``scipy.optimize.least_squares``' ``success`` (a tolerance was met, not
        ``max_nfev``).
    n_evaluations : int
        Its number of function evaluations (``nfev``).

    Examples
    --------
    >>> BiExponential(2.0, 10.0, 1.0, 1e9, 3.0, True, 12)([0.0])
    array([6.])
    """

    a1: float
    tau1: float
    a2: float
    tau2: float
    c: float
    converged: bool
    n_evaluations: int

    def __call__(self, t: ArrayLike) -> Float64Array:
        """The curve at times ``t`` (any shape)."""
        return bi_exponential(t, self.a1, self.tau1, self.a2, self.tau2, self.c)


@dataclass(frozen=True)
class BleachingFit:
    """A photobleaching fit of one channel (PhoPro's ``fit_photobleaching``).

    Attributes
    ----------
    curve : BiExponential
        The fitted curve.
    r_squared : float
        ``1 - Σ(x - B)² / Σ(x - mean x)²`` of the channel against its curve, as PhoPro
        records it (``sklearn.metrics.r2_score``).
    n_samples : int
        Samples of the channel.
    window, stride : int
        The strided median's window and stride, in samples.

    Examples
    --------
    >>> fit = BleachingFit(BiExponential(2.0, 10.0, 1.0, 1e9, 3.0, True, 9), 0.9, 100, 10, 5)
    >>> fit.reference([0.0]), fit.to_dict()["tau1"], fit.to_dict()["method"]
    (array([6.]), 10.0, 'bleaching')
    """

    curve: BiExponential
    r_squared: float
    n_samples: int
    window: int
    stride: int

    def reference(self, time: ArrayLike) -> Float64Array:
        """The fitted curve at ``time``: the reference of a single-channel correction."""
        return self.curve(time)

    def to_dict(self) -> dict[str, Any]:
        """The fit as a flat JSON-serialisable dict (``method`` ``'bleaching'``)."""
        return {"method": "bleaching", **asdict(self.curve)} | {
            "r_squared": self.r_squared,
            "n_samples": self.n_samples,
            "window": self.window,
            "stride": self.stride,
        }


# --- the reduced series ------------------------------------------------------------------


def _validate_window(n: int, window: int, stride: int | None) -> int:
    """The stride (PhoPro's default: half the window), or why the windows do not fit."""
    if isinstance(window, bool) or not isinstance(window, int | np.integer) or window < 2:
        raise ValueError(f"window must be an integer >= 2 samples, got {window!r}.")
    step = int(window) // 2 if stride is None else stride
    if isinstance(step, bool) or not isinstance(step, int | np.integer) or step < 1:
        raise ValueError(f"stride must be an integer >= 1 sample, got {stride!r}.")
    if n < window:
        raise ValueError(
            f"the photobleaching fit's median window is {window} samples and the signal has "
            f"only {n}; expected a recording longer than one window (or a shorter window_s)."
        )
    return int(step)


def window_starts(n: int, window: int, stride: int | None = None) -> tuple[int, int]:
    """How many windows :func:`strided_median` takes of ``n`` samples, and their stride.

    Window ``k`` covers samples ``[k * stride, k * stride + window)``; its centre is
    sample ``window // 2 + k * stride``.

    Parameters
    ----------
    n : int
        Samples of the signal.
    window : int
        Samples per window (>= 2).
    stride : int, optional
        Samples between window starts; by default ``window // 2`` (PhoPro's).

    Returns
    -------
    count : int
        ``(n - window) // stride + 1``.
    stride : int
        The stride.

    Raises
    ------
    ValueError
        If ``window < 2``, ``stride < 1`` or the signal is shorter than one window.

    Examples
    --------
    >>> window_starts(10, 4)
    (4, 2)
    """
    step = _validate_window(n, window, stride)
    return (n - window) // step + 1, step


def strided_median(
    x: ArrayLike, window: int, *, stride: int | None = None
) -> tuple[Float64Array, NDArray[np.intp]]:
    """Medians of windows of ``window`` samples every ``stride`` samples (PhoPro's).

    Parameters
    ----------
    x : array_like, shape (n,)
        The signal.
    window : int
        Samples per window (>= 2).
    stride : int, optional
        Samples between window starts; by default ``window // 2``.

    Returns
    -------
    medians : numpy.ndarray of float64, shape (count,)
        The median of each window (:func:`window_starts` gives the count).
    centres : numpy.ndarray of intp, shape (count,)
        The index of each window's centre sample, ``window // 2 + k * stride``.

    Raises
    ------
    ValueError
        As :func:`window_starts`.

    Examples
    --------
    >>> medians, centres = strided_median([5.0, 1.0, 2.0, 8.0, 3.0, 4.0], 3)
    >>> medians.tolist(), centres.tolist()
    ([2.0, 2.0, 3.0, 4.0], [1, 2, 3, 4])
    """
    arr = np.asarray(x, dtype=np.float64)
    count, step = window_starts(arr.shape[0], window, stride)
    medians = np.median(sliding_window_view(arr, window)[::step], axis=1)
    return medians, window // 2 + step * np.arange(count)


# --- the robust scale -------------------------------------------------------------------


def robust_scale(residuals: ArrayLike, signal: ArrayLike) -> float:
    """A positive robust scale of residuals (PhoPro's ``positive_robust_scale``).

    ``1.4826 median(|r - median r|)``; when that is zero or not finite, the residuals'
    standard deviation; when that is too, ``1e-6`` of the signal's largest of standard
    deviation, peak-to-peak range, largest magnitude and 1.

    Parameters
    ----------
    residuals : array_like
        The residuals.
    signal : array_like
        The values they are residuals of (for the last fallback).

    Returns
    -------
    float
        The scale, > 0.

    Examples
    --------
    >>> robust_scale([1.0, -1.0, 2.0, -2.0, 0.0], [0.0])
    1.4826
    >>> robust_scale([0.0, 0.0], [0.0, 3.0])
    3e-06
    """
    r = np.asarray(residuals, dtype=np.float64)
    s = np.asarray(signal, dtype=np.float64)
    scale = MAD_SCALE * np.median(np.abs(r - np.median(r)))
    if np.isfinite(scale) and scale > 0:
        return float(scale)
    scale = np.nanstd(r)
    if np.isfinite(scale) and scale > 0:
        return float(scale)
    return float(max(np.nanstd(s), np.ptp(s), np.nanmax(np.abs(s)), 1.0) * 1e-6)


# --- the fit -----------------------------------------------------------------------------


def _residuals(params: Float64Array, t: Float64Array, y: Float64Array) -> Float64Array:
    return y - bi_exponential(t, *params)


def solve_bleaching(
    medians: ArrayLike, times: ArrayLike, *, span: float, low: float, high: float
) -> BiExponential:
    """Fit the bi-exponential to the reduced series, as PhoPro does.

    Bounds (``T`` the recording's duration, ``r = high - low``): ``a1, a2`` in
    ``[0, 5 r]``, ``tau1`` in ``[T / 1000, 5 T]``, ``tau2`` in ``[T / 100, 10 T]``, ``c`` in
    ``[low - r, high + r]``. Initial guess (``m`` the medians, clipped to the bounds):
    ``a1 = m[0] - m[-1]``, ``tau1 = dt / 10``, ``a2 = a1 / 2``, ``tau2 = dt``, ``c = m[-1]``
    with ``dt`` the reduced series' time span. ``scipy.optimize.least_squares`` with
    ``loss='soft_l1'`` and ``f_scale`` the :func:`robust_scale` of the medians around their
    :func:`~neurobatch.kernels.lowess.lowess` smooth, and its other defaults (trust-region reflective, 2-point
    Jacobian, tolerances 1e-8).

    Parameters
    ----------
    medians : array_like, shape (m,)
        The reduced series (:func:`strided_median`).
    times : array_like, shape (m,)
        The time of each median (of its window's centre sample).
    span : float
        The whole recording's duration, ``t_max - t_min``.
    low, high : float
        The whole signal's minimum and maximum.

    Returns
    -------
    BiExponential

    Raises
    ------
    ValueError
        If the signal is constant (no bleaching to fit), the reduced series has fewer than
        2 points, or the lengths differ.

    Examples
    --------
    >>> t = np.linspace(0.0, 600.0, 121)
    >>> m = 3.0 + 2.0 * np.exp(-t / 30.0) + 1.0 * np.exp(-t / 400.0)
    >>> noisy = m + 0.001 * np.random.default_rng(0).standard_normal(t.size)
    >>> fit = solve_bleaching(noisy, t, span=600.0, low=noisy.min(), high=noisy.max())
    >>> bool(np.abs(fit(t) - m).max() < 2e-3), fit.converged, round(fit.tau1)
    (True, True, 30)
    """
    y = np.asarray(medians, dtype=np.float64)
    t = np.asarray(times, dtype=np.float64)
    validate_same_length(medians=y, times=t)
    if y.size < 2:
        raise ValueError(
            f"the photobleaching fit needs at least 2 windows, got {y.size}; expected a "
            "recording at least 1.5 windows long (or a shorter window_s)."
        )
    spread = high - low
    if not spread > 0:
        raise ValueError(
            f"the signal is constant ({low!r}): there is no photobleaching to fit; expected "
            "a recorded signal."
        )
    smooth = lowess(y, t, frac=LOWESS_FRACTION, it=LOWESS_ITERATIONS)
    scale = robust_scale(y - smooth, y)
    lower = [0, span / 1000, 0, span / 100, low - spread]
    upper = [5 * spread, 5 * span, 5 * spread, 10 * span, high + spread]
    dt = t[-1] - t[0]
    guess = [y[0] - y[-1], dt / 10, (y[0] - y[-1]) / 2, dt, y[-1]]
    start = [float(np.clip(g, lo, hi)) for g, lo, hi in zip(guess, lower, upper, strict=True)]
    result = least_squares(
        _residuals,
        x0=start,
        bounds=(lower, upper),
        loss="soft_l1",
        f_scale=scale,
        args=(t, y),
    )
    a1, tau1, a2, tau2, c = (float(v) for v in result.x)
    return BiExponential(a1, tau1, a2, tau2, c, bool(result.success), int(result.nfev))


def reference_r_squared(reduce: Reducer) -> float:
    """PhoPro's R² of a signal against a reference, from one pass of co-moments.

    Parameters
    ----------
    reduce : Reducer
        Runs chunk functions over blocks of ``(reference, signal)``.

    Returns
    -------
    float
        ``1 - Σ(signal - reference)² / Σ(signal - mean signal)²`` (``r2_score``).

    Examples
    --------
    >>> reference_r_squared(local_reducer([[1.0, 2.0, 3.0]], [[1.0, 2.0, 4.0]]))
    0.7857142857142857
    """
    moments = reduce(comoments_chunk, comoments_combine)
    return float(_r_squared(_ssr(moments, 0.0, 1.0), moments["cyy"]))


def _validate_channel(name: str, value: ArrayLike, n: int | None = None) -> Float64Array:
    a = np.asarray(value)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a real numeric array, got dtype {a.dtype}.")
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D (samples along time), got shape {a.shape}.")
    if n is not None and a.shape[0] != n:
        raise ValueError(f"{name} must have the signal's {n} samples, got {a.shape[0]}.")
    return np.asarray(validate_finite(a, name), dtype=np.float64)


def fit_bleaching(
    signal: ArrayLike, time: ArrayLike, *, window: int, stride: int | None = None
) -> BleachingFit:
    """Fit PhoPro's bi-exponential photobleaching curve to a whole signal.

    Parameters
    ----------
    signal : array_like, shape (n,)
        The (filtered) channel.
    time : array_like, shape (n,)
        Its time axis in seconds, increasing.
    window : int
        The strided median's window in samples (PhoPro: ``int(fs * window_dur_sec)``).
    stride : int, optional
        Its stride; by default ``window // 2``.

    Returns
    -------
    BleachingFit

    Raises
    ------
    TypeError
        If an input is not real-valued.
    ValueError
        If an input is not 1-D or not finite, the lengths differ, the windows do not fit
        (:func:`window_starts`) or the signal is constant.

    See Also
    --------
    neurobatch.engine.blocked.fit_bleaching : the same over chunked dask arrays.

    Examples
    --------
    >>> t = np.arange(60_000) / 100.0
    >>> rng = np.random.default_rng(0)
    >>> x = 1.0 + 0.3 * np.exp(-t / 40.0) + 0.2 * np.exp(-t / 300.0)
    >>> fit = fit_bleaching(x + 0.001 * rng.standard_normal(t.size), t, window=500)
    >>> bool(np.abs(fit.reference(t) - x).max() < 2e-3), round(fit.r_squared, 3)
    (True, 1.0)
    """
    t = _validate_channel("time", time)
    x = _validate_channel("signal", signal, t.size)
    medians, centres = strided_median(x, window, stride=stride)
    curve = solve_bleaching(
        medians,
        t[centres],
        span=float(t.max() - t.min()),
        low=float(x.min()),
        high=float(x.max()),
    )
    return BleachingFit(
        curve=curve,
        r_squared=reference_r_squared(local_reducer([curve(t)], [x])),
        n_samples=x.size,
        window=int(window),
        stride=int(window_starts(x.size, window, stride)[1]),
    )
