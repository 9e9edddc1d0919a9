"""Data-source manifests: ``input`` as a list of sources, each with its own URL, pattern or
listed files, and loader, merged into one manifest with unique ids; and a legacy pickle that
enumerates its own sessions and stimulations into items."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from distributed import Client

from acquisition_files import planted, write_phopro_csv
from neurobatch.config import PipelineConfig
from neurobatch.config.files import validate_config
from neurobatch.engine.run import Pipeline
from neurobatch.errors import ConfigError, InputNotFoundError
from neurobatch.io.discover import discover_config
from neurobatch.io.loaders import load_recording
from tdt_files import TDT_FS, write_tdt_block

EVENTS = ("Cue", "Lev")
CSV = {"format": "photometry-csv", "event_cols": list(EVENTS)}
TDT = {
    "format": "tdt",
    "box": "A",
    "signal_label": "_465",
    "isosbestic_label": "_405",
    "event_labels": list(EVENTS),
}
TRIALS = {
    "align_to": "Cue",
    "center_on": ["Lev"],
    "bounds_s": [-2.0, 3.0],
    "tolerances_s": {"Lev": [2.0, 4.0]},
}


def write_csvs(folder: Path, names: list[str], seed: int) -> None:
    for k, name in enumerate(names):
        rec = planted(3000, 50.0, seed=seed + k, events=EVENTS)
        events = {e: rec.event_times(e) for e in EVENTS}
        write_phopro_csv(folder / name, rec.time, rec.signal, rec.isosbestic, events)


def write_block(folder: Path, seed: int) -> Path:
    rec = planted(240 * 256, TDT_FS, seed=seed, events=EVENTS)
    return write_tdt_block(
        folder,
        streams={
            "465A": rec.signal.astype(np.float32),
            "405A": rec.isosbestic.astype(np.float32),
        },
        epocs={f"A{e}": rec.event_times(e) for e in EVENTS},
    )


@pytest.fixture
def three_sources(tmp_path: Path) -> dict[str, Any]:
    """A CSV folder (by pattern), a folder of TDT blocks, and a folder of CSVs of which two
    are listed by name (the third is not an input); ``m1.csv`` is in two sources."""
    write_csvs(tmp_path / "rig-a", ["m1.csv", "m2.csv"], seed=1)
    write_block(tmp_path / "tdt" / "Mouse3-250101-120000", seed=3)
    write_csvs(tmp_path / "exports", ["m1.csv", "m4.csv", "not-this-one.csv"], seed=4)
    sources = [
        {"name": "rigA", "url": str(tmp_path / "rig-a"), "pattern": "*.csv", "loader": CSV},
        {"name": "tdt", "url": str(tmp_path / "tdt"), "target": "folder", "loader": TDT},
        {"name": "exports", "url": str(tmp_path / "exports"), "files": ["m1.csv", "m4.csv"]},
    ]
    return {
        "name": "mixed",
        "input": sources,
        "loader": CSV,  # for the sources without their own
        "preprocess": {"filter": {"cutoff_hz": 3.0, "order": 4}, "fit": "ols"},
        "trials": TRIALS,
        "output": {"url": str(tmp_path / "out"), "formats": ["zarr", "parquet"]},
    }


def test_sources_merge_into_one_manifest_with_unique_ids(three_sources: dict[str, Any]) -> None:
    manifest = discover_config(PipelineConfig.model_validate(three_sources))
    assert manifest["item_id"].tolist() == [
        "rigA__m1",
        "rigA__m2",
        "tdt__Mouse3-250101-120000",
        "exports__m1",
        "exports__m4",
    ]
    assert manifest["source"].tolist() == ["rigA", "rigA", "tdt", "exports", "exports"]
    assert manifest["format"].tolist() == ["photometry-csv"] * 2 + ["tdt"] + ["photometry-csv"] * 2
    assert manifest["url"].str.endswith("not-this-one.csv").sum() == 0


def test_a_mixed_manifest_runs_end_to_end_as_each_source_alone(
    three_sources: dict[str, Any], tmp_path: Path, local_client: Client
) -> None:
    summary = Pipeline(three_sources).run(client=local_client, progress=False)
    assert summary.n_failed == 0 and summary.n_done == 5, summary.items
    # the reference: each source run as the only input of a pipeline of its own; each
    # item's own trials (the combined table resamples the 1 kHz TDT trials onto the 50 Hz
    # grid of the first item)
    for source in three_sources["input"]:
        alone = {k: v for k, v in source.items() if k not in ("name", "loader")}
        out = tmp_path / f"alone-{source['name']}"
        config = three_sources | {
            "input": alone,
            "loader": source.get("loader", CSV),
            "output": {"url": str(out), "formats": ["zarr"]},
        }
        assert Pipeline(config).run(client=local_client, progress=False).n_failed == 0
        for item in pd.read_parquet(out / "items.parquet")["item_id"]:
            single = xr.open_zarr(out / "items" / item / "trials").load()
            ours = xr.open_zarr(tmp_path / "out" / "items" / f"{source['name']}__{item}" / "trials")
            assert ours.sizes["trial"] == single.sizes["trial"] > 0
            for name in ("dff", "trial_num", "Cue", "Lev"):
                np.testing.assert_array_equal(ours[name].values, single[name].values)
    items = pd.read_parquet(tmp_path / "out" / "items.parquet")
    assert sorted(items["item_id"]) == sorted(
        ["rigA__m1", "rigA__m2", "tdt__Mouse3-250101-120000", "exports__m1", "exports__m4"]
    )


def test_a_listed_file_that_does_not_exist_is_one_line(
    three_sources: dict[str, Any], tmp_path: Path
) -> None:
    three_sources["input"][2]["files"] = ["m1.csv", "m9.csv"]
    with pytest.raises(InputNotFoundError) as raised:
        discover_config(PipelineConfig.model_validate(three_sources))
    assert str(raised.value) == (
        f"input {str(tmp_path / 'exports')!r}: listed file(s) 'm9.csv' do not exist; "
        "expected every entry of files to exist under the url"
    )


@pytest.mark.parametrize(
    ("change", "line"),
    [
        (
            lambda s: s[0].pop("name"),
            "p.yaml: input[0].name: a source of a list needs a name (its items' ids start with it)",
        ),
        (
            lambda s: s[1].update(name="rigA"),
            "p.yaml: input[1].name: 'rigA' is also input[0]'s name",
        ),
        (
            lambda s: s[2].update(pattern="*.csv"),
            "p.yaml: input[2]: give files or pattern/recursive, not both",
        ),
        (
            lambda s: s[2].update(files=["../rig-a/m1.csv"]),
            (
                "p.yaml: input[2].files: '../rig-a/m1.csv' is not a path inside url; expected "
                "paths relative to url"
            ),
        ),
        (
            lambda s: s[1].update(target="file"),
            (
                "p.yaml: input[1].target: 'file', but input[1].loader format 'tdt' reads "
                "folders; set target: folder"
            ),
        ),
        (
            lambda s: s[1]["loader"].update(event_labels=["Cue"]),
            "p.yaml: trials.center_on[0]: unknown event 'Lev'",
        ),
    ],
)
def test_bad_sources_are_refused_naming_the_source(
    three_sources: dict[str, Any], change: Any, line: str
) -> None:
    change(three_sources["input"])
    with pytest.raises(ConfigError) as raised:
        validate_config(three_sources, source="p.yaml")
    assert any(got.startswith(line) for got in str(raised.value).splitlines()), raised.value


def test_sources_without_a_loader_need_the_pipelines(three_sources: dict[str, Any]) -> None:
    del three_sources["loader"]
    with pytest.raises(ConfigError, match=r"p.yaml: input\[2\].loader: no loader"):
        validate_config(three_sources, source="p.yaml")


# ---------------------------------------------------------------------------------------------
# The legacy retinal-ganglion pickle: its sessions and stimulations become items
# ---------------------------------------------------------------------------------------------


def stimulation(seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {
        "movie": rng.integers(0, 2, size=(4, 3, 50)).astype(np.float64),
        "fps": 10.0,
        "stimulus_onset": 0.5,
        "n_frames": 50,
        "spikes": [np.sort(rng.uniform(0.5, 5.0, size=20)) for _ in range(2)],
    }


def test_a_legacy_pickle_enumerates_its_sessions_and_stimulations(tmp_path: Path) -> None:
    sessions = [
        {"subject_name": "KO", "stimulations": [stimulation(0), stimulation(1)]},
        {"subject_name": "WT", "stimulations": [stimulation(2)]},
    ]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "ret1_data.pkl").write_bytes(pickle.dumps(sessions))
    loader = {"format": "rgc-pickle", "allow_pickle": True}
    config = PipelineConfig.model_validate(
        {
            "name": "rgc",
            "kind": "sta",
            "input": {"url": str(tmp_path / "data"), "pattern": "*.pkl"},
            "loader": loader,
            "sta": {"n_lags": 3},
            "output": {"url": str(tmp_path / "out")},
        }
    )
    manifest = discover_config(config)
    assert manifest["item_id"].tolist() == [
        "ret1_data-session0-stimulation0",
        "ret1_data-session0-stimulation1",
        "ret1_data-session1",
    ]
    # each item loads its own stimulation: the movies and spikes planted in it
    planted_stimulations = [(0, 0), (0, 1), (1, 0)]
    for row, (s, k) in zip(manifest.itertuples(), planted_stimulations, strict=True):
        ds = load_recording(row.url, row.loader_arguments, format=row.format)
        expected = sessions[s]["stimulations"][k]
        np.testing.assert_array_equal(ds["frames"].values, expected["movie"].transpose(2, 1, 0))
        np.testing.assert_array_equal(
            np.sort(ds["spike_time"].values), np.sort(np.concatenate(expected["spikes"]))
        )
        assert ds.attrs["subject_name"] == sessions[s]["subject_name"]
    # a pickle of one session and one stimulation stays one item, named as before
    (tmp_path / "data" / "ret1_data.pkl").write_bytes(pickle.dumps(sessions[1]))
    assert discover_config(config)["item_id"].tolist() == ["ret1_data"]


def test_each_source_reads_with_its_own_storage_options(
    three_sources: dict[str, Any],
    tmp_path: Path,
    local_client: Client,
    s3_options: dict[str, Any],
) -> None:
    # the exports on the local S3 server, reachable only with their source's options (its
    # endpoint); the rig's CSVs on the local disk
    fs, _ = fsspec.core.url_to_fs("s3://lab", **s3_options)
    fs.put(str(tmp_path / "exports") + "/", "lab/sources/exports", recursive=True)
    exports = three_sources["input"][2] | {
        "url": "s3://lab/sources/exports",
        "storage_options": s3_options,
    }
    config = three_sources | {"input": [three_sources["input"][0], exports]}
    summary = Pipeline(config).run(client=local_client, progress=False)
    assert summary.n_failed == 0 and summary.n_done == 4, summary.items
    alone = three_sources | {
        "input": {"url": str(tmp_path / "exports"), "files": ["m1.csv", "m4.csv"]},
        "output": {"url": str(tmp_path / "alone"), "formats": ["zarr"]},
    }
    assert Pipeline(alone).run(client=local_client, progress=False).n_done == 2
    for item in ("m1", "m4"):
        remote = xr.open_zarr(tmp_path / "out" / "items" / f"exports__{item}" / "trials")
        local = xr.open_zarr(tmp_path / "alone" / "items" / item / "trials")
        np.testing.assert_array_equal(remote["dff"].values, local["dff"].values)
        assert remote.sizes["trial"] == local.sizes["trial"] > 0
