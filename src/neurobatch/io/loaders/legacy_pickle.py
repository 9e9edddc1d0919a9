"""The legacy pickle of the retinal-ganglion-cell STA pipeline (format ``rgc-pickle``).

Labs migrating from the retinal-ganglion-cell spike-triggered-average pipeline keep their
recordings in one pickle, ``ret1_data.pkl``, the layout that the DataJoint STRF/STA
solutions read (e.g. https://github.com/guzman-raphael/dj-neuron-sta.python-module,
``dj_neuron/create.py`` and ``main.py``)::

    [                                   # one dict per session
        {
            "subject_name": "KO (chx10)",
            "session_date": "2008-06-06",
            "sample_number": 3,
            "stimulations": [           # one dict per stimulus movie shown
                {
                    "movie": ndarray (x, y, frame),   # x blocks, y blocks, frames
                    "fps": 59.9815,                   # frames per second
                    "n_frames": 4125,
                    "pixel_size": 6.0,                # size of a pixel on the retina
                    "stimulus_onset": 0.996,          # s, on the spikes' clock
                    "stim_width": 640, "stim_height": 480,
                    "x_block_size": 10, "y_block_size": 10,
                    "spikes": [ndarray, ...],         # spike times (s), one array per unit
                },
            ],
        },
    ]

The loader accepts that list, one session dict, or one stimulation dict (the "dict with the
stimulus movie, its fps, pixel size, stimulus onset and per-unit spike times"); ``session``
and ``stimulation`` pick one where there are several. Left unset where there are several,
discovery makes an item of each (:func:`enumerate_rgc_pickle`). ``spikes`` may also be a mapping of
unit id to spike times. Only ``movie``, ``fps``, ``stimulus_onset`` and ``spikes`` are
required; the other keys become attributes when present.

Unpickling runs code that the file names, so the file is read only when the loader's
arguments say ``allow_pickle: true``; otherwise it is refused before it is opened. A pickle
cannot be read in part: the file is read whole, once, on load; its movie and spikes are then
handed on as dask arrays chunked along frames from the memory budget.
"""

from __future__ import annotations

import logging
import math
import pickle
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import dask.array as da
import fsspec
import numpy as np
import xarray as xr
from numpy.typing import NDArray

from neurobatch.config.lazy_arguments import RGCPickleArguments
from neurobatch.errors import ConfigError, InputError, InputNotFoundError
from neurobatch.io.loaders._common import coerce_arguments
from neurobatch.io.loaders._lazy import (
    DEFAULT_CHUNK_MEMORY,
    merge_sidecar,
    time_chunks,
)

logger = logging.getLogger(__name__)

__all__ = ["FORMAT", "enumerate_rgc_pickle", "load_rgc_pickle"]

FORMAT = "rgc-pickle"

#: Keys a stimulation dict must have.
REQUIRED_KEYS = ("movie", "fps", "stimulus_onset", "spikes")
#: Keys copied into attrs when present (numbers or strings).
STIMULATION_ATTRS = ("pixel_size", "stim_width", "stim_height", "x_block_size", "y_block_size")
SESSION_ATTRS = ("subject_name", "session_date", "sample_number")


def _read(url: str, storage_options: Mapping[str, Any]) -> Any:
    fs, path = fsspec.core.url_to_fs(url, **dict(storage_options))
    try:
        handle = fs.open(str(path), "rb")
    except FileNotFoundError:
        raise InputNotFoundError(f"input {url!r} does not exist") from None
    with handle, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            # latin1: what NumPy arrays pickled by Python 2 need; no effect on Python 3 pickles
            content = pickle.load(handle, encoding="latin1")
        except Exception as e:  # unpickling raises anything the file's code raises
            raise InputError(
                f"cannot unpickle {url!r}: {' '.join(str(e).split()) or type(e).__name__}"
            ) from e
    for warning in caught:
        logger.warning("unpickling %s: %s", url, warning.message)
    return content


def _pick(items: Any, index: int | None, *, what: str, argument: str, url: str) -> Any:
    if not isinstance(items, Sequence) or isinstance(items, str | bytes):
        raise InputError(f"{url!r}: {what} is a {type(items).__name__}; expected a list")
    if not items:
        raise InputError(f"{url!r} holds no {what}")
    if index is None:
        if len(items) > 1:
            raise InputError(
                f"{url!r} holds {len(items)} {what}; pick one with loader.{argument} (0 to "
                f"{len(items) - 1})"
            )
        return items[0]
    if index >= len(items):
        raise InputError(
            f"{url!r} holds {len(items)} {what}; loader.{argument}={index} is out of range"
        )
    return items[index]


def _stimulation(content: Any, args: RGCPickleArguments, url: str) -> tuple[Any, Any]:
    """The stimulation dict and its session dict (None when the file holds a stimulation)."""
    session = None
    if isinstance(content, Sequence) and not isinstance(content, str | bytes):
        session = _pick(content, args.session, what="sessions", argument="session", url=url)
        content = session
    elif args.session is not None:
        raise InputError(
            f"{url!r} holds one {type(content).__name__}, not a list of sessions; "
            "unset loader.session"
        )
    if not isinstance(content, Mapping):
        raise InputError(
            f"{url!r} holds a {type(content).__name__}; expected the legacy layout: a list of "
            "sessions, a session dict with 'stimulations', or a stimulation dict with 'movie'"
        )
    if "stimulations" in content:
        session = content
        content = _pick(
            content["stimulations"],
            args.stimulation,
            what="stimulations",
            argument="stimulation",
            url=url,
        )
        if not isinstance(content, Mapping):
            raise InputError(
                f"{url!r}: a stimulation is a {type(content).__name__}; expected a dict"
            )
    elif args.stimulation is not None:
        raise InputError(
            f"{url!r} holds one stimulation (no 'stimulations' list); unset loader.stimulation"
        )
    missing = [key for key in REQUIRED_KEYS if key not in content]
    if missing:
        keys = ", ".join(repr(str(k)) for k in content) or "none"
        raise InputError(
            f"{url!r}: the stimulation has no {', '.join(repr(k) for k in missing)}; its keys: "
            f"{keys}"
        )
    return content, session


def _indices(items: Any, index: int | None) -> list[int | None]:
    """The entries of a list to make items of: ``index``, or each of several (None: one)."""
    if index is not None or not _is_list(items) or len(items) < 2:
        return [index]
    return list(range(len(items)))


def _is_list(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str | bytes)


def enumerate_rgc_pickle(
    url: str,
    arguments: RGCPickleArguments | Mapping[str, Any],
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> list[tuple[str, dict[str, Any]]]:
    """The items a legacy pickle holds: one per session and stimulation the arguments leave open.

    The file is read (whole: a pickle cannot be read in part) only when ``session`` or
    ``stimulation`` is unset and ``allow_pickle`` is true; otherwise, and for a file of one
    session with one stimulation, it is one item as the arguments say.

    Parameters
    ----------
    url : str
        The pickle, a local path or any fsspec URL.
    arguments : RGCPickleArguments or mapping
        The loader's arguments.
    storage_options : mapping, optional
        Passed to fsspec.

    Returns
    -------
    list of (str, dict)
        For each item, a label (``session1-stimulation0``, naming only what varies; empty
        for a single item) and the arguments to set (``session``, ``stimulation``).

    Examples
    --------
    >>> import fsspec, pickle
    >>> stimulation = {"movie": np.zeros((2, 2, 3)), "fps": 10.0, "stimulus_onset": 0.0,
    ...                "spikes": [np.array([0.1])]}
    >>> sessions = [{"subject_name": "KO", "stimulations": [stimulation, stimulation]},
    ...             {"subject_name": "WT", "stimulations": [stimulation]}]
    >>> fsspec.filesystem("memory").pipe("/rgc-enum/ret1_data.pkl", pickle.dumps(sessions))
    >>> for label, update in enumerate_rgc_pickle(
    ...         "memory://rgc-enum/ret1_data.pkl", {"allow_pickle": True}):
    ...     print(label, update)
    session0-stimulation0 {'session': 0, 'stimulation': 0}
    session0-stimulation1 {'session': 0, 'stimulation': 1}
    session1 {'session': 1}
    >>> enumerate_rgc_pickle("memory://rgc-enum/ret1_data.pkl",
    ...                      {"allow_pickle": True, "session": 1})
    [('', {})]
    """
    args = coerce_arguments(arguments, RGCPickleArguments, fmt=FORMAT)
    single: list[tuple[str, dict[str, Any]]] = [("", {})]
    if not args.allow_pickle or (args.session is not None and args.stimulation is not None):
        return single
    content = _read(url, storage_options or {})
    sessions = content if _is_list(content) else [content]
    found = []
    for session in _indices(content, args.session):
        chosen = sessions[session if session is not None else 0] if sessions else None
        if session is not None and session >= len(sessions):
            return single  # out of range: the load says so
        stimulations = chosen.get("stimulations") if isinstance(chosen, Mapping) else None
        for stimulation in _indices(stimulations, args.stimulation):
            update = {}
            if session is not None and args.session is None:
                update["session"] = session
            if stimulation is not None and args.stimulation is None:
                update["stimulation"] = stimulation
            label = "-".join(f"{key}{value}" for key, value in update.items())
            found.append((label, update))
    return found if len(found) > 1 else single


def _number(value: Any, key: str, url: str, *, positive: bool = False) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{url!r}: {key!r} is {value!r}; expected a number") from None
    if not math.isfinite(number) or (positive and number <= 0):
        expected = "a positive number" if positive else "a finite number"
        raise InputError(f"{url!r}: {key!r} is {value!r}; expected {expected}")
    return number


def _json_scalar(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _spikes(spikes: Any, url: str) -> tuple[NDArray[np.float64], NDArray[Any], NDArray[Any]]:
    """Spike times, the unit of each spike and every unit id."""
    if isinstance(spikes, Mapping):
        ids = list(spikes.keys())
        trains = list(spikes.values())
    elif isinstance(spikes, Sequence | np.ndarray) and not isinstance(spikes, str | bytes):
        trains = list(spikes)
        ids = list(range(len(trains)))
    else:
        raise InputError(
            f"{url!r}: 'spikes' is a {type(spikes).__name__}; expected a list of spike-time "
            "arrays, one per unit (or a mapping of unit id to spike times)"
        )
    times = []
    for unit, train in zip(ids, trains, strict=True):
        try:
            values = np.asarray(train, dtype=np.float64).ravel()
        except (TypeError, ValueError):
            raise InputError(f"{url!r}: the spike times of unit {unit!r} are not numbers") from None
        if not np.isfinite(values).all():
            raise InputError(f"{url!r}: the spike times of unit {unit!r} hold NaN or inf")
        times.append(values)
    unit_ids = np.asarray(ids)
    if unit_ids.dtype.kind not in "iuU":
        unit_ids = np.asarray([str(u) for u in ids])
    spike_time = np.concatenate(times) if times else np.empty(0, dtype=np.float64)
    unit = np.repeat(unit_ids, [t.size for t in times]) if times else unit_ids[:0]
    return spike_time, unit, unit_ids


def load_rgc_pickle(
    url: str,
    arguments: RGCPickleArguments | Mapping[str, Any],
    *,
    storage_options: Mapping[str, Any] | None = None,
    chunk_memory: int = DEFAULT_CHUNK_MEMORY,
) -> xr.Dataset:
    """Load a legacy retinal-ganglion STA pickle into a Movie Dataset (with ``allow_pickle``).

    Parameters
    ----------
    url : str
        The pickle, a local path or any fsspec URL.
    arguments : RGCPickleArguments or mapping
        The loader's arguments; ``allow_pickle`` must be true (a mapping is validated; it
        may carry ``format``).
    storage_options : mapping, optional
        Passed to fsspec.
    chunk_memory : int, default 64 MiB
        Bytes per chunk along frames (at least one frame) and spikes.

    Returns
    -------
    xarray.Dataset
        ``frames(frame, y, x)`` (the movie, transposed from ``movie_dims``) with
        ``frame_time = stimulus_onset + arange(n) / fps``; ``spike_time(spike)`` (float64 s)
        with ``unit(spike)`` and ``unit_ids(unit)`` (every unit, also those without spikes;
        ids are the positions in ``spikes``, as the legacy pipeline numbers its neurons);
        attrs ``fps``, ``stimulus_onset``, ``n_frames``, ``source``, ``pixel_size`` and the
        other keys present (``stim_width``, ``x_block_size``, ..., ``subject_name``,
        ``session_date``, ``sample_number``), and the sidecar's metadata. Dask-backed.

    Raises
    ------
    neurobatch.errors.ConfigError
        Without ``allow_pickle: true`` (the file is not opened), or for invalid arguments.
    neurobatch.errors.InputNotFoundError
        If the file does not exist.
    neurobatch.errors.InputError
        If the file cannot be unpickled, does not have the legacy layout (with what it
        has), needs ``session`` or ``stimulation`` to pick one of several, or holds a
        movie, rate, onset or spike times that are not numbers.

    Examples
    --------
    >>> load_rgc_pickle("memory://rgc-doc/ret1_data.pkl", {})
    Traceback (most recent call last):
    ...
    neurobatch.errors.ConfigError: refusing to unpickle 'memory://rgc-doc/ret1_data.pkl': unpickling runs code from the file; set loader.allow_pickle: true only for files you trust
    >>> import fsspec, pickle
    >>> stimulation = {"movie": np.zeros((4, 3, 5)), "fps": 10.0, "stimulus_onset": 1.0,
    ...                "pixel_size": 6.0, "spikes": [np.array([1.25, 1.3]), np.array([])]}
    >>> fsspec.filesystem("memory").pipe("/rgc-doc/ret1_data.pkl", pickle.dumps(stimulation))
    >>> ds = load_rgc_pickle("memory://rgc-doc/ret1_data.pkl", {"allow_pickle": True})
    >>> ds.frames.shape, ds.frame_time.values[:2].tolist(), ds.unit_ids.values.tolist()
    ((5, 3, 4), [1.0, 1.1], [0, 1])
    """
    args = coerce_arguments(arguments, RGCPickleArguments, fmt=FORMAT)
    if not args.allow_pickle:
        raise ConfigError(
            f"refusing to unpickle {url!r}: unpickling runs code from the file; set "
            "loader.allow_pickle: true only for files you trust"
        )
    so = dict(storage_options or {})
    logger.info("unpickling %s (allow_pickle is set)", url)
    stimulation, session = _stimulation(_read(url, so), args, url)

    movie = np.asarray(stimulation["movie"])
    if movie.ndim != 3 or movie.dtype.hasobject or movie.dtype.kind not in "biuf":
        raise InputError(
            f"{url!r}: 'movie' is a {movie.ndim}-D array of {movie.dtype}; expected a 3-D "
            f"numeric array ({', '.join(args.movie_dims)})"
        )
    frames = movie.transpose([args.movie_dims.index(d) for d in ("frame", "y", "x")])
    n = int(frames.shape[0])
    fps = _number(stimulation["fps"], "fps", url, positive=True)
    onset = _number(stimulation["stimulus_onset"], "stimulus_onset", url)
    if "n_frames" in stimulation and int(stimulation["n_frames"]) != n:
        raise InputError(
            f"{url!r}: 'n_frames' is {stimulation['n_frames']} but 'movie' has {n} frames "
            f"along its axis {args.movie_dims.index('frame')} (movie_dims {args.movie_dims})"
        )
    spike_time, unit, unit_ids = _spikes(stimulation["spikes"], url)

    frame_chunks = time_chunks(
        n,
        bytes_per_row=int(frames[0].nbytes) if n else 1,
        chunk_memory=chunk_memory,
        minimum=1,
    )
    spike_chunks = time_chunks(spike_time.size, bytes_per_row=8, chunk_memory=chunk_memory)
    attrs: dict[str, Any] = {
        "fps": fps,
        "stimulus_onset": onset,
        "n_frames": n,
        "source": url,
    }
    for key in STIMULATION_ATTRS:
        if key in stimulation:
            attrs[key] = _json_scalar(stimulation[key])
    if session is not None:
        for key in SESSION_ATTRS:
            if key in session:
                attrs[key] = _json_scalar(session[key])
    attrs = merge_sidecar(attrs, url, args, storage_options=so)
    lazy_frames = da.from_array(frames, chunks=(frame_chunks, -1, -1))  # type: ignore[no-untyped-call]
    lazy_spikes = da.from_array(spike_time, chunks=(spike_chunks,))  # type: ignore[no-untyped-call]
    return xr.Dataset(
        {
            "frames": (("frame", "y", "x"), lazy_frames),
            "spike_time": ("spike", lazy_spikes),
        },
        coords={
            "frame_time": ("frame", onset + np.arange(n, dtype=np.float64) / fps),
            "unit": ("spike", unit),
            "unit_ids": ("unit", unit_ids),
        },
        attrs=attrs,
    )
