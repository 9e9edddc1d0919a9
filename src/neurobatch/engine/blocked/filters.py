"""Zero-phase filtering of chunked signals, one task per output block, and normalisation.

See :mod:`neurobatch.kernels.filters` for the kernels.
"""

from __future__ import annotations

import functools
import itertools
import logging
from typing import Any, cast

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph
from numpy.typing import ArrayLike, DTypeLike

from neurobatch.kernels import correction, filters
from neurobatch.kernels._validation import validate_choice
from neurobatch.kernels.correction import Normalization

logger = logging.getLogger(__name__)


def zero_phase_filter(
    x: da.Array,
    sos: ArrayLike,
    *,
    axis: int = 0,
    rtol: float = 1e-12,
    scale: float | None = None,
    common_reference: filters.Reference = "none",
    dtype: DTypeLike | None = None,
    chunks: int | tuple[int, ...] | None = None,
) -> da.Array:
    """Zero-phase filter a chunked array along time, one task per output block.

    Each output block is computed by one task from the input chunks that hold it and
    :func:`~neurobatch.kernels.filters.overlap_depth` samples on each side (fewer at the
    array's true ends, where the kernel's odd padding applies exactly as on the whole
    array): :func:`~neurobatch.kernels.filters.zero_phase_from_pieces` filters them in
    turn, never joined, and writes the block once, scaled and cast to ``dtype``. The
    result equals ``scipy.signal.sosfiltfilt(sos, x * scale, padtype="odd")`` on the whole
    array to about ``rtol`` of the signal's scale. The output blocks need not follow the
    input's chunks (``chunks``), so a raw recording is converted, filtered and cut into the
    store's chunks in one pass, without rechunking either side.

    Parameters
    ----------
    x : dask.array.Array
        The signal, any number of dimensions and type, chunked along ``axis`` (other axes
        may be chunked too, unless ``common_reference`` is ``median``).
    sos : array_like
        ``(n_sections, 6)`` second-order sections.
    axis : int, default 0
        The time axis.
    rtol : float, default 1e-12
        Relative decay level that sets the overlap depth.
    scale : float, optional
        Multiply the signal by this before filtering (a gain to µV, say).
    common_reference : {"none", "median"}, default "none"
        ``median``: subtract from every sample the median over the other axes (channels)
        before filtering; those axes then become one chunk.
    dtype : data-type, optional
        The result's type (float32 to store, say); by default float64.
    chunks : int or tuple of int, optional
        The output's chunks along ``axis``: a length (the last block may be shorter) or
        lengths that add up to the axis; by default the chunks of ``x``. Blocks shorter
        than the overlap depth are correct but re-filter their neighbourhood each.

    Returns
    -------
    dask.array.Array
        The filtered signal, lazily.

    Raises
    ------
    ValueError
        If ``x`` is not longer than the filter's pad length along ``axis``, or ``chunks``
        does not add up to its length.

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
    >>> counts = da.from_array((100 * x).astype(np.int16), chunks=6_000)
    >>> uv = zero_phase_filter(counts, sos, scale=0.01, dtype=np.float32, chunks=5_000)
    >>> uv.chunks, uv.dtype
    (((5000, 5000, 5000, 5000),), dtype('float32'))
    """
    sos_arr = np.asarray(sos, dtype=np.float64)
    validate_choice(common_reference, "common_reference", ("none", "median"))
    axis = axis % x.ndim
    n = x.shape[axis]
    filters.validate_signal_length(n, sos_arr)
    # an axis shorter than the depth is read whole by every block
    depth = min(filters.overlap_depth(sos_arr, rtol=rtol), n)
    out_chunks = _filter_chunks(x.chunks[axis] if chunks is None else chunks, n, axis)
    if common_reference == "median":
        x = x.rechunk({ax: -1 for ax in range(x.ndim) if ax != axis})
    out_dtype = np.result_type(x.dtype, np.float64) if dtype is None else np.dtype(dtype)
    kernel = functools.partial(
        filters.zero_phase_from_pieces,
        axis=axis,
        scale=scale,
        common_reference=common_reference,
        dtype=out_dtype,
    )
    name = "zero-phase-filter-" + tokenize(
        x, sos_arr, depth, scale, common_reference, out_dtype, out_chunks, axis
    )
    offsets = np.cumsum((0, *x.chunks[axis]))
    edges = np.cumsum((0, *out_chunks))
    others = [range(len(c)) if ax != axis else range(1) for ax, c in enumerate(x.chunks)]
    dsk: dict[Any, Any] = {}
    for i, (start, stop) in enumerate(itertools.pairwise(edges.tolist())):
        lo, hi = max(start - depth, 0), min(stop + depth, n)
        first = int(np.searchsorted(offsets, lo, side="right")) - 1
        last = int(np.searchsorted(offsets, hi - 1, side="right")) - 1
        sources = [c for c in range(first, last + 1) if offsets[c + 1] > offsets[c]]
        cuts = np.array(
            [[max(lo - offsets[c], 0), min(hi, offsets[c + 1]) - offsets[c]] for c in sources],
            dtype=np.int64,
        )
        trim = (start - lo, hi - stop)
        for j in itertools.product(*others):
            key = (name, *j[:axis], i, *j[axis + 1 :])
            pieces = [(x.name, *j[:axis], c, *j[axis + 1 :]) for c in sources]
            dsk[key] = (kernel, sos_arr, cuts, trim, *pieces)
    logger.debug(
        "zero_phase_filter: %d output blocks from %d input chunks, each read with up to %d "
        "samples on each side",
        len(out_chunks),
        len(x.chunks[axis]),
        depth,
    )
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[cast(Any, x)])
    out_shape = tuple(out_chunks if ax == axis else c for ax, c in enumerate(x.chunks))
    return da.Array(graph, name, chunks=out_shape, meta=np.empty((0,) * x.ndim, dtype=out_dtype))


def _filter_chunks(chunks: int | tuple[int, ...], n: int, axis: int) -> tuple[int, ...]:
    """Normalise the output chunks along the filtered axis, or say why they do not fit."""
    if isinstance(chunks, tuple | list):
        sizes = tuple(int(c) for c in chunks)
        if sum(sizes) != n or any(c < 0 for c in sizes):
            raise ValueError(
                f"chunks must be lengths that add up to the {n} samples along axis {axis}, "
                f"got {chunks!r}."
            )
        return sizes
    if isinstance(chunks, bool) or not isinstance(chunks, int | np.integer) or chunks < 1:
        raise ValueError(f"chunks must be a positive length or a tuple of lengths, got {chunks!r}.")
    whole, rest = divmod(n, int(chunks))
    return (int(chunks),) * whole + ((rest,) if rest else ())


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
