"""What a pipeline file, a sidecar, an input or another user can make neurobatch do: nothing.

YAML is loaded safely, nothing from a file is evaluated, user code is imported only when the
file names it, the cluster listens on loopback unless asked otherwise, and another user of
the machine cannot run code on it. (Pickles: tests/io/test_loaders_pickle.py; secrets:
tests/test_redact.py and the provenance tests; item ids that would leave OUT:
tests/test_bad_inputs.py; the cluster sections' security rules: tests/engine/test_cluster_security.py.)
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import psutil
import pytest
from distributed import Client, LocalCluster

from neurobatch import synthetic
from neurobatch.cli import main
from neurobatch.config import LocalClusterConfig, load_config
from neurobatch.engine.cluster import connect
from neurobatch.engine.run import Pipeline
from neurobatch.errors import ConfigError


@pytest.fixture
def demo(tmp_path: Path) -> Path:
    """A small photometry demo folder: 2 recordings and its pipeline file."""
    synthetic.write_photometry_batch(tmp_path / "data", n_items=2, duration_s=60.0, fs=50.0)
    return synthetic.demo_pipeline_file(tmp_path, "photometry")


def test_yaml_tags_that_build_python_objects_are_refused(demo: Path, tmp_path: Path) -> None:
    touched = tmp_path / "touched"
    text = demo.read_text().replace(
        "name: neurobatch-demo",
        f"name: !!python/object/apply:os.system ['touch {touched}']",
    )
    demo.write_text(text)
    with pytest.raises(ConfigError, match=r"pipeline\.yaml") as error:
        load_config(demo)
    assert len(str(error.value).splitlines()) == 1
    assert not touched.exists()


def test_a_sidecar_yaml_cannot_build_python_objects(demo: Path, tmp_path: Path) -> None:
    touched = tmp_path / "touched"
    second = tmp_path / "data" / "experiment_002.json"
    second.rename(second.with_suffix(".yaml"))  # JSON is YAML
    (tmp_path / "data" / "experiment_001.json").unlink()
    (tmp_path / "data" / "experiment_001.yaml").write_text(
        f"subject: !!python/object/apply:os.system ['touch {touched}']\n"
    )
    demo.write_text(demo.read_text().replace('"{stem}.json"', '"{stem}.yaml"'))
    config = load_config(demo)
    output = config.output.model_copy(update={"url": str(tmp_path / "out"), "dashboards": None})
    config = config.model_copy(
        update={"output": output, "cluster": LocalClusterConfig(n_workers=1)}
    )
    items = Pipeline(config).run(progress=False).items.set_index("item_id")
    assert items["status"].to_dict() == {"experiment_001": "failed", "experiment_002": "done"}
    error = items.loc["experiment_001", "error"]
    assert error.startswith(
        f"sidecar '{tmp_path / 'data' / 'experiment_001.yaml'}' is not valid YAML"
    )
    assert "could not determine a constructor" in error and "\n" not in error
    assert not touched.exists()


def test_templates_are_not_evaluated(demo: Path) -> None:
    # str.format would reach attributes through "{stem.__class__...}": only bare names pass
    text = demo.read_text().replace('"{stem}.json"', '"{stem.__class__.__mro__}.json"')
    demo.write_text(text)
    with pytest.raises(ConfigError, match=r"uses \{stem\.__class__\.__mro__\}; only"):
        load_config(demo)


def test_hooks_are_imported_only_when_the_file_names_them(
    demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    imported = tmp_path / "imported"
    hook = f"from pathlib import Path\nPath({str(imported)!r}).touch()\n\n\ndef mark(ds):\n    return ds\n"
    # a module beside the pipeline file, and one on sys.path, that nobody names
    (tmp_path / "hooks.py").write_text(hook)
    (tmp_path / "neurobatch_hooks.py").write_text(hook)
    assert main(["validate", str(demo)]) == 0
    assert main(["discover", str(demo)]) == 0
    assert not imported.exists()
    named = demo.read_text() + f"hooks:\n  post_load: {tmp_path / 'hooks.py'}:mark\n"
    demo.write_text(named)
    assert main(["validate", str(demo)]) == 0
    assert imported.exists()
    assert "; hooks post_load found" in capsys.readouterr().out


def _listening() -> set[tuple[str, int]]:
    """The (address, port) of every socket this process and its children listen on."""
    me = psutil.Process()
    return {
        (c.laddr.ip, c.laddr.port)
        for p in [me, *me.children(recursive=True)]
        for c in p.net_connections("inet")
        if c.status == psutil.CONN_LISTEN
    }


def _serves_http(port: int) -> bool:
    """Whether 127.0.0.1:port is a Dask HTTP server (its /health page says ok)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as answer:
        return bool(answer.status == 200 and answer.read() == b"ok")


@pytest.mark.parametrize("processes", [True, False], ids=["worker-processes", "in-process"])
def test_the_cluster_listens_on_loopback_by_default(processes: bool) -> None:
    """Every socket the cluster opens (scheduler, workers, nannies, HTTP servers) is on
    127.0.0.1, its scheduler, workers and nannies over TLS; an in-process cluster's
    scheduler and worker talk through memory: it opens only HTTP servers (its dashboard,
    its worker's health and metrics), where no Dask client can connect."""
    before = _listening()
    config = LocalClusterConfig(n_workers=1, memory_limit="1GiB", processes=processes)
    with connect(config) as client:
        opened = _listening() - before
        info = client.scheduler_info()
        dashboard = urlparse(client.dashboard_link)
        if not processes:
            assert all(_serves_http(port) for _, port in opened), opened
    assert {ip for ip, _ in opened} == {"127.0.0.1"}
    assert (dashboard.hostname, dashboard.port) in opened
    if processes:
        nannies = [worker["nanny"] for worker in info["workers"].values()]
        addresses = [info["address"], *info["workers"], *nannies]
        assert {urlparse(address).scheme for address in addresses} == {"tls"}
        assert {urlparse(address).hostname for address in addresses} == {"127.0.0.1"}
    else:
        assert info["address"].startswith("inproc://")
        assert len(opened) == 2  # the dashboard and the worker's HTTP server


FOREIGN_CLIENT = Path(__file__).with_name("foreign_client.py")

#: How another user tries to connect (see foreign_client.py).
MODES = ("tcp", "tls-without-certificate", "tls-own-certificate")


def _another_user() -> list[str]:
    """The command prefix that runs a program as user nobody (skips if there is none)."""
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("this machine has no user nobody to attack from")
    if os.geteuid() == 0 and shutil.which("setpriv"):
        ids = [f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups"]
        return ["setpriv", *ids]
    sudo = shutil.which("sudo")
    if (
        sudo
        and subprocess.run([sudo, "-n", "true"], capture_output=True, check=False).returncode == 0
    ):
        return [sudo, "-n", "-u", "nobody"]
    pytest.skip("cannot run a program as another user (not root, no passwordless sudo)")


@pytest.fixture
def attack_folders() -> Iterator[tuple[Path, Path]]:
    """A folder everyone can read, holding the attacker's script, and the target folder:
    this user's alone (mode 0700), so only code running as this user can write in it."""
    script_folder = Path(tempfile.mkdtemp(prefix="neurobatch-attacker-"))
    target = Path(tempfile.mkdtemp(prefix="neurobatch-target-"))
    try:
        script_folder.chmod(0o755)
        shutil.copy(FOREIGN_CLIENT, script_folder / FOREIGN_CLIENT.name)
        (script_folder / FOREIGN_CLIENT.name).chmod(0o644)
        yield script_folder, target
    finally:
        shutil.rmtree(script_folder)
        shutil.rmtree(target)


def _attack(
    folders: tuple[Path, Path], modes: tuple[str, ...], addresses: dict[str, str]
) -> dict[str, Any]:
    """Run foreign_client.py as user nobody against ``addresses``; its JSON answer."""
    script_folder, target = folders
    command = [
        *_another_user(),
        sys.executable,
        "-B",
        str(script_folder / FOREIGN_CLIENT.name),
        str(target),
        ",".join(modes),
        *(f"{name}={address}" for name, address in addresses.items()),
    ]
    environment = {"PATH": os.environ["PATH"], "HOME": str(script_folder)}
    environment["PYTHONWARNINGS"] = "ignore"
    result = subprocess.run(
        command,
        cwd=script_folder,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0 and "Permission denied" in result.stderr:
        pytest.skip(f"user nobody cannot run {sys.executable}: {result.stderr.strip()[-200:]}")
    assert result.returncode == 0, result.stderr
    answer: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["uid"] == pwd.getpwnam("nobody").pw_uid
    return answer


def test_another_user_cannot_run_code_on_the_local_cluster(
    attack_folders: tuple[Path, Path],
) -> None:
    _, target = attack_folders
    # the attack works on a Dask cluster without credentials, as neurobatch's were
    with (
        LocalCluster(
            n_workers=1,
            processes=False,
            protocol="tcp://",
            host="127.0.0.1",
            dashboard_address=None,
        ) as plain,
        Client(plain, set_as_default=False) as client,
    ):
        [worker] = client.scheduler_info()["workers"]
        answer = _attack(
            attack_folders, ("tcp",), {"scheduler": plain.scheduler_address, "worker": worker}
        )
    assert answer["attempts"] == {"scheduler-tcp": "ran", "worker-tcp": "ran"}
    assert sorted(p.name for p in target.iterdir()) == ["scheduler-tcp", "worker-tcp"]
    for made in target.iterdir():
        made.unlink()

    # neurobatch's worker processes: every way in is refused, and nothing is written
    config = LocalClusterConfig(kind="local", n_workers=1, memory_limit="1GiB")
    with connect(config) as client:
        info = client.scheduler_info()
        [(worker, about)] = info["workers"].items()
        addresses = {"scheduler": info["address"], "worker": worker, "nanny": about["nanny"]}
        answer = _attack(attack_folders, MODES, addresses)
        # the cluster still works for its owner
        assert client.submit(sum, [1, 2, 3]).result() == 6
    # each one closed by the cluster's side: no certificate, or one it did not sign
    attempts = answer["attempts"]
    assert len(attempts) == len(addresses) * len(MODES)
    for name, text in attempts.items():
        assert text.startswith("refused: ") and "CommClosedError" in text, (name, text)
    assert list(target.iterdir()) == []
