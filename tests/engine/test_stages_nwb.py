"""Tests of the NWB export stage: NWB files in, a photometry pipeline, NWB files out.

Two NWB fiber photometry files (written by pynwb in the test) go through a whole pipeline on
the session's LocalCluster with ``output.formats: [zarr, nwb]``; each item's NWB file is read
back by pynwb and compared with the item's stores, and inspected by nwbinspector.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from distributed import Client
from nwbinspector import Importance, inspect_nwbfile  # type: ignore[import-untyped]
from pynwb import NWBHDF5IO  # type: ignore[import-untyped]

from acquisition_files import planted
from neurobatch.engine.run import Pipeline
from neurobatch.engine.stages.nwb import NWB_EXPORT, nwb_url
from neurobatch.io.trials_store import open_trials
from neurobatch.io.zarr import open_dataset
from nwb_files import START, per_wavelength_file


def config(data: Path, out: Path) -> dict[str, Any]:
    return {
        "name": "nwb-round-trip",
        "experimenters": ["Doe, Jane"],
        "input": {"url": str(data), "pattern": "*.nwb"},
        "loader": {
            "format": "nwb-photometry",
            "signal": 465,
            "isosbestic": 405,
            "events": {
                "cue": {"source": "trials", "column": "kind", "equals": "cue"},
                "lever": {"source": "trials", "column": "kind", "equals": "lever"},
            },
        },
        "preprocess": {"filter": {"cutoff_hz": 3.0}, "fit": "ols"},
        "trials": {
            "align_to": "cue",
            "center_on": ["lever"],
            "bounds_s": [-2.0, 3.0],
            "tolerances_s": {"lever": [2.0, 4.0]},
        },
        "passdown_metadata": ["subject", "location"],
        "output": {"url": str(out), "formats": ["zarr", "nwb"]},
    }


def test_nwb_in_nwb_out(tmp_path: Path, local_client: Client) -> None:
    for i in (1, 2):
        rec = planted(4000, 100.0, seed=20 + i)
        per_wavelength_file(
            tmp_path / "data" / f"experiment_{i}.nwb",
            rec.time,
            {465.0: rec.signal, 405.0: rec.isosbestic},
            {name: rec.event_times(name) for name in ("cue", "lever")},
            identifier=f"fp-{i}",
            rate=100.0,
        )
    out = tmp_path / "out"
    pipeline = Pipeline(config(tmp_path / "data", out))  # output.formats has nwb
    assert [stage.name for stage in pipeline.stages] == ["ingest", "preprocess", "trials", "nwb"]
    summary = pipeline.run(client=local_client, progress=False)
    assert summary.n_done == 2 and summary.n_failed == 0, summary.items
    assert sorted(p.name for p in (out / "nwb").iterdir()) == [
        "experiment_1.nwb",
        "experiment_2.nwb",
    ]

    for item in ("experiment_1", "experiment_2"):
        path = nwb_url(pipeline.config, item)
        assert path == str(out / "nwb" / f"{item}.nwb")
        serious = [
            f"{m.importance.name} {m.check_function_name}: {m.message}"
            for m in inspect_nwbfile(nwbfile_path=path)
            if m.importance.value >= Importance.BEST_PRACTICE_VIOLATION.value
        ]
        assert serious == []
        ingest = open_dataset(str(out / "items" / item / "ingest"))
        processed = open_dataset(str(out / "items" / item / "preprocess"))
        trials = open_trials(str(out / "items" / item / "trials")).load()
        with NWBHDF5IO(path, "r") as io:
            read = io.read()
            # the input's session and subject, carried through
            assert read.session_start_time == START
            assert read.session_description == "fiber photometry, lever task"
            assert (read.subject.subject_id, read.subject.age) == ("m7", "P90D")
            assert list(read.experimenter) == ["Doe, Jane"]
            signal = read.acquisition["signal"]
            np.testing.assert_array_equal(signal.data[:], ingest.signal.values)
            assert (signal.rate, signal.starting_time) == (100.0, 0.0)
            assert signal.unit == "V"
            assert "acquisition/raw_465" in signal.description
            table = read.lab_meta_data["fiber_photometry"].fiber_photometry_table.to_dataframe()
            assert table["excitation_wavelength_in_nm"].tolist() == [465.0, 405.0]
            assert table["location"].tolist() == ["VTA", "VTA"]
            assert table["indicator"].iloc[0].label == "GCaMP6f"
            np.testing.assert_array_equal(
                read.processing["ophys"]["dff"].data[:], processed.dff.values
            )
            got = read.trials.to_dataframe()
            assert len(got) == trials.sizes["trial"] > 0
            for column in ("start_time", "stop_time", "trial_num", "cue", "lever"):
                np.testing.assert_array_equal(got[column].to_numpy(), trials[column].values)
            assert got["subject"].tolist() == ["m7"] * len(got)
            assert got["location"].tolist() == ["VTA"] * len(got)
            np.testing.assert_array_equal(np.stack(got["dff"].to_numpy()), trials.dff.values)

    # a re-run with nothing changed skips the export with the rest
    again = Pipeline(config(tmp_path / "data", out)).run(client=local_client, progress=False)
    assert again.n_skipped == 2, again.items


@pytest.mark.parametrize("formats", [["zarr"], ["zarr", "nwb"]])
def test_enabled_by_the_output_formats(formats: list[str], tmp_path: Path) -> None:
    pipeline = Pipeline(
        {**config(tmp_path, tmp_path / "out"), "output": {"url": "o", "formats": formats}}
    )
    assert NWB_EXPORT.enabled(pipeline.config) == ("nwb" in formats)
