"""Spike-triggered-average (STA) partial sums: chunk, combine, aggregate.

A stimulus movie ``frames(frame, y, x)`` is shown at ``fps`` frames per second from
``onset`` seconds on. A spike at time ``t`` falls in frame ``N = floor((t - onset) * fps)``,
and its window is the ``n_lags`` frames ``N, N - 1, ..., N - n_lags + 1``. The STA of unit
``u`` at lag ``k`` is the mean of ``frames[N - k]`` over the unit's usable spikes:

    sta[u, k] = mean over spikes s of u of frames[frame(s) - k],  k = 0 .. n_lags - 1

so lag 0 is the frame the spike falls in and larger lags reach back in time. A spike is
usable when its whole window lies in the movie; the others are excluded and counted per unit
(before the movie, at or after its end, or too early for the whole window). Every usable
spike contributes to every lag, so all lags of a unit share one spike count, and a mean over
lags (the "collapsed" STRF, e.g. frames ``N - 4 .. N`` for a delay of 5 frames) is simply
``sta[:, :5].mean(axis=1)``.

The STA is a reduction over frames, written as a chunk/combine/aggregate trio:

- :func:`~neurobatch.kernels.binning.bin_spikes` turns spike times into sparse
  per-(unit, frame) spike counts (a ``scipy.sparse.csc_array``, so a range of frames slices
  cheaply) plus the exclusion counts;
- :func:`sta_chunk` multiplies a block of frames with the counts of the spikes whose
  windows reach into it (those in its frames and the ``n_lags - 1`` frames after them):
  matrix products (dense BLAS products with the lags stacked, or sparse products for
  blocks with few spikes), never a Python loop over spikes; it returns ``{"total", "n"}``.
  A block needs no frame of another block: the blocks' counts overlap, not their frames;
- :func:`sta_combine` adds partials and :func:`sta_agg` divides, giving NaN and an
  :class:`~neurobatch.errors.EmptyUnitWarning` for a unit without usable spikes.

:func:`spike_triggered_average` runs the three on a whole in-memory movie. Pure NumPy and
SciPy: no dask, no I/O, no logging.

Precision: a float32 movie is multiplied in float32, without a float64 copy of its frames:
each product sums at most 4096 frames in float32, and those sums are added in float64. The
result is then within about ``1e-7`` times the movie's largest magnitude of the exact
(float64) sums; the tests hold it to ``1e-6``. Any other movie (float64, integers) is
multiplied in float64.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

import numpy as np
import scipy.sparse
from numpy.typing import ArrayLike, NDArray

from neurobatch.errors import EmptyUnitWarning
from neurobatch.kernels._validation import validate_finite
from neurobatch.kernels.binning import _MAX_NAMED_UNITS, SpikeBins, _validate_n_lags, bin_spikes

__all__ = [
    "StaPartial",
    "StaResult",
    "spike_triggered_average",
    "sta_agg",
    "sta_chunk",
    "sta_combine",
]


class StaPartial(TypedDict):
    """A partial STA sum over some frames: what :func:`sta_chunk` returns.

    ``total`` has shape ``(n_units, n_lags, y, x)`` (float64): for each unit and lag, the sum
    of ``frames[N - lag]`` over the unit's usable spikes in those frames. ``n`` has shape
    ``(n_units,)`` (int64): how many spikes went into the sum.
    """

    total: NDArray[np.float64]
    n: NDArray[np.int64]


@dataclass(frozen=True, eq=False)
class StaResult:
    """The spike-triggered average of every unit, and the spike bookkeeping behind it.

    Attributes
    ----------
    sta : numpy.ndarray
        Shape ``(n_units, n_lags, y, x)``, float64; NaN for a unit without usable spikes.
    bins : SpikeBins
        The binned spikes: unit labels, usable and excluded spike counts, lags.
    """

    sta: NDArray[np.float64]
    bins: SpikeBins


#: Values per step of the finiteness check (its boolean buffer is reused by every step).
_CHECK_STEP = 2**16


def _validate_movie(frames: ArrayLike, name: str) -> NDArray[Any]:
    """Return ``frames`` as a finite, real, 3-D array ``(frame, y, x)``, or raise.

    Checked a step of frames at a time, with one small buffer: no array of the movie's size
    is allocated (fresh memory costs a page fault every 4 KiB on workers that hand freed
    memory back to the system).
    """
    arr = np.asarray(frames)
    if arr.ndim != 3:
        raise ValueError(f"{name} must be 3-D (frame, y, x), got shape {arr.shape}.")
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}.")
    if arr.dtype.kind == "f" and arr.size:
        rows = max(1, _CHECK_STEP // max(1, arr[0].size))
        buffer = np.empty((rows, *arr.shape[1:]), dtype=bool)
        for r0 in range(0, arr.shape[0], rows):
            part = arr[r0 : r0 + rows]
            if not np.isfinite(part, out=buffer[: part.shape[0]]).all():
                validate_finite(arr, name)  # raises, counting and locating the values
    return arr


#: A block whose spike counts fill at least this share of its (spiking unit x frame) cells is
#: multiplied as dense matrices (BLAS); a sparser one as a sparse product. Measured on one
#: core, 16 x 16 float32 pixels, 8 lags, 54,000 frames of 16 units: dense ~65 ms whatever the
#: spikes; sparse ~40 ms at 0.8 % of the cells, ~70 ms at 1.6 %, ~120 ms at 3 %, ~300 ms at 11 %.
_DENSE_MIN_DENSITY = 1 / 32
#: Frames per dense product: the lag-stacked weights of a step take at most this many bytes,
#: or a quarter of the partial sum's when that is more ...
_STACK_BYTES = 2 * 2**20
#: ... and a step holds at most this many frames: a float32 product sums at most these in float32.
_MAX_STEP = 4096


def _work_dtype(frames: NDArray[Any]) -> type[np.floating[Any]]:
    """float32 for a movie of float32 (or float16) values, float64 for the others."""
    if frames.dtype.kind == "f" and frames.dtype.itemsize <= 4:
        return np.float32
    return np.float64


def _dense_sums(weights: NDArray[Any], movie: NDArray[Any], n_lags: int) -> NDArray[np.float64]:
    """``total[u, k] = sum_i weights[u, i + k] * movie[i]`` as dense products.

    ``weights`` is dense ``(U, F + n_lags - 1)`` in the movie's working precision, ``movie``
    is ``(F, P)``. The lags are stacked into the rows of one weight matrix per step of
    frames, ``W[u, k, i] = weights[u, i + k]`` (copied from a sliding-window view), so that
    ``W @ movie[step]`` is a single matrix product (BLAS, in the movie's precision: float32
    for a float32 movie, with no float64 copy of the frames); the steps' ``(U * n_lags, P)``
    results are added in float64. The steps reuse one buffer for ``W``, one for the product
    and, for an integer movie, one for its frames in float64: no fresh memory per step.
    """
    n_units = weights.shape[0]
    n_frames, n_pixels = movie.shape
    dtype = weights.dtype
    total = np.zeros((n_units * n_lags, n_pixels), dtype=np.float64)
    budget = max(_STACK_BYTES, total.nbytes // 4)
    step = min(max(budget // (n_units * n_lags * dtype.itemsize), 1), _MAX_STEP, n_frames)
    # windows[u, k, i] = weights[u, k + i]: the weight of frame i at lag k
    windows = np.lib.stride_tricks.sliding_window_view(weights, n_frames, axis=1)
    stacked = np.empty((n_units, n_lags, step), dtype=dtype)
    product = np.empty((n_units * n_lags, n_pixels), dtype=dtype)
    frames = None if movie.dtype == dtype else np.empty((step, n_pixels), dtype=dtype)
    for s0 in range(0, n_frames, step):
        n = min(n_frames, s0 + step) - s0
        np.copyto(stacked[:, :, :n], windows[:, :, s0 : s0 + n])
        if frames is None:
            right = movie[s0 : s0 + n]
        else:
            right = frames[:n]
            np.copyto(right, movie[s0 : s0 + n])
        np.matmul(stacked[:, :, :n].reshape(n_units * n_lags, n), right, out=product)
        total += product
    return total.reshape(n_units, n_lags, n_pixels)


def _sparse_sums(weights: Any, movie: NDArray[Any], n_lags: int) -> NDArray[np.float64]:
    """The same sums as :func:`_dense_sums`, one sparse-times-dense product per lag (float64).

    ``weights`` is a sparse ``(U, F + n_lags - 1)`` array. For blocks with few spikes per
    cell, where touching only the non-zero counts beats BLAS.
    """
    n_frames = movie.shape[0]
    columns = scipy.sparse.csc_array(weights).astype(np.float64)
    frames = movie.astype(np.float64, copy=False)
    total = np.empty((weights.shape[0], n_lags, movie.shape[1]), dtype=np.float64)
    for lag in range(n_lags):
        total[:, lag] = scipy.sparse.csr_array(columns[:, lag : lag + n_frames]) @ frames
    return total


def _validate_counts(counts_block: Any) -> Any:
    """Return the counts as a 2-D sparse array or NumPy array of integers, or raise."""
    if scipy.sparse.issparse(counts_block):
        counts = scipy.sparse.csr_array(counts_block)
        counts.sum_duplicates()
        values = counts.data
    else:
        counts = values = np.asarray(counts_block)
    if counts.ndim != 2:
        raise ValueError(
            f"counts_block must be 2-D (n_units, F + n_lags - 1), got shape {counts.shape}."
        )
    if values.size and values.min() < 0:
        raise ValueError(f"counts_block must hold spike counts >= 0, got {values.min()}.")
    return counts


def sta_chunk(counts_block: Any, frames_block: ArrayLike, *, n_lags: int) -> StaPartial:
    """Add up what one block of frames gives to the windows of the spikes.

    Layout contract: ``frames_block`` holds ``F`` consecutive frames ``a .. a + F - 1`` (a
    block of the movie); ``counts_block`` covers the same frames and the ``n_lags - 1``
    frames after them, ``a .. a + F + n_lags - 2``: the spikes whose window reaches into the
    block. Frame ``a + i`` is lag ``k`` of the spikes in frame ``a + i + k``, so for each
    lag ``k``

        total[:, k] = counts_block[:, k : k + F] @ frames_block

    over the pixels flattened. Each block needs no frame but its own. ``n`` counts the
    spikes in the block's own frames (the first ``F`` columns), whose lag 0 it holds.
    Cutting the movie into blocks (the counts of each overlapping the next block's first
    ``n_lags - 1`` frames) and adding the partials gives the whole-movie sum; the columns
    past the movie's end hold no spike (zeros).

    The lags are stacked into one dense product per step of frames (BLAS) when the spiking
    units' counts fill at least 1/32 of their cells, else each lag is a sparse-times-dense
    product. A float32 movie is multiplied in float32 (see the module's note on precision),
    any other in float64.

    Parameters
    ----------
    counts_block : scipy.sparse array or array_like
        Shape ``(n_units, F + n_lags - 1)``: non-negative spike counts per unit and frame
        (e.g. ``SpikeBins.counts[:, a:a + F + n_lags - 1]``), sparse or dense integers.
    frames_block : array_like
        Shape ``(F, y, x)``, real and finite: the block's frames. Not copied to float64 when
        float32.
    n_lags : int
        Number of lags; >= 1.

    Returns
    -------
    StaPartial
        ``{"total": (n_units, n_lags, y, x) float64, "n": (n_units,) int64}``.

    Raises
    ------
    ValueError
        If ``n_lags < 1``, ``frames_block`` is not 3-D or holds NaN or infinity, or
        ``counts_block`` is not 2-D, has the wrong number of frames or holds a negative count.

    See Also
    --------
    sta_combine : Add partials.
    sta_agg : Divide the sum by the spike counts.

    Examples
    --------
    Two units, a block of 3 frames, ``n_lags=2`` (so the counts reach one frame further):

    >>> frames = np.arange(1.0, 4.0).reshape(3, 1, 1)  # movie frames a, a+1, a+2
    >>> counts = np.array([[1, 0, 0, 0], [0, 2, 0, 1]])  # unit 1: 2 spikes at a+1, 1 at a+3
    >>> part = sta_chunk(counts, frames, n_lags=2)
    >>> part["total"][:, :, 0, 0]  # the spike at a+3 (next block) gets frame a+2 at lag 1
    array([[1., 0.],
           [4., 5.]])
    >>> part["n"]  # spikes in frames a .. a+2
    array([1, 2])
    """
    n_lags = _validate_n_lags(n_lags)
    counts = _validate_counts(counts_block)
    frames = _validate_movie(frames_block, "frames_block")
    n_units, n_cols = counts.shape
    n_frames = frames.shape[0]
    if n_cols != n_frames + n_lags - 1:
        raise ValueError(
            f"counts_block must hold the block's {n_frames} frame(s) and the {n_lags - 1} "
            f"after them ({n_frames + n_lags - 1} in all), got {n_cols}."
        )
    ny, nx = frames.shape[1:]
    total = np.zeros((n_units, n_lags, ny * nx), dtype=np.float64)
    n = np.asarray(counts[:, :n_frames].sum(axis=1)).reshape(n_units).astype(np.int64)
    # non-zero cells per unit (a stored zero of a sparse block counts as one: no harm)
    spiking = (
        np.diff(counts.indptr)
        if scipy.sparse.issparse(counts)
        else np.count_nonzero(counts, axis=1)
    )
    active = np.flatnonzero(spiking)
    if active.size and n_frames:
        # Only the units that spike near this block: the products skip the others' rows.
        rows: slice | NDArray[np.intp] = slice(None) if active.size == n_units else active
        movie = frames.reshape(n_frames, -1)
        if spiking.sum() >= _DENSE_MIN_DENSITY * active.size * n_cols:
            dtype = _work_dtype(frames)
            weights = counts[rows]
            dense = weights.toarray() if scipy.sparse.issparse(weights) else weights
            total[rows] = _dense_sums(dense.astype(dtype, copy=False), movie, n_lags)
        else:
            total[rows] = _sparse_sums(scipy.sparse.csr_array(counts[rows]), movie, n_lags)
    return {"total": total.reshape(n_units, n_lags, ny, nx), "n": n}


def _pad_counts(counts: Any, n_lags: int) -> Any:
    """The sparse counts with ``n_lags - 1`` columns of zeros after the last frame.

    So that ``padded[:, a:b + n_lags - 1]`` is the ``counts_block`` of :func:`sta_chunk`
    for the frames ``a .. b - 1`` of the movie, its last block included.

    Parameters
    ----------
    counts : scipy.sparse.csc_array
        Shape ``(n_units, n_frames)``, e.g. :attr:`SpikeBins.counts`.
    n_lags : int
        Number of lags; >= 1.

    Returns
    -------
    scipy.sparse.csc_array
        Shape ``(n_units, n_frames + n_lags - 1)``, sharing ``counts``' values.

    Examples
    --------
    >>> bins = bin_spikes([0.5, 2.5], [0, 0], fps=1.0, n_frames=3, n_lags=2)
    >>> _pad_counts(bins.counts, 2).toarray()
    array([[0, 0, 1, 0]], dtype=int32)
    """
    n_lags = _validate_n_lags(n_lags)
    columns = scipy.sparse.csc_array(counts)
    indptr = np.concatenate([columns.indptr, np.repeat(columns.indptr[-1:], n_lags - 1)])
    n_units, n_frames = columns.shape
    return scipy.sparse.csc_array(
        (columns.data, columns.indices, indptr), shape=(n_units, n_frames + n_lags - 1)
    )


def sta_combine(parts: Sequence[StaPartial]) -> StaPartial:
    """Add partial STA sums.

    Parameters
    ----------
    parts : sequence of StaPartial
        One or more partials of the same shape, e.g. from :func:`sta_chunk` on different
        frame blocks.

    Returns
    -------
    StaPartial
        ``{"total": sum of totals, "n": sum of counts}``; the inputs are not modified.

    Raises
    ------
    ValueError
        If ``parts`` is empty or the partials differ in shape.

    Examples
    --------
    >>> a = sta_chunk(np.array([[1, 0, 0]]), np.ones((2, 1, 1)), n_lags=2)
    >>> b = sta_chunk(np.array([[0, 2, 0]]), np.full((2, 1, 1), 3.0), n_lags=2)
    >>> both = sta_combine([a, b])
    >>> both["total"].ravel().tolist(), both["n"].tolist()
    ([7.0, 6.0], [3])
    """
    if not parts:
        raise ValueError("parts must hold at least one partial, got an empty sequence.")
    total = np.array(parts[0]["total"], dtype=np.float64, copy=True)
    n = np.array(parts[0]["n"], dtype=np.int64, copy=True)
    for i, part in enumerate(parts[1:], start=1):
        if part["total"].shape != total.shape or part["n"].shape != n.shape:
            raise ValueError(
                f"parts must all have the same shapes; part 0 has total {total.shape} and "
                f"n {n.shape}, part {i} has total {part['total'].shape} and n "
                f"{part['n'].shape}."
            )
        total += part["total"]
        n += part["n"]
    return {"total": total, "n": n}


def _warn_empty_units(unit_ids: ArrayLike | None, n: NDArray[np.int64], *, stacklevel: int) -> None:
    """Warn with :class:`EmptyUnitWarning`, naming each unit whose count ``n`` is 0."""
    empty = np.flatnonzero(np.asarray(n) == 0)
    if not empty.size:
        return
    labels = np.asarray(unit_ids)[empty] if unit_ids is not None else empty
    named = ", ".join(repr(label) for label in labels[:_MAX_NAMED_UNITS].tolist())
    more = f" and {empty.size - _MAX_NAMED_UNITS} more" if empty.size > _MAX_NAMED_UNITS else ""
    warnings.warn(
        f"{empty.size} unit(s) have no usable spikes, so their STA is NaN: {named}{more}.",
        EmptyUnitWarning,
        stacklevel=stacklevel + 1,
    )


def sta_agg(
    partial: StaPartial, *, unit_ids: ArrayLike | None = None, warn: bool = True
) -> NDArray[np.float64]:
    """Divide a (combined) partial STA sum by each unit's spike count.

    Parameters
    ----------
    partial : StaPartial
        ``{"total": (n_units, n_lags, y, x), "n": (n_units,)}``, e.g. from
        :func:`sta_combine`.
    unit_ids : array_like, optional
        Shape ``(n_units,)``: labels used to name empty units in the warning; by default
        their row indices.
    warn : bool, default True
        Warn with :class:`~neurobatch.errors.EmptyUnitWarning` if a unit has no spikes.

    Returns
    -------
    numpy.ndarray
        Shape ``(n_units, n_lags, y, x)``, float64: ``total / n``, NaN where ``n == 0``.

    Warns
    -----
    EmptyUnitWarning
        If ``warn`` and some unit has ``n == 0``, naming those units.

    Examples
    --------
    >>> part = {"total": np.array([[[[6.0]]], [[[0.0]]]]), "n": np.array([3, 0])}
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     sta = sta_agg(part, unit_ids=["a", "b"])
    >>> sta.ravel()
    array([ 2., nan])
    >>> print(caught[0].message)
    1 unit(s) have no usable spikes, so their STA is NaN: 'b'.
    """
    total = np.asarray(partial["total"], dtype=np.float64)
    n = np.asarray(partial["n"], dtype=np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        sta = total / n.reshape((-1,) + (1,) * (total.ndim - 1))
    sta[n == 0] = np.nan
    if warn:
        _warn_empty_units(unit_ids, n, stacklevel=2)
    return sta


def spike_triggered_average(
    spike_times: ArrayLike,
    units: ArrayLike,
    frames: ArrayLike,
    *,
    fps: float,
    n_lags: int,
    onset: float = 0.0,
    unit_ids: ArrayLike | None = None,
) -> StaResult:
    """Compute every unit's spike-triggered average over a whole in-memory movie.

    ``sta[u, k]`` is the mean of ``frames[N - k]`` over the usable spikes of unit ``u``,
    where ``N = floor((t - onset) * fps)`` is the frame a spike at ``t`` falls in; spikes
    whose window ``N - n_lags + 1 .. N`` leaves the movie are excluded and counted (see
    :func:`bin_spikes`). For a movie that does not fit in memory use
    :func:`neurobatch.engine.blocked.blocked_sta`.

    Parameters
    ----------
    spike_times : array_like
        Shape ``(n_spikes,)``: spike times in seconds.
    units : array_like
        Shape ``(n_spikes,)``: the unit label of each spike.
    frames : array_like
        Shape ``(n_frames, y, x)``, real and finite: the stimulus movie.
    fps : float
        Frame rate of the movie, frames per second; > 0.
    n_lags : int
        Number of lags, in ``[1, n_frames]``; lag ``k`` is the frame ``k`` frames before
        the spike's own frame.
    onset : float, default 0.0
        Time at which frame 0 starts, in seconds.
    unit_ids : array_like, optional
        The units to report, in this order; see :func:`bin_spikes`.

    Returns
    -------
    StaResult
        ``sta`` of shape ``(n_units, n_lags, y, x)`` (float64, NaN for a unit without usable
        spikes) and the ``bins`` with unit labels and usable/excluded spike counts.

    Raises
    ------
    ValueError
        If ``frames`` is not 3-D or holds NaN or infinity, or for the reasons listed in
        :func:`bin_spikes`.

    Warns
    -----
    EmptyUnitWarning
        Naming each unit that has no usable spike.

    See Also
    --------
    bin_spikes, sta_chunk, sta_combine, sta_agg

    Examples
    --------
    A 1-pixel movie whose frame ``i`` has the value ``i``, at 10 frames per second:

    >>> frames = np.arange(10.0).reshape(10, 1, 1)
    >>> result = spike_triggered_average([0.55, 0.75, 0.05], [1, 1, 1], frames,
    ...                                  fps=10.0, n_lags=3)
    >>> result.sta[:, :, 0, 0]  # spikes in frames 5 and 7; frame 0 is too early
    array([[6., 5., 4.]])
    >>> result.bins.n_used.tolist(), result.bins.n_too_early.tolist()
    ([2], [1])

    The mean over the first ``d`` lags (frames ``N - d + 1 .. N``) is the collapsed STRF:

    >>> result.sta[:, :2].mean(axis=1)[:, 0, 0]
    array([5.5])
    """
    movie = _validate_movie(frames, "frames")
    bins = bin_spikes(
        spike_times,
        units,
        fps=fps,
        n_frames=movie.shape[0],
        n_lags=n_lags,
        onset=onset,
        unit_ids=unit_ids,
    )
    partial = sta_chunk(_pad_counts(bins.counts, bins.n_lags), movie, n_lags=bins.n_lags)
    sta = sta_agg(partial, warn=False)
    _warn_empty_units(bins.unit_ids, partial["n"], stacklevel=2)
    return StaResult(sta=sta, bins=bins)
