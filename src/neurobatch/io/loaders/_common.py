"""What every loader shares: noted reads, suggestions, argument checks, time checks.

:func:`recorded_reads` and :func:`note_read` collect the files a loader reads besides its
input (sidecars, ``.meta`` files); :func:`closest` suggests a name for one that was not
found; :func:`coerce_arguments` validates a loader's arguments into its model (the models
live in :mod:`neurobatch.config.arguments` and :mod:`neurobatch.config.lazy_arguments`);
:func:`check_time` checks sample times. What only the photometry loaders share (building
the Recording from arrays or a table, downsampling, columns) is in
:mod:`neurobatch.io.loaders._photometry`.
"""

from __future__ import annotations

import difflib
import logging
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray
from pydantic import (
    BaseModel,
    ValidationError,
)

from neurobatch.config.arguments import LoaderArguments
from neurobatch.errors import ConfigError, InputError, NonUniformSamplingWarning

logger = logging.getLogger(__name__)

__all__ = [
    "check_time",
    "closest",
    "coerce_arguments",
    "note_read",
    "recorded_reads",
    "validation_message",
]

Locate = Callable[[int], str]


_READS: ContextVar[list[str] | None] = ContextVar("neurobatch_reads", default=None)


@contextmanager
def recorded_reads() -> Iterator[list[str]]:
    """Collect the URLs of the other files a loader reads besides its input.

    Sidecars and ``.meta`` files are noted by :func:`note_read`; the engine keeps their
    fingerprints in the ingest stage's key, so that editing one redoes the item.

    Yields
    ------
    list of str
        Filled with each file's URL as it is read (once each).

    Examples
    --------
    >>> with recorded_reads() as read:
    ...     note_read("memory://lab/a.json")
    ...     note_read("memory://lab/a.json")
    >>> read
    ['memory://lab/a.json']
    """
    read: list[str] = []
    token = _READS.set(read)
    try:
        yield read
    finally:
        _READS.reset(token)


def note_read(url: str) -> None:
    """Note that a loader read ``url`` besides its input (see :func:`recorded_reads`)."""
    read = _READS.get()
    if read is not None and url not in read:
        read.append(url)


def closest(name: str, candidates: Sequence[str]) -> str | None:
    """The candidate most like ``name`` (case-insensitive match first), or None.

    Parameters
    ----------
    name : str
        The name that was not found.
    candidates : sequence of str
        The names that exist.

    Returns
    -------
    str or None
        The best suggestion, or None when nothing is close.

    Examples
    --------
    >>> closest("tme", ["time", "signal"])
    'time'
    >>> closest("Signal", ["time", "signal"])
    'signal'
    >>> closest("xyz", ["time", "signal"]) is None
    True
    """
    folded = {c.casefold(): c for c in candidates}
    if name.casefold() in folded:
        return folded[name.casefold()]
    found = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return found[0] if found else None


# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------


def _check_finite(x: NDArray[np.float64], what: str, source: str, locate: Locate) -> None:
    finite = np.isfinite(x)
    if not finite.all():
        i = int(np.argmin(finite))
        raise InputError(
            f"{source!r}: {what} has a NaN, inf or empty value ({float(x[i])!r}) at {locate(i)}; "
            "expected finite numbers"
        )


def check_time(
    time: NDArray[np.float64],
    *,
    what: str,
    source: str,
    locate: Locate,
    tolerance: float,
    limit: float | None = None,
) -> tuple[float, float, float]:
    """Check sample times: two or more, finite, strictly increasing, uniform enough.

    Parameters
    ----------
    time : numpy.ndarray
        Sample times in seconds, shape ``(n,)``.
    what : str
        How messages name the times (``"column 'time'"``).
    source : str
        The input URL, for messages.
    locate : callable
        Maps a sample index to a place in the input for messages.
    tolerance : float
        Largest relative deviation of an interval from the median interval before a
        :class:`~neurobatch.errors.NonUniformSamplingWarning`.
    limit : float, optional
        Largest relative deviation of an interval from the median interval before an
        :class:`~neurobatch.errors.InputError`; None never rejects.

    Returns
    -------
    tuple of float
        The median, smallest and largest sampling interval.

    Raises
    ------
    neurobatch.errors.InputError
        Fewer than two samples, a NaN or inf, a repeated timestamp, time going back, or an
        interval off the median by more than ``limit``.

    Warns
    -----
    neurobatch.errors.NonUniformSamplingWarning
        When an interval deviates from the median by more than ``tolerance``.

    Examples
    --------
    >>> check_time(np.array([0.0, 0.1, 0.2]), what="time", source="x", locate=str,
    ...            tolerance=0.01)
    (0.1, 0.1, 0.1)
    >>> check_time(np.array([0.0, 0.1, 0.1]), what="time", source="x", locate=str,
    ...            tolerance=0.01)
    Traceback (most recent call last):
    ...
    neurobatch.errors.InputError: 'x': time repeats the timestamp 0.1 s at 2 (also at 1); time must be strictly increasing
    >>> check_time(np.array([0.0, 0.1, 0.2, 0.5, 0.6]), what="time", source="x", locate=str,
    ...            tolerance=0.01, limit=0.5)
    Traceback (most recent call last):
    ...
    neurobatch.errors.InputError: 'x': sampling is not uniform: the interval ending at 3 is 0.3 s, 200.00% off the median interval 0.1 s (max_sampling_deviation 50.00%); expected uniformly spaced sample times (resample the recording, or raise max_sampling_deviation)
    """
    n = int(time.shape[0])
    if n == 0:
        raise InputError(f"{source!r} has no samples; expected at least two")
    if n == 1:
        raise InputError(
            f"{source!r} has only one sample; a recording needs at least two to estimate its "
            "sampling rate"
        )
    _check_finite(time, what, source, locate)
    intervals = np.diff(time)
    i_min = int(np.argmin(intervals))
    i_max = int(np.argmax(intervals))
    d_min = float(intervals[i_min])
    d_max = float(intervals[i_max])
    if d_min <= 0:
        i = int(np.flatnonzero(intervals <= 0)[0])
        if intervals[i] == 0:
            raise InputError(
                f"{source!r}: {what} repeats the timestamp {float(time[i])!r} s at {locate(i + 1)} "
                f"(also at {locate(i)}); time must be strictly increasing"
            )
        raise InputError(
            f"{source!r}: {what} goes back from {float(time[i])!r} s to {float(time[i + 1])!r} s at "
            f"{locate(i + 1)}; time must be strictly increasing (are the rows sorted?)"
        )
    median = float(np.median(intervals, overwrite_input=True))
    worst, i_worst = (d_max, i_max) if d_max - median >= median - d_min else (d_min, i_min)
    deviation = abs(worst - median) / median
    if limit is not None and deviation > limit:
        raise InputError(
            f"{source!r}: sampling is not uniform: the interval ending at {locate(i_worst + 1)} "
            f"is {worst:.6g} s, {deviation:.2%} off the median interval {median:.6g} s "
            f"(max_sampling_deviation {limit:.2%}); expected uniformly spaced sample times "
            "(resample the recording, or raise max_sampling_deviation)"
        )
    if deviation > tolerance:
        warnings.warn(
            f"{source!r}: sampling is not uniform: median interval {median:.6g} s, but the "
            f"interval ending at {locate(i_worst + 1)} is {worst:.6g} s, {deviation:.2%} off "
            f"(sampling_tolerance {tolerance:.2%}); the sampling rate is an estimate and "
            "trial windows cut by sample counts may be misplaced",
            NonUniformSamplingWarning,
            stacklevel=2,
        )
    return median, d_min, d_max


# ---------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------

ArgumentsT = TypeVar("ArgumentsT", bound=LoaderArguments)


def validation_message(error: ValidationError, model: type[BaseModel], fmt: str) -> str:
    """One line per problem of a pydantic error, with a suggestion for unknown arguments.

    Parameters
    ----------
    error : pydantic.ValidationError
        The error of ``model.model_validate``.
    model : type of pydantic.BaseModel
        The arguments model.
    fmt : str
        The loader format, for the message.

    Returns
    -------
    str
        ``invalid loader arguments for format ...: <field>: <problem>; ...``.

    Examples
    --------
    >>> from pydantic import ValidationError
    >>> from neurobatch.config.arguments import ColumnArguments
    >>> try:
    ...     ColumnArguments.model_validate({"time_colum": "t"})
    ... except ValidationError as e:
    ...     print(validation_message(e, ColumnArguments, "photometry-csv"))
    invalid loader arguments for format 'photometry-csv': time_colum: unknown argument; did you mean 'time_col'?
    """
    problems = []
    fields = list(model.model_fields)
    for item in error.errors():
        loc = ".".join(str(part) for part in item["loc"]) or "(arguments)"
        if item["type"] == "extra_forbidden":
            guess = closest(str(item["loc"][-1]), fields)
            hint = f"did you mean {guess!r}?" if guess else "known: " + ", ".join(fields)
            problems.append(f"{loc}: unknown argument; {hint}")
        else:
            problems.append(f"{loc}: {item['msg']}")
    return f"invalid loader arguments for format {fmt!r}: " + "; ".join(problems)


def coerce_arguments(
    arguments: BaseModel | Mapping[str, Any], model: type[ArgumentsT], *, fmt: str
) -> ArgumentsT:
    """Validate a mapping into ``model``, or check that a model instance is one.

    Parameters
    ----------
    arguments : LoaderArguments or mapping
        The arguments; a mapping may carry ``format``, which must then be ``fmt``.
    model : type of LoaderArguments
        The format's arguments model.
    fmt : str
        The loader format.

    Returns
    -------
    LoaderArguments
        A ``model`` instance.

    Raises
    ------
    neurobatch.errors.ConfigError
        If the mapping is invalid, names another format, or the instance is another model.
    TypeError
        If ``arguments`` is neither a mapping nor a pydantic model.

    Examples
    --------
    >>> from neurobatch.config.arguments import ColumnArguments
    >>> coerce_arguments({"event_cols": "cue"}, ColumnArguments, fmt="x").event_cols
    ['cue']
    """
    if isinstance(arguments, model):
        return arguments
    if isinstance(arguments, BaseModel):
        raise ConfigError(
            f"loader arguments of format {fmt!r} must be a {model.__name__} or a mapping, "
            f"not a {type(arguments).__name__}"
        )
    if not isinstance(arguments, Mapping):
        raise TypeError(
            f"loader arguments must be a mapping or a {model.__name__}, "
            f"got {type(arguments).__name__}"
        )
    mapping = dict(arguments)
    declared = mapping.pop("format", fmt)
    if declared != fmt:
        raise ConfigError(
            f"loader arguments name format {declared!r}, but this loader reads {fmt!r}"
        )
    try:
        return model.model_validate(mapping)
    except ValidationError as e:
        raise ConfigError(validation_message(e, model, fmt)) from None
