"""Raw interleaved binary recordings (format ``raw-binary``, target ``file``), read lazily.

Any headerless (or fixed-header, ``offset``) interleaved file, described by the arguments
``n_channels``, ``dtype``, ``sampling_rate`` and optionally ``gain_uv``, returned as the
ephys Recording Dataset ``traces(time, channel)`` in the file's own integer or float type,
dask-backed and chunked along time from a memory budget (``chunk_memory`` bytes per chunk of
the samples as the Recording stores them, with their time stamps, so that ingest writes the
chunks unchanged). Local files are memory-mapped, others read by byte ranges (see
:class:`~neurobatch.io.loaders._lazy.FileArray`). SpikeGLX files, interleaved too, have
their own loader in :mod:`neurobatch.io.loaders.spikeglx`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr

from neurobatch.config.lazy_arguments import RawBinaryArguments
from neurobatch.io.loaders._common import coerce_arguments
from neurobatch.io.loaders._lazy import (
    DEFAULT_CHUNK_MEMORY,
    _check_multiple,
    _file_size,
    _fingerprint,
    _fs,
    _recording,
    _traces,
    merge_sidecar,
)

logger = logging.getLogger(__name__)

__all__ = [
    "FORMAT_RAW",
    "load_raw_binary",
]

FORMAT_RAW = "raw-binary"


def load_raw_binary(
    url: str,
    arguments: RawBinaryArguments | Mapping[str, Any],
    *,
    storage_options: Mapping[str, Any] | None = None,
    chunk_memory: int = DEFAULT_CHUNK_MEMORY,
) -> xr.Dataset:
    """Load a raw interleaved binary file lazily into an ephys Recording Dataset.

    Parameters
    ----------
    url : str
        The file: a local path (memory-mapped) or any fsspec URL (read by byte ranges).
    arguments : RawBinaryArguments or mapping
        The layout (a mapping is validated; it may carry ``format``).
    storage_options : mapping, optional
        Passed to fsspec.
    chunk_memory : int, default 64 MiB
        Bytes per time chunk of the samples as stored (with their time stamps; at least
        4096 samples).

    Returns
    -------
    xarray.Dataset
        ``traces(time, channel)`` in the stored type (native byte order), dask-backed;
        ``time = arange(n) / sampling_rate + t0``; ``channel`` 0, 1, ... or
        ``channel_names``; attrs ``sampling_rate``, ``source``, ``n_samples``,
        ``event_names`` (empty), ``gain_uv`` (when given) and the sidecar's metadata.

    Raises
    ------
    neurobatch.errors.InputNotFoundError
        If the file does not exist.
    neurobatch.errors.InputError
        If its size (less ``offset``) is not a whole number of samples, it has none, or the
        sidecar is bad.
    neurobatch.errors.ConfigError
        If ``arguments`` is an invalid mapping.

    Examples
    --------
    >>> import fsspec
    >>> fsspec.filesystem("memory").pipe("/raw-doc/rec.dat",
    ...                                   np.arange(8, dtype="<i2").tobytes())
    >>> ds = load_raw_binary("memory://raw-doc/rec.dat",
    ...                      {"n_channels": 2, "dtype": "int16", "sampling_rate": 10.0})
    >>> ds.traces.dtype, ds.traces.values[:, 1].tolist(), ds.time.values.tolist()
    (dtype('int16'), [1, 3, 5, 7], [0.0, 0.1, 0.2, 0.3])
    >>> load_raw_binary("memory://raw-doc/rec.dat",
    ...                 {"n_channels": 3, "dtype": "int16", "sampling_rate": 10.0})
    Traceback (most recent call last):
    ...
    neurobatch.errors.InputError: 'memory://raw-doc/rec.dat' has 16 bytes, not a multiple of 6 (3 channels x 2 bytes of int16); is the file truncated, or are n_channels and dtype right?
    """
    args = coerce_arguments(arguments, RawBinaryArguments, fmt=FORMAT_RAW)
    so = dict(storage_options or {})
    fs, path = _fs(url, so)
    size = _file_size(fs, path, url)
    dtype = np.dtype(args.dtype)
    _check_multiple(url, size, args.offset, args.n_channels, dtype)
    traces = _traces(
        url,
        n_channels=args.n_channels,
        dtype=dtype,
        offset=args.offset,
        storage_options=so,
        chunk_memory=chunk_memory,
        size=size,
        fingerprint=_fingerprint(fs, path),
        name="raw-binary",
    )
    channel = (
        np.arange(args.n_channels)
        if args.channel_names is None
        else np.asarray(args.channel_names, dtype=np.str_)
    )
    attrs: dict[str, Any] = {
        "sampling_rate": float(args.sampling_rate),
        "source": url,
        "n_samples": int(traces.shape[0]),
        "event_names": [],
    }
    if args.gain_uv is not None:
        attrs["gain_uv"] = float(args.gain_uv)
    attrs = merge_sidecar(attrs, url, args, storage_options=so)
    return _recording(
        traces,
        sampling_rate=args.sampling_rate,
        t0=args.t0,
        channel=channel,
        channel_coords={},
        attrs=attrs,
    )
