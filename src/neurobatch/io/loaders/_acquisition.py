"""What the acquisition-system loaders share (Doric, Neurophotometrics, pyPhotometry).

Opening an input and reading its first bytes (:func:`open_input`, :func:`read_head`), finding
a channel the user named among the channels a file has (:func:`pick_channel`), events as
the rising edges of a digital channel (:func:`rising_edges`), putting a second channel on
the signal's time base (:func:`onto_time`) and trimming the non-finite samples a recording
starts or ends with (:func:`trim_nonfinite`). Each loader then hands plain arrays to
:func:`neurobatch.io.loaders._photometry.build_recording`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from neurobatch.errors import InputError, InputNotFoundError
from neurobatch.io.loaders._common import closest

logger = logging.getLogger(__name__)

__all__ = [
    "listing",
    "onto_time",
    "open_input",
    "pick_channel",
    "read_head",
    "rising_edges",
    "trim_nonfinite",
]

_LISTED = 20


def open_input(fs: Any, path: str, url: str, fmt: str) -> Any:
    """Open an input file for reading bytes, with one-line errors for people.

    Parameters
    ----------
    fs : fsspec.AbstractFileSystem
        The input's filesystem.
    path : str
        The input's path on ``fs``.
    url : str
        The input as given, for messages.
    fmt : str
        The loader format, for messages.

    Returns
    -------
    file-like
        Open in ``"rb"`` mode; the caller closes it.

    Raises
    ------
    neurobatch.errors.InputNotFoundError
        If the file does not exist.
    neurobatch.errors.InputError
        If it is a folder.

    Examples
    --------
    >>> import fsspec
    >>> fs = fsspec.filesystem("memory")
    >>> fs.pipe("/acq-doc/a.bin", b"abc")
    >>> with open_input(fs, "/acq-doc/a.bin", "memory://acq-doc/a.bin", "doric") as f:
    ...     f.read()
    b'abc'
    >>> open_input(fs, "/acq-doc/b.bin", "memory://acq-doc/b.bin", "doric")
    Traceback (most recent call last):
    ...
    neurobatch.errors.InputNotFoundError: input 'memory://acq-doc/b.bin' does not exist
    """
    try:
        if fs.isdir(path):
            raise InputError(f"input {url!r} is a folder; format {fmt!r} reads files")
        return fs.open(path, "rb")
    except FileNotFoundError:
        raise InputNotFoundError(f"input {url!r} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"input {url!r} is a folder; format {fmt!r} reads files") from None


def read_head(fs: Any, path: str, url: str, fmt: str, size: int = 1 << 16) -> bytes:
    """The first ``size`` bytes of an input (fewer when it is shorter).

    Parameters
    ----------
    fs : fsspec.AbstractFileSystem
        The input's filesystem.
    path : str
        The input's path on ``fs``.
    url : str
        The input as given, for messages.
    fmt : str
        The loader format, for messages.
    size : int, default 65536
        How many bytes to read.

    Returns
    -------
    bytes
        The file's first bytes.

    Examples
    --------
    >>> import fsspec
    >>> fs = fsspec.filesystem("memory")
    >>> fs.pipe("/acq-doc/h.bin", b"0123456789")
    >>> read_head(fs, "/acq-doc/h.bin", "memory://acq-doc/h.bin", "doric", size=4)
    b'0123'
    """
    with open_input(fs, path, url, fmt) as f:
        head: bytes = f.read(size)
    return head


def listing(names: Sequence[str]) -> str:
    """Names quoted and joined for a message, the first 20 and how many more.

    Examples
    --------
    >>> listing(["a", "b"])
    "'a', 'b'"
    >>> listing([str(i) for i in range(25)]).endswith("'19' and 5 more")
    True
    >>> listing([])
    'none'
    """
    if not names:
        return "none"
    shown = ", ".join(repr(name) for name in names[:_LISTED])
    more = len(names) - _LISTED
    return shown + (f" and {more} more" if more > 0 else "")


def pick_channel(
    name: str, channels: Sequence[str], *, role: str, source: str, kind: str = "channel"
) -> str:
    """The channel a user named: the one equal to ``name``, else the one whose path ends in it.

    Channels are paths (``FPConsole/Signals/Series0001/AIN01xAOUT01-LockIn``); a name picks
    the channel equal to it or, failing that, the only channel whose path ends in ``/`` plus
    the name (``AIN01xAOUT01-LockIn``, ``Series0001/AIN01xAOUT01-LockIn``).

    Parameters
    ----------
    name : str
        The name the arguments give.
    channels : sequence of str
        The channels the input has.
    role : str
        The argument that named it, for messages (``"signal_channel"``).
    source : str
        The input, for messages.
    kind : str, default "channel"
        What a channel is called in messages (``"column"``).

    Returns
    -------
    str
        The channel.

    Raises
    ------
    neurobatch.errors.InputError
        If no channel or several fit, naming the input, the channels it has (or those that
        fit) and the closest name.

    Examples
    --------
    >>> chans = ["FP/Series0001/AIN01xAOUT01-LockIn", "FP/Series0001/DigitalIO/DIO01"]
    >>> pick_channel("DIO01", chans, role="event_channels", source="a.doric")
    'FP/Series0001/DigitalIO/DIO01'
    >>> pick_channel("DIO1", chans, role="event_channels", source="a.doric")
    Traceback (most recent call last):
    ...
    neurobatch.errors.InputError: 'a.doric' has no channel 'DIO1' (event_channels; did you mean 'DIO01'?); its channels: 'FP/Series0001/AIN01xAOUT01-LockIn', 'FP/Series0001/DigitalIO/DIO01'
    """
    if name in channels:
        return name
    tail = "/" + name.strip("/")
    fits = [channel for channel in channels if channel.endswith(tail)]
    if len(fits) == 1:
        return fits[0]
    if fits:
        raise InputError(
            f"{source!r}: {kind} {name!r} ({role}) fits {len(fits)} {kind}s: {listing(fits)}; "
            "name one by a longer part of its path"
        )
    # suggest from the whole paths and from every tail of them
    tails = {
        "/".join(parts[i:]): channel
        for channel in channels
        for parts in [channel.split("/")]
        for i in range(len(parts))
    }
    guess = closest(name, list(tails))
    hint = f"; did you mean {guess!r}?" if guess else ""
    raise InputError(
        f"{source!r} has no {kind} {name!r} ({role}{hint}); its {kind}s: {listing(channels)}"
    )


def rising_edges(
    values: NDArray[Any], time: NDArray[np.float64], *, threshold: float
) -> NDArray[np.float64]:
    """Times of the rising edges of a digital channel: high samples after a low one.

    A sample is high when its value is above ``threshold``. A channel already high at its
    first sample has no edge there (its onset was not recorded).

    Parameters
    ----------
    values : numpy.ndarray
        The channel, shape ``(n,)``.
    time : numpy.ndarray
        Its sample times (seconds), shape ``(n,)``.
    threshold : float
        The level above which the channel is high.

    Returns
    -------
    numpy.ndarray
        The times of the edges, float64, in order.

    Examples
    --------
    >>> rising_edges(np.array([1, 0, 1, 1, 0, 1]), np.arange(6.0), threshold=0.5)
    array([2., 5.])
    """
    high = np.asarray(values) > threshold
    edges = np.flatnonzero(high[1:] & ~high[:-1]) + 1
    return np.asarray(time, dtype=np.float64)[edges]


def onto_time(
    time: NDArray[np.float64],
    other_time: NDArray[np.float64],
    other: NDArray[np.float64],
    *,
    source: str,
    what: str,
) -> tuple[slice, NDArray[np.float64]]:
    """Put a channel sampled at ``other_time`` on the time base ``time``, by linear interpolation.

    Only the samples of ``time`` within ``[other_time[0], other_time[-1]]`` are kept: the
    channel is interpolated, never extrapolated. When the two time bases are equal the
    channel is returned as it is.

    Parameters
    ----------
    time : numpy.ndarray
        The time base (the signal's sample times), increasing, shape ``(n,)``.
    other_time : numpy.ndarray
        The channel's sample times, increasing, shape ``(m,)``.
    other : numpy.ndarray
        The channel, shape ``(m,)``.
    source : str
        The input, for messages.
    what : str
        How messages name the channel.

    Returns
    -------
    tuple of (slice, numpy.ndarray)
        The samples of ``time`` kept, and the channel at those times.

    Raises
    ------
    neurobatch.errors.InputError
        If the channel has fewer than two samples or its times do not overlap ``time``
        at two samples or more.

    Examples
    --------
    >>> keep, values = onto_time(np.array([0.0, 1.0, 2.0, 3.0]), np.array([0.5, 2.5]),
    ...                          np.array([10.0, 30.0]), source="x", what="isosbestic")
    >>> keep, values.tolist()
    (slice(1, 3, None), [15.0, 25.0])
    """
    if other_time.shape == time.shape and np.array_equal(other_time, time):
        return slice(0, time.shape[0]), other
    if other_time.shape[0] < 2:
        raise InputError(
            f"{source!r}: {what} has {other_time.shape[0]} sample(s); expected two or more"
        )
    if np.any(np.diff(other_time) <= 0):
        i = int(np.flatnonzero(np.diff(other_time) <= 0)[0])
        raise InputError(
            f"{source!r}: the times of {what} are not increasing at its sample {i + 1} "
            f"({float(other_time[i])!r} s, then {float(other_time[i + 1])!r} s)"
        )
    first = int(np.searchsorted(time, other_time[0], side="left"))
    last = int(np.searchsorted(time, other_time[-1], side="right"))
    if last - first < 2:
        raise InputError(
            f"{source!r}: {what} ({float(other_time[0])!r} s to {float(other_time[-1])!r} s) "
            f"does not overlap the signal ({float(time[0])!r} s to {float(time[-1])!r} s)"
        )
    if first > 0 or last < time.shape[0]:
        logger.debug(
            "%s: %d signal sample(s) outside %s's span dropped",
            source,
            first + time.shape[0] - last,
            what,
        )
    keep = slice(first, last)
    return keep, np.interp(time[keep], other_time, other)


def trim_nonfinite(*arrays: NDArray[np.float64], source: str, what: str) -> slice:
    """The span outside which every array is finite: leading and trailing NaN or inf dropped.

    Lock-in (demodulated) channels may start with NaN while the filter settles; those samples
    are dropped (logged at INFO). A NaN inside the span stays, and the Recording's checks
    report it with its place.

    Parameters
    ----------
    *arrays : numpy.ndarray
        Channels on one time base, each shape ``(n,)``.
    source : str
        The input, for messages.
    what : str
        How messages name the channels.

    Returns
    -------
    slice
        The samples to keep.

    Raises
    ------
    neurobatch.errors.InputError
        If no sample is finite in every array.

    Examples
    --------
    >>> trim_nonfinite(np.array([np.nan, 1.0, 2.0, np.inf]), np.ones(4), source="x", what="y")
    slice(1, 3, None)
    """
    finite = np.logical_and.reduce([np.isfinite(a) for a in arrays])
    kept = np.flatnonzero(finite)
    if kept.size == 0:
        raise InputError(
            f"{source!r}: no sample of {what} is finite (all NaN or inf: an unused channel?); "
            "expected a recorded channel"
        )
    first, last = int(kept[0]), int(kept[-1]) + 1
    if first > 0 or last < finite.shape[0]:
        logger.info(
            "%s: %s starts or ends with %d NaN or inf sample(s); they are dropped",
            source,
            what,
            first + finite.shape[0] - last,
        )
    return slice(first, last)
