"""The ``cluster`` section: the Dask cluster a pipeline runs on, chosen by ``kind``."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeAlias, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    Discriminator,
    Field,
    Tag,
    model_validator,
)
from pydantic_core import PydanticCustomError

from neurobatch.config.base import MemorySize, _Model

__all__ = [
    "AdaptiveConfig",
    "AddressClusterConfig",
    "ClusterConfig",
    "JobqueueClusterConfig",
    "KubernetesClusterConfig",
    "LocalClusterConfig",
    "TlsConfig",
]


class LocalClusterConfig(_Model):
    """A ``distributed.LocalCluster`` on this machine, bound to 127.0.0.1.

    ``kind: local`` starts worker processes (``processes: false`` runs the same workers as
    threads of neurobatch's own process). ``kind: auto``, the default, chooses between the
    two for each run: see :func:`neurobatch.engine.placement.in_process`. Worker processes
    and their scheduler speak TLS with a certificate made for the run and kept in memory,
    and accept only connections that present it; workers in this process talk to their
    scheduler through memory and open no port.
    """

    kind: Literal["auto", "local"] = "auto"
    processes: bool | None = None
    """Workers in processes of their own (``true``) or as threads of this process
    (``false``); ``null``: ``local`` starts processes and ``auto`` chooses."""
    n_workers: int | None = Field(default=None, ge=1)
    """The number of workers; ``null`` for as many as fit the machine's cores."""
    threads_per_worker: int = Field(default=1, ge=1)
    """Threads in each worker."""
    memory_limit: MemorySize | None = 2 * 2**30
    """Memory per worker (``2GiB``); ``null`` for no limit. Workers in this process share
    one limit, their sum."""
    dashboard_address: str | None = "127.0.0.1:0"
    """Where the dashboard listens (``HOST:PORT``); ``null`` for no dashboard. A host other
    than loopback needs ``allow_insecure``."""
    allow_insecure: bool = False
    """Let the dashboard listen beyond loopback (``0.0.0.0:8787``): it has no
    authentication, so whoever reaches it sees the tasks, the workers and their logs. The
    run logs a warning and prints the address it is really reached at."""


class TlsConfig(_Model):
    """Client certificates for a scheduler that requires TLS (``tls://`` addresses)."""

    ca_file: str
    """The certificate authority that signed the scheduler's certificate."""
    cert: str
    """The client's certificate (PEM)."""
    key: str | None = None
    """The client's private key (PEM), when it is not inside ``cert``."""


class AddressClusterConfig(_Model):
    """An existing Dask scheduler, such as one started with ``dask scheduler``."""

    kind: Literal["address"] = "address"
    address: Annotated[str, Field(pattern=r"^(tcp|tls|inproc|ucx|ws|wss)://.+")]
    """The scheduler's address, such as ``tls://10.0.0.5:8786``."""
    tls: TlsConfig | None = None
    """Client certificates of a ``tls://`` scheduler (or Dask's ``distributed.comm.tls``
    configuration)."""
    allow_insecure: bool = False
    """Connect to an unencrypted scheduler (``tcp://``, ``ws://``, ``ucx://``): anyone who
    reaches it can run code on its workers. Refused unless set; the run logs a warning."""
    n_workers: int = Field(default=1, ge=1)
    """Wait until this many workers are connected before starting."""
    timeout_s: float = Field(default=60.0, gt=0)
    """How long to wait for the scheduler and its workers."""


class AdaptiveConfig(_Model):
    """Adaptive scaling: Dask adds and removes workers between these bounds as work waits."""

    minimum: int = Field(default=0, ge=0)
    """The fewest workers."""
    maximum: int = Field(ge=1)
    """The most workers."""

    @model_validator(mode="after")
    def _ordered(self) -> AdaptiveConfig:
        if self.minimum > self.maximum:
            raise ValueError(f"minimum {self.minimum} is above maximum {self.maximum}")
        return self


class JobqueueClusterConfig(_Model):
    """Workers submitted as batch jobs by dask-jobqueue (``SLURMCluster``, ``PBSCluster``).

    ``cores``, ``processes`` and ``memory`` are per job, as in dask-jobqueue: a job of
    ``cores: 8, processes: 2, memory: 32GiB`` runs two workers of four threads and 16 GiB.
    Settings left ``null`` come from dask-jobqueue's configuration (``jobqueue.slurm`` or
    ``jobqueue.pbs`` in ``~/.config/dask/jobqueue.yaml``).
    """

    kind: Literal["slurm", "pbs"]
    n_workers: int = Field(default=1, ge=1)
    """Worker processes to start (``n_workers / processes`` jobs); ignored when adaptive."""
    adaptive: AdaptiveConfig | None = None
    """Scale between ``minimum`` and ``maximum`` workers instead of a fixed number."""
    cores: int = Field(default=1, ge=1)
    """Cores of one job."""
    processes: int = Field(default=1, ge=1)
    """Worker processes in one job; each gets ``cores / processes`` threads."""
    memory: MemorySize = 4 * 2**30
    """Memory of one job, shared by its worker processes."""
    walltime: str = "01:00:00"
    """The jobs' time limit (``HH:MM:SS``)."""
    queue: str | None = None
    """The partition (SLURM) or queue (PBS)."""
    account: str | None = None
    """The account or project charged."""
    job_directives: list[str] = Field(default_factory=list)
    """More scheduler directives, such as ``--gres=gpu:1`` or ``-l place=scatter``."""
    job_script_prologue: list[str] = Field(default_factory=list)
    """Shell lines run in the job before the worker starts (``module load ...``)."""
    python: str | None = None
    """The workers' Python; the driver's own interpreter by default."""
    interface: str | None = None
    """The network interface the scheduler and workers listen on (``ib0``). With neither
    this nor ``scheduler_host`` (nor dask-jobqueue's ``interface`` setting) the scheduler
    listens on 127.0.0.1 only, which workers on other nodes cannot reach."""
    scheduler_host: str | None = None
    """The address the scheduler binds to, when not that of ``interface``."""
    shared_temp_directory: str | None = None
    """A folder this machine and the compute nodes share, where the workers' TLS
    certificate and key (made for the run) are written in files of mode 0600, deleted when
    the cluster closes; ``~`` is expanded on each node. Default: dask-jobqueue's
    ``shared-temp-directory`` setting, else ``~/.neurobatch/tls``."""
    local_directory: str | None = None
    """Workers' spill and scratch folder on the compute nodes."""
    log_directory: str | None = None
    """Where the jobs' output and error files go."""
    dashboard_address: str | None = "127.0.0.1:0"
    """Where the scheduler's dashboard listens; ``null`` for no dashboard. A host other
    than loopback needs ``allow_insecure``."""
    allow_insecure: bool = False
    """Let the dashboard listen beyond loopback: it has no authentication (the scheduler
    and workers still speak TLS). The run logs a warning."""
    timeout_s: float = Field(default=600.0, gt=0)
    """How long to wait for the first worker to start (jobs may queue)."""

    @model_validator(mode="after")
    def _whole_threads(self) -> JobqueueClusterConfig:
        if self.cores % self.processes:
            raise ValueError(
                f"cores {self.cores} is not a multiple of processes {self.processes}; "
                "every worker process needs a whole number of threads"
            )
        return self


class KubernetesClusterConfig(_Model):
    """A ``DaskCluster`` resource run by the Dask Kubernetes operator (``KubeCluster``).

    The operator's scheduler, workers and controller speak plain ``tcp://`` (it has no TLS
    setting), so any pod that reaches the scheduler's service can run code on the workers,
    with their credentials: ``allow_insecure: true`` says so, and a NetworkPolicy such as
    ``deploy/kubernetes/networkpolicy.yaml`` keeps other pods out.
    """

    kind: Literal["kubernetes"] = "kubernetes"
    name: str = "neurobatch"
    """The DaskCluster's name."""
    namespace: str | None = None
    """The namespace; the current context's by default."""
    image: str = "ghcr.io/neurobatch/neurobatch:latest"
    """A container image with neurobatch installed (see ``deploy/docker``)."""
    n_workers: int = Field(default=2, ge=1)
    """Worker pods; the initial number when adaptive."""
    adaptive: AdaptiveConfig | None = None
    """Scale between ``minimum`` and ``maximum`` workers."""
    threads_per_worker: int = Field(default=1, ge=1)
    """Threads in each worker pod, also its CPU request."""
    memory: MemorySize = 4 * 2**30
    """Memory request and limit of each worker pod; Dask's own limit is 90 % of it, leaving
    room for the nanny process before the kernel would kill the pod."""
    env: dict[str, str] = Field(default_factory=dict)
    """Plain environment of the scheduler and workers (not for credentials)."""
    env_from_secrets: list[str] = Field(default_factory=list)
    """Kubernetes Secrets whose keys become the scheduler's and workers' environment
    (object-store credentials: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ...)."""
    timeout_s: float = Field(default=600.0, gt=0)
    """How long to wait for the cluster and its first worker."""
    allow_insecure: bool = False
    """Run on the operator's unencrypted cluster (see above); refused unless set, and the
    run logs a warning."""


#: The cluster models by their union tag (``@`` tags stay out of error paths).
_CLUSTER_MODELS: dict[str, type[BaseModel]] = {
    "@local": LocalClusterConfig,
    "@address": AddressClusterConfig,
    "@jobqueue": JobqueueClusterConfig,
    "@kubernetes": KubernetesClusterConfig,
}


def _cluster_tag(value: Any) -> str | None:
    kind = value.get("kind", "auto") if isinstance(value, Mapping) else getattr(value, "kind", None)
    if kind in ("slurm", "pbs"):
        return "@jobqueue"
    return "@local" if kind == "auto" else f"@{kind}"


_CLUSTER_KINDS = ("auto", "local", "address", "slurm", "pbs", "kubernetes")


def _known_cluster_kind(value: Any) -> Any:
    kind = value.get("kind", "auto") if isinstance(value, Mapping) else None
    if kind is not None and kind not in _CLUSTER_KINDS:
        close = difflib.get_close_matches(str(kind), _CLUSTER_KINDS, n=1)
        raise PydanticCustomError(
            "cluster_kind",
            "unknown kind '{kind}'; "
            + (f"did you mean {close[0]!r}?" if close else "expected one of {expected}"),
            {"kind": kind, "expected": ", ".join(_CLUSTER_KINDS)},
        )
    return value


ClusterConfig: TypeAlias = Annotated[
    Union[  # noqa: UP007
        Annotated[LocalClusterConfig, Tag("@local")],
        Annotated[AddressClusterConfig, Tag("@address")],
        Annotated[JobqueueClusterConfig, Tag("@jobqueue")],
        Annotated[KubernetesClusterConfig, Tag("@kubernetes")],
    ],
    Discriminator(
        _cluster_tag,
        custom_error_type="cluster_kind",
        custom_error_message=(
            "expected kind 'auto', 'local', 'address', 'slurm', 'pbs' or 'kubernetes'"
        ),
    ),
    BeforeValidator(_known_cluster_kind),
]
"""The Dask cluster a pipeline runs on, chosen by ``kind`` (``auto`` when absent)."""
