"""Dask wrappers of the kernels: overlaps, tree reductions and blocked gathers.

Each wrapper is thin: it validates, then hands the kernel to ``map_overlap``,
``map_blocks`` or ``reduction`` with its depth, boundary, dtype and output chunks declared,
so that running chunk by chunk gives the whole-array answer.
"""

from __future__ import annotations

import logging

import dask.array as da
import numpy as np
from numpy.typing import ArrayLike

from neurobatch.kernels import correction, filters
from neurobatch.kernels._validation import validate_choice
from neurobatch.kernels.correction import Normalization

logger = logging.getLogger(__name__)

# --- shared: chunk bookkeeping --------------------------------------------------------------


def coarsen_chunks(chunks: tuple[int, ...], minimum: int) -> tuple[int, ...]:
    """Merge neighbouring chunks until every chunk holds at least ``minimum`` elements.

    Overlaps reach only into the adjacent block, so an operator whose depth exceeds a chunk
    merges chunks itself, explicitly, instead of letting dask rechunk behind its back. When
    the whole axis is shorter than ``minimum`` the result is a single chunk.

    Parameters
    ----------
    chunks : tuple of int
        The chunk sizes along one axis.
    minimum : int
        The smallest acceptable chunk size.

    Returns
    -------
    tuple of int
        Chunk sizes with the same total, each ``>= minimum`` (or the single total).

    Examples
    --------
    >>> coarsen_chunks((5, 1, 1, 5, 4), 3)
    (5, 7, 4)
    >>> coarsen_chunks((5, 1, 1, 5, 2), 3)
    (5, 9)
    >>> coarsen_chunks((4, 4), 3)
    (4, 4)
    """
    merged: list[int] = []
    for size in chunks:
        if merged and merged[-1] < minimum:
            merged[-1] += size
        else:
            merged.append(size)
    if len(merged) > 1 and merged[-1] < minimum:
        last = merged.pop()
        merged[-1] += last
    return tuple(merged)


def _with_min_chunk(x: da.Array, axis: int, minimum: int, operation: str) -> da.Array:
    """Rechunk ``x`` along ``axis`` so that every chunk holds ``minimum`` elements, loudly."""
    chunks = x.chunks[axis]
    coarse = coarsen_chunks(chunks, minimum)
    if coarse == chunks:
        return x
    logger.debug(
        "%s: merging %d chunks along axis %d into %d so each holds >= %d samples",
        operation,
        len(chunks),
        axis,
        len(coarse),
        minimum,
    )
    return x.rechunk({axis: coarse})


# --- zero-phase filtering -------------------------------------------------------------------


def zero_phase_filter(
    x: da.Array, sos: ArrayLike, *, axis: int = 0, rtol: float = 1e-12
) -> da.Array:
    """Zero-phase filter a chunked array along time, block by block.

    Each block is extended by :func:`~neurobatch.kernels.filters.overlap_depth` samples
    from its neighbours (``boundary="none"``: nothing is invented at the array's true
    ends, where the kernel's odd padding applies exactly as on the whole array), filtered
    with :func:`~neurobatch.kernels.filters.zero_phase_filter`, and trimmed. The result
    equals ``scipy.signal.sosfiltfilt(sos, x, padtype="odd")`` on the whole array to about
    ``rtol`` of the signal's scale. Chunks shorter than the depth are merged first (logged
    at DEBUG) and the output is given the input's chunks back.

    Parameters
    ----------
    x : dask.array.Array
        The signal, any number of dimensions, chunked along ``axis`` (other axes may be
        chunked too).
    sos : array_like
        ``(n_sections, 6)`` second-order sections.
    axis : int, default 0
        The time axis.
    rtol : float, default 1e-12
        Relative decay level that sets the overlap depth.

    Returns
    -------
    dask.array.Array
        The filtered signal, lazily, with the chunks of ``x`` and dtype float64.

    Raises
    ------
    ValueError
        If ``x`` is not longer than the filter's pad length along ``axis``.

    See Also
    --------
    neurobatch.kernels.filters.zero_phase_filter : the whole-array kernel.

    Examples
    --------
    >>> import dask.array as da
    >>> from neurobatch.kernels import filters
    >>> sos = filters.butter_sos("lowpass", 3.0, fs=1000.0)
    >>> x = np.random.default_rng(0).standard_normal(20_000)
    >>> y = zero_phase_filter(da.from_array(x, chunks=4_000), sos)
    >>> y.chunks
    ((4000, 4000, 4000, 4000, 4000),)
    >>> whole = filters.zero_phase_filter(x, sos)
    >>> bool(np.abs(y.compute() - whole).max() <= 1e-9 * np.abs(whole).max())
    True
    """
    sos_arr = np.asarray(sos, dtype=np.float64)
    axis = axis % x.ndim
    filters.validate_signal_length(x.shape[axis], sos_arr)
    # an axis shorter than the depth ends up one block, whose overlap must then stay in range
    depth = min(filters.overlap_depth(sos_arr, rtol=rtol), x.shape[axis])
    extended = _with_min_chunk(x, axis, depth, "zero_phase_filter")
    y = extended.map_overlap(
        filters.zero_phase_filter,
        depth={ax: depth if ax == axis else 0 for ax in range(x.ndim)},
        boundary="none",
        trim=True,
        dtype=np.result_type(x.dtype, np.float64),
        meta=np.empty((0,) * x.ndim, dtype=np.float64),
        sos=sos_arr,
        axis=axis,
    )
    return y if y.chunks == x.chunks else y.rechunk(x.chunks)


def normalize(x: da.Array, *, method: Normalization = "zscore") -> da.Array:
    """Normalise a whole chunked signal by its global mean and standard deviation.

    The statistics come from dask's own tree reductions (``mean``, ``std`` with
    ``ddof=0``); every block is then normalised with the same two numbers by
    :func:`~neurobatch.kernels.correction.normalize`.

    Parameters
    ----------
    x : dask.array.Array
        The signal.
    method : {"zscore", "nullz", "none"}, default "zscore"
        The normalisation.

    Returns
    -------
    dask.array.Array
        The normalised signal, lazily, with the chunks of ``x``, float64.

    Examples
    --------
    >>> import dask.array as da
    >>> x = da.from_array(np.array([1.0, 2.0, 3.0, 4.0]), chunks=3)
    >>> normalize(x, method="nullz").compute()
    array([0.89442719, 1.78885438, 2.68328157, 3.57770876])
    """
    validate_choice(method, "method", ("zscore", "nullz", "none"))
    if method == "none":
        return x.astype(np.float64)
    return da.map_blocks(
        correction.normalize,
        x,
        dtype=np.float64,
        meta=np.empty((0,) * x.ndim, dtype=np.float64),
        method=method,
        mean=x.mean(),
        std=x.std(),
    )


# --- isosbestic fits ------------------------------------------------------------------------

# --- trial windows --------------------------------------------------------------------------

# --- spike-triggered averages ---------------------------------------------------------------
