"""The demo pipeline on ``dask scheduler`` + ``dask worker`` processes, joined by address.

The same pipeline file must give the same results on a separately started cluster as on a
LocalCluster, and a worker killed mid-run (its nanny too, so its capacity is gone) must
cost nothing: Dask reruns its task elsewhere, and no item is lost or combined twice. These
schedulers speak plain ``tcp://``, which a pipeline file must accept in so many words.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from distributed import Client, LocalCluster
from distributed.security import Security

from neurobatch.cli import main
from neurobatch.config import AddressClusterConfig, PipelineConfig, TlsConfig, load_config
from neurobatch.engine.cluster import connect
from neurobatch.engine.run import Pipeline, RunSummary
from neurobatch.errors import ConfigError
from neurobatch.io.commit import COMMIT_MARKER
from neurobatch.io.trials_store import open_trials
from processes import dask_processes
from runs import assert_same_results


def _config(pipeline_file: Path, out: Path) -> PipelineConfig:
    config = load_config(pipeline_file)
    output = config.output.model_copy(update={"url": str(out), "dashboards": None})
    return config.model_copy(update={"output": output})


def test_the_demo_by_address_equals_a_local_cluster(
    photometry_demo: Path,
    photometry_reference: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    pipeline_file = tmp_path / "pipeline.yaml"
    text = photometry_demo.read_text()
    text = text.replace("url: data", f"url: {photometry_demo.parent / 'data'}")
    text = text.replace("url: output", f"url: {out}").replace("dashboards: png", "")
    pipeline_file.write_text(text)
    with dask_processes(tmp_path) as cluster:
        # an unencrypted scheduler: refused in one line, before anything runs
        refused = main(["run", str(pipeline_file), "--cluster", cluster.address])
        [error] = capsys.readouterr().err.strip().splitlines()
        # accepted when the file says so (--cluster keeps the file's address section)
        cluster_section = "kind: address, address: tcp://replaced:1, allow_insecure: true"
        pipeline_file.write_text(
            re.sub(r"(?m)^cluster: .*$", f"cluster: {{{cluster_section}}}", text)
        )
        status = main(["run", str(pipeline_file), "--cluster", cluster.address, "--workers", "2"])
        with Client(cluster.address, set_as_default=False) as client:
            workers = set(client.scheduler_info()["workers"])
    assert refused == 1
    assert f"the scheduler at {cluster.address} is not encrypted" in error
    assert error.endswith("or allow_insecure: true to accept it")
    assert status == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert f"cluster: the scheduler at {cluster.address} is not encrypted" in printed
    assert f"scheduler {cluster.address}: 2 worker(s)" in printed
    assert_same_results(out, photometry_reference)
    # every item ran on one of the two worker processes, none in the driver
    ran_on = {item["worker"] for item in json.loads((out / "run.json").read_text())["items"]}
    assert len(workers) == 2 and ran_on <= workers


def test_a_worker_killed_mid_run_loses_nothing(
    photometry_demo: Path, photometry_reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    outcome: dict[str, Any] = {}
    with dask_processes(tmp_path) as cluster, Client(cluster.address) as client:
        client.wait_for_workers(2, timeout=60)
        run = threading.Thread(
            target=lambda: outcome.update(
                summary=Pipeline(_config(photometry_demo, out)).run(client=client, progress=False)
            )
        )
        run.start()
        # wait until an item is committed and the next ones are being processed, then
        # kill a worker that holds one (its nanny too, so the worker does not come back)
        victim = None
        deadline = time.monotonic() + 300
        while victim is None and run.is_alive() and time.monotonic() < deadline:
            committed = list((out / "items").glob(f"*/trials/{COMMIT_MARKER}"))
            busy = [w for w, keys in client.processing().items() if keys]
            if committed and busy:
                victim = client.scheduler_info()["workers"][busy[0]]["name"]
            else:
                time.sleep(0.05)
        assert victim is not None, "no item was in flight after the first commit"
        cluster.kill_worker(int(victim.removeprefix("worker-")))
        run.join(timeout=600)
        survivors = {w["name"] for w in client.scheduler_info()["workers"].values()}
    assert not run.is_alive()
    assert survivors == {"worker-0", "worker-1"} - {victim}
    summary: RunSummary = outcome["summary"]
    assert summary.n_failed == 0 and len(summary.items) == len(
        list(photometry_demo.parent.glob("data/*.csv"))
    )
    assert_same_results(out, photometry_reference)
    # the combined trials hold each item's trials once
    trials = open_trials(str(out / "trials.zarr"))
    per_item = pd.Series(trials["item_id"].to_numpy()).value_counts().sort_index()
    expected = pd.read_parquet(photometry_reference / "items.parquet").set_index("item_id")[
        "n_trials"
    ]
    assert per_item.to_dict() == expected[expected > 0].to_dict()


def test_a_tls_scheduler_by_address(tmp_path: Path) -> None:
    # one self-signed certificate serves as the authority, the scheduler's, the worker's
    # and the client's, as in distributed's own TLS tests
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    security = Security(
        tls_ca_file=str(cert),
        tls_scheduler_cert=str(cert),
        tls_scheduler_key=str(key),
        tls_worker_cert=str(cert),
        tls_worker_key=str(key),
        tls_client_cert=str(cert),
        tls_client_key=str(key),
        require_encryption=True,
    )
    with LocalCluster(
        n_workers=1,
        processes=False,
        protocol="tls://",
        host="127.0.0.1",
        security=security,
        dashboard_address=None,
    ) as cluster:
        address = cluster.scheduler_address
        assert address.startswith("tls://")
        tls = TlsConfig(ca_file=str(cert), cert=str(cert), key=str(key))
        with connect(AddressClusterConfig(address=address, tls=tls)) as client:
            assert client.submit(sum, [1, 2, 3]).result() == 6
        # without the certificates: one line that says what is missing
        with (
            pytest.raises(ConfigError, match="speaks TLS; expected a 'tls' section"),
            connect(AddressClusterConfig(address=address)),
        ):
            pass
    # a scheduler that is not there
    with (
        pytest.raises(OSError, match=r"cannot reach the scheduler at tcp://127\.0\.0\.1:9"),
        connect(
            AddressClusterConfig(address="tcp://127.0.0.1:9", timeout_s=2, allow_insecure=True)
        ),
    ):
        pass
