"""Loaders: one module per input format, each returning the shared Dataset shapes.

The registry :data:`LOADERS` maps each format name to a :class:`LoaderSpec`: its pydantic
arguments model (``extra="forbid"``, with ``event_names()``) and whether it reads files or
folders (both from :data:`neurobatch.config.loaders.LOADER_FORMATS`, where the arguments
models live), its load function, and whether that function reads lazily in chunks from a
memory budget. :func:`load_recording` loads any of them by name.

Photometry recordings (``signal(time)``, ``isosbestic(time)``, events), read into memory:

- ``photometry-csv`` (files): PhoPro's CSV layout, parsed with pyarrow;
- ``photometry-parquet`` (files): the same columns in Parquet;
- ``tdt`` (folders): TDT block folders, through the ``tdt`` package;
- ``doric`` (files): Doric ``.doric`` files (HDF5, V6 and older layouts) and Doric CSV
  exports (:mod:`.doric`);
- ``neurophotometrics`` (files): Neurophotometrics CSV, LED-interleaved frames
  demultiplexed, with its event file (:mod:`.neurophotometrics`);
- ``pyphotometry`` (files): pyPhotometry ``.ppd`` files (:mod:`.pyphotometry`);
- ``nwb-photometry`` (files): NWB files with ndx-fiber-photometry's
  ``FiberPhotometryResponseSeries``, signal and isosbestic by series or excitation
  wavelength, events from the file's tables (:mod:`.nwb_photometry`).

Large recordings, read lazily (dask-backed, nothing read on load but headers and metadata),
chunked along time or frames from ``chunk_memory``: ephys ``traces(time, channel)``, movies
``frames(frame, y, x)`` with ``frame_time``, spikes ``spike_time(spike)`` with ``unit``:

- ``spikeglx`` (files): SpikeGLX ``.bin`` with its ``.meta`` (:mod:`.spikeglx`);
- ``raw-binary`` (files): headerless interleaved binary, layout given (:mod:`.binary`);
- ``nwb`` (files): NWB ElectricalSeries, ImageSeries, Units and events via ``pynwb``
  (:mod:`.nwb`);
- ``npy`` (files): one ``.npy`` array, traces or frames (:mod:`.arrays`);
- ``zarr`` (files): existing Zarr / xarray stores (:mod:`.arrays`);
- ``rgc-pickle`` (files): the legacy retinal-ganglion STA pickle, only with
  ``allow_pickle: true`` (:mod:`.legacy_pickle`).

A format may also have a ``check`` (:attr:`LoaderSpec.check`): the checks of its load that
need only the input's structure, without reading its data (``neurobatch validate``).

Every loader checks its input (one-line :class:`~neurobatch.errors.InputError` naming the
input and what was wrong) and says when sampling is not uniform
(:class:`~neurobatch.errors.NonUniformSamplingWarning`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, cast

import xarray as xr
from pydantic import BaseModel

from neurobatch.config.acquisition_arguments import (
    DoricArguments,
    NeurophotometricsArguments,
    NWBEventSource,
    NWBPhotometryArguments,
    PyPhotometryArguments,
)
from neurobatch.config.arguments import (
    ColumnArguments,
    LoaderArguments,
    PhotometryCSVArguments,
    PhotometryParquetArguments,
    TDTArguments,
)
from neurobatch.config.lazy_arguments import (
    NpyArguments,
    NWBArguments,
    RawBinaryArguments,
    RGCPickleArguments,
    SpikeGLXArguments,
    ZarrArguments,
)
from neurobatch.config.loaders import LOADER_FORMATS
from neurobatch.errors import ConfigError
from neurobatch.io.loaders._common import closest, coerce_arguments, recorded_reads
from neurobatch.io.loaders.arrays import load_npy, load_zarr
from neurobatch.io.loaders.binary import load_raw_binary
from neurobatch.io.loaders.csv import load_photometry_csv
from neurobatch.io.loaders.doric import load_doric
from neurobatch.io.loaders.legacy_pickle import load_rgc_pickle
from neurobatch.io.loaders.neurophotometrics import load_neurophotometrics
from neurobatch.io.loaders.nwb import load_nwb
from neurobatch.io.loaders.nwb_photometry import check_nwb_photometry, load_nwb_photometry
from neurobatch.io.loaders.parquet import load_photometry_parquet
from neurobatch.io.loaders.pyphotometry import load_pyphotometry
from neurobatch.io.loaders.sidecar import read_sidecar, resolve_sidecar
from neurobatch.io.loaders.spikeglx import load_spikeglx
from neurobatch.io.loaders.tdt import load_tdt

logger = logging.getLogger(__name__)

__all__ = [
    "LOADERS",
    "CheckFunction",
    "ChunkedLoadFunction",
    "ColumnArguments",
    "DoricArguments",
    "LoadFunction",
    "LoaderArguments",
    "LoaderSpec",
    "NWBArguments",
    "NWBEventSource",
    "NWBPhotometryArguments",
    "NeurophotometricsArguments",
    "NpyArguments",
    "PhotometryCSVArguments",
    "PhotometryParquetArguments",
    "PyPhotometryArguments",
    "RGCPickleArguments",
    "RawBinaryArguments",
    "SpikeGLXArguments",
    "TDTArguments",
    "ZarrArguments",
    "check_nwb_photometry",
    "load_doric",
    "load_neurophotometrics",
    "load_npy",
    "load_nwb",
    "load_nwb_photometry",
    "load_photometry_csv",
    "load_photometry_parquet",
    "load_pyphotometry",
    "load_raw_binary",
    "load_recording",
    "load_rgc_pickle",
    "load_spikeglx",
    "load_tdt",
    "load_zarr",
    "read_sidecar",
    "recorded_reads",
    "resolve_sidecar",
]


class LoadFunction(Protocol):
    """``load(url, arguments, *, storage_options=None) -> xarray.Dataset``."""

    def __call__(
        self,
        url: str,
        arguments: Any,
        /,
        *,
        storage_options: Mapping[str, Any] | None = None,
    ) -> xr.Dataset:
        """Load one input into a Recording Dataset."""
        ...


class ChunkedLoadFunction(Protocol):
    """A lazy loader: ``load(url, arguments, *, storage_options=None, chunk_memory=...)``."""

    def __call__(
        self,
        url: str,
        arguments: Any,
        /,
        *,
        storage_options: Mapping[str, Any] | None = None,
        chunk_memory: int = ...,
    ) -> xr.Dataset:
        """Load one input lazily, chunked along time or frames from ``chunk_memory`` bytes."""
        ...


class CheckFunction(Protocol):
    """``check(url, arguments, *, storage_options=None)``: an input's structure, checked."""

    def __call__(
        self,
        url: str,
        arguments: Any,
        /,
        *,
        storage_options: Mapping[str, Any] | None = None,
    ) -> Any:
        """Check what the arguments ask of one input, reading none of its data."""
        ...


@dataclass(frozen=True)
class LoaderSpec:
    """One input format: its name, arguments model, target kind and load function.

    Attributes
    ----------
    format : str
        The format's name, as a pipeline file's ``loader.format`` gives it.
    arguments : type of LoaderArguments
        Its pydantic arguments model (``extra="forbid"``); ``event_names()`` on an instance
        lists the events the loader provides.
    target : {"file", "folder"}
        Whether each input is a file or a folder.
    load : LoadFunction
        ``load(url, arguments, *, storage_options=None) -> xarray.Dataset``.
    chunked : bool, default False
        Whether ``load`` reads lazily and also takes ``chunk_memory`` (a
        :class:`ChunkedLoadFunction`).
    check : CheckFunction or None, default None
        ``check(url, arguments, *, storage_options=None)``: the load's checks that need only
        the input's structure (raising what the load would raise), reading no data; it may
        return what the load would read. None for a format without one.

    Examples
    --------
    >>> spec = LOADERS["photometry-csv"]
    >>> spec.target, spec.arguments.model_validate({"event_cols": ["cue"]}).event_names()
    ('file', ['cue'])
    >>> LOADERS["spikeglx"].chunked, LOADERS["tdt"].chunked
    (True, False)
    >>> LOADERS["nwb-photometry"].check is check_nwb_photometry
    True
    """

    format: str
    arguments: type[LoaderArguments]
    target: Literal["file", "folder"]
    load: LoadFunction
    chunked: bool = False
    check: CheckFunction | None = None


#: Every format's load function, and whether it reads lazily in chunks.
_LOAD_FUNCTIONS: dict[str, tuple[LoadFunction, bool]] = {
    "photometry-csv": (load_photometry_csv, False),
    "photometry-parquet": (load_photometry_parquet, False),
    "tdt": (load_tdt, False),
    "doric": (load_doric, False),
    "neurophotometrics": (load_neurophotometrics, False),
    "pyphotometry": (load_pyphotometry, False),
    "nwb-photometry": (load_nwb_photometry, False),
    "spikeglx": (load_spikeglx, True),
    "raw-binary": (load_raw_binary, True),
    "nwb": (load_nwb, True),
    "npy": (load_npy, True),
    "zarr": (load_zarr, True),
    "rgc-pickle": (load_rgc_pickle, True),
}

#: The formats whose inputs can be checked without reading their data.
_CHECK_FUNCTIONS: dict[str, CheckFunction] = {"nwb-photometry": check_nwb_photometry}

#: Every loader format by name: the arguments model and target of
#: :data:`neurobatch.config.loaders.LOADER_FORMATS`, with its load and check functions.
LOADERS: dict[str, LoaderSpec] = {
    fmt: LoaderSpec(
        fmt, entry.arguments, entry.target, *_LOAD_FUNCTIONS[fmt], check=_CHECK_FUNCTIONS.get(fmt)
    )
    for fmt, entry in LOADER_FORMATS.items()
}


def load_recording(
    url: str,
    loader_arguments: Mapping[str, Any] | BaseModel,
    *,
    format: str,
    storage_options: Mapping[str, Any] | None = None,
    chunk_memory: int | None = None,
) -> xr.Dataset:
    """Load one input of any registered format into a Recording (or Movie) Dataset.

    Parameters
    ----------
    url : str
        The input file or folder (see the format's ``target``), any fsspec URL or path.
    loader_arguments : mapping or pydantic.BaseModel
        The format's arguments: a mapping (validated by ``LOADERS[format].arguments``; a
        ``format`` key, if present, must agree) or an instance of that model.
    format : str
        The format's name, a key of :data:`LOADERS`.
    storage_options : mapping, optional
        Passed to fsspec.
    chunk_memory : int, optional
        Bytes per chunk for the lazy formats (``LOADERS[format].chunked``); their default
        (64 MiB) when None. The in-memory formats ignore it.

    Returns
    -------
    xarray.Dataset
        For the lazy formats, see each loader (e.g. ``traces(time, channel)``,
        ``frames(frame, y, x)``). For the photometry formats the Recording Dataset: ``signal(time)``, ``isosbestic(time)`` (absent in
        single-channel mode), float64 on the coordinate ``time`` (seconds);
        ``event_time(event)`` sorted by time with coordinate ``event_name(event)``; attrs
        ``sampling_rate``, ``event_names``, ``source``, ``n_samples`` and the sidecar's
        metadata.

    Raises
    ------
    neurobatch.errors.ConfigError
        If the format is unknown (with the closest name) or the arguments are invalid
        (with the closest argument name for an unknown one).
    neurobatch.errors.InputError
        If the input cannot be loaded (see each format's loader).

    Examples
    --------
    >>> import fsspec
    >>> fsspec.filesystem("memory").pipe(
    ...     "/registry-doc/a.csv", b"time,signal\\n0.0,1.0\\n0.1,2.0\\n0.2,3.0\\n")
    >>> ds = load_recording("memory://registry-doc/a.csv", {"isosbestic_col": None},
    ...                     format="photometry-csv")
    >>> ds.sizes["time"], round(ds.attrs["sampling_rate"], 6)
    (3, 10.0)
    >>> load_recording("memory://registry-doc/a.csv", {"signal_column": "signal"},
    ...                format="photometry-csv")
    Traceback (most recent call last):
    ...
    neurobatch.errors.ConfigError: invalid loader arguments for format 'photometry-csv': signal_column: unknown argument; did you mean 'signal_col'?
    >>> load_recording("memory://registry-doc/a.csv", {}, format="photometry-cvs")
    Traceback (most recent call last):
    ...
    neurobatch.errors.ConfigError: unknown loader format 'photometry-cvs'; did you mean 'photometry-csv'? (known: 'photometry-csv', 'photometry-parquet', 'tdt', 'doric', 'neurophotometrics', 'pyphotometry', 'nwb-photometry', 'spikeglx', 'raw-binary', 'nwb', 'npy', 'zarr', 'rgc-pickle')
    """
    spec = LOADERS.get(format)
    if spec is None:
        guess = closest(format, list(LOADERS))
        hint = f"; did you mean {guess!r}?" if guess else ""
        known = ", ".join(repr(name) for name in LOADERS)
        raise ConfigError(f"unknown loader format {format!r}{hint} (known: {known})")
    arguments = coerce_arguments(loader_arguments, spec.arguments, fmt=format)
    logger.debug("loading %s as %s", url, format)
    if spec.chunked and chunk_memory is not None:
        load = cast(ChunkedLoadFunction, spec.load)
        return load(url, arguments, storage_options=storage_options, chunk_memory=chunk_memory)
    return spec.load(url, arguments, storage_options=storage_options)
