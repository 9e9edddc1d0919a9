"""Private argument validators shared by the kernels.

Each raises ``ValueError`` naming the argument, what was received and what is allowed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray


def validate_finite(x: ArrayLike, name: str) -> NDArray[Any]:
    """Return ``x`` as an array, or raise if it holds NaN or infinity.

    Parameters
    ----------
    x : array_like
        The values to check.
    name : str
        The argument's name, used in the message.

    Returns
    -------
    numpy.ndarray
        ``x`` as an array (no copy when it already is one).

    Raises
    ------
    ValueError
        If any value is NaN or infinite.

    Examples
    --------
    >>> validate_finite([1.0, float("nan")], "signal")
    Traceback (most recent call last):
    ...
    ValueError: signal must be finite, got 1 NaN and 0 infinite value(s) (first at index 1).
    """
    arr = np.asarray(x)
    if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
        n_nan = int(np.isnan(arr).sum())
        n_inf = int(np.isinf(arr).sum())
        first = np.flatnonzero(~np.isfinite(arr.ravel()))[0]
        index = np.unravel_index(first, arr.shape)
        where = tuple(int(i) for i in index) if arr.ndim > 1 else int(first)
        raise ValueError(
            f"{name} must be finite, got {n_nan} NaN and {n_inf} infinite value(s) "
            f"(first at index {where})."
        )
    return arr


def validate_same_length(axis: int = 0, **arrays: NDArray[Any]) -> int:
    """Return the common length of ``arrays`` along ``axis``, or raise if they differ.

    Parameters
    ----------
    axis : int
        The axis along which the lengths must agree.
    **arrays : numpy.ndarray
        The arrays, by argument name.

    Returns
    -------
    int
        The common length.

    Raises
    ------
    ValueError
        If the lengths differ.

    Examples
    --------
    >>> validate_same_length(signal=np.zeros(3), isosbestic=np.zeros(4))
    Traceback (most recent call last):
    ...
    ValueError: signal and isosbestic must have the same length along axis 0, got 3 and 4.
    """
    lengths = {name: int(a.shape[axis]) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        names = " and ".join(lengths)
        values = " and ".join(str(n) for n in lengths.values())
        raise ValueError(f"{names} must have the same length along axis {axis}, got {values}.")
    return next(iter(lengths.values()))


def validate_choice(value: str, name: str, allowed: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``allowed``, or raise naming the options.

    Parameters
    ----------
    value : str
        The received option.
    name : str
        The argument's name, used in the message.
    allowed : tuple of str
        The options.

    Returns
    -------
    str
        ``value``.

    Raises
    ------
    ValueError
        If ``value`` is not one of ``allowed``.

    Examples
    --------
    >>> validate_choice("dF", "correction", ("dff", "df", "none"))
    Traceback (most recent call last):
    ...
    ValueError: correction must be one of 'dff', 'df', 'none'; got 'dF'.
    """
    if value not in allowed:
        options = ", ".join(repr(a) for a in allowed)
        raise ValueError(f"{name} must be one of {options}; got {value!r}.")
    return value
