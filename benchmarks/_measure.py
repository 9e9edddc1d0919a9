"""Measure benchmark cases: wall time, and peak memory summed over a whole process tree.

- :func:`measure` runs a case in a fresh spawned process (its own peak resident memory);
- :class:`TreeSampler` samples the summed resident memory of a process and all its
  descendants (a driver and its Dask nannies and workers) every 50 ms, in a thread;
- :func:`in_fresh_process` runs any function in a fresh spawned process, with extra
  environment variables (one BLAS thread, say), and returns its result or raises its error.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import queue as queues
import resource
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any, Self

import psutil

from neurobatch.engine.cluster import ONE_BLAS_THREAD, environment

#: The environment that limits BLAS and OpenMP pools to one thread (the workers' own).
ONE_THREAD = ONE_BLAS_THREAD


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
    measure those itself (:class:`TreeSampler`).
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


# --- process trees ----------------------------------------------------------------------------


def tree_rss(process: psutil.Process, *, each: dict[int, int] | None = None) -> int:
    """Bytes resident in ``process`` and all its descendants now (0 once it has exited).

    Resident sets are summed, so pages shared between processes (libraries, a file mapped
    by several) count once per process: an upper bound of what the tree holds. With
    ``each``, every process's own resident bytes are also stored there by pid.
    """
    total = 0
    try:
        tree = [process, *process.children(recursive=True)]
    except psutil.Error:  # the process has just exited
        return 0
    for p in tree:
        try:
            rss = p.memory_info().rss
        except psutil.Error:
            continue
        total += rss
        if each is not None:
            each[p.pid] = rss
    return total


class TreeSampler:
    """Sample the summed resident memory of a process tree every ``interval_s`` seconds.

    Use as a context manager around the work to measure; the process (this one by default)
    and every descendant at each sample count, so a driver with a ``LocalCluster`` is
    measured with its nannies and workers.

    Attributes
    ----------
    peak_bytes : int
        The largest sum seen (samples are also taken on entry and on exit).
    process_peaks : dict of int to int
        The largest resident bytes of each process seen, by pid.
    baseline_bytes : int
        The sum on entry.
    n_samples : int
        How many samples were taken.
    """

    def __init__(self, pid: int | None = None, *, interval_s: float = 0.05) -> None:
        self.process = psutil.Process(os.getpid() if pid is None else pid)
        self.interval_s = interval_s
        self.peak_bytes = 0
        self.process_peaks: dict[int, int] = {}
        self.baseline_bytes = 0
        self.n_samples = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> int:
        """Take one sample now and return it."""
        each: dict[int, int] = {}
        rss = tree_rss(self.process, each=each)
        self.peak_bytes = max(self.peak_bytes, rss)
        for pid, value in each.items():
            self.process_peaks[pid] = max(self.process_peaks.get(pid, 0), value)
        self.n_samples += 1
        return rss

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> Self:
        self.baseline_bytes = self.sample()
        self._thread = threading.Thread(target=self._run, name="tree-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()

    @property
    def peak_mb(self) -> float:
        """The peak in MiB."""
        return self.peak_bytes / 2**20

    def process_peak_mb(self, pid: int) -> float:
        """The largest resident memory of one process of the tree seen, in MiB (0 if never)."""
        return self.process_peaks.get(pid, 0) / 2**20

    @property
    def baseline_mb(self) -> float:
        """The sum on entry in MiB."""
        return self.baseline_bytes / 2**20


# --- fresh processes --------------------------------------------------------------------------


def _call(function: Callable[..., Any], kwargs: dict[str, Any], queue: Any) -> None:
    try:
        queue.put(("ok", function(**kwargs)))
    except BaseException as error:  # noqa: BLE001 - everything goes back to the parent
        queue.put(("error", f"{type(error).__name__}: {error}\n{traceback.format_exc()}"))


def _kill_tree(pid: int) -> None:
    """Kill a process and all its descendants (the benchmark's own children only)."""
    try:
        root = psutil.Process(pid)
        tree = [*root.children(recursive=True), root]
    except psutil.Error:
        return
    for p in tree:
        try:
            p.kill()
        except psutil.Error:
            pass


def in_fresh_process(
    function: Callable[..., Any],
    /,
    *,
    env: Mapping[str, str] | None = None,
    timeout_s: float | None = None,
    **kwargs: Any,
) -> Any:
    """Return ``function(**kwargs)`` run in a fresh spawned Python process.

    ``function`` must be importable (a module-level function) and its result picklable.
    ``env`` is added to the child's environment before it starts (before NumPy sizes its
    thread pools). An exception in the child is raised here as a ``RuntimeError`` with the
    child's traceback; a child that dies without an answer raises one with its exit code;
    one still running after ``timeout_s`` is killed with its descendants (a deadlocked
    cluster, say) and raises ``TimeoutError``.
    """
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_call, args=(function, kwargs, queue))
    with environment(env or {}):
        process.start()
    deadline = math.inf if timeout_s is None else time.monotonic() + timeout_s
    try:
        while True:
            if time.monotonic() > deadline:
                assert process.pid is not None
                _kill_tree(process.pid)
                raise TimeoutError(
                    f"{function.__name__} was still running after {timeout_s:g} s; killed"
                )
            try:
                status, value = queue.get(timeout=0.5)
                break
            except queues.Empty:
                if not process.is_alive():
                    try:  # it may have answered just before it exited
                        status, value = queue.get(timeout=2)
                        break
                    except queues.Empty:
                        pass
                    raise RuntimeError(
                        f"{function.__name__} died in its process (exit code "
                        f"{process.exitcode}) without an answer"
                    ) from None
    finally:
        process.join(timeout=60)
        if process.is_alive():
            process.kill()
            process.join()
    if status == "error":
        raise RuntimeError(f"{function.__name__} failed in its process: {value}")
    return value
