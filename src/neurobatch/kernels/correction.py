"""Reference correction (dF/F, dF; dB/B, dB) and whole-signal normalisation (z-score, null-z)."""

from __future__ import annotations

from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from neurobatch.kernels._validation import validate_choice, validate_same_length

__all__ = ["Correction", "Normalization", "correct", "normalize"]

Correction = Literal["dff", "df", "dbb", "db", "none"]
Normalization = Literal["zscore", "nullz", "none"]
_CORRECTIONS: tuple[str, ...] = ("dff", "df", "dbb", "db", "none")
_NORMALIZATIONS: tuple[str, ...] = ("zscore", "nullz", "none")

# PhoPro divides by max(reference, float32 eps): a reference at or below zero (a failed fit)
# then gives a huge but finite dF/F instead of a division by zero.
_REFERENCE_FLOOR = float(np.finfo(np.float32).eps)


def correct(
    signal: ArrayLike, reference: ArrayLike, *, method: Correction = "dff"
) -> NDArray[np.float64]:
    """Correct a signal by its fitted reference (isosbestic, or photobleaching curve).

    ``dbb`` and ``db`` are ``dff`` and ``df`` by another name, as in PhoPro: the reference
    is then the signal's own photobleaching curve (single channel) instead of the fitted
    isosbestic.

    Parameters
    ----------
    signal : array_like
        The (filtered) signal channel, time along the first axis.
    reference : array_like
        The fitted reference (``b0 + b1 * isosbestic``, or a bleaching curve), same shape
        as ``signal``.
    method : {"dff", "df", "dbb", "db", "none"}, default "dff"
        ``dff`` and ``dbb``: ``(signal - reference) / max(reference, float32 eps)``;
        ``df`` and ``db``: ``signal - reference``; ``none``: the signal unchanged.

    Returns
    -------
    numpy.ndarray
        The corrected signal, float64.

    Raises
    ------
    ValueError
        If ``method`` is unknown or the shapes differ.

    Examples
    --------
    >>> correct([2.0, 3.0], [1.0, 2.0], method="dff")
    array([1. , 0.5])
    >>> correct([2.0, 3.0], [1.0, 2.0], method="df")
    array([1., 1.])
    >>> correct([2.0, 3.0], [1.0, 2.0], method="dbb")
    array([1. , 0.5])
    """
    validate_choice(method, "method", _CORRECTIONS)
    signal_arr = np.asarray(signal, dtype=np.float64)
    reference_arr = np.asarray(reference, dtype=np.float64)
    validate_same_length(signal=signal_arr, reference=reference_arr)
    if method in ("dff", "dbb"):
        return (signal_arr - reference_arr) / np.maximum(reference_arr, _REFERENCE_FLOOR)
    if method in ("df", "db"):
        return signal_arr - reference_arr
    return signal_arr


def normalize(
    x: ArrayLike,
    *,
    method: Normalization = "zscore",
    mean: float | None = None,
    std: float | None = None,
) -> NDArray[np.float64]:
    """Normalise a whole signal: z-score ``(x - mean) / std`` or null-z ``x / std``.

    The statistics are over the whole signal (population std, ``ddof=0``). A blocked run
    computes them once with a reduction and passes them in, so every block is normalised
    by the same numbers.

    Parameters
    ----------
    x : array_like
        The signal (or one block of it).
    method : {"zscore", "nullz", "none"}, default "zscore"
        The normalisation.
    mean, std : float, optional
        The whole signal's mean and standard deviation; computed from ``x`` when omitted.

    Returns
    -------
    numpy.ndarray
        The normalised signal, float64.

    Raises
    ------
    ValueError
        If ``method`` is unknown or the standard deviation is zero (a constant signal).

    Examples
    --------
    >>> normalize([1.0, 2.0, 3.0], method="zscore")
    array([-1.22474487,  0.        ,  1.22474487])
    >>> normalize([1.0, 2.0, 3.0], method="nullz", std=2.0)
    array([0.5, 1. , 1.5])
    """
    validate_choice(method, "method", _NORMALIZATIONS)
    x_arr = np.asarray(x, dtype=np.float64)
    if method == "none":
        return x_arr
    scale = float(np.std(x_arr)) if std is None else float(std)
    if scale == 0:
        raise ValueError(
            f"cannot {method}-normalise a constant signal (standard deviation 0); "
            "use method='none'."
        )
    if method == "nullz":
        return x_arr / scale
    centre = float(np.mean(x_arr)) if mean is None else float(mean)
    return (x_arr - centre) / scale
