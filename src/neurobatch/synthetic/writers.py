"""Writers of the files the demos run on: SpikeGLX ``.bin`` + ``.meta`` pairs, Zarr movies."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from typing import Any

import fsspec
import numpy as np
import xarray as xr

from neurobatch.errors import InputError
from neurobatch.synthetic._common import _validate_positive_int

__all__ = ["write_movie", "write_spikeglx"]

logger = logging.getLogger(__name__)

#: SpikeGLX's Neuropixels 1.0 conventions, by which ``gain_uv`` is written: the ADC's
#: largest integer and the AP gain; ``imAiRangeMax`` is derived from them.
_SPIKEGLX_MAX_INT = 512
_SPIKEGLX_AP_GAIN = 500
_SPIKEGLX_LF_GAIN = 250
#: Bytes of samples per write, so that a lazy recording is written block by block.
_WRITE_BYTES = 64 * 2**20


def _require(ds: xr.Dataset, name: str, dims: tuple[str, ...], where: str) -> xr.DataArray:
    if name not in ds.data_vars:
        raise InputError(
            f"{where}: the dataset has no variable {name!r} (it has "
            f"{sorted(map(str, ds.data_vars))}); expected {name}{dims}."
        )
    variable = ds[name]
    if variable.dims != dims:
        raise InputError(f"{where}: {name} has dimensions {variable.dims}; expected {name}{dims}.")
    return variable


def _meta_path(path: str) -> str:
    stem, _, query = path.partition("?")
    return stem[: -len(".bin")] + ".meta" + (f"?{query}" if query else "")


def write_spikeglx(
    ds: xr.Dataset,
    path: str,
    *,
    storage_options: Mapping[str, Any] | None = None,
    create_time: str = "2025-01-01T00:00:00",
) -> tuple[str, str]:
    """Write a recording as a SpikeGLX pair: interleaved int16 ``.bin`` and its ``.meta``.

    The ``.bin`` holds the samples of ``traces(time, channel)`` as little-endian int16,
    interleaved (sample 0 of every channel, then sample 1, ...), with no header; it is
    written block by block, so a lazy recording is never loaded whole. The ``.meta`` beside
    it (same stem) is SpikeGLX's ``key=value`` text for an imec probe with ``nSavedChans``
    AP channels and no sync channel: ``imSampRate``, ``nSavedChans``, ``fileSizeBytes``,
    ``fileTimeSecs``, ``fileSHA1``, ``firstSample``, ``imAiRangeMax``/``imAiRangeMin``,
    ``imMaxInt``, ``snsApLfSy``, ``~imroTbl`` and the channel and shank maps. The scale
    follows SpikeGLX's Neuropixels 1.0 rule, µV per bit = ``imAiRangeMax / imMaxInt /
    APgain * 1e6`` with ``imMaxInt = 512`` and an AP gain of 500 in the imro table, so
    ``imAiRangeMax`` is derived from ``ds.attrs["gain_uv"]`` (0.6 V for the default
    2.34375 µV).

    Parameters
    ----------
    ds : xarray.Dataset
        An ephys Recording: ``traces(time, channel)`` of dtype int16, attrs
        ``sampling_rate`` and ``gain_uv`` (default 2.34375 when missing); ``time[0]`` gives
        ``firstSample``.
    path : str
        Where to write the ``.bin``, a local path or fsspec URL ending in ``.bin`` (e.g.
        ``run_g0_t0.imec0.ap.bin``); the ``.meta`` goes beside it. Missing parent folders are
        created.
    storage_options : mapping, optional
        Options for the fsspec filesystem.
    create_time : str, default "2025-01-01T00:00:00"
        The ``fileCreateTime`` written to the ``.meta`` (fixed, so the output is
        reproducible).

    Returns
    -------
    (str, str)
        The paths of the ``.bin`` (``path``) and of the ``.meta``, as URLs like ``path``.

    Raises
    ------
    ValueError
        If ``path`` does not end in ``.bin``.
    InputError
        If ``ds`` lacks ``traces(time, channel)``, its dtype is not int16, or its
        ``sampling_rate`` is missing or not > 0.

    See Also
    --------
    ephys_recording : A recording to write.

    Examples
    --------
    >>> import tempfile
    >>> from neurobatch.synthetic import ephys_recording
    >>> recording, _ = ephys_recording(n_channels=4, duration_s=0.5, fs=10_000.0)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     bin_path, meta_path = write_spikeglx(recording, f"{tmp}/run_g0_t0.imec0.ap.bin")
    ...     samples = np.fromfile(bin_path, dtype="<i2").reshape(-1, 4)
    ...     meta = dict(line.split("=", 1) for line in open(meta_path).read().splitlines())
    >>> bool((samples == recording.traces.values).all())
    True
    >>> meta["nSavedChans"], meta["imSampRate"], meta["fileSizeBytes"], meta["imAiRangeMax"]
    ('4', '10000', '40000', '0.6')
    """
    where = f"cannot write {path} as SpikeGLX"
    if not path.partition("?")[0].endswith(".bin"):
        raise ValueError(f"{where}: the path must end in .bin (e.g. run_g0_t0.imec0.ap.bin).")
    traces = _require(ds, "traces", ("time", "channel"), where)
    if traces.dtype != np.int16:
        raise InputError(
            f"{where}: traces has dtype {traces.dtype}; expected int16 (SpikeGLX's samples)."
        )
    fs = ds.attrs.get("sampling_rate")
    if isinstance(fs, bool) or not isinstance(fs, int | float | np.number) or not fs > 0:
        raise InputError(f"{where}: attrs['sampling_rate'] is {fs!r}; expected a rate > 0 Hz.")
    fs = float(fs)
    gain_uv = float(ds.attrs.get("gain_uv", 2.34375))
    n_samples, n_channels = (int(v) for v in traces.shape)
    first = round(float(ds["time"].values[0]) * fs) if n_samples and "time" in ds.coords else 0

    fs_obj, bin_path = fsspec.core.url_to_fs(path, **dict(storage_options or {}))
    meta_path = _meta_path(bin_path)
    parent = fs_obj._parent(bin_path)
    if parent:
        fs_obj.makedirs(parent, exist_ok=True)
    sha1 = hashlib.sha1(usedforsecurity=False)
    step = max(1, _WRITE_BYTES // max(1, 2 * n_channels))
    with fs_obj.open(bin_path, "wb") as f:
        for a in range(0, n_samples, step):
            data = np.ascontiguousarray(traces[a : a + step].values, dtype="<i2").tobytes()
            sha1.update(data)
            f.write(data)
    range_max = gain_uv * 1e-6 * _SPIKEGLX_MAX_INT * _SPIKEGLX_AP_GAIN
    imro = f"(0,{n_channels})" + "".join(
        f"({c} 0 0 {_SPIKEGLX_AP_GAIN} {_SPIKEGLX_LF_GAIN} 1)" for c in range(n_channels)
    )
    chan_map = f"({n_channels},0,0)" + "".join(f"(AP{c};{c}:{c})" for c in range(n_channels))
    shank_map = f"(1,1,{n_channels})" + "".join(f"(0:0:{c}:1)" for c in range(n_channels))
    meta = {
        "acqApLfSy": f"{n_channels},0,0",
        "appVersion": "20230425",
        "fileCreateTime": create_time,
        "fileName": bin_path,
        "fileSHA1": sha1.hexdigest().upper(),
        "fileSizeBytes": str(2 * n_samples * n_channels),
        "fileTimeSecs": repr(n_samples / fs),
        "firstSample": str(first),
        "imAiRangeMax": repr(round(range_max, 12)),
        "imAiRangeMin": repr(-round(range_max, 12)),
        "imDatPrb_type": "0",
        "imMaxInt": str(_SPIKEGLX_MAX_INT),
        "imSampRate": f"{fs:g}" if fs == round(fs) else repr(fs),
        "nSavedChans": str(n_channels),
        "snsApLfSy": f"{n_channels},0,0",
        "snsSaveChanSubset": "all",
        "typeThis": "imec",
        "~imroTbl": imro,
        "~snsChanMap": chan_map,
        "~snsShankMap": shank_map,
    }
    text = "".join(f"{key}={value}\n" for key, value in meta.items())
    with fs_obj.open(meta_path, "wb") as f:
        f.write(text.encode())
    logger.debug("wrote SpikeGLX %s: %d samples x %d channels", path, n_samples, n_channels)
    return path, _meta_path(path)


def write_movie(
    ds: xr.Dataset,
    path: str,
    *,
    chunk_memory: int = 64 * 2**20,
    storage_options: Mapping[str, Any] | None = None,
) -> None:
    """Write a stimulus movie with its spikes as a Zarr (v3) store, chunked along frames.

    The store is what :func:`xarray.open_zarr` (and
    :func:`neurobatch.io.zarr.open_dataset`) reads: ``frames`` and ``frame_time`` chunked
    along ``frame``, ``chunk_memory // bytes_per_frame`` frames per chunk (at least one), each
    chunk computed and written on its own so that a lazy movie is never loaded whole; the
    spikes and unit ids beside them in one chunk each; the attributes as JSON; compressed
    (zarr's default zstd), with consolidated metadata. String unit labels are stored as
    variable-length UTF-8.

    Parameters
    ----------
    ds : xarray.Dataset
        A Movie: ``frames(frame, y, x)``, ``spike_time(spike)`` with coordinate
        ``unit(spike)``, optionally ``unit_ids(unit)``; attrs ``fps`` and
        ``stimulus_onset`` (JSON values, like every attribute).
    path : str
        Local path or fsspec URL of the store; overwritten.
    chunk_memory : int, default 64 MiB
        Bytes of one chunk of frames (with their times); see
        :func:`neurobatch.io.zarr.write_dataset`.
    storage_options : mapping, optional
        Options for the fsspec filesystem.

    Raises
    ------
    InputError
        If ``ds`` lacks ``frames(frame, y, x)`` or ``spike_time(spike)``, or ``fps`` or
        ``stimulus_onset`` in its attrs.
    ValueError
        If ``chunk_memory`` is not a positive integer.
    TypeError
        If an attribute is not a JSON value.

    See Also
    --------
    receptive_field_movie : A movie to write.

    Examples
    --------
    >>> from neurobatch.synthetic import receptive_field_movie
    >>> movie, _ = receptive_field_movie(n_frames=300, height=4, width=4, n_units=2, n_lags=3)
    >>> write_movie(movie, "memory://docs/movie.zarr", chunk_memory=64 * (16 * 4 + 8))
    >>> back = xr.open_zarr("memory://docs/movie.zarr")
    >>> back.frames.chunks[0][:3], back.attrs["fps"]
    ((64, 64, 64), 60.0)
    >>> bool((back.spike_time.values == movie.spike_time.values).all())
    True
    """
    from neurobatch.io.zarr import write_dataset

    where = f"cannot write {path} as a movie"
    _require(ds, "frames", ("frame", "y", "x"), where)
    _require(ds, "spike_time", ("spike",), where)
    missing = [key for key in ("fps", "stimulus_onset") if key not in ds.attrs]
    if missing:
        raise InputError(
            f"{where}: attrs lack {missing}; expected fps (Hz) and stimulus_onset (s)."
        )
    chunk_memory = _validate_positive_int(chunk_memory, "chunk_memory")
    # frames can be large: no minimum number of frames per chunk
    write_dataset(
        ds,
        path,
        chunk_memory=chunk_memory,
        storage_options=storage_options,
        dim="frame",
        minimum=1,
    )
