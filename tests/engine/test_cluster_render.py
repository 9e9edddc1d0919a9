"""What a cluster section renders to, offline: job scripts, DaskCluster manifests, deploy files.

Nothing here submits a job or talks to Kubernetes. The manifests are checked against the
DaskCluster resource definition that the Dask operator's Helm chart installs (shipped
inside dask-kubernetes), the job scripts against numbers computed here from the settings,
and the files under ``deploy/`` against the code that reads or generates them, so that none
of them can go stale. Two tests start a one-worker ``LocalCluster`` to look at the
environment and the BLAS pools its worker runs with.
"""

from __future__ import annotations

import copy
import os
import re
import shlex
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from dask.utils import parse_bytes
from distributed import Client

from neurobatch.cli import main
from neurobatch.config import (
    AdaptiveConfig,
    AddressClusterConfig,
    JobqueueClusterConfig,
    KubernetesClusterConfig,
    LocalClusterConfig,
    TlsConfig,
    load_config,
)
from neurobatch.engine.cluster import (
    WORKER_PROFILER,
    connect,
    job_script,
    kubernetes_spec,
    override,
    planned_threads,
)
from neurobatch.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"

#: The variables that size BLAS and OpenMP thread pools; each worker must see "1".
BLAS_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)

#: The executables distributed no longer ships (``dask scheduler`` / ``dask worker`` now).
REMOVED = re.compile(r"\bdask-(scheduler|worker)\b")

GiB = 2**30
MiB = 2**20

CRD = tuple[str, dict[str, Any]]


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def _manifest_body(text: str) -> str:
    """A generated manifest without its header comment (everything before ``apiVersion:``)."""
    start = re.search(r"^apiVersion:", text, flags=re.MULTILINE)
    assert start is not None, "no apiVersion: line"
    return text[start.start() :]


def _operator_chart() -> Path:
    """The Dask operator's Helm chart, as shipped inside dask-kubernetes."""
    dask_kubernetes = pytest.importorskip(
        "dask_kubernetes", reason="needs dask-kubernetes (neurobatch[k8s])"
    )
    return Path(dask_kubernetes.__file__).parent / (
        "operator/deployment/helm/dask-kubernetes-operator"
    )


def _needs_jobqueue() -> None:
    pytest.importorskip("dask_jobqueue", reason="needs dask-jobqueue (neurobatch[hpc])")


def _option(argv: list[str], name: str) -> str:
    """The value after ``name`` in a command line (``--name value`` or ``--name=value``)."""
    for i, arg in enumerate(argv):
        if arg == name:
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"{name} not in {argv}")


# ---------------------------------------------------------------------------------------------
# DaskCluster manifests against the operator's resource definition
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def daskcluster_crd() -> CRD:
    """The apiVersion and openAPIV3Schema of the DaskCluster CRD the operator's chart installs.

    ``customresources/daskcluster.yaml`` in the package is a template (its pod specs are
    filled in from ``templates.yaml`` at build time); the chart's ``crds/`` holds the full one.
    """
    crd = _load_yaml((_operator_chart() / "crds" / "daskcluster.yaml").read_text())
    assert crd["kind"] == "CustomResourceDefinition"
    assert crd["spec"]["names"]["kind"] == "DaskCluster"
    [version] = [v for v in crd["spec"]["versions"] if v["storage"]]
    return f"{crd['spec']['group']}/{version['name']}", version["schema"]["openAPIV3Schema"]


def _schema_errors(manifest: dict[str, Any], crd: CRD) -> list[str]:
    """What the API server would reject: schema errors (jsonschema), apiVersion, kind, name."""
    from jsonschema import Draft4Validator  # OpenAPI v3 schemas are draft 4 with extensions

    api_version, schema = crd
    errors = [
        f"{'.'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
        for error in Draft4Validator(schema).iter_errors(manifest)
    ]
    if manifest.get("apiVersion") != api_version:
        errors.append(f"apiVersion: {manifest.get('apiVersion')!r}, expected {api_version!r}")
    if manifest.get("kind") != "DaskCluster":
        errors.append(f"kind: {manifest.get('kind')!r}")
    name = manifest.get("metadata", {}).get("name", "")
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", name):
        errors.append(f"metadata.name: {name!r} is not a DNS-1123 label")
    return sorted(errors)


def _containers(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    spec = manifest["spec"]
    [scheduler] = spec["scheduler"]["spec"]["containers"]
    [worker] = spec["worker"]["spec"]["containers"]
    return {"scheduler": scheduler, "worker": worker}


_QUANTITY = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
_QUANTITY |= {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def _quantity(value: str) -> int:
    """A Kubernetes memory quantity in bytes (``4Gi``, ``4294967296``, ``512M``)."""
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti|k|M|G|T|)", str(value))
    assert match, f"not a Kubernetes memory quantity: {value!r}"
    return int(match[1]) * _QUANTITY[match[2]]


def _cpus(value: str) -> float:
    text = str(value)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _check_daskcluster(manifest: dict[str, Any], crd: CRD, config: KubernetesClusterConfig) -> None:
    """``manifest`` is a valid DaskCluster that runs ``config`` (its memory in bytes)."""
    assert _schema_errors(manifest, crd) == []
    assert manifest["metadata"]["name"] == config.name
    assert manifest["metadata"].get("namespace") == config.namespace
    assert manifest["spec"]["worker"]["replicas"] == config.n_workers
    secrets = [{"secretRef": {"name": name}} for name in config.env_from_secrets]
    for role, container in _containers(manifest).items():
        argv = [*container.get("command", []), *container.get("args", [])]
        assert not [arg for arg in argv if REMOVED.search(arg)], f"{role}: {argv}"
        assert argv[:2] == ["dask", role], f"{role} runs {argv}"
        assert container["image"] == config.image
        variables = {item["name"]: item.get("value") for item in container.get("env", [])}
        expected = dict.fromkeys(BLAS_VARIABLES, "1") | {WORKER_PROFILER: "False"} | config.env
        assert {name: variables.get(name) for name in expected} == expected, role
        assert container.get("envFrom", []) == secrets, role
        if role == "worker":
            threads, memory = config.threads_per_worker, config.memory
            assert int(_option(argv, "--nthreads")) == threads
            # Dask's limit leaves the nanny 10 % of the pod's before the kernel kills it
            assert parse_bytes(_option(argv, "--memory-limit")) == int(0.9 * memory)
            for kind in ("requests", "limits"):
                assert _cpus(container["resources"][kind]["cpu"]) == threads
                assert _quantity(container["resources"][kind]["memory"]) == memory


@pytest.mark.parametrize(
    ("settings", "memory_bytes"),
    [
        pytest.param({}, 4 * GiB, id="defaults"),
        pytest.param(
            {
                "name": "rf-map",
                "namespace": "lab",
                "image": "registry.example.org/lab/neurobatch:1.2",
                "n_workers": 3,
                "threads_per_worker": 4,
                "memory": "6GiB",
                "env": {"AWS_ENDPOINT_URL": "http://minio.lab:9000", "TZ": "UTC"},
            },
            6 * GiB,
            id="namespace-env-threads-memory",
        ),
        pytest.param(
            {"n_workers": 1, "adaptive": {"minimum": 1, "maximum": 10}, "memory": "1500MiB"},
            1500 * MiB,
            id="adaptive",
        ),
        pytest.param(
            {"env_from_secrets": ["lab-s3", "lab-tokens"], "env": {"TZ": "UTC"}},
            4 * GiB,
            id="env-from-secrets",
        ),
    ],
)
def test_kubernetes_spec_is_a_valid_daskcluster(
    settings: dict[str, Any], memory_bytes: int, daskcluster_crd: CRD
) -> None:
    config = KubernetesClusterConfig.model_validate({"kind": "kubernetes", **settings})
    assert config.memory == memory_bytes
    _check_daskcluster(kubernetes_spec(config), daskcluster_crd, config)


def test_the_schema_check_rejects_what_the_api_server_would(daskcluster_crd: CRD) -> None:
    manifest = kubernetes_spec(KubernetesClusterConfig(env_from_secrets=["s3"]))
    broken = copy.deepcopy(manifest)
    broken["spec"]["worker"]["replicas"] = "2"
    del broken["spec"]["scheduler"]["spec"]["containers"][0]["name"]
    broken["spec"]["worker"]["spec"]["containers"][0]["args"] = "dask worker"
    broken["spec"]["worker"]["spec"]["containers"][0]["envFrom"] = [{"secretRef": "s3"}]
    errors = _schema_errors(broken, daskcluster_crd)
    assert any(e.startswith("spec.worker.replicas:") for e in errors), errors
    assert any("'name' is a required property" in e for e in errors), errors
    assert any(e.startswith("spec.worker.spec.containers.0.args:") for e in errors), errors
    assert any(e.startswith("spec.worker.spec.containers.0.envFrom.0") for e in errors), errors
    assert _schema_errors(manifest | {"apiVersion": "v1"}, daskcluster_crd) != []


# ---------------------------------------------------------------------------------------------
# deploy/kubernetes
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kube_pipeline() -> Any:
    return load_config(KUBE / "pipeline.yaml")


@pytest.fixture(scope="module")
def driver_documents() -> dict[str, dict[str, Any]]:
    documents = [d for d in yaml.safe_load_all((KUBE / "driver-job.yaml").read_text()) if d]
    kinds = [d["kind"] for d in documents]
    assert sorted(kinds) == ["Job", "Role", "RoleBinding", "ServiceAccount"], kinds
    return {d["kind"]: d for d in documents}


def test_the_example_pipeline_runs_on_kubernetes_from_an_object_store(kube_pipeline: Any) -> None:
    assert kube_pipeline.kind == "photometry"
    assert kube_pipeline.input.url.startswith("s3://")
    assert kube_pipeline.output.url.startswith("s3://")
    assert isinstance(kube_pipeline.cluster, KubernetesClusterConfig)
    assert kube_pipeline.cluster.namespace is not None
    assert kube_pipeline.cluster.env_from_secrets, "the workers get no object-store credentials"
    # the operator's cluster is plain tcp://: the file says it accepts that
    assert kube_pipeline.cluster.allow_insecure


def test_committed_daskcluster_is_what_the_cli_prints_now(
    capsys: pytest.CaptureFixture[str], kube_pipeline: Any, daskcluster_crd: CRD
) -> None:
    committed = (KUBE / "daskcluster.yaml").read_text()
    assert main(["cluster", str(KUBE / "pipeline.yaml")]) == 0
    assert _manifest_body(committed) == capsys.readouterr().out, (
        "deploy/kubernetes/daskcluster.yaml is stale: regenerate it as its header says"
    )
    _check_daskcluster(_load_yaml(committed), daskcluster_crd, kube_pipeline.cluster)


def test_driver_job_runs_neurobatch_with_the_rights_kubecluster_needs(
    driver_documents: dict[str, dict[str, Any]], kube_pipeline: Any
) -> None:
    namespace = kube_pipeline.cluster.namespace
    expected_api = {
        "ServiceAccount": "v1",
        "Role": "rbac.authorization.k8s.io/v1",
        "RoleBinding": "rbac.authorization.k8s.io/v1",
        "Job": "batch/v1",
    }
    for kind, document in driver_documents.items():
        assert document["apiVersion"] == expected_api[kind]
        assert document["metadata"]["namespace"] == namespace, kind

    account = driver_documents["ServiceAccount"]["metadata"]["name"]
    role = driver_documents["Role"]
    binding = driver_documents["RoleBinding"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert {"kind": "ServiceAccount", "name": account, "namespace": namespace} in binding[
        "subjects"
    ]

    def allowed(group: str, resource: str) -> set[str]:
        verbs: set[str] = set()
        for rule in role["rules"]:
            if group in rule["apiGroups"] and resource in rule["resources"]:
                verbs |= set(rule["verbs"])
        return verbs

    manage = {"get", "list", "watch", "create", "patch", "delete"}
    for resource in ("daskclusters", "daskworkergroups", "daskautoscalers"):
        assert manage <= allowed("kubernetes.dask.org", resource), resource
    for resource in ("pods", "services"):
        assert {"get", "list", "watch"} <= allowed("", resource), resource
    assert "get" in allowed("", "pods/log")

    job = driver_documents["Job"]["spec"]["template"]["spec"]
    assert job["serviceAccountName"] == account
    assert job["restartPolicy"] == "Never"
    [container] = job["containers"]
    assert container["image"] == kube_pipeline.cluster.image
    argv = [*container.get("command", []), *container.get("args", [])]
    assert argv[:2] == ["neurobatch", "run"], argv
    pipeline_file = Path(argv[2])
    [mount] = [m for m in container["volumeMounts"] if pipeline_file.is_relative_to(m["mountPath"])]
    [volume] = [v for v in job["volumes"] if v["name"] == mount["name"]]
    assert "configMap" in volume, "the pipeline file comes from a ConfigMap"

    env = {item["name"]: item for item in container["env"]}
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        assert "value" not in env[variable], f"{variable} is written into the Job"
        assert env[variable]["valueFrom"]["secretKeyRef"]["key"] == variable
    # the driver and the workers it creates read the object store with the same credentials
    driver_secrets = {
        item["valueFrom"]["secretKeyRef"]["name"]
        for item in env.values()
        if "secretKeyRef" in item.get("valueFrom", {})
    }
    assert driver_secrets == set(kube_pipeline.cluster.env_from_secrets)


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector["matchLabels"].items())


def test_network_policy_admits_the_clusters_pods_the_driver_and_the_operator_only(
    kube_pipeline: Any, driver_documents: dict[str, dict[str, Any]]
) -> None:
    """deploy/kubernetes/networkpolicy.yaml against the labels the operator gives the pods
    (its own code builds them from our manifest), the driver Job's and the operator's."""
    controller = pytest.importorskip("dask_kubernetes.operator.controller.controller")
    config = kube_pipeline.cluster
    policy = _load_yaml((KUBE / "networkpolicy.yaml").read_text())
    assert (policy["apiVersion"], policy["kind"]) == ("networking.k8s.io/v1", "NetworkPolicy")
    assert policy["metadata"]["namespace"] == config.namespace
    spec = kubernetes_spec(config)["spec"]
    scheduler = controller.build_scheduler_deployment_spec(
        config.name, spec["scheduler"]["spec"], {}, {}
    )
    worker = controller.build_worker_deployment_spec(
        f"{config.name}-default", config.namespace, config.name, "0", spec["worker"]["spec"], {}, {}
    )
    cluster_pods = {
        "scheduler": scheduler["spec"]["template"]["metadata"]["labels"],
        "worker": worker["spec"]["template"]["metadata"]["labels"],
    }
    for role, labels in cluster_pods.items():
        assert _selects(policy["spec"]["podSelector"], labels), role
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    [rule] = policy["spec"]["ingress"]
    assert "ports" not in rule  # whoever is admitted reaches every port
    peers = rule["from"]

    def admitted(labels: dict[str, str], namespace: str) -> bool:
        return any(
            _selects(peer["podSelector"], labels)
            and (
                _selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": namespace})
                if "namespaceSelector" in peer
                else namespace == config.namespace
            )
            for peer in peers
        )

    for role, labels in cluster_pods.items():
        assert admitted(labels, config.namespace), role
    driver = driver_documents["Job"]["spec"]["template"]["metadata"]["labels"]
    assert admitted(driver, config.namespace)
    # the operator's pods: its chart's selector labels, under the release and namespace of
    # README.md's helm command
    chart = _load_yaml((_operator_chart() / "Chart.yaml").read_text())
    template = (_operator_chart() / "templates" / "deployment.yaml").read_text()
    assert 'include "dask_kubernetes_operator.selectorLabels"' in template.split("template:")[1]
    readme = (KUBE / "README.md").read_text()
    assert "helm upgrade --install dask-operator dask-kubernetes-operator" in readme
    assert "--namespace dask-operator" in readme
    operator = {
        "app.kubernetes.io/name": chart["name"],
        "app.kubernetes.io/instance": "dask-operator",
    }
    assert admitted(operator, "dask-operator")
    # and nobody else: another pod of the namespace, the operator's labels elsewhere
    assert not admitted({"app.kubernetes.io/name": "notebook"}, config.namespace)
    assert not admitted(operator, "default")
    assert not admitted(cluster_pods["worker"], "default")


def test_operator_values_only_set_keys_of_the_chart() -> None:
    chart_values = _load_yaml((_operator_chart() / "values.yaml").read_text())
    ours = _load_yaml((KUBE / "values.yaml").read_text())
    assert ours, "values.yaml sets nothing"

    def unknown(values: dict[str, Any], chart: dict[str, Any], where: str) -> list[str]:
        found = []
        for key, value in values.items():
            if key not in chart:
                found.append(f"{where}{key}")
            elif isinstance(chart[key], dict) and chart[key] and isinstance(value, dict):
                # a mapping with keys of its own (rbac, image); an empty one ({}) is free-form
                found += unknown(value, chart[key], f"{where}{key}.")
        return found

    assert unknown(ours, chart_values, "") == []


# ---------------------------------------------------------------------------------------------
# Example cluster sections and job scripts
# ---------------------------------------------------------------------------------------------


def _pipeline_with(cluster: dict[str, Any], folder: Path) -> Path:
    """A minimal valid pipeline file around a cluster section."""
    path = folder / "pipeline.yaml"
    document = {
        "name": "render-check",
        "input": {"url": "data", "pattern": "*.csv"},
        "loader": {"format": "photometry-csv"},
        "output": {"url": "output"},
        "cluster": cluster,
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


@pytest.mark.parametrize(
    ("kind", "directive"), [("pbs", "#PBS"), ("slurm", "#SBATCH")], ids=["pbs", "slurm"]
)
def test_example_cluster_section_loads_and_renders(
    kind: str, directive: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = ROOT / "deploy" / kind / "cluster.yaml"
    _needs_jobqueue()
    section = _load_yaml(path.read_text())
    section = section.get("cluster", section)  # a whole `cluster:` mapping, or its contents
    config = load_config(_pipeline_with(section, tmp_path)).cluster
    assert isinstance(config, JobqueueClusterConfig)
    assert config.kind == kind
    monkeypatch.chdir(tmp_path)  # a relative log_directory is the working folder's
    script = job_script(config)
    assert any(line.startswith(directive + " ") for line in script.splitlines())
    assert "distributed.cli.dask_worker" in script


@pytest.mark.parametrize(
    ("kind", "folder"),
    [
        ("pbs", "logs"),
        ("slurm", "logs"),
        pytest.param(
            "slurm",
            "logs/slurm",  # as in deploy/slurm/cluster.yaml
            id="slurm-nested",
        ),
    ],
)
def test_job_script_leaves_no_log_folder_behind(kind: str, folder: str, tmp_path: Path) -> None:
    """Rendering a script creates no folder (dask-jobqueue makes log_directory per job);
    a folder that was there before stays."""
    _needs_jobqueue()
    logs = tmp_path / folder
    script = job_script(JobqueueClusterConfig(kind=kind, log_directory=str(logs)))
    assert str(logs) in script
    assert list(tmp_path.iterdir()) == []
    logs.mkdir(parents=True)
    job_script(JobqueueClusterConfig(kind=kind, log_directory=str(logs)))
    assert logs.is_dir()


def _worker_line(script: str) -> tuple[int, list[str]]:
    [(index, line)] = [
        (i, line)
        for i, line in enumerate(script.splitlines())
        if "distributed.cli.dask_worker" in line
    ]
    return index, shlex.split(line)


def _check_job_script(
    script: str,
    *,
    directive: str,
    python: str,
    threads: int,
    workers: int,
    worker_memory: int,
) -> list[str]:
    """Check the worker command, its TLS and the BLAS exports; return the directive lines."""
    lines = script.splitlines()
    index, argv = _worker_line(script)
    assert argv[:3] == [python, "-m", "distributed.cli.dask_worker"]
    assert not REMOVED.search(script)
    assert argv[3] == "tls://SCHEDULER:8786"
    # TLS, with files of the run's private folder: paths only, never a key
    assert _option(argv, "--protocol") == "tls://"
    folder = os.path.dirname(_option(argv, "--tls-key"))
    assert re.fullmatch(r"neurobatch-X{8}", os.path.basename(folder)), folder
    assert _option(argv, "--tls-cert") == _option(argv, "--tls-ca-file") == f"{folder}/cert.pem"
    assert "PRIVATE KEY" not in script and "BEGIN" not in script
    # the worker's HTTP server (metrics, health, its dashboard) on its node's loopback only
    assert _option(argv, "--dashboard-address") == "127.0.0.1:0"
    assert int(_option(argv, "--nthreads")) == threads
    assert int(_option(argv, "--nworkers")) == workers
    assert parse_bytes(_option(argv, "--memory-limit")) == worker_memory
    for variable in BLAS_VARIABLES:
        assert f"export {variable}=1" in lines[:index], f"{variable} is not exported first"
    assert f"export {WORKER_PROFILER}=False" in lines[:index], "the profiler is left on"
    directives = [line for line in lines if line.startswith(directive + " ")]
    first_command = next(i for i, line in enumerate(lines) if line and not line.startswith("#"))
    assert all(lines.index(line) < first_command for line in directives), (
        "a batch system reads directives only before the first command"
    )
    return directives


_PBS_SIZE = {"B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30, "TB": 2**40}  # PBS: 1kb = 1024 B
_SLURM_SIZE = {"": 2**20, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}  # SLURM: MiB default


def test_pbs_job_script() -> None:
    _needs_jobqueue()
    python = "/opt/conda/envs/nb/bin/python"
    config = JobqueueClusterConfig(
        kind="pbs",
        cores=8,
        processes=2,
        memory="16GiB",
        walltime="02:00:00",
        queue="workq",
        account="lab42",
        job_directives=["-l place=scatter"],
        python=python,
    )
    script = job_script(config)
    # 8 cores / 2 processes = 4 threads each; 16 GiB / 2 processes = 8 GiB each
    directives = _check_job_script(
        script, directive="#PBS", python=python, threads=4, workers=2, worker_memory=8 * GiB
    )
    [select] = [line for line in directives if "select=" in line]
    match = re.fullmatch(r"#PBS -l select=1:ncpus=(\d+):mem=(\d+)([KMGT]?B)", select, re.IGNORECASE)
    assert match, select
    assert int(match[1]) == 8
    assert int(match[2]) * _PBS_SIZE[match[3].upper()] == 16 * GiB
    for line in ("#PBS -l walltime=02:00:00", "#PBS -q workq", "#PBS -A lab42"):
        assert line in directives
    assert "#PBS -l place=scatter" in directives


def test_slurm_job_script() -> None:
    _needs_jobqueue()
    python = "/shared/envs/nb/bin/python"
    config = JobqueueClusterConfig(
        kind="slurm",
        cores=6,
        processes=3,
        memory="12GiB",
        walltime="00:45:00",
        queue="short",
        account="lab42",
        job_directives=["--gres=gpu:1"],
        job_script_prologue=["module load python/3.11"],
        python=python,
    )
    script = job_script(config)
    # 6 cores / 3 processes = 2 threads each; 12 GiB / 3 processes = 4 GiB each
    directives = _check_job_script(
        script, directive="#SBATCH", python=python, threads=2, workers=3, worker_memory=4 * GiB
    )
    assert "#SBATCH --cpus-per-task=6" in directives
    [memory] = [line for line in directives if line.startswith("#SBATCH --mem=")]
    match = re.fullmatch(r"#SBATCH --mem=(\d+)([KMGT]?)", memory)
    assert match, memory
    assert int(match[1]) * _SLURM_SIZE[match[2]] == 12 * GiB
    for line in ("#SBATCH -t 00:45:00", "#SBATCH -p short", "#SBATCH -A lab42"):
        assert line in directives
    assert "#SBATCH --gres=gpu:1" in directives
    lines = script.splitlines()
    assert lines.index("module load python/3.11") < _worker_line(script)[0]


# ---------------------------------------------------------------------------------------------
# --cluster and the planned size
# ---------------------------------------------------------------------------------------------


def test_override_keeps_the_file_settings_when_the_kind_matches() -> None:
    pbs = JobqueueClusterConfig(kind="pbs", queue="workq", cores=8, processes=2, n_workers=6)
    assert override(pbs, "pbs") == pbs
    kube = KubernetesClusterConfig(image="registry.example.org/nb:1", namespace="lab")
    assert override(kube, "kubernetes") == kube
    local = LocalClusterConfig(kind="local", n_workers=3, threads_per_worker=2)
    assert override(local, "local") == local
    # auto and local are one section: switching keeps its settings
    assert override(local, "auto") == local.model_copy(update={"kind": "auto"})


def test_override_to_another_kind_takes_its_defaults() -> None:
    slurm = JobqueueClusterConfig(kind="slurm", queue="compute", cores=4, account="lab42")
    pbs = override(slurm, "pbs")
    assert pbs == JobqueueClusterConfig(kind="pbs")
    assert (pbs.queue, pbs.account, pbs.cores) == (None, None, 1)
    assert override(slurm, "local") == LocalClusterConfig(kind="local")
    assert override(slurm, "auto") == LocalClusterConfig()
    kube = override(LocalClusterConfig(n_workers=2), "kubernetes")
    assert kube == KubernetesClusterConfig()
    assert override(kube, "slurm") == JobqueueClusterConfig(kind="slurm")


def test_override_with_an_address() -> None:
    address = "tcp://10.0.0.5:8786"
    assert override(LocalClusterConfig(), address) == AddressClusterConfig(address=address)
    assert override(JobqueueClusterConfig(kind="pbs"), "tls://sched:8786").address == (
        "tls://sched:8786"
    )
    tls = TlsConfig(ca_file="ca.pem", cert="client.pem")
    mine = AddressClusterConfig(address="tls://old:8786", tls=tls, n_workers=4, timeout_s=5)
    moved = override(mine, "tls://new:8786")
    assert moved == mine.model_copy(update={"address": "tls://new:8786"})


@pytest.mark.parametrize("choice", ["nonsense", "address", "SLURM", "10.0.0.5:8786"])
def test_override_refuses_an_unknown_cluster(choice: str) -> None:
    with pytest.raises(ConfigError) as caught:
        override(LocalClusterConfig(), choice)
    message = str(caught.value)
    assert "\n" not in message
    assert repr(choice) in message
    for kind in ("local", "slurm", "pbs", "kubernetes", "tcp://"):
        assert kind in message


@pytest.mark.parametrize(
    ("config", "threads"),
    [
        pytest.param(LocalClusterConfig(n_workers=3, threads_per_worker=2), 3 * 2, id="local"),
        pytest.param(LocalClusterConfig(), None, id="local-fits-the-machine"),
        pytest.param(AddressClusterConfig(address="tcp://h:8786", n_workers=4), None, id="address"),
        pytest.param(
            JobqueueClusterConfig(kind="slurm", n_workers=4, cores=8, processes=2),
            4 * (8 // 2),
            id="slurm",
        ),
        pytest.param(
            JobqueueClusterConfig(
                kind="pbs", n_workers=3, cores=6, processes=3, adaptive=AdaptiveConfig(maximum=10)
            ),
            10 * (6 // 3),
            id="pbs-adaptive",
        ),
        pytest.param(
            KubernetesClusterConfig(n_workers=3, threads_per_worker=2), 3 * 2, id="kubernetes"
        ),
        pytest.param(
            KubernetesClusterConfig(
                n_workers=1, threads_per_worker=4, adaptive=AdaptiveConfig(minimum=1, maximum=5)
            ),
            5 * 4,
            id="kubernetes-adaptive",
        ),
    ],
)
def test_planned_threads(config: Any, threads: int | None) -> None:
    assert planned_threads(config) == threads


# ---------------------------------------------------------------------------------------------
# neurobatch cluster FILE
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def slurm_pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    _needs_jobqueue()
    section = {"kind": "slurm", "queue": "debug", "cores": 2, "memory": "3GiB"}
    return _pipeline_with(section, tmp_path)


def test_cli_prints_the_job_script_of_the_chosen_kind(
    slurm_pipeline: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["cluster", str(slurm_pipeline)]) == 0
    slurm = capsys.readouterr().out
    assert "#SBATCH -p debug" in slurm.splitlines()
    assert main(["cluster", str(slurm_pipeline), "--cluster", "pbs"]) == 0
    pbs = capsys.readouterr().out
    assert "#SBATCH" not in pbs
    pbs_lines = pbs.splitlines()
    assert any(line.startswith("#PBS -l select=1:ncpus=1:") for line in pbs_lines), pbs
    # pbs defaults, not the slurm section's queue
    assert not any(line.startswith("#PBS -q") for line in pbs_lines)
    _, argv = _worker_line(pbs)
    assert argv[1:3] == ["-m", "distributed.cli.dask_worker"]


def test_cli_prints_a_valid_daskcluster(
    slurm_pipeline: Path, capsys: pytest.CaptureFixture[str], daskcluster_crd: CRD
) -> None:
    assert main(["cluster", str(slurm_pipeline), "--cluster", "kubernetes", "--workers", "7"]) == 0
    manifest = _load_yaml(capsys.readouterr().out)
    _check_daskcluster(manifest, daskcluster_crd, KubernetesClusterConfig(n_workers=7))


def test_cli_prints_an_address_section(
    slurm_pipeline: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["cluster", str(slurm_pipeline), "--cluster", "tcp://10.1.2.3:8786"]) == 0
    printed = _load_yaml(capsys.readouterr().out)
    assert printed["cluster"]["kind"] == "address"
    assert printed["cluster"]["address"] == "tcp://10.1.2.3:8786"


def test_cli_refuses_an_unknown_cluster_in_one_line(
    slurm_pipeline: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["cluster", str(slurm_pipeline), "--cluster", "nonsense"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    [line] = captured.err.strip().splitlines()
    assert line.startswith("neurobatch cluster: error:")
    assert "'nonsense'" in line


# ---------------------------------------------------------------------------------------------
# One BLAS thread per worker thread on a LocalCluster
# ---------------------------------------------------------------------------------------------


@contextmanager
def _local_client(environ: dict[str, str | None], **settings: Any) -> Iterator[Client]:
    """``connect`` to a one-worker LocalCluster started from ``environ`` (None: unset)."""
    with ExitStack() as stack:
        with pytest.MonkeyPatch.context() as patch:
            for name, value in environ.items():
                if value is None:
                    patch.delenv(name, raising=False)
                else:
                    patch.setenv(name, value)
            config = LocalClusterConfig(kind="local", n_workers=1, memory_limit="1GiB", **settings)
            client = stack.enter_context(connect(config))
        yield client


def _worker_pools(client: Client) -> list[dict[str, Any]]:
    """The thread pools (threadpoolctl's) of the one worker, once it has loaded NumPy's BLAS."""
    threadpoolctl = pytest.importorskip(
        "threadpoolctl", reason="threadpoolctl is not installed: cannot see the BLAS pools"
    )
    client.run(exec, "import numpy.linalg")
    [pools] = client.run(threadpoolctl.threadpool_info).values()
    assert [pool for pool in pools if pool["user_api"] == "blas"], f"no BLAS loaded: {pools}"
    return list(pools)


@pytest.fixture(scope="module")
def local_blas_client() -> Iterator[Client]:
    """A one-worker cluster from ``connect``, started from a shell that sets some pools.

    NUMEXPR_NUM_THREADS and VECLIB_MAXIMUM_THREADS are set to 3 in the launching environment,
    so the worker's "1" can only come from ``connect``; the OpenMP, OpenBLAS and MKL ones are
    unset there, as in a plain shell.
    """
    environ: dict[str, str | None] = {"NUMEXPR_NUM_THREADS": "3", "VECLIB_MAXIMUM_THREADS": "3"}
    environ |= dict.fromkeys(("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"))
    with _local_client(environ, threads_per_worker=2) as client:
        yield client


def test_local_workers_get_one_blas_thread_in_their_environment(local_blas_client: Client) -> None:
    for variable in BLAS_VARIABLES:
        # os.getenv is pickled by reference and runs in the worker; os.environ.get would be
        # a bound method that carries this process's environment along
        values = local_blas_client.run(os.getenv, variable)
        assert list(values.values()) == ["1"], f"{variable}: {values}"


def test_local_workers_blas_runs_one_thread(local_blas_client: Client) -> None:
    pools = _worker_pools(local_blas_client)
    assert {pool["num_threads"] for pool in pools} == {1}, pools


def test_workers_in_this_process_run_one_blas_thread_while_the_cluster_lives() -> None:
    threadpoolctl = pytest.importorskip("threadpoolctl")
    import numpy.linalg  # noqa: F401 - loads the BLAS whose pools are looked at

    def blas_threads() -> set[int]:
        info = threadpoolctl.threadpool_info()
        return {pool["num_threads"] for pool in info if pool["user_api"] == "blas"}

    before = blas_threads()
    config = LocalClusterConfig(n_workers=2, memory_limit="1GiB", processes=False)
    with connect(config) as client:
        [inside] = client.run(blas_threads).values()
        assert client.nthreads() == {next(iter(client.nthreads())): 2}
    assert inside == {1}
    assert blas_threads() == before


def _profiled_task_prefixes(client: Client) -> list[str]:
    """The task prefixes the worker's statistical profiler has call trees of, after a task
    that spans many of its 10 ms samples."""
    client.submit(time.sleep, 0.5, pure=False).result()
    keys = 'sorted(__import__("distributed").get_worker().profile_keys)'
    prefixes: list[str] = client.submit(eval, keys, pure=False).result()
    return prefixes


def test_local_workers_run_without_the_profiler(local_blas_client: Client) -> None:
    # its call trees would grow with the batch: about 80 MB per worker over 200 items
    assert _profiled_task_prefixes(local_blas_client) == []


def test_local_workers_run_the_profiler_when_the_shell_asks_for_it() -> None:
    with _local_client({WORKER_PROFILER: "True"}) as client:
        assert _profiled_task_prefixes(client) == ["sleep"]


def test_local_workers_blas_runs_one_thread_whatever_the_shell_sets() -> None:
    """A driver started from a shell that sizes the pools (OPENBLAS_NUM_THREADS=3, ...) still
    gets workers with one-thread pools.

    BLAS sizes its pool when the worker process imports NumPy, before a Nanny's ``env``
    applies, and the launching environment would win over dask's ``pre-spawn-environ``: the
    variables would read 1 in the worker while its pool ran 3 threads.
    """
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: every BLAS pool has one thread anyway")
    with _local_client(dict.fromkeys(BLAS_VARIABLES, "3")) as client:
        pools = _worker_pools(client)
    assert {pool["num_threads"] for pool in pools} == {1}, pools
