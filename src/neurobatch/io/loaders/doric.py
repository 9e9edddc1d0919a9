"""Doric photometry recordings (format ``doric``): ``.doric`` files and Doric's CSV export.

A ``.doric`` file is HDF5 (told by its first bytes, whatever its name); any other input is
read as Doric's CSV export. Three layouts are read, as Doric Neuroscience Studio writes them:

- **V6** (``DataAcquisition/<console>/...``): every 1-D dataset beside a ``Time`` dataset is a
  channel, named by its path under ``DataAcquisition`` without a final ``/Values``: a lock-in
  group ``FPConsole/Signals/Series0001/AIN01xAOUT01-LockIn`` (its ``Values`` and ``Time``),
  ``FPConsole/Signals/Series0001/AnalogIn/AIN01`` or ``.../DigitalIO/DIO01`` (beside
  ``AnalogIn/Time``, ``DigitalIO/Time``), a camera system's ``.../CAM1_EXC1/ROI01``.
- **Older** (``Traces/<console>/...``): each channel is a group holding one dataset
  (``Traces/Console/AIn-1 - Dem (AOut-1)/AIn-1 - Dem (AOut-1)``, ``.../DI--O-1/DI--O-1``),
  all on the console's time ``Traces/Console/Time(s)/Console_time(s)``; a channel is named
  ``Console/<group>``.
- **CSV export**: two header lines, one naming the columns (``Time(s)``, then one column per
  channel, ``AIN01xAOUT01-LockIn/Values`` named without ``/Values``) and one describing them
  (``---,Analog In. | Ch.1,...`` before the names, or a ``Unit,V,...`` line after them);
  empty columns left by trailing commas are ignored.

A channel is picked by its name or any tail of its path (see
:func:`neurobatch.io.loaders._acquisition.pick_channel`). Only the channels asked for are read
(h5py reads their datasets alone, also from remote files through fsspec; pyarrow parses their
columns alone). When the signal and the isosbestic channel have different time bases the
isosbestic channel is interpolated linearly onto the signal's times (signal samples outside its
span are dropped); NaN or inf samples a channel starts or ends with are dropped. Events are the
rising edges of digital channels, at their own channels' times.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import posixpath
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import xarray as xr
from fsspec.implementations.local import LocalFileSystem
from numpy.typing import NDArray

from neurobatch.config.acquisition_arguments import DoricArguments
from neurobatch.errors import InputError
from neurobatch.io.loaders._acquisition import (
    listing,
    onto_time,
    open_input,
    pick_channel,
    read_head,
    rising_edges,
    trim_nonfinite,
)
from neurobatch.io.loaders._common import coerce_arguments
from neurobatch.io.loaders._photometry import build_recording
from neurobatch.io.loaders._sniff import describe_bytes, not_utf8_text
from neurobatch.io.loaders.sidecar import load_annotation

logger = logging.getLogger(__name__)

__all__ = ["FORMAT", "load_doric"]

FORMAT = "doric"

_HDF5 = b"\x89HDF\r\n\x1a\n"
_CSV_TIME = "Time(s)"

Stream = tuple[NDArray[np.float64], NDArray[np.float64]]


@dataclass(frozen=True)
class _Source:
    """An open Doric input: its layout, its channels, and a reader of some of them."""

    layout: str
    channels: list[str]
    read: Callable[[list[str]], dict[str, Stream]]


def _import_h5py() -> Any:
    try:
        import h5py
    except ImportError as e:  # pragma: no cover - h5py comes with the io extras
        raise ImportError("format 'doric' needs the 'h5py' package: pip install h5py") from e
    return h5py


# ---------------------------------------------------------------------------------------------
# .doric (HDF5)
# ---------------------------------------------------------------------------------------------


def _v6_channels(h5py: Any, group: Any) -> dict[str, tuple[str, str]]:
    """Channel name -> (values path, time path) under ``DataAcquisition``."""
    found: dict[str, tuple[str, str]] = {}

    def visit(name: str, node: Any) -> None:
        leaf = posixpath.basename(name)
        if not isinstance(node, h5py.Dataset) or node.ndim != 1 or leaf == "Time":
            return
        parent = posixpath.dirname(name)
        time = posixpath.join(parent, "Time")
        if not isinstance(group.get(time), h5py.Dataset):
            return
        key = parent if leaf == "Values" and parent else name
        found[key] = (f"{group.name}/{name}", f"{group.name}/{time}")

    group.visititems(visit)
    return found


def _single_dataset(h5py: Any, node: Any, name: str) -> Any:
    """A dataset, or the dataset a channel group holds (the one of its name, or its only one)."""
    if isinstance(node, h5py.Dataset):
        return node
    if isinstance(node.get(name), h5py.Dataset):
        return node[name]
    inside = [child for child in node.values() if isinstance(child, h5py.Dataset)]
    return inside[0] if len(inside) == 1 else None


def _older_channels(h5py: Any, traces: Any) -> dict[str, tuple[str, str]]:
    """Channel name (``console/group``) -> (values path, time path) under ``Traces``."""
    found: dict[str, tuple[str, str]] = {}
    for console_name, console in traces.items():
        if not isinstance(console, h5py.Group):
            continue
        times = [name for name in console if name.startswith("Time")]
        time = _single_dataset(h5py, console[times[0]], times[0]) if times else None
        if time is None:
            continue
        for name, node in console.items():
            dataset = None if name == times[0] else _single_dataset(h5py, node, name)
            if dataset is not None and dataset.ndim == 1:
                found[f"{console_name}/{name}"] = (dataset.name, time.name)
    return found


@contextlib.contextmanager
def _hdf5_source(fs: Any, path: str, url: str) -> Iterator[_Source]:
    h5py = _import_h5py()
    local = isinstance(fs, LocalFileSystem)
    opened = None if local else open_input(fs, path, url, FORMAT)
    try:
        try:
            f = h5py.File(path if local else opened, "r")
        except OSError as e:
            raise InputError(
                f"{url!r} cannot be read as HDF5 ({' '.join(str(e).split())}); expected a "
                "complete .doric file"
            ) from e
        with f:
            if isinstance(f.get("DataAcquisition"), h5py.Group):
                layout, channels = "V6", _v6_channels(h5py, f["DataAcquisition"])
            elif isinstance(f.get("Traces"), h5py.Group):
                layout, channels = "older", _older_channels(h5py, f["Traces"])
            else:
                raise InputError(
                    f"{url!r} holds neither DataAcquisition (Doric V6) nor Traces (older "
                    f"Doric files); its top-level entries: {listing(list(f))}; expected a "
                    ".doric file"
                )

            def read(keys: list[str]) -> dict[str, Stream]:
                out = {}
                for key in keys:
                    values_path, time_path = channels[key]
                    try:
                        values = np.asarray(f[values_path][()], dtype=np.float64)
                        time = np.asarray(f[time_path][()], dtype=np.float64)
                    except (OSError, ValueError, TypeError) as e:
                        raise InputError(
                            f"{url!r}: cannot read channel {key!r} ({values_path}): "
                            f"{' '.join(str(e).split())}"
                        ) from e
                    if values.shape != time.shape:
                        raise InputError(
                            f"{url!r}: channel {key!r} has {values.size} values but its time "
                            f"{time_path} has {time.size}; expected one time per value"
                        )
                    out[key] = (time, values)
                return out

            logger.debug("%s: Doric %s layout, %d channels", url, layout, len(channels))
            yield _Source(layout, sorted(channels), read)
    finally:
        if opened is not None:
            opened.close()


# ---------------------------------------------------------------------------------------------
# Doric CSV export
# ---------------------------------------------------------------------------------------------


def _csv_header(head: bytes, url: str) -> tuple[int, list[str]]:
    """Which of the first two lines names the columns (0 or 1), and the column names."""
    found = not_utf8_text(head)
    if found is not None:
        raise InputError(
            f"{url!r} is {found.what}; expected a .doric file (HDF5) or a Doric CSV export"
        )
    text = head.decode("utf-8", errors="replace").removeprefix("\ufeff")
    lines = [line for line in text.splitlines() if line.strip()][:2]
    rows = list(csv.reader(lines))
    for index, row in enumerate(rows):
        if _CSV_TIME in (cell.strip() for cell in row):
            return index, [cell.strip() for cell in row]
    first = lines[0] if lines else ""
    shown = first if len(first) <= 80 else first[:77] + "..."
    raise InputError(
        f"{url!r} is not a Doric file: it is {describe_bytes(head)} and neither of its first "
        f"two lines has a {_CSV_TIME!r} column (first line: {shown!r}); expected a .doric "
        "file (HDF5) or a Doric CSV export"
    )


def _csv_source(fs: Any, path: str, url: str, head: bytes) -> _Source:
    names_row, names = _csv_header(head, url)
    # unique names for the empty columns trailing commas leave
    columns = [name or f"\0empty{i}" for i, name in enumerate(names)]
    channels = {name.removesuffix("/Values"): name for name in columns if name and name[0] != "\0"}
    channels.pop(_CSV_TIME, None)

    def read(keys: list[str]) -> dict[str, Stream]:
        wanted = [_CSV_TIME, *(channels[key] for key in keys)]
        try:
            with open_input(fs, path, url, FORMAT) as opened:
                table = pacsv.read_csv(
                    opened,
                    read_options=pacsv.ReadOptions(
                        use_threads=False, skip_rows=2, column_names=columns
                    ),
                    convert_options=pacsv.ConvertOptions(
                        include_columns=wanted,
                        column_types={name: pa.float64() for name in wanted},
                    ),
                )
        except pa.ArrowInvalid as e:
            raise InputError(
                f"{url!r} cannot be read as a Doric CSV export: {' '.join(str(e).split())}"
            ) from e
        time = table.column(_CSV_TIME).to_numpy(zero_copy_only=False).astype(np.float64)
        return {
            key: (
                time,
                table.column(channels[key]).to_numpy(zero_copy_only=False).astype(np.float64),
            )
            for key in keys
        }

    layout = "CSV (names first)" if names_row == 0 else "CSV"
    logger.debug("%s: Doric %s export, %d channels", url, layout, len(channels))
    return _Source(layout, list(channels), read)


@contextlib.contextmanager
def _source(fs: Any, path: str, url: str) -> Iterator[_Source]:
    head = read_head(fs, path, url, FORMAT)
    if not head:
        raise InputError(f"{url!r} is empty; expected a .doric file or a Doric CSV export")
    if head.startswith(_HDF5):
        with _hdf5_source(fs, path, url) as source:
            yield source
    else:
        yield _csv_source(fs, path, url, head)


# ---------------------------------------------------------------------------------------------
# The loader
# ---------------------------------------------------------------------------------------------


def load_doric(
    url: str,
    arguments: DoricArguments | Mapping[str, Any],
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """Load one Doric recording (``.doric`` file or CSV export) into a Recording Dataset.

    Parameters
    ----------
    url : str
        The file: a local path or any fsspec URL.
    arguments : DoricArguments or mapping
        The loader's arguments (a mapping is validated; it may carry ``format``):
        ``signal_channel``, ``isosbestic_channel``, ``event_channels``, ``event_threshold``.
    storage_options : mapping, optional
        Passed to fsspec.

    Returns
    -------
    xarray.Dataset
        ``signal(time)``, ``isosbestic(time)`` (absent when ``isosbestic_channel`` is null),
        float64, on the signal's times (seconds, as the file has them); ``event_time(event)``
        (the rising edges of each event channel) sorted, with ``event_name(event)``; attrs
        ``sampling_rate``, ``event_names``, ``source``, ``n_samples``, ``acquisition`` (the
        layout and the channel read for each role) and the sidecar's metadata.

    Raises
    ------
    neurobatch.errors.InputNotFoundError
        If the file does not exist.
    neurobatch.errors.InputError
        A file that is neither HDF5 with Doric's groups nor a Doric CSV export, a channel
        that is missing (with the channels the file has and the closest name) or ambiguous,
        a channel with no finite value, a NaN inside the recording, channels that do not
        overlap in time, time not strictly increasing or with gaps beyond
        ``max_sampling_deviation``, or a bad sidecar.
    neurobatch.errors.ConfigError
        If ``arguments`` is an invalid mapping.

    Warns
    -----
    neurobatch.errors.NonUniformSamplingWarning
        When sampling intervals deviate from their median by more than
        ``sampling_tolerance``.

    See Also
    --------
    neurobatch.io.loaders.load_recording : any format by name.

    Examples
    --------
    >>> import fsspec
    >>> fsspec.filesystem("memory").pipe(
    ...     "/doric-doc/session.csv",
    ...     b"---,Analog In. | Ch.1,Analog In. | Ch.1,Digital I/O | Ch.1,\\n"
    ...     b"Time(s),AIn-1 - Dem (AOut-1),AIn-1 - Dem (AOut-2),DI/O-1,\\n"
    ...     b"0.0,1.0,0.5,0,\\n0.1,1.1,0.5,1,\\n0.2,1.2,0.6,1,\\n0.3,1.1,0.5,0,\\n")
    >>> ds = load_doric("memory://doric-doc/session.csv",
    ...                 {"signal_channel": "AIn-1 - Dem (AOut-1)",
    ...                  "isosbestic_channel": "AIn-1 - Dem (AOut-2)",
    ...                  "event_channels": {"ttl": "DI/O-1"}})
    >>> ds.signal.values.tolist(), ds.event_time.values.tolist()
    ([1.0, 1.1, 1.2, 1.1], [0.1])
    >>> load_doric("memory://doric-doc/session.csv",
    ...            {"signal_channel": "AIn-1 - Dem (AOut-3)", "isosbestic_channel": None})
    Traceback (most recent call last):
    ...
    neurobatch.errors.InputError: 'memory://doric-doc/session.csv' has no channel 'AIn-1 - Dem (AOut-3)' (signal_channel; did you mean 'AIn-1 - Dem (AOut-2)'?); its channels: 'AIn-1 - Dem (AOut-1)', 'AIn-1 - Dem (AOut-2)', 'DI/O-1'
    """
    args = coerce_arguments(arguments, DoricArguments, fmt=FORMAT)
    so = dict(storage_options or {})
    fs, path = fsspec.core.url_to_fs(url, **so)
    path = str(path)
    with _source(fs, path, url) as source:
        metadata, sidecar_url = load_annotation(
            url, args, target="file", key=args.annotation_key, storage_options=so
        )
        roles = {"signal": ("signal_channel", args.signal_channel)}
        if args.isosbestic_channel is not None:
            roles["isosbestic"] = ("isosbestic_channel", args.isosbestic_channel)
        roles.update(
            {
                f"event {event}": ("event_channels", name)
                for event, name in args.event_channels.items()
            }
        )
        chosen = {
            role: pick_channel(name, source.channels, role=argument, source=url)
            for role, (argument, name) in roles.items()
        }
        streams = source.read(sorted(set(chosen.values())))

    signal_key = chosen["signal"]
    time, signal = streams[signal_key]
    iso_key = chosen.get("isosbestic")
    isosbestic = None
    if iso_key is not None:
        iso_time, isosbestic = streams[iso_key]
        if iso_time.shape == time.shape and np.array_equal(iso_time, time):
            keep = trim_nonfinite(
                signal, isosbestic, source=url, what=f"channels {signal_key!r} and {iso_key!r}"
            )
            time, signal, isosbestic = time[keep], signal[keep], isosbestic[keep]
        else:
            keep = trim_nonfinite(signal, source=url, what=f"channel {signal_key!r}")
            time, signal = time[keep], signal[keep]
            keep = trim_nonfinite(isosbestic, source=url, what=f"channel {iso_key!r}")
            iso_time, isosbestic = iso_time[keep], isosbestic[keep]
            logger.debug("%s: interpolating %r onto the times of %r", url, iso_key, signal_key)
            keep, isosbestic = onto_time(
                time, iso_time, isosbestic, source=url, what=f"channel {iso_key!r}"
            )
            time, signal = time[keep], signal[keep]
    else:
        keep = trim_nonfinite(signal, source=url, what=f"channel {signal_key!r}")
        time, signal = time[keep], signal[keep]

    events = {}
    for event in args.event_channels:
        event_time, values = streams[chosen[f"event {event}"]]
        events[event] = rising_edges(values, event_time, threshold=args.event_threshold)
    acquisition = {
        "format": FORMAT,
        "layout": source.layout,
        "signal": signal_key,
        "isosbestic": iso_key,
        "events": {event: chosen[f"event {event}"] for event in args.event_channels},
    }
    return build_recording(
        source=url,
        time=time,
        signal=signal,
        isosbestic=isosbestic,
        events=events,
        arguments=args,
        names={
            "time": f"the time of channel {signal_key!r}",
            "signal": f"channel {signal_key!r}",
            "isosbestic": f"channel {iso_key!r}",
        },
        attrs={"acquisition": acquisition},
        sidecar=metadata,
        sidecar_source=sidecar_url,
    )
