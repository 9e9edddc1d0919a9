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


def _sta_frames(block: NDArray[Any], start: int, stop: int) -> NDArray[Any]:
    """Frames ``start:stop`` of one movie chunk: a halo piece for a later block."""
    return block[start:stop]


def _sta_block(n_lags: int, counts: Any, *pieces: NDArray[Any]) -> sta_kernels.StaPartial:
    """One block's partial STA: its frames preceded by the ``n_lags - 1`` before them.

    ``pieces`` are those frames in order, the last from the block's own chunk. That chunk is
    never copied: the spikes whose window reaches into the earlier pieces are multiplied with
    those pieces joined to the chunk's first ``n_lags - 1`` frames, the others with the
    chunk alone.
    """
    if len(pieces) == 1:
        return sta_kernels.sta_chunk(counts, pieces[0], n_lags=n_lags)
    own = pieces[-1]
    before = counts.shape[1] + n_lags - 1 - own.shape[0]  # frames in the earlier pieces
    if counts.shape[1] <= before:
        return sta_kernels.sta_chunk(counts, np.concatenate(pieces, axis=0), n_lags=n_lags)
    head = np.concatenate([*pieces[:-1], own[: n_lags - 1]], axis=0)
    return sta_kernels.sta_combine(
        [
            sta_kernels.sta_chunk(counts[:, :before], head, n_lags=n_lags),
            sta_kernels.sta_chunk(counts[:, before:], own, n_lags=n_lags),
        ]
    )


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


def _sta_leaves(
    dsk: dict[Any, Any],
    name: str,
    x: da.Array,
    bins: binning.SpikeBins,
    tiles: list[tuple[int, int]],
) -> tuple[list[int], int]:
    """Add a leaf task per frame block holding usable spikes and pixel tile to ``dsk``.

    Leaf ``b`` of tile ``(ty, tx)`` is ``(f"{name}-partial", 0, b, ty, tx)``: a
    :func:`_sta_block` of the block's counts, its frames and the ``n_lags - 1`` frames
    before them (sliced out of earlier chunks by ``_sta_frames`` tasks where a chunk is
    not taken whole). Returns the leaves' blocks and how many blocks back the overlap
    reaches at most.
    """
    halo = bins.n_lags - 1
    offsets = np.cumsum((0, *x.chunks[0]))
    leaves: list[int] = []
    reach = 0
    for b in range(len(x.chunks[0])):
        # The block's own frames: spikes in frames < n_lags - 1 were excluded when binning,
        # so the first blocks start there and the overlap never reaches before frame 0.
        lo, hi = max(int(offsets[b]), halo), int(offsets[b + 1])
        if lo >= hi:
            continue
        counts = bins.counts[:, lo:hi]
        if counts.nnz == 0:
            continue
        first = int(np.searchsorted(offsets, lo - halo, side="right")) - 1
        reach = max(reach, b - first)
        for ty, tx in tiles:
            pieces: list[tuple[Any, ...]] = []
            for c in range(first, b + 1):
                start = max(lo - halo, int(offsets[c])) - int(offsets[c])
                stop = min(hi, int(offsets[c + 1])) - int(offsets[c])
                source = (x.name, c, ty, tx)
                if start == 0 and stop == x.chunks[0][c]:
                    pieces.append(source)
                else:
                    piece = (f"{name}-frames", b, c, ty, tx)
                    dsk[piece] = (_sta_frames, source, start, stop)
                    pieces.append(piece)
            # The block's counts travel inside its task: no task of their own to run on some
            # worker and fetch from there.
            dsk[(f"{name}-partial", 0, b, ty, tx)] = (_sta_block, bins.n_lags, counts, *pieces)
        leaves.append(b)
    return leaves, reach


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
    eagerly (:func:`~neurobatch.kernels.binning.bin_spikes`); each spike's frame ``N`` belongs
    to exactly one block, the one whose frames hold ``N``. The task of block ``b`` gets the
    block's spike counts, the block's frames and a one-sided overlap: the ``n_lags - 1``
    frames before the block, sliced out of as many earlier chunks as that reaches (so chunks
    shorter than ``n_lags - 1`` work, and nothing is rechunked); it returns a partial
    ``{"total", "n"}`` (:func:`~neurobatch.kernels.sta.sta_chunk`). Partials are added
    ``split_every`` at a time, and the root divides.

    Blocks holding no usable spike contribute nothing and are not read at all. Any chunking
    along ``y`` and ``x`` works: each pixel tile is reduced on its own, and the output is
    chunked like the movie along ``y`` and ``x``. A task holds its block, the overlap and one
    partial of ``n_units * n_lags * tile_y * tile_x`` float64 values, so memory does not
    depend on the movie's length; chunk ``y``/``x`` to shrink the partials when there are
    many units.

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
    name = f"sta-{tokenize(x, bins.counts, bins.n_lags, fan_in)}"
    dsk: dict[Any, Any] = {}
    leaves, reach = _sta_leaves(dsk, name, x, bins, tiles)
    keys, level = tree_levels(dsk, f"{name}-partial", leaves, tiles, fan_in, _sta_combine)
    for ty, tx in tiles:
        shape = (bins.n_units, bins.n_lags, x.chunks[1][ty], x.chunks[2][tx])
        dsk[(name, 0, 0, ty, tx)] = (_sta_aggregate, shape, *((*key, ty, tx) for key in keys))

    logger.debug(
        "blocked_sta: %d usable spikes of %d units in %d of %d frame blocks; overlap of %d "
        "frame(s) reaching up to %d block(s) back; tree of depth %d (split_every=%d)",
        int(bins.n_used.sum()),
        bins.n_units,
        len(leaves),
        len(x.chunks[0]),
        bins.n_lags - 1,
        reach,
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
