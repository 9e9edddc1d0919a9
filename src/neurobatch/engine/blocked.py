"""Dask wrappers of the kernels: overlaps, tree reductions and blocked gathers.

Each wrapper is thin: it validates, then hands the kernel to ``map_overlap``,
``map_blocks`` or ``reduction`` with its depth, boundary, dtype and output chunks declared,
so that running chunk by chunk gives the whole-array answer.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import numbers
import uuid
import warnings
from dataclasses import dataclass
from typing import Any, Literal, cast

import dask.array as da
import dask.base
import dask.core
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph
from numpy.typing import ArrayLike, DTypeLike, NDArray

from neurobatch.errors import EmptyUnitWarning
from neurobatch.kernels import correction, filters, fitting
from neurobatch.kernels import sta as sta_kernels
from neurobatch.kernels import trials as trial_kernels
from neurobatch.kernels._validation import (
    validate_choice,
    validate_finite,
    validate_same_length,
)
from neurobatch.kernels.correction import Normalization

logger = logging.getLogger(__name__)

# --- shared: chunk bookkeeping --------------------------------------------------------------


def validate_split_every(split_every: int | None) -> int | None:
    """Return ``split_every`` if it is None (dask's default) or an integer >= 2, else raise.

    Parameters
    ----------
    split_every : int or None
        How many partials each combine step of a tree reduction merges.

    Returns
    -------
    int or None
        ``split_every``.

    Raises
    ------
    ValueError
        If ``split_every`` is not None and not an integer >= 2.

    Examples
    --------
    >>> validate_split_every(1)
    Traceback (most recent call last):
    ...
    ValueError: split_every must be an integer >= 2 (how many partials each combine step merges) or None for dask's default, got 1.
    """
    if split_every is not None and (
        isinstance(split_every, bool)
        or not isinstance(split_every, int | np.integer)
        or split_every < 2
    ):
        raise ValueError(
            "split_every must be an integer >= 2 (how many partials each combine step "
            f"merges) or None for dask's default, got {split_every!r}."
        )
    return split_every


# --- zero-phase filtering -------------------------------------------------------------------


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


# --- isosbestic fits ------------------------------------------------------------------------
# The algorithms live in neurobatch.kernels.fitting, written against a ``reduce(chunk,
# combine)`` callable; here that callable is a dask tree reduction over aligned blocks of
# (isosbestic, signal), computed on dask's current scheduler.


def _fit_channels(
    isosbestic: da.Array | ArrayLike, signal: da.Array | ArrayLike
) -> tuple[da.Array, da.Array]:
    """Validate the two channels and unify their chunks (both get every chunk boundary)."""
    from dask.array.core import unify_chunks

    arrays: dict[str, da.Array] = {}
    for name, value in (("isosbestic", isosbestic), ("signal", signal)):
        a = value if isinstance(value, da.Array) else da.asarray(value)
        if a.dtype.kind not in "biuf":
            raise TypeError(f"{name} must be a real numeric array, got dtype {a.dtype}.")
        if a.ndim != 1:
            raise ValueError(f"{name} must be 1-D (samples along time), got shape {a.shape}.")
        if any(math.isnan(c) for c in a.chunks[0]):
            raise ValueError(
                f"{name} has unknown chunk sizes; call {name}.compute_chunk_sizes() first."
            )
        arrays[name] = a
    x, y = arrays["isosbestic"], arrays["signal"]
    if x.shape != y.shape:
        raise ValueError(
            f"isosbestic and signal must have the same length, got {x.shape[0]} and {y.shape[0]}."
        )
    if x.chunks != y.chunks:
        logger.debug("fit: unifying chunks %s and %s", x.chunks[0], y.chunks[0])
        _, (x, y) = unify_chunks(x, "i", y, "i")
    return x, y


def _fit_block(x: NDArray[Any], y: NDArray[Any], *, chunk: Any) -> NDArray[np.object_]:
    """One block's partial, boxed in a 1-element object array (a dask block)."""
    box = np.empty(1, dtype=object)
    box[0] = chunk(x, y)
    return box


def _fit_unbox(box: NDArray[np.object_], axis: Any, keepdims: bool) -> Any:
    """Reduction ``chunk`` step: take the partial out of its box."""
    return box[0]


def _fit_combine(combine: Any, parts: Any, axis: Any, keepdims: bool) -> Any:
    """Reduction ``combine`` step: the kernel's combine over a list of partials."""
    return combine(parts if isinstance(parts, list) else [parts])


def _fit_aggregate(combine: Any, parts: Any, axis: Any, keepdims: bool) -> NDArray[np.object_]:
    """Reduction ``aggregate`` step: the last combine, boxed in a 0-d object array."""
    box = np.empty((), dtype=object)
    box[()] = _fit_combine(combine, parts, axis, keepdims)
    return box


def _persisted_blocks(x: da.Array) -> list[NDArray[Any]] | None:
    """The blocks of an array persisted in this process (its graph holds only their
    values, in order), or None when any block is still a task (or a distributed future)."""
    graph = x.__dask_graph__()
    keys = list(dask.core.flatten(x.__dask_keys__()))
    blocks = [block for key in keys if isinstance(block := graph.get(key), np.ndarray)]
    return blocks if len(blocks) == len(keys) else None


def _fit_reducer(x: da.Array, y: da.Array, split_every: int | None) -> fitting.Reducer:
    """A reducer running kernel chunk/combine functions as a dask tree reduction."""
    validate_split_every(split_every)
    n_blocks = x.numblocks[0]
    blocks_x, blocks_y = _persisted_blocks(x), _persisted_blocks(y)
    if blocks_x is not None and blocks_y is not None and x.chunks == y.chunks:
        # persisted in this process (the engine persists signals that fit in memory): the
        # same per-block passes, without one dask compute per pass (an IRLS makes ~50)
        return fitting.local_reducer(blocks_x, blocks_y)
    if n_blocks == 1:
        # one block (within the chunk memory budget): compute it once, then the same
        block_x, block_y = dask.base.compute(x, y)
        return fitting.local_reducer([block_x], [block_y])
    # Optimise the inputs' graphs once; each pass then skips graph optimisation (whose
    # fusing, and the ordering of fused tasks at run time, costs ~5 ms a pass).
    x, y = dask.base.optimize(x, y)

    def reduce(chunk: Any, combine: Any, /) -> Any:
        token = uuid.uuid4().hex
        parts = da.map_blocks(
            _fit_block,
            x,
            y,
            chunk=chunk,
            chunks=((1,) * n_blocks,),
            dtype=object,
            meta=np.empty((0,), dtype=object),
            name=f"fit-chunk-{token}",
        )
        total = da.reduction(
            parts,
            _fit_unbox,
            functools.partial(_fit_aggregate, combine),
            combine=functools.partial(_fit_combine, combine),
            axis=0,
            dtype=object,
            split_every=split_every,
            concatenate=False,
            meta=np.empty((), dtype=object),
            name=f"fit-combine-{token}",
        )
        (boxed,) = dask.base.compute(total, optimize_graph=False)
        return boxed[()]

    return reduce


def fit_ols(
    isosbestic: da.Array | ArrayLike,
    signal: da.Array | ArrayLike,
    *,
    intercept: bool = True,
    split_every: int | None = None,
) -> fitting.FitResult:
    """Least-squares fit ``signal ≈ b0 + b1 * isosbestic`` over arrays chunked along time.

    One tree reduction of per-block co-moments (:func:`neurobatch.kernels.fitting.
    comoments_chunk`, merged with Chan et al.'s formula), computed now on dask's current
    scheduler. The result equals :func:`neurobatch.kernels.fitting.fit_ols` on the whole
    arrays to rounding (~1e-12 relative).

    Parameters
    ----------
    isosbestic : dask.array.Array or array_like
        Shape ``(n,)``: the isosbestic channel, chunked along time.
    signal : dask.array.Array or array_like
        Shape ``(n,)``: the signal channel. Its chunks may differ from the isosbestic's:
        both are rechunked to the union of their chunk boundaries
        (``dask.array.core.unify_chunks``), so equal chunks cost nothing.
    intercept : bool, default True
        Fit ``b0 + b1 x`` (True) or ``b1 x`` (False).
    split_every : int, optional
        Fan-in of the tree reduction (>= 2); dask's default when None.

    Returns
    -------
    neurobatch.kernels.fitting.FitResult
        ``method='ols'``.

    Raises
    ------
    TypeError
        If an input is not real-valued.
    ValueError
        If an input is not 1-D or has unknown chunk sizes, the lengths differ,
        ``split_every`` is not an integer >= 2, the data hold NaN or infinity (found from
        the co-moments once computed), there are fewer than 2 samples, or the isosbestic is
        constant.

    See Also
    --------
    neurobatch.kernels.fitting.fit_ols : the same on NumPy arrays.

    Examples
    --------
    >>> iso = da.from_array(np.linspace(1.0, 2.0, 10), chunks=3)
    >>> fit = fit_ols(iso, 0.5 + 2.0 * iso, split_every=2)
    >>> print(f"{fit.intercept:.6f} {fit.slope:.6f} {fit.r_squared:.6f}")
    0.500000 2.000000 1.000000
    """
    x, y = _fit_channels(isosbestic, signal)
    logger.debug("fit_ols: %d blocks, split_every=%s", x.numblocks[0], split_every)
    return fitting.solve_ols(_fit_reducer(x, y, split_every), intercept=intercept)


def fit_irls(
    isosbestic: da.Array | ArrayLike,
    signal: da.Array | ArrayLike,
    *,
    c: float = 3.0,
    maxiter: int = 50,
    tol: float = 1e-8,
    intercept: bool = True,
    split_every: int | None = None,
) -> fitting.FitResult:
    """Robust fit (Tukey's biweight, IRLS as statsmodels' ``RLM``) over chunked arrays.

    :func:`neurobatch.kernels.fitting.solve_irls` with every pass a dask tree reduction,
    computed now on dask's current scheduler: one pass of co-moments, then per iteration
    one pass of Tukey-weighted co-moments and one pass over the residuals (deviance and
    exact median of ``|residual|``; rarely more). The inputs are read on every pass
    (2 per iteration, typically 10–30 iterations): persist them first (``dask.persist``)
    if they are expensive to compute, e.g. the output of a filter. The result equals the
    whole-array kernel :func:`neurobatch.kernels.fitting.fit_irls` to rounding.

    Parameters
    ----------
    isosbestic : dask.array.Array or array_like
        Shape ``(n,)``: the isosbestic channel, chunked along time.
    signal : dask.array.Array or array_like
        Shape ``(n,)``: the signal channel (chunks unified with the isosbestic's, as in
        :func:`fit_ols`).
    c : float, default 3.0
        Tukey's tuning constant.
    maxiter : int, default 50
        Maximum iterations, counted as statsmodels does.
    tol : float, default 1e-8
        Tolerance on the change of the deviance.
    intercept : bool, default True
        Whether to fit the intercept.
    split_every : int, optional
        Fan-in of the tree reductions (>= 2); dask's default when None.

    Returns
    -------
    neurobatch.kernels.fitting.FitResult
        ``method='irls'``, with ``scale``, ``n_iter`` and ``converged``.

    Raises
    ------
    TypeError
        If an input is not real-valued.
    ValueError
        As :func:`fit_ols`, and if an option is out of range or there are fewer than 3
        samples (2 without intercept).

    See Also
    --------
    neurobatch.kernels.fitting.fit_irls : the same on NumPy arrays.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> iso = 1.0 + 0.01 * rng.standard_normal(1000)
    >>> sig = 0.2 + 1.5 * iso + 0.001 * rng.standard_normal(1000)
    >>> sig[100:120] += 0.5  # a motion artefact
    >>> fit = fit_irls(da.from_array(iso, chunks=300), da.from_array(sig, chunks=250))
    >>> whole = fitting.fit_irls(iso, sig)
    >>> round(fit.slope, 1), abs(fit.slope - whole.slope) < 1e-12, fit.n_iter == whole.n_iter
    (1.5, True, True)
    """
    x, y = _fit_channels(isosbestic, signal)
    logger.debug("fit_irls: %d blocks, split_every=%s", x.numblocks[0], split_every)
    return fitting.solve_irls(
        _fit_reducer(x, y, split_every), c=c, maxiter=maxiter, tol=tol, intercept=intercept
    )


# --- trial windows --------------------------------------------------------------------------


def _time_first(x: da.Array | ArrayLike, axis: int) -> da.Array:
    """Return ``x`` as a dask array with its time axis first."""
    arr = x if isinstance(x, da.Array) else da.asarray(x)
    if not -arr.ndim <= axis < arr.ndim:
        raise ValueError(
            f"axis must be in [{-arr.ndim}, {arr.ndim}) for a {arr.ndim}-D signal, got {axis}."
        )
    axis %= arr.ndim
    return arr if axis == 0 else da.moveaxis(arr, axis, 0)


def _blocked_windows(
    x: da.Array,
    starts: NDArray[np.int64],
    fractions: NDArray[np.float64] | None,
    length: int,
    operation: str,
) -> da.Array:
    """Build the gather graph: one task per source block holding window starts.

    ``x`` has time first; ``starts`` are sorted and in range. The windows starting in block
    ``b`` are cut from block ``b`` extended to the right by the samples they need (up to
    ``span - 1``), taken from as many following chunks as that reaches: a one-sided overlap
    that spans several neighbours when chunks are shorter than a window, without rechunking.
    Each task is the kernel :func:`~neurobatch.kernels.trials.windows_from_pieces`, so a
    worker runs it importing only NumPy and that kernel module, not the engine.
    """
    span = length + (0 if fractions is None else 1)
    dtype = x.dtype if fractions is None else np.result_type(x.dtype, np.float64)
    trailing = x.chunks[1:]
    meta = np.empty((0,) * (x.ndim + 1), dtype=dtype)
    if starts.size == 0:
        return da.empty((0, length, *x.shape[1:]), chunks=((0,), (length,), *trailing), dtype=dtype)
    offsets = np.cumsum((0, *x.chunks[0]))
    first_block = np.searchsorted(offsets, starts, side="right") - 1
    edges = [0, *(np.flatnonzero(np.diff(first_block)) + 1).tolist(), starts.size]
    name = f"{operation}-{tokenize(x, starts, fractions, length)}"
    dsk: dict[Any, Any] = {}
    counts: list[int] = []
    reach = 0
    for g, (i0, i1) in enumerate(itertools.pairwise(edges)):
        b = int(first_block[i0])
        lo, hi = int(starts[i0]), int(starts[i1 - 1]) + span
        e = int(np.searchsorted(offsets, hi - 1, side="right")) - 1
        cuts = np.array(
            [
                [max(lo - offsets[c], 0), min(hi, offsets[c + 1]) - offsets[c]]
                for c in range(b, e + 1)
            ],
            dtype=np.int64,
        )
        local = starts[i0:i1] - lo
        frac = None if fractions is None else fractions[i0:i1]
        for j in itertools.product(*(range(len(c)) for c in trailing)):
            sources = [(x.name, c, *j) for c in range(b, e + 1)]
            dsk[(name, g, 0, *j)] = (
                trial_kernels.windows_from_pieces,
                length,
                local,
                frac,
                cuts,
                *sources,
            )
        counts.append(i1 - i0)
        reach = max(reach, e - b)
    logger.debug(
        "%s: %d windows of %d samples from %d of %d blocks, reaching up to %d block(s) ahead",
        operation,
        starts.size,
        span,
        len(counts),
        len(x.chunks[0]),
        reach,
    )
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[cast(Any, x)])
    return da.Array(graph, name, chunks=(tuple(counts), (length,), *trailing), meta=meta)


def gather_windows(
    x: da.Array | ArrayLike, starts: ArrayLike, length: int, *, axis: int = 0
) -> da.Array:
    """Cut windows of ``length`` samples out of a chunked signal, one task per block.

    Each window is cut from the block holding its start, extended to the right by the
    ``length - 1`` samples it may need from the following chunk(s): a one-sided overlap
    that spans as many neighbours as it must, so chunks shorter than a window work
    unchanged (no rechunking), and a thousand windows make one task per block, not a
    thousand slicing tasks. Blocks holding no window start make no task.

    Parameters
    ----------
    x : dask.array.Array or array_like
        The signal; time along ``axis``, chunked along it (other axes may be chunked too).
    starts : array_like
        ``(n_windows,)`` integer start indices, sorted (non-decreasing),
        ``0 <= start <= N - length``.
    length : int
        Samples per window, ``>= 1``.
    axis : int, default 0
        The time axis of ``x``.

    Returns
    -------
    dask.array.Array
        ``(n_windows, length, *other axes)``, lazily, ``x``'s dtype; along the window axis
        one chunk per source block that holds starts, in window order; the other axes keep
        ``x``'s chunks. Equal to ``x[starts[:, None] + arange(length)]`` (time first).

    Raises
    ------
    ValueError
        If ``starts`` is not sorted, a window runs past either end, ``length < 1`` or
        ``axis`` is out of range.
    TypeError
        If ``starts`` does not hold integers.

    See Also
    --------
    neurobatch.kernels.trials.gather_windows : the whole-array kernel.

    Examples
    --------
    >>> import dask.array as da
    >>> x = da.arange(12, chunks=4)
    >>> w = gather_windows(x, [0, 2, 5, 9], 3)
    >>> w.chunks
    ((2, 1, 1), (3,))
    >>> w.compute()
    array([[ 0,  1,  2],
           [ 2,  3,  4],
           [ 5,  6,  7],
           [ 9, 10, 11]])
    """
    xt = _time_first(x, axis)
    s = trial_kernels.validate_starts(starts, length, xt.shape[0], require_sorted=True)
    return _blocked_windows(xt, s, None, length, "gather-windows")


def interpolate_windows(
    x: da.Array | ArrayLike,
    starts: ArrayLike,
    fractions: ArrayLike,
    length: int,
    *,
    axis: int = 0,
) -> da.Array:
    """Interpolate windows at fractional positions out of a chunked signal.

    Like :func:`gather_windows` with a one-sided overlap of ``length`` samples (each
    window reads ``length + 1``); value ``k`` of window ``i`` is ``w0 + f * (w1 - w0)``
    with ``w0 = x[starts[i] + k]``, ``w1`` the next sample and ``f = fractions[i]``.

    Parameters
    ----------
    x : dask.array.Array or array_like
        The signal; time along ``axis``.
    starts : array_like
        ``(n_windows,)`` sorted integer starts, ``0 <= start <= N - length - 1``.
    fractions : array_like
        ``(n_windows,)`` fractions of a sample past each start.
    length : int
        Values per window, ``>= 1``.
    axis : int, default 0
        The time axis of ``x``.

    Returns
    -------
    dask.array.Array
        ``(n_windows, length, *other axes)``, lazily, at least float64; equal to
        :func:`neurobatch.kernels.trials.interpolate_windows` on the whole array.

    Raises
    ------
    ValueError
        As :func:`gather_windows`, or if ``fractions`` does not match ``starts``.
    TypeError
        If ``starts`` does not hold integers.

    Examples
    --------
    >>> import dask.array as da
    >>> x = da.from_array(np.arange(8.0) ** 2, chunks=3)
    >>> interpolate_windows(x, [1, 4], [0.5, 0.25], 2).compute()
    array([[ 2.5 ,  6.5 ],
           [18.25, 27.75]])
    """
    xt = _time_first(x, axis)
    s = trial_kernels.validate_starts(starts, length + 1, xt.shape[0], require_sorted=True)
    f = np.asarray(fractions, dtype=np.float64)
    if f.shape != s.shape:
        raise ValueError(f"fractions must have shape {s.shape} like starts, got {f.shape}.")
    return _blocked_windows(xt, s, f, length, "interpolate-windows")


def _planned_windows(x: da.Array, windows: trial_kernels.WindowSet, operation: str) -> da.Array:
    """Gather a plan's windows in plan order (sorting the starts, then undoing the sort)."""
    order = np.argsort(windows.starts, kind="stable")
    fractions = None if windows.fractions is None else windows.fractions[order]
    out = _blocked_windows(x, windows.starts[order], fractions, windows.length, operation)
    if (order == np.arange(order.size)).all():
        return out
    logger.debug("%s: re-centring reordered the windows; restoring trial order", operation)
    inverse = np.empty_like(order)
    inverse[order] = np.arange(order.size)
    return out[inverse]


def extract_trials(
    x: da.Array | ArrayLike, plan: trial_kernels.TrialPlan, *, axis: int = 0
) -> da.Array:
    """Cut and normalise a plan's trial windows out of a chunked signal, lazily.

    The trial windows and the baseline windows are both blocked gathers
    (:func:`gather_windows`, or :func:`interpolate_windows` for ``interp`` plans). The
    baseline statistics of each trial (:func:`~neurobatch.kernels.trials.baseline_statistics`)
    are computed per baseline block, moved to the trial windows' blocks and applied there
    (:func:`~neurobatch.kernels.trials.apply_normalization`): the result equals
    :func:`neurobatch.kernels.trials.extract_trials` on the whole array exactly.

    Parameters
    ----------
    x : dask.array.Array or array_like
        The signal, ``plan.n_time`` samples along ``axis``. It is not checked for NaN
        (that would compute it); the plan's kernels propagate NaN.
    plan : neurobatch.kernels.trials.TrialPlan
        From :func:`neurobatch.kernels.trials.plan_trials` on the signal's time axis.
    axis : int, default 0
        The time axis of ``x``.

    Returns
    -------
    dask.array.Array
        ``(plan.n_trials, len(plan.rel_time), *other axes)``, lazily, in trial order.

    Raises
    ------
    ValueError
        If ``x`` does not have ``plan.n_time`` samples along ``axis``.

    Examples
    --------
    >>> import dask.array as da
    >>> from neurobatch.kernels import trials
    >>> t = np.arange(40) / 10.0
    >>> plan = trials.plan_trials(
    ...     t, {"cue": [1.0, 2.5]}, align_to="cue", bounds_s=(-0.2, 0.3),
    ...     baseline_bounds_s=(-0.5, 0.0), normalization="zero",
    ... )
    >>> x = da.from_array(np.arange(40.0), chunks=7)
    >>> extract_trials(x, plan).compute()
    array([[1., 2., 3., 4., 5.],
           [1., 2., 3., 4., 5.]])
    """
    xt = _time_first(x, axis)
    if xt.shape[0] != plan.n_time:
        raise ValueError(
            f"x must have plan.n_time = {plan.n_time} samples along axis {axis} (the time "
            f"axis the plan was made from), got {xt.shape[0]}."
        )
    windows = _planned_windows(xt, plan.windows, "trial-windows")
    if plan.baseline is None or plan.normalization == "none":
        return windows
    method = plan.normalization
    baseline = _planned_windows(xt, plan.baseline, "baseline-windows")
    ones = (1,) * (xt.ndim - 1)
    stats_dtype = trial_kernels.baseline_statistics(
        np.ones((1, 2, *ones), dtype=baseline.dtype), method
    ).dtype
    stats = da.map_blocks(
        trial_kernels.baseline_statistics,
        baseline,
        method,
        chunks=(baseline.chunks[0], (2,), *baseline.chunks[2:]),
        dtype=stats_dtype,
        meta=np.empty((0,) * baseline.ndim, dtype=stats_dtype),
    ).rechunk({0: windows.chunks[0]})
    out_dtype = trial_kernels.apply_normalization(
        np.ones((1, 1, *ones), dtype=windows.dtype), np.ones((1, 2, *ones), stats_dtype), method
    ).dtype
    other = "".join(chr(ord("c") + i) for i in range(xt.ndim - 1))
    return da.blockwise(
        trial_kernels.apply_normalization,
        "tw" + other,
        windows,
        "tw" + other,
        stats,
        "ts" + other,
        method,
        None,
        dtype=out_dtype,
        concatenate=True,
        meta=np.empty((0,) * windows.ndim, dtype=out_dtype),
    )


# --- spike-triggered averages ---------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class BlockedSta:
    """A lazy spike-triggered average and the spike bookkeeping behind it.

    Attributes
    ----------
    sta : dask.array.Array
        Shape ``(n_units, n_lags, y, x)``, float64, lazy; chunks
        ``((n_units,), (n_lags,), movie.chunks[1], movie.chunks[2])``: one chunk per pixel
        tile of the movie. NaN for a unit without usable spikes.
    bins : neurobatch.kernels.sta.SpikeBins
        Computed eagerly: unit labels (``bins.unit_ids``, the rows of ``sta``), usable and
        excluded spike counts per unit, lags in frames and seconds.
    """

    sta: da.Array
    bins: sta_kernels.SpikeBins


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
    eagerly (:func:`~neurobatch.kernels.sta.bin_spikes`); each spike's frame ``N`` belongs
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
        The units to report, in this order; see :func:`~neurobatch.kernels.sta.bin_spikes`.
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
        :func:`~neurobatch.kernels.sta.bin_spikes`. A block whose frames hold NaN or
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
    x: da.Array = movie if isinstance(movie, da.Array) else da.asarray(movie)
    if x.ndim != 3:
        raise ValueError(f"movie must be 3-D (frame, y, x), got shape {x.shape}.")
    if x.dtype.kind not in "biuf":
        raise TypeError(f"movie must hold real numbers, got dtype {x.dtype}.")
    if any(np.isnan(size) for size in x.chunks[0]):
        raise ValueError(
            "movie has unknown chunk sizes along frames; call movie.compute_chunk_sizes() first."
        )
    fan_in = _sta_split_every(split_every)
    bins = sta_kernels.bin_spikes(
        spike_times,
        units,
        fps=fps,
        n_frames=x.shape[0],
        n_lags=n_lags,
        onset=onset,
        unit_ids=unit_ids,
    )
    sta_kernels._warn_empty_units(bins.unit_ids, bins.n_used, stacklevel=2)

    halo = bins.n_lags - 1
    offsets = np.cumsum((0, *x.chunks[0]))
    tiles = list(itertools.product(range(len(x.chunks[1])), range(len(x.chunks[2]))))
    name = f"sta-{tokenize(x, bins.counts, bins.n_lags, fan_in)}"
    dsk: dict[Any, Any] = {}
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

    level = 0
    keys = [(f"{name}-partial", 0, b) for b in leaves]
    while len(keys) > fan_in:
        level += 1
        groups = [keys[g : g + fan_in] for g in range(0, len(keys), fan_in)]
        for ty, tx in tiles:
            for g, group in enumerate(groups):
                if len(group) > 1:
                    dsk[(f"{name}-partial", level, g, ty, tx)] = (
                        _sta_combine,
                        *((*key, ty, tx) for key in group),
                    )
        # A group of one moves up a level as it is.
        keys = [
            group[0] if len(group) == 1 else (f"{name}-partial", level, g)
            for g, group in enumerate(groups)
        ]
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
        halo,
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


# --- event-triggered averages of continuous signals -----------------------------------------

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
    blocks, with a one-sided overlap of ``n_before + n_after`` samples; blocks holding no
    event are not read; the signal is never rechunked and no loop runs over events.

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
    ids, rows = sta_kernels._unit_rows(labels, unit_ids)
    n_units = int(ids.shape[0])

    position = (times.astype(np.float64) - start) * rate + _TIME_TOLERANCE_S * rate
    sample = np.floor(np.clip(position, -1.0, float(n_samples))).astype(np.int64)
    before = sample < 0
    after = sample >= n_samples
    clipped = ~before & ~after & ((sample < n_before) | (sample >= n_samples - n_after))
    used = ~(before | after) if edges == "zeros" else ~(before | after | clipped)

    def per_unit(mask: NDArray[np.bool_]) -> NDArray[np.int64]:
        return np.bincount(rows[mask], minlength=n_units).astype(np.int64)

    movie = _eta_movie(x)
    if edges == "zeros":
        pads = [
            da.zeros((n, *movie.shape[1:]), dtype=movie.dtype, chunks=((n,), *movie.chunks[1:]))
            for n in (n_before, n_after)
        ]
        pieces = [p for p in (pads[0], movie, pads[1]) if p.shape[0]]
        frames = pieces[0] if len(pieces) == 1 else da.concatenate(pieces, axis=0)
        # signal sample j is frame j + n_before; the STA's frame for an event in sample c
        # is its last offset, c + n_after, so that lag k is offset n_after - k.
        frame = sample[used] + n_before + n_after
    else:
        frames = movie
        frame = sample[used] + n_after
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
    empty = np.flatnonzero(n_used == 0)
    if empty.size:
        limit = sta_kernels._MAX_NAMED_UNITS
        named = ", ".join(repr(label) for label in ids[empty[:limit]].tolist())
        more = f" and {empty.size - limit} more" if empty.size > limit else ""
        warnings.warn(
            f"{empty.size} unit(s) have no usable events, so their event-triggered average "
            f"is NaN: {named}{more}.",
            EmptyUnitWarning,
            stacklevel=2,
        )
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
    sta = result.sta[:, ::-1]
    if x.ndim == 1:
        eta = sta[:, :, 0, 0]
    elif x.ndim == 2:
        eta = sta[:, :, :, 0]
    elif x.ndim == 3:
        eta = sta
    else:
        eta = sta.reshape((n_units, n_offsets, *x.shape[1:]))
    return BlockedEta(
        eta=eta,
        offsets=np.arange(-n_before, n_after + 1, dtype=np.int64),
        unit_ids=ids,
        n_used=n_used,
        n_before=per_unit(before),
        n_after=per_unit(after),
        n_clipped=per_unit(clipped),
        sampling_rate=rate,
        edges=edges,
    )
