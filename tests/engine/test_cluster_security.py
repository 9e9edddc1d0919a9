"""Who can reach a cluster: the sections' rules, and the credentials of SLURM/PBS workers.

Real clusters where a rule lets one start: an unencrypted scheduler joined with
``allow_insecure``, a dashboard on every interface reached at the link printed for it,
TLS clusters on the files :func:`worker_credentials` writes, and a SLURM cluster's
scheduler (no job submitted) on loopback. Another user's attacks on a local cluster are
in tests/test_security.py; a real SLURM run over TLS in tests/engine/test_cluster_slurm.py.
"""

from __future__ import annotations

import logging
import os
import stat
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import dask
import psutil
import pytest
from distributed import Client, LocalCluster

from neurobatch.config import (
    AddressClusterConfig,
    JobqueueClusterConfig,
    KubernetesClusterConfig,
    LocalClusterConfig,
)
from neurobatch.engine.cluster import _jobqueue, connect
from neurobatch.engine.security import (
    CREDENTIALS_DIRECTORY,
    check_security,
    credentials_directory,
    worker_credentials,
)
from neurobatch.errors import ConfigError


def _mode(path: str | Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _one_line(error: pytest.ExceptionInfo[ConfigError]) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def cluster_log() -> Iterator[list[logging.LogRecord]]:
    """What ``neurobatch run`` prints of the cluster: the records of its logger, through a
    handler of that logger (as the CLI's; a LocalCluster quiets the root's handlers)."""
    logger = logging.getLogger("neurobatch.engine.cluster")
    handler, level = _Records(), logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture
def plain_scheduler() -> Iterator[LocalCluster]:
    """A Dask cluster without credentials on tcp://127.0.0.1 (one worker in this process)."""
    with LocalCluster(
        n_workers=1, processes=False, protocol="tcp://", host="127.0.0.1", dashboard_address=None
    ) as cluster:
        yield cluster


# ---------------------------------------------------------------------------------------------
# kind address
# ---------------------------------------------------------------------------------------------


def test_an_unencrypted_scheduler_is_refused_before_any_connection(
    plain_scheduler: LocalCluster,
) -> None:
    address = plain_scheduler.scheduler_address
    scheduler = plain_scheduler.scheduler
    assert scheduler is not None
    clients = set(scheduler.clients)
    with pytest.raises(ConfigError) as caught, connect(AddressClusterConfig(address=address)):
        pass
    message = _one_line(caught)
    assert message.startswith(f"cluster: the scheduler at {address} is not encrypted")
    assert "expected a tls:// address with a 'tls' section" in message
    assert message.endswith("or allow_insecure: true to accept it")
    assert set(scheduler.clients) == clients  # nothing connected


@pytest.mark.parametrize("scheme", ["tcp", "ws", "ucx"])
def test_every_unencrypted_scheme_needs_allow_insecure(scheme: str) -> None:
    address = f"{scheme}://10.0.0.5:8786"
    with pytest.raises(ConfigError, match=f"scheduler at {address} is not encrypted"):
        check_security(AddressClusterConfig(address=address))
    allowed = AddressClusterConfig(address=address, allow_insecure=True)
    warning = (
        f"cluster: the scheduler at {address} is not encrypted: anyone who reaches it can run "
        "code on its workers (allow_insecure: true)"
    )
    assert check_security(allowed) == [warning]


def test_allow_insecure_joins_with_a_warning(
    plain_scheduler: LocalCluster, cluster_log: list[logging.LogRecord]
) -> None:
    address = plain_scheduler.scheduler_address
    config = AddressClusterConfig(address=address, allow_insecure=True)
    with connect(config) as client:
        assert client.submit(sum, [1, 2]).result() == 3
    warnings = [r.getMessage() for r in cluster_log if r.levelno >= logging.WARNING]
    assert warnings == check_security(config)


def test_tls_and_in_memory_addresses_need_no_allowance() -> None:
    assert check_security(AddressClusterConfig(address="inproc://10.0.0.5/1/2")) == []
    # a tls:// scheduler needs client certificates: a section, or Dask's configuration
    with pytest.raises(ConfigError, match=r"speaks TLS; expected a 'tls' section"):
        check_security(AddressClusterConfig(address="tls://10.0.0.5:8786"))
    with dask.config.set({"distributed.comm.tls.ca-file": "/etc/dask/ca.pem"}):
        assert check_security(AddressClusterConfig(address="tls://10.0.0.5:8786")) == []


# ---------------------------------------------------------------------------------------------
# dashboards
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("address", ["0.0.0.0:0", ":8787", "8787", "10.0.0.5:8787", "node7:0"])
def test_a_dashboard_beyond_loopback_is_refused(address: str) -> None:
    for config in (
        LocalClusterConfig(dashboard_address=address),
        JobqueueClusterConfig(kind="slurm", dashboard_address=address),
    ):
        with pytest.raises(ConfigError) as caught:
            check_security(config)
        assert _one_line(caught) == (
            f"cluster: dashboard_address {address} listens beyond loopback and the dashboard "
            "has no authentication; expected a loopback address such as 127.0.0.1:8787 (reach "
            "it through an ssh tunnel), or allow_insecure: true to accept it"
        )


@pytest.mark.parametrize("address", ["127.0.0.1:0", "localhost:8787", "127.0.0.2:0", "[::1]:0"])
def test_a_dashboard_on_loopback_needs_nothing(address: str) -> None:
    assert check_security(LocalClusterConfig(dashboard_address=address)) == []
    assert check_security(LocalClusterConfig(dashboard_address=None)) == []


def test_an_allowed_public_dashboard_is_reached_at_the_link_printed(
    cluster_log: list[logging.LogRecord],
) -> None:
    config = LocalClusterConfig(
        n_workers=1, processes=False, dashboard_address="0.0.0.0:0", allow_insecure=True
    )
    with connect(config) as client:
        link = urlparse(client.dashboard_link)
        assert link.port is not None
        listening = {
            c.laddr.ip
            for c in psutil.Process().net_connections("inet")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == link.port
        }
        with urllib.request.urlopen(f"http://{link.netloc}/health", timeout=10) as answer:
            health = answer.read()
    assert listening == {"0.0.0.0"}
    assert health == b"ok"
    # the link names one of this machine's addresses, and that is what the run printed
    addresses = {a.address for nic in psutil.net_if_addrs().values() for a in nic}
    assert link.hostname in addresses
    [warning, started] = [r.getMessage() for r in cluster_log]
    assert started.endswith(f"dashboard {link.geturl()}")
    assert [warning] == check_security(config)


# ---------------------------------------------------------------------------------------------
# kind kubernetes
# ---------------------------------------------------------------------------------------------


def test_kubernetes_is_refused_before_any_request_unless_allowed() -> None:
    # refused before Kubernetes is asked anything (there is none here)
    with pytest.raises(ConfigError) as caught, connect(KubernetesClusterConfig()):
        pass
    message = _one_line(caught)
    assert message.startswith("cluster: kind kubernetes: the Dask operator's scheduler")
    assert "deploy/kubernetes/networkpolicy.yaml" in message
    assert message.endswith("or allow_insecure: true to accept it")
    [warning] = check_security(KubernetesClusterConfig(allow_insecure=True))
    assert warning.startswith("cluster: kind kubernetes:")


# ---------------------------------------------------------------------------------------------
# SLURM and PBS workers' credentials
# ---------------------------------------------------------------------------------------------


def test_worker_credentials_are_private_files_that_make_a_working_tls_cluster(
    tmp_path: Path,
) -> None:
    shared = tmp_path / "shared" / "tls"
    with worker_credentials(str(shared)) as security:
        folder = Path(security.tls_worker_key).parent
        assert folder.parent == shared
        assert _mode(shared) == _mode(folder) == 0o700
        assert sorted(p.name for p in folder.iterdir()) == ["cert.pem", "key.pem"]
        assert {_mode(p) for p in folder.iterdir()} == {0o600}
        assert "PRIVATE KEY" in Path(security.tls_worker_key).read_text()
        assert security.require_encryption
        # every role reads the same files, so a scheduler, a worker and a client made from
        # them speak TLS to each other
        with (
            LocalCluster(
                n_workers=1,
                processes=False,
                host="127.0.0.1",
                security=security,
                dashboard_address=None,
            ) as cluster,
            Client(cluster, set_as_default=False) as client,
        ):
            assert cluster.scheduler_address.startswith("tls://")
            assert client.submit(sum, [1, 2]).result() == 3
    assert list(shared.iterdir()) == []  # the run's folder is gone


def test_worker_credentials_go_where_the_section_or_dask_jobqueue_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert credentials_directory(JobqueueClusterConfig(kind="slurm")) == str(
        tmp_path / CREDENTIALS_DIRECTORY.removeprefix("~/")
    )
    with dask.config.set({"jobqueue.pbs.shared-temp-directory": "~/scratch"}):
        assert credentials_directory(JobqueueClusterConfig(kind="pbs")) == str(tmp_path / "scratch")
        section = JobqueueClusterConfig(kind="pbs", shared_temp_directory="/lab/shared")
        assert credentials_directory(section) == "/lab/shared"


def test_a_batch_clusters_scheduler_listens_on_loopback_over_tls(tmp_path: Path) -> None:
    """The SLURM cluster's scheduler, started without submitting a job."""
    pytest.importorskip("dask_jobqueue", reason="needs dask-jobqueue (neurobatch[hpc])")
    config = JobqueueClusterConfig(kind="slurm", shared_temp_directory=str(tmp_path))
    me = psutil.Process()
    before = {c.laddr for c in me.net_connections("inet") if c.status == psutil.CONN_LISTEN}
    with _jobqueue(config) as cluster:
        opened = {
            c.laddr for c in me.net_connections("inet") if c.status == psutil.CONN_LISTEN
        } - before
        address = cluster.scheduler_address
        [folder] = tmp_path.iterdir()
        files = sorted(p.name for p in folder.iterdir())
        script = cluster.job_script()
    assert address.startswith("tls://127.0.0.1:")
    assert {ip for ip, _ in opened} == {"127.0.0.1"}  # the scheduler and its HTTP server
    assert files == ["cert.pem", "key.pem"]
    assert f"--tls-key {folder}/key.pem" in script and "PRIVATE KEY" not in script
    assert list(tmp_path.iterdir()) == []
