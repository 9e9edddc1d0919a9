"""Tests of :mod:`neurobatch.io.nwb_export`: an item's NWB file, read back by pynwb and
inspected by nwbinspector.

The item is made by neurobatch's own steps on a real file (the CSV loader, then
``preprocess`` and ``cut_trials``); the written file is read back with pynwb and compared
with those datasets, value by value, and nwbinspector must find no critical issue and no
best-practice violation in it.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import dask.array as da
import fsspec
import h5py
import numpy as np
import pytest
import xarray as xr
from nwbinspector import Importance, inspect_nwbfile  # type: ignore[import-untyped]
from pynwb import NWBHDF5IO  # type: ignore[import-untyped]

from acquisition_files import planted, write_phopro_csv
from neurobatch.config import PreprocessConfig, TrialsConfig
from neurobatch.engine.stages.photometry import cut_trials, preprocess
from neurobatch.errors import InputError
from neurobatch.io.loaders import load_photometry_csv
from neurobatch.io.nwb_export import item_nwbfile, session_start, write_nwb

SIDECAR: dict[str, Any] = {
    "subject": "m12",
    "sex": "female",
    "age": "P12W",
    "species": "Mus musculus",
    "session_start_time": "2024-03-04T09:30:00+01:00",
    "location": "NAc",
    "indicator": "dLight1.1",
    "excitation_wavelength_nm": 465,
    "isosbestic_wavelength_nm": 405,
    "emission_wavelength_nm": 525,
    "cohort": 3,
}
TRIALS = TrialsConfig(
    align_to="cue",
    center_on=["lever"],
    bounds_s=(-2.0, 3.0),
    tolerances_s={"lever": (2.0, 4.0)},
)
FAILING = (Importance.ERROR, Importance.PYNWB_VALIDATION, Importance.CRITICAL)


def problems(path: Path) -> list[str]:
    """nwbinspector's messages of importance best-practice violation or worse."""
    found = []
    for message in inspect_nwbfile(nwbfile_path=path):
        if message.importance in (*FAILING, Importance.BEST_PRACTICE_VIOLATION):
            found.append(
                f"{message.importance.name} {message.check_function_name}: {message.message}"
            )
    return found


@pytest.fixture(scope="module")
def item(tmp_path_factory: pytest.TempPathFactory) -> tuple[xr.Dataset, xr.Dataset, xr.Dataset]:
    """An item's ingested recording, preprocessed recording and trials."""
    folder = tmp_path_factory.mktemp("nwb-export")
    rec = planted(4000, 100.0, seed=4)
    events = {name: rec.event_times(name) for name in ("cue", "lever")}
    csv = write_phopro_csv(
        folder / "experiment_1.csv", rec.time, rec.signal, rec.isosbestic, events
    )
    (folder / "experiment_1.json").write_text(json.dumps(SIDECAR))
    recording = load_photometry_csv(
        str(csv), {"event_cols": ["cue", "lever"], "annotation": "{stem}.json"}
    )
    processed = preprocess(
        recording.chunk(time=1500),
        PreprocessConfig.model_validate({"filter": {"cutoff_hz": 3.0}, "fit": "ols"}),
    ).compute()
    trials, _ = cut_trials(
        processed, TRIALS, item_id="experiment_1", experiment_id="exp-1", passdown={"cohort": 3}
    )
    return recording, processed, trials.compute()


def test_round_trip(item: tuple[xr.Dataset, xr.Dataset, xr.Dataset], tmp_path: Path) -> None:
    recording, processed, trials = item
    path = tmp_path / "nwb" / "experiment_1.nwb"
    nwbfile = item_nwbfile(
        recording=recording.chunk(time=700),  # written block by block
        processed=processed,
        trials=trials,
        item_id="experiment_1",
        experiment_id="exp-1",
        pipeline="lever-task",
        align_to="cue",
        experimenters=["Doe, Jane"],
    )
    write_nwb(nwbfile, str(path))
    assert sorted(p.name for p in path.parent.iterdir()) == ["experiment_1.nwb"]
    assert problems(path) == []

    with NWBHDF5IO(str(path), "r") as io:
        read = io.read()
        assert read.session_start_time == dt.datetime.fromisoformat(SIDECAR["session_start_time"])
        assert read.session_id == "exp-1"
        assert list(read.experimenter) == ["Doe, Jane"]
        subject = read.subject
        assert (subject.subject_id, subject.sex, subject.age, subject.species) == (
            "m12",
            "F",
            "P12W",
            "Mus musculus",
        )
        time = recording.time.values
        for name in ("signal", "isosbestic"):
            series = read.acquisition[name]
            np.testing.assert_array_equal(series.data[:], recording[name].values)
            # regular samples: starting_time and rate, which give the same times
            got = series.starting_time + np.arange(time.size) / series.rate
            np.testing.assert_allclose(got, time, rtol=0, atol=1e-9)
            row = series.fiber_photometry_table_region.data[:].tolist()
            assert row == [0 if name == "signal" else 1]
        table = read.lab_meta_data["fiber_photometry"].fiber_photometry_table
        frame = table.to_dataframe()
        assert frame["location"].tolist() == ["NAc", "NAc"]
        assert frame["excitation_wavelength_in_nm"].tolist() == [465.0, 405.0]
        assert frame["emission_wavelength_in_nm"].tolist() == [525.0, 525.0]
        assert frame["indicator"].iloc[0].label == "dLight1.1"

        ophys = read.processing["ophys"]
        np.testing.assert_array_equal(ophys["dff"].data[:], processed.dff.values)
        np.testing.assert_array_equal(ophys["reference"].data[:], processed.reference.values)
        assert ophys["dff"].unit == "n.a."
        assert '"method": "ols"' in ophys["dff"].description

        got = read.trials.to_dataframe()
        n = trials.sizes["trial"]
        assert len(got) == n > 0
        for column in ("start_time", "stop_time", "trial_num", "cohort"):
            np.testing.assert_array_equal(got[column].to_numpy(), trials[column].values)
        for event in ("cue", "lever"):  # offsets from the centre, NaN when absent
            np.testing.assert_array_equal(got[event].to_numpy(), trials[event].values)
        np.testing.assert_allclose(
            got["align_time"].to_numpy(),
            trials.start_time.values - trials.rel_time.values[0],
            rtol=0,
            atol=1e-12,
        )
        assert got["label"].tolist() == ["cue"] * n
        assert got["experiment_id"].tolist() == ["exp-1"] * n
        np.testing.assert_array_equal(np.stack(got["dff"].to_numpy()), trials.dff.values)
        # each trial refers to its window of the processed series
        reference = read.trials["timeseries"][0][0]
        assert reference.timeseries.name == "dff"
        first = int(np.searchsorted(time, trials.start_time.values[0]))
        assert reference.idx_start == first


def test_what_the_metadata_lacks(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Irregular times, one channel, a sex and an age in other words, no session start."""
    rng = np.random.default_rng(2)
    time = np.cumsum(rng.uniform(0.009, 0.011, 500))
    recording = xr.Dataset(
        {"signal": ("time", 1.0 + 0.01 * rng.standard_normal(500))},
        coords={"time": time},
        attrs={"subject": "r3", "sex": "male", "age": 12, "species": "Rattus norvegicus"},
    )
    processed = xr.Dataset(
        {"dff": ("time", recording.signal.values - 1.0), "reference": ("time", np.ones(500))},
        coords={"time": time},
        attrs={"processed_variable": "dff"},
    )
    with pytest.raises(InputError, match=r"no session_start_time and no fallback"):
        item_nwbfile(
            recording=recording,
            processed=processed,
            trials=None,
            item_id="r3",
            experiment_id="r3",
            pipeline="p",
        )
    start = dt.datetime(2023, 7, 1, 12, 0, tzinfo=dt.UTC)
    nwbfile = item_nwbfile(
        recording=recording,
        processed=processed,
        trials=None,
        item_id="r3",
        experiment_id="r3",
        pipeline="p",
        session_start_fallback=start,
    )
    path = tmp_path / "r3.nwb"
    write_nwb(nwbfile, str(path))
    with NWBHDF5IO(str(path), "r") as io:
        read = io.read()
        assert read.session_start_time == start
        assert read.trials is None
        series = read.acquisition["signal"]
        np.testing.assert_array_equal(series.timestamps[:], time)
        assert series.rate is None
        assert sorted(read.acquisition) == ["signal"]
        assert (read.subject.sex, read.subject.age) == ("M", None)
        assert "age as given: 12" in read.subject.description
        frame = read.lab_meta_data["fiber_photometry"].fiber_photometry_table.to_dataframe()
        assert frame["location"].tolist() == ["unknown"]
        assert np.isnan(frame["excitation_wavelength_in_nm"].iloc[0])
    # an age without its unit is not written: DANDI needs one, and the log said so
    assert [p.split(":")[0] for p in problems(path)] == ["CRITICAL check_subject_age"]
    assert "subject r3 lacks an age (an ISO 8601 duration" in caplog.text


def test_session_start() -> None:
    assert session_start({"session_start_time": "2024-01-02T03:04:05"}).tzinfo == dt.UTC
    with pytest.raises(InputError, match=r"session_start_time 'yesterday' is not an ISO 8601 time"):
        session_start({"session_start_time": "yesterday"})


def test_replaced_whole(
    item: tuple[xr.Dataset, xr.Dataset, xr.Dataset], tmp_path: Path, s3_options: dict[str, Any]
) -> None:
    """On a local disk and on S3: a file that fails while written leaves the old one whole."""
    recording, processed, trials = item
    arguments: dict[str, Any] = {
        "recording": recording,
        "trials": trials,
        "item_id": "experiment_1",
        "experiment_id": "exp-1",
        "pipeline": "lever-task",
        "align_to": "cue",
    }

    def failing(block: Any) -> Any:
        raise OSError(28, "No space left on device")

    broken = processed.copy()
    broken["dff"] = broken.dff.copy(
        data=da.from_array(processed.dff.values, chunks=500).map_blocks(  # type: ignore[no-untyped-call]
            failing, dtype=np.float32
        )
    )
    s3 = fsspec.filesystem("s3", **s3_options)
    for url, options in (
        (str(tmp_path / "nwb" / "a.nwb"), None),
        ("s3://lab/export/nwb/a.nwb", s3_options),
    ):
        write_nwb(item_nwbfile(processed=processed, **arguments), url, storage_options=options)
        with pytest.raises(Exception, match=r"writing .*a\.nwb"):
            write_nwb(item_nwbfile(processed=broken, **arguments), url, storage_options=options)
        fs, path = fsspec.core.url_to_fs(url, **(options or {}))
        assert [p.rsplit("/", 1)[-1] for p in fs.ls(path.rsplit("/", 1)[0])] == ["a.nwb"]
        with fs.open(path, "rb") as f, h5py.File(f, "r") as h5:
            np.testing.assert_array_equal(h5["processing/ophys/dff/data"][:], processed.dff.values)
    assert s3.exists("lab/export/nwb/a.nwb")
