"""The demo pipeline with its inputs and every output in S3 (a local moto server).

Inputs are discovered under ``s3://``; the items' Zarr stores, ``trials.zarr``, the tables,
the logs and ``processing.json`` are written there, and nothing to the local disk. The
results equal the local run's. Credentials come from ``storage_options`` or from the
environment, and never appear in what is written.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import fsspec
import yaml
from distributed import Client

from neurobatch.engine.provenance_summary import read_processing
from neurobatch.engine.run import Pipeline
from neurobatch.redact import REDACTED
from runs import assert_same_results


def _upload(folder: Path, url: str, storage_options: dict[str, Any]) -> None:
    fs, path = fsspec.core.url_to_fs(url, **storage_options)
    fs.put(str(folder) + "/", path, recursive=True)


def _pipeline_file(
    demo: Path, where: Path, inputs: str, out: str, storage_options: dict[str, Any] | None
) -> Path:
    document = yaml.safe_load(demo.read_text())
    document["input"]["url"] = inputs
    document["output"]["url"] = out
    document["output"].pop("dashboards")
    if storage_options is not None:
        document["input"]["storage_options"] = storage_options
        document["output"]["storage_options"] = storage_options
    path = where / "pipeline.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def _written(out: str, storage_options: dict[str, Any]) -> dict[str, bytes]:
    fs, path = fsspec.core.url_to_fs(out, **storage_options)
    return {name: fs.cat_file(name) for name in fs.find(path)}


def test_inputs_and_outputs_in_s3_with_storage_options(
    photometry_demo: Path,
    photometry_reference: Path,
    local_client: Client,
    s3_options: dict[str, Any],
    tmp_path: Path,
) -> None:
    inputs, out = "s3://lab/e2e-options/raw", "s3://lab/e2e-options/out"
    _upload(photometry_demo.parent / "data", inputs, s3_options)
    path = _pipeline_file(photometry_demo, tmp_path, inputs, out, s3_options)

    Pipeline.from_file(path).run(client=local_client)

    assert_same_results(out, photometry_reference, **s3_options)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipeline.yaml"]  # nothing local
    written = _written(out, s3_options)
    names = {name.removeprefix("lab/e2e-options/out/") for name in written}
    assert {"items.parquet", "run.json", "processing.json", "logs/run.log"} <= names
    assert any(name.startswith("trials.zarr/") for name in names)
    for item in ("experiment_001", "experiment_003"):
        assert f"logs/{item}.log" in names
        for store_name in ("ingest", "preprocess", "trials"):
            assert f"items/{item}/{store_name}/.neurobatch-commit.json" in names
    for name, content in written.items():
        for secret in (s3_options["key"], s3_options["secret"]):
            assert secret.encode() not in content, f"{name} holds a credential"
    processing = read_processing(f"{out}/processing.json", storage_options=s3_options)
    pipeline = processing.pipelines[0].parameters.model_dump()  # type: ignore[index,union-attr]
    assert pipeline["output"]["storage_options"]["key"] == REDACTED


def test_credentials_from_the_environment(
    photometry_demo: Path, photometry_reference: Path, s3_options: dict[str, Any], tmp_path: Path
) -> None:
    # the pipeline file names no credentials and no endpoint: the driver and the workers it
    # starts take them from the environment, as on a cluster whose jobs export them
    inputs, out = "s3://lab/e2e-environment/raw", "s3://lab/e2e-environment/out"
    _upload(photometry_demo.parent / "data", inputs, s3_options)
    path = _pipeline_file(photometry_demo, tmp_path, inputs, out, None)
    environment = os.environ | {
        "AWS_ACCESS_KEY_ID": s3_options["key"],
        "AWS_SECRET_ACCESS_KEY": s3_options["secret"],
        "AWS_ENDPOINT_URL_S3": s3_options["client_kwargs"]["endpoint_url"],
        "AWS_DEFAULT_REGION": "us-east-1",
        "PYTHONWARNINGS": "ignore",
    }
    run = subprocess.run(
        [sys.executable, "-m", "neurobatch", "run", str(path), "--workers", "2"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert_same_results(out, photometry_reference, **s3_options)
    for name, content in _written(out, s3_options).items():
        assert s3_options["secret"].encode() not in content, f"{name} holds the secret"
