"""Memory budgets: how large the chunks of a dataset are, and how many of them a stage keeps.

The one owner of every memory budget: the chunk length that fits a budget
(:func:`chunk_length`), the bytes of one step of a dataset (:func:`row_bytes`), and the default
budgets of the combined trials store and of the photometry stages. Everything else (the
loaders, the stages, the stores, the configuration) asks here. NumPy and the standard library
only, so that any module can import it.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping
from typing import Any, Protocol

import numpy as np

__all__ = [
    "CHUNK_MEMORY",
    "IN_MEMORY_CHUNKS",
    "OPEN_CHUNK_MEMORY",
    "STAGE_HANDOFF_MEMORY",
    "TASK_INPUT_BYTES",
    "THREAD_SHARE",
    "TRIALS_BATCH_MEMORY",
    "TRIALS_CHUNK_MEMORY",
    "TRIALS_HANDOFF_MEMORY",
    "chunk_budget",
    "chunk_length",
    "row_bytes",
]

#: Bytes of one chunk unless set or derived from the workers (``engine.chunk_memory``).
CHUNK_MEMORY = 64 * 2**20

#: A worker thread's share of memory over this is one chunk's budget: a filter task holds
#: about ten chunks (raw chunks, two float64 copies of its block, its result) beside a
#: worker's ~260 MB of imports, so a 512 MiB worker peaks near two thirds of its limit.
THREAD_SHARE = 64

#: Filtered channels up to this many chunk budgets are kept in the worker's memory for the
#: fit's passes; longer recordings go through a scratch Zarr store instead.
IN_MEMORY_CHUNKS = 8

#: Bytes of one store chunk of a 2-D variable of the combined trials store, when it is created
#: (:func:`neurobatch.io.trials_store.append_trials`).
TRIALS_CHUNK_MEMORY = 2 * 2**20

#: Bytes of items' trials the driver gathers before one append to the combined trials store.
TRIALS_BATCH_MEMORY = 32 * 2**20

#: Items whose inputs are smaller than this go several to one task (up to this much input
#: in all), so that a batch of small recordings pays the scheduler, and the shipping of the
#: pipeline's settings to a worker, once per task instead of once per item.
TASK_INPUT_BYTES = 16 * 2**20

#: An item's trials up to this size travel back to the driver with its outcome, which
#: appends them to the combined store without reading the item's store again (larger ones
#: are read there, in chunks).
TRIALS_HANDOFF_MEMORY = 8 * 2**20

#: A stage's output written from memory up to this size is handed to the item's later
#: stages as it was stored, instead of being read back from its store: for small items
#: reading costs more than the data; larger outputs are read lazily, in chunks, so that an
#: item holds no more of them than its stages use.
STAGE_HANDOFF_MEMORY = 32 * 2**20

#: Bytes of one dask chunk of the 2-D variables of the combined trials store, read together
#: (:func:`neurobatch.io.trials_store.open_trials`).
OPEN_CHUNK_MEMORY = 64 * 2**20


class _Variable(Protocol):
    """What :func:`row_bytes` reads of a variable (an ``xarray.Variable`` or ``DataArray``)."""

    @property
    def dims(self) -> tuple[Hashable, ...]: ...

    @property
    def sizes(self) -> Mapping[Hashable, int]: ...

    @property
    def dtype(self) -> np.dtype[Any]: ...


def chunk_length(chunk_memory: int, *, bytes_per_sample: int, minimum: int = 4096) -> int:
    """Return the number of samples per time chunk that fits a memory budget.

    Parameters
    ----------
    chunk_memory : int
        Memory budget of one chunk, in bytes (all variables of one time chunk together).
    bytes_per_sample : int
        Bytes that one time sample takes across those variables (8 per float64 variable).
    minimum : int, default 4096
        Smallest chunk length returned, however small the budget (tiny chunks cost more in
        per-task overhead than they save in memory).

    Returns
    -------
    int
        ``max(minimum, chunk_memory // bytes_per_sample)``.

    Raises
    ------
    ValueError
        If an argument is not a positive integer.

    Examples
    --------
    >>> chunk_length(64 * 2**20, bytes_per_sample=24)
    2796202
    >>> chunk_length(1024, bytes_per_sample=8)
    4096
    >>> chunk_length(1024, bytes_per_sample=8, minimum=1)
    128
    """
    for label, value in (
        ("chunk_memory", chunk_memory),
        ("bytes_per_sample", bytes_per_sample),
        ("minimum", minimum),
    ):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{label} must be a positive integer, got {value!r}")
    return max(int(minimum), int(chunk_memory) // int(bytes_per_sample))


def row_bytes(variables: Iterable[_Variable], *, dim: str = "time") -> int:
    """Bytes of one step along ``dim`` across the variables that have it, as
    :func:`~neurobatch.io.zarr.write_dataset` counts them to size its chunks.

    Code that makes the chunks a dataset will be written with (a loader, a stage) sizes them
    with this, so that the store keeps them as they are. A variable's length along ``dim``
    does not matter: a zero-length one stands for a variable still to be made.

    Parameters
    ----------
    variables : iterable of xarray.Variable or xarray.DataArray
        The dataset's variables and coordinates; those without ``dim`` add nothing.
    dim : str, default "time"
        The chunked dimension.

    Returns
    -------
    int
        The bytes.

    Examples
    --------
    >>> import xarray as xr
    >>> traces = xr.Variable(("time", "channel"), np.empty((0, 64), dtype="int16"))
    >>> row_bytes([traces, xr.Variable("time", np.empty(0)), xr.Variable("channel", np.arange(64))])
    136
    """
    return sum(
        v.dtype.itemsize * math.prod(s for d, s in v.sizes.items() if d != dim)
        for v in variables
        if dim in v.dims
    )


def chunk_budget(thread_memory: int | None, *, at_most: int = CHUNK_MEMORY) -> int:
    """The bytes of one chunk where each worker thread has ``thread_memory`` bytes.

    A :data:`THREAD_SHARE`-th of ``thread_memory`` (a worker's memory limit over its
    threads), at most ``at_most``; ``at_most`` itself when the workers have no limit.

    Parameters
    ----------
    thread_memory : int or None
        Bytes of worker memory per thread; None (or 0) when the workers have no limit.
    at_most : int, default :data:`CHUNK_MEMORY`
        The largest budget.

    Returns
    -------
    int

    Examples
    --------
    >>> chunk_budget(2**29)
    8388608
    >>> chunk_budget(None), chunk_budget(2**34)
    (67108864, 67108864)
    """
    if not thread_memory:
        return at_most
    return max(1, min(at_most, thread_memory // THREAD_SHARE))
