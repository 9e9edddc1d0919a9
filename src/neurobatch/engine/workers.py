"""What every worker neurobatch starts runs with, in processes of its own or in this one.

Every worker gets one BLAS/OpenMP thread per worker thread (:data:`ONE_BLAS_THREAD`), so
that a worker of four threads calling NumPy's linear algebra does not start four thread
pools of as many threads as the node has cores. The workers also run without Dask's
statistical profiler (:data:`WORKER_PROFILER`), whose call trees grow with the batch,
unless the driver's environment sets that variable. :mod:`neurobatch.engine.cluster` sets
these up for each kind of cluster.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import dask
from threadpoolctl import threadpool_limits

logger = logging.getLogger(__name__)

__all__ = [
    "ONE_BLAS_THREAD",
    "WORKER_PROFILER",
    "environment",
    "for_worker_processes",
    "for_workers_in_this_process",
    "worker_environment",
]

#: Environment that limits the BLAS and OpenMP pools to one thread in each worker thread.
ONE_BLAS_THREAD = {
    name: "1"
    for name in (
        "OMP_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "MKL_NUM_THREADS",
        "VECLIB_MAXIMUM_THREADS",
        "NUMEXPR_NUM_THREADS",
    )
}

#: The variable that turns Dask's statistical profiler in a worker on or off. It samples
#: every thread's stack every 10 ms and keeps the call trees of each task prefix and of the
#: last hour (3,600 cycles): memory that grows with the batch (about 0.35 MB per item of a
#: photometry run, 80 MB per worker over 200 items) and CPU taken from the tasks.
WORKER_PROFILER = "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED"


def worker_environment() -> dict[str, str]:
    """The environment variables of every worker neurobatch starts.

    :data:`ONE_BLAS_THREAD`, and :data:`WORKER_PROFILER` "False" unless the driver's
    environment sets it (then its value: set it to "True" for the dashboard's Profile page).

    Examples
    --------
    >>> with environment({WORKER_PROFILER: "True"}):
    ...     worker_environment()[WORKER_PROFILER]
    'True'
    >>> worker_environment()["OMP_NUM_THREADS"]
    '1'
    """
    return ONE_BLAS_THREAD | {WORKER_PROFILER: os.environ.get(WORKER_PROFILER, "False")}


@contextmanager
def for_worker_processes() -> Iterator[None]:
    """Spawn worker processes with :func:`worker_environment` in this block.

    BLAS pools are sized when NumPy is imported, before a Nanny's ``env`` reaches the
    worker; only ``pre-spawn-environ`` is set before the process starts, and there the
    driver's own environment wins over the configuration, so both are set while the
    nannies are made (they keep the values for restarts). A Nanny hands the driver's Dask
    configuration to its worker, so the profiler's setting goes there too.
    """
    variables = worker_environment()
    spawn = dask.config.get("distributed.nanny.pre-spawn-environ")
    with (
        environment(variables),
        _profiler_setting(),
        dask.config.set({"distributed.nanny.pre-spawn-environ": spawn | variables}),
    ):
        yield


#: glibc's ``mallopt`` parameter M_TRIM_THRESHOLD (malloc.h).
_M_TRIM_THRESHOLD = -1


def _return_freed_memory() -> None:
    """Make this process give freed memory back to the system, as Dask's worker processes do.

    Dask starts its worker processes with ``MALLOC_TRIM_THRESHOLD_=65536``, so that memory
    freed at the top of glibc's heap goes back to the system instead of staying with the
    process; workers in this process get the same setting (10 x 1 h of photometry on 2
    threads: peak 1.2 GB instead of 1.5). A fixed mmap threshold was measured too: no
    lower, and it costs the filter a page fault per block. A setting of the process, kept
    after the cluster closes.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").mallopt(_M_TRIM_THRESHOLD, 2**16)
    except (OSError, AttributeError):  # another C library (musl): it has no such tuning
        logger.debug("mallopt is not available; freed memory stays with the process")


@contextmanager
def _profiler_setting() -> Iterator[None]:
    """Dask's profiler setting of :func:`worker_environment`, for workers in this process."""
    value = worker_environment()[WORKER_PROFILER]
    # parsed as Dask parses it in a worker that reads it from its environment
    parsed = dask.config.collect_env({WORKER_PROFILER: value})
    with dask.config.set(
        {
            "distributed.worker.profile.enabled": parsed["distributed"]["worker"]["profile"][
                "enabled"
            ]
        }
    ):
        yield


@contextmanager
def environment(variables: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the block (processes spawned in it inherit them).

    Examples
    --------
    >>> with environment({"NEUROBATCH_EXAMPLE": "1"}):
    ...     os.environ["NEUROBATCH_EXAMPLE"]
    '1'
    >>> "NEUROBATCH_EXAMPLE" in os.environ
    False
    """
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def for_workers_in_this_process() -> Iterator[None]:
    """Run workers in this process as :func:`worker_environment` says, during the block.

    BLAS pools already exist here, so they are limited to one thread for the block instead
    of at a spawn; the profiler's setting is Dask's configuration for the block; and the
    process gives freed memory back to the system as Dask's worker processes do (a setting
    of the process, kept afterwards).

    Examples
    --------
    >>> from threadpoolctl import threadpool_info
    >>> import numpy.linalg
    >>> with for_workers_in_this_process():
    ...     {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}
    {1}
    """
    _return_freed_memory()
    with threadpool_limits(limits=1), _profiler_setting():
        yield
