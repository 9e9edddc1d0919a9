"""Neurophotometrics recordings (format ``neurophotometrics``): the CSV its Bonsai workflow writes.

The layout (FP3001/FP3002, as GuPPy's and IBL's readers take it): one row per camera frame,
with ``FrameCounter``, a frame time (``Timestamp``, or ``SystemTimestamp`` and
``ComputerTimestamp`` in newer files), the frame's LED state (``LedState``, ``Flags`` in
older files) and one column per region and emission colour (``Region0G``, ``Region1R``,
...). The LEDs take turns, one per frame: the low three bits of the state say which was on
(1 = 415 nm, 2 = 470 nm, 4 = 560 nm); older files set higher bits too (digital inputs and
outputs, e.g. 17 = 415 nm with output 0 high), which are ignored.

The signal is the column ``region + color`` on the frames lit by ``signal_led`` (and not
``isosbestic_led``), at those frames' times; the isosbestic channel is the same column on
the frames lit by ``isosbestic_led``, linearly interpolated onto the signal's frame times
(the two never share a frame; signal frames before the first or after the last isosbestic
frame are dropped, nothing is extrapolated). Times are the file's own clock, in seconds
(``ComputerTimestamp`` is in milliseconds).

Events come from a separate event file (``events_file``), as Bonsai writes it: one row per
event, its time first and optionally a state (or name) after it, with or without a header
line. ``event_states`` maps each event to the state of its rows (``*`` for every row). Event
times are on the frame-time column's clock, or on another column's (``events_clock``, e.g.
``ComputerTimestamp``), then mapped onto the frame-time clock by linear interpolation between
frames.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import xarray as xr
from numpy.typing import NDArray

from neurobatch.config.acquisition_arguments import NeurophotometricsArguments
from neurobatch.config.arguments import TIME_UNITS
from neurobatch.errors import InputError
from neurobatch.io.loaders._acquisition import listing, onto_time, open_input, read_head
from neurobatch.io.loaders._common import closest, coerce_arguments, note_read
from neurobatch.io.loaders._photometry import build_recording
from neurobatch.io.loaders._sniff import not_utf8_text
from neurobatch.io.loaders.sidecar import load_annotation, resolve_sidecar

logger = logging.getLogger(__name__)

__all__ = ["FORMAT", "LED_BITS", "load_neurophotometrics"]

FORMAT = "neurophotometrics"

#: The bit each LED (by wavelength, nm) sets in a frame's LED state.
LED_BITS: dict[int, int] = {415: 1, 470: 2, 560: 4}

_LED_MASK = 7
_TIME_COLUMNS = ("Timestamp", "SystemTimestamp", "ComputerTimestamp")
_LED_COLUMNS = ("LedState", "Flags")
_MILLISECOND_COLUMNS = ("ComputerTimestamp",)


def _seconds_per_unit(column: str, unit: str) -> float:
    """How many of the column's units make a second (``auto``: ms for ComputerTimestamp)."""
    if unit == "auto":
        return 1e3 if column in _MILLISECOND_COLUMNS else 1.0
    return TIME_UNITS[unit]


def _header(fs: Any, path: str, url: str) -> list[str]:
    head = read_head(fs, path, url, FORMAT)
    found = not_utf8_text(head)
    if found is not None:
        raise InputError(f"{url!r} is {found.what}; expected a Neurophotometrics CSV")
    text = head.decode("utf-8", errors="replace").removeprefix("\ufeff").lstrip("\r\n")
    if not text.strip():
        raise InputError(f"{url!r} is empty; expected a Neurophotometrics CSV")
    names = [name.strip() for name in next(csv.reader([text.splitlines()[0]]))]
    if all(_is_number(name) for name in names):
        raise InputError(
            f"{url!r} has no header line (its first line is numbers: an event file, or a file "
            "saved without column names?); expected a Neurophotometrics CSV with FrameCounter, "
            "Timestamp, LedState and Region columns"
        )
    return names


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _column(
    given: str | None, candidates: Sequence[str], header: Sequence[str], role: str, url: str
) -> str:
    """The column the arguments name, or the first of ``candidates`` the file has."""
    folded = {name.casefold(): name for name in header}
    if given is not None:
        if given in header:
            return given
        guess = closest(given, list(header))
        hint = f"; did you mean {guess!r}?" if guess else ""
        raise InputError(
            f"{url!r} has no column {given!r} ({role}{hint}); its columns: {listing(header)}"
        )
    for name in candidates:
        if name.casefold() in folded:
            return folded[name.casefold()]
    raise InputError(
        f"{url!r} has none of the columns {', '.join(repr(c) for c in candidates)} ({role}); "
        f"its columns: {listing(header)}; expected a Neurophotometrics CSV (or set {role})"
    )


def _read_table(fs: Any, path: str, url: str, columns: list[str]) -> Any:
    types = {name: pa.float64() for name in columns}
    try:
        with open_input(fs, path, url, FORMAT) as f:
            return pacsv.read_csv(
                f,
                read_options=pacsv.ReadOptions(use_threads=False),
                convert_options=pacsv.ConvertOptions(include_columns=columns, column_types=types),
            )
    except pa.ArrowInvalid as e:
        raise InputError(
            f"{url!r} cannot be read as a Neurophotometrics CSV: {' '.join(str(e).split())}"
        ) from e


def _numbers(table: Any, name: str, url: str) -> NDArray[Any]:
    column = table.column(name)
    if column.null_count:
        row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise InputError(f"{url!r}: column {name!r} is empty at line {row + 2}; expected a number")
    return np.asarray(column.to_numpy(zero_copy_only=False))


def _frames(led: NDArray[np.int64], on: int, off: int | None) -> NDArray[np.intp]:
    """Rows lit by LED ``on`` and not by LED ``off``."""
    lit = (led & _LED_MASK & LED_BITS[on]) != 0
    if off is not None:
        lit &= (led & LED_BITS[off]) == 0
    return np.flatnonzero(lit)


def _no_frames(url: str, led_col: str, nm: int, led: NDArray[np.int64]) -> InputError:
    states = np.unique(led)
    shown = ", ".join(str(int(s)) for s in states[:12]) + (" ..." if states.size > 12 else "")
    lit = sorted({nm_ for s in states for nm_, bit in LED_BITS.items() if s & bit})
    return InputError(
        f"{url!r} has no frame lit by the {nm} nm LED ({led_col} & {LED_BITS[nm]}); its "
        f"{led_col} values: {shown} (LEDs {', '.join(f'{n} nm' for n in lit) or 'none'})"
    )


# ---------------------------------------------------------------------------------------------
# The event file
# ---------------------------------------------------------------------------------------------


def _same_state(cells: NDArray[np.str_], state: str) -> NDArray[np.bool_]:
    """Which cells hold ``state``: as text, as a number, or as a boolean (any case)."""
    matches = {}
    for cell in np.unique(cells):
        text = str(cell)
        same = text == state or text.casefold() == state.casefold()
        if not same and _is_number(text) and _is_number(state):
            same = float(text) == float(state)
        matches[text] = same
    return np.array([matches[str(cell)] for cell in cells], dtype=bool)


def _read_events(
    url: str, args: NeurophotometricsArguments, storage_options: Mapping[str, Any]
) -> tuple[str, dict[str, NDArray[np.float64]]]:
    """The event file's URL, and each event's times in the file's units."""
    if args.events_file is None:
        return "", {}
    events_url = resolve_sidecar(
        url, args.events_file, target="file", storage_options=storage_options
    )
    fs, path = fsspec.core.url_to_fs(events_url, **dict(storage_options))
    try:
        with fs.open(path, "rb") as f:
            raw: bytes = f.read()
    except FileNotFoundError:
        raise InputError(
            f"event file {events_url!r} of {url!r} does not exist (events_file "
            f"{args.events_file!r})"
        ) from None
    note_read(events_url)
    found = not_utf8_text(raw[: 1 << 16])
    if found is not None:
        raise InputError(
            f"event file {events_url!r} is {found.what}; expected a CSV of event times"
        )
    lines = [
        (number, line)
        for number, line in enumerate(raw.decode("utf-8").removeprefix("\ufeff").splitlines(), 1)
        if line.strip()
    ]
    rows = [[cell.strip() for cell in row] for row in csv.reader(line for _, line in lines)]
    numbers = [number for number, _ in lines]
    header: list[str] | None = None
    if rows and not _is_number(rows[0][0]):
        header, rows, numbers = rows[0], rows[1:], numbers[1:]

    def named(given: str, role: str) -> int:
        if header is None or given not in header:
            has = f"its columns: {listing(header)}" if header else "it has no header line"
            raise InputError(f"event file {events_url!r} has no column {given!r} ({role}); {has}")
        return header.index(given)

    width = len(header) if header is not None else max((len(row) for row in rows), default=1)
    time_index = (
        0 if args.events_time_col is None else named(args.events_time_col, "events_time_col")
    )
    state_index: int | None = 1 if width > 1 else None
    if args.events_state_col is not None:
        state_index = named(args.events_state_col, "events_state_col")
    times = np.empty(len(rows), dtype=np.float64)
    for k, row in enumerate(rows):
        cell = row[time_index] if time_index < len(row) else ""
        try:
            times[k] = float(cell)
        except ValueError:
            raise InputError(
                f"event file {events_url!r}: line {numbers[k]} has time {cell!r}; expected a number"
            ) from None
    states = np.array(
        [
            row[state_index] if state_index is not None and state_index < len(row) else ""
            for row in rows
        ],
        dtype=np.str_,
    )
    events = {}
    for name, state in args.event_states.items():
        if state == "*":
            events[name] = times
            continue
        if state_index is None:
            raise InputError(
                f"event file {events_url!r} has no state column, so event {name!r} cannot "
                f"be the rows of state {state!r}; use '*' for every row"
            )
        events[name] = times[_same_state(states, state)]
        if events[name].size == 0:
            present = listing(sorted({str(s) for s in states}))
            logger.info(
                "%s: no row of state %r (event %r); its states: %s",
                events_url,
                state,
                name,
                present,
            )
    return events_url, events


# ---------------------------------------------------------------------------------------------
# The loader
# ---------------------------------------------------------------------------------------------


def load_neurophotometrics(
    url: str,
    arguments: NeurophotometricsArguments | Mapping[str, Any],
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """Load one Neurophotometrics CSV (and its event file) into a Recording Dataset.

    Parameters
    ----------
    url : str
        The CSV file: a local path or any fsspec URL.
    arguments : NeurophotometricsArguments or mapping
        The loader's arguments (a mapping is validated; it may carry ``format``): ``region``,
        ``color``, ``signal_led``, ``isosbestic_led``, ``time_col``, ``time_unit``,
        ``led_col``, ``events_file``, ``event_states``, ``events_time_col``,
        ``events_state_col``, ``events_clock``.
    storage_options : mapping, optional
        Passed to fsspec (for the event file too).

    Returns
    -------
    xarray.Dataset
        ``signal(time)`` on the signal LED's frame times (seconds, the file's clock);
        ``isosbestic(time)`` interpolated onto them (absent when ``isosbestic_led`` is null);
        ``event_time(event)`` sorted, with ``event_name(event)``; attrs ``sampling_rate``,
        ``event_names``, ``source``, ``n_samples``, ``acquisition`` (the columns and LEDs
        read, the event file) and the sidecar's metadata.

    Raises
    ------
    neurobatch.errors.InputNotFoundError
        If the file does not exist.
    neurobatch.errors.InputError
        A file that is not such a CSV, a missing column (with the columns the file has and
        the closest name), no frame lit by an LED asked for (with the LED states the file
        has), a missing or bad event file, frame times not increasing or with gaps beyond
        ``max_sampling_deviation`` (dropped frames), or a bad sidecar.
    neurobatch.errors.ConfigError
        If ``arguments`` is an invalid mapping.

    Warns
    -----
    neurobatch.errors.NonUniformSamplingWarning
        When frame intervals deviate from their median by more than ``sampling_tolerance``.

    See Also
    --------
    neurobatch.io.loaders.load_recording : any format by name.

    Examples
    --------
    >>> import fsspec
    >>> memory = fsspec.filesystem("memory")
    >>> memory.pipe("/npm-doc/fp.csv",
    ...     b"FrameCounter,Timestamp,LedState,Region0G\\n"
    ...     b"0,10.0,1,0.5\\n1,10.5,2,2.0\\n2,11.0,1,0.75\\n3,11.5,2,2.5\\n"
    ...     b"4,12.0,1,1.0\\n5,12.5,2,3.0\\n")
    >>> memory.pipe("/npm-doc/fp_ttl.csv", b"11.5,1\\n12.2,0\\n")
    >>> ds = load_neurophotometrics("memory://npm-doc/fp.csv",
    ...                             {"events_file": "{stem}_ttl.csv", "event_states": {"cue": 1}})
    >>> ds.time.values.tolist(), ds.signal.values.tolist(), ds.isosbestic.values.tolist()
    ([10.5, 11.5], [2.0, 2.5], [0.625, 0.875])
    >>> ds.event_time.values.tolist()
    [11.5]
    >>> load_neurophotometrics("memory://npm-doc/fp.csv", {"region": 1})
    Traceback (most recent call last):
    ...
    neurobatch.errors.InputError: 'memory://npm-doc/fp.csv' has no column 'Region1G' (region + color; did you mean 'Region0G'?); its columns: 'FrameCounter', 'Timestamp', 'LedState', 'Region0G'
    """
    args = coerce_arguments(arguments, NeurophotometricsArguments, fmt=FORMAT)
    so = dict(storage_options or {})
    fs, path = fsspec.core.url_to_fs(url, **so)
    path = str(path)
    header = _header(fs, path, url)
    time_col = _column(args.time_col, _TIME_COLUMNS, header, "time_col", url)
    led_col = _column(args.led_col, _LED_COLUMNS, header, "led_col", url)
    value_col = _column(args.column(), (), header, "region + color", url)
    clock_col = None
    if args.events_clock is not None and args.events_clock != time_col:
        clock_col = _column(args.events_clock, (), header, "events_clock", url)
    metadata, sidecar_url = load_annotation(
        url, args, target="file", key=args.annotation_key, storage_options=so
    )
    events_url, event_times = _read_events(url, args, so)

    columns = [time_col, led_col, value_col, *([clock_col] if clock_col else [])]
    table = _read_table(fs, path, url, columns)
    if table.num_rows == 0:
        raise InputError(f"{url!r} has a header but no frames; expected rows of frames")
    time = _numbers(table, time_col, url).astype(np.float64) / _seconds_per_unit(
        time_col, args.time_unit
    )
    led_values = _numbers(table, led_col, url)
    led = led_values.astype(np.int64)
    if np.any(led != led_values):
        row = int(np.flatnonzero(led != led_values)[0])
        raise InputError(
            f"{url!r}: column {led_col!r} holds {float(led_values[row])!r} at line {row + 2}; "
            "expected an LED state (an integer)"
        )
    values = _numbers(table, value_col, url).astype(np.float64)

    signal_rows = _frames(led, args.signal_led, args.isosbestic_led)
    if signal_rows.size == 0:
        raise _no_frames(url, led_col, args.signal_led, led)
    signal_time, signal = time[signal_rows], values[signal_rows]
    isosbestic = None
    if args.isosbestic_led is not None:
        iso_rows = _frames(led, args.isosbestic_led, args.signal_led)
        if iso_rows.size == 0:
            raise _no_frames(url, led_col, args.isosbestic_led, led)
        keep, isosbestic = onto_time(
            signal_time,
            time[iso_rows],
            values[iso_rows],
            source=url,
            what=f"the {args.isosbestic_led} nm frames",
        )
        signal_rows, signal_time, signal = signal_rows[keep], signal_time[keep], signal[keep]

    events = {
        name: times / _seconds_per_unit(time_col, args.time_unit)
        for name, times in event_times.items()
    }
    if clock_col is not None:
        clock = _numbers(table, clock_col, url).astype(np.float64) / _seconds_per_unit(
            clock_col, "auto"
        )
        if np.any(np.diff(clock) <= 0):
            raise InputError(
                f"{url!r}: column {clock_col!r} (events_clock) is not strictly increasing; "
                "expected a clock to map the event times by"
            )
        for name, times in event_times.items():
            seconds = times / _seconds_per_unit(clock_col, "auto")
            inside = (seconds >= clock[0]) & (seconds <= clock[-1])
            if not inside.all():
                logger.info(
                    "%s: %d %r event(s) outside the recording's %s span are dropped",
                    events_url,
                    int((~inside).sum()),
                    name,
                    clock_col,
                )
            events[name] = np.interp(seconds[inside], clock, time)
    acquisition = {
        "format": FORMAT,
        "column": value_col,
        "time_col": time_col,
        "led_col": led_col,
        "signal_led": args.signal_led,
        "isosbestic_led": args.isosbestic_led,
        "events_file": events_url or None,
    }
    return build_recording(
        source=url,
        time=signal_time,
        signal=signal,
        isosbestic=isosbestic,
        events=events,
        arguments=args,
        names={
            "time": f"column {time_col!r} ({args.signal_led} nm frames)",
            "signal": f"column {value_col!r} ({args.signal_led} nm frames)",
            "isosbestic": f"column {value_col!r} ({args.isosbestic_led} nm frames)",
        },
        attrs={"acquisition": acquisition},
        sidecar=metadata,
        sidecar_source=sidecar_url,
        locate=lambda i: f"line {int(signal_rows[i]) + 2}",
    )
