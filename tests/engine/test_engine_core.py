"""The engine core: complete keys, user stages, metadata flow, --only, the verified store.

Every case is checked against an uninterrupted reference: a fresh run of the same pipeline
(with the same edit) into a folder of its own, whose combined trials the case must equal.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml
from distributed import Client

import neurobatch
from neurobatch.cli import main
from neurobatch.engine.ledger import item_states
from neurobatch.engine.run import Pipeline
from neurobatch.engine.stages import stage
from neurobatch.io.commit import read_commit
from neurobatch.io.trials_store import open_trials
from runs import assert_same_results

ITEMS = ("experiment_001", "experiment_002", "experiment_003")


@pytest.fixture
def batch(photometry_demo: Path, tmp_path: Path) -> Path:
    """A copy of the demo's inputs, and its pipeline file (no figures) writing to tmp/out."""
    shutil.copytree(photometry_demo.parent / "data", tmp_path / "data")
    pipeline = yaml.safe_load(photometry_demo.read_text())
    pipeline["input"]["url"] = str(tmp_path / "data")
    pipeline["output"] |= {"url": str(tmp_path / "out"), "dashboards": None}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(pipeline, sort_keys=False))
    return path


def _edit(path: Path, **changes: Any) -> Path:
    """The pipeline file with top-level sections changed (merged one level deep)."""
    pipeline = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        pipeline[key] = pipeline.get(key, {}) | value if isinstance(value, dict) else value
    path.write_text(yaml.safe_dump(pipeline, sort_keys=False))
    return path


def _reference(path: Path, client: Client, **run: Any) -> Path:
    """A fresh run of the pipeline file as it is now, into a folder of its own."""
    pipeline = yaml.safe_load(path.read_text())
    out = path.parent / f"reference-{len(list(path.parent.glob('reference-*')))}"
    pipeline["output"]["url"] = str(out)
    fresh = path.parent / f"{out.name}.yaml"
    fresh.write_text(yaml.safe_dump(pipeline, sort_keys=False))
    Pipeline.from_file(fresh, stages=run.pop("stages", ())).run(client=client, **run)
    return out


def _stages_run(summary: Any) -> dict[str, str]:
    return summary.items.set_index("item_id")["stages_run"].to_dict()


def test_a_sidecar_edit_redoes_that_item_from_ingest(batch: Path, local_client: Client) -> None:
    Pipeline.from_file(batch).run(client=local_client)
    sidecar = batch.parent / "data" / "experiment_002.json"
    sidecar.write_text(json.dumps(json.loads(sidecar.read_text()) | {"subject": "renamed"}))

    summary = Pipeline.from_file(batch).run(client=local_client)
    assert _stages_run(summary) == {
        "experiment_001": "",
        "experiment_002": "ingest,preprocess,trials",
        "experiment_003": "",
    }
    out = batch.parent / "out"
    trials = open_trials(str(out / "trials.zarr"))
    subjects = pd.Series(trials["subject"].to_numpy(), index=trials["item_id"].to_numpy())
    assert set(subjects["experiment_002"]) == {"renamed"}
    assert_same_results(out, _reference(batch, local_client), rerun=True)


HOOKS = """
def trim(recording):
    return recording.sel(time=slice(SECONDS, None))


def tag(trials):
    return trials.assign_coords(label=("trial", ["TAG"] * trials.sizes["trial"]))


def mean_signal(processed):
    return processed.assign_attrs(processed_signal_mean=float(processed.dff.mean()))
"""


def _hooks(folder: Path, seconds: float, label: str) -> str:
    path = folder / "hooks.py"
    path.write_text(HOOKS.replace("SECONDS", repr(seconds)).replace("TAG", label))
    return str(path)


def test_hook_edits_redo_what_depends_on_them(batch: Path, local_client: Client) -> None:
    hooks = _hooks(batch.parent, 1.0, "first")
    _edit(
        batch,
        hooks={"post_load": f"{hooks}:trim", "post_trials": f"{hooks}:tag"},
        passdown_metadata=["source", "subject"],
    )
    Pipeline.from_file(batch).run(client=local_client)

    # post_trials edited: trials only
    _hooks(batch.parent, 1.0, "second")
    summary = Pipeline.from_file(batch).run(client=local_client)
    assert set(_stages_run(summary).values()) == {"trials"}
    out = batch.parent / "out"
    assert set(open_trials(str(out / "trials.zarr"))["label"].to_numpy()) == {"second"}
    assert_same_results(out, _reference(batch, local_client), rerun=True)

    # post_load edited (100 s trimmed instead of 1 s): preprocess and trials, not ingest
    _hooks(batch.parent, 100.0, "second")
    summary = Pipeline.from_file(batch).run(client=local_client)
    assert set(_stages_run(summary).values()) == {"preprocess,trials"}
    trials = open_trials(str(out / "trials.zarr"))
    assert float(trials["start_time"].min()) >= 100.0 - 8.0
    assert_same_results(out, _reference(batch, local_client), rerun=True)


def test_metadata_set_by_a_hook_reaches_the_trial_table(batch: Path, local_client: Client) -> None:
    """The tutorial's post_preprocess hook: its attribute is passed down, not NaN."""
    hooks = _hooks(batch.parent, 0.0, "x")
    _edit(
        batch,
        hooks={"post_preprocess": f"{hooks}:mean_signal"},
        passdown_metadata=["source", "subject", "processed_signal_mean"],
    )
    Pipeline.from_file(batch).run(client=local_client)
    out = batch.parent / "out"
    trials = open_trials(str(out / "trials.zarr")).load()
    for item in ITEMS:
        processed = xr.open_zarr(out / "items" / item / "preprocess")
        expected = float(processed.dff.mean())
        values = trials["processed_signal_mean"].where(trials["item_id"] == item, drop=True)
        # the hook saw the float64 signal; the store keeps it as float32 (preprocess.dtype)
        np.testing.assert_allclose(values, expected, rtol=1e-6)


STAGE = '''
import numpy as np
import xarray as xr


def peak_auc(trials, window_s=(0.0, 2.0)):
    """Per-trial peak and area under the curve of dF/F in a window after the centre."""
    inside = trials.dff.sel(rel_time=slice(*window_s))
    dt = float(trials.rel_time[1] - trials.rel_time[0])
    return xr.Dataset(
        {"peak": inside.max("rel_time"), "auc": inside.sum("rel_time") * dt},
        coords={"trial_num": trials.trial_num},
    )
'''


def _independent_peak_auc(trials: xr.Dataset, lo: float, hi: float) -> tuple[Any, Any]:
    rel = trials["rel_time"].to_numpy()
    inside = (rel >= lo) & (rel <= hi)
    values = trials["dff"].to_numpy()[:, inside]
    return values.max(axis=1), values.sum(axis=1) * (rel[1] - rel[0])


def test_a_user_stage_from_the_file(batch: Path, local_client: Client) -> None:
    code = batch.parent / "measures.py"
    code.write_text(STAGE)
    run = f"{code}:peak_auc"
    _edit(batch, stages=[{"name": "peak_auc", "run": run, "params": {"window_s": [0, 2]}}])
    summary = Pipeline.from_file(batch).run(client=local_client)
    assert set(_stages_run(summary).values()) == {"ingest,preprocess,trials,peak_auc"}
    out = batch.parent / "out"
    for item in ITEMS:
        result = xr.open_zarr(out / "items" / item / "peak_auc")
        trials = xr.open_zarr(out / "items" / item / "trials")
        peak, auc = _independent_peak_auc(trials, 0.0, 2.0)
        np.testing.assert_array_equal(result["peak"], peak)
        # float32 windows: the sums differ in their order of addition by float32 roundings
        np.testing.assert_allclose(result["auc"], auc, rtol=1e-6, atol=1e-9)
        record = read_commit(str(out / "items" / item / "peak_auc"))
        assert record is not None and record["arrays"]["peak"]["shape"] == [len(peak)]
    # recorded in provenance like a built-in
    processing = json.loads((out / "processing.json").read_text())
    names = [p["name"] for p in processing["data_processes"]]
    assert names == ["ingest", "preprocess", "trials", "peak_auc", "combine"]
    assert processing["dependency_graph"]["peak_auc"] == ["trials"]
    assert "peak_auc" in (out / "logs" / "experiment_001.log").read_text()

    # resumed: nothing to do; new params: only the stage
    assert set(_stages_run(Pipeline.from_file(batch).run(client=local_client)).values()) == {""}
    _edit(batch, stages=[{"name": "peak_auc", "run": run, "params": {"window_s": [0, 4]}}])
    summary = Pipeline.from_file(batch).run(client=local_client)
    assert set(_stages_run(summary).values()) == {"peak_auc"}
    # its code edited: only the stage again
    code.write_text(STAGE.replace("inside.sum", "1.0 * inside.sum"))
    summary = Pipeline.from_file(batch).run(client=local_client)
    assert set(_stages_run(summary).values()) == {"peak_auc"}
    assert_same_results(out, _reference(batch, local_client), rerun=True)


def test_a_user_stage_from_python(batch: Path, local_client: Client) -> None:
    @neurobatch.stage(needs=["trials"], params={"window_s": (0.0, 1.0)})
    def peak(trials: xr.Dataset, *, window_s: tuple[float, float]) -> xr.Dataset:
        return trials.dff.sel(rel_time=slice(*window_s)).max("rel_time").to_dataset(name="peak")

    summary = Pipeline.from_file(batch, stages=[peak]).run(client=local_client)
    assert set(_stages_run(summary).values()) == {"ingest,preprocess,trials,peak"}
    out = batch.parent / "out"
    for item in ITEMS:
        trials = xr.open_zarr(out / "items" / item / "trials")
        expected, _ = _independent_peak_auc(trials, 0.0, 1.0)
        result = xr.open_zarr(out / "items" / item / "peak")
        np.testing.assert_array_equal(result["peak"], expected)
    again = Pipeline.from_file(batch, stages=[peak]).run(client=local_client)
    assert again.n_skipped == len(ITEMS)
    with pytest.raises(neurobatch.errors.ConfigError, match="takes no argument 'windw_s'"):
        stage(peak.function, params={"windw_s": (0, 1)})


def test_only_refreshes_one_item_inside_the_combined_outputs(
    batch: Path, local_client: Client
) -> None:
    Pipeline.from_file(batch).run(client=local_client)
    _edit(batch, trials={"bounds_s": [-4, 4]})
    summary = Pipeline.from_file(batch).run(client=local_client, only=["experiment_002"])
    assert list(summary.items["item_id"]) == ["experiment_002"]
    out = batch.parent / "out"
    trials = open_trials(str(out / "trials.zarr"))
    assert sorted(set(trials["item_id"].to_numpy())) == list(ITEMS)  # none dropped
    items = pd.read_parquet(out / "items.parquet")
    assert list(items["item_id"]) == list(ITEMS)
    obs = pd.read_parquet(out / "trials_obs.parquet")
    assert sorted(set(obs["item_id"])) == list(ITEMS)
    # the refreshed item has the new windows: its trials were resampled onto the old grid
    # of experiment_001; a full run then gives exactly the fresh reference
    Pipeline.from_file(batch).run(client=local_client)
    assert_same_results(out, _reference(batch, local_client), rerun=True)


def _chunk(out: Path, item: str, stage_name: str, array: str) -> Path:
    chunks = sorted((out / "items" / item / stage_name / array).glob("c.*"))
    return next(p for p in chunks if p.is_file())


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_a_damaged_chunk_redoes_its_stage(
    damage: str,
    batch: Path,
    local_client: Client,
    photometry_reference: Path,
) -> None:
    Pipeline.from_file(batch).run(client=local_client)
    out = batch.parent / "out"
    chunk = _chunk(out, "experiment_002", "preprocess", "dff")
    if damage == "delete":
        chunk.unlink()
    else:
        chunk.write_bytes(chunk.read_bytes()[:-10])
    summary = Pipeline.from_file(batch).run(client=local_client)
    # redone as it was: its key, and so the trials' key, is the same, and trials are kept
    assert _stages_run(summary)["experiment_002"] == "preprocess"
    assert summary.n_failed == 0
    warning = "experiment_002: stage preprocess at " + str(out / "items/experiment_002/preprocess")
    log = (out / "logs" / "experiment_002.log").read_text().splitlines()
    (line,) = [line for line in log if warning in line]
    assert "WARNING" in line and "redoing it" in line and "array 'dff'" in line
    assert_same_results(out, photometry_reference, rerun=True)


def test_a_flipped_byte_names_the_store_and_the_next_run_redoes_it(
    batch: Path, local_client: Client, photometry_reference: Path
) -> None:
    """Damage the listing cannot see (same size) fails the checksum on read."""
    Pipeline.from_file(batch).run(client=local_client)
    out = batch.parent / "out"
    chunk = _chunk(out, "experiment_002", "preprocess", "dff")
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    _edit(batch, trials={"bounds_s": [-6, 6]})  # trials read the damaged store
    summary = Pipeline.from_file(batch).run(client=local_client)
    assert summary.n_failed == 0
    assert _stages_run(summary)["experiment_002"] == "preprocess,trials"
    assert_same_results(out, _reference(batch, local_client), rerun=True)


def test_status_with_the_pipeline_file_shows_stale_stages_and_why(
    batch: Path, local_client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    Pipeline.from_file(batch).run(client=local_client)
    _edit(batch, trials={"bounds_s": [-4, 4]})
    sidecar = batch.parent / "data" / "experiment_003.json"
    sidecar.write_text(sidecar.read_text().replace("mouse", "rat"))
    assert main(["status", str(batch)]) == 0
    printed = capsys.readouterr().out
    assert "3 items: 0 done, 3 stale, 0 failed, 0 pending" in printed
    states = item_states(str(batch.parent / "out")).set_index("item_id")
    assert (states["status"] == "done").all()  # without the file nothing can be stale
    assert "trials: its parameters in the pipeline file changed" in printed
    assert "ingest: its input or a file its loader read (sidecar, .meta) changed" in printed


SUMMARY = """
import xarray as xr


def summary(recording):
    return xr.Dataset({"signal_mean": recording.signal.mean(), "n": recording.sizes["time"]})
"""


def test_a_custom_kind_runs_ingest_and_the_users_stages(batch: Path, local_client: Client) -> None:
    code = batch.parent / "summary.py"
    code.write_text(SUMMARY)
    pipeline = yaml.safe_load(batch.read_text())
    for section in ("preprocess", "trials"):
        pipeline.pop(section)
    pipeline |= {"kind": "custom", "stages": [{"name": "summary", "run": f"{code}:summary"}]}
    batch.write_text(yaml.safe_dump(pipeline, sort_keys=False))
    summary = Pipeline.from_file(batch).run(client=local_client)
    assert set(_stages_run(summary).values()) == {"ingest,summary"}
    out = batch.parent / "out"
    for item in ITEMS:
        table = pd.read_csv(batch.parent / "data" / f"{item}.csv")
        result = xr.open_zarr(out / "items" / item / "summary").load()
        np.testing.assert_allclose(float(result["signal_mean"]), table["signal"].mean())
        assert int(result["n"]) == len(table)
    assert not (out / "trials.zarr").exists()


def test_validate_names_a_misspelled_stage_parameter(
    batch: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = batch.parent / "measures.py"
    code.write_text(STAGE)
    _edit(
        batch,
        stages=[{"name": "peak_auc", "run": f"{code}:peak_auc", "params": {"windw_s": [0, 2]}}],
    )
    assert main(["validate", str(batch)]) == 1
    error = capsys.readouterr().err.strip()
    assert error == (
        "neurobatch validate: error: stage 'peak_auc': params.windw_s: peak_auc takes no "
        "argument 'windw_s'; did you mean 'window_s'? (it takes trials, window_s)"
    )


def test_a_failing_user_stage_fails_its_item_with_one_line(
    batch: Path, local_client: Client
) -> None:
    @neurobatch.stage(name="fussy")
    def fussy(trials: xr.Dataset) -> xr.Dataset:
        if str(trials["item_id"].values[0]) == "experiment_002":
            raise ValueError("no good trial in this session")
        return trials.dff.mean("rel_time").to_dataset(name="mean_dff")

    summary = Pipeline.from_file(batch, stages=[fussy]).run(client=local_client)
    items = summary.items.set_index("item_id")
    assert items["status"].to_dict() == {
        "experiment_001": "done",
        "experiment_002": "failed",
        "experiment_003": "done",
    }
    url = batch.parent / "data" / "experiment_002.csv"
    assert items.loc["experiment_002", "error"] == (
        f"{url}: stage fussy: no good trial in this session"
    )
    # the stages before it are committed: a re-run redoes only the failing stage
    again = Pipeline.from_file(batch, stages=[fussy]).run(client=local_client)
    assert _stages_run(again) == {
        "experiment_001": "",
        "experiment_002": "fussy",
        "experiment_003": "",
    }


def test_processed_signals_are_stored_as_float32_unless_asked_for_float64(
    batch: Path, local_client: Client
) -> None:
    """``preprocess.dtype``: computed in float64, stored as float32 by default, each value
    rounded by at most 6e-8 of itself; float64 redoes preprocess and trials, not ingest."""
    Pipeline.from_file(batch).run(client=local_client)
    out = batch.parent / "out"
    single = open_trials(str(out / "trials.zarr")).load()
    processed = xr.open_zarr(out / "items" / ITEMS[0] / "preprocess").load()
    assert single["dff"].dtype == np.float32
    signals = [name for name in processed.data_vars if processed[name].dims == ("time",)]
    assert sorted(signals) == ["dff", "isosbestic", "reference", "signal"]
    assert {processed[name].dtype for name in signals} == {np.dtype(np.float32)}
    assert processed["time"].dtype == processed["event_time"].dtype == np.float64

    summary = Pipeline.from_file(_edit(batch, preprocess={"dtype": "float64"})).run(
        client=local_client
    )
    assert set(_stages_run(summary).values()) == {"preprocess,trials"}
    double = open_trials(str(out / "trials.zarr")).load()
    assert double["dff"].dtype == np.float64
    np.testing.assert_array_equal(double["trial_num"], single["trial_num"])
    np.testing.assert_allclose(single["dff"], double["dff"], rtol=2**-24, atol=0)
    assert float(abs(single["dff"] - double["dff"]).max()) > 0  # it did round
