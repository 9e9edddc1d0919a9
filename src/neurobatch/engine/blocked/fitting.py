"""Isosbestic fits over chunked arrays: the kernels' passes as dask tree reductions.

The algorithms live in :mod:`neurobatch.kernels.fitting`, written against a ``reduce(chunk,
combine)`` callable; here that callable is a dask tree reduction over aligned blocks of
(isosbestic, signal), computed on dask's current scheduler.
"""

from __future__ import annotations

import functools
import logging
import math
import uuid
from typing import Any

import dask.array as da
import dask.base
import dask.core
import numpy as np
from numpy.typing import ArrayLike, NDArray

from neurobatch.engine.blocked._reduce import validate_split_every
from neurobatch.kernels import fitting, reduction

logger = logging.getLogger(__name__)


def _channel(name: str, value: da.Array | ArrayLike) -> da.Array:
    """A channel as a 1-D real dask array with known chunks, or why it is not one."""
    a = value if isinstance(value, da.Array) else da.asarray(value)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a real numeric array, got dtype {a.dtype}.")
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D (samples along time), got shape {a.shape}.")
    if any(math.isnan(c) for c in a.chunks[0]):
        raise ValueError(
            f"{name} has unknown chunk sizes; call {name}.compute_chunk_sizes() first."
        )
    return a


def _fit_channels(
    isosbestic: da.Array | ArrayLike, signal: da.Array | ArrayLike
) -> tuple[da.Array, da.Array]:
    """Validate the two channels and unify their chunks (both get every chunk boundary)."""
    from dask.array.core import unify_chunks

    x, y = _channel("isosbestic", isosbestic), _channel("signal", signal)
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


def _fit_reducer(x: da.Array, y: da.Array, split_every: int | None) -> reduction.Reducer:
    """A reducer running kernel chunk/combine functions as a dask tree reduction."""
    validate_split_every(split_every)
    n_blocks = x.numblocks[0]
    blocks_x, blocks_y = _persisted_blocks(x), _persisted_blocks(y)
    if blocks_x is not None and blocks_y is not None and x.chunks == y.chunks:
        # persisted in this process (the engine persists signals that fit in memory): the
        # same per-block passes, without one dask compute per pass (an IRLS makes ~20)
        return reduction.local_reducer(blocks_x, blocks_y)
    if n_blocks == 1:
        # one block (within the chunk memory budget): compute it once, then the same
        block_x, block_y = dask.base.compute(x, y)
        return reduction.local_reducer([block_x], [block_y])
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

    One tree reduction of per-block co-moments (:func:`neurobatch.kernels.comoments.
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
    computed now on dask's current scheduler: one pass of co-moments and one that samples
    the data, then per iteration one pass of Tukey-weighted sums and one pass over the
    residuals (deviance and exact median of ``|residual|``), until the line barely moves:
    then one pass builds a table from which the remaining iterations are computed without
    passes (about 17 passes for a 1 h recording at 1 kHz that takes 25 iterations). The
    inputs are read on every pass: persist them first (``dask.persist``) if they are
    expensive to compute, e.g. the output of a filter. The result equals the whole-array
    kernel :func:`neurobatch.kernels.fitting.fit_irls` to rounding.

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
