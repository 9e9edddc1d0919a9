"""Run a benchmark case in a fresh process and measure its wall time and peak memory."""

from __future__ import annotations

import multiprocessing
import resource
import time
from collections.abc import Callable
from typing import Any


def _child(case: Callable[..., dict[str, Any]], kwargs: dict[str, Any], queue: Any) -> None:
    prepare = kwargs.pop("prepare")
    data = prepare(**kwargs.pop("prepare_kwargs"))
    baseline_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    extra = case(data, **kwargs)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put({"seconds": seconds, "peak_mb": peak_mb, "baseline_mb": baseline_mb, **extra})


def measure(
    case: Callable[..., dict[str, Any]],
    *,
    prepare: Callable[..., Any],
    prepare_kwargs: dict[str, Any],
    **kwargs: Any,
) -> dict[str, Any]:
    """Run ``case(prepare(**prepare_kwargs), **kwargs)`` in a fresh spawned process.

    Returns the case's own figures plus ``seconds`` (the case alone, not the preparation),
    ``peak_mb`` (the process's peak resident memory, preparation included) and
    ``baseline_mb`` (the peak after imports and preparation, before the case ran).
    Worker threads count towards the process; a case that starts worker processes must
    measure those itself.
    """
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(
        target=_child,
        args=(case, {"prepare": prepare, "prepare_kwargs": prepare_kwargs, **kwargs}, queue),
    )
    process.start()
    result: dict[str, Any] = queue.get()
    process.join()
    return result
