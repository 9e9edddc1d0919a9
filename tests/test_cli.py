"""The command line: the demo end to end, and user errors as one line with exit status 1."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import psutil
import pytest
import xarray as xr
import yaml

from disks import small_disk
from neurobatch.cli import main
from neurobatch.engine.ledger import write_manifest
from processes import still_alive


def test_demo_runs_the_whole_pipeline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(
        [
            "demo",
            "--out",
            str(tmp_path),
            "--items",
            "2",
            "--duration-s",
            "120",
            "--rate-hz",
            "50",
            "--workers",
            "1",
        ]
    )
    out = capsys.readouterr().out
    assert status == 0, out
    assert "2 item(s): 2 done, 0 skipped (unchanged), 0 failed" in out
    trials = xr.open_zarr(tmp_path / "output" / "trials.zarr")
    assert f"{trials.sizes['trial']} trials" in out
    assert sorted(p.name for p in (tmp_path / "output" / "dashboards").iterdir()) == [
        "experiment_001.png",
        "experiment_002.png",
    ]
    # discover and validate on the file the demo wrote
    assert main(["discover", str(tmp_path / "pipeline.yaml")]) == 0
    assert "experiment_002" in capsys.readouterr().out
    assert main(["validate", str(tmp_path / "pipeline.yaml")]) == 0
    assert "valid; 2 item(s)" in capsys.readouterr().out


def test_a_misspelled_key_is_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "data").mkdir()
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        "name: x\ninput: {url: data}\nloader: {format: photometry-csv}\n"
        "preprocess: {filter: {cutof_hz: 3}}\noutput: {url: out}\n"
    )
    assert main(["run", str(path)]) == 1
    err = capsys.readouterr().err
    assert "preprocess.filter.cutof_hz: unknown key; did you mean 'cutoff_hz'?" in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_check_passes_as_shipped(capsys: pytest.CaptureFixture[str]) -> None:
    """``neurobatch check`` runs every blocked operator on a LocalCluster against its kernel
    and passes with the tolerances it ships (the STA's is float32 precision)."""
    status = main(["check", "--workers", "1", "--recordings", "1", "--minutes", "1"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "FAIL" not in out
    steps = [line.split()[1] for line in out.splitlines() if line.startswith("ok")]
    assert "spike-triggered" in steps and len(steps) >= 5, out


@pytest.mark.parametrize("processes", [True, False], ids=["worker-processes", "in-process"])
def test_no_process_outlives_the_command(
    photometry_demo: Path, tmp_path: Path, processes: bool
) -> None:
    """Every process a run starts (nannies, workers, multiprocessing's resource tracker)
    has exited when ``neurobatch run`` does; in this process, it starts none."""
    pipeline = yaml.safe_load(photometry_demo.read_text())
    pipeline["input"]["url"] = str(photometry_demo.parent / "data")
    pipeline["output"] |= {"url": str(tmp_path / "out"), "dashboards": None}
    pipeline["cluster"] = {"n_workers": 2, "processes": processes, "memory_limit": "1GiB"}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(pipeline))
    run = subprocess.Popen([sys.executable, "-m", "neurobatch", "run", str(path)])
    command = psutil.Process(run.pid)
    seen: dict[int, float] = {}
    while run.poll() is None:
        with contextlib.suppress(psutil.Error):
            for child in command.children(recursive=True):
                seen[child.pid] = child.create_time()
        time.sleep(0.02)
    assert run.returncode == 0
    assert still_alive(seen) == []
    assert (len(seen) >= 2) if processes else (seen == {})


@pytest.mark.parametrize(
    "argv",
    [["run"], ["--bogus"], ["demo", "--items", "-3"], ["status", "OUT", "--nonsense"]],
    ids=["missing", "unknown", "invalid", "unknown-option"],
)
def test_argument_errors_exit_1_not_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """2 means "some items failed": a usage error is 1, as for a bad pipeline file."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 1
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("neurobatch")


def test_status_of_an_s3_folder_takes_storage_options(
    s3_options: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = "s3://lab/cli-status/out"
    items = pd.DataFrame(
        {"item_id": ["a"], "url": ["s3://lab/in/a.bin"], "fingerprint": ["1"], "format": ["x"]}
    )
    write_manifest(items, out, kind="filter", stages=["filter"], storage_options=s3_options)
    # no credentials anywhere but where the command is told
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    endpoint_only = json.dumps({"client_kwargs": s3_options["client_kwargs"]})
    assert main(["status", out, "--storage-options", endpoint_only]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        (
            f"neurobatch status: error: cannot reach {out}: Unable to locate credentials "
            "(NoCredentialsError); expected credentials in the environment or --storage-options"
        )
    ]
    options_file = tmp_path / "s3.yaml"
    options_file.write_text(yaml.safe_dump(s3_options))
    assert main(["status", out, "--storage-options", str(options_file)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"{out}: filter pipeline, stages filter"
    assert printed[-1] == "1 items: 0 done, 0 stale, 0 failed, 1 pending"
    assert main(["status", out, "--storage-options", str(tmp_path / "missing.yaml")]) == 1
    assert "--storage-options: cannot read" in capsys.readouterr().err


def test_a_full_disk_exits_4_naming_the_path(
    photometry_demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not 1 (an unusable pipeline file): the file is fine, the storage is not."""
    with small_disk(tmp_path / "disk", "512k") as disk:
        pipeline = yaml.safe_load(photometry_demo.read_text())
        pipeline["input"]["url"] = str(photometry_demo.parent / "data")
        pipeline["output"] |= {"url": str(disk / "out"), "dashboards": None}
        path = tmp_path / "pipeline.yaml"
        path.write_text(yaml.safe_dump(pipeline))
        assert main(["run", str(path)]) == 4
        # its log was written as the run went, in space kept for it: the failures are there
        log = (disk / "out" / "logs" / "run.log").read_text()
        assert "no space left on device writing" in log
    # the items' stores do not fit: each fails on the storage, and the run says so last
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("neurobatch: error: 3 item(s) failed on the output's storage; ")
    assert f"no space left on device writing {disk}/out/" in error
    assert error.endswith("; free space or choose another output.url")


def test_a_cluster_beyond_the_machine_needs_force(
    photometry_demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline = yaml.safe_load(photometry_demo.read_text())
    pipeline["input"]["url"] = str(photometry_demo.parent / "data")
    pipeline["cluster"] = {"n_workers": 100_000}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(pipeline))
    assert main(["validate", str(path)]) == 1
    [error] = capsys.readouterr().err.strip().splitlines()
    assert error.startswith("neurobatch validate: error: cluster:") and "--force" in error
    assert main(["validate", str(path), "--force"]) == 0
    pipeline["output"]["url"] = str(tmp_path / "out")
    path.write_text(yaml.safe_dump(pipeline))
    capsys.readouterr()
    assert main(["run", str(path)]) == 1
    [error] = capsys.readouterr().err.strip().splitlines()
    assert error.startswith("neurobatch run: error: cluster:")
    assert not (tmp_path / "out").exists()  # refused before anything is written


def _lab_pipeline(folder: Path, loader: dict[str, Any], **sections: Any) -> Path:
    """Three recordings whose columns are named as a lab names them, and a pipeline file."""
    from photometry_files import recording_frame

    for i in range(3):
        frame, _ = recording_frame(n=300, seed=i)
        renamed = frame.rename(columns={"signal": "raw_signal", "isosbestic": "raw_isosbestic"})
        (folder / "data").mkdir(parents=True, exist_ok=True)
        renamed.to_csv(folder / "data" / f"m{i}.csv", index=False)
    pipeline = {
        "name": "lab",
        "input": {"url": "data", "pattern": "*.csv"},
        "loader": {"format": "photometry-csv", **loader},
        "output": {"url": "../out"},
        **sections,
    }
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(pipeline))
    return path


def test_validate_opens_every_header_and_names_the_column_meant(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "lab"
    right = {"signal_col": "raw_signal", "isosbestic_col": "raw_isosbestic"}
    for wrong, line in [
        (
            {"signal_col": "raw_signl"},
            (
                "has no column 'raw_signl' (signal_col; did you mean 'raw_signal'?); its columns: "
                "'time', 'raw_signal', 'raw_isosbestic', 'trial_cue', 'lever1', 'lever2', 'shock'"
            ),
        ),
        (
            # a misspelled isosbestic no longer reads the files as single-channel
            {"isosbestic_col": "raw_isosbestc"},
            (
                "has no column 'raw_isosbestc' (isosbestic_col; did you mean 'raw_isosbestic'?); "
                "its columns: 'time', 'raw_signal', 'raw_isosbestic', 'trial_cue', 'lever1', "
                "'lever2', 'shock'; set isosbestic_col: null to read a single-channel recording"
            ),
        ),
    ]:
        path = _lab_pipeline(folder, {**right, **wrong})
        assert main(["validate", str(path)]) == 1
        errors = capsys.readouterr().err.strip().splitlines()
        data = folder / "data"
        assert errors == [
            f"neurobatch validate: error: '{data / 'm0.csv'}' {line}",
            f"'{data / 'm1.csv'}' {line}",
            f"'{data / 'm2.csv'}' {line}",
        ]
    path = _lab_pipeline(folder, right)
    assert main(["validate", str(path)]) == 0
    assert "valid; 3 item(s)" in capsys.readouterr().out


def test_validate_imports_the_fit_and_correction_the_file_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "lab"
    (folder / "fits").mkdir(parents=True)
    (folder / "fits" / "lab.py").write_text(
        "import numpy as np\n\n"
        "def line(signal, isosbestic):\n"
        "    slope, intercept = np.polyfit(isosbestic, signal, 1)\n"
        "    return slope * isosbestic + intercept, {'slope': slope}\n"
    )
    columns = {"signal_col": "raw_signal", "isosbestic_col": "raw_isosbestic"}
    # from another folder: the function's file is relative to the pipeline file's
    monkeypatch.chdir(tmp_path)
    path = _lab_pipeline(
        folder, columns, preprocess={"fit": "fits/lab.py:lin", "correction": "dff"}
    )
    assert main(["validate", str(path)]) == 1
    [error] = capsys.readouterr().err.strip().splitlines()
    assert error.startswith(f"neurobatch validate: error: cannot import '{folder}/fits/lab.py:lin'")
    path = _lab_pipeline(folder, columns, preprocess={"fit": "fits/lab.py:line"})
    assert main(["validate", str(path)]) == 0
    assert capsys.readouterr().out.strip().endswith("; preprocess fit found")
