"""pyPhotometry recordings (format ``pyphotometry``): the binary ``.ppd`` files its GUI writes.

The layout, as pyPhotometry writes it (``GUI/acquisition_board.py``) and reads it
(``tools/data_import.py``, ``import_ppd``): a 2-byte little-endian header length, a JSON header
(``sampling_rate``, ``mode``, ``volts_per_division``, ``version``, ``n_analog_signals``,
``n_digital_signals``, ``subject_ID``, ``date_time``, ...), then little-endian uint16 samples.
Each sample holds an analog value in its 15 high bits and a digital input in its low bit.
Samples are interleaved by analog input, one per input per sample time:
``analog_1, analog_2[, analog_3]``, the digital input ``d`` riding on the sample of analog
input ``d``. In the pulsed modes of version 1.1 and later each analog sample is followed by a
baseline taken with the LEDs off; the signal is the LED-on sample minus the baseline, and
the digital inputs ride on the LED-on samples. Files of versions before 1.0 have two analog
and two digital inputs and no baselines. Analog values are converted to volts by the first
``volts_per_division``.

Time is ``arange(n) / sampling_rate`` seconds from the first sample; events are the rising
edges of the digital inputs (a sample high after a low one), at their sample times.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from typing import Any

import fsspec
import numpy as np
import xarray as xr
from numpy.typing import NDArray

from neurobatch.config.acquisition_arguments import PyPhotometryArguments
from neurobatch.errors import InputError
from neurobatch.io.loaders._acquisition import open_input, rising_edges
from neurobatch.io.loaders._common import coerce_arguments
from neurobatch.io.loaders._photometry import build_recording
from neurobatch.io.loaders._sniff import describe_bytes
from neurobatch.io.loaders.sidecar import load_annotation

logger = logging.getLogger(__name__)

__all__ = ["FORMAT", "load_pyphotometry"]

FORMAT = "pyphotometry"

_REQUIRED = ("sampling_rate", "mode", "volts_per_division", "version")
_EXPECTED = "expected a pyPhotometry .ppd file (a 2-byte header length, a JSON header, samples)"


def _version(text: Any) -> tuple[int, ...]:
    """``"1.0.2"`` as ``(1, 0, 2)``; the leading numbers of each part."""
    numbers = re.findall(r"\d+", str(text))
    return tuple(int(n) for n in numbers) or (0,)


def _header(raw: bytes, url: str) -> tuple[dict[str, Any], int]:
    """The JSON header and the offset of the first sample."""
    if len(raw) < 2:
        raise InputError(f"{url!r} is {describe_bytes(raw)}; {_EXPECTED}")
    size = int.from_bytes(raw[:2], "little")
    header: Any = None
    if 2 + size > len(raw):
        reason = "its header would run past its end"
    else:
        try:
            header = json.loads(raw[2 : 2 + size])
            reason = "its header is not a JSON object"
        except ValueError as e:
            reason = f"its header is not JSON: {e}"
    if not isinstance(header, dict):
        raise InputError(
            f"{url!r} is not a pyPhotometry file ({reason}; it is {describe_bytes(raw[:64])}); "
            f"{_EXPECTED}"
        )
    missing = [key for key in _REQUIRED if key not in header]
    if missing:
        raise InputError(
            f"{url!r}: its header has no {', '.join(repr(k) for k in missing)} (its keys: "
            f"{', '.join(repr(k) for k in header)}); {_EXPECTED}"
        )
    return header, 2 + size


def _layout(header: Mapping[str, Any], url: str) -> tuple[int, int, bool, float, float]:
    """Analog and digital inputs, whether baselines follow samples, the rate, volts/division."""
    version = _version(header["version"])
    mode = str(header["mode"])
    if version < (1, 0):
        n_analog, n_digital, pulsed = 2, 2, "time div" in mode
    else:
        n_analog = int(header.get("n_analog_signals", 2))
        n_digital = int(header.get("n_digital_signals", 2))
        pulsed = "pulsed" in mode
    vpd = header["volts_per_division"]
    volts = float(vpd[0] if isinstance(vpd, list | tuple) else vpd)
    rate = float(header["sampling_rate"])
    if not (rate > 0 and np.isfinite(rate)) or n_analog < 1 or not np.isfinite(volts):
        raise InputError(
            f"{url!r}: its header has sampling_rate {header['sampling_rate']!r}, "
            f"n_analog_signals {n_analog} and volts_per_division {vpd!r}; expected a positive "
            "rate, one or more analog inputs and a number of volts"
        )
    return n_analog, n_digital, pulsed and version >= (1, 1), rate, volts


def _channel(name: str, prefix: str, count: int, role: str, mode: str, url: str) -> int:
    index = int(name.removeprefix(prefix)) - 1
    if not 0 <= index < count:
        inputs = ", ".join(f"{prefix}{i + 1}" for i in range(count)) or "none"
        raise InputError(f"{url!r} has no {name} ({role}): in mode {mode!r} it records {inputs}")
    return index


def load_pyphotometry(
    url: str,
    arguments: PyPhotometryArguments | Mapping[str, Any],
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """Load one pyPhotometry ``.ppd`` file into a Recording Dataset.

    Parameters
    ----------
    url : str
        The ``.ppd`` file: a local path or any fsspec URL.
    arguments : PyPhotometryArguments or mapping
        The loader's arguments (a mapping is validated; it may carry ``format``):
        ``signal_channel`` (default ``analog_1``), ``isosbestic_channel`` (default
        ``analog_2``), ``event_channels``.
    storage_options : mapping, optional
        Passed to fsspec.

    Returns
    -------
    xarray.Dataset
        ``signal(time)``, ``isosbestic(time)`` (absent when ``isosbestic_channel`` is null)
        in volts, float64, on ``time = arange(n) / sampling_rate`` seconds;
        ``event_time(event)`` (the rising edges of each digital input named) sorted, with
        ``event_name(event)``; attrs ``sampling_rate``, ``event_names``, ``source``,
        ``n_samples``, ``acquisition`` (the inputs read and the file's header) and the
        sidecar's metadata.

    Raises
    ------
    neurobatch.errors.InputNotFoundError
        If the file does not exist.
    neurobatch.errors.InputError
        A file that is not a ``.ppd`` file (saying what it is), a header without the keys the
        layout needs, an input the acquisition mode does not record, or a bad sidecar.
    neurobatch.errors.ConfigError
        If ``arguments`` is an invalid mapping.

    See Also
    --------
    neurobatch.io.loaders.load_recording : any format by name.

    Examples
    --------
    >>> import fsspec, json
    >>> header = json.dumps({"mode": "2EX_2EM_continuous", "sampling_rate": 10,
    ...                      "volts_per_division": [0.5, 0.5], "version": "1.1",
    ...                      "n_analog_signals": 2, "n_digital_signals": 2}).encode()
    >>> samples = np.array([[4, 2], [6, 2], [9, 3], [6, 2]], dtype="<u2")  # value << 1 | DI
    >>> fsspec.filesystem("memory").pipe(
    ...     "/ppd-doc/m1.ppd", len(header).to_bytes(2, "little") + header + samples.tobytes())
    >>> ds = load_pyphotometry("memory://ppd-doc/m1.ppd", {"event_channels": ["digital_1"]})
    >>> ds.signal.values.tolist(), ds.isosbestic.values.tolist(), ds.event_time.values.tolist()
    ([1.0, 1.5, 2.0, 1.5], [0.5, 0.5, 0.5, 0.5], [0.2])
    >>> load_pyphotometry("memory://ppd-doc/m1.ppd", {"signal_channel": "analog_3"})
    Traceback (most recent call last):
    ...
    neurobatch.errors.InputError: 'memory://ppd-doc/m1.ppd' has no analog_3 (signal_channel): in mode '2EX_2EM_continuous' it records analog_1, analog_2
    """
    args = coerce_arguments(arguments, PyPhotometryArguments, fmt=FORMAT)
    so = dict(storage_options or {})
    fs, path = fsspec.core.url_to_fs(url, **so)
    with open_input(fs, str(path), url, FORMAT) as f:
        raw: bytes = f.read()
    header, offset = _header(raw, url)
    metadata, sidecar_url = load_annotation(
        url, args, target="file", key=args.annotation_key, storage_options=so
    )
    n_analog, n_digital, baselines, rate, volts = _layout(header, url)
    mode = str(header["mode"])
    signal_index = _channel(args.signal_channel, "analog_", n_analog, "signal_channel", mode, url)
    iso_index = None
    if args.isosbestic_channel is not None:
        iso_index = _channel(
            args.isosbestic_channel, "analog_", n_analog, "isosbestic_channel", mode, url
        )
    digital_index = {
        event: _channel(name, "digital_", n_digital, "event_channels", mode, url)
        for event, name in args.event_channels.items()
    }

    per_frame = n_analog * (2 if baselines else 1)
    n_words = (len(raw) - offset) // 2
    n_frames = n_words // per_frame
    if n_frames * per_frame * 2 != len(raw) - offset:
        logger.warning(
            "%s: %d byte(s) after the last whole sample time (a recording cut short?) are not read",
            url,
            len(raw) - offset - n_frames * per_frame * 2,
        )
    words = np.frombuffer(raw, dtype="<u2", count=n_frames * per_frame, offset=offset)
    frames = words.reshape(n_frames, per_frame)
    analog = frames >> 1
    step = 2 if baselines else 1

    def volts_of(index: int) -> NDArray[np.float64]:
        # as import_ppd: each of LED-on and baseline scaled, then subtracted
        on = analog[:, step * index] * volts
        if not baselines:
            return np.asarray(on, dtype=np.float64)
        return np.asarray(on - analog[:, step * index + 1] * volts, dtype=np.float64)

    time = np.arange(n_frames, dtype=np.float64) / rate
    events = {
        event: rising_edges(frames[:, step * d] & 1, time, threshold=0.5)
        for event, d in digital_index.items()
    }
    acquisition = {
        "format": FORMAT,
        "signal": args.signal_channel,
        "isosbestic": args.isosbestic_channel,
        "events": dict(args.event_channels),
        "header": header,
    }
    logger.debug(
        "%s: pyPhotometry %s, mode %r, %d analog input(s), %d sample times",
        url,
        header["version"],
        mode,
        n_analog,
        n_frames,
    )
    return build_recording(
        source=url,
        time=time,
        signal=volts_of(signal_index),
        isosbestic=None if iso_index is None else volts_of(iso_index),
        events=events,
        arguments=args,
        names={"signal": args.signal_channel, "isosbestic": str(args.isosbestic_channel)},
        attrs={"acquisition": acquisition},
        sidecar=metadata,
        sidecar_source=sidecar_url,
    )
