"""Spike-triggered averages over chunked movies: tree reductions.

See :mod:`neurobatch.kernels.sta` for the kernels, and
:mod:`neurobatch.engine.blocked.eta` for the event-triggered average of continuous signals.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph
from numpy.typing import ArrayLike, NDArray

from neurobatch.engine.blocked._reduce import tree_levels, validate_split_every
from neurobatch.kernels import binning
from neurobatch.kernels import sta as sta_kernels

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class BlockedSta:
    """A lazy spike-triggered average and the spike bookkeeping behind it.

    Attributes
    ----------
    sta : dask.array.Array
        Shape ``(n_units, n_lags, y, x)``, float64, lazy; chunks
        ``((n_units,), (n_lags,), movie.chunks[1], movie.chunks[2])``: one chunk per pixel
        tile of the movie. NaN for a unit without usable spikes.
    bins : neurobatch.kernels.binning.SpikeBins
        Computed eagerly: unit labels (``bins.unit_ids``, the rows of ``sta``), usable and
        excluded spike counts per unit, lags in frames and seconds.
    """

    sta: da.Array
    bins: binning.SpikeBins


def _sta_split_every(split_every: int | None) -> int:
    """Return the fan-in of the STA tree reduction: ``split_every`` or dask's default."""
    if split_every is None:
        configured = dask.config.get("split_every", None)
        if isinstance(configured, dict):
            configured = configured.get(0)
        split_every = 4 if configured is None else configured
    return int(validate_split_every(split_every))  # type: ignore[arg-type]


def _compact_counts(counts: Any) -> Any:
    """A block's sparse counts, or the same as a dense array of small integers if smaller.

    What a leaf task carries: one byte a (unit, frame) cell when the counts are dense enough
    and below 256 (the sparse form takes 8 bytes a non-zero cell).
    """
    peak = int(counts.data.max()) if counts.nnz else 0
    dtype = np.min_scalar_type(peak)
    dense_bytes = counts.shape[0] * counts.shape[1] * dtype.itemsize
    sparse_bytes = counts.nnz * 8 + 4 * (counts.shape[1] + 1)
    return counts.toarray().astype(dtype) if dense_bytes < sparse_bytes else counts


def _sta_block(n_lags: int, counts: Any, frames: NDArray[Any]) -> sta_kernels.StaPartial:
    """One block's partial STA: its frames and the counts reaching ``n_lags - 1`` past them."""
    return sta_kernels.sta_chunk(counts, frames, n_lags=n_lags)


def _sta_combine(*parts: sta_kernels.StaPartial) -> sta_kernels.StaPartial:
    """Add the partials of one node of the tree."""
    return sta_kernels.sta_combine(parts)


def _sta_aggregate(
    shape: tuple[int, int, int, int], *parts: sta_kernels.StaPartial
) -> NDArray[np.float64]:
    """Root of the tree: add the last partials and divide (NaN where a unit has no spike).

    Empty units were already warned about, on the client, when the graph was built.
    """
    if not parts:
        return np.full(shape, np.nan, dtype=np.float64)
    combined = parts[0] if len(parts) == 1 else sta_kernels.sta_combine(parts)
    return sta_kernels.sta_agg(combined, warn=False)


def _validate_movie(movie: da.Array | ArrayLike) -> da.Array:
    """Return the movie as a dask array, or raise unless it is 3-D, real, with known chunks."""
    x: da.Array = movie if isinstance(movie, da.Array) else da.asarray(movie)
    if x.ndim != 3:
        raise ValueError(f"movie must be 3-D (frame, y, x), got shape {x.shape}.")
    if x.dtype.kind not in "biuf":
        raise TypeError(f"movie must hold real numbers, got dtype {x.dtype}.")
    if any(np.isnan(size) for size in x.chunks[0]):
        raise ValueError(
            "movie has unknown chunk sizes along frames; call movie.compute_chunk_sizes() first."
        )
    return x


def _sta_blocks(x: da.Array, bins: binning.SpikeBins) -> dict[int, Any]:
    """The counts each frame block's task carries, by block, for the blocks some usable
    spike's window reaches: the counts of the block's frames and of the ``n_lags - 1``
    frames after them (:func:`~neurobatch.kernels.sta.sta_chunk`), compacted."""
    counts = sta_kernels._pad_counts(bins.counts, bins.n_lags)
    offsets = np.cumsum((0, *x.chunks[0]))
    carried: dict[int, Any] = {}
    for b in range(len(x.chunks[0])):
        block = counts[:, int(offsets[b]) : int(offsets[b + 1]) + bins.n_lags - 1]
        if block.nnz:
            carried[b] = _compact_counts(block)
    return carried


def blocked_sta(
    movie: da.Array | ArrayLike,
    spike_times: ArrayLike,
    units: ArrayLike,
    *,
    fps: float,
    n_lags: int,
    onset: float = 0.0,
    unit_ids: ArrayLike | None = None,
    split_every: int | None = None,
) -> BlockedSta:
    """Spike-triggered average of every unit over a movie chunked along frames, lazily.

    The same result as :func:`neurobatch.kernels.sta.spike_triggered_average` (to rounding),
    computed as a tree reduction over the movie's frame blocks. The spikes are binned
    eagerly (:func:`~neurobatch.kernels.binning.bin_spikes`). Frame ``i`` is lag ``k`` of
    the spikes in frame ``i + k``, so the task of block ``b`` gets the block's frames, and
    nothing else of the movie, with the counts of its frames and of the ``n_lags - 1``
    frames after it: the blocks' counts overlap, not their frames (so each chunk is read
    by one task, chunks of any length work, and nothing is rechunked). It returns a partial
    ``{"total", "n"}`` (:func:`~neurobatch.kernels.sta.sta_chunk`); partials are added
    ``split_every`` at a time, and the root divides. A block's counts travel in its task,
    as a sparse array or, when smaller, a dense one of small integers.

    Blocks that no usable spike's window reaches contribute nothing and are not read at
    all. Any chunking along ``y`` and ``x`` works: each pixel tile is reduced on its own,
    and the output is chunked like the movie along ``y`` and ``x``. A task holds its block,
    its counts and one partial of ``n_units * n_lags * tile_y * tile_x`` float64 values, so
    memory does not depend on the movie's length; chunk ``y``/``x`` to shrink the partials
    when there are many units.

    Parameters
    ----------
    movie : dask.array.Array or array_like
        Shape ``(n_frames, y, x)``, real: the stimulus movie, chunked along frames (a NumPy
        array becomes one chunk per dask's default chunking). Frames must be finite; each
        block checks its frames when it is computed.
    spike_times : array_like
        Shape ``(n_spikes,)``: spike times in seconds.
    units : array_like
        Shape ``(n_spikes,)``: the unit label of each spike.
    fps : float
        Frame rate of the movie, frames per second; > 0.
    n_lags : int
        Number of lags, in ``[1, n_frames]``; lag ``k`` is ``k`` frames before the spike's
        frame.
    onset : float, default 0.0
        Time at which frame 0 starts, in seconds.
    unit_ids : array_like, optional
        The units to report, in this order; see :func:`~neurobatch.kernels.binning.bin_spikes`.
    split_every : int, optional
        Fan-in of the tree reduction (>= 2): how many partials each combine step adds. By
        default dask's ``split_every`` setting, else 4.

    Returns
    -------
    BlockedSta
        ``sta``: a lazy dask array of shape ``(n_units, n_lags, y, x)``, float64, chunks
        ``((n_units,), (n_lags,), movie.chunks[1], movie.chunks[2])``; ``bins``: the unit
        labels and the usable and excluded spike counts, computed now.

    Raises
    ------
    ValueError
        If ``movie`` is not 3-D or has unknown chunk sizes along frames, ``split_every`` is
        not an integer >= 2, or for the reasons listed in
        :func:`~neurobatch.kernels.binning.bin_spikes`. A block whose frames hold NaN or
        infinity raises when it is computed.
    TypeError
        If ``movie`` does not hold real numbers.

    Warns
    -----
    EmptyUnitWarning
        When the graph is built, naming each unit that has no usable spike.

    See Also
    --------
    neurobatch.kernels.sta.spike_triggered_average : The same on an in-memory movie.

    Examples
    --------
    A 1-pixel movie whose frame ``i`` has the value ``i``, in chunks of 3 frames:

    >>> movie = da.arange(20.0, chunks=3).reshape(20, 1, 1)
    >>> result = blocked_sta(movie, [0.55, 0.75, 1.05, 0.05], [1, 1, 2, 2], fps=10.0,
    ...                      n_lags=4, split_every=2)
    >>> result.sta.chunks
    ((2,), (4,), (1,), (1,))
    >>> result.sta.compute()[:, :, 0, 0]
    array([[ 6.,  5.,  4.,  3.],
           [10.,  9.,  8.,  7.]])
    >>> result.bins.n_used.tolist(), result.bins.n_too_early.tolist()
    ([2, 1], [0, 1])
    """
    x = _validate_movie(movie)
    fan_in = _sta_split_every(split_every)
    bins = binning.bin_spikes(
        spike_times,
        units,
        fps=fps,
        n_frames=x.shape[0],
        n_lags=n_lags,
        onset=onset,
        unit_ids=unit_ids,
    )
    sta_kernels._warn_empty_units(bins.unit_ids, bins.n_used, stacklevel=2)

    tiles = list(itertools.product(range(len(x.chunks[1])), range(len(x.chunks[2]))))
    carried = _sta_blocks(x, bins)
    name = f"sta-{tokenize(x, carried, bins.n_lags, fan_in)}"
    # Leaf b of tile (ty, tx): the movie's chunk b alone and its counts, which travel inside
    # the task (no task of their own to run on some worker and fetch from there).
    dsk: dict[Any, Any] = {
        (f"{name}-partial", 0, b, ty, tx): (_sta_block, bins.n_lags, counts, (x.name, b, ty, tx))
        for b, counts in carried.items()
        for ty, tx in tiles
    }
    leaves = list(carried)
    keys, level = tree_levels(dsk, f"{name}-partial", leaves, tiles, fan_in, _sta_combine)
    for ty, tx in tiles:
        shape = (bins.n_units, bins.n_lags, x.chunks[1][ty], x.chunks[2][tx])
        dsk[(name, 0, 0, ty, tx)] = (_sta_aggregate, shape, *((*key, ty, tx) for key in keys))

    logger.debug(
        "blocked_sta: %d usable spikes of %d units; %d of %d frame blocks in their windows, "
        "each read by one task; tree of depth %d (split_every=%d)",
        int(bins.n_used.sum()),
        bins.n_units,
        len(leaves),
        len(x.chunks[0]),
        level + 1,
        fan_in,
    )
    # dask's own stubs disagree with themselves on Array vs DaskCollection.
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[x])  # type: ignore[list-item]
    sta = da.Array(
        graph,
        name,
        chunks=((bins.n_units,), (bins.n_lags,), x.chunks[1], x.chunks[2]),
        meta=np.empty((0, 0, 0, 0), dtype=np.float64),
    )
    return BlockedSta(sta=sta, bins=bins)
