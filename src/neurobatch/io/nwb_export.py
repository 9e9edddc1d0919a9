"""One NWB file per item (``output.formats: [nwb]``): the raw channels, the processed signal and
its fitted reference, the trials, the subject and the session, written with pynwb and
ndx-fiber-photometry.

The file (:func:`item_nwbfile` builds it, :func:`write_nwb` writes it) holds:

- ``acquisition/signal`` and ``acquisition/isosbestic``: the recording as loaded (the
  ingested channels, float64), each a ``FiberPhotometryResponseSeries`` with its row of the
  ``FiberPhotometryTable`` (lab metadata ``fiber_photometry``: the fibre's location, the
  excitation and emission wavelengths, the indicator, the optical fibre, one excitation
  source per channel and a photodetector, from the recording's metadata; unknown values
  are ``"unknown"`` or NaN);
- ``processing/ophys/<variable>`` (``dff``, ``df``, ...) and ``processing/ophys/reference``:
  the processed signal and the fitted reference, ``FiberPhotometryResponseSeries`` on the
  signal's table row, with the fit in their descriptions;
- ``intervals/trials``: one row per trial; ``start_time`` and ``stop_time`` are the window's
  first and last sample, ``align_time`` its centre (the alignment event's time),
  ``trial_num``, ``label`` (the alignment event's name), one column per event (its time
  relative to ``align_time`` in seconds, NaN when absent), ``experiment_id``, the
  passed-down metadata, the window itself (column named after the processed variable, one
  row of ``rel_time`` samples per trial) and ``timeseries``, a reference to the processed
  series over the window;
- the subject (``subject``/``subject_id``, ``species``, ``sex``, ``age``, ``genotype``,
  ``strain``, ``weight``, ``date_of_birth`` from the metadata; sex as NWB's M, F, U or O;
  an age that is not an ISO 8601 duration goes to the subject's description) and the
  session (``session_start_time`` from the metadata; without one, the given fallback,
  which the pipeline takes from the input file's modification time).

Times are on the recording's clock (seconds from the session start). A series sampled at a
regular rate (its intervals equal to 1e-9 s) is stored with ``starting_time`` and ``rate``,
otherwise with its timestamps. Large arrays are written block by block from the item's
stores (:class:`hdmf.data_utils.GenericDataChunkIterator`), gzip-compressed. The file is
written beside its final place (locally first for a remote output) and then moved into place
in one step (:func:`neurobatch.io.files.replace_file`): a reader sees the old file or the
new one, never a part.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import re
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import dask.array as da
import fsspec
import numpy as np
import xarray as xr
from fsspec.implementations.local import LocalFileSystem
from numpy.typing import NDArray

from neurobatch import __version__
from neurobatch.errors import InputError
from neurobatch.io import files

logger = logging.getLogger(__name__)

__all__ = ["NWB_SUFFIX", "item_nwbfile", "session_start", "write_nwb"]

#: The suffix of the written files.
NWB_SUFFIX = ".nwb"

#: Samples per HDF5 chunk of a series (512 KiB of float64), and chunks per write.
_CHUNK_SAMPLES = 1 << 16
_CHUNKS_PER_WRITE = 16

_SEX = {"m": "M", "male": "M", "f": "F", "female": "F", "u": "U", "unknown": "U", "o": "O"}
_ISO_DURATION = re.compile(r"^P(?!$)(\d+Y)?(\d+M)?(\d+W)?(\d+D)?(T(?=\d)(\d+H)?(\d+M)?(\d+S)?)?$")
_SUBJECT_FIELDS = ("genotype", "strain", "weight")
_TRIAL_FIELDS = ("item_id", "experiment_id", "trial_num", "start_time", "stop_time", "align_event")
_RESERVED = {
    "id",
    "start_time",
    "stop_time",
    "tags",
    "timeseries",
    "tags_index",
    "timeseries_index",
}


def _import() -> tuple[Any, Any, Any]:
    try:
        import ndx_fiber_photometry  # type: ignore[import-untyped, import-not-found, unused-ignore]
        import ndx_ophys_devices  # type: ignore[import-untyped, import-not-found, unused-ignore]
        import pynwb  # type: ignore[import-untyped, import-not-found, unused-ignore]
    except ImportError as e:
        raise ImportError(
            "output format 'nwb' needs pynwb and ndx-fiber-photometry: pip install "
            "'neurobatch[nwb]'"
        ) from e
    return pynwb, ndx_fiber_photometry, ndx_ophys_devices


# ---------------------------------------------------------------------------------------------
# Metadata
# ---------------------------------------------------------------------------------------------


def session_start(metadata: Mapping[str, Any], fallback: dt.datetime | None = None) -> dt.datetime:
    """The session's start: ``metadata["session_start_time"]``, else ``fallback``.

    Parameters
    ----------
    metadata : mapping
        The recording's attributes (a sidecar's ``session_start_time``, or an NWB input's).
    fallback : datetime, optional
        When the metadata has none (the pipeline gives the input's modification time).

    Returns
    -------
    datetime.datetime
        Timezone-aware (UTC when the metadata's time has no zone).

    Raises
    ------
    neurobatch.errors.InputError
        If the metadata's value is not an ISO 8601 time, or there is neither it nor a
        fallback.

    Examples
    --------
    >>> session_start({"session_start_time": "2024-05-06T10:00:00+02:00"}).isoformat()
    '2024-05-06T10:00:00+02:00'
    >>> session_start({}, dt.datetime(2024, 1, 2, 3, 4)).isoformat()
    '2024-01-02T03:04:00+00:00'
    """
    value = metadata.get("session_start_time")
    if value is None:
        if fallback is None:
            raise InputError(
                "the recording's metadata has no session_start_time and no fallback was "
                "given; expected session_start_time in the sidecar (ISO 8601)"
            )
        start = fallback
    else:
        try:
            start = dt.datetime.fromisoformat(str(value))
        except ValueError:
            raise InputError(
                f"session_start_time {value!r} is not an ISO 8601 time; expected e.g. "
                "'2024-05-06T10:00:00+02:00'"
            ) from None
    return start if start.tzinfo is not None else start.replace(tzinfo=dt.UTC)


def _subject(pynwb: Any, metadata: Mapping[str, Any]) -> Any:
    subject_id = metadata.get("subject", metadata.get("subject_id"))
    if subject_id is None:
        return None
    fields: dict[str, Any] = {"subject_id": str(subject_id)}
    notes = []
    if metadata.get("species") is not None:
        fields["species"] = str(metadata["species"])
    sex = metadata.get("sex")
    if sex is not None:
        fields["sex"] = _SEX.get(str(sex).strip().lower(), "O")
        if fields["sex"] == "O" and str(sex).strip().upper() != "O":
            notes.append(f"sex as given: {sex}")
    age = metadata.get("age")
    if age is not None:
        if isinstance(age, str) and _ISO_DURATION.match(age):
            fields["age"] = age
        else:
            notes.append(f"age as given: {age}")
    for key in _SUBJECT_FIELDS:
        if metadata.get(key) is not None:
            fields[key] = str(metadata[key])
    if metadata.get("date_of_birth") is not None:
        fields["date_of_birth"] = session_start({"session_start_time": metadata["date_of_birth"]})
    fields["description"] = "; ".join(["subject of the recording", *notes])
    missing = [
        what
        for what, present in (
            (
                "an age (an ISO 8601 duration, e.g. P90D) or date_of_birth",
                "age" in fields or "date_of_birth" in fields,
            ),
            ("a species", "species" in fields),
            ("a sex", "sex" in fields),
        )
        if not present
    ]
    if missing:
        logger.warning(
            "subject %s lacks %s in its metadata: nwbinspector reports it (DANDI needs it)",
            subject_id,
            ", ".join(missing),
        )
    return pynwb.file.Subject(**fields)


# ---------------------------------------------------------------------------------------------
# Series
# ---------------------------------------------------------------------------------------------


def _chunks(array: da.Array) -> Any:
    """The array written block by block (at most 16 HDF5 chunks in memory), compressed."""
    from hdmf.backends.hdf5 import H5DataIO  # type: ignore[import-untyped, unused-ignore]
    from hdmf.data_utils import (  # type: ignore[import-untyped, unused-ignore]
        GenericDataChunkIterator,
    )

    class _Blocks(GenericDataChunkIterator):  # type: ignore[misc]
        def __init__(self, source: da.Array) -> None:
            self.source = source
            chunk = (min(int(source.shape[0]), _CHUNK_SAMPLES), *source.shape[1:])
            buffer = (min(int(source.shape[0]), chunk[0] * _CHUNKS_PER_WRITE), *source.shape[1:])
            super().__init__(chunk_shape=chunk, buffer_shape=buffer, display_progress=False)

        def _get_data(self, selection: tuple[slice, ...]) -> NDArray[Any]:
            return np.asarray(self.source[selection].compute())

        def _get_maxshape(self) -> tuple[int, ...]:
            return tuple(int(n) for n in self.source.shape)

        def _get_dtype(self) -> np.dtype[Any]:
            dtype: np.dtype[Any] = np.dtype(self.source.dtype)
            return dtype

    return H5DataIO(_Blocks(array), compression="gzip")


def _timing(time: NDArray[np.float64]) -> dict[str, Any]:
    """``starting_time`` and ``rate`` for regular samples (as nwbinspector tells them: their
    intervals equal to 9 decimals), the timestamps otherwise."""
    if time.size > 2 and np.unique(np.round(np.diff(time), 9)).size == 1:
        return {
            "starting_time": float(time[0]),
            "rate": float((time.size - 1) / (time[-1] - time[0])),
        }
    return {"timestamps": time}


def _series(
    fp: Any, name: str, values: xr.DataArray, *, region: Any, unit: str, description: str
) -> Any:
    time = np.asarray(values["time"].values, dtype=np.float64)
    return fp.FiberPhotometryResponseSeries(
        name=name,
        description=description,
        data=_chunks(da.asarray(values.data)),  # type: ignore[no-untyped-call]
        unit=unit,
        fiber_photometry_table_region=region,
        **_timing(time),
    )


def _number(metadata: Mapping[str, Any], key: str) -> float:
    value = metadata.get(key)
    try:
        return float(value) if value is not None else float("nan")
    except (TypeError, ValueError):
        return float("nan")


def _fiber_table(
    nwbfile: Any, fp: Any, devices: Any, metadata: Mapping[str, Any], channels: Sequence[str]
) -> Any:
    """The FiberPhotometryTable: one row per channel, all on one fibre."""
    indicator = devices.Indicator(
        name="indicator",
        label=str(metadata.get("indicator", "unknown")),
        description="the fluorescent indicator, as the recording's metadata names it",
    )
    fiber = devices.OpticalFiber(
        name=str(metadata.get("fiber", "optical_fiber")),
        description="the optical fibre of the recording",
        fiber_insertion=devices.FiberInsertion(name="fiber_insertion"),
    )
    detector = devices.Photodetector(
        name="photodetector", description="the photodetector of the recording"
    )
    nwbfile.add_device(fiber)
    nwbfile.add_device(detector)
    table = fp.FiberPhotometryTable(
        name="fiber_photometry_table", description="the fibre and the light of each channel"
    )
    wavelength_keys = {
        "signal": "excitation_wavelength_nm",
        "isosbestic": "isosbestic_wavelength_nm",
    }
    for channel in channels:
        wavelength = _number(metadata, wavelength_keys[channel])
        source = devices.ExcitationSource(
            name=f"excitation_source_{channel}",
            description=f"the excitation light of the {channel} channel"
            + ("" if np.isnan(wavelength) else f" ({wavelength:g} nm)"),
        )
        nwbfile.add_device(source)
        table.add_row(
            location=str(metadata.get("location", "unknown")),
            excitation_wavelength_in_nm=wavelength,
            emission_wavelength_in_nm=_number(metadata, "emission_wavelength_nm"),
            indicator=indicator,
            optical_fiber=fiber,
            excitation_source=source,
            photodetector=detector,
        )
    nwbfile.add_lab_meta_data(
        fp.FiberPhotometry(
            name="fiber_photometry",
            fiber_photometry_table=table,
            fiber_photometry_indicators=fp.FiberPhotometryIndicators(indicators=[indicator]),
        )
    )
    return table


# ---------------------------------------------------------------------------------------------
# Trials
# ---------------------------------------------------------------------------------------------


def _column_values(values: NDArray[Any]) -> list[Any]:
    if values.dtype.kind in "biuf":
        return values.tolist()  # type: ignore[no-any-return]
    return [v if isinstance(v, str) else json.dumps(v, default=str) for v in values.tolist()]


def _add_trials(
    nwbfile: Any,
    trials: xr.Dataset,
    processed: Any,
    *,
    variable: str,
    align_to: str | Sequence[str] | None,
    events: Sequence[str],
) -> None:
    rel_time = np.asarray(trials["rel_time"].values, dtype=np.float64)
    start = np.asarray(trials["start_time"].values, dtype=np.float64)
    columns: dict[str, tuple[str, list[Any]]] = {
        "align_time": (
            "the trial's centre: the time of the event it is aligned on (s)",
            (start - rel_time[0]).tolist(),
        ),
        "trial_num": (
            "the trial's number in the item, from 1",
            _column_values(trials["trial_num"].values),
        ),
    }
    label = (
        _column_values(trials["align_event"].values)
        if "align_event" in trials.coords
        else [align_to if isinstance(align_to, str) else ""] * trials.sizes["trial"]
    )
    columns["label"] = ("the name of the event the trial is aligned on", label)
    for name, coord in trials.coords.items():
        name = str(name)
        if coord.dims != ("trial",) or name in _TRIAL_FIELDS:
            continue
        if name in events:
            description = f"time of event {name!r} relative to align_time (s); NaN when absent"
            column = name if name not in _RESERVED and name not in columns else f"{name}_event"
        else:
            description = f"{name} (passed down from the recording's metadata)"
            column = name if name not in _RESERVED and name not in columns else f"{name}_value"
        columns[column] = (description, _column_values(coord.values))
    if "experiment_id" in trials.coords:
        columns["experiment_id"] = (
            "the experiment (recording) the trial comes from",
            _column_values(trials["experiment_id"].values),
        )
    window = np.asarray(trials[variable].values)
    step = float(np.median(np.diff(rel_time))) if rel_time.size > 1 else 0.0
    grid = f"rel_time = {rel_time[0]:.9g} + k x {step:.9g} s (k = 0..{rel_time.size - 1})"
    columns[variable] = (f"the trial's {variable} at {grid} from align_time", list(window))
    for column, (description, _) in columns.items():
        nwbfile.add_trial_column(name=column, description=description)
    stop = np.asarray(trials["stop_time"].values, dtype=np.float64)
    for i in range(trials.sizes["trial"]):
        nwbfile.add_trial(
            start_time=float(start[i]),
            stop_time=float(stop[i]),
            timeseries=[processed],
            **{column: values[i] for column, (_, values) in columns.items()},
        )


# ---------------------------------------------------------------------------------------------
# The file
# ---------------------------------------------------------------------------------------------


def _describe_fit(processed: xr.Dataset) -> str:
    fit = processed.attrs.get("fit")
    return f"; fit: {json.dumps(fit, sort_keys=True, default=str)}" if fit else ""


def item_nwbfile(
    *,
    recording: xr.Dataset,
    processed: xr.Dataset,
    trials: xr.Dataset | None,
    item_id: str,
    experiment_id: str,
    pipeline: str,
    align_to: str | Sequence[str] | None = None,
    experimenters: Sequence[str] = (),
    session_start_fallback: dt.datetime | None = None,
) -> Any:
    """The NWB file of one item, in memory (its arrays are read when it is written).

    Parameters
    ----------
    recording : xarray.Dataset
        The ingested Recording: ``signal(time)``, optionally ``isosbestic(time)``, events,
        and the metadata attrs (``subject``, ``sex``, ``age``, ``species``, ``location``,
        ``indicator``, ``excitation_wavelength_nm``, ``session_start_time``, ...).
    processed : xarray.Dataset
        The preprocessed recording: the processed variable (``attrs["processed_variable"]``)
        and ``reference`` along ``time``, with ``attrs["fit"]``.
    trials : xarray.Dataset or None
        The item's trials (None or no trial: no trials table).
    item_id, experiment_id : str
        The item, and its experiment id (the session id).
    pipeline : str
        The pipeline's name (in the session description).
    align_to : str or sequence of str, optional
        ``trials.align_to``: the trials' label when it is one event.
    experimenters : sequence of str, optional
        Who ran the experiment.
    session_start_fallback : datetime, optional
        The session start when the metadata has none (see :func:`session_start`).

    Returns
    -------
    pynwb.NWBFile

    Raises
    ------
    neurobatch.errors.InputError
        If the recording has no ``signal``, the processed recording no processed variable,
        or the session start is unknown or malformed.
    ImportError
        If pynwb or ndx-fiber-photometry is not installed.

    Examples
    --------
    >>> t = np.arange(5) / 10.0
    >>> rec = xr.Dataset({"signal": ("time", t + 1.0)}, coords={"time": t},
    ...                  attrs={"subject": "m1", "sex": "female", "species": "Mus musculus",
    ...                         "session_start_time": "2024-05-06T10:00:00+00:00"})
    >>> pro = xr.Dataset({"dff": ("time", t), "reference": ("time", t + 1.0)},
    ...                  coords={"time": t}, attrs={"processed_variable": "dff"})
    >>> f = item_nwbfile(recording=rec, processed=pro, trials=None, item_id="a",
    ...                  experiment_id="a", pipeline="demo")
    >>> sorted(f.acquisition), sorted(f.processing["ophys"].data_interfaces), f.subject.sex
    (['signal'], ['dff', 'reference'], 'F')
    """
    pynwb, fp, devices = _import()
    metadata = dict(recording.attrs)
    if "signal" not in recording.data_vars:
        raise InputError(
            f"{recording.attrs.get('source', item_id)!r}: the recording has no signal; the "
            "NWB export writes photometry recordings (signal, isosbestic)"
        )
    variable = str(processed.attrs.get("processed_variable", ""))
    if variable not in processed.data_vars:
        raise InputError(
            f"{item_id}: the preprocessed recording has no processed variable {variable!r}; "
            "expected the output of the preprocess stage"
        )
    start = session_start(metadata, session_start_fallback)
    nwbfile = pynwb.NWBFile(
        session_description=str(
            metadata.get("session_description", f"{pipeline}: photometry recording {item_id}")
        ),
        identifier=str(uuid.uuid5(uuid.NAMESPACE_URL, f"neurobatch/{pipeline}/{item_id}")),
        session_start_time=start,
        session_id=experiment_id,
        experimenter=list(experimenters) or None,
        experiment_description=f"neurobatch pipeline {pipeline!r}",
        institution=metadata.get("institution"),
        lab=metadata.get("lab"),
        keywords=["fiber photometry", "neurobatch"],
        source_script=f"neurobatch {__version__}",
        source_script_file_name="neurobatch",
        subject=_subject(pynwb, metadata),
    )
    channels = [name for name in ("signal", "isosbestic") if name in recording.data_vars]
    table = _fiber_table(nwbfile, fp, devices, metadata, channels)
    source = str(metadata.get("source", item_id))
    acquisition = metadata.get("acquisition") or {}
    unit = str(acquisition.get("unit", "a.u.")) if isinstance(acquisition, dict) else "a.u."
    for row, name in enumerate(channels):
        where = acquisition.get(name) if isinstance(acquisition, dict) else None
        region = table.create_fiber_photometry_table_region(region=[row], description=name)
        nwbfile.add_acquisition(
            _series(
                fp,
                name,
                recording[name],
                region=region,
                unit=unit,
                description=f"the {name} channel as loaded from {source}"
                + (f" ({where})" if where else ""),
            )
        )
    ophys = nwbfile.create_processing_module(
        name="ophys", description="neurobatch preprocess: filter, fit and correction"
    )
    ratio = variable in ("dff", "dbb")
    fit = _describe_fit(processed)
    series = _series(
        fp,
        variable,
        processed[variable],
        region=table.create_fiber_photometry_table_region(region=[0], description="signal"),
        unit="n.a." if ratio else unit,
        description=f"the processed signal ({variable}) of the signal channel{fit}",
    )
    ophys.add(series)
    if "reference" in processed.data_vars:
        ophys.add(
            _series(
                fp,
                "reference",
                processed["reference"],
                region=table.create_fiber_photometry_table_region(region=[0], description="signal"),
                unit=unit,
                description=f"the fitted reference the correction divides or subtracts{fit}",
            )
        )
    if trials is not None and trials.sizes.get("trial", 0):
        events = [str(name) for name in metadata.get("event_names", [])]
        _add_trials(nwbfile, trials, series, variable=variable, align_to=align_to, events=events)
    return nwbfile


def write_nwb(nwbfile: Any, url: str, *, storage_options: Mapping[str, Any] | None = None) -> None:
    """Write an NWB file whole, then move it into place in one step.

    The file is written beside ``url`` (a hidden temporary name) and renamed over it; for
    an object store it is written locally first, uploaded beside ``url`` and copied into
    place. A failure leaves the old file (if any) as it was, and no temporary behind.

    Parameters
    ----------
    nwbfile : pynwb.NWBFile
        The file (see :func:`item_nwbfile`).
    url : str
        Where it goes: a local path or any fsspec URL.
    storage_options : mapping, optional
        Passed to fsspec.

    Raises
    ------
    neurobatch.errors.StorageError
        If it cannot be written or put in place.

    Examples
    --------
    >>> import datetime as dt, pathlib, tempfile
    >>> from pynwb import NWBFile, NWBHDF5IO
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> f = NWBFile(session_description="d", identifier="i",
    ...             session_start_time=dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc))
    >>> write_nwb(f, str(folder / "nwb" / "a.nwb"))
    >>> with NWBHDF5IO(str(folder / "nwb" / "a.nwb"), "r") as io:
    ...     io.read().identifier
    'i'
    >>> sorted(p.name for p in (folder / "nwb").iterdir())
    ['a.nwb']
    """
    pynwb, _, _ = _import()
    fs, _ = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    head, _, name = url.rpartition("/")
    staged = f"{head}{'/' if head else ''}.{name}.{uuid.uuid4().hex}.tmp{NWB_SUFFIX}"
    staged_path = fs._strip_protocol(staged)
    try:
        if isinstance(fs, LocalFileSystem):
            with files.translated(url, action="writing"):
                fs.makedirs(fs._parent(staged_path), exist_ok=True)
                with pynwb.NWBHDF5IO(staged_path, "w") as io:
                    io.write(nwbfile)
        else:  # h5py writes local files: written here, then uploaded beside its place
            with tempfile.TemporaryDirectory() as scratch:
                local = os.path.join(scratch, name)
                with files.translated(url, action="writing"), pynwb.NWBHDF5IO(local, "w") as io:
                    io.write(nwbfile)
                files.retried(lambda: fs.put_file(local, staged_path), url=url, action="writing")
        files.replace_file(staged, url, storage_options=storage_options)
    except BaseException:
        with contextlib.suppress(Exception):
            if fs.exists(staged_path):
                fs.rm(staged_path)
        raise
    logger.info("wrote %s", url)
