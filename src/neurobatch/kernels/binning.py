"""Spike-count binning: spike times to sparse per-(unit, frame) counts, for the STA.

A stimulus movie is shown at ``fps`` frames per second from ``onset`` seconds on. A spike at
time ``t`` falls in frame ``N = floor((t - onset) * fps)``, and its STA window is the
``n_lags`` frames ``N, N - 1, ..., N - n_lags + 1``. A spike is usable when its whole window
lies in the movie; the others are excluded and counted per unit (before the movie, at or
after its end, or too early for the whole window). :func:`bin_spikes` counts both, as a
:class:`SpikeBins`; :mod:`neurobatch.kernels.sta` multiplies the counts with the frames.
Pure NumPy and SciPy: no dask, no I/O, no logging.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse
from numpy.typing import ArrayLike, NDArray

from neurobatch.kernels._validation import validate_finite, validate_same_length

__all__ = ["SpikeBins", "bin_spikes"]

#: How many unit labels an :class:`~neurobatch.errors.EmptyUnitWarning` lists before it says
#: "and N more".
_MAX_NAMED_UNITS = 10


@dataclass(frozen=True, eq=False)
class SpikeBins:
    """Spike counts per (unit, frame) of the usable spikes, and what was excluded.

    Attributes
    ----------
    counts : scipy.sparse.csc_array
        Shape ``(n_units, n_frames)``, int32: ``counts[u, N]`` is how many usable spikes of
        unit ``u`` fall in frame ``N``. Columns ``0 .. n_lags - 2`` are empty (those spikes
        are too early for the whole window). Compressed by frame, so ``counts[:, a:b]`` is
        cheap; memory grows with the number of spikes, not with ``n_units * n_frames``.
    unit_ids : numpy.ndarray
        Shape ``(n_units,)``: the label of each row of ``counts``.
    n_used, n_before, n_after, n_too_early : numpy.ndarray
        Shape ``(n_units,)``, int64: per unit, the spikes used; those before the movie
        (``N < 0``); those at or after its end (``N >= n_frames``); and those inside the
        movie but too early for the whole window (``N < n_lags - 1``). The four add up to
        the unit's number of spikes.
    fps : float
        Frames per second of the movie.
    onset : float
        Time of the start of frame 0, in the spike times' unit (seconds).
    n_frames : int
        Number of frames of the movie.
    n_lags : int
        Number of lags of the STA window.

    Examples
    --------
    >>> bins = bin_spikes([0.25, 0.35, 0.95, 2.0], [7, 7, 3, 3], fps=10.0, n_frames=10,
    ...                   n_lags=3)
    >>> bins.unit_ids.tolist(), bins.n_used.tolist(), bins.n_after.tolist()
    ([3, 7], [1, 2], [1, 0])
    >>> bins.counts.toarray()
    array([[0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
           [0, 0, 1, 1, 0, 0, 0, 0, 0, 0]], dtype=int32)
    >>> bins.lag_times.tolist()
    [0.0, 0.1, 0.2]
    """

    counts: Any
    unit_ids: NDArray[Any]
    n_used: NDArray[np.int64]
    n_before: NDArray[np.int64]
    n_after: NDArray[np.int64]
    n_too_early: NDArray[np.int64]
    fps: float
    onset: float
    n_frames: int
    n_lags: int

    @property
    def n_units(self) -> int:
        """Number of units (rows of ``counts``)."""
        return int(self.unit_ids.shape[0])

    @property
    def lags(self) -> NDArray[np.int64]:
        """Lags in frames, ``0 .. n_lags - 1`` (lag ``k`` is frame ``N - k``)."""
        return np.arange(self.n_lags, dtype=np.int64)

    @property
    def lag_times(self) -> NDArray[np.float64]:
        """Lags in seconds, ``lags / fps`` (how far before the spike's frame)."""
        return self.lags / self.fps


def _validate_fps(fps: float) -> float:
    """Return ``fps`` as a float, or raise unless it is finite and > 0."""
    if isinstance(fps, bool) or not isinstance(fps, numbers.Real):
        raise TypeError(f"fps must be a real number, got {fps!r} of type {type(fps).__name__}.")
    value = float(fps)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"fps must be a finite number > 0 (frames per second), got {fps!r}.")
    return value


def _validate_onset(onset: float) -> float:
    """Return ``onset`` as a float, or raise unless it is finite."""
    if isinstance(onset, bool) or not isinstance(onset, numbers.Real):
        raise TypeError(
            f"onset must be a real number (seconds), got {onset!r} of type {type(onset).__name__}."
        )
    value = float(onset)
    if not math.isfinite(value):
        raise ValueError(f"onset must be finite (seconds), got {onset!r}.")
    return value


def _validate_int(
    value: int,
    name: str,
    *,
    minimum: int,
    maximum: int | None = None,
    maximum_name: str | None = None,
) -> int:
    """Return ``value`` as an int, or raise unless it is an integer in the range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} of type {type(value).__name__}.")
    result = int(value)
    if result < minimum or (maximum is not None and result > maximum):
        upper = f"{maximum_name}={maximum}" if maximum_name else str(maximum)
        allowed = f">= {minimum}" if maximum is None else f"in [{minimum}, {upper}]"
        raise ValueError(f"{name} must be an integer {allowed}, got {result}.")
    return result


def _validate_n_lags(n_lags: int, n_frames: int | None = None) -> int:
    """Return ``n_lags``, or raise unless ``1 <= n_lags <= n_frames``."""
    if n_frames is None:
        return _validate_int(n_lags, "n_lags", minimum=1)
    return _validate_int(n_lags, "n_lags", minimum=1, maximum=n_frames, maximum_name="n_frames")


#: Binning builds tables in linear time instead of sorting: one indexed by unit label when the
#: integer labels span at most max(_SMALL_TABLE, n_spikes) values, one of spike counts per
#: (unit, frame) cell when there are at most _CELLS_PER_SPIKE * n_spikes + _SMALL_TABLE cells.
_SMALL_TABLE = 2**16
_CELLS_PER_SPIKE = 4


def _label_offsets(labels: NDArray[Any]) -> tuple[int, NDArray[np.intp]] | None:
    """``(lo, labels - lo)`` for integer labels within a small span, else None."""
    if labels.size == 0 or not (
        labels.dtype.kind == "i" or (labels.dtype.kind == "u" and labels.dtype.itemsize < 8)
    ):
        return None
    lo, hi = int(labels.min()), int(labels.max())
    if hi - lo >= max(labels.size, _SMALL_TABLE):
        return None
    return lo, labels.astype(np.intp) - lo


def _unit_rows(
    labels: NDArray[Any], unit_ids: ArrayLike | None
) -> tuple[NDArray[Any], NDArray[np.intp]]:
    """Return the unit labels (one per row) and each spike's row."""
    table = _label_offsets(labels)
    if unit_ids is None:
        if table is not None:
            lo, offsets = table
            seen = np.bincount(offsets) > 0
            ids = (np.flatnonzero(seen) + lo).astype(labels.dtype)
            return ids, (np.cumsum(seen) - 1)[offsets].astype(np.intp)
        ids, rows = np.unique(labels, return_inverse=True)
        return ids, rows.reshape(-1).astype(np.intp)
    ids = np.asarray(unit_ids)
    if ids.ndim != 1:
        raise ValueError(f"unit_ids must be 1-D, got shape {ids.shape}.")
    uniq, first, n_seen = np.unique(ids, return_index=True, return_counts=True)
    if uniq.size != ids.size:
        dupes = uniq[n_seen > 1][:_MAX_NAMED_UNITS].tolist()
        raise ValueError(f"unit_ids must be unique, got repeated label(s) {dupes}.")
    order = first  # uniq == ids[first], sorted
    if ids.size == 0:
        if labels.size:
            raise ValueError(
                f"units holds label(s) missing from unit_ids (which is empty): "
                f"{np.unique(labels)[:_MAX_NAMED_UNITS].tolist()}."
            )
        return ids, np.zeros(0, dtype=np.intp)
    if table is not None and uniq.dtype.kind in "iu":
        lo, offsets = table
        row_of = np.full(int(offsets.max()) + 1, -1, dtype=np.intp)
        inside = (uniq >= lo) & (uniq < lo + row_of.size)
        row_of[uniq[inside].astype(np.intp) - lo] = order[inside]
        rows = row_of[offsets]
        found = rows >= 0
    else:
        pos = np.minimum(np.searchsorted(uniq, labels), uniq.size - 1)
        found = uniq[pos] == labels
        rows = order[pos].astype(np.intp)
    if not found.all():
        missing = np.unique(labels[~found])
        raise ValueError(
            f"units holds {missing.size} label(s) missing from unit_ids: "
            f"{missing[:_MAX_NAMED_UNITS].tolist()}; add them to unit_ids or drop "
            "those spikes."
        )
    return ids, rows


def bin_spikes(
    spike_times: ArrayLike,
    units: ArrayLike,
    *,
    fps: float,
    n_frames: int,
    n_lags: int,
    onset: float = 0.0,
    unit_ids: ArrayLike | None = None,
) -> SpikeBins:
    """Count each unit's usable spikes per movie frame, and count the excluded ones.

    A spike at time ``t`` falls in frame ``N = floor((t - onset) * fps)``. It is usable when
    ``n_lags - 1 <= N < n_frames``, so that its whole window ``N - n_lags + 1 .. N`` lies in
    the movie; otherwise it is counted as before the movie (``N < 0``), after it
    (``N >= n_frames``) or too early for the window (``0 <= N < n_lags - 1``).

    Parameters
    ----------
    spike_times : array_like
        Shape ``(n_spikes,)``: spike times in seconds, any order.
    units : array_like
        Shape ``(n_spikes,)``: the unit label of each spike (integers or strings).
    fps : float
        Frame rate of the movie, frames per second; > 0.
    n_frames : int
        Number of frames of the movie; >= 1.
    n_lags : int
        Number of lags of the STA window, in ``[1, n_frames]``.
    onset : float, default 0.0
        Time at which frame 0 starts, in seconds (same clock as ``spike_times``).
    unit_ids : array_like, optional
        Shape ``(n_units,)``: the units to report, in this order, unique; units without
        spikes get all-zero counts (and a NaN STA). By default the sorted unique labels of
        ``units``.

    Returns
    -------
    SpikeBins
        Sparse counts of shape ``(n_units, n_frames)`` and the per-unit exclusion counts.

    Raises
    ------
    ValueError
        If ``fps`` is not > 0, ``n_lags`` is not in ``[1, n_frames]``, a spike time is NaN
        or infinite, ``spike_times`` and ``units`` differ in length or are not 1-D, or a
        label of ``units`` is missing from ``unit_ids``.
    TypeError
        If ``fps``, ``onset``, ``n_frames`` or ``n_lags`` has the wrong type, or
        ``spike_times`` is not numeric.

    See Also
    --------
    neurobatch.kernels.sta.sta_chunk : Multiply a block of these counts with the block's frames.

    Examples
    --------
    Frame 0 starts at 1 s, 10 frames per second, a window of 2 frames:

    >>> bins = bin_spikes([0.5, 1.05, 1.15, 1.17, 3.0], ["a", "a", "b", "b", "b"],
    ...                   fps=10.0, n_frames=10, n_lags=2, onset=1.0)
    >>> bins.unit_ids.tolist()
    ['a', 'b']
    >>> bins.n_used.tolist(), bins.n_before.tolist(), bins.n_too_early.tolist()
    ([0, 2], [1, 0], [1, 0])
    >>> bins.n_after.tolist()
    [0, 1]
    >>> bins.counts[:, :3].toarray()
    array([[0, 0, 0],
           [0, 2, 0]], dtype=int32)

    >>> bin_spikes([0.1], [0], fps=0, n_frames=5, n_lags=2)
    Traceback (most recent call last):
    ...
    ValueError: fps must be a finite number > 0 (frames per second), got 0.
    """
    fps = _validate_fps(fps)
    onset = _validate_onset(onset)
    n_frames = _validate_int(n_frames, "n_frames", minimum=1)
    n_lags = _validate_n_lags(n_lags, n_frames)
    times = np.asarray(spike_times)
    labels = np.asarray(units)
    if times.ndim != 1:
        raise ValueError(f"spike_times must be 1-D (n_spikes,), got shape {times.shape}.")
    if labels.ndim != 1:
        raise ValueError(f"units must be 1-D (n_spikes,), got shape {labels.shape}.")
    if times.dtype.kind not in "iuf":
        raise TypeError(f"spike_times must be numeric (seconds), got dtype {times.dtype}.")
    validate_same_length(spike_times=times, units=labels)
    validate_finite(times, "spike_times")
    validate_finite(labels, "units")

    ids, rows = _unit_rows(labels, unit_ids)
    n_units = int(ids.shape[0])
    frame = np.floor((times.astype(np.float64) - onset) * fps)
    before = frame < 0
    after = frame >= n_frames
    too_early = ~before & (frame < n_lags - 1)
    used = ~(before | after | too_early)
    # per unit, in one pass: columns used, before, after, too early
    kind = before.view(np.int8) + 2 * after.view(np.int8) + 3 * too_early.view(np.int8)
    tally = np.bincount(4 * rows + kind, minlength=4 * n_units).reshape(n_units, 4)

    # (unit, frame) cells in frame-major order, so that sorted cells are a canonical CSC
    cells = frame[used].astype(np.int64) * n_units + rows[used]
    if n_units * n_frames <= _CELLS_PER_SPIKE * cells.size + _SMALL_TABLE:
        per_cell = np.bincount(cells, minlength=n_units * n_frames)
        cells = np.flatnonzero(per_cell)
        n_per_cell = per_cell[cells]
    else:
        cells, n_per_cell = np.unique(cells, return_counts=True)
    indptr = np.searchsorted(cells, np.arange(n_frames + 1, dtype=np.int64) * n_units)
    counts = scipy.sparse.csc_array(
        (n_per_cell.astype(np.int32), cells % max(n_units, 1), indptr),
        shape=(n_units, n_frames),
    )
    return SpikeBins(
        counts=counts,
        unit_ids=ids,
        n_used=tally[:, 0].astype(np.int64),
        n_before=tally[:, 1].astype(np.int64),
        n_after=tally[:, 2].astype(np.int64),
        n_too_early=tally[:, 3].astype(np.int64),
        fps=fps,
        onset=onset,
        n_frames=n_frames,
        n_lags=n_lags,
    )
