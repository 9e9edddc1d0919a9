"""``neurobatch run FILE --download-only`` and runs that read the raw cache (``input.cache``),
against the local S3 server and the session's LocalCluster."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import fsspec
import pytest
import xarray as xr
import yaml
from distributed import Client

from downloads import killed_midway
from neurobatch.cli import main
from neurobatch.engine.run import Pipeline
from neurobatch.io.cache import cache_path
from neurobatch.io.trials_store import open_trials
from runs import assert_same_results

INPUTS = "s3://lab/e2e-download/raw"


def _pipeline_file(demo: Path, where: Path, options: dict[str, Any], cache: str | None) -> Path:
    document = yaml.safe_load(demo.read_text())
    document["input"] |= {"url": INPUTS, "storage_options": options}
    if cache is not None:
        document["input"]["cache"] = cache
    document["output"]["url"] = "out"
    document["output"].pop("dashboards")
    path = where / "pipeline.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def _object_reads(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The GETs of the inputs' objects the S3 server answered (its request log)."""
    prefix = INPUTS.removeprefix("s3:/")
    pattern = re.compile(rf'"GET {re.escape(prefix)}/[^ ?]+ ')
    lines = [r.getMessage() for r in caplog.records if r.name == "werkzeug"]
    return [line for line in lines if pattern.search(line)]


def test_download_only_then_runs_that_read_only_the_cache(
    photometry_demo: Path,
    photometry_reference: Path,
    local_client: Client,
    s3_options: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="werkzeug")
    fs = fsspec.filesystem("s3", **s3_options)
    fs.put(str(photometry_demo.parent / "data") + "/", INPUTS.removeprefix("s3://"), recursive=True)
    remote = {name: fs.cat_file(name) for name in fs.find(INPUTS)}
    without, with_cache = tmp_path / "without", tmp_path / "with"
    without.mkdir()
    with_cache.mkdir()
    plain = _pipeline_file(photometry_demo, without, s3_options, None)
    cached = _pipeline_file(photometry_demo, with_cache, s3_options, "raw-cache")

    # without input.cache: one line, exit 1
    assert main(["run", str(plain), "--download-only"]) == 1
    assert capsys.readouterr().err == (
        "neurobatch run: error: --download-only needs input.cache: set it to a local folder "
        "in the pipeline file's input section\n"
    )
    Pipeline.from_file(plain).run(client=local_client)  # the reference: read from S3
    assert _object_reads(caplog)  # the request log sees the reads of a run without cache

    assert main(["run", str(cached), "--download-only"]) == 0
    lines = capsys.readouterr().out.splitlines()
    cache = with_cache / "raw-cache"  # relative to the pipeline file
    assert lines[-1].startswith(f"3 input(s) in {cache}: 3 fetched (")
    assert lines[-1].endswith("), 0 already cached, 0 failed")
    assert sorted(line.split()[0] for line in lines[:-1]) == ["fetched"] * 3
    assert not (with_cache / "out").exists()  # nothing processed, nothing under OUT
    mirrored = cache / "s3"
    copies = {
        str(p.relative_to(mirrored)): p.read_bytes() for p in mirrored.rglob("*") if p.is_file()
    }
    assert copies == remote  # every CSV and its JSON sidecar, nothing else
    assert main(["run", str(cached), "--download-only"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"3 input(s) in {cache}: 0 fetched (0 B), 3 already cached, 0 failed"
    )

    caplog.clear()
    Pipeline.from_file(cached).run(client=local_client)
    assert _object_reads(caplog) == []  # every input and sidecar read from the cache
    assert_same_results(with_cache / "out", photometry_reference)
    trials = open_trials(str(with_cache / "out" / "trials.zarr")).load()
    # the same as the run without the cache, sources named by their S3 URLs
    xr.testing.assert_identical(trials, open_trials(str(without / "out" / "trials.zarr")).load())
    assert all(str(s).startswith(f"{INPUTS}/") for s in trials["source"].to_numpy())

    # the cache changes no item's id or key: a run with it over the run without skips all
    document = yaml.safe_load(cached.read_text())
    document["output"]["url"] = str(without / "out")
    cached.write_text(yaml.safe_dump(document))
    summary = Pipeline.from_file(cached).run(client=local_client)
    assert summary.n_skipped == 3


def test_a_copy_that_does_not_verify_fails_its_item_and_the_others_go_on(
    photometry_demo: Path, local_client: Client, s3_options: dict[str, Any], tmp_path: Path
) -> None:
    fs = fsspec.filesystem("s3", **s3_options)
    inputs = "lab/e2e-download/corrupt"
    fs.put(str(photometry_demo.parent / "data") + "/", inputs, recursive=True)
    cached = _pipeline_file(photometry_demo, tmp_path, s3_options, "raw-cache")
    document = yaml.safe_load(cached.read_text())
    document["input"]["url"] = f"s3://{inputs}"
    cached.write_text(yaml.safe_dump(document))
    url = f"s3://{inputs}/experiment_002.csv"
    killed_midway(url, tmp_path / "raw-cache", s3_options, block=4096)
    part = Path(cache_path(str(tmp_path / "raw-cache"), url) + ".part")
    with part.open("r+b") as f:  # a bit flipped in the part a run will resume
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0x01]))

    summary = Pipeline.from_file(cached).run(client=local_client)

    failed = summary.failures.set_index("item_id")["error"].to_dict()
    assert list(failed) == ["experiment_002"]
    assert failed["experiment_002"].startswith(
        f"{url}: the downloaded copy is corrupt: its MD5 is "
    )
    assert failed["experiment_002"].endswith("(the remote's ETag); it was removed")
    assert summary.n_done == 2
    assert not part.exists() and not Path(cache_path(str(tmp_path / "raw-cache"), url)).exists()


def test_local_inputs_are_read_in_place(
    photometry_demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = yaml.safe_load(photometry_demo.read_text())
    document["input"] |= {"url": str(photometry_demo.parent / "data"), "cache": "raw-cache"}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(document))

    assert main(["run", str(path), "--download-only"]) == 0

    assert capsys.readouterr().out == (
        f"the inputs are local: they are read in place; nothing to download to "
        f"{tmp_path / 'raw-cache'}\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipeline.yaml"]
