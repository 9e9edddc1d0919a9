"""NWB files (format ``nwb``, target ``file``) through ``pynwb``, read lazily from HDF5.

One NWB file can give any of the parts below, each one only when it is there or asked for
(see :class:`NWBArguments`), all in one Dataset:

- an ``ElectricalSeries`` -> ``traces(time, channel)`` in the stored type, ``time`` from
  ``starting_time`` and ``rate`` (``starting_time + arange(n) / rate``) or from
  ``timestamps``; ``channel`` the electrode ids; ``gain_uv`` = ``conversion`` x 1e6 (x
  ``channel_conversion`` per channel, as coordinate ``channel_gain_uv``);
- ``TimeSeries`` (their timestamps) and event tables (``EventsTable``'s ``timestamp``, or a
  ``TimeIntervals``'s ``start_time``) named in ``events`` -> ``event_time(event)`` with
  coordinate ``event_name(event)`` (each event named after the object it comes from);
- an ``ImageSeries`` -> ``frames(frame, y, x)`` with ``frame_time(frame)``; NWB stores frames
  as ``(frame, x, y)``, transposed here (``image_dims: yx`` for files written the other way);
- the ``Units`` table -> ``spike_time(spike)`` with coordinate ``unit(spike)`` (the unit ids)
  and ``unit_ids(unit)``, every unit including those without spikes.

``pynwb`` (the ``nwb`` extra) reads the file's structure once, on load, and is closed again.
The large arrays (traces, frames, spike times) become dask arrays over the HDF5 datasets,
chunked along time from a memory budget and aligned to the datasets' own chunks; they read
through a :class:`xarray.backends.CachingFileManager`, which opens the file on first use in
each process (a distributed worker opens its own), keeps it open while the Dataset is used
and closes it when the Dataset is closed (``ds.close()``, or ``with`` the Dataset).
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import dask.array as da
import fsspec
import numpy as np
import xarray as xr
from fsspec.implementations.local import LocalFileSystem
from numpy.typing import NDArray
from xarray.backends import CachingFileManager

from neurobatch.config.lazy_arguments import NWBArguments
from neurobatch.errors import InputError, InputNotFoundError
from neurobatch.io.loaders._common import check_time, closest, coerce_arguments
from neurobatch.io.loaders._lazy import (
    DEFAULT_CHUNK_MEMORY,
    lazy,
    merge_sidecar,
    time_chunks,
)

logger = logging.getLogger(__name__)

__all__ = ["FORMAT", "load_nwb"]

FORMAT = "nwb"

#: What hdmf warns when a file's cached extension redefines a type its schema now has.
_SPEC_REDEFINED = "defines a different specification for"


def _import_pynwb() -> Any:
    try:
        import pynwb  # type: ignore[import-untyped, import-not-found, unused-ignore]
        import pynwb.ecephys  # type: ignore[import-untyped, import-not-found, unused-ignore]
        import pynwb.image  # type: ignore[import-untyped, import-not-found, unused-ignore]
    except ImportError as e:
        raise ImportError(
            "format 'nwb' needs the 'pynwb' package: pip install 'neurobatch[nwb]'"
        ) from e
    return pynwb


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


# ---------------------------------------------------------------------------------------------
# HDF5 access: a picklable, cached file handle and lazily sliced datasets
# ---------------------------------------------------------------------------------------------


class _HDF5File:
    """An HDF5 file opened read-only from a local path or any fsspec URL; ``close()`` both."""

    def __init__(self, url: str, storage_options: str, mode: str = "r") -> None:
        import h5py

        if mode != "r":
            raise ValueError(f"NWB files are opened read-only, not with mode {mode!r}")
        fs, path = fsspec.core.url_to_fs(url, **json.loads(storage_options))
        self._raw: Any = None
        if isinstance(fs, LocalFileSystem):
            self.file = h5py.File(path, "r")
        else:
            self._raw = fs.open(path, "rb")
            self.file = h5py.File(self._raw, "r")

    def close(self) -> None:
        self.file.close()
        if self._raw is not None:
            self._raw.close()


@dataclass(frozen=True)
class _HDF5Array:
    """One HDF5 dataset, read by slices through a shared file manager."""

    manager: CachingFileManager[Any]
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    token: tuple[Any, ...]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __dask_tokenize__(self) -> Any:
        return ("neurobatch.nwb", self.token, self.name, self.shape, self.dtype.str)

    def __getitem__(self, key: Any) -> NDArray[Any]:
        with self.manager.acquire_context() as handle:
            return np.asarray(handle.file[self.name][key])


def _storage_json(storage_options: Mapping[str, Any]) -> str:
    try:
        return json.dumps(dict(storage_options), sort_keys=True)
    except TypeError as e:
        raise TypeError(
            f"format {FORMAT!r} needs JSON-serialisable storage_options (they travel to the "
            f"workers, which open the file themselves): {e}"
        ) from None


@contextlib.contextmanager
def _read_nwb(url: str, fs: Any, path: str) -> Iterator[Any]:
    """The file's NWBFile, read by pynwb (structure only), closed on exit."""
    pynwb = _import_pynwb()
    import h5py

    raw = None
    h5 = None
    io = None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                if isinstance(fs, LocalFileSystem):
                    io = pynwb.NWBHDF5IO(path, mode="r")
                else:
                    raw = fs.open(path, "rb")
                    h5 = h5py.File(raw, "r")
                    io = pynwb.NWBHDF5IO(file=h5, mode="r")
                nwbfile = io.read()
            except Exception as e:  # h5py and hdmf raise OSError, ValueError, KeyError, ...
                raise InputError(f"cannot read NWB file {url!r}: {_one_line(e)}") from e
        for warning in caught:
            # a cached extension that NWB has since made core (ndx-events' EventsTable):
            # hdmf takes the core definition, nothing for the user to do
            quiet = _SPEC_REDEFINED in str(warning.message)
            log = logger.debug if quiet else logger.warning
            log("pynwb, reading %s: %s", url, warning.message)
        yield nwbfile
    finally:
        if io is not None:
            io.close()
        if h5 is not None:
            h5.close()
        if raw is not None:
            raw.close()


# ---------------------------------------------------------------------------------------------
# Finding objects
# ---------------------------------------------------------------------------------------------


def _where(obj: Any) -> str:
    """The object's path in the file, from one of its datasets (its name otherwise)."""
    for attribute in ("data", "timestamps"):
        dataset = getattr(obj, attribute, None)
        parent = getattr(getattr(dataset, "parent", None), "name", None)
        if isinstance(parent, str):
            return parent.strip("/")
    table_id = getattr(obj, "id", None)
    parent = getattr(getattr(getattr(table_id, "data", None), "parent", None), "name", None)
    if isinstance(parent, str):
        return parent.strip("/")
    return str(obj.name)


def _candidates(nwbfile: Any, kind: type, exclude: tuple[type, ...] = ()) -> list[tuple[str, Any]]:
    found = [
        (_where(obj), obj)
        for obj in nwbfile.objects.values()
        if isinstance(obj, kind) and not isinstance(obj, exclude)
    ]
    return sorted(found, key=lambda item: item[0])


def _select(
    candidates: list[tuple[str, Any]],
    wanted: str | None,
    *,
    what: str,
    argument: str,
    prefer: str,
    url: str,
) -> tuple[str, Any] | None:
    if wanted is None:
        return None
    paths = ", ".join(repr(where) for where, _ in candidates) or "none"
    if wanted == "auto":
        if len(candidates) <= 1:
            return candidates[0] if candidates else None
        preferred = [c for c in candidates if c[0].startswith(prefer)]
        if len(preferred) == 1:
            return preferred[0]
        raise InputError(
            f"NWB file {url!r} holds {len(candidates)} {what} objects ({paths}); name one "
            f"with loader.{argument}"
        )
    target = wanted.strip("/")
    matches = [c for c in candidates if c[0] == target or c[1].name == target]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        listed = ", ".join(repr(where) for where, _ in matches)
        raise InputError(
            f"NWB file {url!r} holds {len(matches)} {what} objects named {wanted!r} ({listed}); "
            f"name one by its path with loader.{argument}"
        )
    names = [where for where, _ in candidates] + [obj.name for _, obj in candidates]
    guess = closest(target, names)
    hint = f"; did you mean {guess!r}?" if guess else ""
    raise InputError(
        f"NWB file {url!r} has no {what} {wanted!r} (loader.{argument}{hint}); its {what} "
        f"objects: {paths}"
    )


# ---------------------------------------------------------------------------------------------
# Parts
# ---------------------------------------------------------------------------------------------


@dataclass
class _Context:
    url: str
    manager: CachingFileManager[Any]
    token: tuple[Any, ...]
    chunk_memory: int
    tolerance: float

    def array(
        self, dataset: Any, *, where: str, minimum: int, name: str
    ) -> tuple[da.Array, tuple[int, ...]]:
        shape = tuple(int(n) for n in dataset.shape)
        dtype = np.dtype(dataset.dtype)
        if dtype.kind not in "biuf":
            raise InputError(
                f"NWB file {self.url!r}: {where} holds {dtype} values; expected numbers"
            )
        row = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        align = dataset.chunks[0] if dataset.chunks else None
        chunks = time_chunks(
            shape[0],
            bytes_per_row=row,
            chunk_memory=self.chunk_memory,
            minimum=minimum,
            align=align,
        )
        reader = _HDF5Array(self.manager, dataset.name, shape, dtype, self.token)
        return lazy(reader, (chunks, *shape[1:]), name=name), chunks


def _series_times(
    series: Any, n: int, *, where: str, ctx: _Context
) -> tuple[NDArray[np.float64], float, float]:
    """Sample times of a TimeSeries, its rate and its first time."""
    if series.rate is not None:
        rate = float(series.rate)
        if not rate > 0:
            raise InputError(f"NWB file {ctx.url!r}: {where} has rate {rate}; expected > 0")
        start = float(series.starting_time or 0.0)
        return np.arange(n, dtype=np.float64) / rate + start, rate, start
    if series.timestamps is None:
        raise InputError(f"NWB file {ctx.url!r}: {where} has neither rate nor timestamps")
    times = np.asarray(series.timestamps[:], dtype=np.float64)
    if times.shape != (n,):
        raise InputError(
            f"NWB file {ctx.url!r}: {where} has {times.size} timestamps for {n} samples"
        )
    check_time(
        times,
        what=f"{where} timestamps",
        source=ctx.url,
        locate=lambda i: f"sample {i}",
        tolerance=ctx.tolerance,
    )
    return times, float((n - 1) / (times[-1] - times[0])), float(times[0])


def _traces(
    where: str, series: Any, ctx: _Context
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    data = series.data
    if data.ndim not in (1, 2):
        raise InputError(
            f"NWB file {ctx.url!r}: ElectricalSeries {where!r} has {data.ndim}-D data; expected "
            "(time, channel)"
        )
    traces, _ = ctx.array(
        data, where=f"ElectricalSeries {where!r}", minimum=4096, name="nwb-traces"
    )
    if traces.ndim == 1:
        traces = traces[:, None]
    n, n_channels = (int(s) for s in traces.shape)
    time, rate, _ = _series_times(series, n, where=f"ElectricalSeries {where!r}", ctx=ctx)
    table = series.electrodes.table
    rows = np.asarray(series.electrodes.data[:], dtype=np.int64)
    if rows.size != n_channels:
        raise InputError(
            f"NWB file {ctx.url!r}: ElectricalSeries {where!r} has {n_channels} channels but "
            f"{rows.size} electrodes"
        )
    channel = np.asarray(table.id.data[:])[rows]
    gains = np.full(n_channels, float(series.conversion) * 1e6)
    if series.channel_conversion is not None:
        gains = gains * np.asarray(series.channel_conversion[:], dtype=np.float64)
    coords: dict[str, Any] = {
        "time": ("time", time),
        "channel": ("channel", channel),
        "channel_gain_uv": ("channel", gains),
    }
    if "location" in table.colnames:
        locations = np.asarray(table["location"].data[:], dtype=object)[rows]
        coords["channel_location"] = ("channel", np.asarray([str(v) for v in locations]))
    attrs: dict[str, Any] = {
        "sampling_rate": rate,
        "n_samples": n,
        "electrical_series": where,
    }
    if np.unique(gains).size == 1:
        attrs["gain_uv"] = float(gains[0])
    if series.offset:
        attrs["offset_uv"] = float(series.offset) * 1e6
    return {"traces": (("time", "channel"), traces)}, coords, attrs


def _frames(
    where: str, series: Any, ctx: _Context, image_dims: str
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    external = series.external_file
    if external is not None and len(external):
        raise InputError(
            f"NWB file {ctx.url!r}: ImageSeries {where!r} keeps its frames in external files "
            f"({', '.join(repr(str(f)) for f in external[:3])}); expected frames in the file"
        )
    data = series.data
    if data is None or data.ndim != 3:
        ndim = None if data is None else data.ndim
        raise InputError(
            f"NWB file {ctx.url!r}: ImageSeries {where!r} has {ndim}-D data; expected "
            "(frame, x, y) grayscale frames"
        )
    frames, _ = ctx.array(data, where=f"ImageSeries {where!r}", minimum=1, name="nwb-frames")
    n = int(frames.shape[0])
    frame_time, fps, onset = _series_times(series, n, where=f"ImageSeries {where!r}", ctx=ctx)
    if image_dims == "xy":
        frames = frames.transpose(0, 2, 1)  # type: ignore[no-untyped-call]
    attrs = {"fps": fps, "stimulus_onset": onset, "n_frames": n, "image_series": where}
    return (
        {"frames": (("frame", "y", "x"), frames)},
        {"frame_time": ("frame", frame_time)},
        attrs,
    )


def _unit_of(
    positions: NDArray[np.int64], ends: NDArray[np.int64], ids: NDArray[Any]
) -> NDArray[Any]:
    """The unit id of each spike, from its position in the ragged spike_times column."""
    return ids[np.searchsorted(ends, positions, side="right")]


def _spikes(units: Any, ctx: _Context) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    ids = np.asarray(units.id.data[:])
    index = getattr(units, "spike_times_index", None)
    if index is None:
        raise InputError(f"NWB file {ctx.url!r}: the Units table has no spike_times column")
    ends = np.asarray(index.data[:], dtype=np.int64)
    times = index.target.data
    n = int(times.shape[0])
    if ends.size != ids.size or (ends.size and (np.any(np.diff(ends) < 0) or ends[-1] != n)):
        raise InputError(
            f"NWB file {ctx.url!r}: the Units table's spike_times_index does not index its "
            f"{n} spike times for {ids.size} units"
        )
    spike_time, chunks = ctx.array(
        times, where="Units spike_times", minimum=4096, name="nwb-spikes"
    )
    positions = da.arange(n, chunks=(chunks,), dtype=np.int64)
    unit = positions.map_blocks(_unit_of, ends, ids, dtype=ids.dtype)
    return (
        {"spike_time": ("spike", spike_time.astype(np.float64))},  # type: ignore[no-untyped-call]
        {"unit": ("spike", unit), "unit_ids": ("unit", ids)},
        {"n_units": int(ids.size)},
    )


def _event_times(where: str, obj: Any, ctx: _Context, pynwb: Any) -> NDArray[np.float64]:
    if isinstance(obj, pynwb.TimeSeries):
        if obj.rate is None:
            # event times need not be regular: no sampling check
            return np.asarray(obj.timestamps[:], dtype=np.float64)
        n = len(obj.data)
        return _series_times(obj, n, where=f"TimeSeries {where!r}", ctx=ctx)[0]
    for column in ("timestamp", "start_time"):
        if column in obj.colnames:
            return np.asarray(obj[column].data[:], dtype=np.float64)
    raise InputError(
        f"NWB file {ctx.url!r}: table {where!r} has no 'timestamp' or 'start_time' column "
        f"(its columns: {', '.join(repr(c) for c in obj.colnames) or 'none'}); expected an "
        "EventsTable or TimeIntervals"
    )


def _events(
    nwbfile: Any, names: list[str], ctx: _Context, pynwb: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    from hdmf.common import DynamicTable  # type: ignore[import-untyped, unused-ignore]

    candidates = _candidates(nwbfile, pynwb.TimeSeries) + _candidates(nwbfile, DynamicTable)
    times: list[NDArray[np.float64]] = []
    for name in names:
        selected = _select(
            candidates, name, what="TimeSeries or table", argument="events", prefer="", url=ctx.url
        )
        if selected is None:  # only for wanted=None, never here
            continue
        where, obj = selected
        values = _event_times(where, obj, ctx, pynwb).ravel()
        if not np.isfinite(values).all():
            raise InputError(f"NWB file {ctx.url!r}: events {where!r} hold NaN or inf times")
        times.append(values)
    event_time = np.concatenate(times) if times else np.empty(0, dtype=np.float64)
    event_name = np.repeat(np.asarray(names, dtype=np.str_), [t.size for t in times])
    order = np.argsort(event_time, kind="stable")
    return (
        {"event_time": ("event", event_time[order])},
        {"event_name": ("event", event_name[order])},
    )


def _session_attrs(nwbfile: Any) -> dict[str, Any]:
    """An NWB file's identifier, session and subject, as a recording's metadata."""
    attrs: dict[str, Any] = {
        "nwb_identifier": str(nwbfile.identifier),
        "session_description": str(nwbfile.session_description),
    }
    if nwbfile.session_start_time is not None:
        attrs["session_start_time"] = nwbfile.session_start_time.isoformat()
    subject = nwbfile.subject
    if subject is not None:
        for key, attribute in (
            ("subject", "subject_id"),
            ("species", "species"),
            ("sex", "sex"),
            ("age", "age"),
        ):
            value = getattr(subject, attribute, None)
            if value is not None:
                attrs[key] = str(value)
    return attrs


def _nothing_to_read(nwbfile: Any, url: str, pynwb: Any) -> InputError:
    """The error of a file without traces, frames or spikes; fiber photometry is named."""
    photometry = [
        where
        for where, obj in _candidates(nwbfile, pynwb.TimeSeries)
        if obj.neurodata_type == "FiberPhotometryResponseSeries"
    ]
    if photometry:
        return InputError(
            f"NWB file {url!r} holds fiber photometry (FiberPhotometryResponseSeries "
            f"{', '.join(map(repr, photometry))}), which format 'nwb' does not read; expected "
            "loader.format nwb-photometry, with signal and isosbestic (a series or an "
            "excitation wavelength)"
        )
    return InputError(
        f"NWB file {url!r} has no ElectricalSeries, ImageSeries or Units table to read"
    )


def load_nwb(
    url: str,
    arguments: NWBArguments | Mapping[str, Any],
    *,
    storage_options: Mapping[str, Any] | None = None,
    chunk_memory: int = DEFAULT_CHUNK_MEMORY,
) -> xr.Dataset:
    """Load an NWB file lazily: traces, frames, spikes and events, whichever it has.

    Parameters
    ----------
    url : str
        The ``.nwb`` (HDF5) file, a local path or any fsspec URL.
    arguments : NWBArguments or mapping
        Which objects to read (a mapping is validated; it may carry ``format``).
    storage_options : mapping, optional
        Passed to fsspec; JSON-serialisable (the workers reopen the file with them).
    chunk_memory : int, default 64 MiB
        Bytes per chunk along time (traces, at least 4096 samples), frames (at least one)
        and spikes, rounded down to a multiple of the HDF5 dataset's own chunks.

    Returns
    -------
    xarray.Dataset
        Dask-backed ``traces(time, channel)``, ``frames(frame, y, x)`` and
        ``spike_time(spike)`` (with ``unit(spike)``, ``unit_ids(unit)``) when read;
        ``event_time(event)`` with ``event_name(event)``; attrs ``source``,
        ``event_names``, the session's (``nwb_identifier``, ``session_start_time``,
        ``subject``, ``sex``, ...), and per part ``sampling_rate``, ``gain_uv``,
        ``n_samples``, ``electrical_series`` / ``fps``, ``stimulus_onset``, ``n_frames``,
        ``image_series`` / ``n_units``; plus the sidecar's metadata. ``ds.close()`` closes
        the file.

    Raises
    ------
    neurobatch.errors.InputNotFoundError
        If the file does not exist.
    neurobatch.errors.InputError
        A file that is not NWB, a named object that is not there (with the closest name), an
        ambiguous ``auto`` (with the candidates), external or non-3-D frames, timestamps
        that do not increase, a file with no traces, frames or spikes to read (events alone
        are not a recording; a file of fiber photometry is named as such), or a bad sidecar.
    neurobatch.errors.ConfigError
        If ``arguments`` is an invalid mapping.
    ImportError
        If ``pynwb`` is not installed.

    Examples
    --------
    >>> import fsspec
    >>> fsspec.filesystem("memory").pipe("/nwb-doc/not.nwb", b"plain text")
    >>> load_nwb("memory://nwb-doc/not.nwb", {})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    neurobatch.errors.InputError: cannot read NWB file 'memory://nwb-doc/not.nwb': ...
    """
    args = coerce_arguments(arguments, NWBArguments, fmt=FORMAT)
    so = dict(storage_options or {})
    fs, path = fsspec.core.url_to_fs(url, **so)
    path = str(path)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        raise InputNotFoundError(f"input {url!r} does not exist") from None
    pynwb = _import_pynwb()
    token = (url, info.get("size"), info.get("mtime"), info.get("ETag") or info.get("etag"))
    manager = CachingFileManager(_HDF5File, url, _storage_json(so), mode="r")
    ctx = _Context(url, manager, token, chunk_memory, args.sampling_tolerance)
    data_vars: dict[str, Any] = {}
    coords: dict[str, Any] = {}
    attrs: dict[str, Any] = {"source": url}
    with _read_nwb(url, fs, path) as nwbfile:
        parts = []
        selected = _select(
            _candidates(nwbfile, pynwb.ecephys.ElectricalSeries, (pynwb.ecephys.SpikeEventSeries,)),
            args.electrical_series,
            what="ElectricalSeries",
            argument="electrical_series",
            prefer="acquisition/",
            url=url,
        )
        if selected is not None:
            parts.append(_traces(*selected, ctx))
        selected = _select(
            _candidates(nwbfile, pynwb.image.ImageSeries),
            args.image_series,
            what="ImageSeries",
            argument="image_series",
            prefer="stimulus",
            url=url,
        )
        if selected is not None:
            parts.append(_frames(*selected, ctx, args.image_dims))
        units = nwbfile.units
        if args.units is True and units is None:
            raise InputError(f"NWB file {url!r} has no Units table (loader.units is true)")
        if args.units is not False and units is not None:
            if args.units is True or getattr(units, "spike_times_index", None) is not None:
                parts.append(_spikes(units, ctx))
            else:
                logger.info("%s: the Units table has no spike times; not read", url)
        if not parts:
            raise _nothing_to_read(nwbfile, url, pynwb)
        if args.events:
            event_vars, event_coords = _events(nwbfile, args.events, ctx, pynwb)
            parts.append((event_vars, event_coords, {}))
        for part_vars, part_coords, part_attrs in parts:
            data_vars.update(part_vars)
            coords.update(part_coords)
            attrs.update(part_attrs)
        attrs["event_names"] = list(args.events)
        attrs.update(_session_attrs(nwbfile))
    attrs = merge_sidecar(attrs, url, args, storage_options=so)
    ds = xr.Dataset(data_vars, coords=coords, attrs=attrs)
    ds.set_close(manager.close)
    logger.debug("%s: NWB parts %s", url, sorted(data_vars))
    return ds
