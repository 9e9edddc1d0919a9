"""What the photometry loaders share: checks, downsampling, the Dataset.

Their arguments models live in :mod:`neurobatch.config.arguments`.

A loader reads its format into plain arrays (time, signal, isosbestic, event times) and hands
them to :func:`build_recording`, which checks them, downsamples them as PhoPro does and
assembles the Recording Dataset. Column formats (CSV, Parquet) go through
:func:`recording_from_table` first, which turns a pyarrow table into those arrays.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import scipy.signal
import xarray as xr
from numpy.typing import NDArray

from neurobatch.config.arguments import TIME_UNITS, ColumnArguments, LoaderArguments
from neurobatch.errors import InputError
from neurobatch.io.loaders._common import Locate, _check_finite, check_time

logger = logging.getLogger(__name__)

__all__ = [
    "INDEX_NAMES",
    "build_recording",
    "downsample_signal",
    "downsample_time",
    "recording_from_table",
]


def _sample(i: int) -> str:
    return f"sample {i}"


# ---------------------------------------------------------------------------------------------
# Downsampling: PhoPro 0.6.0's utils/operations.py, exactly
# ---------------------------------------------------------------------------------------------


def _no_downsampling(factor: int | None) -> bool:
    return factor is None or factor in (0, 1)


def downsample_signal(
    x: NDArray[np.float64], factor: int | None, *, method: Literal["resample", "mean"]
) -> NDArray[np.float64]:
    """Downsample a 1-D signal as PhoPro's ``downsample_signal`` does.

    Parameters
    ----------
    x : numpy.ndarray
        Samples, shape ``(n,)``.
    factor : int or None
        Downsampling factor; None, 0 or 1 return ``x`` unchanged.
    method : {"resample", "mean"}
        ``resample``: ``scipy.signal.resample_poly(x, 1, factor, window=("kaiser", 5),
        padtype="line")``, ``ceil(n / factor)`` samples; ``mean``: means of consecutive
        blocks of ``factor`` samples, ``n // factor`` samples (the trailing partial block is
        dropped).

    Returns
    -------
    numpy.ndarray
        The downsampled signal.

    Examples
    --------
    >>> downsample_signal(np.arange(7.0), 2, method="mean")
    array([0.5, 2.5, 4.5])
    >>> downsample_signal(np.ones(7), 2, method="resample").shape
    (4,)
    """
    if factor is None or _no_downsampling(factor):
        return x
    if method == "mean":
        n_out = x.shape[0] // factor
        return np.asarray(x[: n_out * factor].reshape(n_out, factor).mean(axis=1))
    out = scipy.signal.resample_poly(
        x, up=1, down=factor, axis=0, window=("kaiser", 5), padtype="line", cval=None
    )
    return np.asarray(out, dtype=np.float64)


def downsample_time(
    time: NDArray[np.float64],
    factor: int | None,
    *,
    method: Literal["resample", "mean"],
    interval: float | None = None,
) -> NDArray[np.float64]:
    """Downsample sample times as PhoPro's ``downsample_time`` does.

    Parameters
    ----------
    time : numpy.ndarray
        Sample times, shape ``(n,)``, regularly spaced for ``resample``.
    factor : int or None
        Downsampling factor; None, 0 or 1 return ``time`` unchanged.
    method : {"resample", "mean"}
        ``resample``: ``time[0] + arange(ceil(n / factor)) * factor * dt`` with ``dt`` the
        median interval; ``mean``: block means, as :func:`downsample_signal`.
    interval : float, optional
        The median sampling interval, when already known.

    Returns
    -------
    numpy.ndarray
        The downsampled times.

    Examples
    --------
    >>> downsample_time(np.arange(7) / 10.0, 2, method="resample")
    array([0. , 0.2, 0.4, 0.6])
    >>> downsample_time(np.arange(7) / 10.0, 2, method="mean")
    array([0.05, 0.25, 0.45])
    """
    if factor is None or _no_downsampling(factor):
        return time
    if method == "mean":
        return downsample_signal(time, factor, method="mean")
    dt = float(np.median(np.diff(time))) if interval is None else interval
    n_out = (time.size + factor - 1) // factor
    return np.asarray(time[0] + np.arange(n_out) * factor * dt, dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------


def _check_downsampling(
    n: int,
    arguments: LoaderArguments,
    *,
    source: str,
    median: float,
    d_min: float,
    d_max: float,
) -> None:
    factor = arguments.downsample
    if factor is None or _no_downsampling(factor):
        return
    method = arguments.downsample_method
    n_out = n // factor if method == "mean" else (n + factor - 1) // factor
    if n_out < 2:
        raise InputError(
            f"{source!r}: downsample={factor} ({method}) leaves {n_out} of {n} samples; "
            "a recording needs at least two"
        )
    # PhoPro: np.allclose(intervals, dt, rtol=1e-5, atol=1e-8), from the extreme intervals
    if method == "resample" and max(d_max - median, median - d_min) > 1e-8 + 1e-5 * median:
        raise InputError(
            f"{source!r}: downsample_method 'resample' needs regularly spaced timestamps "
            f"(intervals within 1e-5 of the median {median:.6g} s), but they range from "
            f"{d_min:.6g} s to {d_max:.6g} s; use downsample_method 'mean' or no downsampling"
        )


# ---------------------------------------------------------------------------------------------
# The Recording Dataset
# ---------------------------------------------------------------------------------------------


def build_recording(
    *,
    source: str,
    time: NDArray[np.float64],
    signal: NDArray[np.float64],
    isosbestic: NDArray[np.float64] | None,
    events: Mapping[str, NDArray[np.float64]],
    arguments: LoaderArguments,
    names: Mapping[str, str] | None = None,
    attrs: Mapping[str, Any] | None = None,
    sidecar: Mapping[str, Any] | None = None,
    sidecar_source: str | None = None,
    locate: Locate = _sample,
    intervals: tuple[float, float, float] | None = None,
) -> xr.Dataset:
    """Check the arrays of one recording, downsample them and assemble the Dataset.

    Parameters
    ----------
    source : str
        The input URL as given; named in every error and stored as ``attrs["source"]``.
    time, signal : numpy.ndarray
        Sample times (seconds) and signal, float64, shape ``(n,)``.
    isosbestic : numpy.ndarray or None
        The isosbestic channel, shape ``(n,)``; None for a single-channel recording.
    events : mapping of str to numpy.ndarray
        Event times (seconds, at the full sampling rate) per event name; a name of
        ``arguments.event_names()`` that is absent has no occurrence.
    arguments : LoaderArguments
        The loader's arguments (downsampling, sampling tolerance, event names).
    names : mapping of str to str, optional
        How messages name ``time``, ``signal`` and ``isosbestic`` (e.g. ``"column 'x'"``).
    attrs : mapping, optional
        Loader-specific attributes (e.g. ``box``); a sidecar may not overwrite them.
    sidecar : mapping, optional
        Sidecar metadata, merged into ``attrs``.
    sidecar_source : str, optional
        The sidecar's URL, for messages.
    locate : callable, optional
        Maps a sample index to a place in the input for messages (``"line 7"``).
    intervals : tuple of float, optional
        What :func:`check_time` returned for ``time``, when the caller checked it already.

    Returns
    -------
    xarray.Dataset
        ``signal(time)``, ``isosbestic(time)`` (when present), coordinate ``time``;
        ``event_time(event)`` sorted by time with coordinate ``event_name(event)``; attrs
        ``sampling_rate``, ``event_names``, ``source``, ``n_samples``, the loader's own and
        the sidecar's.

    Raises
    ------
    neurobatch.errors.InputError
        Fewer than two samples, NaN or inf values, time not strictly increasing, an
        interval off the median by more than ``max_sampling_deviation`` (column formats), a
        downsampling the data cannot take, or a sidecar key that clashes with a loader's.

    Warns
    -----
    neurobatch.errors.NonUniformSamplingWarning
        When a sampling interval deviates from the median interval by more than
        ``arguments.sampling_tolerance`` (relative).

    Examples
    --------
    >>> t = np.arange(5) / 10.0
    >>> ds = build_recording(source="x", time=t, signal=t + 1.0, isosbestic=None,
    ...                      events={"cue": np.array([0.3, 0.1])},
    ...                      arguments=ColumnArguments(event_cols=["cue"]))
    >>> ds.attrs["sampling_rate"], ds.attrs["n_samples"], ds.event_time.values.tolist()
    (10.0, 5, [0.1, 0.3])
    """
    names = {"time": "time", "signal": "signal", "isosbestic": "isosbestic", **(names or {})}
    n = int(time.shape[0])
    if intervals is None:
        intervals = check_time(
            time,
            what=names["time"],
            source=source,
            locate=locate,
            tolerance=arguments.sampling_tolerance,
            limit=getattr(arguments, "max_sampling_deviation", None),
        )
    median, d_min, d_max = intervals
    channels = {"signal": signal}
    if isosbestic is not None:
        channels["isosbestic"] = isosbestic
    for role, values in channels.items():
        if values.shape != (n,):
            raise InputError(f"{source!r}: {names[role]} has shape {values.shape}, expected ({n},)")
        _check_finite(values, names[role], source, locate)
    _check_downsampling(n, arguments, source=source, median=median, d_min=d_min, d_max=d_max)

    factor, method = arguments.downsample, arguments.downsample_method
    if not _no_downsampling(factor):
        logger.debug("%s: downsampling by %s (%s)", source, factor, method)
        signal = downsample_signal(signal, factor, method=method)
        if isosbestic is not None:
            isosbestic = downsample_signal(isosbestic, factor, method=method)
        time = downsample_time(time, factor, method=method, interval=median)
    n_out = int(time.shape[0])
    # PhoPro's estimate: (N - 1) / (t_max - t_min), on the (downsampled) samples
    sampling_rate = float((n_out - 1) / (time[-1] - time[0]))

    event_names = arguments.event_names()
    times = [np.asarray(events.get(name, ()), dtype=np.float64).ravel() for name in event_names]
    event_time = np.concatenate(times) if times else np.empty(0, dtype=np.float64)
    event_name = np.repeat(np.asarray(event_names, dtype=np.str_), [t.size for t in times])
    order = np.argsort(event_time, kind="stable")

    merged: dict[str, Any] = {
        "sampling_rate": sampling_rate,
        "event_names": list(event_names),
        "source": source,
        "n_samples": n_out,
        **(attrs or {}),
    }
    if sidecar:
        clash = [key for key in sidecar if key in merged]
        if clash:
            raise InputError(
                f"sidecar {sidecar_source or ''!r} of {source!r} sets {clash[0]!r}, which the "
                f"loader sets itself (reserved: {', '.join(sorted(merged))}); rename that key"
            )
        merged.update(sidecar)

    data_vars: dict[str, Any] = {"signal": ("time", np.asarray(signal, dtype=np.float64))}
    if isosbestic is not None:
        data_vars["isosbestic"] = ("time", np.asarray(isosbestic, dtype=np.float64))
    data_vars["event_time"] = ("event", event_time[order])
    return xr.Dataset(
        data_vars,
        coords={
            "time": ("time", np.asarray(time, dtype=np.float64)),
            "event_name": ("event", event_name[order]),
        },
        attrs=merged,
    )


def _numbers(column: Any, *, source: str, what: str) -> NDArray[np.float64]:
    """A numeric column as a float64 array, copied chunk by chunk (no concatenated copy)."""
    kind = column.type
    if not (pa.types.is_floating(kind) or pa.types.is_integer(kind)):
        raise InputError(f"{source!r}: {what} holds {kind} values; expected numbers")
    out = np.empty(len(column), dtype=np.float64)
    start = 0
    for chunk in column.chunks:
        # nulls (empty cells, NaN spelled out) become NaN, which the finiteness check reports
        out[start : start + len(chunk)] = chunk.to_numpy(zero_copy_only=False)
        start += len(chunk)
    return out


def _flag_rows(column: Any, name: str, *, source: str, locate: Locate) -> NDArray[np.intp]:
    """Rows whose flag is true: booleans (null = false, as PhoPro's fillna(False)) or 0/1."""
    kind = column.type
    if pa.types.is_boolean(kind):
        flags = np.empty(len(column), dtype=np.bool_)
        start = 0
        for chunk in column.chunks:
            flags[start : start + len(chunk)] = chunk.fill_null(False).to_numpy(
                zero_copy_only=False
            )
            start += len(chunk)
        return np.flatnonzero(flags)
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        values = _numbers(column, source=source, what=f"event column {name!r}")
        values[np.isnan(values)] = 0.0
        bad = (values != 0.0) & (values != 1.0)
        if bad.any():
            i = int(np.argmax(bad))
            raise InputError(
                f"{source!r}: event column {name!r} holds {float(values[i])!r} at {locate(i)}; "
                "expected a boolean or 0/1 flag"
            )
        return np.flatnonzero(values)
    raise InputError(
        f"{source!r}: event column {name!r} holds {kind} values; expected a boolean or 0/1 flag"
    )


def recording_from_table(
    table: Any | Callable[[], Any],
    arguments: ColumnArguments,
    *,
    source: str,
    isosbestic: bool,
    locate: Locate,
    sidecar: Mapping[str, Any] | None = None,
    sidecar_source: str | None = None,
) -> xr.Dataset:
    """Turn a pyarrow table of PhoPro's columns into the Recording Dataset.

    Event times are the times of the rows whose flag is true (before any downsampling).
    Times are converted to seconds from ``arguments.time_unit``.
    Columns are converted one at a time and dropped from the table as they go, so that
    peak memory is the table plus one column, provided nothing else holds the table: pass
    a function that reads it, and this one holds the only reference.

    Parameters
    ----------
    table : pyarrow.Table or callable
        The columns of ``arguments.columns()`` (the isosbestic one only when
        ``isosbestic``): numbers for time and channels, booleans or 0/1 for events; or a
        function of no arguments that returns them.
    arguments : ColumnArguments
        The loader's arguments.
    source : str
        The input URL as given.
    isosbestic : bool
        Whether the table holds the isosbestic column.
    locate : callable
        Maps a row index to a place in the input for messages.
    sidecar : mapping, optional
        Sidecar metadata, merged into ``attrs``.
    sidecar_source : str, optional
        The sidecar's URL, for messages.

    Returns
    -------
    xarray.Dataset
        The Recording Dataset (see :func:`build_recording`).

    Raises
    ------
    neurobatch.errors.InputError
        A column of the wrong type, an event flag other than 0/1, or anything
        :func:`build_recording` rejects.

    Examples
    --------
    >>> table = pa.table({"time": [0.0, 0.5, 1.0], "signal": [1.0, 2.0, 3.0],
    ...                   "cue": [False, True, None]})
    >>> ds = recording_from_table(table, ColumnArguments(event_cols=["cue"]), source="x",
    ...                           isosbestic=False, locate=lambda i: f"row {i}")
    >>> ds.event_time.values.tolist(), "isosbestic" in ds
    ([0.5], False)
    """
    roles = [("time", arguments.time_col), ("signal", arguments.signal_col)]
    if isosbestic and arguments.isosbestic_col is not None:
        roles.append(("isosbestic", arguments.isosbestic_col))
    if callable(table):
        table = table()
    if table.num_rows == 0:
        raise InputError(f"{source!r} has a header but no data rows; expected at least two samples")
    arrays: dict[str, NDArray[np.float64]] = {}
    intervals = None
    for role, name in roles:
        arrays[role] = _numbers(table.column(name), source=source, what=f"column {name!r}")
        table = table.drop_columns([name])
        if role == "time" and arguments.time_unit != "s":
            # a division, not a product with 1e-3: exactly rounded, as if written in seconds
            np.divide(arrays["time"], TIME_UNITS[arguments.time_unit], out=arrays["time"])
        if role == "time":
            # check time first: fail fast, and its intervals are freed before the channels
            intervals = check_time(
                arrays["time"],
                what=f"column {name!r}",
                source=source,
                locate=locate,
                tolerance=arguments.sampling_tolerance,
                limit=arguments.max_sampling_deviation,
            )
    time = arrays["time"]
    events = {}
    for name in arguments.event_cols:
        rows = _flag_rows(table.column(name), name, source=source, locate=locate)
        events[name] = time[rows]
        table = table.drop_columns([name])
    del table
    return build_recording(
        source=source,
        time=time,
        signal=arrays["signal"],
        isosbestic=arrays.get("isosbestic"),
        events=events,
        arguments=arguments,
        names={role: f"column {name!r}" for role, name in roles},
        sidecar=sidecar,
        sidecar_source=sidecar_source,
        locate=locate,
        intervals=intervals,
    )


# ---------------------------------------------------------------------------------------------
# Columns
# ---------------------------------------------------------------------------------------------

#: Header names that mark a leading index column (pandas' ``to_csv`` writes an empty one,
#: reading and writing again names it "Unnamed: 0"; Parquet from pandas "__index_level_0__").
INDEX_NAMES = ("", "Unnamed: 0", "__index_level_0__")
