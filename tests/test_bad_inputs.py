"""Bad input: each bad file fails only its own item, with one line naming it, what was wrong
and what was expected; the others go on.

The corpus is ``tests/data/bad/`` (its README.md lists every file and its message). Its
photometry CSVs run as one batch with good recordings, through ``neurobatch run`` on the
session's cluster; the inputs of other formats, a YAML sidecar, inputs that vanish, a
missing ``input.url``, S3 (a missing bucket, wrong credentials, an unreachable endpoint) and
item ids that would leave OUT each have a test of their own.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml
from distributed import Client

from neurobatch import synthetic
from neurobatch.cli import EXIT_SOME_FAILED, main
from neurobatch.engine.layout import FAILURE_MARKER
from neurobatch.engine.run import Pipeline
from neurobatch.errors import InputError, NonUniformSamplingWarning
from neurobatch.io.discover import discover
from neurobatch.io.loaders import load_photometry_csv, load_recording
from neurobatch.io.trials_store import open_trials

BAD = Path(__file__).parent / "data" / "bad"
EVENTS = list(synthetic.EVENT_NAMES)

#: Each bad photometry CSV of the corpus and the message of its failed item: ``{path}`` is
#: the file, ``{sidecar}`` its sidecar. Every message is one line naming the input, what was
#: wrong and what was expected.
BATCH_CASES = {
    "empty.csv": r"'{path}' is empty; expected a CSV header and data rows",
    "header_only.csv": r"'{path}' has a header but no data rows; expected at least two samples",
    "misspelled_column.csv": (
        r"'{path}' has no column 'signal' \(signal_col; did you mean 'sginal'\?\); its "
        r"columns: 'time', 'sginal', 'isosbestic', 'trial_cue', 'lever1', 'lever2', 'shock'"
    ),
    "missing_column.csv": (
        r"'{path}' has no column 'lever2' \(event_cols; did you mean 'lever1'\?\); its "
        r"columns: 'time', 'signal', 'isosbestic', 'trial_cue', 'lever1', 'shock'"
    ),
    "non_numeric.csv": r"'{path}': column 'signal' holds '1\.0O2' at line 7; expected a number",
    "nan_time.csv": (
        r"'{path}': column 'time' has a NaN, inf or empty value \(nan\) at line 6; "
        r"expected finite numbers"
    ),
    "inf_signal.csv": (
        r"'{path}': column 'signal' has a NaN, inf or empty value \(inf\) at line 9; "
        r"expected finite numbers"
    ),
    "time_decreasing.csv": (
        r"'{path}': column 'time' goes back from 0\.06 s to 0\.05 s at line 8; time must be "
        r"strictly increasing \(are the rows sorted\?\)"
    ),
    "duplicate_time.csv": (
        r"'{path}': column 'time' repeats the timestamp 0\.05 s at line 8 \(also at line 7\); "
        r"time must be strictly increasing"
    ),
    "nonuniform_sampling.csv": (
        r"'{path}': sampling is not uniform: the interval ending at line 12 is 0\.51 s, "
        r"5000\.00% off the median interval 0\.01 s \(max_sampling_deviation 50\.00%\); "
        r"expected uniformly spaced sample times \(resample the recording, or raise "
        r"max_sampling_deviation\)"
    ),
    "no_trial_cue.csv": (
        r"{path}: the alignment event 'trial_cue' never occurs \(events found: trial_cue x0, "
        r"lever1 x0, lever2 x0, shock x0\); expected at least one"
    ),
    "invalid_sidecar.csv": (
        r"sidecar '{sidecar}' is not valid JSON: line 2 column 8: Expecting ':' delimiter"
    ),
    "missing_sidecar.csv": (
        r"sidecar '{sidecar}' of '{path}' does not exist \(annotation template "
        r"'\{stem\}\.json'\)"
    ),
    "truncated.csv": (
        r"'{path}' is truncated: its last line \(line 13\) has 4 of the header's 8 fields: "
        r"'11,0\.11,1\.007420,0\.504'"
    ),
    "one_sample.csv": (
        r"'{path}' has only one sample; a recording needs at least two to estimate its "
        r"sampling rate"
    ),
}

#: Inputs of other formats cut short: file -> (format, loader arguments, message).
CUT_SHORT = {
    "truncated.npy": (
        "npy",
        {"kind": "traces", "sampling_rate": 1000.0},
        (
            r"'{path}' has 827 bytes but its header announces \(100, 4\) of int16 \(928 bytes with "
            r"the header\); the file is truncated"
        ),
    ),
    "truncated.bin": (
        "raw-binary",
        {"n_channels": 4, "dtype": "int16", "sampling_rate": 1000.0},
        (
            r"'{path}' has 797 bytes, not a multiple of 8 \(4 channels x 2 bytes of int16\); "
            r"is the file truncated, or are n_channels and dtype right\?"
        ),
    ),
    "truncated.csv.gz": (
        "photometry-csv",
        {"event_cols": EVENTS},
        (
            r"'{path}' is truncated or corrupt: Compressed file ended before the end-of-stream "
            r"marker was reached; expected a complete gzip file"
        ),
    ),
}

GOOD = ["good_experiment_001", "good_experiment_002", "good_experiment_003"]


def message(pattern: str, path: Path, sidecar: Path | None = None) -> str:
    """A table's pattern for one file: its path (and its sidecar's) in place."""
    sidecar = path.with_suffix(".json") if sidecar is None else sidecar
    return pattern.replace("{path}", re.escape(str(path))).replace(
        "{sidecar}", re.escape(str(sidecar))
    )


def pipeline_config(
    input: dict[str, Any], out: Path, cluster: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The demo's pipeline with another input and output, OLS, no dashboards."""
    config: dict[str, Any] = yaml.safe_load(synthetic.DEMO_PIPELINE)
    config["input"] = input
    config["preprocess"]["fit"] = {"method": "ols"}
    config["output"] = {"url": str(out), "formats": ["zarr"], "dashboards": None}
    if cluster is None:
        del config["cluster"]
    else:
        config["cluster"] = cluster
    return config


def pipeline_file(folder: Path, *args: Any, **kwargs: Any) -> Path:
    """:func:`pipeline_config` written to ``folder/pipeline.yaml``."""
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(pipeline_config(*args, **kwargs), sort_keys=False))
    return path


def cli(argv: list[str]) -> tuple[int, str, str]:
    """``neurobatch ARGV`` in-process: its exit status, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    return status, out.getvalue(), err.getvalue()


def good_recordings(folder: Path, n: int, seed: int, **kwargs: Any) -> list[Path]:
    """``n`` good recordings (and their sidecars) in ``folder``, named ``good_*``."""
    written = synthetic.write_photometry_batch(folder / ".written", n_items=n, seed=seed, **kwargs)
    paths = []
    for path in written:
        for source in (path, path.with_suffix(".json")):
            shutil.copy(source, folder / f"good_{source.name}")
        paths.append(folder / f"good_{path.name}")
    shutil.rmtree(folder / ".written")
    return paths


# ---------------------------------------------------------------------------------------------
# The corpus as one batch
# ---------------------------------------------------------------------------------------------


@dataclass
class CorpusRun:
    status: int
    stdout: str
    stderr: str
    folder: Path
    out: Path
    items: pd.DataFrame


@pytest.fixture(scope="module")
def corpus_run(local_client: Client, tmp_path_factory: pytest.TempPathFactory) -> CorpusRun:
    """``neurobatch run`` over the corpus and 3 good recordings, on the session's cluster."""
    root = tmp_path_factory.mktemp("bad-corpus")
    folder = root / "batch"
    shutil.copytree(BAD, folder)
    good_recordings(folder, 3, seed=11, duration_s=120.0, fs=100.0)
    address = local_client.scheduler_info()["address"]
    path = pipeline_file(
        root,
        {"url": str(folder), "pattern": "*.csv"},
        root / "out",
        # the session's cluster is plain TCP on loopback: accepted when asked for
        cluster={"kind": "address", "address": address, "n_workers": 2, "allow_insecure": True},
    )
    status, stdout, stderr = cli(["run", str(path)])
    items = pd.read_parquet(root / "out" / "items.parquet").set_index("item_id")
    return CorpusRun(status, stdout, stderr, folder, root / "out", items)


def test_the_corpus_is_listed() -> None:
    csvs = {path.name for path in BAD.glob("*.csv")}
    assert csvs == set(BATCH_CASES)
    readme = (BAD / "README.md").read_text()
    for path in BAD.rglob("*"):
        if path.is_file() and path.name != "README.md":
            name = path.relative_to(BAD).as_posix()
            assert f"`{name}`" in readme, f"tests/data/bad/README.md does not list {name}"


def test_the_run_says_some_items_failed(corpus_run: CorpusRun) -> None:
    assert corpus_run.status == EXIT_SOME_FAILED, corpus_run.stderr
    n_bad = len(BATCH_CASES)
    summary = rf"{n_bad + len(GOOD)} item\(s\): {len(GOOD)} done, .*\b{n_bad} failed"
    assert re.search(summary, corpus_run.stdout), corpus_run.stdout
    assert sorted(corpus_run.items.index) == sorted([*GOOD, *(n[:-4] for n in BATCH_CASES)])
    assert corpus_run.items["status"].value_counts().to_dict() == {"failed": n_bad, "done": 3}


@pytest.mark.parametrize("name", sorted(BATCH_CASES))
def test_a_bad_file_fails_its_item_with_one_line(corpus_run: CorpusRun, name: str) -> None:
    row = corpus_run.items.loc[name.removesuffix(".csv")]
    assert row["status"] == "failed"
    error = str(row["error"])
    assert "\n" not in error
    pattern = message(BATCH_CASES[name], corpus_run.folder / name)
    assert re.fullmatch(pattern, error), f"{name}: {error!r}"
    # the item's log holds the same line
    log = (corpus_run.out / "logs" / f"{name.removesuffix('.csv')}.log").read_text()
    assert error in log


def test_the_good_files_are_done_with_trials(corpus_run: CorpusRun) -> None:
    good = corpus_run.items.loc[GOOD]
    assert (good["status"] == "done").all(), good["error"].to_dict()
    assert (good["n_trials"] > 0).all()
    trials = open_trials(str(corpus_run.out / "trials.zarr"))
    assert sorted(set(trials["item_id"].values.tolist())) == GOOD
    assert trials.sizes["trial"] == int(good["n_trials"].sum())


# ---------------------------------------------------------------------------------------------
# Other formats, sidecars in YAML, the sampling limit
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CUT_SHORT))
def test_an_input_cut_short_is_one_line(name: str) -> None:
    fmt, arguments, pattern = CUT_SHORT[name]
    path = BAD / name
    with pytest.raises(InputError) as error:
        load_recording(str(path), arguments, format=fmt)
    text = str(error.value)
    assert re.fullmatch(message(pattern, path), text), text


def test_an_invalid_yaml_sidecar_fails_its_item(local_client: Client, tmp_path: Path) -> None:
    folder = tmp_path / "data"
    shutil.copytree(BAD / "yaml", folder)
    (good,) = good_recordings(folder, 1, seed=21, duration_s=60.0, fs=50.0)
    good.with_suffix(".json").rename(good.with_suffix(".yaml"))  # JSON is YAML
    config = pipeline_config({"url": str(folder), "pattern": "*.csv"}, tmp_path / "out")
    config["loader"]["annotation"] = "{stem}.yaml"
    items = Pipeline(config).run(client=local_client, progress=False).items.set_index("item_id")
    assert items["status"].to_dict() == {"good_experiment_001": "done", "invalid_sidecar": "failed"}
    sidecar = folder / "invalid_sidecar.yaml"
    assert items.loc["invalid_sidecar", "error"] == (
        f"sidecar {str(sidecar)!r} is not valid YAML: line 3 column 4: expected ',' or ']', "
        "but got ':'"
    )


def test_the_sampling_limit_is_a_loader_argument() -> None:
    path = BAD / "nonuniform_sampling.csv"
    arguments = {"event_cols": EVENTS, "annotation": "{stem}.json"}
    for limit in (None, 60.0):  # never rejected, or a gap within the limit: only said
        with pytest.warns(NonUniformSamplingWarning, match=r"5000\.00% off"):
            ds = load_photometry_csv(str(path), {**arguments, "max_sampling_deviation": limit})
        assert ds.sizes["time"] == 20
    with pytest.raises(InputError, match=r"\(max_sampling_deviation 4900\.00%\)"):
        load_photometry_csv(str(path), {**arguments, "max_sampling_deviation": 49.0})


# ---------------------------------------------------------------------------------------------
# Inputs that are not what they seem: a time column in milliseconds, UTF-16, binary
# ---------------------------------------------------------------------------------------------


def test_a_time_column_in_milliseconds_fails_its_item_and_time_unit_fixes_it(
    local_client: Client, tmp_path: Path
) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    good_recordings(folder, 2, seed=51, duration_s=60.0, fs=100.0)
    # the attack: a 1 kHz recording whose time column is in milliseconds (read as 1 Hz)
    (recording,) = good_recordings(tmp_path / "fast", 1, seed=52, duration_s=40.0, fs=1000.0)
    frame = pd.read_csv(recording, index_col=0)
    frame["time"] = (frame["time"] * 1000).round().astype("int64")
    frame.to_csv(folder / "in_ms.csv")
    shutil.copy(recording.with_suffix(".json"), folder / "in_ms.json")
    # a UTF-16 export and a binary file named .csv, each with its sidecar
    text = (folder / "good_experiment_001.csv").read_text()
    (folder / "utf16.csv").write_bytes(text.encode("utf-16"))
    (folder / "binary.csv").write_bytes(np.random.default_rng(53).bytes(2048))
    for name in ("utf16", "binary"):
        shutil.copy(folder / "good_experiment_001.json", folder / f"{name}.json")

    config = pipeline_config({"url": str(folder), "pattern": "*.csv"}, tmp_path / "out")
    items = Pipeline(config).run(client=local_client, progress=False).items.set_index("item_id")
    assert items["status"].to_dict() == {
        "binary": "failed",
        "good_experiment_001": "done",
        "good_experiment_002": "done",
        "in_ms": "failed",
        "utf16": "failed",
    }
    assert (items.loc[["good_experiment_001", "good_experiment_002"], "n_trials"] > 0).all()
    errors = items["error"].dropna().to_dict()
    assert errors["in_ms"] == (
        f"{str(folder / 'in_ms.csv')!r}: sampling rate 1 Hz is implausible for a photometry "
        "recording (expected 5 Hz to 100 kHz); set loader.time_unit: ms if the time column is "
        "in milliseconds, or loader.plausible_rate_hz: [low, high] if 1 Hz is right"
    )
    assert errors["utf16"] == (
        f"{str(folder / 'utf16.csv')!r} is UTF-16 text (it starts with a UTF-16 byte-order "
        "mark); expected a UTF-8 CSV in PhoPro's layout: save it again as UTF-8 (in Excel: "
        "'CSV UTF-8')"
    )
    assert re.fullmatch(
        rf"{re.escape(repr(str(folder / 'binary.csv')))} is binary data \(byte 0x[0-9a-f]{{2}} "
        r"at offset \d+\); expected a UTF-8 CSV in PhoPro's layout",
        errors["binary"],
    ), errors["binary"]
    trials = open_trials(str(tmp_path / "out" / "trials.zarr"))
    assert sorted(set(trials["item_id"].values.tolist())) == [
        "good_experiment_001",
        "good_experiment_002",
    ]

    # the fix: the recording's own batch with time_unit: ms runs at 1 kHz
    alone = pipeline_config({"url": str(folder), "pattern": "in_ms.csv"}, tmp_path / "out-ms")
    alone["loader"]["time_unit"] = "ms"
    fixed = Pipeline(alone).run(client=local_client, progress=False).items.set_index("item_id")
    assert fixed.loc["in_ms", "status"] == "done", fixed.loc["in_ms", "error"]
    assert fixed.loc["in_ms", "n_trials"] > 0
    ingest = xr.open_zarr(tmp_path / "out-ms" / "items" / "in_ms" / "ingest")
    assert ingest.attrs["sampling_rate"] == pytest.approx(1000.0, rel=1e-9)
    np.testing.assert_allclose(ingest["time"].values, frame["time"].to_numpy() / 1000, rtol=0)


def test_an_item_whose_rate_is_far_off_the_batchs_fails_and_leaves_the_combined_outputs(
    local_client: Client, tmp_path: Path
) -> None:
    """Rates the lab allows (slow circadian recordings at 1 Hz), but one item is 200x off
    the other three: its time column was in milliseconds."""
    folder = tmp_path / "data"
    folder.mkdir()
    good_recordings(folder, 3, seed=54, duration_s=60.0, fs=200.0)
    (recording,) = good_recordings(tmp_path / "fast", 1, seed=55, duration_s=40.0, fs=200.0)
    frame = pd.read_csv(recording, index_col=0)
    frame["time"] = frame["time"] * 1000  # 200 Hz in ms, read in seconds: 0.2 Hz
    frame.to_csv(folder / "in_ms.csv")
    shutil.copy(recording.with_suffix(".json"), folder / "in_ms.json")
    config = pipeline_config({"url": str(folder), "pattern": "*.csv"}, tmp_path / "out")
    config["loader"]["plausible_rate_hz"] = [0.1, 1e5]
    config["preprocess"]["filter"] = None  # a 3 Hz low-pass would refuse 0.2 Hz on its own
    items = Pipeline(config).run(client=local_client, progress=False).items.set_index("item_id")
    assert items["status"].to_dict() == {
        "good_experiment_001": "done",
        "good_experiment_002": "done",
        "good_experiment_003": "done",
        "in_ms": "failed",
    }
    assert items.loc["in_ms", "error"] == (
        f"{str(folder / 'in_ms.csv')!r}: sampling rate 0.2 Hz is over 100x off the rates of 3 "
        "of the batch's 4 items (their median: 200 Hz); set loader.time_unit: ms if its time "
        "column is in milliseconds"
    )
    marker = json.loads((tmp_path / "out" / "items" / "in_ms" / FAILURE_MARKER).read_text())
    assert marker["error"] == items.loc["in_ms", "error"]
    trials = open_trials(str(tmp_path / "out" / "trials.zarr"))
    assert "in_ms" not in set(trials["item_id"].values.tolist())
    assert trials.sizes["trial"] == items["n_trials"].drop("in_ms").sum()


# ---------------------------------------------------------------------------------------------
# An output folder inside the input folder
# ---------------------------------------------------------------------------------------------


def test_symlinked_inputs_run_and_an_old_output_inside_the_input_is_not_input(
    local_client: Client, tmp_path: Path
) -> None:
    # the attack: 8 recordings, 2 of them symbolic links (a file, and one in a linked folder)
    written = good_recordings(tmp_path / "written", 8, seed=71, duration_s=60.0, fs=50.0)
    data, store = tmp_path / "data", tmp_path / "store"
    (store / "day").mkdir(parents=True)
    data.mkdir()
    for i, path in enumerate(written):
        place = data if i < 6 else store if i == 6 else store / "day"
        for source in (path, path.with_suffix(".json")):
            shutil.move(source, place / source.name)
    for name in ("good_experiment_007.csv", "good_experiment_007.json"):
        (data / name).symlink_to(store / name)
    (data / "day").symlink_to(store / "day", target_is_directory=True)
    (data / "day" / "loop").symlink_to(data, target_is_directory=True)
    # an earlier run wrote its output inside the input folder (its search did not reach it)
    first = pipeline_config({"url": str(data), "pattern": "*_001.csv"}, data / "results")
    first["output"]["formats"] = ["zarr", "csv"]
    earlier = Pipeline(first).run(client=local_client, progress=False).items
    assert earlier["status"].tolist() == ["done"]
    assert (data / "results" / "trials_obs.csv").exists()

    search = {"url": str(data), "pattern": "*.csv", "recursive": True}
    items = (
        Pipeline(pipeline_config(search, tmp_path / "out"))
        .run(client=local_client, progress=False)
        .items.set_index("item_id")
    )
    expected = [f"good_experiment_00{i}" for i in range(1, 8)] + ["day__good_experiment_008"]
    assert sorted(items.index) == sorted(expected)  # 8 of 8; nothing from results/
    assert (items["status"] == "done").all(), items["error"].dropna().to_dict()
    assert items.loc["day__good_experiment_008", "url"] == str(
        data / "day" / "good_experiment_008.csv"
    )
    log = (tmp_path / "out" / "logs" / "run.log").read_text()
    assert f"{data}/day/loop is a symbolic link to {data}, a folder that contains it" in log
    assert f"{data}/results is a neurobatch output folder" in log


@pytest.mark.parametrize("command", ["validate", "run"])
def test_an_output_inside_a_recursive_input_is_refused_in_one_line(
    tmp_path: Path, command: str
) -> None:
    folder = tmp_path / "data"
    good_recordings(folder, 1, seed=61, duration_s=20.0, fs=50.0)
    out = folder / "results"
    path = pipeline_file(tmp_path, {"url": str(folder), "pattern": "*.csv", "recursive": True}, out)
    status, stdout, stderr = cli([command, str(path)])
    assert status == 1, stdout
    assert stderr == (
        f"neurobatch {command}: error: {path}: output.url: {str(out)!r} is inside input.url "
        f"{str(folder)!r}, which is searched recursively: the next run would take its files "
        "as inputs; expected an output folder outside the input folder (put output.url "
        "elsewhere)\n"
    )
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# Inputs that are not there
# ---------------------------------------------------------------------------------------------


def test_a_missing_input_url_stops_the_run_in_one_line(tmp_path: Path) -> None:
    path = pipeline_file(tmp_path, {"url": "no-such-folder", "pattern": "*.csv"}, tmp_path / "out")
    status, _stdout, stderr = cli(["run", str(path)])
    assert status == 1
    assert stderr == (
        f"neurobatch run: error: input.url {str(tmp_path / 'no-such-folder')!r} does not exist\n"
    )
    assert not (tmp_path / "out" / "items.parquet").exists()


RESOLVER = """\
import os


def loader(url):
    if url.name == "vanishing.csv":
        os.remove(url)  # listed by discovery, gone before it is loaded
    return {"format": "photometry-csv", "event_cols": %r, "annotation": "{stem}.json"}
"""


def test_an_input_that_vanished_after_discovery_fails_its_item(
    local_client: Client, tmp_path: Path
) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    (good,) = good_recordings(folder, 1, seed=31, duration_s=60.0, fs=50.0)
    shutil.copy(good, folder / "vanishing.csv")
    shutil.copy(good.with_suffix(".json"), folder / "vanishing.json")
    (tmp_path / "resolver.py").write_text(RESOLVER % EVENTS)
    config = pipeline_config({"url": str(folder), "pattern": "*.csv"}, tmp_path / "out")
    config["loader"] = f"{tmp_path / 'resolver.py'}:loader"
    items = Pipeline(config).run(client=local_client, progress=False).items.set_index("item_id")
    assert items["status"].to_dict() == {"good_experiment_001": "done", "vanishing": "failed"}
    vanished = folder / "vanishing.csv"
    assert items.loc["vanishing", "error"] == f"input {str(vanished)!r} does not exist"


# ---------------------------------------------------------------------------------------------
# S3: a missing bucket, wrong credentials, an endpoint that does not answer
# ---------------------------------------------------------------------------------------------


def s3_input(url: str, options: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"url": url, "pattern": "*.csv", "storage_options": {**options, **extra}}


def test_s3_a_missing_bucket_is_one_line(s3_options: dict[str, Any], tmp_path: Path) -> None:
    path = pipeline_file(tmp_path, s3_input("s3://no-such-bucket/x", s3_options), tmp_path / "out")
    status, _, stderr = cli(["run", str(path)])
    assert status == 1
    assert stderr == (
        "neurobatch run: error: input.url 's3://no-such-bucket/x' does not exist: there is no "
        "bucket 'no-such-bucket' (or these credentials cannot see it); expected an existing "
        "bucket\n"
    )
    # a missing prefix in a bucket that exists says only that
    path = pipeline_file(
        tmp_path, s3_input("s3://lab/no-such-prefix", s3_options), tmp_path / "out"
    )
    status, _, stderr = cli(["run", str(path)])
    assert (status, stderr) == (
        1,
        "neurobatch run: error: input.url 's3://lab/no-such-prefix' does not exist\n",
    )


@contextlib.contextmanager
def moto_authentication(endpoint: str) -> Iterator[None]:
    """Make the moto server check every request's credentials against its IAM users."""
    import requests

    requests.post(f"{endpoint}/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()
    try:
        yield
    finally:
        requests.post(f"{endpoint}/moto-api/reset-auth", data=b"inf", timeout=10)


def test_s3_wrong_credentials_are_one_line(s3_options: dict[str, Any], tmp_path: Path) -> None:
    import boto3  # type: ignore[import-untyped]

    endpoint = s3_options["client_kwargs"]["endpoint_url"]
    fs = fsspec.filesystem("s3", skip_instance_cache=True, **s3_options)
    fs.pipe("lab/credentials/a.csv", b"time,signal\n0,1\n0.1,2\n")
    # an IAM user allowed to use S3, created while moto still accepts anything
    iam = boto3.client(
        "iam",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=s3_options["key"],
        aws_secret_access_key=s3_options["secret"],
    )
    iam.create_user(UserName="neurobatch-lab")
    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
    }
    iam.put_user_policy(
        UserName="neurobatch-lab", PolicyName="s3", PolicyDocument=json.dumps(policy)
    )
    access = iam.create_access_key(UserName="neurobatch-lab")["AccessKey"]
    right = {"key": access["AccessKeyId"], "secret": access["SecretAccessKey"]}
    options = {"client_kwargs": s3_options["client_kwargs"]}
    with moto_authentication(endpoint):
        path = pipeline_file(
            tmp_path, s3_input("s3://lab/credentials", options, **right), tmp_path / "out"
        )
        status, stdout, _ = cli(["discover", str(path)])
        assert status == 0 and "s3://lab/credentials/a.csv" in stdout
        for wrong in (
            {**right, "secret": "not-the-secret"},
            {"key": "AKIANOSUCHKEY0000000", "secret": "NoSuchSecret0123456789"},
        ):
            path = pipeline_file(
                tmp_path, s3_input("s3://lab/credentials", options, **wrong), tmp_path / "out"
            )
            status, _, stderr = cli(["run", str(path)])
            assert status == 1
            assert stderr == (
                "neurobatch run: error: input.url 's3://lab/credentials' cannot be listed: access "
                "denied (Forbidden); expected credentials allowed to list and read it "
                "(input.storage_options or the environment: are the key and secret right?)\n"
            )
            assert wrong["secret"] not in stderr


def test_s3_an_endpoint_that_does_not_answer_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a loopback port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    options = {
        "key": "AKIANEUROBATCH0TEST1",
        "secret": "x",
        "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
        "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1},
    }
    path = pipeline_file(tmp_path, s3_input("s3://lab/data", options), tmp_path / "out")
    status, _, stderr = cli(["run", str(path)])
    assert status == 1
    assert stderr == (
        "neurobatch run: error: input.url 's3://lab/data' cannot be listed: "
        f'EndpointConnectionError: Could not connect to the endpoint URL: "{endpoint}/lab/data"; '
        "expected a reachable store (check the endpoint)\n"
    )


# ---------------------------------------------------------------------------------------------
# Item ids never leave OUT
# ---------------------------------------------------------------------------------------------

SAFE_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


def test_item_ids_of_dotted_and_absolute_names_are_plain_names() -> None:
    fs = fsspec.filesystem("memory")
    for name in ("../../x.csv", "sub/../../y.csv", "./../z.csv", "/abs.csv", "ok.csv"):
        fs.pipe(f"/bad-ids/data/{name}", b"time,signal\n0,1\n0.1,2\n")
    manifest = discover(
        {"url": "memory://bad-ids/data", "pattern": ".*/*.csv", "recursive": True},
        {"format": "photometry-csv", "isosbestic_col": None},
    )
    urls = manifest["url"].tolist()
    assert "memory://bad-ids/data/../../x.csv" in urls
    assert "memory://bad-ids/data/sub/../../y.csv" in urls
    for item_id in manifest["item_id"]:
        assert SAFE_ID.fullmatch(item_id) and ".." not in item_id, item_id


def test_an_input_named_dot_dot_stays_inside_out(
    local_client: Client, s3_options: dict[str, Any], tmp_path: Path
) -> None:
    (good,) = good_recordings(tmp_path / "good", 1, seed=41, duration_s=60.0, fs=50.0)
    fs = fsspec.filesystem("s3", skip_instance_cache=True, **s3_options)
    fs.pipe("lab/escape/a/b/../../x.csv", good.read_bytes())  # a key, not a path: kept as is
    out = tmp_path / "deep" / "er" / "out"
    config = pipeline_config(
        {**s3_input("s3://lab/escape/a/b", s3_options), "pattern": "../../*.csv"}, out
    )
    config["loader"]["annotation"] = None
    before = set(tmp_path.rglob("*"))
    summary = Pipeline(config).run(client=local_client, progress=False)
    items = summary.items.set_index("item_id")
    assert items["url"].tolist() == ["s3://lab/escape/a/b/../../x.csv"]
    (item_id,) = items.index
    assert items.loc[item_id, "status"] == "done", items.loc[item_id, "error"]
    assert SAFE_ID.fullmatch(item_id) and ".." not in item_id
    assert (out / "items" / item_id / "trials").is_dir()
    # everything the run wrote is in OUT (or is one of the folders that lead to it)
    written = set(tmp_path.rglob("*")) - before
    outside = [p for p in written if p != out and out not in p.parents and p not in out.parents]
    assert outside == []
    assert fs.find("lab/escape") == ["lab/escape/a/b/../../x.csv"]
