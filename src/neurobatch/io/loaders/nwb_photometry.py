"""NWB fiber photometry (format ``nwb-photometry``): ndx-fiber-photometry series, through pynwb.

A file written with ndx-fiber-photometry holds its recordings as
``FiberPhotometryResponseSeries``: one per excitation wavelength (``raw_465``, ``raw_405``),
or one 2-D series whose columns are rows of the ``FiberPhotometryTable`` (its
``fiber_photometry_table_region``), each row a fibre at one excitation wavelength with its
location and indicator. A **channel** is one series, or one column of a 2-D series;
``signal`` and ``isosbestic`` each pick one (see
:class:`~neurobatch.config.acquisition_arguments.NWBPhotometryArguments`): by the series'
name or path, or by the excitation wavelength of its table row, the nearest within
``wavelength_tolerance_nm`` (series in ``acquisition`` before processed ones), and ``fiber``
(the location or the optical fibre of its table row) when several fibres fit.

Events come from the file's event objects (``events``): the ``start_time`` of a
``TimeIntervals`` table's rows (``trials``, ``epochs``, ...), the ``timestamp`` of an
``EventsTable``'s rows (NWB's own, or ndx-events'), or the timestamps of a series (an
``AnnotationSeries``, ndx-events' ``Events``); ``column`` and ``equals`` keep the rows whose
label is one value (a ragged column such as ``tags``: the rows whose list holds it).

pynwb reads the file's structure (from a local path, or from any fsspec URL through
``h5py.File`` on the fsspec file, so ``s3://`` streams) and only the chosen channels' data
are read, in slices of the HDF5 dataset's own chunks (a column of a 2-D series without the
others). Values are in the series' unit (``data x conversion + offset``). The Recording is
the photometry formats' (:func:`~neurobatch.io.loaders._photometry.build_recording`), in
memory like theirs; its attrs hold what the file says of the recording: the fibre's
``location``, ``indicator``, ``excitation_wavelength_nm``, ``emission_wavelength_nm`` (and
the isosbestic channel's ``isosbestic_wavelength_nm``), ``fiber`` (the optical fibre's
name) and the session's ``subject``,
``species``, ``sex``, ``age``, ``session_start_time``, ``nwb_identifier`` and
``session_description``, which a sidecar's keys of the same name override.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import xarray as xr
from numpy.typing import NDArray

from neurobatch.config.acquisition_arguments import NWBEventSource, NWBPhotometryArguments
from neurobatch.errors import InputError, InputNotFoundError
from neurobatch.io.loaders._acquisition import listing, onto_time, trim_nonfinite
from neurobatch.io.loaders._common import closest, coerce_arguments
from neurobatch.io.loaders._photometry import build_recording
from neurobatch.io.loaders.nwb import (
    _candidates,
    _import_pynwb,
    _read_nwb,
    _select,
    _session_attrs,
)
from neurobatch.io.loaders.sidecar import load_annotation

logger = logging.getLogger(__name__)

__all__ = ["FORMAT", "SERIES_TYPE", "check_nwb_photometry", "load_nwb_photometry"]

FORMAT = "nwb-photometry"

#: The neurodata type of a fiber photometry recording (ndx-fiber-photometry).
SERIES_TYPE = "FiberPhotometryResponseSeries"

#: Bytes of one read of a channel (rounded to the HDF5 dataset's chunks, at least one).
_READ_BYTES = 8 << 20

_ROW_FIELDS = {
    "location": "location",
    "excitation_wavelength_in_nm": "excitation_wavelength_nm",
    "emission_wavelength_in_nm": "emission_wavelength_nm",
}


# ---------------------------------------------------------------------------------------------
# What a file holds
# ---------------------------------------------------------------------------------------------


def holdings(nwbfile: Any) -> str:
    """What a file holds in ``acquisition`` and ``processing``: each object's path and type.

    Parameters
    ----------
    nwbfile : pynwb.NWBFile
        The file, as pynwb reads it.

    Returns
    -------
    str
        ``"acquisition/raw (ElectricalSeries), processing/ecephys/LFP (LFP)"``, the first
        20 and how many more, or ``"nothing in acquisition or processing"``.

    Examples
    --------
    >>> import datetime as dt
    >>> from pynwb import NWBFile, TimeSeries
    >>> f = NWBFile(session_description="d", identifier="i",
    ...             session_start_time=dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc))
    >>> holdings(f)
    'nothing in acquisition or processing'
    >>> f.add_acquisition(TimeSeries(name="wheel", data=[1.0, 2.0], unit="m", rate=10.0))
    >>> holdings(f)
    'acquisition/wheel (TimeSeries)'
    """
    held = [
        f"acquisition/{name} ({obj.neurodata_type})" for name, obj in nwbfile.acquisition.items()
    ]
    for module_name, module in nwbfile.processing.items():
        held += [
            f"processing/{module_name}/{name} ({obj.neurodata_type})"
            for name, obj in module.data_interfaces.items()
        ]
    if not held:
        return "nothing in acquisition or processing"
    return listing(held).replace("'", "")


def fiber_series(nwbfile: Any) -> list[tuple[str, Any]]:
    """Every ``FiberPhotometryResponseSeries`` of a file, with its path, sorted by path.

    Parameters
    ----------
    nwbfile : pynwb.NWBFile
        The file, as pynwb reads it.

    Returns
    -------
    list of (str, object)
        ``(path, series)`` pairs; recognised by neurodata type, so that a file read with
        its cached ndx-fiber-photometry specification is read alike.
    """
    pynwb = _import_pynwb()
    return [
        (where, obj)
        for where, obj in _candidates(nwbfile, pynwb.TimeSeries)
        if obj.neurodata_type == SERIES_TYPE
    ]


# ---------------------------------------------------------------------------------------------
# Channels
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Channel:
    """One channel: a series, or one column of a 2-D series, with its table row's facts."""

    where: str
    series: Any
    column: int | None
    row: int | None
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.where if self.column is None else f"{self.where}[:, {self.column}]"

    @property
    def wavelength(self) -> float | None:
        value = self.facts.get("excitation_wavelength_nm")
        return None if value is None else float(value)

    def describe(self) -> str:
        facts = [f"{self.wavelength:g} nm"] if self.wavelength is not None else []
        if self.row is not None:
            facts.append(f"row {self.row}")
        if "location" in self.facts:
            facts.append(str(self.facts["location"]))
        return f"{self.name!r}" + (f" ({', '.join(facts)})" if facts else "")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _row_facts(table: Any, row: int) -> dict[str, Any]:
    """What a FiberPhotometryTable row says: location, wavelengths, the optical fibre's name,
    the indicator's label."""
    facts: dict[str, Any] = {}
    for column, key in _ROW_FIELDS.items():
        if column in table.colnames:
            value = table[column].data[row]
            facts[key] = _text(value) if column == "location" else float(value)
    if "optical_fiber" in table.colnames:
        facts["fiber"] = _text(table["optical_fiber"].data[row].name)
    if "indicator" in table.colnames:
        indicator = table["indicator"].data[row]
        label = getattr(indicator, "label", None)
        facts["indicator"] = _text(label if label is not None else indicator.name)
    return facts


def _channels_of(where: str, series: Any, url: str) -> list[_Channel]:
    data = series.data
    if data.ndim not in (1, 2):
        raise InputError(
            f"NWB file {url!r}: {SERIES_TYPE} {where!r} has {data.ndim}-D data; expected "
            "(time,) or (time, fiber)"
        )
    region = getattr(series, "fiber_photometry_table_region", None)
    rows = [] if region is None else [int(r) for r in np.asarray(region.data[:]).ravel()]
    columns: list[int | None] = [None] if data.ndim == 1 else list(range(int(data.shape[1])))
    if rows and len(rows) != len(columns):
        logger.warning(
            "%s: %s %r has %d column(s) but its table region %d row(s); its channels are "
            "named only by the series",
            url,
            SERIES_TYPE,
            where,
            len(columns),
            len(rows),
        )
        rows = []
    if region is None or not rows:
        return [_Channel(where, series, column, None) for column in columns]
    return [
        _Channel(where, series, column, row, _row_facts(region.table, row))
        for column, row in zip(columns, rows, strict=True)
    ]


def _fits_fiber(channel: _Channel, fiber: str) -> bool:
    return fiber in (channel.facts.get("location"), channel.facts.get("fiber"))


def _choose(
    channels: list[_Channel],
    wanted: float | str,
    *,
    role: str,
    args: NWBPhotometryArguments,
    url: str,
) -> _Channel:
    """The one channel ``wanted`` (a series or a wavelength) and ``fiber`` pick."""
    every = ", ".join(c.describe() for c in channels)
    if isinstance(wanted, str):
        target = wanted.strip("/")
        fits = [c for c in channels if target in (c.where, c.series.name)]
        if not fits:
            names = sorted({c.where for c in channels} | {c.series.name for c in channels})
            guess = closest(target, names)
            hint = f"; did you mean {guess!r}?" if guess else ""
            raise InputError(
                f"NWB file {url!r} has no {SERIES_TYPE} {wanted!r} (loader.{role}{hint}); its "
                f"channels: {every}"
            )
        asked = f"series {wanted!r}"
    else:
        tolerance = args.wavelength_tolerance_nm
        fits = [
            c
            for c in channels
            if c.wavelength is not None and abs(c.wavelength - wanted) <= tolerance
        ]
        if not fits:
            raise InputError(
                f"NWB file {url!r} has no channel excited within {tolerance:g} nm of "
                f"{wanted:g} nm (loader.{role}); its channels: {every}; expected a wavelength "
                "of its FiberPhotometryTable or a series name"
            )
        raw = [c for c in fits if c.where.startswith("acquisition/")]
        fits = raw or fits
        assert wanted is not None
        nearest = min(abs(c.wavelength - wanted) for c in fits if c.wavelength is not None)
        fits = [
            c for c in fits if c.wavelength is not None and abs(c.wavelength - wanted) == nearest
        ]
        asked = f"{wanted:g} nm"
    if len(fits) > 1 and args.fiber is not None:
        fiber = args.fiber
        chosen = [c for c in fits if _fits_fiber(c, fiber)]
        if not chosen:
            raise InputError(
                f"NWB file {url!r}: no channel of {asked} (loader.{role}) is fibre {fiber!r} "
                f"(loader.fiber); those of {asked}: {', '.join(c.describe() for c in fits)}"
            )
        fits = chosen
    if len(fits) > 1:
        raise InputError(
            f"NWB file {url!r} has {len(fits)} channels of {asked} (loader.{role}): "
            f"{', '.join(c.describe() for c in fits)}; pick one with loader.fiber (its "
            "location or optical fibre) or by series name"
        )
    return fits[0]


# ---------------------------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------------------------


def _matches(values: Sequence[Any], equals: str | float | bool) -> NDArray[np.bool_]:
    """Which values equal ``equals`` (text compared as text; a list holds it when it is in it)."""

    def same(value: Any) -> bool:
        if isinstance(value, list | tuple | np.ndarray):
            return any(same(v) for v in value)
        if isinstance(equals, str):
            return _text(value) == equals
        if isinstance(value, str | bytes):
            return False
        return bool(value == equals)

    return np.fromiter((same(v) for v in values), dtype=np.bool_, count=len(values))


def _series_times(series: Any, n: int) -> NDArray[np.float64]:
    if series.timestamps is not None:
        return np.asarray(series.timestamps[:], dtype=np.float64)
    rate = float(series.rate)
    return float(series.starting_time or 0.0) + np.arange(n, dtype=np.float64) / rate


def _event_objects(nwbfile: Any) -> list[tuple[str, Any]]:
    from hdmf.common import DynamicTable  # type: ignore[import-untyped, unused-ignore]

    pynwb = _import_pynwb()
    found = _candidates(nwbfile, pynwb.TimeSeries) + _candidates(nwbfile, DynamicTable)
    return [(where, obj) for where, obj in found if obj.neurodata_type != SERIES_TYPE]


def _find_event_object(
    objects: list[tuple[str, Any]], name: str, source: NWBEventSource, url: str
) -> tuple[str, Any]:
    selected = _select(
        objects,
        source.source,
        what="TimeSeries or table",
        argument=f"events.{name}",
        prefer="",
        url=url,
    )
    assert selected is not None  # a name is always given
    return selected


def _table_times(where: str, table: Any, name: str, source: NWBEventSource, url: str) -> Any:
    columns = list(table.colnames)
    default = "timestamp" if "timestamp" in columns else "start_time"
    time_column = source.time_column or default
    for role, column in (("time_column", time_column), ("column", source.column)):
        if column is not None and column not in columns:
            guess = closest(column, columns)
            hint = f"; did you mean {guess!r}?" if guess else ""
            raise InputError(
                f"NWB file {url!r}: table {where!r} has no column {column!r} "
                f"(loader.events.{name}.{role}{hint}); its columns: {listing(columns)}"
            )
    times = np.asarray(table[time_column].data[:], dtype=np.float64)
    if source.column is None or source.equals is None:
        return times
    labels = table[source.column][:]
    return times[_matches(list(labels), source.equals)]


def _event_times(where: str, obj: Any, name: str, source: NWBEventSource, url: str) -> Any:
    if hasattr(obj, "colnames"):
        return _table_times(where, obj, name, source, url)
    if source.column is not None or source.time_column is not None:
        raise InputError(
            f"NWB file {url!r}: {obj.neurodata_type} {where!r} is a series, not a table "
            f"(loader.events.{name} names a column); use equals alone to select its samples"
        )
    n = len(obj.data)
    times = _series_times(obj, n)
    if source.equals is None:
        return times
    return times[_matches(list(obj.data[:]), source.equals)]


# ---------------------------------------------------------------------------------------------
# The plan: what a file's channels and events are, before any data is read
# ---------------------------------------------------------------------------------------------


@dataclass
class _Plan:
    signal: _Channel
    isosbestic: _Channel | None
    events: dict[str, tuple[str, Any, NWBEventSource]]

    def summary(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "signal": self.signal.name,
            "isosbestic": None if self.isosbestic is None else self.isosbestic.name,
            "unit": str(self.signal.series.unit),
            "events": {name: where for name, (where, _, _) in self.events.items()},
        }


def _plan(nwbfile: Any, args: NWBPhotometryArguments, url: str) -> _Plan:
    series = fiber_series(nwbfile)
    if not series:
        raise InputError(
            f"NWB file {url!r} holds no {SERIES_TYPE} (format {FORMAT!r} reads fiber "
            f"photometry written with ndx-fiber-photometry); it holds {holdings(nwbfile)}"
        )
    channels = [c for where, obj in series for c in _channels_of(where, obj, url)]
    signal = _choose(channels, args.signal, role="signal", args=args, url=url)
    isosbestic = None
    if args.isosbestic is not None:
        isosbestic = _choose(channels, args.isosbestic, role="isosbestic", args=args, url=url)
        if isosbestic.name == signal.name:
            raise InputError(
                f"NWB file {url!r}: loader.signal and loader.isosbestic both pick channel "
                f"{signal.describe()}; each needs its own"
            )
    objects = _event_objects(nwbfile) if args.events else []
    events = {}
    for name, source in args.events.items():
        where, obj = _find_event_object(objects, name, source, url)
        events[name] = (where, obj, source)
    return _Plan(signal, isosbestic, events)


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def _read_channel(channel: _Channel, url: str) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """A channel's sample times and values (in the series' unit), read slice by slice."""
    data = channel.series.data
    dtype = np.dtype(data.dtype)
    if dtype.kind not in "biuf":
        raise InputError(
            f"NWB file {url!r}: {SERIES_TYPE} {channel.where!r} holds {dtype} values; expected "
            "numbers"
        )
    n = int(data.shape[0])
    row_bytes = dtype.itemsize * (1 if data.ndim == 1 else int(data.shape[1]))
    chunk = int(data.chunks[0]) if getattr(data, "chunks", None) else 1
    step = max(chunk, _READ_BYTES // max(row_bytes, 1) // chunk * chunk)
    values = np.empty(n, dtype=np.float64)
    for start in range(0, n, step):
        stop = min(start + step, n)
        block = data[start:stop] if channel.column is None else data[start:stop, channel.column]
        values[start:stop] = block
    conversion = float(channel.series.conversion)
    offset = float(getattr(channel.series, "offset", 0.0) or 0.0)
    if conversion != 1.0:
        values *= conversion
    if offset:
        values += offset
    time = _series_times(channel.series, n)
    if time.shape != (n,):
        raise InputError(
            f"NWB file {url!r}: {SERIES_TYPE} {channel.where!r} has {time.size} timestamps "
            f"for {n} samples"
        )
    logger.debug("%s: read %s (%d samples, %d per read)", url, channel.name, n, step)
    return time, values


def _open(url: str, storage_options: Mapping[str, Any]) -> tuple[Any, str]:
    fs, path = fsspec.core.url_to_fs(url, **storage_options)
    path = str(path)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        raise InputNotFoundError(f"input {url!r} does not exist") from None
    if info.get("type") == "directory":
        raise InputError(f"input {url!r} is a folder; format {FORMAT!r} reads files")
    return fs, path


def check_nwb_photometry(
    url: str,
    arguments: NWBPhotometryArguments | Mapping[str, Any],
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Check that an NWB file has what the arguments ask for, reading no data.

    The file's structure is read (as :func:`load_nwb_photometry` reads it) and the signal,
    isosbestic and event objects are found; nothing else is read. ``neurobatch validate``
    calls it on every input, so that a file without fiber photometry, or without the
    wavelength or event table asked for, is named before a run.

    Parameters
    ----------
    url : str
        The ``.nwb`` file, a local path or any fsspec URL.
    arguments : NWBPhotometryArguments or mapping
        The loader's arguments (a mapping is validated; it may carry ``format``).
    storage_options : mapping, optional
        Passed to fsspec.

    Returns
    -------
    dict
        What would be read: ``format``, ``signal`` and ``isosbestic`` (the channels' paths,
        ``path[:, column]`` for a column of a 2-D series), the series' ``unit`` and
        ``events`` (event name -> object path).

    Raises
    ------
    neurobatch.errors.InputNotFoundError
        If the file does not exist.
    neurobatch.errors.InputError
        A file that is not NWB; one without ``FiberPhotometryResponseSeries`` (naming what it
        holds in acquisition and processing, with their neurodata types); a series or
        wavelength that is not there, or several channels that fit (naming the channels); an
        event object or column that is not there (with the closest name).

    Examples
    --------
    >>> import fsspec
    >>> fsspec.filesystem("memory").pipe("/nwbp-doc/not.nwb", b"plain text")
    >>> check_nwb_photometry("memory://nwbp-doc/not.nwb", {"signal": 465, "isosbestic": 405})
    Traceback (most recent call last):
    ...
    neurobatch.errors.InputError: cannot read NWB file 'memory://nwbp-doc/not.nwb': ...
    """
    args = coerce_arguments(arguments, NWBPhotometryArguments, fmt=FORMAT)
    fs, path = _open(url, dict(storage_options or {}))
    with _read_nwb(url, fs, path) as nwbfile:
        return _plan(nwbfile, args, url).summary()


def load_nwb_photometry(
    url: str,
    arguments: NWBPhotometryArguments | Mapping[str, Any],
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """Load the fiber photometry of an NWB file into a Recording Dataset.

    Parameters
    ----------
    url : str
        The ``.nwb`` (HDF5) file: a local path or any fsspec URL (``s3://`` streams).
    arguments : NWBPhotometryArguments or mapping
        The loader's arguments (a mapping is validated; it may carry ``format``):
        ``signal``, ``isosbestic``, ``wavelength_tolerance_nm``, ``fiber``, ``events``.
    storage_options : mapping, optional
        Passed to fsspec.

    Returns
    -------
    xarray.Dataset
        ``signal(time)``, ``isosbestic(time)`` (absent when ``isosbestic`` is null), float64
        in the series' unit, on the signal's times (the isosbestic channel interpolated onto
        them when its times differ); ``event_time(event)`` sorted, with
        ``event_name(event)``; attrs ``sampling_rate``, ``event_names``, ``source``,
        ``n_samples``, ``acquisition`` (what was read, see :func:`check_nwb_photometry`),
        the fibre's and the session's metadata (see the module notes) and the sidecar's.

    Raises
    ------
    neurobatch.errors.InputNotFoundError
        If the file does not exist.
    neurobatch.errors.InputError
        What :func:`check_nwb_photometry` raises; non-numeric data, timestamps that do not
        match the data, NaN inside the recording, time not strictly increasing or with gaps
        beyond ``max_sampling_deviation``, NaN event times, or a bad sidecar.
    neurobatch.errors.ConfigError
        If ``arguments`` is an invalid mapping.
    ImportError
        If ``pynwb`` is not installed.

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
    >>> load_nwb_photometry("memory://nwbp-doc/missing.nwb", {"signal": 465,
    ...                                                        "isosbestic": None})
    Traceback (most recent call last):
    ...
    neurobatch.errors.InputNotFoundError: input 'memory://nwbp-doc/missing.nwb' does not exist
    """
    args = coerce_arguments(arguments, NWBPhotometryArguments, fmt=FORMAT)
    so = dict(storage_options or {})
    fs, path = _open(url, so)
    with _read_nwb(url, fs, path) as nwbfile:
        plan = _plan(nwbfile, args, url)
        time, signal = _read_channel(plan.signal, url)
        iso = None if plan.isosbestic is None else _read_channel(plan.isosbestic, url)
        events = {}
        for name, (where, obj, source) in plan.events.items():
            times = np.asarray(_event_times(where, obj, name, source, url), dtype=np.float64)
            if not np.isfinite(times).all():
                raise InputError(f"NWB file {url!r}: events {where!r} hold NaN or inf times")
            events[name] = times
        metadata = _session_attrs(nwbfile)
    metadata.update(plan.signal.facts)
    if plan.isosbestic is not None and plan.isosbestic.wavelength is not None:
        metadata["isosbestic_wavelength_nm"] = plan.isosbestic.wavelength
    names = {
        "time": f"the times of {plan.signal.name!r}",
        "signal": f"channel {plan.signal.name!r}",
    }
    isosbestic = None
    if iso is not None:
        assert plan.isosbestic is not None
        names["isosbestic"] = f"channel {plan.isosbestic.name!r}"
        iso_time, isosbestic = iso
        if iso_time.shape == time.shape and np.array_equal(iso_time, time):
            keep = trim_nonfinite(
                signal, isosbestic, source=url, what=f"{names['signal']} and {names['isosbestic']}"
            )
            time, signal, isosbestic = time[keep], signal[keep], isosbestic[keep]
        else:
            keep = trim_nonfinite(signal, source=url, what=names["signal"])
            time, signal = time[keep], signal[keep]
            keep = trim_nonfinite(isosbestic, source=url, what=names["isosbestic"])
            logger.debug("%s: interpolating %s onto the signal's times", url, names["isosbestic"])
            keep, isosbestic = onto_time(
                time, iso_time[keep], isosbestic[keep], source=url, what=names["isosbestic"]
            )
            time, signal = time[keep], signal[keep]
    else:
        keep = trim_nonfinite(signal, source=url, what=names["signal"])
        time, signal = time[keep], signal[keep]
    sidecar, sidecar_url = load_annotation(
        url, args, target="file", key=args.annotation_key, storage_options=so
    )
    overridden = sorted(set(sidecar) & set(metadata))
    if overridden:
        logger.debug("%s: the sidecar overrides the file's %s", url, ", ".join(overridden))
    return build_recording(
        source=url,
        time=time,
        signal=signal,
        isosbestic=isosbestic,
        events=events,
        arguments=args,
        names=names,
        attrs={"acquisition": plan.summary()},
        sidecar=metadata | sidecar,
        sidecar_source=sidecar_url,
    )
