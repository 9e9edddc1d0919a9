"""One factory for the Dask cluster a run computes on, driven by the ``cluster`` section.

The same pipeline file runs on a laptop, on an existing scheduler, on SLURM or PBS through
dask-jobqueue and on Kubernetes through the Dask operator; only its ``cluster:`` section (or
``--cluster`` on the command line) changes. neurobatch starts no scheduler of its own: each
kind is the Dask ecosystem's own deployer.

Every worker it starts runs with one BLAS thread per worker thread and without Dask's
statistical profiler (:mod:`neurobatch.engine.workers`, whose names are exported here too).

Before anything starts, :func:`check_cluster` refuses a cluster larger than the machine
(or absurdly large on a batch system) unless forced, and one that others could reach
without credentials unless its section allows it (:mod:`neurobatch.engine.security`).
Worker processes speak TLS with credentials made for the run; a cluster is closed in order
(client, then workers with time to exit, then scheduler), so a successful run ends quietly.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import shlex
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import dask
from dask.system import CPU_COUNT
from dask.utils import format_bytes
from distributed import Client, LocalCluster, SpecCluster
from distributed.security import Security

from neurobatch.config import (
    AddressClusterConfig,
    ClusterConfig,
    JobqueueClusterConfig,
    KubernetesClusterConfig,
    LocalClusterConfig,
)
from neurobatch.engine.guard import check_main_guard
from neurobatch.engine.placement import local_size
from neurobatch.engine.security import (
    check_security,
    credentials_directory,
    dashboard_link,
    is_loopback,
    placeholder_credentials,
    worker_credentials,
)
from neurobatch.engine.workers import (
    ONE_BLAS_THREAD,
    WORKER_PROFILER,
    environment,
    for_worker_processes,
    for_workers_in_this_process,
    worker_environment,
)
from neurobatch.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = [
    "CLUSTER_CHOICES",
    "MAX_WORKERS",
    "ONE_BLAS_THREAD",
    "WORKER_CLOSE_TIMEOUT_S",
    "WORKER_PROFILER",
    "check_cluster",
    "check_cluster_size",
    "connect",
    "environment",
    "job_script",
    "kubernetes_spec",
    "override",
    "planned_threads",
    "worker_environment",
]

#: What ``--cluster`` accepts besides a scheduler address.
CLUSTER_CHOICES = ("auto", "local", "slurm", "pbs", "kubernetes")

_SCHEME = ("tcp://", "tls://", "inproc://", "ucx://", "ws://", "wss://")


def override(config: ClusterConfig, choice: str) -> ClusterConfig:
    """The cluster section that ``--cluster CHOICE`` asks for.

    The file's own section is kept when it is of the chosen kind, so its settings (a
    queue, an account, an image) still apply; otherwise the chosen kind's defaults (and for
    dask-jobqueue, the user's ``jobqueue`` configuration) are used.

    Parameters
    ----------
    config : ClusterConfig
        The pipeline file's ``cluster`` section.
    choice : str
        ``local``, ``slurm``, ``pbs``, ``kubernetes``, or a scheduler address such as
        ``tcp://10.0.0.5:8786``.

    Returns
    -------
    ClusterConfig

    Raises
    ------
    neurobatch.errors.ConfigError
        If ``choice`` is neither a kind nor an address.

    Examples
    --------
    >>> from neurobatch.config import LocalClusterConfig
    >>> override(LocalClusterConfig(n_workers=3), "local").n_workers
    3
    >>> override(LocalClusterConfig(), "tcp://127.0.0.1:8786").address
    'tcp://127.0.0.1:8786'
    >>> override(LocalClusterConfig(), "slurm").kind
    'slurm'
    """
    if choice.startswith(_SCHEME):
        if isinstance(config, AddressClusterConfig):
            return config.model_copy(update={"address": choice})
        return AddressClusterConfig(address=choice)
    if choice not in CLUSTER_CHOICES:
        raise ConfigError(
            f"--cluster: unknown cluster {choice!r}; expected one of "
            f"{', '.join(CLUSTER_CHOICES)} or a scheduler address such as tcp://HOST:8786"
        )
    if config.kind == choice:
        return config
    if choice in ("auto", "local"):
        if isinstance(config, LocalClusterConfig):
            return config.model_copy(update={"kind": choice})
        return LocalClusterConfig(kind=choice)
    if choice == "kubernetes":
        return KubernetesClusterConfig()
    return JobqueueClusterConfig(kind=choice)


def planned_threads(config: ClusterConfig) -> int | None:
    """The worker threads the cluster is meant to have once every worker has started.

    Jobs queue and pods pull images, so a run starts when the first workers are up; this
    tells it how much work to keep in flight for the rest. None for a local cluster that
    fits the machine, or an existing scheduler (their threads are known when they start).

    Examples
    --------
    >>> from neurobatch.config import JobqueueClusterConfig
    >>> planned_threads(JobqueueClusterConfig(kind="slurm", n_workers=4, cores=8, processes=2))
    16
    """
    if isinstance(config, LocalClusterConfig):
        return None if config.n_workers is None else config.n_workers * config.threads_per_worker
    if isinstance(config, AddressClusterConfig):
        return None
    n_workers = config.adaptive.maximum if config.adaptive else config.n_workers
    if isinstance(config, JobqueueClusterConfig):
        return n_workers * (config.cores // config.processes)
    return n_workers * config.threads_per_worker


@contextmanager
def connect(config: ClusterConfig, *, force: bool = False) -> Iterator[Client]:
    """Start (or join) the cluster a pipeline file asks for and yield a client connected to it.

    Parameters
    ----------
    config : neurobatch.config.ClusterConfig
        - ``local``: a ``LocalCluster`` of ``n_workers`` processes (as many as fit the
          machine's cores when None) with ``threads_per_worker`` threads and
          ``memory_limit`` each, on 127.0.0.1 over TLS with credentials made for the run,
          its dashboard on ``dashboard_address``;
        - ``address``: the scheduler at ``address``, with client certificates from
          ``tls``; waits for ``n_workers`` workers;
        - ``slurm``, ``pbs``: dask-jobqueue's ``SLURMCluster`` / ``PBSCluster``, scaled to
          ``n_workers`` or adaptive, the scheduler in this process, over TLS with
          credentials made for the run (see :func:`~neurobatch.engine.security.worker_credentials`);
        - ``kubernetes``: the Dask operator's ``KubeCluster`` from :func:`kubernetes_spec`.

        Clusters that submit jobs or pods wait up to ``timeout_s`` for their first worker.
    force : bool, default False
        Start a cluster larger than :func:`check_cluster_size` allows.

    Yields
    ------
    distributed.Client
        Closed on exit, with the cluster it started (jobs are cancelled, pods deleted).

    Raises
    ------
    neurobatch.errors.ConfigError
        If :func:`check_cluster` refuses the section (nothing is started).
    TimeoutError
        If no worker joined within the section's ``timeout_s`` (the message says where to
        look).

    Examples
    --------
    >>> from neurobatch.config import LocalClusterConfig
    >>> with connect(LocalClusterConfig(n_workers=1, memory_limit="1GiB")) as client:
    ...     len(client.scheduler_info()["workers"])
    1
    """
    for warning in check_cluster(config, force=force):
        logger.warning("%s", warning)
    with ExitStack() as stack:
        if isinstance(config, LocalClusterConfig):
            client = stack.enter_context(_local(config))
        elif isinstance(config, AddressClusterConfig):
            client = stack.enter_context(_address(config))
        else:
            cluster = stack.enter_context(
                _jobqueue(config) if isinstance(config, JobqueueClusterConfig) else _kube(config)
            )
            client = stack.enter_context(Client(cluster))
            if config.adaptive is not None:
                cluster.adapt(minimum=config.adaptive.minimum, maximum=config.adaptive.maximum)
            else:
                cluster.scale(config.n_workers)
            _wait_for_workers(client, 1, config.timeout_s, _where_to_look(config))
            logger.info(
                "%s cluster: %s; scheduler %s; %d worker(s) started so far; dashboard %s",
                config.kind,
                _scale_text(config),
                client.scheduler_info()["address"],
                len(client.scheduler_info()["workers"]),
                client.dashboard_link,
            )
        yield client


#: The most workers a ``slurm``, ``pbs`` or ``kubernetes`` section may ask for (its
#: ``n_workers`` or adaptive ``maximum``) unless forced: more is a typo, not a batch.
MAX_WORKERS = 10_000


def check_cluster_size(config: ClusterConfig, *, force: bool = False) -> None:
    """Refuse a cluster larger than where it would run, unless forced.

    A local cluster may have as many threads in all (``n_workers x threads_per_worker``) as
    the machine has cores (``dask.system.CPU_COUNT``, which counts the process's CPU
    affinity and cgroup quota); a ``slurm``, ``pbs`` or ``kubernetes`` one at most
    :data:`MAX_WORKERS` workers (``n_workers``, and ``adaptive.maximum``). An existing
    scheduler (``address``) has the workers it has.

    Parameters
    ----------
    config : neurobatch.config.ClusterConfig
        A ``cluster`` section.
    force : bool, default False
        Accept any size (``--force``).

    Raises
    ------
    neurobatch.errors.ConfigError
        One line: the size asked for, the limit, and ``--force``.

    Examples
    --------
    >>> from neurobatch.config import JobqueueClusterConfig, LocalClusterConfig
    >>> check_cluster_size(LocalClusterConfig(n_workers=1))
    >>> check_cluster_size(JobqueueClusterConfig(kind="slurm", n_workers=100_000))
    Traceback (most recent call last):
    ...
    neurobatch.errors.ConfigError: cluster: n_workers 100000 is more than 10000 workers; ...
    >>> check_cluster_size(JobqueueClusterConfig(kind="slurm", n_workers=100_000), force=True)
    """
    if force or isinstance(config, AddressClusterConfig):
        return
    if isinstance(config, LocalClusterConfig):
        n_workers, threads = local_size(config)
        if n_workers * threads > CPU_COUNT:
            raise ConfigError(
                f"cluster: {n_workers} worker(s) x {threads} thread(s) is "
                f"{n_workers * threads} threads, more than this machine's {CPU_COUNT} "
                f"core(s); expected at most {CPU_COUNT} threads in all, or --force "
                "(force=True) to start them anyway"
            )
        return
    sizes = {"n_workers": config.n_workers}
    if config.adaptive is not None:
        sizes["adaptive.maximum"] = config.adaptive.maximum
    for field, n_workers in sizes.items():
        if n_workers > MAX_WORKERS:
            raise ConfigError(
                f"cluster: {field} {n_workers} is more than {MAX_WORKERS} workers; expected "
                f"at most {MAX_WORKERS}, or --force (force=True) to start them anyway"
            )


def check_cluster(config: ClusterConfig, *, force: bool = False) -> list[str]:
    """What :func:`connect` checks before it starts anything: the size, then who can reach it.

    :func:`check_cluster_size`, then :func:`neurobatch.engine.security.check_security`.

    Parameters
    ----------
    config : neurobatch.config.ClusterConfig
        A ``cluster`` section.
    force : bool, default False
        Accept any size.

    Returns
    -------
    list of str
        Warning lines for what the section allows with ``allow_insecure: true``.

    Raises
    ------
    neurobatch.errors.ConfigError
        One line saying what was refused and what is expected.

    Examples
    --------
    >>> from neurobatch.config import AddressClusterConfig
    >>> check_cluster(AddressClusterConfig(address="tcp://10.0.0.5:8786", allow_insecure=True))
    ['cluster: the scheduler at tcp://10.0.0.5:8786 is not encrypted: anyone who reaches it can run code on its workers (allow_insecure: true)']
    """
    check_cluster_size(config, force=force)
    return check_security(config)


#: Dask settings that switch its worker memory manager off (spilling, pausing, restarting).
_NO_MEMORY_MANAGER = {
    f"distributed.worker.memory.{name}": False for name in ("target", "spill", "pause", "terminate")
}


@contextmanager
def _local(config: LocalClusterConfig) -> Iterator[Client]:
    n_workers, threads = local_size(config)
    processes = config.processes if config.processes is not None else config.kind == "local"
    with ExitStack() as stack:
        if processes:
            check_main_guard()  # spawned workers import the main script again
            stack.enter_context(for_worker_processes())
            size: dict[str, Any] = {"n_workers": n_workers, "threads_per_worker": threads}
            # TLS with a certificate made here and kept in memory (the nannies hand it to
            # their workers): only clients that present it can connect
            size |= {"host": "127.0.0.1", "security": Security.temporary()}
            memory_limit = config.memory_limit
        else:
            # one worker of every thread, in this process, talking to its scheduler through
            # memory (inproc://: no port opens but the HTTP servers')
            stack.enter_context(for_workers_in_this_process())
            # Dask's memory manager would measure this whole process (a notebook's data, a
            # test session's), not the worker's: above 80 % of the limit it pauses the
            # worker and the run waits forever. The limit still sizes the chunks.
            stack.enter_context(dask.config.set(_NO_MEMORY_MANAGER))
            size = {"n_workers": 1, "threads_per_worker": n_workers * threads}
            # its worker's own HTTP server too (every interface by default)
            size["worker_dashboard_address"] = "127.0.0.1:0"
            memory_limit = None if config.memory_limit is None else config.memory_limit * n_workers
        # no dashboard: its HTTP server still listens, on a free loopback port
        dashboard_address = config.dashboard_address or "127.0.0.1:0"
        link = dashboard_link(dashboard_address)
        stack.enter_context(dask.config.set({"distributed.dashboard.link": link}))
        cluster = stack.enter_context(
            _closed_in_order(
                LocalCluster(
                    processes=processes,
                    memory_limit=memory_limit,
                    dashboard_address=dashboard_address,
                    scheduler_kwargs={"dashboard": config.dashboard_address is not None},
                    **size,
                )
            )
        )
        client = stack.enter_context(Client(cluster))
        logger.info(
            "LocalCluster of %d worker(s) x %d thread(s)%s, %s each; dashboard %s",
            size["n_workers"],
            size["threads_per_worker"],
            "" if processes else " in this process",
            "no limit" if memory_limit is None else format_bytes(memory_limit),
            client.dashboard_link,
        )
        yield client


#: How long the workers neurobatch started get to exit when their cluster closes. A worker
#: process that has imported the scientific stack takes seconds to exit on a loaded
#: machine, more than the 4 s Dask's nannies wait before killing it with a warning.
WORKER_CLOSE_TIMEOUT_S = 30.0


@contextmanager
def _closed_in_order(cluster: SpecCluster) -> Iterator[SpecCluster]:
    """Close a cluster's workers first, with time to exit, then the cluster (its scheduler,
    its jobs); the client, entered after the cluster, is closed before.

    A LocalCluster's nannies, in this process, close their workers and wait up to
    :data:`WORKER_CLOSE_TIMEOUT_S` (80 % of it) before killing one, with Dask's warning.
    Batch workers are asked by their scheduler to close, and their jobs end; those still
    connected after the timeout are left to the cluster, which cancels their jobs. Either
    way no worker is cut from a scheduler it still talks to, which would log tracebacks.
    """
    try:
        yield cluster
    finally:
        try:
            cluster.sync(_close_workers, cluster, WORKER_CLOSE_TIMEOUT_S)
        finally:
            cluster.close()


async def _close_workers(cluster: SpecCluster, timeout: float) -> None:
    reason = "neurobatch-cluster-close"
    if isinstance(cluster, LocalCluster):
        workers = list(cluster.workers.values())
        await asyncio.gather(*(worker.close(timeout=timeout, reason=reason) for worker in workers))
        return
    scheduler = cluster.scheduler
    assert scheduler is not None, "a batch cluster's scheduler runs in this process"
    for address in list(scheduler.workers):
        scheduler.close_worker(address)
    deadline = time.monotonic() + timeout
    while scheduler.workers and time.monotonic() < deadline:
        await asyncio.sleep(0.1)


@contextmanager
def _address(config: AddressClusterConfig) -> Iterator[Client]:
    security = None
    if config.tls is not None:
        security = Security(
            tls_ca_file=config.tls.ca_file,
            tls_client_cert=config.tls.cert,
            tls_client_key=config.tls.key,
            require_encryption=True,
        )
    try:
        client = Client(config.address, security=security, timeout=config.timeout_s)
    except OSError as error:
        raise OSError(
            f"cluster: cannot reach the scheduler at {config.address} within "
            f"{config.timeout_s:g} s ({error}); expected a running `dask scheduler` there"
        ) from error
    with client:
        _wait_for_workers(
            client,
            config.n_workers,
            config.timeout_s,
            f"start workers with `dask worker {config.address}`",
        )
        logger.info(
            "scheduler %s: %d worker(s), %d thread(s); dashboard %s",
            config.address,
            len(client.scheduler_info()["workers"]),
            sum(client.nthreads().values()),
            client.dashboard_link,
        )
        yield client


def _jobqueue_arguments(config: JobqueueClusterConfig, security: Security) -> dict[str, Any]:
    """dask-jobqueue's job settings: set ones only, so the user's jobqueue config fills in.

    The workers speak TLS with ``security``'s files, and their own HTTP servers (metrics,
    health, worker dashboards) listen on their node's loopback only.
    """
    extra = dask.config.get(f"jobqueue.{config.kind}.worker-extra-args", None) or []
    arguments: dict[str, Any] = {
        "cores": config.cores,
        "processes": config.processes,
        "memory": f"{config.memory}B",
        "walltime": config.walltime,
        "python": config.python or sys.executable,
        "job_name": "neurobatch-worker",
        "job_script_prologue": [
            *config.job_script_prologue,
            *(f"export {name}={value}" for name, value in worker_environment().items()),
        ],
        "protocol": "tls://",
        "security": security,
        "worker_extra_args": [*extra, "--dashboard-address", "127.0.0.1:0"],
    }
    optional = {
        "queue": config.queue,
        "account": config.account,
        "job_extra_directives": config.job_directives or None,
        "interface": config.interface,
        "local_directory": config.local_directory,
        "log_directory": config.log_directory,
    }
    arguments.update({name: value for name, value in optional.items() if value is not None})
    return arguments


def _jobqueue_classes(kind: str) -> tuple[type[Any], type[Any]]:
    try:
        from dask_jobqueue.pbs import PBSCluster, PBSJob
        from dask_jobqueue.slurm import SLURMCluster, SLURMJob
    except ImportError as error:
        raise ConfigError(
            f"cluster: kind {kind!r} needs dask-jobqueue; install neurobatch[hpc]"
        ) from error
    return (SLURMCluster, SLURMJob) if kind == "slurm" else (PBSCluster, PBSJob)


def job_script(
    config: JobqueueClusterConfig, scheduler_address: str = "tls://SCHEDULER:8786"
) -> str:
    """The batch script that ``connect`` submits for each job, rendered without submitting.

    The TLS files it names are those :func:`~neurobatch.engine.security.worker_credentials`
    makes for a run, with ``XXXXXXXX`` for their folder's random part; none is made here.

    Parameters
    ----------
    config : neurobatch.config.JobqueueClusterConfig
        A ``slurm`` or ``pbs`` cluster section.
    scheduler_address : str, optional
        The scheduler the workers join; the real one is known once the cluster starts.

    Returns
    -------
    str
        The script, with its ``#SBATCH`` or ``#PBS`` directives.

    Examples
    --------
    >>> from neurobatch.config import JobqueueClusterConfig
    >>> script = job_script(JobqueueClusterConfig(kind="pbs", cores=4, memory="8GiB"))
    >>> [line for line in script.splitlines() if "select" in line]
    ['#PBS -l select=1:ncpus=4:mem=8192MB']
    """
    _, job_class = _jobqueue_classes(config.kind)
    # dask-jobqueue makes the log folder (and its parents) when a job is made: not when
    # only rendering
    missing = []
    folder = os.path.abspath(config.log_directory) if config.log_directory else None
    while folder is not None and not os.path.exists(folder):
        missing.append(folder)
        folder = os.path.dirname(folder)
    security = placeholder_credentials(credentials_directory(config))
    try:
        job = job_class(
            scheduler=scheduler_address, name="WORKER", **_jobqueue_arguments(config, security)
        )
    finally:
        for made in missing:  # innermost first
            if os.path.isdir(made) and not os.listdir(made):
                os.rmdir(made)
    script: str = job.job_script()
    return script


def _scheduler_host(config: JobqueueClusterConfig) -> str | None:
    """Where a batch cluster's scheduler listens: ``scheduler_host``; None for the address
    of ``interface`` (the section's or dask-jobqueue's setting); else loopback only."""
    if config.scheduler_host is not None:
        return config.scheduler_host
    if config.interface or dask.config.get(f"jobqueue.{config.kind}.interface", None):
        return None
    return "127.0.0.1"


@contextmanager
def _jobqueue(config: JobqueueClusterConfig) -> Iterator[SpecCluster]:
    cluster_class, _ = _jobqueue_classes(config.kind)
    # no dashboard: its HTTP server still listens, on a free loopback port
    dashboard_address = config.dashboard_address or "127.0.0.1:0"
    scheduler_options: dict[str, Any] = {
        "dashboard_address": dashboard_address,
        "dashboard": config.dashboard_address is not None,
    }
    host = _scheduler_host(config)
    if host is not None:
        scheduler_options["host"] = host
    with (
        worker_credentials(credentials_directory(config)) as security,
        dask.config.set({"distributed.dashboard.link": dashboard_link(dashboard_address)}),
        cluster_class(
            scheduler_options=scheduler_options, **_jobqueue_arguments(config, security)
        ) as cluster,
        _closed_in_order(cluster),
    ):
        logger.debug("%s job script:\n%s", config.kind, cluster.job_script())
        yield cluster


def kubernetes_spec(config: KubernetesClusterConfig) -> dict[str, Any]:
    """The ``DaskCluster`` manifest that ``connect`` creates on Kubernetes.

    Rendered by the Dask operator's own ``make_cluster_spec``; its scheduler and worker
    commands are changed to the ``dask scheduler`` / ``dask worker`` that distributed ships
    now, the workers get ``threads_per_worker`` threads, a memory limit of 90 % of their
    pod's and one BLAS thread per worker thread, the pods request what they use, and the
    ``env_from_secrets`` Secrets become the containers' environment.

    Parameters
    ----------
    config : neurobatch.config.KubernetesClusterConfig
        A ``kubernetes`` cluster section.

    Returns
    -------
    dict
        The manifest, ready for ``kubectl apply -f`` once dumped as YAML.

    Examples
    --------
    >>> from neurobatch.config import KubernetesClusterConfig
    >>> spec = kubernetes_spec(KubernetesClusterConfig(name="rf", n_workers=3))
    >>> spec["kind"], spec["metadata"]["name"], spec["spec"]["worker"]["replicas"]
    ('DaskCluster', 'rf', 3)
    >>> spec["spec"]["scheduler"]["spec"]["containers"][0]["args"][:2]
    ['dask', 'scheduler']
    """
    try:
        from dask_kubernetes.operator import make_cluster_spec
    except ImportError as error:
        raise ConfigError(
            "cluster: kind 'kubernetes' needs dask-kubernetes; install neurobatch[k8s]"
        ) from error
    memory = str(config.memory)
    worker_resources = {
        "requests": {"cpu": str(config.threads_per_worker), "memory": memory},
        "limits": {"cpu": str(config.threads_per_worker), "memory": memory},
    }
    secrets = [{"secretRef": {"name": name}} for name in config.env_from_secrets]
    spec: dict[str, Any] = make_cluster_spec(
        name=config.name,
        image=config.image,
        n_workers=config.n_workers,
        env={**config.env, **worker_environment()},
        worker_command="dask worker",
    )
    scheduler = spec["spec"]["scheduler"]["spec"]["containers"][0]
    scheduler["args"] = [*shlex.split("dask scheduler"), *scheduler["args"][1:]]
    scheduler["resources"] = {"requests": {"cpu": "1", "memory": str(2**30)}}
    worker = spec["spec"]["worker"]["spec"]["containers"][0]
    worker["args"] = [
        *worker["args"],
        "--nthreads",
        str(config.threads_per_worker),
        "--memory-limit",
        str(int(0.9 * config.memory)),
    ]
    worker["resources"] = worker_resources
    for container in (scheduler, worker):
        if secrets:
            container["envFrom"] = copy.deepcopy(secrets)
    if config.namespace is not None:
        spec["metadata"]["namespace"] = config.namespace
    return spec


@contextmanager
def _kube(config: KubernetesClusterConfig) -> Iterator[SpecCluster]:
    from dask_kubernetes.operator import KubeCluster

    with KubeCluster(
        custom_cluster_spec=kubernetes_spec(config),
        namespace=config.namespace,
        resource_timeout=round(config.timeout_s),
        shutdown_on_close=True,
    ) as cluster:
        yield cluster


def _wait_for_workers(client: Client, n: int, timeout_s: float, where: str) -> None:
    try:
        client.wait_for_workers(n, timeout=timeout_s)
    except TimeoutError as error:
        have = len(client.scheduler_info()["workers"])
        raise TimeoutError(
            f"cluster: {have} of {n} worker(s) joined {client.scheduler_info()['address']} within "
            f"{timeout_s:g} s; {where}"
        ) from error


def _where_to_look(config: JobqueueClusterConfig | KubernetesClusterConfig) -> str:
    if isinstance(config, KubernetesClusterConfig):
        return f"see `kubectl describe daskcluster {config.name}` and its pods' events"
    queue = "squeue --me" if config.kind == "slurm" else "qstat -u $USER"
    logs = config.log_directory or "the jobs' output files"
    where = f"the jobs may still be queued ({queue}) or have failed (see {logs})"
    host = _scheduler_host(config)
    if host is not None and is_loopback(host):
        where += (
            f"; the scheduler listens on {host} only, which workers on other nodes cannot "
            "reach: set interface (such as ib0) or scheduler_host"
        )
    return where


def _scale_text(config: JobqueueClusterConfig | KubernetesClusterConfig) -> str:
    if config.adaptive is not None:
        return f"adaptive, {config.adaptive.minimum} to {config.adaptive.maximum} worker(s)"
    return f"{config.n_workers} worker(s)"
