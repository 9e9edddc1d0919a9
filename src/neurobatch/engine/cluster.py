"""One factory for the Dask cluster a run computes on, driven by the ``cluster`` section."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from dask.utils import format_bytes
from distributed import Client, LocalCluster

from neurobatch.config import ClusterConfig

logger = logging.getLogger(__name__)

__all__ = ["connect"]


@contextmanager
def connect(config: ClusterConfig) -> Iterator[Client]:
    """Start the cluster a pipeline file asks for and yield a client connected to it.

    Parameters
    ----------
    config : neurobatch.config.ClusterConfig
        ``kind: local``: a ``LocalCluster`` of ``n_workers`` processes (as many as fit the
        machine's cores when None) with ``threads_per_worker`` threads and
        ``memory_limit`` each, its dashboard bound to ``dashboard_address`` (loopback by
        default).

    Yields
    ------
    distributed.Client
        Closed, with its cluster, on exit.

    Examples
    --------
    >>> from neurobatch.config import ClusterConfig
    >>> with connect(ClusterConfig(n_workers=1, memory_limit="1GiB")) as client:
    ...     len(client.scheduler_info()["workers"])
    1
    """
    threads = config.threads_per_worker
    n_workers = config.n_workers or max(1, (os.cpu_count() or 1) // threads)
    with (
        LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads,
            memory_limit=config.memory_limit,
            host="127.0.0.1",
            dashboard_address=config.dashboard_address,
        ) as cluster,
        Client(cluster) as client,
    ):
        logger.info(
            "LocalCluster of %d worker(s) x %d thread(s), %s each; dashboard %s",
            n_workers,
            threads,
            "no limit" if config.memory_limit is None else format_bytes(config.memory_limit),
            client.dashboard_link,
        )
        yield client
