"""Event-triggered averages of continuous signals chunked along time: tree reductions.

Each is the spike-triggered average of :func:`neurobatch.engine.blocked.sta.blocked_sta`
over the signal viewed as a movie. See :mod:`neurobatch.kernels.sta` for the kernels.
"""

from __future__ import annotations

import logging
import math
import numbers
import warnings
from dataclasses import dataclass
from typing import Any, Literal, cast

import dask.array as da
import numpy as np
from numpy.typing import ArrayLike, NDArray

from neurobatch.engine.blocked._reduce import validate_split_every
from neurobatch.engine.blocked.sta import blocked_sta
from neurobatch.errors import EmptyUnitWarning
from neurobatch.kernels import binning
from neurobatch.kernels._validation import (
    validate_choice,
    validate_finite,
    validate_same_length,
)

logger = logging.getLogger(__name__)


#: Times are compared to the nanosecond, pynapple's time precision: an event (or a window
#: edge) up to this many seconds before a sample's time counts as at that sample, so events
#: taken from the sample times themselves never slip into the previous sample.
_TIME_TOLERANCE_S = 1e-9

#: How an event-triggered average treats the part of a window outside the signal.
EtaEdges = Literal["zeros", "exclude"]


@dataclass(frozen=True, eq=False)
class BlockedEta:
    """A lazy event-triggered average and the event bookkeeping behind it.

    Attributes
    ----------
    eta : dask.array.Array
        Shape ``(n_units, n_offsets, *signal.shape[1:])``, float64, lazy; chunks
        ``((n_units,), (n_offsets,), *signal.chunks[1:])``. ``eta[u, i]`` is the mean, over
        the used events of unit ``u``, of the signal ``offsets[i]`` samples after the
        event's sample; NaN for a unit without used events.
    offsets : numpy.ndarray
        Shape ``(n_offsets,)``, int64: the offsets in samples, ``-n_before .. n_after``.
    unit_ids : numpy.ndarray
        Shape ``(n_units,)``: the label of each row of ``eta``.
    n_used : numpy.ndarray
        Shape ``(n_units,)``, int64: per unit, the events averaged.
    n_before, n_after : numpy.ndarray
        Shape ``(n_units,)``, int64: per unit, the events before the signal's first sample
        and those at or after its end (``start_time + n_samples / sampling_rate``); both
        are excluded.
    n_clipped : numpy.ndarray
        Shape ``(n_units,)``, int64: per unit, the events inside the signal whose window
        reaches past either end. With ``edges="zeros"`` they are averaged with zeros
        outside the signal and are part of ``n_used``; with ``edges="exclude"`` they are
        excluded. So ``n_used + n_before + n_after`` (plus ``n_clipped`` when excluded) is
        each unit's number of events.
    sampling_rate : float
        Samples per second of the signal.
    edges : {"zeros", "exclude"}
        How windows reaching past the signal's ends were treated.
    """

    eta: da.Array
    offsets: NDArray[np.int64]
    unit_ids: NDArray[Any]
    n_used: NDArray[np.int64]
    n_before: NDArray[np.int64]
    n_after: NDArray[np.int64]
    n_clipped: NDArray[np.int64]
    sampling_rate: float
    edges: EtaEdges

    @property
    def offset_times(self) -> NDArray[np.float64]:
        """Offsets in seconds, ``offsets / sampling_rate`` (negative: before the event)."""
        return self.offsets / self.sampling_rate


def _eta_number(value: float, name: str, what: str, *, positive: bool = False) -> float:
    """Return ``value`` as a float, or raise unless it is a finite real (and > 0)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{name} must be a real number ({what}), got {value!r} of type {type(value).__name__}."
        )
    result = float(value)
    if not math.isfinite(result) or (positive and result <= 0):
        bound = "a finite number > 0" if positive else "finite"
        raise ValueError(f"{name} must be {bound} ({what}), got {value!r}.")
    return result


def _eta_window(window_s: float | tuple[float, float], sampling_rate: float) -> tuple[int, int]:
    """Return how many whole samples before and after the event ``window_s`` holds."""
    usage = (
        "a number of seconds >= 0 (the same on both sides) or a pair (start, stop) of "
        "finite seconds around the event with start <= 0 <= stop"
    )
    if isinstance(window_s, numbers.Real) and not isinstance(window_s, bool):
        bounds = [-float(window_s), float(window_s)]
    elif isinstance(window_s, str | bytes) or not hasattr(window_s, "__len__"):
        raise TypeError(f"window_s must be {usage}, got {window_s!r}.")
    else:
        bounds = list(cast("tuple[Any, ...]", window_s))
        ok = len(bounds) == 2 and all(
            isinstance(b, numbers.Real) and not isinstance(b, bool) for b in bounds
        )
        if not ok:
            raise TypeError(f"window_s must be {usage}, got {window_s!r}.")
    start, stop = (float(b) for b in bounds)
    if not (math.isfinite(start) and math.isfinite(stop) and start <= 0 <= stop):
        raise ValueError(f"window_s must be {usage}, got {window_s!r}.")
    tolerance = _TIME_TOLERANCE_S * sampling_rate
    return math.floor(-start * sampling_rate + tolerance), math.floor(
        stop * sampling_rate + tolerance
    )


def _eta_movie(x: da.Array) -> da.Array:
    """View a signal ``(time, ...)`` as a movie ``(time, y, x)`` without rechunking it."""
    if x.ndim == 1:
        return x[:, None, None]
    if x.ndim == 2:
        return x[:, :, None]
    if x.ndim == 3:
        return x
    if any(len(c) > 1 for c in x.chunks[2:]):
        raise ValueError(
            f"signal of {x.ndim} dimensions must be one chunk along each axis after the "
            f"second (they are flattened), got chunks {tuple(len(c) for c in x.chunks)} per "
            "axis; rechunk those axes with -1."
        )
    return x.reshape(x.shape[0], x.shape[1], -1)


def _validate_signal(signal: da.Array | ArrayLike) -> da.Array:
    """Return the signal as a dask array, or raise unless it is real, time first, not empty,
    with known chunks along time."""
    x: da.Array = signal if isinstance(signal, da.Array) else da.asarray(signal)
    if x.ndim < 1 or x.shape[0] == 0:
        raise ValueError(
            f"signal must have a time axis first with at least one sample, got shape {x.shape}."
        )
    if x.dtype.kind not in "biuf":
        raise TypeError(f"signal must hold real numbers, got dtype {x.dtype}.")
    if any(math.isnan(size) for size in x.chunks[0]):
        raise ValueError(
            "signal has unknown chunk sizes along time; call signal.compute_chunk_sizes() first."
        )
    return x


def _eta_events(
    event_times: ArrayLike, units: ArrayLike | None, unit_ids: ArrayLike | None
) -> tuple[NDArray[Any], NDArray[Any], NDArray[np.intp]]:
    """Validate the events; return their times, the unit labels (one per row of the result)
    and each event's row. Without ``units`` every event belongs to unit ``0``."""
    times = np.asarray(event_times)
    labels = np.zeros(times.shape, dtype=np.int64) if units is None else np.asarray(units)
    if units is None and unit_ids is None:
        unit_ids = [0]
    if times.ndim != 1:
        raise ValueError(f"event_times must be 1-D (n_events,), got shape {times.shape}.")
    if labels.ndim != 1:
        raise ValueError(f"units must be 1-D (n_events,), got shape {labels.shape}.")
    if times.dtype.kind not in "iuf":
        raise TypeError(f"event_times must be numeric (seconds), got dtype {times.dtype}.")
    validate_same_length(event_times=times, units=labels)
    validate_finite(times, "event_times")
    validate_finite(labels, "units")
    ids, rows = binning._unit_rows(labels, unit_ids)
    return times, ids, rows


def _eta_samples(
    times: NDArray[Any],
    *,
    start: float,
    rate: float,
    n_samples: int,
    n_before: int,
    n_after: int,
) -> tuple[NDArray[np.int64], NDArray[np.bool_], NDArray[np.bool_], NDArray[np.bool_]]:
    """Return each event's sample (clipped to ``-1 .. n_samples``) and whether the event is
    before the signal, at or after its end, or inside it with a window reaching past an end."""
    position = (times.astype(np.float64) - start) * rate + _TIME_TOLERANCE_S * rate
    sample = np.floor(np.clip(position, -1.0, float(n_samples))).astype(np.int64)
    before = sample < 0
    after = sample >= n_samples
    clipped = ~before & ~after & ((sample < n_before) | (sample >= n_samples - n_after))
    return sample, before, after, clipped


def _eta_frames(
    movie: da.Array, sample: NDArray[np.int64], n_before: int, n_after: int, edges: EtaEdges
) -> tuple[da.Array, NDArray[np.int64]]:
    """Return the frames :func:`blocked_sta` reduces (with ``edges="zeros"``, the movie with
    ``n_before`` and ``n_after`` zero frames added at its ends, in chunks of their own) and
    the STA frame of each used event in ``sample``."""
    if edges == "zeros":
        pads = [
            da.zeros((n, *movie.shape[1:]), dtype=movie.dtype, chunks=((n,), *movie.chunks[1:]))
            for n in (n_before, n_after)
        ]
        pieces = [p for p in (pads[0], movie, pads[1]) if p.shape[0]]
        frames = pieces[0] if len(pieces) == 1 else da.concatenate(pieces, axis=0)
        # signal sample j is frame j + n_before; the STA's frame for an event in sample c
        # is its last offset, c + n_after, so that lag k is offset n_after - k.
        return frames, sample + n_before + n_after
    return movie, sample + n_after


def _warn_no_events(ids: NDArray[Any], n_used: NDArray[np.int64]) -> None:
    """Warn, for the caller of :func:`event_triggered_average`, naming the units without
    used events."""
    empty = np.flatnonzero(n_used == 0)
    if empty.size:
        limit = binning._MAX_NAMED_UNITS
        named = ", ".join(repr(label) for label in ids[empty[:limit]].tolist())
        more = f" and {empty.size - limit} more" if empty.size > limit else ""
        warnings.warn(
            f"{empty.size} unit(s) have no usable events, so their event-triggered average "
            f"is NaN: {named}{more}.",
            EmptyUnitWarning,
            stacklevel=3,
        )


def _eta_from_sta(sta: da.Array, shape: tuple[int, ...]) -> da.Array:
    """The event-triggered average from the STA of the signal's movie view (see
    :func:`_eta_movie`): the lags reversed into offsets, the signal's axes after time
    restored from ``shape``, the signal's shape."""
    sta = sta[:, ::-1]
    if len(shape) == 1:
        return sta[:, :, 0, 0]
    if len(shape) == 2:
        return sta[:, :, :, 0]
    if len(shape) == 3:
        return sta
    return sta.reshape((sta.shape[0], sta.shape[1], *shape[1:]))


def event_triggered_average(
    signal: da.Array | ArrayLike,
    event_times: ArrayLike,
    units: ArrayLike | None = None,
    *,
    sampling_rate: float,
    window_s: float | tuple[float, float],
    start_time: float = 0.0,
    unit_ids: ArrayLike | None = None,
    edges: EtaEdges = "zeros",
    split_every: int | None = None,
) -> BlockedEta:
    """Event-triggered average of a continuous signal chunked along time, lazily.

    Sample ``j`` of the signal covers the time ``[start_time + j / fs, start_time +
    (j + 1) / fs)`` (``fs = sampling_rate``); an event at time ``t`` falls in the sample
    ``c = floor((t - start_time) * fs)`` (to the nanosecond: an event up to 1 ns before a
    sample's time counts in that sample). The window ``window_s = (start, stop)`` holds
    the offsets ``k`` of the whole samples with ``start <= k / fs <= stop`` (again to the
    nanosecond), ``-n_before .. n_after``, and

        eta[u, i] = mean over the used events of unit u of signal[c + offsets[i]]

    This is the spike-triggered average of :func:`blocked_sta`, computed by it: the signal
    is the movie (its axes after time are the movie's ``(y, x)``: a 1-D signal is
    ``(time, 1, 1)``), each event is moved ``n_after`` samples later so that the STA's
    lags ``0 .. n_before + n_after`` before it cover the offsets ``n_after .. -n_before``,
    and the lag axis is reversed. So it is one tree reduction over the signal's time
    blocks, each read by one task of its own (the events' counts reach ``n_before +
    n_after`` samples past its block instead); blocks holding no event are not read; the
    signal is never rechunked and no loop runs over events.

    With ``edges="zeros"`` (pynapple's behaviour) the signal is taken as zero outside its
    ends: every event inside the signal is used, and a window reaching past an end adds
    zeros there (two chunks of zeros are added at the ends; the signal's chunks are kept).
    With ``edges="exclude"`` such events are excluded, as the STA excludes spikes too early
    for their window. Either way they are counted in ``n_clipped``.

    Parameters
    ----------
    signal : dask.array.Array or array_like
        Shape ``(n_samples, ...)``, real: the continuous signal, time first, regularly
        sampled, chunked along time (a NumPy array becomes dask's default chunking). Any
        chunking of the second axis works; axes after the second must be one chunk each.
        Values must be finite; each block checks its values when it is computed.
    event_times : array_like
        Shape ``(n_events,)``: event times in seconds, same clock as ``start_time``, any
        order.
    units : array_like, optional
        Shape ``(n_events,)``: the unit (or event type) label of each event, integers or
        strings. By default every event belongs to one unit, labelled ``0``.
    sampling_rate : float
        Samples per second of ``signal``; > 0.
    window_s : float or (float, float)
        The window around each event in seconds, ``(start, stop)`` with
        ``start <= 0 <= stop``, e.g. ``(-0.5, 1.0)``; a number ``w`` means ``(-w, w)``.
    start_time : float, default 0.0
        Time of the signal's first sample, in seconds.
    unit_ids : array_like, optional
        Shape ``(n_units,)``: the units to report, in this order, unique; units without
        events get NaN. By default the sorted unique labels of ``units``.
    edges : {"zeros", "exclude"}, default "zeros"
        Windows reaching past the signal's ends: averaged with zeros outside the signal
        (pynapple), or the event is excluded.
    split_every : int, optional
        Fan-in of the tree reduction (>= 2). By default dask's ``split_every`` setting,
        else 4.

    Returns
    -------
    BlockedEta
        ``eta``: a lazy dask array of shape ``(n_units, n_offsets, *signal.shape[1:])``,
        float64; ``offsets`` (samples) and ``offset_times`` (seconds); the unit labels and
        the used, excluded and clipped event counts, computed now.

    Raises
    ------
    ValueError
        If ``signal`` is 0-d, empty or has unknown chunk sizes along time, has more than
        3 dimensions and is chunked after the second axis, ``sampling_rate`` is not > 0,
        ``window_s`` is not ``start <= 0 <= stop``, ``edges="exclude"`` and the window is
        longer than the signal, an event time is NaN or infinite, ``event_times`` and
        ``units`` differ in length or are not 1-D, a label of ``units`` is missing from
        ``unit_ids``, ``unit_ids`` repeats a label, or ``split_every`` is not an integer
        >= 2. A block of the signal holding NaN or infinity raises when it is computed.
    TypeError
        If ``signal`` does not hold real numbers, ``event_times`` is not numeric, or
        ``sampling_rate``, ``start_time`` or ``window_s`` has the wrong type.

    Warns
    -----
    EmptyUnitWarning
        When the graph is built, naming each unit that has no used event.

    See Also
    --------
    blocked_sta : The same reduction over a stimulus movie.

    Notes
    -----
    With ``edges="zeros"`` the result equals pynapple's
    ``compute_event_triggered_average(Tsd(t, signal), TsGroup(events), binsize=1 / fs,
    window=(-start, stop), epochs=IntervalSet(start_time, start_time + n_samples / fs))``
    (transposed to units first), with these differences:

    - pynapple's default epoch is the signal's ``time_support``, ``[t_0, t_{n-1}]``,
      which ends at the last sample's time: its last bin is dropped, so it ignores the
      last sample and the events at or after it. That equals this function on
      ``signal[:-1]``. Here the signal covers ``[start_time, start_time + n / fs)``.
    - pynapple returns zeros for a unit without events; here it is NaN, with a warning.
    - pynapple returns zeros when ``n_after >= n_samples``: it adds each event once it
      has read the ``n_after`` samples after it, which never happens then (the events
      are still counted). Here such windows average as any other.
    - pynapple treats a time bin holding NaN as zeros (still counting the event); here
      the signal must be finite.
    - pynapple's offsets come from ``np.arange(0, stop + binsize, binsize)``, which adds
      an offset past the window when ``stop / binsize`` is whole but floating point
      overshoots (``stop=0.2``, ``binsize=0.1`` gives offsets up to 0.3 s); here the
      offsets are exactly the whole samples within the window.
    - pynapple finds each sample's bin by comparing its float timestamp with bin edges
      rounded to 1 ns, built by repeated addition: a timestamp a rounding error below an
      edge lands in the previous bin, and edges drift from the samples when ``1 / fs`` is
      not a whole number of nanoseconds (e.g. 30 kHz). Here sample ``j`` is bin ``j``.
    - pynapple's ``epochs`` select parts of the signal, each zero-padded at its ends: call
      this function once per epoch on the signal sliced to it (``start_time`` its first
      sample), and weight the results by ``n_used`` to combine them.

    Examples
    --------
    A signal whose sample ``i`` has the value ``i``, at 10 samples per second, in chunks
    of 6 samples; unit ``2``'s event in sample 0 reaches before the signal's start:

    >>> signal = da.arange(20.0, chunks=6)
    >>> result = event_triggered_average(signal, [0.55, 1.25, 0.05], [1, 1, 2],
    ...                                  sampling_rate=10.0, window_s=(-0.2, 0.1))
    >>> result.offset_times.tolist()
    [-0.2, -0.1, 0.0, 0.1]
    >>> result.eta.compute()  # unit 1: samples 3..6 and 10..13; unit 2: zeros, 0, 1
    array([[6.5, 7.5, 8.5, 9.5],
           [0. , 0. , 0. , 1. ]])
    >>> result.n_used.tolist(), result.n_clipped.tolist()
    ([2, 1], [0, 1])

    With ``edges="exclude"`` the event in sample 0 is left out instead (all events belong to
    one unit, ``0``, when ``units`` is not given):

    >>> excluded = event_triggered_average(signal, [0.55, 1.25, 0.05], sampling_rate=10.0,
    ...                                    window_s=(-0.2, 0.1), edges="exclude")
    >>> excluded.eta.compute()
    array([[6.5, 7.5, 8.5, 9.5]])
    >>> excluded.unit_ids.tolist(), excluded.n_used.tolist(), excluded.n_clipped.tolist()
    ([0], [2], [1])
    """
    validate_choice(edges, "edges", ("zeros", "exclude"))
    x = _validate_signal(signal)
    rate = _eta_number(sampling_rate, "sampling_rate", "samples per second", positive=True)
    start = _eta_number(start_time, "start_time", "seconds")
    n_before, n_after = _eta_window(window_s, rate)
    n_samples = int(x.shape[0])
    n_offsets = n_before + n_after + 1
    if edges == "exclude" and n_offsets > n_samples:
        raise ValueError(
            f"window_s={window_s!r} spans {n_offsets} samples, more than the signal's "
            f"{n_samples}, so no event fits with edges='exclude'; shorten the window or use "
            "edges='zeros'."
        )
    validate_split_every(split_every)

    times, ids, rows = _eta_events(event_times, units, unit_ids)
    n_units = int(ids.shape[0])
    sample, before, after, clipped = _eta_samples(
        times, start=start, rate=rate, n_samples=n_samples, n_before=n_before, n_after=n_after
    )
    used = ~(before | after) if edges == "zeros" else ~(before | after | clipped)

    def per_unit(mask: NDArray[np.bool_]) -> NDArray[np.int64]:
        return np.bincount(rows[mask], minlength=n_units).astype(np.int64)

    frames, frame = _eta_frames(_eta_movie(x), sample[used], n_before, n_after, edges)
    with warnings.catch_warnings():
        # blocked_sta names empty units in terms of spikes; the warning below names events
        warnings.simplefilter("ignore", EmptyUnitWarning)
        result = blocked_sta(
            frames,
            frame + 0.5,  # the middle of the frame: floor() is exact
            ids[rows[used]],
            fps=1.0,
            n_lags=n_offsets,
            onset=0.0,
            unit_ids=ids,
            split_every=split_every,
        )
    n_used = per_unit(used)
    _warn_no_events(ids, n_used)
    logger.debug(
        "event_triggered_average: %d of %d events used (%d before, %d after the signal, "
        "%d clipped, edges=%s); offsets %d..%d samples over %d samples",
        int(used.sum()),
        times.size,
        int(before.sum()),
        int(after.sum()),
        int(clipped.sum()),
        edges,
        -n_before,
        n_after,
        n_samples,
    )
    return BlockedEta(
        eta=_eta_from_sta(result.sta, x.shape),
        offsets=np.arange(-n_before, n_after + 1, dtype=np.int64),
        unit_ids=ids,
        n_used=n_used,
        n_before=per_unit(before),
        n_after=per_unit(after),
        n_clipped=per_unit(clipped),
        sampling_rate=rate,
        edges=edges,
    )
