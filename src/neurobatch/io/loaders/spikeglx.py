"""SpikeGLX recordings (format ``spikeglx``, target ``file``), read lazily.

A SpikeGLX binary (``*.ap.bin``, ``*.lf.bin``, ``*.nidq.bin``, ``*.obx.bin``) with its
``.meta`` beside it, returned as the ephys Recording Dataset ``traces(time, channel)``
(``int16``), dask-backed and chunked along time from a memory budget (``chunk_memory`` bytes
per chunk of the samples as the Recording stores them, with their time stamps, so that
ingest writes the chunks unchanged). The meta gives the channel count (``nSavedChans``), the
sampling rate (``imSampRate``, ``niSampRate`` or ``obSampRate``), the expected file size
(``fileSizeBytes``), which channels were saved (``snsSaveChanSubset`` with the acquired
counts ``acqApLfSy``, ``acqMnMaXaDw`` or ``acqXaDwSy``) and the conversion to volts, as
SpikeGLX's own ``readSGLX.py`` computes it: ``imAiRangeMax / imMaxInt`` (512 when absent)
divided by the channel's gain (the ``imroTbl`` entry of Neuropixels 1.0-type probes,
``imChan0apGain``/``imChan0lfGain``, or the fixed gain of the probe type: 80 for types 21
and 24, 100 for 2013, 500/250 for 1110); for NI-DAQ ``niAiRangeMax / niMaxInt`` (32768)
divided by ``niMNGain``, ``niMAGain`` or 1. Samples are ``int16``.

Local files are memory-mapped, others read by byte ranges (see
:class:`~neurobatch.io.loaders._lazy.FileArray`).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
from numpy.typing import NDArray

from neurobatch.config.lazy_arguments import SpikeGLXArguments
from neurobatch.errors import InputError, InputNotFoundError
from neurobatch.io.loaders._common import coerce_arguments, note_read
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
    "FORMAT_SPIKEGLX",
    "load_spikeglx",
    "read_spikeglx_meta",
]

FORMAT_SPIKEGLX = "spikeglx"

# probe types whose imroTbl holds per-channel AP and LF gains (readSGLX.py's np1_imro list)
_NP1_IMRO = frozenset({0, 1020, 1030, 1100, 1120, 1121, 1122, 1123, 1200, 1300})
# probe types with a fixed gain and no imChan0apGain in older metas: (AP gain, LF gain)
_FIXED_GAINS: dict[int, tuple[float, float | None]] = {
    21: (80.0, None),
    24: (80.0, None),
    2013: (100.0, None),
    1110: (500.0, 250.0),
}
# per stream: the rate key, the acquired-count key with its channel kinds, range and max-int
_STREAMS: dict[str, tuple[str, str, tuple[str, ...], str, str, int]] = {
    "imec": ("imSampRate", "acqApLfSy", ("ap", "lf", "sync"), "imAiRangeMax", "imMaxInt", 512),
    "nidq": (
        "niSampRate",
        "acqMnMaXaDw",
        ("mn", "ma", "xa", "xd"),
        "niAiRangeMax",
        "niMaxInt",
        32768,
    ),
    "obx": ("obSampRate", "acqXaDwSy", ("xa", "xd", "sync"), "obAiRangeMax", "obMaxInt", 32768),
}
_DIGITAL = frozenset({"sync", "xd"})
#: SpikeGLX stores every sample as little-endian int16.
_SAMPLE_DTYPE = np.dtype("<i2")


def _meta_url(url: str) -> str:
    stem, sep, query = url.partition("?")
    if not stem.endswith(".bin"):
        raise InputError(
            f"{url!r} is not a SpikeGLX binary; format {FORMAT_SPIKEGLX!r} reads '*.bin' files "
            "with their '.meta' beside them"
        )
    return stem[: -len(".bin")] + ".meta" + sep + query


def read_spikeglx_meta(
    url: str, *, storage_options: Mapping[str, Any] | None = None
) -> dict[str, str]:
    """Read a SpikeGLX ``.meta`` file into a mapping of its tags (``~`` prefixes dropped).

    Parameters
    ----------
    url : str
        The ``.meta`` file, a local path or any fsspec URL.
    storage_options : mapping, optional
        Passed to fsspec.

    Returns
    -------
    dict of str to str
        Every ``tag=value`` line, values as written.

    Raises
    ------
    neurobatch.errors.InputNotFoundError
        If the file does not exist.
    neurobatch.errors.InputError
        If a line is not ``tag=value`` or the file is not text.

    Examples
    --------
    >>> import fsspec
    >>> fsspec.filesystem("memory").pipe("/sglx-doc/a.meta",
    ...                                   b"nSavedChans=3\\n~imroTbl=(0,2)(0 0 0 500 250)\\n")
    >>> read_spikeglx_meta("memory://sglx-doc/a.meta")
    {'nSavedChans': '3', 'imroTbl': '(0,2)(0 0 0 500 250)'}
    """
    fs, path = _fs(url, storage_options)
    note_read(url)
    try:
        raw = fs.cat_file(path)
    except FileNotFoundError:
        raise InputNotFoundError(f"SpikeGLX meta file {url!r} does not exist") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"SpikeGLX meta file {url!r} is not text ({e})") from None
    meta: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        tag, sep, value = line.partition("=")
        if not sep or not tag.strip():
            raise InputError(
                f"SpikeGLX meta file {url!r}, line {number}: {line.strip()[:60]!r} is not "
                "'tag=value'"
            )
        meta[tag.strip().lstrip("~")] = value.strip()
    return meta


def _number(meta: Mapping[str, str], key: str, meta_url: str) -> float:
    if key not in meta:
        raise InputError(f"SpikeGLX meta file {meta_url!r} has no {key!r}")
    try:
        value = float(meta[key])
    except ValueError:
        raise InputError(
            f"SpikeGLX meta file {meta_url!r}: {key}={meta[key]!r} is not a number"
        ) from None
    if not math.isfinite(value):
        raise InputError(f"SpikeGLX meta file {meta_url!r}: {key}={meta[key]!r} is not finite")
    return value


def _integer(meta: Mapping[str, str], key: str, meta_url: str) -> int:
    value = _number(meta, key, meta_url)
    if value != int(value) or value < 0:
        raise InputError(
            f"SpikeGLX meta file {meta_url!r}: {key}={meta[key]!r} is not a whole number >= 0"
        )
    return int(value)


def _counts(meta: Mapping[str, str], key: str, meta_url: str, n: int) -> list[int] | None:
    if key not in meta:
        return None
    try:
        counts = [int(part) for part in meta[key].split(",")]
    except ValueError:
        counts = []
    if len(counts) != n or min(counts) < 0:
        raise InputError(
            f"SpikeGLX meta file {meta_url!r}: {key}={meta[key]!r}; expected {n} "
            "comma-separated channel counts"
        )
    return counts


def _saved_channels(meta: Mapping[str, str], meta_url: str, n_saved: int) -> NDArray[np.int64]:
    subset = meta.get("snsSaveChanSubset", "all").strip()
    if subset in ("", "all"):
        return np.arange(n_saved, dtype=np.int64)
    channels: list[int] = []
    try:
        for part in subset.split(","):
            first, sep, last = part.partition(":")
            lo = int(first)
            hi = int(last) if sep else lo
            if hi < lo:
                raise ValueError(part)
            channels.extend(range(lo, hi + 1))  # SpikeGLX ranges include both ends
    except ValueError:
        raise InputError(
            f"SpikeGLX meta file {meta_url!r}: snsSaveChanSubset={subset!r}; expected 'all' "
            "or channel ranges such as '0:383,768'"
        ) from None
    if len(channels) != n_saved:
        raise InputError(
            f"SpikeGLX meta file {meta_url!r}: snsSaveChanSubset={subset!r} lists "
            f"{len(channels)} channels but nSavedChans={n_saved}"
        )
    return np.asarray(channels, dtype=np.int64)


def _stream(meta: Mapping[str, str], meta_url: str) -> str:
    stream = meta.get("typeThis")
    if stream in _STREAMS:
        return stream
    for name, (rate_key, *_) in _STREAMS.items():
        if rate_key in meta:
            return name
    raise InputError(
        f"SpikeGLX meta file {meta_url!r} has no sampling rate (imSampRate, niSampRate or "
        "obSampRate)"
    )


def _imec_gains(
    meta: Mapping[str, str], meta_url: str, n_ap: int
) -> tuple[NDArray[np.float64], NDArray[np.float64]] | None:
    """AP and LF gains per acquired AP channel, as readSGLX.py's ``ChanGainsIM``."""
    probe = int(_number(meta, "imDatPrb_type", meta_url)) if "imDatPrb_type" in meta else 0
    if probe in _NP1_IMRO and "imroTbl" in meta:
        entries = re.findall(r"\(([^()]*)\)", meta["imroTbl"])[1:]
        if len(entries) < n_ap:
            raise InputError(
                f"SpikeGLX meta file {meta_url!r}: imroTbl has {len(entries)} channel entries "
                f"for {n_ap} AP channels"
            )
        try:
            fields = [entry.split() for entry in entries[:n_ap]]
            ap = np.array([float(f[3]) for f in fields], dtype=np.float64)
            lf = np.array([float(f[4]) for f in fields], dtype=np.float64)
        except (IndexError, ValueError):
            raise InputError(
                f"SpikeGLX meta file {meta_url!r}: imroTbl entries are not "
                "'(channel bank reference apgain lfgain ...)'"
            ) from None
        return ap, lf
    if "imChan0apGain" in meta:
        ap_gain = _number(meta, "imChan0apGain", meta_url)
        lf_gain = _number(meta, "imChan0lfGain", meta_url) if "imChan0lfGain" in meta else math.nan
        return np.full(n_ap, ap_gain), np.full(n_ap, lf_gain)
    if probe in _FIXED_GAINS:
        ap_fixed, lf_fixed = _FIXED_GAINS[probe]
        return np.full(n_ap, ap_fixed), np.full(n_ap, math.nan if lf_fixed is None else lf_fixed)
    logger.info("%s: unknown gain of probe type %d; no conversion to microvolts", meta_url, probe)
    return None


def _channel_gains_uv(
    meta: Mapping[str, str],
    meta_url: str,
    stream: str,
    kinds: NDArray[Any],
    channels: NDArray[np.int64],
    counts: list[int] | None,
) -> NDArray[np.float64]:
    """Microvolts per bit of each saved channel (NaN for digital or unknown channels)."""
    _, _, _, range_key, max_key, default_max = _STREAMS[stream]
    gains = np.full(channels.size, math.nan)
    if range_key not in meta or counts is None:
        return gains
    max_int = _number(meta, max_key, meta_url) if max_key in meta else float(default_max)
    volts_per_bit = _number(meta, range_key, meta_url) / max_int
    if stream == "imec":
        per_channel = _imec_gains(meta, meta_url, counts[0])
        if per_channel is None:
            return gains
        ap, lf = per_channel
        is_ap = kinds == "ap"
        is_lf = kinds == "lf"
        gains[is_ap] = ap[channels[is_ap]]
        gains[is_lf] = lf[channels[is_lf] - counts[0]]
    elif stream == "nidq":
        for kind, key in (("mn", "niMNGain"), ("ma", "niMAGain")):
            if (kinds == kind).any():
                gains[kinds == kind] = _number(meta, key, meta_url) if key in meta else math.nan
        gains[kinds == "xa"] = 1.0
    else:
        gains[kinds == "xa"] = 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(1e6 * volts_per_bit / gains, dtype=np.float64)


def _meta_beside(url: str, meta_url: str, storage_options: Mapping[str, Any]) -> dict[str, str]:
    """The tags of the ``.meta`` beside the binary ``url``."""
    meta_fs, meta_path = _fs(meta_url, storage_options)
    if not meta_fs.exists(meta_path):
        raise InputNotFoundError(
            f"SpikeGLX binary {url!r} has no meta file {meta_url!r} beside it; the .meta "
            "gives its channels and sampling rate"
        )
    return read_spikeglx_meta(meta_url, storage_options=storage_options)


def _check_layout(
    url: str, size: int, meta: Mapping[str, str], meta_url: str
) -> tuple[str, float, int]:
    """The stream, sampling rate and saved channel count, checked against the file's size."""
    stream = _stream(meta, meta_url)
    rate_key = _STREAMS[stream][0]
    rate = _number(meta, rate_key, meta_url)
    if rate <= 0:
        raise InputError(f"SpikeGLX meta file {meta_url!r}: {rate_key}={meta[rate_key]!r}")
    n_saved = _integer(meta, "nSavedChans", meta_url)
    if n_saved < 1:
        raise InputError(f"SpikeGLX meta file {meta_url!r}: nSavedChans={n_saved}")
    _check_multiple(
        url,
        size,
        0,
        n_saved,
        _SAMPLE_DTYPE,
        hint=f"is the file truncated, or is nSavedChans in {meta_url!r} not its own?",
    )
    expected = _integer(meta, "fileSizeBytes", meta_url)
    if expected != size:
        raise InputError(
            f"SpikeGLX binary {url!r} has {size} bytes but its meta file says "
            f"fileSizeBytes={expected}; is the copy incomplete, or the .meta another file's?"
        )
    return stream, rate, n_saved


def _channel_kinds(
    meta: Mapping[str, str],
    meta_url: str,
    stream: str,
    channels: NDArray[np.int64],
    n_saved: int,
) -> tuple[NDArray[Any], list[int] | None]:
    """The kind of each saved channel (``unknown`` without acquired counts), and the counts."""
    _, counts_key, kind_names, *_ = _STREAMS[stream]
    counts = _counts(meta, counts_key, meta_url, len(kind_names))
    if counts is None:
        return np.full(n_saved, "unknown", dtype="<U7"), counts
    bounds = np.cumsum(counts)
    if channels.size and channels.max() >= bounds[-1]:
        raise InputError(
            f"SpikeGLX meta file {meta_url!r}: saved channel {int(channels.max())} is "
            f"beyond the {int(bounds[-1])} acquired channels ({counts_key}={meta[counts_key]})"
        )
    kinds = np.asarray(kind_names, dtype="<U7")[np.searchsorted(bounds, channels, "right")]
    return kinds, counts


def _kept_channels(
    url: str, kinds: NDArray[Any], n_saved: int, *, include_digital: bool
) -> NDArray[np.intp]:
    """Positions of the saved channels loaded: all, or the analog ones."""
    keep = np.arange(n_saved)
    if not include_digital:
        keep = np.flatnonzero(~np.isin(kinds, list(_DIGITAL)))
        if keep.size == 0:
            raise InputError(
                f"SpikeGLX binary {url!r} holds only digital channels; set "
                "include_digital: true to load them"
            )
    return keep


def _spikeglx_traces(
    url: str,
    fs: Any,
    path: str,
    *,
    size: int,
    n_saved: int,
    keep: NDArray[np.intp],
    storage_options: Mapping[str, Any],
    chunk_memory: int,
) -> da.Array:
    """The samples of the kept channels, chunked as the store chunks them."""
    traces = _traces(
        url,
        n_channels=n_saved,
        dtype=_SAMPLE_DTYPE,
        offset=0,
        storage_options=storage_options,
        chunk_memory=chunk_memory,
        size=size,
        fingerprint=_fingerprint(fs, path),
        name="spikeglx",
        stored_channels=keep.size,
    )
    if keep.size < n_saved:
        contiguous = bool((np.diff(keep) == 1).all())
        traces = traces[:, slice(int(keep[0]), int(keep[-1]) + 1) if contiguous else keep]
    return traces


def _spikeglx_attrs(
    url: str,
    meta: Mapping[str, str],
    *,
    stream: str,
    rate: float,
    n_samples: int,
    first_sample: int,
    analog: NDArray[np.float64],
) -> dict[str, Any]:
    """The loader's attrs; ``gain_uv`` when every analog channel kept has the same gain."""
    attrs: dict[str, Any] = {
        "sampling_rate": rate,
        "source": url,
        "n_samples": n_samples,
        "event_names": [],
        "stream": stream,
        "first_sample": first_sample,
    }
    if analog.size and np.isfinite(analog).all() and np.unique(analog).size == 1:
        attrs["gain_uv"] = float(analog[0])
    attrs["spikeglx_meta"] = dict(meta)
    return attrs


def load_spikeglx(
    url: str,
    arguments: SpikeGLXArguments | Mapping[str, Any],
    *,
    storage_options: Mapping[str, Any] | None = None,
    chunk_memory: int = DEFAULT_CHUNK_MEMORY,
) -> xr.Dataset:
    """Load a SpikeGLX binary with its ``.meta`` lazily into an ephys Recording Dataset.

    Parameters
    ----------
    url : str
        The ``.bin`` file (its ``.meta`` lies beside it): a local path (memory-mapped) or
        any fsspec URL (read by byte ranges).
    arguments : SpikeGLXArguments or mapping
        The loader's arguments (a mapping is validated; it may carry ``format``).
    storage_options : mapping, optional
        Passed to fsspec.
    chunk_memory : int, default 64 MiB
        Bytes per time chunk of the samples as stored (the channels kept and their time
        stamps; at least 4096 samples).

    Returns
    -------
    xarray.Dataset
        ``traces(time, channel)`` int16, dask-backed, the analog channels (and the digital
        ones with ``include_digital``); ``channel`` the acquired channel indices;
        per-channel coordinates ``channel_kind`` (``ap``, ``lf``, ``sync``, ``mn``, ``ma``,
        ``xa``, ``xd``) and ``channel_gain_uv`` (µV per bit; NaN for digital channels or
        unknown gains); attrs ``sampling_rate``, ``source``, ``n_samples``,
        ``event_names`` (empty), ``stream`` (imec, nidq, obx), ``first_sample``,
        ``gain_uv`` (when every analog channel kept has the same gain), ``spikeglx_meta``
        (every tag of the meta file) and the sidecar's metadata.

    Raises
    ------
    neurobatch.errors.InputNotFoundError
        If the ``.bin`` or its ``.meta`` does not exist.
    neurobatch.errors.InputError
        A file size that is not a whole number of samples or disagrees with the meta's
        ``fileSizeBytes``, a meta without the tags it needs, channel lists that disagree
        with ``nSavedChans``, or a bad sidecar.
    neurobatch.errors.ConfigError
        If ``arguments`` is an invalid mapping.

    Examples
    --------
    >>> import fsspec
    >>> data = np.arange(12, dtype="<i2")                 # 4 samples x (2 AP + 1 sync)
    >>> fs = fsspec.filesystem("memory")
    >>> fs.pipe("/sglx-doc/run_g0_t0.imec0.ap.bin", data.tobytes())
    >>> fs.pipe("/sglx-doc/run_g0_t0.imec0.ap.meta", (
    ...     "typeThis=imec\\nimSampRate=30000\\nnSavedChans=3\\nfileSizeBytes=24\\n"
    ...     "acqApLfSy=2,2,1\\nsnsSaveChanSubset=0:1,4\\nimAiRangeMax=0.6\\nimMaxInt=512\\n"
    ...     "imDatPrb_type=0\\n~imroTbl=(0,2)(0 0 0 500 250 1)(1 0 0 500 250 1)\\n").encode())
    >>> ds = load_spikeglx("memory://sglx-doc/run_g0_t0.imec0.ap.bin", {})
    >>> ds.traces.shape, ds.channel.values.tolist(), ds.attrs["gain_uv"]
    ((4, 2), [0, 1], 2.34375)
    >>> ds.traces.values[:, 1].tolist()
    [1, 4, 7, 10]
    """
    args = coerce_arguments(arguments, SpikeGLXArguments, fmt=FORMAT_SPIKEGLX)
    so = dict(storage_options or {})
    meta_url = _meta_url(url)
    fs, path = _fs(url, so)
    size = _file_size(fs, path, url, what="SpikeGLX binary")
    meta = _meta_beside(url, meta_url, so)
    stream, rate, n_saved = _check_layout(url, size, meta, meta_url)
    channels = _saved_channels(meta, meta_url, n_saved)
    kinds, counts = _channel_kinds(meta, meta_url, stream, channels, n_saved)
    gains_uv = _channel_gains_uv(meta, meta_url, stream, kinds, channels, counts)
    keep = _kept_channels(url, kinds, n_saved, include_digital=args.include_digital)
    traces = _spikeglx_traces(
        url,
        fs,
        path,
        size=size,
        n_saved=n_saved,
        keep=keep,
        storage_options=so,
        chunk_memory=chunk_memory,
    )
    first_sample = int(_number(meta, "firstSample", meta_url)) if "firstSample" in meta else 0
    attrs = _spikeglx_attrs(
        url,
        meta,
        stream=stream,
        rate=rate,
        n_samples=int(traces.shape[0]),
        first_sample=first_sample,
        analog=gains_uv[keep][~np.isin(kinds[keep], list(_DIGITAL))],
    )
    attrs = merge_sidecar(attrs, url, args, storage_options=so)
    t0 = first_sample / rate if args.time_origin == "stream" else 0.0
    logger.debug("%s: SpikeGLX %s stream, %d of %d channels", url, stream, keep.size, n_saved)
    return _recording(
        traces,
        sampling_rate=rate,
        t0=t0,
        channel=channels[keep],
        channel_coords={"channel_kind": kinds[keep], "channel_gain_uv": gains_uv[keep]},
        attrs=attrs,
    )
