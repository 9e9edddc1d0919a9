"""What an item's task tells the driver while it runs: the stage each of its items is in.

On a worker that a nanny can restart (a process of its own), the driver enforces
``engine.item_timeout_s`` itself (:class:`neurobatch.engine.tasks.ItemTasks`), timing each
item from these reports: an event on the scheduler under :data:`PROGRESS` each time an item
enters a stage (to check it or to run it), with the task's key, the item, the stage and the
worker. Elsewhere nothing is reported: the item times itself
(:func:`neurobatch.engine.item.process_item`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from distributed import Worker, get_worker
from distributed.utils import sync

__all__ = ["PROGRESS", "report", "restartable"]

#: The topic of the events by which an item's task tells the driver which stage it is in.
PROGRESS = "neurobatch-progress"

#: Seconds a report waits, at most, for its event to leave the worker.
SEND_TIMEOUT_S = 0.1


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


def report(item_id: str, stage: str, timeout_s: float | None) -> None:
    """Tell the driver that item ``item_id`` is in ``stage``, when the driver times it.

    That is, with a timeout, in a task on a worker a nanny can restart (:func:`restartable`);
    anywhere else this does nothing.

    Parameters
    ----------
    item_id : str
        The item.
    stage : str
        The stage it is checking or running.
    timeout_s : float or None
        The run's ``engine.item_timeout_s``.

    Examples
    --------
    >>> report("experiment_001", "ingest", 60.0)  # not in a task: nothing to tell
    """
    worker = restartable() if timeout_s is not None else None
    if worker is None:
        return
    message = {
        "key": str(worker.get_current_task()),
        "item": item_id,
        "stage": stage,
        "worker": worker.address,
    }
    sync(worker.loop, _send, worker, message)


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
