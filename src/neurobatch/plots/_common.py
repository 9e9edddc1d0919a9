"""What every figure shares: the min/max envelope decimation and writing to fsspec URLs.

:func:`envelope` reduces a trace (NumPy or Dask) to the minimum and maximum of contiguous
bins; :class:`_Pending` and :func:`_resolve` plan several arrays so that every lazy one is
computed in a single ``dask.compute`` call. :func:`_write_figure` renders a
:class:`~matplotlib.figure.Figure` as SVG or PNG and writes it to any fsspec URL.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import xarray as xr
from matplotlib.figure import Figure

from neurobatch.io import files

__all__ = ["envelope"]

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
DashboardFormat = Literal["svg", "png"]

_FORMATS: tuple[str, ...] = ("svg", "png")
_DPI = 100


# --------------------------------------------------------------------------------------------
# envelope decimation
# --------------------------------------------------------------------------------------------


def _bin_edges(n: int, n_bins: int) -> IntArray:
    """Start of each of ``n_bins`` contiguous bins over ``n`` samples, plus ``n``.

    Bin ``i`` holds samples ``[i * n // n_bins, (i + 1) * n // n_bins)``: sizes differ by at
    most one and, for ``n >= n_bins``, no bin is empty.
    """
    return (np.arange(n_bins + 1, dtype=np.int64) * n) // n_bins


def _bin_times(time: FloatArray, n_bins: int) -> FloatArray:
    """Time of sample ``i * (n - 1) // (n_bins - 1)`` for bin ``i``.

    That sample lies inside bin ``i`` of :func:`_bin_edges`, and the first and last bins get
    the first and last sample times exactly, so the decimated trace spans the recording.
    """
    n = time.size
    index = (np.arange(n_bins, dtype=np.int64) * (n - 1)) // (n_bins - 1)
    return time[index]


def _reduce_block(block: npt.NDArray[Any], starts: IntArray) -> FloatArray:
    """Per-bin ``[min; max]`` of one block (shape ``(2, len(starts))``), ignoring NaN."""
    if starts.size == 0:
        return np.empty((2, 0), dtype=np.float64)
    values = np.asarray(block, dtype=np.float64)
    return np.stack([np.fmin.reduceat(values, starts), np.fmax.reduceat(values, starts)])


@dataclass(frozen=True)
class _Pending:
    """An array to materialise (NumPy, or Dask to compute) and what to do with it after."""

    data: Any
    finish: Callable[[Any], Any]


def _is_lazy(x: object) -> bool:
    graph = getattr(x, "__dask_graph__", None)
    return callable(graph) and graph() is not None


def _resolve(pending: Mapping[str, _Pending]) -> dict[str, Any]:
    """Materialise every pending array, computing all lazy ones in one ``dask.compute``."""
    data = {key: p.data for key, p in pending.items()}
    lazy = [key for key, value in data.items() if _is_lazy(value)]
    if lazy:
        from dask.base import compute

        logger.debug("computing %d lazy arrays in one pass: %s", len(lazy), lazy)
        computed = compute(*(data[key] for key in lazy))  # type: ignore[no-untyped-call]
        data.update(zip(lazy, computed, strict=True))
    return {key: p.finish(data[key]) for key, p in pending.items()}


def _validate_envelope(time: npt.ArrayLike, values: Any, n_bins: int) -> FloatArray:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int | np.integer):
        raise TypeError(f"n_bins must be an int, got {n_bins!r} of type {type(n_bins).__name__}.")
    if n_bins < 2:
        raise ValueError(f"n_bins must be at least 2, got {n_bins}.")
    time_arr = np.asarray(time, dtype=np.float64)
    shape = tuple(getattr(values, "shape", np.shape(values)))
    if time_arr.ndim != 1 or len(shape) != 1 or shape[0] != time_arr.size:
        raise ValueError(
            "time and values must be 1-D arrays of the same length, got shapes "
            f"{time_arr.shape!r} and {shape!r}."
        )
    return time_arr


def _envelope_pending(time: FloatArray, values: Any, n_bins: int) -> _Pending:
    """Plan the envelope of ``values``; lazy values are reduced block by block."""
    n = time.size
    if n <= n_bins:

        def identity(v: Any) -> tuple[FloatArray, FloatArray, FloatArray]:
            arr = np.asarray(v, dtype=np.float64)
            return time.copy(), arr, arr.copy()

        return _Pending(values, identity)

    edges = _bin_edges(n, n_bins)
    times = _bin_times(time, n_bins)
    if not _is_lazy(values):
        values_arr = np.asarray(values)

        def eager(v: Any) -> tuple[FloatArray, FloatArray, FloatArray]:
            lo, hi = _reduce_block(v, edges[:-1])
            return times, lo, hi

        return _Pending(values_arr, eager)

    # One partial envelope per block: the bins overlapping the block, reduced over the
    # block's part of them; a bin straddling blocks appears once per block and the partial
    # results are merged in NumPy (fmin/fmax are associative).
    offsets = np.concatenate([[0], np.cumsum(values.chunks[0])]).astype(np.int64)
    first_bin = np.searchsorted(edges, offsets[:-1], side="right") - 1
    last_bin = np.searchsorted(edges, offsets[1:] - 1, side="right") - 1
    local_starts: list[IntArray] = []
    bin_ids: list[IntArray] = []
    for a, b, first, last in zip(offsets[:-1], offsets[1:], first_bin, last_bin, strict=True):
        if b == a:
            ids = np.empty(0, dtype=np.int64)
        else:
            ids = np.arange(first, last + 1, dtype=np.int64)
        bin_ids.append(ids)
        local_starts.append(np.maximum(edges[ids], a) - a)
    ids_all = np.concatenate(bin_ids)
    group_starts = np.flatnonzero(np.r_[True, ids_all[1:] != ids_all[:-1]])

    def block_envelope(block: npt.NDArray[Any], block_id: tuple[int, ...]) -> FloatArray:
        return _reduce_block(block, local_starts[block_id[-1]])

    partial = values.map_blocks(
        block_envelope,
        new_axis=0,
        chunks=((2,), tuple(int(ids.size) for ids in bin_ids)),
        dtype=np.float64,
        meta=np.empty((0, 0), dtype=np.float64),
    )

    def merge(p: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
        lo = np.fmin.reduceat(p[0], group_starts)
        hi = np.fmax.reduceat(p[1], group_starts)
        return times, lo, hi

    return _Pending(partial, merge)


def envelope(
    time: npt.ArrayLike, values: npt.ArrayLike, n_bins: int
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Decimate a trace to the minimum and maximum of each of ``n_bins`` contiguous bins.

    The ``n`` samples are split into ``n_bins`` contiguous bins whose sizes differ by at
    most one (bin ``i`` holds samples ``i * n // n_bins`` up to ``(i + 1) * n // n_bins``),
    and each bin is reduced to its minimum and maximum in a single pass
    (:func:`numpy.fmin.reduceat`), so a one-sample spike or artefact stays visible when the
    envelope is drawn as a band between ``lo`` and ``hi``. NaN is ignored; a bin of NaN only
    gives NaN. Dask-backed ``values`` are reduced block by block (bins may straddle blocks)
    and only the ``2 * n_bins`` results are brought back. With ``n <= n_bins`` the trace is
    returned unchanged (``lo`` and ``hi`` both equal to ``values``).

    Parameters
    ----------
    time : array_like, shape (n,)
        Sample times (any unit), usually increasing.
    values : array_like or dask.array.Array, shape (n,)
        Sample values.
    n_bins : int
        Number of bins, at least 2.

    Returns
    -------
    time : numpy.ndarray, shape (min(n, n_bins),)
        A representative time per bin: the time of sample ``i * (n - 1) // (n_bins - 1)``,
        which lies in bin ``i``; the first and last are the first and last sample times.
    lo, hi : numpy.ndarray, shape (min(n, n_bins),)
        The minimum and maximum of each bin, float64.

    Raises
    ------
    ValueError
        If ``time`` and ``values`` are not 1-D of the same length, or ``n_bins < 2``.
    TypeError
        If ``n_bins`` is not an integer.

    See Also
    --------
    dashboard : draws every trace through this envelope.

    Examples
    --------
    >>> t = np.arange(10.0)
    >>> x = np.array([0.0, 1, 2, 9, 4, 5, 6, -7, 8, 3])
    >>> tb, lo, hi = envelope(t, x, 3)
    >>> tb, lo, hi
    (array([0., 4., 9.]), array([ 0.,  4., -7.]), array([2., 9., 8.]))
    """
    time_arr = _validate_envelope(time, values, n_bins)
    result = _resolve({"envelope": _envelope_pending(time_arr, values, int(n_bins))})
    return result["envelope"]  # type: ignore[no-any-return]


# --------------------------------------------------------------------------------------------
# figure files and labels
# --------------------------------------------------------------------------------------------


def _figure_format(path: str) -> DashboardFormat:
    suffix = PurePosixPath(path.split("?", 1)[0]).suffix.lower().lstrip(".")
    if suffix not in _FORMATS:
        raise ValueError(
            f"cannot tell the figure format from {path!r}: expected a path ending in .png or .svg."
        )
    return "svg" if suffix == "svg" else "png"


def _render(fig: Figure, fmt: DashboardFormat, *, compress_level: int = 1) -> bytes:
    """The bytes of ``fig`` as SVG or PNG (zlib ``compress_level`` 0-9 for PNG)."""
    buffer = io.BytesIO()
    if fmt == "svg":
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    else:  # fast zlib level by default: a third faster to encode, a fifth bigger
        fig.savefig(buffer, format="png", pil_kwargs={"compress_level": compress_level})
    return buffer.getvalue()


def _write_figure(
    fig: Figure, path: str, fmt: DashboardFormat, storage_options: Mapping[str, Any] | None
) -> int:
    """Render ``fig`` and write it whole to any fsspec URL; returns the number of bytes."""
    data = _render(fig, fmt)
    files.write_bytes(path, data, storage_options=storage_options)  # atomic
    return len(data)


def _labels(array: xr.DataArray, dim: str) -> npt.NDArray[Any]:
    """The coordinate values along ``dim``, or positions where there is no coordinate."""
    if dim in array.coords:
        return np.asarray(array.coords[dim].values)
    return np.arange(array.sizes[dim])
