"""Where a LocalCluster's workers run: threads of this process or processes of their own.

``cluster.kind: auto`` (the default) asks :func:`resolve_auto`, whose rule is
:func:`in_process`: threads of one process start at once and share its memory, but the
part of each item that holds the GIL (or waits on zarr's one event loop) runs one item at
a time; worker processes run everything in parallel after their start-up. The rule's
constants are measured on this project's benchmarks (see each).
"""

from __future__ import annotations

import logging

from dask.system import CPU_COUNT
from dask.utils import format_bytes

from neurobatch.config import ClusterConfig, LocalClusterConfig

logger = logging.getLogger(__name__)

__all__ = ["in_process", "local_size", "resolve_auto"]

#: CPU seconds an item costs whatever its size (writing its Zarr stores, keys, records,
#: logs), measured on photometry items of 1.4 MB: 88 ms of CPU per item
#: (``benchmarks small``, 500 to 2,000 items).
ITEM_CPU_S = 0.09

#: The share of :data:`ITEM_CPU_S` that holds the GIL or waits on zarr's one event loop, so
#: runs one item at a time in a process: at most a half, measured (100 such items take the
#: same time on 2 threads of one process as on 2 worker processes, ``benchmarks small``).
SERIAL_SHARE = 0.5

#: The share of an item's CPU that runs one task at a time in a process when its graph is
#: spread over every worker (the ``filter`` and ``sta`` kinds): many short tasks, each
#: through Dask's scheduler and zarr's one event loop. Measured on the filter of 64 ch x
#: 20 min: 88.7 s on 2 threads of one process against about 62 s on 2 worker processes,
#: start-up included (``benchmarks filter``).
BLOCKED_SERIAL_SHARE = 0.65

#: CPU seconds per input byte of the work that runs on every thread (parsing with pyarrow,
#: NumPy and SciPy kernels, Zarr's codecs): about 3 s for a 222 MB hour of photometry.
PARALLEL_S_PER_BYTE = 15e-9

#: Wall seconds to start the worker processes of a LocalCluster (each imports NumPy, SciPy,
#: pandas, xarray, Zarr and Dask), which a cluster in this process does not spend.
WORKER_START_S = 3.0


def in_process(n_items: int, mean_bytes: float, threads: int, *, blocked: bool = False) -> bool:
    """Whether a batch runs at least as fast on workers in this process as in processes.

    ``cluster.kind: auto`` asks this. An item costs ``cpu = ITEM_CPU_S + bytes *
    PARALLEL_S_PER_BYTE``. In one process a part of it runs one item (or task) at a time:
    ``SERIAL_SHARE * ITEM_CPU_S`` for items of their own (see :data:`SERIAL_SHARE`),
    ``BLOCKED_SERIAL_SHARE * cpu`` for an item whose graph is spread over every worker
    (``blocked``). So ``threads`` threads take ``max(serial, cpu / threads)`` per item where
    processes take ``cpu / threads`` after :data:`WORKER_START_S` of start-up. Threads
    unless that start-up is repaid::

        n_items * (max(serial, cpu / threads) - cpu / threads) > WORKER_START_S

    On 2 cores, batches of photometry items always run in this process; the filter of a
    4 GB recording runs in processes, that of a 200 MB one in this process. On 8 cores,
    about 40 small items or more run in processes.

    Parameters
    ----------
    n_items : int
        Items to process.
    mean_bytes : float
        Their mean input size.
    threads : int
        Worker threads the cluster would have.
    blocked : bool, default False
        Each item is one graph over the whole cluster (``filter``, ``sta``).

    Returns
    -------
    bool

    Examples
    --------
    >>> in_process(100, 1.4e6, threads=2), in_process(50, 222e6, threads=2)
    (True, True)
    >>> in_process(30, 1.4e6, threads=8), in_process(100, 1.4e6, threads=8)
    (True, False)
    >>> in_process(1, 220e6, threads=2, blocked=True), in_process(1, 4.4e9, threads=2, blocked=True)
    (True, False)
    """
    cpu = ITEM_CPU_S + mean_bytes * PARALLEL_S_PER_BYTE
    serial = (BLOCKED_SERIAL_SHARE * cpu) if blocked else (SERIAL_SHARE * ITEM_CPU_S)
    per_item = max(serial, cpu / max(threads, 1)) - cpu / max(threads, 1)
    return n_items * per_item <= WORKER_START_S


def local_size(config: LocalClusterConfig) -> tuple[int, int]:
    """A local section's workers and threads per worker.

    ``n_workers`` None is as many workers as fit the machine's cores
    (``dask.system.CPU_COUNT``: the process's CPU affinity and cgroup quota counted).

    Examples
    --------
    >>> local_size(LocalClusterConfig(n_workers=3, threads_per_worker=2))
    (3, 2)
    """
    threads = config.threads_per_worker
    return config.n_workers or max(1, CPU_COUNT // threads), threads


def resolve_auto(
    config: ClusterConfig, n_items: int, mean_bytes: float, *, blocked: bool = False
) -> ClusterConfig:
    """The cluster a run starts: ``kind: auto`` becomes a LocalCluster in this process or in
    processes, as :func:`in_process` says for the batch; other kinds are kept as they are.

    Examples
    --------
    >>> from neurobatch.config import LocalClusterConfig
    >>> resolve_auto(LocalClusterConfig(n_workers=2), 100, 1.4e6).processes
    False
    >>> resolve_auto(LocalClusterConfig(n_workers=8), 100, 1.4e6).processes
    True
    """
    if not isinstance(config, LocalClusterConfig) or config.kind != "auto":
        return config
    if config.processes is not None:
        return config
    n_workers, threads_per_worker = local_size(config)
    threads = n_workers * threads_per_worker
    processes = not in_process(n_items, mean_bytes, threads, blocked=blocked)
    logger.info(
        "cluster kind auto: %s for %d item(s) of %s on average on %d thread(s)",
        "worker processes" if processes else "workers in this process",
        n_items,
        format_bytes(int(mean_bytes)),
        threads,
    )
    return config.model_copy(update={"processes": processes})
