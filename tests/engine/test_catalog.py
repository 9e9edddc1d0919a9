"""The catalog (OUT/catalog.duckdb) of real runs on the session's LocalCluster, against pandas
and NumPy on the Parquet tables, the trials store and the STA stores."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from distributed import Client

from neurobatch import synthetic
from neurobatch.cli import main
from neurobatch.engine.catalog import build_catalog, sta_strength
from neurobatch.engine.catalog_query import TABLES, query
from neurobatch.engine.layout import OutputLayout
from neurobatch.engine.ledger import item_states
from neurobatch.engine.run import Pipeline
from neurobatch.errors import InputError, InputNotFoundError

FS = 50.0
QUESTION = """
    SELECT s.subject_id, s.sex, t.align_event AS label, count(*) AS n_trials,
           avg(t.peak_dff) AS mean_peak_dff
    FROM trial t JOIN item i USING (item_id) JOIN subject s USING (subject_id)
    GROUP BY ALL ORDER BY s.subject_id, label
"""
"""The README's question: the mean peak dF/F per subject and trial label."""


def _config(data: Path, out: Path) -> dict[str, Any]:
    return {
        "name": "catalog",
        "input": {"url": str(data), "pattern": "*.csv"},
        "loader": {
            "format": "photometry-csv",
            "event_cols": list(synthetic.EVENT_NAMES),
            "annotation": "{stem}.json",
        },
        "preprocess": {"filter": {"cutoff_hz": 3.0, "order": 4}, "fit": "ols"},
        "trials": {"align_to": ["lever1", "lever2"], "bounds_s": [-2.0, 4.0]},
        "passdown_metadata": ["subject", "sex", "age"],
        "output": {"url": str(out), "formats": ["zarr", "parquet"]},
    }


@pytest.fixture(scope="module")
def photometry_out(tmp_path_factory: pytest.TempPathFactory, local_client: Client) -> Path:
    folder = tmp_path_factory.mktemp("catalog")
    synthetic.write_photometry_batch(folder / "data", n_items=4, duration_s=120.0, fs=FS, seed=2)
    out = folder / "out"
    summary = Pipeline(_config(folder / "data", out)).run(client=local_client, progress=False)
    assert summary.n_done == 4
    return out


def _table(out: Path | str, name: str, **storage_options: Any) -> pd.DataFrame:
    return query(OutputLayout(str(out), storage_options), f"SELECT * FROM {name}")


def _peaks(out: Path) -> pd.DataFrame:
    """The obs table with each trial's peak and mean dF/F, by pandas and NumPy."""
    obs = pd.read_parquet(out / "trials_obs.parquet")
    dff = xr.open_zarr(out / "trials.zarr")["dff"].to_numpy().astype(np.float64)
    return obs.assign(peak_dff=dff.max(axis=1), mean_dff=dff.mean(axis=1))


def _nb(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``neurobatch ARGS``: the exit status, stdout and stderr."""
    status = main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


def test_the_trial_table_is_the_obs_table_with_each_windows_peak_and_mean(
    photometry_out: Path,
) -> None:
    trial = _table(photometry_out, "trial")
    expected = _peaks(photometry_out)
    assert len(trial) == len(expected) > 10
    pd.testing.assert_frame_equal(trial[list(expected.columns)], expected, check_dtype=False)
    assert list(trial.columns) == list(expected.columns)
    # missing event offsets are SQL NULL, which AVG and COUNT skip
    n = query(OutputLayout(str(photometry_out)), "SELECT count(lever1) AS n FROM trial")
    assert n["n"].item() == expected["lever1"].notna().sum() < len(expected)


def test_the_readme_question_equals_pandas_on_the_parquet_and_trials_store(
    photometry_out: Path,
) -> None:
    answer = query(OutputLayout(str(photometry_out)), QUESTION)
    trials = _peaks(photometry_out)
    sidecars = {
        path.stem: json.loads(path.read_text())
        for path in (photometry_out.parent / "data").glob("*.json")
    }
    trials["sex"] = [sidecars[i]["sex"] for i in trials["item_id"]]
    expected = (
        trials.groupby(["subject", "sex", "align_event"])["peak_dff"]
        .agg(n_trials="size", mean_peak_dff="mean")
        .reset_index()
        .rename(columns={"subject": "subject_id", "align_event": "label"})
    )
    assert set(expected["label"]) == {"lever1", "lever2"}
    pd.testing.assert_frame_equal(answer, expected, check_dtype=False, rtol=1e-12)


def test_subjects_sessions_items_and_stages_with_their_keys(photometry_out: Path) -> None:
    layout = OutputLayout(str(photometry_out))
    sidecars = [
        json.loads(p.read_text()) for p in sorted((photometry_out.parent / "data").glob("*.json"))
    ]
    subject = _table(photometry_out, "subject")
    assert subject["subject_id"].tolist() == [s["subject"] for s in sidecars]
    assert subject["sex"].tolist() == [s["sex"] for s in sidecars]
    session = _table(photometry_out, "session")
    assert session["session_id"].tolist() == [f"{s['subject']}/{s['session']}" for s in sidecars]
    assert session["age"].tolist() == [s["age"] for s in sidecars]
    # items: the manifest, the items table and the ledger's state
    item = _table(photometry_out, "item")
    outcomes = pd.read_parquet(photometry_out / "items.parquet")
    assert item["item_id"].tolist() == outcomes["item_id"].tolist()
    pd.testing.assert_series_equal(item["n_trials"], outcomes["n_trials"], check_dtype=False)
    assert item["state"].tolist() == ["done"] * 4
    states = item_states(str(photometry_out)).melt(
        id_vars="item_id", value_vars=["ingest", "preprocess", "trials"], var_name="stage"
    )
    stage_run = _table(photometry_out, "stage_run")
    got = stage_run.set_index(["item_id", "stage"])["state"].sort_index()
    assert got.to_dict() == states.set_index(["item_id", "stage"])["value"].sort_index().to_dict()
    details = json.loads(stage_run.query("stage == 'trials'")["details"].iloc[0])
    assert details["n_trials"] == outcomes["n_trials"].iloc[0]
    # every key is unique, and declared
    keys = {
        "subject": ["subject_id"],
        "session": ["session_id"],
        "item": ["item_id"],
        "stage_run": ["item_id", "stage"],
        "trial": ["item_id", "trial_num"],
        "unit": ["item_id", "unit"],
    }
    for table, key in keys.items():
        rows = _table(photometry_out, table)
        assert not rows.duplicated(key).any(), table
    declared = query(
        layout,
        "SELECT table_name, constraint_column_names AS columns FROM duckdb_constraints() "
        "WHERE constraint_type = 'PRIMARY KEY'",
    )
    primary = zip(declared["table_name"], declared["columns"], strict=True)
    assert {table: list(columns) for table, columns in primary} == keys
    foreign = query(
        layout,
        "SELECT DISTINCT table_name FROM duckdb_constraints() WHERE constraint_type = 'FOREIGN KEY'",
    )
    assert set(foreign["table_name"]) == {"session", "item", "stage_run", "trial", "unit"}


def test_neurobatch_catalog_rebuilds_it_identical(
    photometry_out: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = {name: _table(photometry_out, name) for name in TABLES}
    status, out, err = _nb(capsys, "catalog", str(photometry_out))
    assert status == 0, err
    counts = ", ".join(f"{name} {len(before[name])}" for name in TABLES)
    assert out == f"{photometry_out}/catalog.duckdb: {counts}\n"
    for name in TABLES:
        pd.testing.assert_frame_equal(_table(photometry_out, name), before[name])
    assert not list(photometry_out.glob(".catalog-*"))  # nothing left beside it


def test_query_prints_a_table_csv_or_json(
    photometry_out: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sql = "SELECT item_id, count(*) AS n FROM trial GROUP BY item_id ORDER BY item_id"
    expected = pd.read_parquet(photometry_out / "trials_obs.parquet").groupby("item_id").size()
    status, out, _ = _nb(capsys, "query", str(photometry_out), sql, "--format", "csv")
    assert status == 0
    assert out == "item_id,n\n" + "".join(f"{i},{n}\n" for i, n in expected.items())
    _, out, _ = _nb(capsys, "query", str(photometry_out), sql, "--format", "json")
    assert json.loads(out) == [{"item_id": i, "n": n} for i, n in expected.items()]
    _, out, _ = _nb(capsys, "query", str(photometry_out), sql)
    lines = out.splitlines()
    assert [line.split()[1:4] for line in lines[3:-2]] == [
        [i, "│", str(n)] for i, n in expected.items()
    ]
    assert lines[-1] == "4 row(s)"


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELEC 1", 'Parser Error: syntax error at or near "SELEC"'),
        ("SELECT nope FROM trial", 'Referenced column "nope" not found'),
        ("SELECT * FROM trials", "Table with name trials does not exist"),
        ("DROP TABLE trial", "read-only mode"),
    ],
    ids=["syntax", "column", "table", "write"],
)
def test_a_bad_query_is_one_line_and_exit_1(
    photometry_out: Path, sql: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, line = _nb(capsys, "query", str(photometry_out), sql)
    assert status == 1 and out == ""
    assert line.count("\n") == 1 and line.startswith("neurobatch query: error: "), line
    assert message in line and "tables are subject, session, item, stage_run, trial, unit" in line
    with pytest.raises(InputError, match=message):
        query(OutputLayout(str(photometry_out)), sql)
    assert _table(photometry_out, "trial").shape[0] > 0  # still there


def test_a_folder_without_a_catalog_says_to_build_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = _nb(capsys, "query", str(tmp_path), "SELECT 1")
    assert status == 1
    assert err == (
        f"neurobatch query: error: {tmp_path} has no catalog ({tmp_path}/catalog.duckdb); "
        f"build it with: neurobatch catalog {tmp_path}\n"
    )
    with pytest.raises(InputNotFoundError, match=r"no manifest\.parquet"):
        build_catalog(OutputLayout(str(tmp_path)))


_READER = """
import sys, duckdb
con = duckdb.connect(sys.argv[1], read_only=True)
print(con.execute("SELECT count(*) FROM item").fetchone()[0], flush=True)
sys.stdin.readline()
print(con.execute("SELECT count(*) FROM item").fetchone()[0], flush=True)
"""


def test_a_rerun_that_adds_items_updates_it_and_an_open_reader_keeps_the_old_one(
    photometry_out: Path, tmp_path: Path, local_client: Client
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for path in sorted((photometry_out.parent / "data").iterdir())[:4]:  # two recordings
        shutil.copy(path, data / path.name)
    out = tmp_path / "out"
    Pipeline(_config(data, out)).run(client=local_client, progress=False)
    assert _table(out, "item")["item_id"].tolist() == ["experiment_001", "experiment_002"]
    # another process holds the catalog open, read-only
    reader = subprocess.Popen(
        [sys.executable, "-c", _READER, str(out / "catalog.duckdb")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert reader.stdout is not None and reader.stdin is not None
    try:
        assert reader.stdout.readline() == "2\n"
        # a third recording, and one that fails (no signal column)
        for path in sorted((photometry_out.parent / "data").iterdir())[4:6]:
            shutil.copy(path, data / path.name)
        table = pd.read_csv(data / "experiment_001.csv").drop(columns="signal")
        table.to_csv(data / "experiment_bad.csv", index=False)
        summary = Pipeline(_config(data, out)).run(client=local_client, progress=False)
        assert (summary.n_done, summary.n_skipped, summary.n_failed) == (1, 2, 1)
        reader.stdin.write("\n")
        reader.stdin.flush()
        assert reader.stdout.readline() == "2\n"  # the file it opened, whole
    finally:
        reader.communicate(timeout=30)
    item = _table(out, "item").set_index("item_id")
    assert item["state"].to_dict() == {
        "experiment_001": "done",
        "experiment_002": "done",
        "experiment_003": "done",
        "experiment_bad": "failed",
    }
    failed = query(
        OutputLayout(str(out)), "SELECT stage, error FROM stage_run WHERE state = 'failed'"
    )
    assert failed["stage"].tolist() == ["ingest"] and "signal" in failed["error"].item()
    assert item.loc["experiment_bad", "subject_id"] is None
    trial = _table(out, "trial")
    expected = _peaks(out)
    assert set(trial["item_id"]) == {"experiment_001", "experiment_002", "experiment_003"}
    pd.testing.assert_frame_equal(trial, expected, check_dtype=False)


def test_an_object_store_catalog_is_uploaded_whole_and_queried_from_a_copy(
    photometry_out: Path, s3_options: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    fs = fsspec.filesystem("s3", **s3_options)
    fs.put(str(photometry_out), "lab/catalog-out", recursive=True)
    fs.rm("lab/catalog-out/catalog.duckdb")
    layout = OutputLayout("s3://lab/catalog-out", s3_options)
    with pytest.raises(InputNotFoundError, match="neurobatch catalog s3://lab/catalog-out"):
        query(layout, "SELECT 1")
    counts = build_catalog(layout)
    assert counts == {name: len(_table(photometry_out, name)) for name in TABLES}
    names = [path.rsplit("/", 1)[-1] for path in fs.ls("lab/catalog-out")]
    assert [name for name in names if "catalog" in name] == ["catalog.duckdb"]
    pd.testing.assert_frame_equal(
        query(layout, QUESTION), query(OutputLayout(str(photometry_out)), QUESTION)
    )
    options = json.dumps(s3_options)
    status, out, err = _nb(
        capsys,
        "query",
        "s3://lab/catalog-out",
        "SELECT count(*) AS n FROM trial",
        "--format",
        "csv",
        "--storage-options",
        options,
    )
    assert status == 0, err
    assert out == f"n\n{counts['trial']}\n"


def test_the_units_of_an_sta_run_against_numpy_on_each_sta_store(
    tmp_path: Path, local_client: Client
) -> None:
    planted = synthetic.receptive_field_movie(
        n_frames=900, height=4, width=5, n_units=4, n_lags=4, seed=3, n_silent=1
    )
    synthetic.write_movie(planted.movie, str(tmp_path / "data" / "retina.zarr"))
    config = {
        "name": "sta",
        "kind": "sta",
        "input": {"url": str(tmp_path / "data"), "pattern": "*.zarr", "target": "folder"},
        "loader": {"format": "zarr"},
        "sta": {"n_lags": 4},
        "output": {"url": str(tmp_path / "out")},
    }
    Pipeline(config).run(client=local_client, progress=False)
    unit = _table(tmp_path / "out", "unit")
    result = xr.open_zarr(tmp_path / "out" / "items" / "retina" / "sta").load()
    sta = result["sta"].to_numpy().astype(np.float64)
    assert unit["unit"].tolist() == result["unit"].to_numpy().tolist()
    assert unit["n_spikes"].tolist() == result["n_spikes"].to_numpy().tolist()
    for i in range(sta.shape[0]):
        values = sta[i]
        if np.isnan(values).all():  # the silent unit: NULL
            assert unit[["sta_peak", "sta_z"]].iloc[i].isna().all()
            continue
        deviation = np.abs(values - values.mean())
        lag, y, x = np.unravel_index(deviation.argmax(), values.shape)
        assert unit["sta_peak"].iloc[i] == pytest.approx(deviation.max(), rel=1e-12)
        assert unit["sta_z"].iloc[i] == pytest.approx(deviation.max() / values.std(), rel=1e-12)
        assert (unit["peak_lag"].iloc[i], unit["peak_y"].iloc[i], unit["peak_x"].iloc[i]) == (
            int(result["lag"][lag]),
            y,
            x,
        )
    # the README's question: the units whose STA is strongest
    strongest = query(
        OutputLayout(str(tmp_path / "out")),
        "SELECT unit FROM unit WHERE sta_z IS NOT NULL ORDER BY sta_z DESC",
    )
    flat = sta.reshape(len(sta), -1)
    with np.errstate(invalid="ignore"):
        z = np.abs(flat - flat.mean(axis=1, keepdims=True)).max(axis=1) / flat.std(axis=1)
    order = [int(result["unit"][i]) for i in np.argsort(-z) if not np.isnan(z[i])]
    assert strongest["unit"].tolist() == order
    assert _table(tmp_path / "out", "trial").empty


def test_sta_strength_of_a_single_bright_pixel() -> None:
    sta = np.zeros((1, 3, 2, 2))
    sta[0, 2, 1, 0] = 12.0
    out = sta_strength(sta)
    mean = 12.0 / 12
    assert out["sta_peak"][0] == pytest.approx(12.0 - mean)
    assert out["sta_z"][0] == pytest.approx((12.0 - mean) / np.std(sta[0]))
    assert (out["peak_lag"], out["peak_y"], out["peak_x"]) == ([2], [1], [0])


def test_a_catalog_that_cannot_be_built_is_a_warning_not_a_failed_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from neurobatch.engine.catalog import refresh_catalog

    (tmp_path / "manifest.parquet").write_bytes(b"not parquet")
    with caplog.at_level("WARNING", logger="neurobatch.engine.catalog"):
        refresh_catalog(OutputLayout(str(tmp_path)))
    (record,) = caplog.records
    assert record.getMessage().startswith(f"the catalog {tmp_path}/catalog.duckdb was not rebuilt")
    assert f"neurobatch catalog {tmp_path}" in record.getMessage()
    assert not (tmp_path / "catalog.duckdb").exists()
    assert not list(tmp_path.glob(".catalog-*"))


def test_without_the_obs_parquet_the_trials_store_gives_the_same_table(
    photometry_out: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    shutil.copytree(photometry_out, out)
    (out / "trials_obs.parquet").unlink()  # a run with formats [zarr]
    build_catalog(OutputLayout(str(out)))
    pd.testing.assert_frame_equal(_table(out, "trial"), _table(photometry_out, "trial"))


def test_an_obs_parquet_of_another_run_is_refused_naming_the_row(
    photometry_out: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    shutil.copytree(photometry_out, out)
    obs = pd.read_parquet(out / "trials_obs.parquet")
    obs.iloc[::-1].to_parquet(out / "trials_obs.parquet", index=False)
    with pytest.raises(
        InputError, match=r"trials_obs\.parquet: row 0 has item_id 'experiment_004'"
    ):
        build_catalog(OutputLayout(str(out)))
    before = _table(photometry_out, "trial")
    assert len(_table(out, "trial")) == len(before)  # the copied catalog stays as it was
