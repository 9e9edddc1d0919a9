"""What an item's task tells the driver while it runs: the stage each of its items is in.

Each time an item enters a stage (to check it or to run it), and as it leaves it (done or
skipped), it reports the run, the task's key, the item, the stage, the status, the worker,
the host and the time. The driver records the stages' statuses
from these reports (:mod:`neurobatch.engine.statuses`) and, on a worker that a nanny can
restart (a process of its own), enforces ``engine.item_timeout_s`` itself
(:class:`neurobatch.engine.tasks.ItemTasks`), timing each item from them; elsewhere the
item times itself (:func:`neurobatch.engine.item.process_item`).

A report reaches the driver by the cheapest way there is: a direct call when the item runs
in the driver's own process (an in-process cluster's threads, an item of a large kind),
where the driver listens (:func:`listening`); else an event on the scheduler under
:data:`PROGRESS`, which the driver's client subscribes to.
"""

from __future__ import annotations

import asyncio
import platform
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from distributed import Worker, get_worker
from distributed.utils import sync

__all__ = ["PROGRESS", "listening", "report", "restartable"]

#: The topic of the events by which an item's task tells the driver which stage it is in.
PROGRESS = "neurobatch-progress"

#: Seconds a report waits, at most, for its event to leave the worker.
SEND_TIMEOUT_S = 0.1

#: This host's name, in every report.
_HOST = platform.node()

#: What the driver of each run in this process does with its items' reports, by run id.
_listeners: dict[str, Callable[[dict[str, Any]], None]] = {}


@contextmanager
def listening(run_id: str, listener: Callable[[dict[str, Any]], None]) -> Iterator[None]:
    """Hand the reports of run ``run_id``'s items that run in this process to ``listener``.

    Parameters
    ----------
    run_id : str
        The run.
    listener : callable
        Called on the item's thread with the report: ``run``, ``key``, ``item``,
        ``stage``, ``status``, ``worker``, ``host`` and ``time`` (epoch seconds).

    Examples
    --------
    >>> heard = []
    >>> with listening("1a", heard.append):
    ...     report("experiment_001", "ingest", None, run_id="1a", worker="driver")
    >>> [(m["item"], m["stage"], m["worker"]) for m in heard]
    [('experiment_001', 'ingest', 'driver')]
    """
    _listeners[run_id] = listener
    try:
        yield
    finally:
        del _listeners[run_id]


def restartable() -> Worker | None:
    """The worker running this task, when a nanny can restart it.

    Returns
    -------
    distributed.Worker or None
        None outside a task, and on a worker without a nanny (the threads of an
        in-process cluster, ``dask worker --no-nanny``).

    Examples
    --------
    >>> restartable() is None  # not in a task
    True
    """
    try:
        worker = get_worker()
    except ValueError:
        return None
    return worker if worker.nanny else None


def report(
    item_id: str,
    stage: str,
    timeout_s: float | None,
    *,
    status: str = "started",
    run_id: str = "",
    worker: str = "",
) -> None:
    """Tell the driver that item ``item_id`` entered ``stage`` (or is done with it).

    In the driver's own process, a direct call to its :func:`listening` listener; in a
    task elsewhere, an event under :data:`PROGRESS`. When the driver times the item (with a
    timeout, on a worker a nanny can restart: :func:`restartable`) an item entering a stage
    goes on only once the event has left the worker; otherwise the event is sent in passing.

    Parameters
    ----------
    item_id : str
        The item.
    stage : str
        The stage it is checking or running.
    timeout_s : float or None
        The run's ``engine.item_timeout_s``.
    status : {"started", "done", "skipped"}, default "started"
        Entering the stage, or leaving it having run it or found it committed.
    run_id : str, optional
        The run.
    worker : str, optional
        Where the item runs, when not in a task (the item's outcome's worker).

    Examples
    --------
    >>> report("experiment_001", "ingest", 60.0)  # not in a task, nobody listening
    """
    listener = _listeners.get(run_id)
    try:
        task_worker: Worker | None = get_worker()
    except ValueError:
        task_worker = None
    if listener is None and task_worker is None:
        return
    message = {
        "run": run_id,
        "key": str(task_worker.get_current_task()) if task_worker else "",
        "item": item_id,
        "stage": stage,
        "status": status,
        "worker": task_worker.address if task_worker else worker,
        "host": _HOST,
        "time": time.time(),
    }
    if listener is not None:
        listener(message)
    elif (
        task_worker is not None
        and timeout_s is not None
        and task_worker.nanny
        and status == "started"
    ):
        sync(task_worker.loop, _send, task_worker, message)
    elif task_worker is not None:
        task_worker.loop.add_callback(task_worker.log_event, PROGRESS, message)


async def _send(worker: Worker, message: dict[str, Any]) -> None:
    """Log the event on the worker's loop and wait (at most :data:`SEND_TIMEOUT_S`) until
    its batched stream has handed it to the connection: the item goes on only once the
    driver can learn its stage (a worker frozen just after entering a stage would
    otherwise be said to be in the one before)."""
    worker.log_event(PROGRESS, message)  # on the loop's thread: into the stream's buffer
    stream = worker.batched_stream
    deadline = time.monotonic() + SEND_TIMEOUT_S
    while time.monotonic() < deadline and any(
        isinstance(queued, dict) and queued.get("msg") is message for queued in stream.buffer
    ):
        await asyncio.sleep(0.001)
