"""Measured resources: a scheduler plugin that samples every worker's CPU and memory.

:class:`ResourceMonitor` lives on the Dask scheduler. Every ``interval`` seconds it reads the
scheduler's view of each worker (``scheduler.workers[address].metrics``, refreshed by the
worker's heartbeat: about every 0.5 s for up to 10 workers) into a bounded buffer, together
with the worker's memory limit and thread count; and from the task transitions it records
each task's key, worker, start and stop. A scheduler handler hands both back to the client.

It registers on any kind of cluster: ``client.register_plugin(ResourceMonitor())`` (what
:class:`Recorder` does) for a ``LocalCluster`` or a scheduler address, and
``dask scheduler --preload neurobatch.engine.monitor`` for a scheduler started by hand. Both
are idempotent: a scheduler never holds two monitors.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self

import pandas as pd
import psutil
from distributed import Client
from distributed.diagnostics.plugin import SchedulerPlugin
from tornado.ioloop import PeriodicCallback

from neurobatch.errors import NeurobatchError

logger = logging.getLogger(__name__)

__all__ = [
    "DRIVER",
    "HANDLER",
    "SAMPLE_COLUMNS",
    "TASK_COLUMNS",
    "Recorder",
    "ResourceMonitor",
    "dask_setup",
]

#: The name of the scheduler handler that answers with the monitor's samples and tasks.
HANDLER = "neurobatch_resources"

#: One sample: scheduler time (epoch s), worker address, its process CPU percent (100 = one
#: core busy), its process memory (bytes), its memory limit (bytes, 0 when unlimited) and its
#: thread count.
SAMPLE_COLUMNS = ("time", "worker", "cpu", "memory", "memory_limit", "nthreads")

#: One finished task: its key, worker, final state (``memory`` or ``erred``) and the start
#: and stop of its computation (epoch s).
TASK_COLUMNS = ("key", "worker", "state", "start", "stop")


class ResourceMonitor(SchedulerPlugin):
    """Sample every worker's CPU and memory, and record when and where tasks ran.

    Parameters
    ----------
    interval : float, default 0.5
        Seconds between samples. Each sample holds the worker's latest heartbeat, so an
        interval shorter than the heartbeat repeats values rather than adding information.
    max_samples : int, default 200_000
        The buffer keeps the most recent samples (one per worker per interval: about 2.8 h
        of 10 workers at 0.5 s); :class:`Recorder` drains it as a run goes.
    max_tasks : int, default 100_000
        The most recent finished tasks kept.

    Examples
    --------
    >>> from distributed import Client, LocalCluster
    >>> with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster:
    ...     with Client(cluster) as client:
    ...         with Recorder(client) as recorder:
    ...             client.submit(sum, [1, 2], key="add-one").result()
    ...             samples, tasks = recorder.poll()
    3
    >>> list(samples.columns) == list(SAMPLE_COLUMNS), tasks["key"].tolist()
    (True, ['add-one'])
    """

    name = "neurobatch-resource-monitor"
    idempotent = True

    def __init__(
        self, interval: float = 0.5, max_samples: int = 200_000, max_tasks: int = 100_000
    ) -> None:
        self.interval = interval
        self.samples: deque[tuple[float, str, float, float, float, int]] = deque(maxlen=max_samples)
        self.tasks: deque[tuple[str, str, str, float, float]] = deque(maxlen=max_tasks)
        self.scheduler: Any = None
        self.n_samples = 0  # ever taken; the buffer holds the latest
        self.n_tasks = 0
        self._callback: PeriodicCallback | None = None

    async def start(self, scheduler: Any) -> None:
        """Install the handler and start sampling (called by the scheduler)."""
        self.scheduler = scheduler
        scheduler.handlers[HANDLER] = self.snapshot
        self._callback = PeriodicCallback(self.sample, self.interval * 1000)
        self._callback.start()
        self.sample()
        logger.info("resource monitor sampling workers every %g s", self.interval)

    async def close(self) -> None:
        """Stop sampling and remove the handler (called by the scheduler)."""
        if self._callback is not None:
            self._callback.stop()
        if self.scheduler is not None:
            self.scheduler.handlers.pop(HANDLER, None)

    def sample(self) -> None:
        """Append one sample per worker that has sent a heartbeat."""
        now = time.time()
        for address, worker in list(self.scheduler.workers.items()):
            metrics = worker.metrics
            if "cpu" not in metrics:  # no heartbeat yet
                continue
            self.samples.append(
                (
                    now,
                    address,
                    float(metrics["cpu"]),
                    float(metrics["memory"]),
                    float(worker.memory_limit or 0),
                    int(worker.nthreads),
                )
            )
            self.n_samples += 1

    def transition(
        self, key: Any, start: str, finish: str, *args: Any, stimulus_id: str, **kwargs: Any
    ) -> None:
        """Record a task that finished computing (``processing`` -> ``memory``/``erred``)."""
        if start != "processing" or finish not in ("memory", "erred"):
            return
        compute = [s for s in kwargs.get("startstops", ()) if s.get("action") == "compute"]
        if not compute:
            return
        self.tasks.append(
            (
                str(key),
                str(kwargs.get("worker", "")),
                finish,
                float(compute[0]["start"]),
                float(compute[-1]["stop"]),
            )
        )
        self.n_tasks += 1

    def snapshot(self, samples_from: int | None = 0, tasks_from: int | None = 0) -> dict[str, Any]:
        """The samples and finished tasks from the given positions on (the handler).

        Parameters
        ----------
        samples_from, tasks_from : int or None, default 0
            How many samples and tasks the caller has already seen (the ``n_samples`` and
            ``n_tasks`` of its previous answer); None for none of them, only the totals.

        Returns
        -------
        dict
            ``samples`` and ``tasks`` as ``{column: list}`` (columnar, compact on the wire),
            the totals ``n_samples`` and ``n_tasks`` to pass next time, ``lost`` (rows that
            left the bounded buffers before they were fetched) and ``interval``.
        """
        samples, lost_samples = _since(self.samples, self.n_samples, samples_from)
        tasks, lost_tasks = _since(self.tasks, self.n_tasks, tasks_from)
        return {
            "samples": {c: [row[i] for row in samples] for i, c in enumerate(SAMPLE_COLUMNS)},
            "tasks": {c: [row[i] for row in tasks] for i, c in enumerate(TASK_COLUMNS)},
            "n_samples": self.n_samples,
            "n_tasks": self.n_tasks,
            "lost": lost_samples + lost_tasks,
            "interval": self.interval,
        }


def _since(buffer: deque[Any], total: int, start: int | None) -> tuple[list[Any], int]:
    """The rows of a bounded buffer from global position ``start`` on, and how many of
    them have already fallen out of it."""
    wanted = 0 if start is None else max(0, total - start)
    kept = min(wanted, len(buffer))
    return list(buffer)[len(buffer) - kept :] if kept else [], wanted - kept


def dask_setup(scheduler: Any) -> None:
    """Preload entry point: ``dask scheduler --preload neurobatch.engine.monitor``.

    Adds a :class:`ResourceMonitor` with ``idempotent=True``, so that a client that also
    registers one does not replace it. The scheduler starts it with its other plugins.
    """
    scheduler.add_plugin(ResourceMonitor(), idempotent=True)


#: The worker name the driver's own samples carry.
DRIVER = "driver"


class Recorder:
    """The client side: make sure the scheduler has a monitor, and drain its buffer.

    Also samples the driver process itself (worker name :data:`DRIVER`), which combines the
    items' outputs, at the monitor's interval until :meth:`close`.

    Parameters
    ----------
    client : distributed.Client
        Connected to the cluster to watch. A :class:`ResourceMonitor` is registered unless
        one is already there (a preload, or an earlier run).

    Raises
    ------
    neurobatch.errors.NeurobatchError
        If the scheduler does not answer the monitor's handler after registration (the
        scheduler refused the plugin).
    """

    def __init__(self, client: Client) -> None:
        self.client = client
        client.register_plugin(ResourceMonitor())
        answer = self._ask(samples_from=None, tasks_from=None)  # the positions: start now
        self._cursor: dict[str, int | None] = {
            "samples_from": answer["n_samples"],
            "tasks_from": answer["n_tasks"],
        }
        self._samples: list[pd.DataFrame] = []
        self._tasks: list[pd.DataFrame] = []
        self.interval = float(answer["interval"])
        self.polled = -math.inf
        """When the last poll fetched (``time.monotonic``)."""
        self.lost = 0
        self._driver: list[tuple[float, str, float, float, float, int]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._sample_driver, name="neurobatch-driver-sampler", daemon=True
        )
        self._thread.start()

    def _sample_driver(self) -> None:
        process = psutil.Process()
        process.cpu_percent()  # the first call only starts the measurement
        while not self._stop.wait(self.interval):
            sample = (time.time(), DRIVER, process.cpu_percent(), process.memory_info().rss)
            with self._lock:
                self._driver.append((*sample, 0.0, 1))

    def close(self) -> None:
        """Stop sampling the driver (the scheduler's monitor keeps running)."""
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def _ask(self, **cursor: int | None) -> Mapping[str, Any]:
        answer: Mapping[str, Any] | None = self.client.sync(
            getattr(self.client.scheduler, HANDLER), **cursor
        )
        if answer is None:  # a scheduler without the handler answers None
            raise NeurobatchError(
                f"the scheduler at {getattr(self.client.scheduler, 'address', None)} has no {HANDLER!r} "
                "handler: the resource monitor is not running there (see its log)"
            )
        return answer

    def poll(self, *, reuse_within: float = 0.0) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Fetch what the monitor gathered since the last poll and keep it.

        Parameters
        ----------
        reuse_within : float, default 0
            Seconds: when the last fetch is younger, nothing is fetched (the monitor
            samples once per :attr:`interval`, so a poll within it mostly finds nothing new;
            each costs a trip to the scheduler).

        Returns
        -------
        samples, tasks : pandas.DataFrame
            Everything gathered since the recorder started (columns :data:`SAMPLE_COLUMNS`
            and :data:`TASK_COLUMNS`).
        """
        if time.monotonic() - self.polled < reuse_within:
            return self.samples, self.tasks
        answer = self._ask(**self._cursor)
        self.polled = time.monotonic()
        self._cursor = {"samples_from": answer["n_samples"], "tasks_from": answer["n_tasks"]}
        if answer["lost"]:
            self.lost += answer["lost"]
            logger.warning(
                "%d resource samples or task records left the monitor's buffer before they "
                "were fetched; poll more often or enlarge it",
                answer["lost"],
            )
        with self._lock:
            driver, self._driver = self._driver, []
        fetched = [
            frame
            for frame in (
                pd.DataFrame(answer["samples"], columns=list(SAMPLE_COLUMNS)),
                pd.DataFrame(driver, columns=list(SAMPLE_COLUMNS)),
            )
            if len(frame)
        ]
        tasks = pd.DataFrame(answer["tasks"], columns=list(TASK_COLUMNS))
        self._samples.extend(fetched)
        if len(tasks):
            self._tasks.append(tasks)
        return self.samples, self.tasks

    @property
    def samples(self) -> pd.DataFrame:
        """Every sample fetched so far."""
        return _concat(self._samples, SAMPLE_COLUMNS)

    @property
    def tasks(self) -> pd.DataFrame:
        """Every finished task fetched so far."""
        return _concat(self._tasks, TASK_COLUMNS)


def _concat(frames: list[pd.DataFrame], columns: tuple[str, ...]) -> pd.DataFrame:
    if not frames:
        return pd.DataFrame({c: [] for c in columns})
    if len(frames) > 1:
        frames[:] = [pd.concat(frames, ignore_index=True)]
    return frames[0]
