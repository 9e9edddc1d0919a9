"""What an item's task tells the driver while it runs: the stage each of its items is in.

On a worker that a nanny can restart (a process of its own), the driver enforces
``engine.item_timeout_s`` itself (:class:`neurobatch.engine.tasks.ItemTasks`), timing each
item from these reports: an event on the scheduler under :data:`PROGRESS` each time an item
enters a stage (to check it or to run it), with the task's key, the item, the stage and the
worker. Elsewhere nothing is reported: the item times itself
(:func:`neurobatch.engine.item.process_item`).
"""

from __future__ import annotations

from distributed import Worker, get_worker

__all__ = ["PROGRESS", "report", "restartable"]

#: The topic of the events by which an item's task tells the driver which stage it is in.
PROGRESS = "neurobatch-progress"


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
    worker.log_event(PROGRESS, message)
