"""One factory for the Dask cluster a run computes on, driven by the ``cluster`` section.

The same pipeline file runs on a laptop, on an existing scheduler, on SLURM or PBS through
dask-jobqueue and on Kubernetes through the Dask operator; only its ``cluster:`` section (or
``--cluster`` on the command line) changes. neurobatch starts no scheduler of its own: each
kind is the Dask ecosystem's own deployer.

Every worker gets one BLAS/OpenMP thread per worker thread (:data:`ONE_BLAS_THREAD`), so
that a worker of four threads calling NumPy's linear algebra does not start four thread
pools of as many threads as the node has cores. The workers neurobatch starts also run
without Dask's statistical profiler (:data:`WORKER_PROFILER`), whose call trees grow with
the batch, unless the driver's environment sets that variable.
"""

from __future__ import annotations

import copy
import ctypes
import logging
import os
import shlex
import sys
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from typing import Any

import dask
from dask.utils import format_bytes
from distributed import Client, LocalCluster, SpecCluster
from distributed.security import Security
from threadpoolctl import threadpool_limits

from neurobatch.config import (
    AddressClusterConfig,
    ClusterConfig,
    JobqueueClusterConfig,
    KubernetesClusterConfig,
    LocalClusterConfig,
)
from neurobatch.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = [
    "CLUSTER_CHOICES",
    "ONE_BLAS_THREAD",
    "WORKER_PROFILER",
    "connect",
    "job_script",
    "kubernetes_spec",
    "override",
    "planned_threads",
    "worker_environment",
]

#: Environment that limits the BLAS and OpenMP pools to one thread in each worker thread.
ONE_BLAS_THREAD = {
    name: "1"
    for name in (
        "OMP_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "MKL_NUM_THREADS",
        "VECLIB_MAXIMUM_THREADS",
        "NUMEXPR_NUM_THREADS",
    )
}

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
def connect(config: ClusterConfig) -> Iterator[Client]:
    """Start (or join) the cluster a pipeline file asks for and yield a client connected to it.

    Parameters
    ----------
    config : neurobatch.config.ClusterConfig
        - ``local``: a ``LocalCluster`` of ``n_workers`` processes (as many as fit the
          machine's cores when None) with ``threads_per_worker`` threads and
          ``memory_limit`` each, on 127.0.0.1, its dashboard on ``dashboard_address``;
        - ``address``: the scheduler at ``address``, with client certificates from
          ``tls``; waits for ``n_workers`` workers;
        - ``slurm``, ``pbs``: dask-jobqueue's ``SLURMCluster`` / ``PBSCluster``, scaled to
          ``n_workers`` or adaptive, the scheduler in this process;
        - ``kubernetes``: the Dask operator's ``KubeCluster`` from :func:`kubernetes_spec`.

        Clusters that submit jobs or pods wait up to ``timeout_s`` for their first worker.

    Yields
    ------
    distributed.Client
        Closed on exit, with the cluster it started (jobs are cancelled, pods deleted).

    Raises
    ------
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
                "%s cluster: %s; %d worker(s) started so far; dashboard %s",
                config.kind,
                _scale_text(config),
                len(client.scheduler_info()["workers"]),
                client.dashboard_link,
            )
        yield client


#: The variable that turns Dask's statistical profiler in a worker on or off. It samples
#: every thread's stack every 10 ms and keeps the call trees of each task prefix and of the
#: last hour (3,600 cycles): memory that grows with the batch (about 0.35 MB per item of a
#: photometry run, 80 MB per worker over 200 items) and CPU taken from the tasks.
WORKER_PROFILER = "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED"


def worker_environment() -> dict[str, str]:
    """The environment variables of every worker neurobatch starts.

    :data:`ONE_BLAS_THREAD`, and :data:`WORKER_PROFILER` "False" unless the driver's
    environment sets it (then its value: set it to "True" for the dashboard's Profile page).

    Examples
    --------
    >>> with environment({WORKER_PROFILER: "True"}):
    ...     worker_environment()[WORKER_PROFILER]
    'True'
    >>> worker_environment()["OMP_NUM_THREADS"]
    '1'
    """
    return ONE_BLAS_THREAD | {WORKER_PROFILER: os.environ.get(WORKER_PROFILER, "False")}


@contextmanager
def _worker_environment_at_spawn() -> Iterator[None]:
    """Spawn worker processes with :func:`worker_environment`.

    BLAS pools are sized when NumPy is imported, before a Nanny's ``env`` reaches the
    worker; only ``pre-spawn-environ`` is set before the process starts, and there the
    driver's own environment wins over the configuration, so both are set while the
    nannies are made (they keep the values for restarts). A Nanny hands the driver's Dask
    configuration to its worker, so the profiler's setting goes there too.
    """
    variables = worker_environment()
    spawn = dask.config.get("distributed.nanny.pre-spawn-environ")
    with (
        environment(variables),
        _profiler_setting(),
        dask.config.set({"distributed.nanny.pre-spawn-environ": spawn | variables}),
    ):
        yield


#: glibc's ``mallopt`` parameter M_TRIM_THRESHOLD (malloc.h).
_M_TRIM_THRESHOLD = -1


def _return_freed_memory() -> None:
    """Make this process give freed memory back to the system, as Dask's worker processes do.

    Dask starts its worker processes with ``MALLOC_TRIM_THRESHOLD_=65536``, so that memory
    freed at the top of glibc's heap goes back to the system instead of staying with the
    process; workers in this process get the same setting (10 x 1 h of photometry on 2
    threads: peak 1.2 GB instead of 1.5). A fixed mmap threshold was measured too: no
    lower, and it costs the filter a page fault per block. A setting of the process, kept
    after the cluster closes.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").mallopt(_M_TRIM_THRESHOLD, 2**16)
    except (OSError, AttributeError):  # another C library (musl): it has no such tuning
        logger.debug("mallopt is not available; freed memory stays with the process")


@contextmanager
def _profiler_setting() -> Iterator[None]:
    """Dask's profiler setting of :func:`worker_environment`, for workers in this process."""
    value = worker_environment()[WORKER_PROFILER]
    # parsed as Dask parses it in a worker that reads it from its environment
    parsed = dask.config.collect_env({WORKER_PROFILER: value})
    with dask.config.set(
        {
            "distributed.worker.profile.enabled": parsed["distributed"]["worker"]["profile"][
                "enabled"
            ]
        }
    ):
        yield


@contextmanager
def environment(variables: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the block (processes spawned in it inherit them).

    Examples
    --------
    >>> with environment({"NEUROBATCH_EXAMPLE": "1"}):
    ...     os.environ["NEUROBATCH_EXAMPLE"]
    '1'
    >>> "NEUROBATCH_EXAMPLE" in os.environ
    False
    """
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def _local(config: LocalClusterConfig) -> Iterator[Client]:
    threads = config.threads_per_worker
    n_workers = config.n_workers or max(1, (os.cpu_count() or 1) // threads)
    processes = config.processes if config.processes is not None else config.kind == "local"
    with ExitStack() as stack:
        if processes:
            stack.enter_context(_worker_environment_at_spawn())
            size: dict[str, Any] = {"n_workers": n_workers, "threads_per_worker": threads}
            size["host"] = "127.0.0.1"
            memory_limit = config.memory_limit
        else:
            # one worker of every thread, in this process, talking to its scheduler through
            # memory (inproc://: no port opens but the dashboard's). BLAS pools already
            # exist here, so they are limited for the cluster's life instead of at a spawn.
            stack.enter_context(threadpool_limits(limits=1))
            stack.enter_context(_profiler_setting())
            _return_freed_memory()
            size = {"n_workers": 1, "threads_per_worker": n_workers * threads}
            # its worker's own HTTP server too (every interface by default)
            size["worker_dashboard_address"] = "127.0.0.1:0"
            memory_limit = None if config.memory_limit is None else config.memory_limit * n_workers
        # the link names the dashboard's own host, not the scheduler's (an inproc:// address
        # carries the machine's IP)
        dashboard_host = (config.dashboard_address or "127.0.0.1:0").rsplit(":", 1)[0]
        link = f"{{scheme}}://{dashboard_host or '127.0.0.1'}:{{port}}/status"
        stack.enter_context(dask.config.set({"distributed.dashboard.link": link}))
        cluster = stack.enter_context(
            LocalCluster(
                processes=processes,
                memory_limit=memory_limit,
                # no dashboard: its HTTP server still listens, on a free loopback port
                dashboard_address=config.dashboard_address or "127.0.0.1:0",
                scheduler_kwargs={"dashboard": config.dashboard_address is not None},
                **size,
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


@contextmanager
def _address(config: AddressClusterConfig) -> Iterator[Client]:
    security = None
    if (
        config.tls is None
        and config.address.startswith("tls://")
        and dask.config.get("distributed.comm.tls.ca-file", None) is None
    ):
        raise ConfigError(
            f"cluster: the scheduler at {config.address} speaks TLS; expected a "
            "'tls' section with ca_file and cert (and key), or Dask's "
            "distributed.comm.tls configuration"
        )
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


def _jobqueue_arguments(config: JobqueueClusterConfig) -> dict[str, Any]:
    """dask-jobqueue's job settings: set ones only, so the user's jobqueue config fills in."""
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
    config: JobqueueClusterConfig, scheduler_address: str = "tcp://SCHEDULER:8786"
) -> str:
    """The batch script that ``connect`` submits for each job, rendered without submitting.

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
    try:
        job = job_class(scheduler=scheduler_address, name="WORKER", **_jobqueue_arguments(config))
    finally:
        for made in missing:  # innermost first
            if os.path.isdir(made) and not os.listdir(made):
                os.rmdir(made)
    script: str = job.job_script()
    return script


@contextmanager
def _jobqueue(config: JobqueueClusterConfig) -> Iterator[SpecCluster]:
    cluster_class, _ = _jobqueue_classes(config.kind)
    scheduler_options: dict[str, Any] = {"dashboard_address": config.dashboard_address}
    if config.scheduler_host is not None:
        scheduler_options["host"] = config.scheduler_host
    if config.dashboard_address is None:
        scheduler_options = {"dashboard": False}
    with cluster_class(
        scheduler_options=scheduler_options, **_jobqueue_arguments(config)
    ) as cluster:
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
    return f"the jobs may still be queued ({queue}) or have failed (see {logs})"


def _scale_text(config: JobqueueClusterConfig | KubernetesClusterConfig) -> str:
    if config.adaptive is not None:
        return f"adaptive, {config.adaptive.minimum} to {config.adaptive.maximum} worker(s)"
    return f"{config.n_workers} worker(s)"
