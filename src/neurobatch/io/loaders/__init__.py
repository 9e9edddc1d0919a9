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
need only the input's structure, without reading its data: the columns of
``photometry-csv`` (the header line) and ``photometry-parquet`` (the footer), the series and
events of ``nwb-photometry``. :func:`check_inputs` runs them over a whole manifest
(``neurobatch validate``).

Other packages add formats through the entry-point group ``neurobatch.loaders``: each entry
point names a :class:`LoaderPlugin` (arguments model, load function, target, kind, and an
optional check), and :data:`LOADERS` looks the format up, importing the package when the
format is first used (:mod:`neurobatch.config.plugins`). A plugin builds its Recording with
what the built-in photometry loaders use, exported here: :func:`build_recording`,
:func:`load_annotation` (the sidecar), :func:`check_columns` and :data:`HEADER_BLOCK_BYTES`.

Every loader checks its input (one-line :class:`~neurobatch.errors.InputError` naming the
input and what was wrong) and says when sampling is not uniform
(:class:`~neurobatch.errors.NonUniformSamplingWarning`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, Protocol, cast

import pandas as pd
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
from neurobatch.config.plugins import LoaderPlugin, load_plugin
from neurobatch.errors import ConfigError, InputError
from neurobatch.io.loaders._common import closest, coerce_arguments, recorded_reads
from neurobatch.io.loaders._photometry import build_recording
from neurobatch.io.loaders.arrays import load_npy, load_zarr
from neurobatch.io.loaders.binary import load_raw_binary
from neurobatch.io.loaders.csv import check_photometry_csv, load_photometry_csv
from neurobatch.io.loaders.doric import load_doric
from neurobatch.io.loaders.headers import HEADER_BLOCK_BYTES, check_columns, named_columns
from neurobatch.io.loaders.legacy_pickle import enumerate_rgc_pickle, load_rgc_pickle
from neurobatch.io.loaders.neurophotometrics import load_neurophotometrics
from neurobatch.io.loaders.nwb import load_nwb
from neurobatch.io.loaders.nwb_photometry import check_nwb_photometry, load_nwb_photometry
from neurobatch.io.loaders.parquet import check_photometry_parquet, load_photometry_parquet
from neurobatch.io.loaders.pyphotometry import load_pyphotometry
from neurobatch.io.loaders.sidecar import load_annotation, read_sidecar, resolve_sidecar
from neurobatch.io.loaders.spikeglx import load_spikeglx
from neurobatch.io.loaders.tdt import load_tdt

logger = logging.getLogger(__name__)

__all__ = [
    "HEADER_BLOCK_BYTES",
    "LOADERS",
    "CheckFunction",
    "ChunkedLoadFunction",
    "ColumnArguments",
    "DoricArguments",
    "EnumerateFunction",
    "LoadFunction",
    "LoaderArguments",
    "LoaderPlugin",
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
    "build_recording",
    "check_columns",
    "check_input",
    "check_inputs",
    "check_nwb_photometry",
    "check_photometry_csv",
    "check_photometry_parquet",
    "enumerate_rgc_pickle",
    "load_annotation",
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
    "named_columns",
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


class EnumerateFunction(Protocol):
    """``enumerate(url, arguments, *, storage_options=None) -> [(label, arguments), ...]``."""

    def __call__(
        self,
        url: str,
        arguments: Any,
        /,
        *,
        storage_options: Mapping[str, Any] | None = None,
    ) -> list[tuple[str, dict[str, Any]]]:
        """The items one input holds: a label and the arguments that pick each."""
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
    kind : {"photometry", "ephys", "movie"} or None, default None
        What ``load`` returns, checked after every load when set (a plugin's
        :attr:`~neurobatch.config.plugins.LoaderPlugin.kind`); None: not checked.
    enumerate : EnumerateFunction or None, default None
        For a format whose file holds several recordings (the legacy pickle's sessions and
        stimulations): the items of one input, each a label and the arguments that pick it;
        discovery makes a job of each. None: one job per input.

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
    kind: Literal["photometry", "ephys", "movie"] | None = None
    enumerate: EnumerateFunction | None = None


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
_CHECK_FUNCTIONS: dict[str, CheckFunction] = {
    "photometry-csv": check_photometry_csv,
    "photometry-parquet": check_photometry_parquet,
    "nwb-photometry": check_nwb_photometry,
}

_BUILTIN_LOADERS: dict[str, LoaderSpec] = {
    fmt: LoaderSpec(
        fmt,
        LOADER_FORMATS[fmt].arguments,
        LOADER_FORMATS[fmt].target,
        *_LOAD_FUNCTIONS[fmt],
        check=_CHECK_FUNCTIONS.get(fmt),
        enumerate=enumerate_rgc_pickle if fmt == "rgc-pickle" else None,
    )
    for fmt in _LOAD_FUNCTIONS
}


class _Loaders(Mapping[str, LoaderSpec]):
    """The built-in formats, then the installed plugins' (imported when looked up)."""

    def __getitem__(self, fmt: str) -> LoaderSpec:
        builtin = _BUILTIN_LOADERS.get(fmt)
        if builtin is not None:
            return builtin
        plugin = load_plugin(fmt)  # KeyError when no package declares it
        return LoaderSpec(
            fmt,
            plugin.arguments,
            plugin.target,
            plugin.load,
            plugin.chunked,
            check=plugin.check,
            kind=plugin.kind,
        )

    def __contains__(self, fmt: object) -> bool:
        return fmt in LOADER_FORMATS

    def __iter__(self) -> Iterator[str]:
        return iter(LOADER_FORMATS)

    def __len__(self) -> int:
        return len(LOADER_FORMATS)


#: Every loader format by name: the arguments model and target of
#: :data:`neurobatch.config.loaders.LOADER_FORMATS`, with its load and check functions. The
#: built-in formats come first, then those of installed plugins (group
#: ``neurobatch.loaders``), each imported when it is looked up: a plugin that fails to
#: import raises :class:`~neurobatch.errors.ConfigError` in one line naming its entry point.
LOADERS: Mapping[str, LoaderSpec] = _Loaders()


def _spec(format: str) -> LoaderSpec:
    spec = LOADERS.get(format)
    if spec is None:
        names = list(LOADERS)
        guess = closest(format, names)
        hint = f"; did you mean {guess!r}?" if guess else ""
        known = ", ".join(repr(name) for name in names)
        raise ConfigError(f"unknown loader format {format!r}{hint} (known: {known})")
    return spec


#: What each kind of recording holds: its variable and dimensions.
_KIND_SHAPES: dict[str, tuple[str, tuple[str, ...]]] = {
    "photometry": ("signal", ("time",)),
    "ephys": ("traces", ("time", "channel")),
    "movie": ("frames", ("frame", "y", "x")),
}


def _check_kind(recording: Any, spec: LoaderSpec, url: str) -> None:
    """A plugin's result must be the Dataset of its kind: one line naming what is not."""
    kind = spec.kind
    assert kind is not None
    name, dims = _KIND_SHAPES[kind]
    where = f"{url!r}: loader format {spec.format!r} returned"
    if not isinstance(recording, xr.Dataset):
        raise InputError(f"{where} a {type(recording).__name__}; expected an xarray.Dataset")
    problems = []
    if name not in recording.data_vars or recording[name].dims != dims:
        found = recording[name].dims if name in recording.data_vars else "no such variable"
        problems.append(f"{name}{dims} ({found})")
    if kind == "photometry":
        if "isosbestic" in recording.data_vars and recording["isosbestic"].dims != dims:
            problems.append(f"isosbestic{dims} ({recording['isosbestic'].dims})")
        if "time" not in recording.coords:
            problems.append("a 'time' coordinate")
        if "event_time" not in recording.data_vars or "event_name" not in recording.coords:
            problems.append("event_time(event) with coordinate event_name")
        if "sampling_rate" not in recording.attrs:
            problems.append("attrs['sampling_rate']")
    if problems:
        listed = ", ".join(map(str, recording.data_vars)) or "none"
        raise InputError(
            f"{where} a Dataset without {'; '.join(problems)} (its variables: {listed}); "
            f"expected a {kind} recording (see neurobatch.io.loaders.LoaderPlugin)"
        )


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
    spec = _spec(format)
    arguments = coerce_arguments(loader_arguments, spec.arguments, fmt=format)
    logger.debug("loading %s as %s", url, format)
    if spec.chunked and chunk_memory is not None:
        load = cast(ChunkedLoadFunction, spec.load)
        recording = load(url, arguments, storage_options=storage_options, chunk_memory=chunk_memory)
    else:
        recording = spec.load(url, arguments, storage_options=storage_options)
    if spec.kind is not None:
        _check_kind(recording, spec, url)
    return recording


def check_input(
    url: str,
    loader_arguments: Mapping[str, Any] | BaseModel,
    *,
    format: str,
    storage_options: Mapping[str, Any] | None = None,
) -> Any:
    """Check one input's structure against its loader arguments, reading none of its data.

    Parameters
    ----------
    url : str
        The input file or folder, any fsspec URL or path.
    loader_arguments : mapping or pydantic.BaseModel
        The format's arguments, as :func:`load_recording` takes them.
    format : str
        The format's name, a key of :data:`LOADERS`.
    storage_options : mapping, optional
        Passed to fsspec.

    Returns
    -------
    object
        What the format's check returns (what the load would read), or None for a format
        without a check (nothing is opened).

    Raises
    ------
    neurobatch.errors.ConfigError
        If the format is unknown or the arguments are invalid.
    neurobatch.errors.InputError
        What the load would raise for a column, series or event the input lacks.

    Examples
    --------
    >>> import fsspec
    >>> fsspec.filesystem("memory").pipe("/check-doc/m1.csv", b"time,raw_signal\\n0.0,1.0\\n")
    >>> check_input("memory://check-doc/m1.csv", {"signal_col": "raw_signl",
    ...             "isosbestic_col": None}, format="photometry-csv")
    Traceback (most recent call last):
    ...
    neurobatch.errors.InputError: 'memory://check-doc/m1.csv' has no column 'raw_signl' (signal_col; did you mean 'raw_signal'?); its columns: 'time', 'raw_signal'
    """
    spec = _spec(format)
    if spec.check is None:
        return None
    arguments = coerce_arguments(loader_arguments, spec.arguments, fmt=format)
    return spec.check(url, arguments, storage_options=storage_options)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def check_inputs(
    manifest: pd.DataFrame,
    *,
    storage_options: Mapping[str, Any] | None = None,
    max_workers: int = 16,
) -> list[str]:
    """Check every input of a manifest against its loader arguments, headers only.

    Each distinct (input, format, arguments) of the manifest whose format has a check
    (:attr:`LoaderSpec.check`) is checked once, on a pool of threads (the reads are small
    and wait on storage): a CSV's first line, a Parquet file's footer, an NWB file's
    structure, a plugin's own check.

    Parameters
    ----------
    manifest : pandas.DataFrame
        What :func:`neurobatch.io.discover.discover` returns: ``url``, ``format`` and
        ``loader_arguments`` columns.
    storage_options : mapping, optional
        Passed to fsspec (the pipeline's ``input.storage_options``).
    max_workers : int, default 16
        The most headers read at once.

    Returns
    -------
    list of str
        One line per input that fails (in the manifest's order, each once): the line its
        load would fail with. Empty when every input passes.

    Examples
    --------
    >>> import fsspec
    >>> fs = fsspec.filesystem("memory")
    >>> fs.pipe("/checks-doc/a.csv", b"time,raw_signal\\n0.0,1.0\\n")
    >>> fs.pipe("/checks-doc/b.csv", b"time,signal\\n0.0,1.0\\n")
    >>> arguments = {"signal_col": "raw_signal", "isosbestic_col": None}
    >>> manifest = pd.DataFrame({
    ...     "url": ["memory://checks-doc/a.csv", "memory://checks-doc/b.csv"],
    ...     "format": "photometry-csv", "loader_arguments": [arguments, arguments]})
    >>> for line in check_inputs(manifest):
    ...     print(line)
    'memory://checks-doc/b.csv' has no column 'raw_signal' (signal_col; did you mean 'signal'?); its columns: 'time', 'signal'
    """
    jobs: dict[tuple[str, str, str], tuple[str, str, Any]] = {}
    for url, fmt, arguments in manifest[["url", "format", "loader_arguments"]].itertuples(
        index=False
    ):
        if _spec(str(fmt)).check is not None:
            key = (str(url), str(fmt), json.dumps(arguments, sort_keys=True, default=str))
            jobs.setdefault(key, (str(url), str(fmt), arguments))
    if not jobs:
        return []

    def one(job: tuple[str, str, Any]) -> str | None:
        url, fmt, arguments = job
        try:
            check_input(url, arguments, format=fmt, storage_options=storage_options)
        except (ConfigError, InputError) as e:
            return str(e)
        except Exception as e:  # noqa: BLE001 - a library's or a plugin's failure: one line
            return (
                f"{url!r}: the check of format {fmt!r} failed: {type(e).__name__}: {_one_line(e)}"
            )
        return None

    logger.debug("checking the headers of %d inputs", len(jobs))
    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(jobs)))) as pool:
        lines = [line for line in pool.map(one, jobs.values()) if line is not None]
    return list(dict.fromkeys(lines))
