"""Measure benchmark cases: wall time, and peak memory summed over a whole process tree.

- :func:`measure` runs a case in a fresh spawned process (its own peak resident memory);
- :class:`TreeSampler` samples the summed resident memory of a process and all its
  descendants (a driver and its Dask nannies and workers) every 50 ms, in a thread;
  :class:`TreeCPU` also samples each one's CPU time;
- :func:`run_measured` runs a command (``neurobatch run``, PhoPro's script) from its start
  to its exit: wall time, the CPU of its whole process tree (``os.wait4``) and the peak of
  its summed resident memory;
- :func:`in_fresh_process` runs any function in a fresh spawned process, with extra
  environment variables (one BLAS thread, say), and returns its result or raises its error.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import queue as queues
import resource
import subprocess
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
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


class TreeCPU(TreeSampler):
    """:class:`TreeSampler` that also samples each process's CPU time (user + system).

    Attributes
    ----------
    cpu_s : dict of int to float
        The last CPU seconds seen of each process of the tree, by pid (a process's last
        < 50 ms before it exits are missed).
    seen : dict of int to psutil.Process
        Every process of the tree seen, by pid.
    """

    def __init__(self, pid: int, *, interval_s: float = 0.05) -> None:
        super().__init__(pid, interval_s=interval_s)
        self.cpu_s: dict[int, float] = {}
        self.seen: dict[int, psutil.Process] = {}

    def sample(self) -> int:
        rss = super().sample()
        try:
            tree = [self.process, *self.process.children(recursive=True)]
        except psutil.Error:
            return rss
        for p in tree:
            try:
                times = p.cpu_times()
            except psutil.Error:
                continue
            self.cpu_s[p.pid] = times.user + times.system
            self.seen.setdefault(p.pid, p)
        return rss


def run_measured(command: list[str], *, log: Path | None = None) -> dict[str, Any]:
    """Run a command; return its wall time, and the CPU and peak memory of its process tree.

    The clock runs from the start of the process to its exit, imports included, for every
    tool alike: that is what a user waits for. Returned (seconds, MiB):

    - ``seconds``: wall time; ``import_s`` too for a command that prints ``ready`` after
      its imports (the PhoPro script of :mod:`benchmarks.photometry_batch`);
    - ``peak_mb``: the peak of the tree's summed resident memory, sampled every 50 ms
      (:class:`TreeCPU`);
    - ``cpu_s`` (``cpu_user_s`` + ``cpu_system_s``): the CPU of the command and of every
      descendant it waited for, from ``os.wait4`` (a ``LocalCluster``'s worker processes
      are the driver's children, joined when it closes, so their CPU is reaped into it);
      ``cpu_rusage_children_s``, the same from this process's ``RUSAGE_CHILDREN``, is the
      check; ``cpu_sampled_s`` another: the last CPU time sampled of each process of the
      tree, summed (it misses each process's last < 50 ms, so it reads a little low);
    - ``processes_seen``; ``survivors``, the tree's processes still alive when the command
      exited (not reaped by it, so not in ``cpu_s``; normally only multiprocessing's
      resource tracker, which exits just after), and ``survivors_cpu_s``, their sampled CPU.

    Parameters
    ----------
    command : list of str
        The command and its arguments.
    log : pathlib.Path, optional
        Where to write the command's output (stdout and stderr), on success or failure.

    Raises
    ------
    RuntimeError
        If the command exits with a status other than 0 or 2 (``neurobatch run``'s "some
        items failed"), with the end of its output.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    lines, import_s = [], None
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        assert proc.stdout is not None
        with TreeCPU(proc.pid) as tree:
            for line in proc.stdout:
                if import_s is None and line.strip() == "ready":
                    import_s = round(time.perf_counter() - start, 2)
                lines.append(line)
            _, status, usage = os.wait4(proc.pid, 0)
            seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    output = "".join(lines)
    if log is not None:
        log.write_text(output)
    if proc.returncode not in (0, 2):
        raise RuntimeError(f"{command[:3]} exited {proc.returncode}:\n{output[-3000:]}")
    alive = [pid for pid, p in tree.seen.items() if pid != proc.pid and p.is_running()]
    children = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result = {
        "seconds": round(seconds, 2),
        "peak_mb": round(tree.peak_mb),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "cpu_user_s": round(usage.ru_utime, 2),
        "cpu_system_s": round(usage.ru_stime, 2),
        "cpu_rusage_children_s": round(children, 2),
        "cpu_sampled_s": round(sum(tree.cpu_s.values()), 2),
        "processes_seen": len(tree.seen),
        "survivors": len(alive),
        "survivors_cpu_s": round(sum(tree.cpu_s[p] for p in alive), 2),
    }
    return result | ({"import_s": import_s} if import_s is not None else {})


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
