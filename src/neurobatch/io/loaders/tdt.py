"""TDT block folders (format ``tdt``, target ``folder``), through the ``tdt`` package.

As PhoPro's ``TDTLoader``: the signal is the stream store ``signal_label + box`` (e.g.
``_465`` + ``A``), the isosbestic channel ``isosbestic_label + box``, the events the onsets of
the epoc stores ``box + label``; time is ``start_time + arange(n) / fs``. An event label
without an epoc store has no occurrence and is listed in ``attrs["missing_events"]``. The
sidecar, if any, lies inside the block folder and is indexed by the box by default.

``tdt.read_block`` needs a local folder: a block behind any other fsspec URL is copied to a
temporary folder first. Its warnings are logged (at WARNING) and its printing at DEBUG.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import posixpath
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import fsspec
import numpy as np
import xarray as xr
from fsspec.implementations.local import LocalFileSystem

from neurobatch.config.arguments import TDTArguments
from neurobatch.errors import InputError, InputNotFoundError
from neurobatch.io.loaders._common import closest, coerce_arguments
from neurobatch.io.loaders._photometry import build_recording
from neurobatch.io.loaders.sidecar import load_annotation

logger = logging.getLogger(__name__)

__all__ = ["FORMAT", "load_tdt"]

FORMAT = "tdt"


def _import_tdt() -> Any:
    try:
        import tdt  # type: ignore[import-untyped, import-not-found, unused-ignore]
    except ImportError as e:
        raise ImportError(
            "format 'tdt' needs the 'tdt' package: pip install 'neurobatch[tdt]'"
        ) from e
    return tdt


@contextlib.contextmanager
def _local_block(fs: Any, path: str, url: str) -> Iterator[str]:
    """The block as a local folder: itself, or a temporary copy of a remote one."""
    if not fs.isdir(path):
        if fs.exists(path):
            raise InputError(f"input {url!r} is a file; format {FORMAT!r} reads block folders")
        raise InputNotFoundError(f"input {url!r} does not exist")
    files = [str(f) for f in fs.find(path)]
    tsq = [f for f in files if f.endswith(".tsq") and not posixpath.basename(f).startswith("._")]
    if not tsq:
        raise InputError(f"{url!r} holds no .tsq file; expected a TDT block folder")
    if len(tsq) > 1:
        names = ", ".join(posixpath.relpath(f, path) for f in tsq)
        raise InputError(f"{url!r} holds {len(tsq)} .tsq files ({names}); expected one block")
    if isinstance(fs, LocalFileSystem):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="neurobatch-tdt-") as tmp:
        local = os.path.join(tmp, posixpath.basename(path.rstrip("/")) or "block")
        logger.debug("copying TDT block %s to %s", url, local)
        for remote in files:
            target = os.path.join(local, *posixpath.relpath(remote, path).split("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            fs.get_file(remote, target)
        yield local


def _read_block(folder: str, url: str) -> Any:
    tdt = _import_tdt()
    printed = io.StringIO()
    # tdt prints progress and warns freely: keep both off the console, in our log
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(printed):
        warnings.simplefilter("always")
        try:
            block = tdt.read_block(folder, evtype=["streams", "epocs"])
        except Exception as e:  # tdt raises bare Exceptions and assertions
            raise InputError(
                f"cannot read TDT block {url!r}: {' '.join(str(e).split()) or type(e).__name__}"
            ) from e
    for warning in caught:
        logger.warning("tdt, reading %s: %s", url, warning.message)
    if printed.getvalue().strip():
        logger.debug("tdt, reading %s: %s", url, printed.getvalue().strip())
    if block is None:
        raise InputError(f"cannot read TDT block {url!r}: tdt found no data")
    return block


def _stream(
    block: Any, name: str, role: str, url: str
) -> tuple[np.ndarray[Any, Any], float, float]:
    streams = sorted(block.streams.keys())
    if name not in streams:
        guess = closest(name, streams)
        hint = f"; did you mean {guess!r}?" if guess else ""
        listed = ", ".join(repr(s) for s in streams) or "none"
        raise InputError(
            f"TDT block {url!r} has no stream store {name!r} ({role} + box){hint} "
            f"(its streams: {listed})"
        )
    store = block.streams[name]
    data = np.asarray(store.data, dtype=np.float64)
    if data.ndim != 1:
        raise InputError(
            f"TDT block {url!r}: stream {name!r} has {data.shape[0]} channels; expected one"
        )
    return data, float(store.fs), float(store.start_time)


def load_tdt(
    url: str,
    arguments: TDTArguments | Mapping[str, Any],
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """Load one TDT block folder into a Recording Dataset, as PhoPro's ``TDTLoader``.

    Parameters
    ----------
    url : str
        The block folder: a local path or any fsspec URL (copied locally to be read).
    arguments : TDTArguments or mapping
        The loader's arguments (a mapping is validated; it may carry ``format``).
    storage_options : mapping, optional
        Passed to fsspec.

    Returns
    -------
    xarray.Dataset
        The Recording Dataset: ``signal(time)``, ``isosbestic(time)`` (absent without
        ``isosbestic_label``), ``time = start_time + arange(n) / fs`` (downsampled as PhoPro
        does), events from the epoc onsets; attrs ``sampling_rate``, ``event_names``,
        ``source``, ``n_samples``, ``box``, ``missing_events`` and the sidecar's metadata.
        When the two streams differ in length, both are cut to the shorter (logged).

    Raises
    ------
    neurobatch.errors.InputNotFoundError
        If the folder does not exist.
    neurobatch.errors.InputError
        A folder without exactly one ``.tsq``, a block ``tdt`` cannot read, a missing or
        multi-channel stream store, streams at different rates, or a bad sidecar.
    ImportError
        If the ``tdt`` package is not installed.

    Examples
    --------
    >>> import fsspec
    >>> fsspec.filesystem("memory").pipe("/tdt-doc/block-1/notes.txt", b"not a block")
    >>> load_tdt("memory://tdt-doc/block-1",
    ...          {"box": "A", "signal_label": "_465", "isosbestic_label": "_405"})
    Traceback (most recent call last):
    ...
    neurobatch.errors.InputError: 'memory://tdt-doc/block-1' holds no .tsq file; expected a TDT block folder
    """
    args = coerce_arguments(arguments, TDTArguments, fmt=FORMAT)
    so = dict(storage_options or {})
    fs, path = fsspec.core.url_to_fs(url, **so)
    path = str(path).rstrip("/") or "/"
    key = None if args.annotation_key is None else args.annotation_key.replace("{box}", args.box)
    with _local_block(fs, path, url) as folder:
        metadata, sidecar_url = load_annotation(
            url, args, target="folder", key=key, storage_options=so
        )
        block = _read_block(folder, url)

    signal_name, *iso_name = args.stream_names()
    signal, fs_signal, start = _stream(block, signal_name, "signal_label", url)
    isosbestic = None
    if iso_name:
        isosbestic, fs_iso, _ = _stream(block, iso_name[0], "isosbestic_label", url)
        if fs_iso != fs_signal:
            raise InputError(
                f"TDT block {url!r}: streams {signal_name!r} ({fs_signal:g} Hz) and "
                f"{iso_name[0]!r} ({fs_iso:g} Hz) have different sampling rates"
            )
        if isosbestic.size != signal.size:
            n = min(signal.size, isosbestic.size)
            logger.warning(
                "TDT block %s: streams %r (%d samples) and %r (%d) differ in length; "
                "keeping the first %d samples of both",
                url,
                signal_name,
                signal.size,
                iso_name[0],
                isosbestic.size,
                n,
            )
            signal, isosbestic = signal[:n], isosbestic[:n]
    if fs_signal <= 0:
        raise InputError(f"TDT block {url!r}: stream {signal_name!r} has sampling rate {fs_signal}")
    time = start + np.arange(signal.size, dtype=np.float64) / fs_signal

    events: dict[str, np.ndarray[Any, Any]] = {}
    missing = []
    epocs = block.epocs
    for label in args.event_labels:
        store = args.box + label
        if hasattr(epocs, store):  # as PhoPro: a tdt StructType keeps stores as attributes
            events[label] = np.asarray(epocs[store].onset, dtype=np.float64).ravel()
        else:
            missing.append(label)
    if missing:
        logger.info("TDT block %s has no epoc store for %s: no such events", url, missing)
    return build_recording(
        source=url,
        time=time,
        signal=signal,
        isosbestic=isosbestic,
        events=events,
        arguments=args,
        names={
            "time": f"stream {signal_name!r} time",
            "signal": f"stream {signal_name!r}",
            "isosbestic": f"stream {iso_name[0]!r}" if iso_name else "isosbestic",
        },
        attrs={"box": args.box, "missing_events": missing},
        sidecar=metadata,
        sidecar_source=sidecar_url,
    )
