"""Who can reach the cluster a run uses, and with which credentials.

A Dask scheduler or worker runs whatever function a connected client sends it, so whoever
can connect to one runs code as the person who started it. neurobatch therefore:

- starts worker processes on this machine with TLS and a certificate made for the run,
  kept in memory (``Security.temporary()``): the scheduler, the workers and their nannies
  accept only connections that present it, so another user of the machine cannot connect;
  workers in neurobatch's own process talk to their scheduler through memory (no port);
- gives SLURM/PBS workers such a certificate through files of mode 0600 in a private
  folder of a shared file system (:func:`worker_credentials`), deleted when the cluster
  closes; their scheduler listens on loopback unless ``interface`` or ``scheduler_host``
  says otherwise;
- refuses an unencrypted scheduler address, a dashboard beyond loopback and the Dask
  operator's clusters (plain ``tcp://``) unless the section says ``allow_insecure: true``
  (:func:`check_security`), and then logs a warning.

Dashboards are plain HTTP without authentication and can run nothing; they listen on
127.0.0.1 by default, and the link printed for one is where it really listens
(:func:`dashboard_link`).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

import dask
from distributed.security import Security
from distributed.utils import get_ip

from neurobatch.config import (
    AddressClusterConfig,
    ClusterConfig,
    JobqueueClusterConfig,
    KubernetesClusterConfig,
)
from neurobatch.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = [
    "CREDENTIALS_DIRECTORY",
    "INSECURE_SCHEMES",
    "check_security",
    "credentials_directory",
    "dashboard_link",
    "is_loopback",
    "placeholder_credentials",
    "worker_credentials",
]

#: Address schemes whose connections are neither encrypted nor authenticated.
INSECURE_SCHEMES = ("tcp://", "ws://", "ucx://")

#: Where SLURM/PBS workers' credentials go when neither the section nor dask-jobqueue's
#: ``shared-temp-directory`` setting names a folder: home folders are shared by the nodes
#: of most clusters.
CREDENTIALS_DIRECTORY = "~/.neurobatch/tls"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine's loopback interface only.

    Examples
    --------
    >>> [is_loopback(h) for h in ("127.0.0.1", "localhost", "[::1]", "0.0.0.0", "", "node7")]
    [True, True, True, False, False, False]
    """
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def dashboard_link(dashboard_address: str) -> str:
    """The link (Dask's ``distributed.dashboard.link`` template) to a dashboard at an address.

    Its own host, or this machine's address when it listens on every interface (the
    scheduler's address may name another interface, or none: ``inproc://``).

    Examples
    --------
    >>> dashboard_link("127.0.0.1:0")
    '{scheme}://127.0.0.1:{port}/status'
    >>> dashboard_link(":8787") == dashboard_link("0.0.0.0:8787") != dashboard_link("node7:1")
    True
    """
    host = dashboard_address.rsplit(":", 1)[0] if ":" in dashboard_address else ""
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = get_ip()
    return f"{{scheme}}://{host}:{{port}}/status"


def _exposure(config: ClusterConfig) -> tuple[str, str] | None:
    """What the section lets others reach without credentials, and what is expected."""
    if isinstance(config, AddressClusterConfig):
        if not config.address.startswith(INSECURE_SCHEMES):
            return None
        what = (
            f"the scheduler at {config.address} is not encrypted: anyone who reaches it can "
            "run code on its workers"
        )
        expected = (
            "a tls:// address with a 'tls' section (ca_file, cert, key) or Dask's "
            "distributed.comm.tls configuration"
        )
    elif isinstance(config, KubernetesClusterConfig):
        what = (
            "kind kubernetes: the Dask operator's scheduler and workers speak unencrypted "
            "tcp:// (it has no TLS setting), so any pod that reaches them can run code on the "
            "workers, with their credentials"
        )
        expected = (
            "a NetworkPolicy that admits only the cluster's own pods "
            "(deploy/kubernetes/networkpolicy.yaml)"
        )
    else:
        address = config.dashboard_address
        if address is None or is_loopback(address.rsplit(":", 1)[0]):
            return None
        what = (
            f"dashboard_address {address} listens beyond loopback and the dashboard has no "
            "authentication"
        )
        expected = "a loopback address such as 127.0.0.1:8787 (reach it through an ssh tunnel)"
    return what, expected


def check_security(config: ClusterConfig) -> list[str]:
    """Refuse a section that would let others reach the cluster, unless it allows it.

    Parameters
    ----------
    config : neurobatch.config.ClusterConfig
        A ``cluster`` section.

    Returns
    -------
    list of str
        One warning line per exposure the section allows with ``allow_insecure: true``.

    Raises
    ------
    neurobatch.errors.ConfigError
        One line: an unencrypted scheduler address, a dashboard beyond loopback or a
        Kubernetes cluster without ``allow_insecure: true``, or a ``tls://`` address
        without client certificates.

    Examples
    --------
    >>> from neurobatch.config import AddressClusterConfig, LocalClusterConfig
    >>> check_security(LocalClusterConfig())
    []
    >>> check_security(AddressClusterConfig(address="tcp://10.0.0.5:8786"))
    Traceback (most recent call last):
    ...
    neurobatch.errors.ConfigError: cluster: the scheduler at tcp://10.0.0.5:8786 is not encrypted: ...
    >>> check_security(LocalClusterConfig(dashboard_address="0.0.0.0:8787", allow_insecure=True))
    ['cluster: dashboard_address 0.0.0.0:8787 listens beyond loopback and the dashboard has no authentication (allow_insecure: true)']
    """
    if (
        isinstance(config, AddressClusterConfig)
        and config.tls is None
        and config.address.startswith(("tls://", "wss://"))
        and dask.config.get("distributed.comm.tls.ca-file", None) is None
    ):
        raise ConfigError(
            f"cluster: the scheduler at {config.address} speaks TLS; expected a "
            "'tls' section with ca_file and cert (and key), or Dask's "
            "distributed.comm.tls configuration"
        )
    exposure = _exposure(config)
    if exposure is None:
        return []
    what, expected = exposure
    if not config.allow_insecure:
        raise ConfigError(
            f"cluster: {what}; expected {expected}, or allow_insecure: true to accept it"
        )
    return [f"cluster: {what} (allow_insecure: true)"]


def credentials_directory(config: JobqueueClusterConfig) -> str:
    """The shared folder where SLURM/PBS workers read their TLS credentials, ``~`` expanded.

    The section's ``shared_temp_directory``, else dask-jobqueue's ``shared-temp-directory``
    setting, else :data:`CREDENTIALS_DIRECTORY`.

    Examples
    --------
    >>> from neurobatch.config import JobqueueClusterConfig
    >>> credentials_directory(JobqueueClusterConfig(kind="slurm", shared_temp_directory="/scratch/me"))
    '/scratch/me'
    >>> credentials_directory(JobqueueClusterConfig(kind="pbs")).endswith(".neurobatch/tls")
    True
    """
    folder = (
        config.shared_temp_directory
        or dask.config.get(f"jobqueue.{config.kind}.shared-temp-directory", None)
        or CREDENTIALS_DIRECTORY
    )
    return os.path.abspath(os.path.expanduser(os.path.expandvars(folder)))


#: The files of :func:`worker_credentials`: the certificate (its own authority) and the key.
_CERT, _KEY = "cert.pem", "key.pem"


def _private_file(path: str, text: str) -> None:
    """Write a new file that only its owner can read (mode 0600 from its creation)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="ascii") as file:
        file.write(text)


def _security_of_files(folder: str) -> Security:
    cert, key = os.path.join(folder, _CERT), os.path.join(folder, _KEY)
    roles = ("client", "scheduler", "worker")
    return Security(
        tls_ca_file=cert,
        **{f"tls_{role}_cert": cert for role in roles},
        **{f"tls_{role}_key": key for role in roles},
        require_encryption=True,
    )


@contextmanager
def worker_credentials(directory: str) -> Iterator[Security]:
    """Temporary TLS credentials for batch jobs, in files that only this user can read.

    ``Security.temporary()`` makes a self-signed certificate and key; batch jobs can only
    read them from a file system they share with this machine, so they are written to a
    new folder of mode 0700 inside ``directory`` (made if needed, mode 0700), in files of
    mode 0600, and the folder is deleted on exit. The job scripts carry only their paths.

    Parameters
    ----------
    directory : str
        A folder the compute nodes reach at the same path.

    Yields
    ------
    distributed.security.Security
        Every role's certificate and key as paths in that folder, encryption required.

    Examples
    --------
    >>> with tempfile.TemporaryDirectory() as shared, worker_credentials(shared) as security:
    ...     folder = os.path.dirname(security.tls_worker_key)
    ...     sorted(os.listdir(folder)), oct(os.stat(security.tls_worker_key).st_mode & 0o777)
    (['cert.pem', 'key.pem'], '0o600')
    >>> os.path.exists(folder)
    False
    """
    os.makedirs(directory, mode=0o700, exist_ok=True)
    folder = tempfile.mkdtemp(prefix="neurobatch-", dir=directory)  # mode 0700
    try:
        temporary = Security.temporary()
        _private_file(os.path.join(folder, _CERT), temporary.tls_worker_cert)
        _private_file(os.path.join(folder, _KEY), temporary.tls_worker_key)
        yield _security_of_files(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def placeholder_credentials(directory: str) -> Security:
    """The credentials :func:`worker_credentials` would make, as paths only, for showing a
    job script without making any (``neurobatch cluster``).

    Examples
    --------
    >>> placeholder_credentials("/shared/tls").tls_worker_key
    '/shared/tls/neurobatch-XXXXXXXX/key.pem'
    """
    return _security_of_files(os.path.join(directory, "neurobatch-XXXXXXXX"))
