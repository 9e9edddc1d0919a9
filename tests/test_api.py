"""The Python API as PhoPro's batch tutorial uses it: resolver functions, hooks as lambdas,
``run().trials``, AnnData and PhotometryData, a script without a guard.

The tutorial (PhoPro 0.6.0, "Batch Processing") passes ``loader_kwargs`` functions that
take the discovered ``Path`` (``csv.with_suffix('.json')``, ``csv.parent /
'annotation.json'``) and hooks written for the notebook; the same functions, written for
neurobatch's names, run here against real files, the in-process default cluster, a real
process ``LocalCluster`` and the local S3 server.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import anndata as ad
import fsspec
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from aind_data_schema.core.processing import Processing
from distributed import Client
from upath import UPath

import neurobatch
from neurobatch import synthetic
from neurobatch.errors import ConfigError, InputNotFoundError

EVENT_COLS = list(synthetic.EVENT_NAMES)
TRIALS = {
    "align_to": "trial_cue",
    "center_on": ["lever1", "lever2"],
    "bounds_s": [-4, 4],
    "tolerances_s": {"lever1": [2, 4], "lever2": [2, 4], "shock": None},
}


def case1_loader_kwargs(csv: Path) -> dict[str, Any]:
    """The tutorial's case 1: each experiment in a folder, beside its annotation.json."""
    return dict(  # noqa: C408 - the tutorial's own code
        format="photometry-csv",
        time_col="time",
        signal_col="signal",
        isosbestic_col="isosbestic",
        event_cols=EVENT_COLS,
        annotation=csv.parent / "annotation.json",
    )


def case2_loader_kwargs(csv: Path) -> dict[str, Any]:
    """The tutorial's case 2: a flat folder, each CSV's sidecar by its basename."""
    return dict(  # noqa: C408 - the tutorial's own code
        format="photometry-csv", event_cols=EVENT_COLS, annotation=csv.with_suffix(".json")
    )


def fanout_loader_kwargs(csv: Path) -> list[dict[str, Any]]:
    """The tutorial's fan-out: two jobs per input."""
    base = dict(format="photometry-csv", annotation=csv.with_suffix(".json"))  # noqa: C408
    return [
        base | {"event_cols": ["trial_cue", "lever1", "lever2"]},
        base | {"event_cols": EVENT_COLS},
    ]


def trial_labels(trials: xr.Dataset) -> xr.Dataset:
    """The tutorial's add_trial_labels, on the trials Dataset (a module-level function)."""
    lever1 = np.isfinite(trials["lever1"].values)
    lever2 = np.isfinite(trials["lever2"].values)
    shock = np.isfinite(trials["shock"].values)
    label = np.full(trials.sizes["trial"], "no_response", dtype=object)
    label[lever2] = "small_reward"
    label[lever1 & ~shock] = "large_reward_safe"
    label[lever1 & shock] = "large_reward_shock"
    return trials.assign_coords(trial_label=("trial", label.astype(str)))


def peak(trials: xr.Dataset, *, window_s: tuple[float, float]) -> xr.Dataset:
    """A user stage from Python: each trial's peak dF/F in a window."""
    inside = trials["dff"].sel(rel_time=slice(*window_s))
    return inside.max("rel_time").to_dataset(name="peak")


@pytest.fixture(scope="module")
def flat(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tutorial's case 2: CSVs and their JSON sidecars in one folder."""
    folder = tmp_path_factory.mktemp("case2") / "data"
    synthetic.write_photometry_batch(folder, n_items=3, duration_s=200.0, fs=20.0, seed=3)
    return folder


@pytest.fixture(scope="module")
def nested(flat: Path) -> Path:
    """The tutorial's case 1: experiment_N/experiment_N.csv beside annotation.json."""
    root = flat.parent / "case1"
    for csv in sorted(flat.glob("*.csv")):
        (root / csv.stem).mkdir(parents=True)
        shutil.copy(csv, root / csv.stem / csv.name)
        shutil.copy(csv.with_suffix(".json"), root / csv.stem / "annotation.json")
    return root


def _config(data: Path | str, out: Path, loader: Any, **extra: Any) -> dict[str, Any]:
    return {
        "name": "api",
        "input": {"url": str(data), "pattern": "experiment_*.csv", "recursive": True},
        "loader": loader,
        "preprocess": {"filter": {"cutoff_hz": 3.0, "order": 4}, "fit": "ols"},
        "trials": TRIALS,
        "passdown_metadata": ["source", "subject", "sex", "age"],
        "output": {"url": str(out), "formats": ["zarr", "parquet", "h5ad"]},
        **extra,
    }


def _sidecars(folder: Path) -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


@pytest.fixture(scope="module")
def case1(nested: Path, flat: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The tutorial's hooks run: a resolver, an id builder and a trials hook as lambdas,
    on the default cluster (in this process)."""
    out = tmp_path_factory.mktemp("case1-out")
    hooks = {
        "id_builder": lambda ds: f"{ds.attrs['subject']}_{Path(ds.attrs['source']).stem}",
        "post_trials": lambda trials: trial_labels(trials),
    }
    config = _config(nested, out, case1_loader_kwargs, hooks=hooks)
    return neurobatch.Pipeline(config).run(progress=False), config


def test_resolver_function_with_path_values(case1: Any, flat: Path) -> None:
    result, _ = case1
    assert result.n_done == 3 and result.n_failed == 0
    trials = result.trials.load()
    sidecars = _sidecars(flat)
    stems = [Path(source).stem for source in trials["source"].values]
    # read through csv.parent / "annotation.json"
    assert trials["subject"].values.tolist() == [sidecars[s]["subject"] for s in stems]
    expected_ids = [f"{sidecars[s]['subject']}_{s}" for s in stems]
    assert trials["experiment_id"].values.tolist() == expected_ids
    # the hook's labels, from the trials' own event columns
    lever1 = np.isfinite(trials["lever1"].values)
    assert set(trials["trial_label"].values[lever1]) <= {"large_reward_safe", "large_reward_shock"}
    assert (
        trials["trial_label"].values[~lever1 & np.isfinite(trials["lever2"].values)]
        == "small_reward"
    ).all()


def test_trials_equal_the_combined_store(case1: Any) -> None:
    result, _ = case1
    assert isinstance(result, neurobatch.RunResult)
    lazy = result.trials
    assert lazy["dff"].chunks is not None  # lazy: dask
    xr.testing.assert_identical(
        lazy.load(), xr.open_zarr(Path(result.output_url) / "trials.zarr").load()
    )
    assert result.output_url == case1[1]["output"]["url"]
    ids = [f"experiment_00{n}__experiment_00{n}" for n in (1, 2, 3)]  # folder__file
    assert result.items["item_id"].tolist() == ids


def test_to_anndata_equals_the_h5ad(case1: Any) -> None:
    result, _ = case1
    mine = result.to_anndata()
    written = ad.read_h5ad(Path(result.output_url) / "trials.h5ad")
    np.testing.assert_array_equal(mine.X, written.X)
    pd.testing.assert_frame_equal(mine.obs, written.obs)
    pd.testing.assert_frame_equal(mine.var, written.var)


def test_to_phopro_gives_photometry_data(case1: Any) -> None:
    from PhoPro.core.PhotometryData import PhotometryData  # type: ignore[import-untyped]

    result, _ = case1
    data = result.to_phopro()
    assert isinstance(data, PhotometryData)
    theirs = PhotometryData.read_h5ad(str(Path(result.output_url) / "trials.h5ad"))
    np.testing.assert_array_equal(data.X, theirs.X)
    np.testing.assert_array_equal(data.ts, theirs.ts)
    pd.testing.assert_frame_equal(data.obs, theirs.obs)


def test_open_trials_of_an_earlier_run(case1: Any) -> None:
    result, _ = case1
    earlier = neurobatch.open_trials(Path(result.output_url))
    xr.testing.assert_identical(earlier.trials.load(), result.trials.load())
    pd.testing.assert_frame_equal(
        earlier.items, pd.read_parquet(Path(result.output_url) / "items.parquet")
    )
    with pytest.raises(InputNotFoundError, match=r"no neurobatch outputs here \(items.parquet"):
        neurobatch.open_trials(Path(result.output_url) / "items")


def test_lambdas_key_by_their_source(case1: Any) -> None:
    """A re-run with the same lambdas (the same source) skips every item."""
    _, config = case1
    again = neurobatch.Pipeline(config).run(progress=False)
    assert again.n_skipped == 3, again


def test_resolver_returning_a_list(flat: Path, tmp_path: Path) -> None:
    trials = TRIALS | {"tolerances_s": {"lever1": [2, 4], "lever2": [2, 4]}}
    config = _config(flat, tmp_path / "out", fanout_loader_kwargs, trials=trials)
    config["input"]["pattern"] = "experiment_001.csv"
    result = neurobatch.Pipeline(config).run(progress=False)
    assert result.items["item_id"].tolist() == ["experiment_001-1", "experiment_001-2"]
    assert result.n_done == 2
    by_job = result.trials.load().groupby("item_id")
    assert {k: v.sizes["trial"] for k, v in by_job} == dict.fromkeys(
        ["experiment_001-1", "experiment_001-2"], result.n_trials // 2
    )


def test_resolver_receives_a_upath_on_s3(
    flat: Path, tmp_path: Path, s3_options: dict[str, Any]
) -> None:
    fs = fsspec.filesystem("s3", **s3_options)
    for path in sorted(flat.iterdir())[:4]:  # two recordings and their sidecars
        fs.put_file(str(path), f"lab/api-upath/{path.name}")
    seen: list[Any] = []

    def remote_loader_kwargs(csv: Any) -> dict[str, Any]:
        seen.append(csv)
        return case2_loader_kwargs(csv)

    config = _config("s3://lab/api-upath", tmp_path / "out", remote_loader_kwargs)
    config["input"]["storage_options"] = s3_options
    result = neurobatch.Pipeline(config).run(progress=False)
    assert [type(p) for p in seen] == [type(UPath("s3://lab/x"))] * 2
    assert [str(p) for p in seen] == [
        "s3://lab/api-upath/experiment_001.csv",
        "s3://lab/api-upath/experiment_002.csv",
    ]
    assert seen[0].storage_options["key"] == s3_options["key"]
    sidecars = _sidecars(flat)
    trials = result.trials.load()
    assert [sidecars[i]["subject"] for i in trials["item_id"].values] == trials[
        "subject"
    ].values.tolist()


def test_hooks_and_stages_by_value_on_worker_processes(
    flat: Path, tmp_path: Path, local_client: Client
) -> None:
    """Lambdas, a module-level test function, a user stage in the config and one from
    ``neurobatch.stage``, on a process LocalCluster whose workers never imported this test
    module; provenance in aind-data-schema's GB."""
    config = _config(
        flat,
        tmp_path / "out",
        case2_loader_kwargs,
        hooks={
            "post_load": lambda ds: ds.assign_attrs(subject=ds.attrs["subject"].upper()),
            "post_trials": trial_labels,
        },
        stages=[{"name": "peak", "run": peak, "needs": ["trials"], "params": {"window_s": [0, 2]}}],
    )
    worker_modules = local_client.run(lambda: __name__ in sys.modules)
    assert not any(worker_modules.values())  # the workers never imported this module
    mean_dff = neurobatch.stage(
        lambda trials: trials["dff"].mean("rel_time").to_dataset(name="mean_dff"),
        name="mean_dff",
        needs=["trials"],
    )
    pipeline = neurobatch.Pipeline(config, stages=[mean_dff])
    result = pipeline.run(client=local_client, progress=False)
    assert result.n_done == 3, result.failures
    trials = result.trials.load()
    assert all(s.startswith("MOUSE-") for s in trials["subject"].values)
    assert "trial_label" in trials.coords
    for item in result.items["item_id"]:
        stored = xr.open_zarr(tmp_path / "out" / "items" / item / "peak").load()
        mine = trials.isel(trial=np.flatnonzero(trials["item_id"].values == item))
        expected = mine["dff"].sel(rel_time=slice(0, 2)).max("rel_time").values
        np.testing.assert_allclose(stored["peak"].values, expected)
        means = xr.open_zarr(tmp_path / "out" / "items" / item / "mean_dff").load()
        np.testing.assert_allclose(means["mean_dff"].values, mine["dff"].mean("rel_time").values)
    record = json.loads((tmp_path / "out" / "processing.json").read_text())
    processing = Processing.model_validate(record)  # the real schema
    usage = processing.data_processes[0].resources
    assert usage is not None and usage.ram_unit == "Gigabyte"
    # the fixture's two workers have 2 GiB each: 4 GiB in GB
    assert usage.ram == pytest.approx(4 * 2**30 / 1e9, abs=1e-3)


def test_formats_are_honoured(flat: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    config = _config(flat, out, case2_loader_kwargs)
    config["output"]["formats"] = ["parquet"]
    first = neurobatch.Pipeline(config).run(progress=False)
    combined = {p.name for p in out.iterdir() if p.name.startswith(("trials", ".trials"))}
    assert combined == {"trials_obs.parquet", ".trials.zarr"}  # the engine's own, hidden
    assert first.trials.sizes["trial"] == first.n_trials  # still opened
    processes = Processing.model_validate_json((out / "processing.json").read_text())
    assert str(processes.data_processes[-1].output_path) == ".trials.zarr"  # combine
    config["output"]["formats"] = ["zarr", "csv"]
    neurobatch.Pipeline(config).run(progress=False)
    combined = {p.name for p in out.iterdir() if p.name.startswith(("trials", ".trials"))}
    assert combined == {"trials.zarr", "trials_obs.csv"}


def test_a_hook_that_is_not_a_function(flat: Path, tmp_path: Path) -> None:
    config = _config(flat, tmp_path / "out", case2_loader_kwargs, hooks={"post_load": 3})
    with pytest.raises(ConfigError, match=r"^<config>: hooks\.post_load: .*got 3"):
        neurobatch.Pipeline(config)


SCRIPT = """\
import sys
import neurobatch
from neurobatch import synthetic

out = sys.argv[1]
synthetic.write_photometry_batch(out + "/data", n_items=2, duration_s=100.0, fs=20.0)
config = {{
    "name": "script",
    "input": {{"url": out + "/data", "pattern": "*.csv"}},
    "loader": lambda csv: {{"format": "photometry-csv", "event_cols": {events!r},
                           "annotation": csv.with_suffix(".json")}},
    "trials": {{"align_to": "trial_cue", "bounds_s": [-2, 4]}},
    "output": {{"url": out + "/out"}},
    {cluster}
}}
{run}
"""
RUN = """result = neurobatch.Pipeline(config).run(hooks={"post_load": lambda ds: ds})
print("trials", dict(result.trials.sizes))"""
PROCESSES = '"cluster": {"kind": "local", "n_workers": 1, "memory_limit": "1GiB"},'


def _script(tmp_path: Path, cluster: str, run: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "script.py"
    script.write_text(SCRIPT.format(events=EVENT_COLS, cluster=cluster, run=run))
    env = os.environ | {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    return subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        capture_output=True,
        check=False,
        text=True,
        env=env,
        timeout=300,
        cwd=tmp_path,
    )


def test_a_script_without_a_guard_runs_on_the_default_cluster(tmp_path: Path) -> None:
    done = _script(tmp_path, "", RUN)
    assert done.returncode == 0, done.stderr
    assert "trials {'trial': " in done.stdout


def test_a_process_cluster_in_a_script_without_a_guard_says_so(tmp_path: Path) -> None:
    done = _script(tmp_path, PROCESSES, RUN)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert re.match(r"neurobatch\.errors\.ConfigError: script\.py, line 16: a cluster", last)
    assert 'put the run under if __name__ == "__main__":' in last
    assert "Nanny failed to start" not in done.stderr


def test_a_process_cluster_in_a_guarded_script_runs(tmp_path: Path) -> None:
    guarded = 'if __name__ == "__main__":\n' + textwrap.indent(RUN, "    ")
    done = _script(tmp_path, PROCESSES, guarded)
    assert done.returncode == 0, done.stderr
    assert "trials {'trial': " in done.stdout
