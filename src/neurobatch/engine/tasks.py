"""The driver's tasks of items: grouped, submitted, timed, retried, handed back.

Items run in tasks, several small ones to a task (:func:`task_groups`), each task running
its items in turn (:func:`neurobatch.engine.item.process_items`). :class:`ItemTasks` hands
each task's outcomes back as it finishes, and enforces ``engine.item_timeout_s`` on worker
processes that a nanny manages: their items report each stage they enter
(:mod:`neurobatch.engine.progress`), the driver times each task's current item from its
report, and when one overruns it

1. takes back (cancels) every task of the run on that worker, so that the scheduler does
   not count their rerun against ``engine.retries`` as a worker's death;
2. restarts the worker: its nanny asks it to close, then kills it (a stopped or frozen
   process too) and starts a fresh one;
3. submits the tasks again: the overrunning item up to ``engine.retries`` times, then it
   fails with one line naming the input, the stage and the setting
   (:func:`neurobatch.engine.item.timed_out`); the other items as they were (those done
   before it are kept, having committed in this run).

Items that run in the driver's own process (an in-process cluster's threads) time
themselves instead; nothing can stop them but their own end.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

from distributed import Client, Future
from distributed.diagnostics.plugin import WorkerPlugin
from distributed.scheduler import KilledWorker

from neurobatch.chunking import TASK_INPUT_BYTES
from neurobatch.config import EngineConfig
from neurobatch.config.sections import StorageTimeoutsConfig
from neurobatch.engine.item import ItemJob, ItemOutcome, process_items, timed_out
from neurobatch.engine.logs import one_line
from neurobatch.engine.progress import PROGRESS
from neurobatch.io import storage

logger = logging.getLogger(__name__)

__all__ = [
    "POLL_S",
    "RESTART_TIMEOUT_S",
    "ItemTasks",
    "storage_timeouts_on_workers",
    "task_groups",
]

#: The longest the driver waits for a task to finish before it looks at the items' clocks.
POLL_S = 1.0

#: The longest a restart may take: the nanny kills a worker that has not closed within 4 s,
#: then starts a new one; a nanny that does not answer (stopped with its worker) has its
#: worker removed from the scheduler instead.
RESTART_TIMEOUT_S = 30.0

#: What a finished task hands back: its items, their outcomes and the task's key.
Finished = tuple[list[ItemJob], list[ItemOutcome], str]


def task_groups(jobs: Sequence[ItemJob], threads: int) -> list[list[ItemJob]]:
    """The jobs in consecutive groups, one task each.

    Items whose inputs are small share a task, up to
    :data:`~neurobatch.chunking.TASK_INPUT_BYTES` of input together, and at most as many
    as keep four tasks for each worker thread; an item of that size or larger is a task of
    its own.

    Parameters
    ----------
    jobs : sequence of ItemJob
        In manifest order.
    threads : int
        The cluster's worker threads.

    Returns
    -------
    list of list of ItemJob

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> small = [SimpleNamespace(size=2**20) for _ in range(100)]
    >>> [len(group) for group in task_groups(small, threads=2)][:3]
    [12, 12, 12]
    >>> large = [SimpleNamespace(size=2**30) for _ in range(3)]
    >>> [len(group) for group in task_groups(large, threads=2)]
    [1, 1, 1]
    """
    most = max(1, len(jobs) // (4 * max(threads, 1)))
    groups: list[list[ItemJob]] = []
    group: list[ItemJob] = []
    for job in jobs:
        if group and (
            len(group) == most or sum(j.size for j in group) + job.size > TASK_INPUT_BYTES
        ):
            groups.append(group)
            group = []
        group.append(job)
    return groups + ([group] if group else [])


class _StorageTimeouts(WorkerPlugin):
    """A run's storage timeouts on every worker, those that join or restart later too."""

    def __init__(self, timeouts: StorageTimeoutsConfig) -> None:
        self.timeouts = timeouts

    def setup(self, worker: Any) -> None:
        storage.configure(self.timeouts)


def storage_timeouts_on_workers(client: Client, timeouts: StorageTimeoutsConfig) -> None:
    """Give every worker of ``client``, now and later, the storage ``timeouts``.

    Parameters
    ----------
    client : distributed.Client
        The run's cluster.
    timeouts : neurobatch.config.sections.StorageTimeoutsConfig
        The pipeline's ``engine.storage_timeouts`` (:func:`neurobatch.io.storage.configure`).
    """
    client.register_plugin(_StorageTimeouts(timeouts), name="neurobatch-storage-timeouts")


@dataclass
class _Task:
    """One submitted task, and what its worker last reported of it."""

    key: str
    jobs: list[ItemJob]
    future: Future[list[ItemOutcome]]
    item: str | None = None
    """The item it runs now, and the stage that item is in, on ``worker``."""
    stage: str | None = None
    worker: str | None = None
    since: float = 0.0
    """When the driver heard that ``item`` started (``time.monotonic()``)."""
    started: float = 0.0
    """The same, as ``time.time()``, for the record."""
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


class ItemTasks:
    """Tasks of items on a cluster, each handed back as it finishes or is given up.

    Use it as a context manager (which listens to the items' reports while it is open),
    :meth:`submit` groups of items, and iterate over :meth:`finished`.

    Parameters
    ----------
    client : distributed.Client
        The cluster.
    engine : neurobatch.config.EngineConfig
        ``item_timeout_s`` (None: no limit) and ``retries``.
    on_progress : callable, optional
        Also given every report of the run's items that comes through the scheduler
        (:func:`neurobatch.engine.progress.report`), on the client's event loop.

    Examples
    --------
    >>> import tempfile
    >>> from neurobatch import synthetic
    >>> from neurobatch.config import LocalClusterConfig
    >>> from neurobatch.engine.cluster import connect
    >>> from neurobatch.engine.run import Pipeline
    >>> tmp = tempfile.mkdtemp()
    >>> _ = synthetic.write_photometry_batch(f"{tmp}/data", n_items=2, duration_s=60.0, fs=20.0)
    >>> pipeline = Pipeline({
    ...     "name": "doc",
    ...     "input": {"url": f"{tmp}/data", "pattern": "*.csv"},
    ...     "loader": {"format": "photometry-csv", "event_cols": ["trial_cue"]},
    ...     "trials": {"align_to": "trial_cue", "bounds_s": [-2, 4]},
    ...     "output": {"url": f"{tmp}/out"},
    ...     "engine": {"item_timeout_s": 60},
    ... })
    >>> jobs = pipeline.jobs(pipeline.discover())
    >>> with (
    ...     connect(LocalClusterConfig(n_workers=1, processes=False)) as client,
    ...     ItemTasks(client, pipeline.config.engine) as tasks,
    ... ):
    ...     for group in task_groups(jobs, threads=1):
    ...         tasks.submit(group)
    ...     [outcome.status for _, outcomes, _ in tasks.finished() for outcome in outcomes]
    ['done', 'done']
    """

    def __init__(
        self,
        client: Client,
        engine: EngineConfig,
        *,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.client = client
        self.on_progress = on_progress
        self.timeout_s = engine.item_timeout_s
        self.retries = engine.retries
        self.tasks: dict[str, _Task] = {}
        self.overruns: Counter[str] = Counter()
        """How many times each item ran out of time."""
        self._again = 0
        self._restarted: set[str] = set()
        """The workers restarted to stop an item."""
        self._done: queue.Queue[Future[list[ItemOutcome]]] = queue.Queue()
        """Futures as they finish (or are cancelled), put there from Dask's threads."""

    def __enter__(self) -> Self:
        if self.timeout_s is not None or self.on_progress is not None:
            self.client.subscribe_topic(PROGRESS, self._progress)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.timeout_s is not None or self.on_progress is not None:
            self.client.unsubscribe_topic(PROGRESS)

    def __len__(self) -> int:
        """The tasks submitted and not handed back yet."""
        return len(self.tasks)

    def submit(self, jobs: list[ItemJob], *, again: bool = False) -> None:
        """Submit one task of ``jobs`` (run in turn on one worker).

        Parameters
        ----------
        jobs : list of ItemJob
            One group of :func:`task_groups`.
        again : bool, default False
            A task given back by a restarted worker: its key gets a count.
        """
        first = jobs[0]
        key = f"items-{first.item_id}-{len(jobs)}-{first.run_id}"
        if again:
            self._again += 1
            key = f"{key}-{self._again}"
        future = self.client.submit(process_items, jobs, key=key, pure=False, retries=self.retries)
        future.add_done_callback(self._done.put)
        # its first report comes through the scheduler, long after this
        self.tasks[key] = _Task(key, jobs, future)

    def finished(self) -> Iterator[Finished]:
        """Each task's items and outcomes as it finishes (or its items fail), until none is
        left; tasks submitted meanwhile are waited for too.

        Yields
        ------
        tuple of (list of ItemJob, list of ItemOutcome, str)
            The items, their outcomes in the same order, and the task's key.
        """
        while self.tasks:
            try:
                future = self._done.get(timeout=self._wait_s())
            except queue.Empty:
                pass
            else:
                task = self.tasks.pop(str(future.key), None)
                if task is None:  # taken back (cancelled) meanwhile
                    pass
                elif self._lost_to_a_restart(future):
                    logger.info("%s: lost with a restarted worker; submitted again", task.key)
                    self.submit(task.jobs, again=True)
                else:
                    yield task.jobs, _outcomes_of(future, task.jobs), task.key
                future.release()
            yield from self._overrun()

    def _progress(self, event: tuple[float, dict[str, Any]]) -> None:
        """An item's report (on the client's event loop): note which item and stage each
        task is in, and when each item started."""
        _, message = event
        task = self.tasks.get(message.get("key", ""))
        if task is None:  # an earlier attempt's, or another run's
            return
        if self.on_progress is not None:
            self.on_progress(message)
        if message.get("status") != "started":  # leaving a stage: the item is still in it
            return
        with task.lock:
            # a new item, or the same again on another worker (Dask reran the task)
            if (message["item"], message["worker"]) != (task.item, task.worker):
                task.since, task.started = time.monotonic(), time.time()
            task.item, task.stage, task.worker = (
                message["item"],
                message["stage"],
                message["worker"],
            )

    def _wait_s(self) -> float | None:
        """How long to wait for a task to finish before looking at the items' clocks."""
        if self.timeout_s is None:
            return None
        now = time.monotonic()
        ends = [task.since + self.timeout_s - now for task in self.tasks.values() if task.item]
        return max(0.0, min([POLL_S, *ends]))

    def _overrun(self) -> Iterator[Finished]:
        """Give up the tasks whose current item ran out of time (see the module's docstring)."""
        if self.timeout_s is None:
            return
        now = time.monotonic()
        late = [
            task
            for task in self.tasks.values()
            if task.item is not None
            and now - task.since > self.timeout_s
            and not task.future.done()  # else handed back at the next wait
        ]
        for task in late:
            if task.key in self.tasks:  # not taken back with another yet
                yield from self._give_up(task)

    def _give_up(self, task: _Task) -> Iterator[Finished]:
        """Take back the tasks on ``task``'s worker, restart it and submit them again; the
        overrunning item fails instead when its attempts are spent."""
        with task.lock:
            item, stage, worker, started = task.item, task.stage, task.worker, task.started
        assert item is not None and stage is not None and worker is not None
        on_worker = set(map(str, self.client.processing().get(worker, ())))
        taken = [
            t
            for t in self.tasks.values()
            if (t is task or t.key in on_worker or t.worker == worker) and not t.future.done()
        ]
        self.client.cancel([t.future for t in taken])
        for t in taken:
            del self.tasks[t.key]
        self.overruns[item] += 1
        logger.warning(
            "%s: still running after %g s, in stage %s (engine.item_timeout_s), on %s: "
            "restarting that worker; %d task(s) taken back from it",
            item,
            self.timeout_s,
            stage,
            worker,
            len(taken),
        )
        self._restart(worker)
        for t in taken:
            if t is not task:
                self.submit(t.jobs, again=True)
        late = next(job for job in task.jobs if job.item_id == item)
        rest = list(task.jobs)
        if self.overruns[item] > self.retries:
            rest.remove(late)
            so_far = ItemOutcome(
                item_id=item,
                url=late.url,
                worker=worker,
                stages_run=[stage],
                spans=[{"stage": stage, "start": started, "worker": worker, "status": "failed"}],
            )
            failed = timed_out(late, so_far, stage, restarts=self.overruns[item])
            yield [late], [failed], task.key
        if rest:
            self.submit(rest, again=True)

    def _lost_to_a_restart(self, future: Future[list[ItemOutcome]]) -> bool:
        """Whether the scheduler failed a task because this restarted its worker: one it
        gave that worker while the restart went on, after the others were taken back
        (``KilledWorker`` once the worker deaths it counts pass ``engine.retries``)."""
        if future.status != "error":
            return False
        error = future.exception()
        worker = getattr(getattr(error, "last_worker", None), "address", None)
        return isinstance(error, KilledWorker) and worker in self._restarted

    def _restart(self, worker: str) -> None:
        """Restart ``worker`` through its nanny (which kills a process that does not close
        within seconds: a stopped or frozen one too) and wait for its replacement."""
        self._restarted.add(worker)
        try:
            result = self.client.restart_workers(
                [worker], timeout=RESTART_TIMEOUT_S, raise_for_error=False
            )
        except Exception as error:  # noqa: BLE001 - its tasks are taken back already
            logger.error("could not restart worker %s: %s", worker, one_line(error))
            return
        logger.info("worker %s restarted: %s", worker, result.get(worker, result))


def _outcomes_of(future: Future[list[ItemOutcome]], jobs: list[ItemJob]) -> list[ItemOutcome]:
    """A finished task's outcomes, or failures when it died (e.g. with its worker)."""
    try:
        return future.result()
    except Exception as error:  # noqa: BLE001 - one task's death never stops the others
        return [
            ItemOutcome(
                item_id=job.item_id,
                url=job.url,
                status="failed",
                error=f"the item's task failed: {one_line(error)}",
                traceback=traceback.format_exc(),
            )
            for job in jobs
        ]
