"""The photometry pipeline end to end on a real LocalCluster, against NumPy written out."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import dask
import dask.threaded
import numpy as np
import pandas as pd
import pytest
import scipy.signal
import xarray as xr
from distributed import Client

from neurobatch import synthetic
from neurobatch.engine.monitor import Recorder
from neurobatch.engine.run import Pipeline, RunError
from neurobatch.io import trials_store

FS = 100.0
DURATION_S = 300.0
EVENTS = list(synthetic.EVENT_NAMES)
BOUNDS = (-8.0, 8.0)
TOLERANCE = (2.0, 4.0)


def _config(data: Path, out: Path, **changes: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "name": "test",
        "input": {"url": str(data), "pattern": "*.csv"},
        "loader": {
            "format": "photometry-csv",
            "event_cols": EVENTS,
            "annotation": "{stem}.json",
        },
        "preprocess": {"filter": {"cutoff_hz": 3.0, "order": 4}, "fit": "ols"},
        "trials": {
            "align_to": "trial_cue",
            "center_on": ["lever1", "lever2"],
            "bounds_s": list(BOUNDS),
            "tolerances_s": {"lever1": list(TOLERANCE), "lever2": list(TOLERANCE)},
        },
        "passdown_metadata": ["subject", "age"],
        "output": {"url": str(out), "formats": ["zarr", "parquet", "h5ad"]},
    }
    for key, value in changes.items():
        config[key] = value
    return config


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("batch")
    synthetic.write_photometry_batch(folder, n_items=3, duration_s=DURATION_S, fs=FS, seed=5)
    return folder


def _independent_trials(csv: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """Filter, OLS, dF/F and nearest windows written out with pandas, SciPy and NumPy."""
    table = pd.read_csv(csv)
    t = table["time"].to_numpy()
    fs = (t.size - 1) / (t[-1] - t[0])
    sos = scipy.signal.butter(4, 3.0 / (fs / 2), "low", output="sos")
    sig = scipy.signal.sosfiltfilt(sos, table["signal"].to_numpy())
    iso = scipy.signal.sosfiltfilt(sos, table["isosbestic"].to_numpy())
    b1, b0 = np.polyfit(iso, sig, 1)
    reference = b0 + b1 * iso
    dff = (sig - reference) / reference
    events = {name: t[table[name].to_numpy() == 1] for name in EVENTS}
    n = round((BOUNDS[1] - BOUNDS[0]) * fs)
    offsets = round(BOUNDS[0] * fs) + np.arange(n)
    windows, lever_offsets, dropped = [], [], 0
    for cue in events["trial_cue"]:
        found = [
            events[name][
                (events[name] >= cue + TOLERANCE[0]) & (events[name] <= cue + TOLERANCE[1])
            ]
            for name in ("lever1", "lever2")
        ]
        presses = np.concatenate(found)
        if presses.size > 1:
            dropped += 1
            continue
        centre = presses[0] if presses.size else cue
        index = int(np.argmin(np.abs(t - centre)))
        if index + offsets[0] < 0 or index + offsets[-1] >= t.size:
            dropped += 1
            continue
        windows.append(dff[index + offsets])
        lever_offsets.append(found[0][0] - t[index] if found[0].size else np.nan)
    return np.array(windows), np.array(lever_offsets), dropped


def test_pipeline_end_to_end(batch: Path, tmp_path: Path, local_client: Client) -> None:
    out = tmp_path / "out"
    with Recorder(local_client) as recorder:
        summary = Pipeline(_config(batch, out)).run(client=local_client, progress=False)
        tasks = recorder.poll()[1]
    assert summary.n_done == 3 and summary.n_failed == 0
    # only the items run on the cluster (in tasks of several small items, here one each:
    # four tasks per worker thread); the driver combines and exports on its own threads
    assert len(tasks) == 3 and tasks["key"].str.startswith("items-").all(), tasks["key"]
    trials = xr.open_zarr(out / "trials.zarr")
    csvs = sorted(batch.glob("*.csv"))
    expected = [_independent_trials(csv) for csv in csvs]
    assert trials.sizes["trial"] == sum(len(e[0]) for e in expected) == summary.n_trials
    # stored as float32 (preprocess.dtype): rounded by at most 2**-24 of each value
    np.testing.assert_allclose(
        trials["dff"].values, np.concatenate([e[0] for e in expected]), rtol=2**-24, atol=1e-9
    )
    np.testing.assert_allclose(
        trials["lever1"].values, np.concatenate([e[1] for e in expected]), atol=1e-9
    )
    # manifest order, per-trial columns, passdown metadata
    counts = [len(e[0]) for e in expected]
    assert trials["experiment_id"].values.tolist() == [
        csv.stem for csv, n in zip(csvs, counts, strict=True) for _ in range(n)
    ]
    sidecars = [json.loads(csv.with_suffix(".json").read_text()) for csv in csvs]
    assert trials["subject"].values.tolist() == [
        s["subject"] for s, n in zip(sidecars, counts, strict=True) for _ in range(n)
    ]
    # the double lever press drops that trial only, and says which
    items = pd.read_parquet(out / "items.parquet")
    first = items.iloc[0]
    assert first["n_dropped"] == expected[0][2] >= 2
    assert "lever1" in first["dropped"] and "lever2" in first["dropped"]
    assert items["fit_method"].tolist() == ["ols"] * 3
    # the obs table and the logs
    obs = pd.read_parquet(out / "trials_obs.parquet")
    assert len(obs) == trials.sizes["trial"]
    assert {"trial_num", "start_time", "stop_time", "trial_cue", "subject"} <= set(obs.columns)
    assert "dropped" in (out / "logs" / "experiment_001.log").read_text()
    assert "3 item(s): 3 done" in (out / "logs" / "run.log").read_text()


def test_the_driver_combines_on_its_own_threads(
    batch: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the cluster the run starts itself, appends compute on the driver, not as tasks."""
    schedulers = []
    append_trials = trials_store.append_trials

    def recording(*args: Any, **kwargs: Any) -> Any:
        schedulers.append(dask.base.get_scheduler())
        return append_trials(*args, **kwargs)

    monkeypatch.setattr(trials_store, "append_trials", recording)
    cluster = {"kind": "local", "n_workers": 1, "threads_per_worker": 1}
    summary = Pipeline(_config(batch, tmp_path / "out", cluster=cluster)).run(progress=False)
    assert summary.n_done == 3
    assert schedulers == [dask.threaded.get]  # the three small items in one append


def test_rerun_does_only_what_changed(batch: Path, tmp_path: Path, local_client: Client) -> None:
    out = tmp_path / "out"
    config = _config(batch, out)
    first = Pipeline(config).run(client=local_client, progress=False)
    before = xr.open_zarr(out / "trials.zarr").load()

    again = Pipeline(config).run(client=local_client, progress=False)
    assert again.n_skipped == 3 and again.n_done == 0
    xr.testing.assert_identical(xr.open_zarr(out / "trials.zarr").load(), before)

    config["trials"] = {**config["trials"], "bounds_s": [-4.0, 6.0]}
    changed = Pipeline(config).run(client=local_client, progress=False)
    assert changed.items["stages_run"].tolist() == ["trials"] * 3
    assert xr.open_zarr(out / "trials.zarr").sizes["rel_time"] == 1000
    assert first.n_trials <= changed.n_trials

    config["preprocess"] = {**config["preprocess"], "filter": {"cutoff_hz": 2.0, "order": 4}}
    refiltered = Pipeline(config).run(client=local_client, progress=False)
    assert refiltered.items["stages_run"].tolist() == ["preprocess,trials"] * 3


def test_bad_items_fail_alone_with_one_clear_line(
    batch: Path, tmp_path: Path, local_client: Client
) -> None:
    data = tmp_path / "data"
    shutil.copytree(batch, data)
    good = sorted(data.glob("*.csv"))
    # a recording missing its signal column
    table = pd.read_csv(good[0])
    table.drop(columns="signal").to_csv(data / "experiment_no_signal.csv", index=False)
    shutil.copy(good[0].with_suffix(".json"), data / "experiment_no_signal.json")
    # a malformed sidecar
    shutil.copy(good[1], data / "experiment_bad_sidecar.csv")
    (data / "experiment_bad_sidecar.json").write_text('{"subject": "m1",, "age": 3}')
    # a recording at another sampling rate (50 Hz among 100 Hz ones)
    synthetic.write_photometry_batch(data / "slow", n_items=1, duration_s=DURATION_S, fs=50.0)
    (data / "slow" / "experiment_001.csv").rename(data / "experiment_slow.csv")
    (data / "slow" / "experiment_001.json").rename(data / "experiment_slow.json")
    shutil.rmtree(data / "slow")

    out = tmp_path / "out"
    summary = Pipeline(_config(data, out)).run(client=local_client, progress=False)
    items = summary.items.set_index("item_id")
    assert summary.n_failed == 2 and summary.n_done == 4
    assert str(data / "experiment_no_signal.csv") in items.loc["experiment_no_signal", "error"]
    assert "signal" in items.loc["experiment_no_signal", "error"]
    assert "\n" not in items.loc["experiment_no_signal", "error"]
    assert "experiment_bad_sidecar.json" in items.loc["experiment_bad_sidecar", "error"]
    # the 50 Hz item is kept, resampled onto the common grid, and the run log says so
    trials = xr.open_zarr(out / "trials.zarr")
    assert "experiment_slow" in set(trials["experiment_id"].values)
    assert trials.sizes["rel_time"] == round((BOUNDS[1] - BOUNDS[0]) * FS)
    assert "experiment_slow: its trials" in (out / "logs" / "run.log").read_text()
    assert "Traceback" in (out / "logs" / "experiment_no_signal.log").read_text()


def test_every_item_failing_fails_the_run(tmp_path: Path, local_client: Client) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "empty.csv").write_text("")
    with pytest.raises(RunError, match="every item failed") as caught:
        Pipeline(_config(data, tmp_path / "out")).run(client=local_client, progress=False)
    assert caught.value.summary.n_failed == 1
