"""Butterworth design, zero-phase filtering, and the overlap depth a blocked filter needs.

The zero-phase filter is SciPy's ``sosfiltfilt`` with odd padding, PhoPro's choice. A
blocked run extends every block by :func:`overlap_depth` samples on each side: beyond that
distance the forward-backward impulse response has decayed below ``rtol`` of its peak, so
the block edges no longer influence the kept samples.
"""

from __future__ import annotations

import math
from typing import Any, Literal, cast

import numpy as np
import scipy.signal
from numpy.typing import ArrayLike, DTypeLike, NDArray

from neurobatch.kernels._validation import validate_choice, validate_finite

__all__ = [
    "FilterKind",
    "Reference",
    "butter_sos",
    "overlap_depth",
    "pad_length",
    "validate_signal_length",
    "zero_phase_filter",
    "zero_phase_from_pieces",
]

FilterKind = Literal["lowpass", "highpass", "bandpass", "bandstop"]
_FILTER_KINDS: tuple[str, ...] = ("lowpass", "highpass", "bandpass", "bandstop")
Reference = Literal["none", "median"]
_REFERENCES: tuple[str, ...] = ("none", "median")


def butter_sos(
    kind: FilterKind,
    cutoff_hz: float | tuple[float, float],
    *,
    fs: float,
    order: int = 4,
) -> NDArray[np.float64]:
    """Design a digital Butterworth filter as second-order sections.

    Parameters
    ----------
    kind : {"lowpass", "highpass", "bandpass", "bandstop"}
        The filter type.
    cutoff_hz : float or (float, float)
        The -3 dB frequency in Hz: one value for ``lowpass`` and ``highpass``, a
        ``(low, high)`` pair for ``bandpass`` and ``bandstop``.
    fs : float
        Sampling rate in Hz.
    order : int, default 4
        Filter order (the forward-backward filter has twice this order).

    Returns
    -------
    numpy.ndarray
        ``(n_sections, 6)`` second-order sections, as ``scipy.signal.butter(...,
        output="sos")`` gives with the cutoff normalised by the Nyquist frequency.

    Raises
    ------
    ValueError
        If ``kind`` is unknown, ``order`` is not a positive integer, ``fs`` is not
        positive, or a cutoff is not strictly between 0 and the Nyquist frequency.

    See Also
    --------
    zero_phase_filter : apply the sections forward and backward.

    Examples
    --------
    >>> sos = butter_sos("lowpass", 3.0, fs=1000.0, order=4)
    >>> sos.shape
    (2, 6)
    >>> butter_sos("lowpass", 600.0, fs=1000.0)
    Traceback (most recent call last):
    ...
    ValueError: cutoff_hz must lie strictly between 0 and the Nyquist frequency 500.0 Hz (fs=1000.0), got 600.0.
    """
    validate_choice(kind, "kind", _FILTER_KINDS)
    if isinstance(order, bool) or not isinstance(order, int | np.integer) or order < 1:
        raise ValueError(f"order must be a positive integer, got {order!r}.")
    if not math.isfinite(fs) or fs <= 0:
        raise ValueError(f"fs must be a positive sampling rate in Hz, got {fs!r}.")
    two_sided = kind in ("bandpass", "bandstop")
    cutoffs = np.atleast_1d(np.asarray(cutoff_hz, dtype=np.float64))
    if two_sided and (cutoffs.shape != (2,) or not cutoffs[0] < cutoffs[1]):
        raise ValueError(
            f"cutoff_hz for a {kind} filter must be a (low, high) pair with low < high, "
            f"got {cutoff_hz!r}."
        )
    if not two_sided and cutoffs.shape != (1,):
        raise ValueError(f"cutoff_hz for a {kind} filter must be one frequency, got {cutoff_hz!r}.")
    nyquist = fs / 2
    if not np.all((cutoffs > 0) & (cutoffs < nyquist)):
        raise ValueError(
            "cutoff_hz must lie strictly between 0 and the Nyquist frequency "
            f"{nyquist} Hz (fs={fs}), got {cutoff_hz!r}."
        )
    wn = cutoffs / nyquist
    sos: NDArray[np.float64] = scipy.signal.butter(
        int(order), wn if two_sided else wn[0], btype=kind, output="sos"
    )
    return sos


def pad_length(sos: ArrayLike) -> int:
    """Return the default pad length of ``scipy.signal.sosfiltfilt`` for these sections.

    Parameters
    ----------
    sos : array_like
        ``(n_sections, 6)`` second-order sections.

    Returns
    -------
    int
        ``3 * (2 * n_sections + 1 - min(zeros in b2, zeros in a2))``: a signal must be
        longer than this to be filtered.

    Examples
    --------
    >>> pad_length(butter_sos("lowpass", 3.0, fs=1000.0, order=4))
    15
    """
    sos_arr = _validate_sos(sos)
    n_taps = 2 * len(sos_arr) + 1
    n_taps -= min(int((sos_arr[:, 2] == 0).sum()), int((sos_arr[:, 5] == 0).sum()))
    return 3 * n_taps


def zero_phase_filter(
    x: ArrayLike,
    sos: ArrayLike,
    *,
    axis: int = 0,
    scale: float | None = None,
    common_reference: Reference = "none",
    dtype: DTypeLike | None = None,
) -> NDArray[Any]:
    """Filter forward and backward, as ``scipy.signal.sosfiltfilt(padtype="odd")``.

    Memory stays at two float64 copies of the signal besides the input and the result:
    ``sosfilt`` converts the input to float64 as it filters it forward, the backward pass
    makes the second copy, and the result is written once in ``dtype`` (scaled on the
    way, as filtering is linear).

    Parameters
    ----------
    x : array_like
        The signal; any shape, filtered along ``axis``. Integers are converted to float64;
        floats must be finite.
    sos : array_like
        ``(n_sections, 6)`` second-order sections, e.g. from :func:`butter_sos`.
    axis : int, default 0
        The time axis.
    scale : float, optional
        Multiply the signal by this (a gain to physical units, say): the result is
        ``sosfiltfilt(sos, x.astype(float64) * scale)`` to rounding (about 1e-15 relative;
        the product is taken after filtering).
    common_reference : {"none", "median"}, default "none"
        ``median``: subtract from every sample the median over all other axes (the
        channels), before filtering (and before scaling, which is linear: the same to
        rounding); on integer samples it is taken exactly in their own type.
    dtype : data-type, optional
        The result's type; by default float64 (or the wider of the input and float64).

    Returns
    -------
    numpy.ndarray
        The zero-phase filtered signal, same shape as ``x``.

    Raises
    ------
    ValueError
        If ``x`` holds NaN or infinity, or is not longer than :func:`pad_length` along
        ``axis``.

    See Also
    --------
    overlap_depth : how far a blocked run must extend each block.
    zero_phase_from_pieces : the same filter on one block of a longer signal.
    neurobatch.engine.blocked.zero_phase_filter : the same filter over a chunked dask array.

    Examples
    --------
    >>> fs = 1000.0
    >>> t = np.arange(2000) / fs
    >>> x = np.sin(2 * np.pi * 1.0 * t) + np.sin(2 * np.pi * 50.0 * t)
    >>> y = zero_phase_filter(x, butter_sos("lowpass", 3.0, fs=fs))
    >>> bool(np.abs(y[500:1500] - np.sin(2 * np.pi * 1.0 * t[500:1500])).max() < 0.01)
    True
    >>> counts = np.array([[0, 10], [1, 12], [3, 11], [2, 10]] * 10, dtype=np.int16)
    >>> uv = zero_phase_filter(counts, butter_sos("lowpass", 40.0, fs=fs), scale=0.5,
    ...                        dtype=np.float32)
    >>> uv.dtype, uv.shape
    (dtype('float32'), (40, 2))
    """
    x_arr = np.asarray(x)
    n = x_arr.shape[axis % x_arr.ndim] if x_arr.ndim else 0
    return zero_phase_from_pieces(
        sos,
        np.array([[0, n]], dtype=np.int64),
        (0, 0),
        x_arr,
        axis=axis,
        scale=scale,
        common_reference=common_reference,
        dtype=dtype,
    )


def zero_phase_from_pieces(
    sos: ArrayLike,
    cuts: ArrayLike,
    trim: tuple[int, int],
    *pieces: ArrayLike,
    axis: int = 0,
    scale: float | None = None,
    common_reference: Reference = "none",
    dtype: DTypeLike | None = None,
) -> NDArray[Any]:
    """Zero-phase filter consecutive pieces of a signal and keep the middle: one block's task.

    A blocked filter hands each task the chunks that hold its block and the overlap
    around it. ``pieces[i]`` cut to ``cuts[i]`` along ``axis``, joined in order, are one
    stretch of signal; it is filtered as :func:`zero_phase_filter` filters a whole array
    (its ends odd-padded), and ``trim[0]`` samples at the start and ``trim[1]`` at the end
    are dropped from the result. The pieces are never joined: each is filtered in turn,
    forward then backward, with the filter's state carried across (exactly as one call
    over the joined stretch), and only the two ends are copied to build the padding.

    Parameters
    ----------
    sos : array_like
        ``(n_sections, 6)`` second-order sections.
    cuts : array_like
        ``(len(pieces), 2)`` integers, the ``[a, b)`` kept of each piece along ``axis``.
    trim : (int, int)
        Samples dropped from the start and from the end of the filtered stretch.
    *pieces : array_like
        Consecutive pieces of the signal, equal in every axis but ``axis``.
    axis : int, default 0
        The time axis.
    scale, common_reference, dtype
        As in :func:`zero_phase_filter`.

    Returns
    -------
    numpy.ndarray
        The filtered stretch without its trimmed ends: a new C-ordered array; a float64
        result filtered in one part (one piece, or any with ``common_reference``) is
        instead a view of SciPy's output, laid out as ``sosfiltfilt`` returns it.

    Raises
    ------
    ValueError
        If a piece holds NaN or infinity, the stretch is not longer than
        :func:`pad_length`, or ``trim`` leaves less than nothing.

    Examples
    --------
    >>> sos = butter_sos("lowpass", 40.0, fs=1000.0)
    >>> x = np.random.default_rng(0).standard_normal(300)
    >>> cuts = np.array([[50, 100], [0, 150]])
    >>> y = zero_phase_from_pieces(sos, cuts, (20, 30), x[:100], x[100:250])
    >>> bool(np.array_equal(y, zero_phase_filter(x[50:250], sos)[20:-30]))
    True
    """
    validate_choice(common_reference, "common_reference", _REFERENCES)
    sos_arr = _validate_sos(sos)
    arrays = [np.asarray(piece) for piece in pieces]
    if not arrays:
        raise ValueError("zero_phase_from_pieces needs at least one piece of signal.")
    ndim = arrays[0].ndim
    if ndim == 0:
        raise ValueError("x must have at least one dimension (the time axis), got a scalar.")
    axis %= ndim
    bounds = np.asarray(cuts, dtype=np.int64).reshape(len(arrays), 2).tolist()
    before = (slice(None),) * axis
    parts = [
        np.moveaxis(validate_finite(a[(*before, slice(lo, hi))], "x"), axis, -1)
        for a, (lo, hi) in zip(arrays, bounds, strict=True)
    ]
    other = parts[0].shape[:-1]
    parts = [part for part in parts if part.shape[-1]]
    n = sum(part.shape[-1] for part in parts)
    validate_signal_length(n, sos_arr)
    start, stop = int(trim[0]), n - int(trim[1])
    if not 0 <= start <= stop <= n:
        raise ValueError(f"trim {tuple(trim)} does not fit a stretch of {n} samples.")
    work_type = np.result_type(*(a.dtype for a in arrays), np.float64)
    out_type = work_type if dtype is None else np.dtype(dtype)
    if common_reference == "median":
        parts = [_median_referenced(parts, n, work_type)]
    # sosfiltfilt's odd padding, built from the ends only: the signal itself is never
    # copied but by sosfilt, which converts each piece to float64 as it filters it
    pad = pad_length(sos_arr)
    head, tail = _stretch(parts, 0, pad + 1, work_type), _stretch(parts, n - pad - 1, n, work_type)
    left = 2 * head[..., :1] - head[..., pad:0:-1]
    right = 2 * tail[..., -1:] - tail[..., pad - 1 :: -1]
    zi = scipy.signal.sosfilt_zi(sos_arr).reshape(len(sos_arr), *(1,) * len(other), 2)
    # forward through the padded stretch, the state carried from piece to piece
    _, state = scipy.signal.sosfilt(sos_arr, left, axis=-1, zi=zi * left[..., :1])
    forward = []
    for part in parts:
        y, state = scipy.signal.sosfilt(sos_arr, part, axis=-1, zi=state)
        forward.append(y)
    end, _ = scipy.signal.sosfilt(sos_arr, right, axis=-1, zi=state)
    # backward from the padded end, piece by piece (the left pad's output is never kept)
    _, state = scipy.signal.sosfilt(sos_arr, end[..., ::-1], axis=-1, zi=zi * end[..., -1:])
    if len(forward) == 1 and out_type == work_type:
        backward, _ = scipy.signal.sosfilt(sos_arr, forward.pop()[..., ::-1], axis=-1, zi=state)
        kept = backward[..., ::-1][..., start:stop]
        if scale is not None:
            kept *= scale
        return cast("NDArray[Any]", np.moveaxis(kept, -1, axis))
    shape = list(arrays[0].shape)
    shape[axis] = stop - start
    result = np.empty(shape, dtype=out_type)
    target = np.moveaxis(result, axis, -1)
    at = n
    while forward:
        y = forward.pop()
        at -= y.shape[-1]
        backward, state = scipy.signal.sosfilt(sos_arr, y[..., ::-1], axis=-1, zi=state)
        lo, hi = max(start, at), min(stop, at + y.shape[-1])
        del y
        if lo < hi:
            kept = backward[..., ::-1][..., lo - at : hi - at]
            into = target[..., lo - start : hi - start]
            if scale is None:
                np.copyto(into, kept, casting="unsafe")
            else:
                np.multiply(kept, scale, out=into, casting="unsafe")
    return result


def _median_referenced(parts: list[NDArray[Any]], n: int, dtype: np.dtype[Any]) -> NDArray[Any]:
    """The stretch that ``parts`` make (time last) in ``dtype``, less its median over channels.

    Integers of up to 32 bits, the mean of two of them and every difference from it are
    exact in float64: their median is taken on the integers themselves (partitioning int16
    costs about two thirds of float64) and the result is, bit for bit, that of
    ``np.median`` on the stretch converted first. Other types are converted first.
    """
    raw_type = np.result_type(*(part.dtype for part in parts))
    if raw_type.kind not in "iu" or raw_type.itemsize > 4:
        signal = _stretch(parts, 0, n, dtype)
        signal -= np.median(signal.reshape(-1, n), axis=0)
        return signal
    raw = _stretch(parts, 0, n, raw_type)
    channels = raw.reshape(-1, n)
    middle = ((len(channels) - 1) // 2, len(channels) // 2)
    if channels.size:
        ordered = np.partition(channels, middle, axis=0)
        # as np.median: the mean of the two middle values (one value twice if odd)
        median = (ordered[middle[0]].astype(dtype) + ordered[middle[1]]) / 2
        referenced: NDArray[Any] = np.subtract(raw, median, dtype=dtype)
        return referenced
    return raw.astype(dtype)


def _stretch(parts: list[NDArray[Any]], lo: int, hi: int, dtype: np.dtype[Any]) -> NDArray[Any]:
    """Samples ``[lo, hi)`` of the stretch that ``parts`` make (time last): a new ``dtype`` array."""
    taken = []
    at = 0
    for part in parts:
        k = part.shape[-1]
        a, b = max(lo - at, 0), min(hi - at, k)
        if a < b:
            taken.append(part[..., a:b])
        at += k
    return np.concatenate(taken, axis=-1, dtype=dtype)


def overlap_depth(sos: ArrayLike, *, rtol: float = 1e-12) -> int:
    """Return the samples after which the forward-backward impulse response stays below ``rtol``.

    The forward-backward filter's impulse response is the autocorrelation ``r[k]`` of the
    forward impulse response ``h``. The depth is the smallest ``d`` with
    ``|r[k]| < rtol * max|r|`` for every ``k >= d``: extending each block by ``d`` samples
    on both sides makes a blocked zero-phase filter equal the whole-array one to about
    ``rtol`` of the signal's scale. It is never less than :func:`pad_length`.

    Parameters
    ----------
    sos : array_like
        ``(n_sections, 6)`` second-order sections of a stable filter.
    rtol : float, default 1e-12
        The relative level, in (0, 1), below which the response counts as decayed.

    Returns
    -------
    int
        The depth in samples.

    Raises
    ------
    ValueError
        If the filter is unstable (a pole on or outside the unit circle) or ``rtol`` is not
        in (0, 1).

    Examples
    --------
    >>> overlap_depth(butter_sos("lowpass", 3.0, fs=1000.0, order=4))
    3728
    >>> overlap_depth(butter_sos("bandpass", (300.0, 6000.0), fs=30000.0, order=3))
    812
    """
    sos_arr = _validate_sos(sos)
    if not 0 < rtol < 1:
        raise ValueError(f"rtol must be in (0, 1), got {rtol!r}.")
    poles = np.concatenate([np.roots(section[3:]) for section in sos_arr])
    radius = float(np.abs(poles).max()) if poles.size else 0.0
    if radius >= 1:
        raise ValueError(
            f"the filter is unstable (largest pole magnitude {radius:.6f} >= 1); "
            "a zero-phase filter needs a stable design."
        )
    # The tail of h decays like n**m * radius**n (m: pole multiplicity); simulate far enough
    # past where radius**n alone reaches rtol that the tail is resolved, then measure it.
    n_tail = math.log(rtol * 1e-3) / math.log(radius) if radius > 0 else 1.0
    n_h = int(2 * n_tail) + 64
    impulse = np.zeros(n_h)
    impulse[0] = 1.0
    h = scipy.signal.sosfilt(sos_arr, impulse)
    autocorrelation = scipy.signal.correlate(h, h, mode="full", method="fft")[n_h - 1 :]
    magnitude = np.abs(autocorrelation)
    above = np.flatnonzero(magnitude >= rtol * magnitude.max())
    depth = int(above[-1]) + 1 if above.size else 1
    return max(depth, pad_length(sos_arr))


def _validate_sos(sos: ArrayLike) -> NDArray[np.float64]:
    sos_arr = np.asarray(sos, dtype=np.float64)
    if sos_arr.ndim != 2 or sos_arr.shape[1] != 6 or len(sos_arr) == 0:
        raise ValueError(
            f"sos must be an array of shape (n_sections, 6), got shape {sos_arr.shape}."
        )
    if not np.allclose(sos_arr[:, 3], 1.0):
        raise ValueError("sos must have a0 == 1 in every section (column 3), as scipy designs it.")
    return sos_arr


def validate_signal_length(n_samples: int, sos: ArrayLike) -> None:
    """Raise unless a signal of ``n_samples`` is long enough to zero-phase filter with ``sos``.

    Parameters
    ----------
    n_samples : int
        The signal's length along the time axis.
    sos : array_like
        ``(n_sections, 6)`` second-order sections.

    Raises
    ------
    ValueError
        If ``n_samples`` is not greater than :func:`pad_length` of ``sos``.

    Examples
    --------
    >>> validate_signal_length(10, butter_sos("lowpass", 3.0, fs=1000.0))
    Traceback (most recent call last):
    ...
    ValueError: the signal has 10 samples along the time axis; a zero-phase filter with 2 second-order sections needs at least 16 (more than the pad length 15).
    """
    sos_arr = _validate_sos(sos)
    min_length = pad_length(sos_arr) + 1
    if n_samples < min_length:
        raise ValueError(
            f"the signal has {n_samples} samples along the time axis; a zero-phase filter "
            f"with {len(sos_arr)} second-order sections needs at least {min_length} "
            f"(more than the pad length {min_length - 1})."
        )
