"""What the synthetic recordings share: argument validation, chunking, random streams."""

from __future__ import annotations

import numpy as np

#: Streams of the random generators (the second entry of each seed sequence).
_MOVIE_STREAM, _SPIKE_STREAM, _EPHYS_NOISE_STREAM, _EPHYS_STREAM = 1, 2, 3, 4


def _validate_positive_int(value: int, name: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def _validate_positive(value: float, name: str, *, zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"{name} must be a number, got {value!r}.")
    number = float(value)
    if not np.isfinite(number) or number < 0 or (number == 0 and not zero):
        bound = ">= 0" if zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}.")
    return number


def _chunks(n: int, size: int) -> tuple[int, ...]:
    """``n`` split into chunks of ``size`` (the last one shorter); ``(0,)`` for ``n == 0``."""
    if n == 0:
        return (0,)
    full, rest = divmod(n, size)
    return (size,) * full + ((rest,) if rest else ())
