"""Plausible sampling rates: an item's against its kind's bounds, and against the batch's.

A time column in milliseconds read as seconds makes a 1 kHz photometry recording look like
1 Hz; a rate typed in kHz makes a 30 kHz probe 30 Hz. Nothing downstream fails: filters,
fits and trial windows run on the wrong time base and the item merges into the batch.
:func:`check_sampling_rate` fails such an item at ingest, where its rate is first known,
against the bounds of its kind (:data:`~neurobatch.config.arguments.PLAUSIBLE_RATES_HZ`);
:func:`rate_outliers` finds the items whose rate is orders of magnitude off the rest of
their batch, for the driver, which alone sees every item's rate.
"""

from __future__ import annotations

import bisect
import logging
import math
import statistics
from collections.abc import Mapping
from typing import Any

import xarray as xr

from neurobatch.config.arguments import PLAUSIBLE_RATES_HZ, TIME_UNITS
from neurobatch.errors import InputError

__all__ = ["check_sampling_rate", "rate_outliers", "recording_kind"]

logger = logging.getLogger(__name__)

_ROUNDING = 1e-12
_ARTICLES = {"photometry": "a", "ephys": "an"}
_UNIT_NAMES = {"s": "seconds", "ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds"}


def _hz(rate: float) -> str:
    """A rate for people: ``1 Hz``, ``1017.25 Hz``, ``100 kHz``, ``1 MHz``."""
    for scale, unit in ((1e6, "MHz"), (1e3, "kHz")):
        if rate >= scale and (rate / scale).is_integer():
            return f"{rate / scale:g} {unit}"
    return f"{rate:.6g} Hz"


def recording_kind(recording: xr.Dataset) -> str | None:
    """The kind of recording whose rate bounds apply, from its variables.

    Parameters
    ----------
    recording : xarray.Dataset
        A loaded input.

    Returns
    -------
    str or None
        ``"photometry"`` (a ``signal``), ``"ephys"`` (``traces``), or None for anything
        else (a movie: its frame rate is not checked).

    Examples
    --------
    >>> recording_kind(xr.Dataset({"traces": (("time", "channel"), [[0.0]])}))
    'ephys'
    >>> recording_kind(xr.Dataset({"frames": (("frame", "y", "x"), [[[0.0]]])})) is None
    True
    """
    if "signal" in recording.data_vars:
        return "photometry"
    if "traces" in recording.data_vars:
        return "ephys"
    return None


def _unit_hint(rate: float, unit: str, low: float, high: float) -> str | None:
    """The time unit that would make ``rate`` plausible, as a hint; None when none does."""
    if unit not in TIME_UNITS:  # a unit the loader guesses ("auto"): which one is unknown
        return f"set loader.time_unit (now {unit!r}) to the time column's unit"
    for other, per_second in TIME_UNITS.items():
        if other != unit and low <= rate * per_second / TIME_UNITS[unit] <= high:
            return f"set loader.time_unit: {other} if the time column is in {_UNIT_NAMES[other]}"
    return None


def check_sampling_rate(
    recording: xr.Dataset, *, source: str, arguments: Mapping[str, Any]
) -> None:
    """Fail a recording whose sampling rate is implausible for its kind.

    The rate checked is the input's own: ``attrs["sampling_rate"]`` times ``downsample``.
    The bounds are ``arguments["plausible_rate_hz"]``, else the kind's
    (:data:`~neurobatch.config.arguments.PLAUSIBLE_RATES_HZ`: photometry 5 Hz to 100 kHz,
    ephys 100 Hz to 1 MHz). A recording of no known kind, or without a rate, passes.

    Parameters
    ----------
    recording : xarray.Dataset
        The loaded input.
    source : str
        The input's URL, for the message.
    arguments : Mapping
        The item's loader arguments (JSON-safe, as in the manifest).

    Raises
    ------
    neurobatch.errors.InputError
        One line: the input, the rate found, the plausible range and what to do: the time
        unit that would make it plausible, when one does (``time_unit`` of a column
        format), and ``plausible_rate_hz`` for a rate that is right.

    Examples
    --------
    >>> import numpy as np
    >>> ms = xr.Dataset({"signal": ("time", np.zeros(3))}, attrs={"sampling_rate": 1.0})
    >>> check_sampling_rate(ms, source="r1.csv", arguments={"time_unit": "s"})
    Traceback (most recent call last):
    ...
    neurobatch.errors.InputError: 'r1.csv': sampling rate 1 Hz is implausible for a photometry recording (expected 5 Hz to 100 kHz); set loader.time_unit: ms if the time column is in milliseconds, or loader.plausible_rate_hz: [low, high] if 1 Hz is right
    >>> check_sampling_rate(ms, source="r1.csv", arguments={"plausible_rate_hz": [0.5, 20]})
    """
    kind = recording_kind(recording)
    rate = recording.attrs.get("sampling_rate")
    if kind is None or rate is None:
        return
    rate = float(rate) * float(arguments.get("downsample") or 1)
    bounds = arguments.get("plausible_rate_hz")
    low, high = PLAUSIBLE_RATES_HZ[kind] if bounds is None else (float(b) for b in bounds)
    if low <= rate <= high:
        logger.debug("%s: sampling rate %s within %s to %s", source, rate, low, high)
        return
    unit = arguments.get("time_unit")
    hint = None if unit is None else _unit_hint(rate, str(unit), low, high)
    raise InputError(
        f"{source!r}: sampling rate {_hz(rate)} is implausible for {_ARTICLES[kind]} {kind} "
        "recording "
        f"(expected {_hz(low)} to {_hz(high)}); "
        + (f"{hint}, or " if hint else "set ")
        + f"loader.plausible_rate_hz: [low, high] if {_hz(rate)} is right"
    )


def rate_outliers(rates: Mapping[str, float | None], factor: float = 100.0) -> dict[str, str]:
    """The items of a batch whose sampling rate is orders of magnitude off most others'.

    An item is an outlier when its rate differs by more than ``factor`` (either way) from
    the rates of more than half the batch's items. With no such majority (two items that
    disagree, or a batch split in halves) nothing is flagged: which side is right cannot be
    told. Items without a finite, positive rate are not counted.

    Parameters
    ----------
    rates : Mapping of str to float or None
        Each item's sampling rate in Hz (its ingest record's ``sampling_rate``).
    factor : float, default 100
        The ratio beyond which two rates disagree. 100 keeps rigs of one lab together (a
        20 Hz Neurophotometrics and a 1017 Hz TDT recording are 51x apart) and flags a time
        column in milliseconds (1000x).

    Returns
    -------
    dict of str to str
        Item id -> one line saying what is wrong: its rate, the others' median, how many
        of them disagree and, when its rate times 1000 fits the others, the time-unit hint.
        In the order of ``rates``.

    Raises
    ------
    ValueError
        If ``factor`` is not greater than 1.

    Examples
    --------
    >>> found = rate_outliers({"a": 1000.0, "b": 1017.25, "c": 1.0, "d": 990.0})
    >>> for item, reason in found.items():
    ...     print(item, reason)
    c sampling rate 1 Hz is over 100x off the rates of 3 of the batch's 4 items (their median: 1 kHz); set loader.time_unit: ms if its time column is in milliseconds
    >>> rate_outliers({"a": 1000.0, "b": 1.0})
    {}
    """
    if not factor > 1:
        raise ValueError(f"factor must be greater than 1, got {factor!r}")
    valid = {
        item: float(rate)
        for item, rate in rates.items()
        if rate is not None and math.isfinite(rate) and rate > 0
    }
    ordered = sorted(valid.values())
    n = len(ordered)
    outliers: dict[str, str] = {}
    for item, rate in valid.items():
        # the items within factor of this one, itself included (a rate exactly factor apart
        # agrees, whatever the rounding)
        lo = bisect.bisect_left(ordered, rate / factor * (1 - _ROUNDING))
        hi = bisect.bisect_right(ordered, rate * factor * (1 + _ROUNDING))
        if 2 * (n - (hi - lo)) <= n:
            continue
        others = ordered[:lo] + ordered[hi:]
        median = statistics.median(others)
        hint = (
            "; set loader.time_unit: ms if its time column is in milliseconds"
            if median / factor <= rate * 1e3 <= median * factor
            else ""
        )
        outliers[item] = (
            f"sampling rate {_hz(rate)} is over {factor:g}x off the rates of {len(others)} of "
            f"the batch's {n} items (their median: {_hz(median)}){hint}"
        )
    return outliers
