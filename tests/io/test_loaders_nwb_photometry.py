"""Tests of the ``nwb-photometry`` loader on NWB files written by pynwb and ndx-fiber-photometry.

The files are written in the tests (:mod:`nwb_files`), the way ndx-fiber-photometry's README
writes them; the loaded channels and events are compared with the arrays they were written
from, and a pipeline run on NWB files with the same run on the same data as PhoPro-layout
CSV files.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import fsspec
import h5py
import numpy as np
import pytest
from distributed import Client
from hdmf.backends.hdf5 import H5DataIO  # type: ignore[import-untyped]
from pynwb import TimeSeries  # type: ignore[import-untyped]
from pynwb.ecephys import ElectricalSeries  # type: ignore[import-untyped]
from pynwb.event import EventsTable  # type: ignore[import-untyped]
from pynwb.misc import AnnotationSeries  # type: ignore[import-untyped]

from acquisition_files import Planted, assert_same_trials, planted, run_both, write_phopro_csv
from neurobatch.errors import ConfigError, InputError, InputNotFoundError
from neurobatch.io.loaders import LOADERS, load_recording
from neurobatch.io.loaders import nwb_photometry as module
from neurobatch.io.loaders.nwb_photometry import check_nwb_photometry, load_nwb_photometry
from nwb_files import (
    add_table,
    add_trials,
    cache_ndx_events,
    new_file,
    per_wavelength_file,
    response_series,
    write,
)
from photometry_files import check_recording_shape, events_of

FS = 50.0
ARGS: dict[str, Any] = {
    "signal": 465,
    "isosbestic": 405,
    "events": {
        "cue": {"source": "trials", "column": "kind", "equals": "cue"},
        "lever": {"source": "trials", "column": "kind", "equals": "lever"},
    },
}


def one_line(error: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    return message


def events(rec: Planted) -> dict[str, Any]:
    return {name: rec.event_times(name) for name in ("cue", "lever")}


@pytest.fixture(scope="module")
def recording() -> Planted:
    return planted(3000, FS, seed=11, t0=2.0)


@pytest.fixture(scope="module")
def one_fiber(recording: Planted, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """raw_465 and raw_405 in acquisition, sampled at a rate from 2 s; the file caches
    ndx-events' schema, as those written with it do."""
    path = per_wavelength_file(
        tmp_path_factory.mktemp("nwbp") / "one.nwb",
        recording.time,
        {465.0: recording.signal, 405.0: recording.isosbestic},
        events(recording),
        rate=FS,
    )
    cache_ndx_events(path)
    return path


def test_round_trip(one_fiber: Path, recording: Planted, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        ds = load_nwb_photometry(str(one_fiber), ARGS)
    # the file caches ndx-events' schema, whose EventsTable NWB made core: hdmf's warnings
    # about it are not for the user
    assert caplog.records == []
    check_recording_shape(ds)
    np.testing.assert_array_equal(ds.signal.values, recording.signal)
    np.testing.assert_array_equal(ds.isosbestic.values, recording.isosbestic)
    np.testing.assert_allclose(ds.time.values, recording.time, rtol=0, atol=1e-12)
    assert ds.attrs["sampling_rate"] == pytest.approx(FS, rel=1e-12)
    for name in ("cue", "lever"):
        np.testing.assert_array_equal(events_of(ds, name), recording.event_times(name))
    assert ds.attrs["acquisition"] == {
        "format": "nwb-photometry",
        "signal": "acquisition/raw_465",
        "isosbestic": "acquisition/raw_405",
        "unit": "V",
        "events": {"cue": "intervals/trials", "lever": "intervals/trials"},
    }
    expected = {
        "location": "VTA",
        "fiber": "fiber_VTA",
        "indicator": "GCaMP6f",
        "excitation_wavelength_nm": 465.0,
        "emission_wavelength_nm": 525.0,
        "isosbestic_wavelength_nm": 405.0,
        "subject": "m7",
        "species": "Mus musculus",
        "sex": "F",
        "age": "P90D",
        "nwb_identifier": "fp-1",
        "session_start_time": "2024-05-06T10:00:00+00:00",
    }
    assert {key: ds.attrs[key] for key in expected} == expected
    json.dumps(ds.attrs)  # stored with the item


def test_by_name_nearest_wavelength_and_single_channel(one_fiber: Path, recording: Planted) -> None:
    by_name = load_nwb_photometry(
        str(one_fiber), {"signal": "raw_465", "isosbestic": "acquisition/raw_405"}
    )
    # 470 and 410 are the nearest within the default 10 nm
    nearest = load_nwb_photometry(str(one_fiber), {"signal": 470, "isosbestic": 410})
    for ds in (by_name, nearest):
        np.testing.assert_array_equal(ds.signal.values, recording.signal)
        np.testing.assert_array_equal(ds.isosbestic.values, recording.isosbestic)
    single = load_nwb_photometry(str(one_fiber), {"signal": 465, "isosbestic": None})
    assert "isosbestic" not in single
    assert "isosbestic_wavelength_nm" not in single.attrs
    assert single.attrs["event_names"] == []

    with pytest.raises(
        InputError,
        match=r"has no channel excited within 10 nm of 490 nm \(loader\.signal\); its channels: "
        r"'acquisition/raw_405' \(405 nm, row 1, VTA\), 'acquisition/raw_465' \(465 nm, row 0, "
        r"VTA\)",
    ) as e:
        load_nwb_photometry(str(one_fiber), {"signal": 490, "isosbestic": None})
    one_line(e)
    # a wider tolerance takes it
    wide = load_nwb_photometry(
        str(one_fiber), {"signal": 490, "isosbestic": None, "wavelength_tolerance_nm": 30}
    )
    np.testing.assert_array_equal(wide.signal.values, recording.signal)
    with pytest.raises(
        InputError,
        match=r"has no FiberPhotometryResponseSeries 'raw_456' \(loader\.signal; did you mean "
        r"'raw_465'\?\)",
    ):
        load_nwb_photometry(str(one_fiber), {"signal": "raw_456", "isosbestic": None})


def test_events_from_tables_and_series(tmp_path: Path, recording: Planted) -> None:
    """Events from an EventsTable (NWB's, and one stored in ndx-events' namespace), the tags
    of TimeIntervals rows, an AnnotationSeries' text and a TimeSeries' timestamps."""
    cues, presses = recording.event_times("cue"), recording.event_times("lever")
    nwbfile = new_file()
    table = add_table(nwbfile, [("VTA", 470.0)])
    nwbfile.add_acquisition(
        response_series(table, "fp", recording.signal, [0], time=recording.time)
    )
    lever = EventsTable(name="lever_events", description="lever presses and releases")
    lever.add_column(name="label", description="press or release")
    for t in presses:
        lever.add_row(timestamp=float(t), label="press")
        lever.add_row(timestamp=float(t) + 0.2, label="release")
    nwbfile.add_events_table(lever)
    nwbfile.add_epoch_column(name="phase", description="task phase")
    nwbfile.add_epoch(start_time=0.0, stop_time=30.0, tags=["baseline"], phase=1)
    nwbfile.add_epoch(start_time=30.0, stop_time=62.0, tags=["task", "rewarded"], phase=2)
    with pytest.warns(UserWarning, match="AnnotationSeries is deprecated"):
        notes = AnnotationSeries(
            name="notes", data=["cue"] * cues.size + ["other"], timestamps=[*cues, 61.0]
        )
    behavior = nwbfile.create_processing_module(name="behavior", description="task events")
    behavior.add(notes)
    nwbfile.add_acquisition(
        TimeSeries(name="licks", data=np.ones(3), unit="n.a.", timestamps=[3.0, 4.5, 9.0])
    )
    path = write(tmp_path / "events.nwb", nwbfile)
    # ndx-events 0.4 files (before NWB 2.9 made EventsTable core) store it in its namespace
    cache_ndx_events(path)
    with h5py.File(path, "r+") as f:
        f["events/lever_events"].attrs["namespace"] = "ndx-events"

    arguments = {
        "signal": 470,
        "isosbestic": None,
        "events": {
            "press": {"source": "lever_events", "column": "label", "equals": "press"},
            "release": {"source": "events/lever_events", "column": "label", "equals": "release"},
            "task": {"source": "epochs", "column": "tags", "equals": "task"},
            "phase1": {
                "source": "epochs",
                "column": "phase",
                "equals": 1,
                "time_column": "stop_time",
            },
            "cue": {"source": "notes", "equals": "cue"},
            "licks": "licks",
        },
    }
    ds = load_nwb_photometry(str(path), arguments)
    assert ds.attrs["event_names"] == ["press", "release", "task", "phase1", "cue", "licks"]
    np.testing.assert_array_equal(events_of(ds, "press"), presses)
    np.testing.assert_allclose(events_of(ds, "release"), presses + 0.2, rtol=0, atol=1e-12)
    assert events_of(ds, "task").tolist() == [30.0]
    assert events_of(ds, "phase1").tolist() == [30.0]
    np.testing.assert_array_equal(events_of(ds, "cue"), cues)
    assert events_of(ds, "licks").tolist() == [3.0, 4.5, 9.0]
    assert ds.attrs["acquisition"]["events"]["press"] == "events/lever_events"

    bad_column = {"source": "lever_events", "column": "lable", "equals": "press"}
    with pytest.raises(
        InputError,
        match=r"table 'events/lever_events' has no column 'lable' \(loader\.events\.press\.column; "
        r"did you mean 'label'\?\); its columns: 'timestamp', 'label'",
    ) as e:
        load_nwb_photometry(str(path), {**arguments, "events": {"press": bad_column}})
    one_line(e)
    with pytest.raises(
        InputError,
        match=r"has no TimeSeries or table 'lick' \(loader\.events\.licks; did you mean 'licks'\?\)",
    ):
        load_nwb_photometry(str(path), {**arguments, "events": {"licks": "lick"}})
    with pytest.raises(
        InputError, match=r"AnnotationSeries 'processing/behavior/notes' is a series"
    ):
        load_nwb_photometry(
            str(path),
            {**arguments, "events": {"cue": {"source": "notes", "column": "x", "equals": "cue"}}},
        )


@pytest.fixture(scope="module")
def two_fibers(recording: Planted, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One 2-D series: columns VTA 465, VTA 405, NAc 465, NAc 405 (int16 counts, chunked in
    uneven 7-sample chunks); its isosbestic timestamps are its own."""
    nwbfile = new_file("fp-2")
    rows = [("VTA", 465.0), ("VTA", 405.0), ("NAc", 465.0), ("NAc", 405.0)]
    table = add_table(nwbfile, rows)
    counts = np.stack(
        [recording.signal, recording.isosbestic, recording.signal + 1, recording.isosbestic + 1],
        axis=1,
    )
    counts = np.round(counts * 1000).astype(np.int16)
    data = H5DataIO(counts, chunks=(7, 4), compression="gzip")
    nwbfile.add_acquisition(
        response_series(table, "fp", data, [0, 1, 2, 3], time=recording.time, conversion=1e-3)
    )
    add_trials(nwbfile, recording.event_times("cue"), recording.event_times("lever"))
    return write(tmp_path_factory.mktemp("nwbp") / "two.nwb", nwbfile)


def test_columns_of_a_2d_series(
    two_fibers: Path, recording: Planted, monkeypatch: pytest.MonkeyPatch
) -> None:
    counts = np.round(recording.signal * 1000).astype(np.int16)
    with pytest.raises(
        InputError,
        match=r"has 2 channels of 465 nm \(loader\.signal\): 'acquisition/fp\[:, 0\]' \(465 nm, "
        r"row 0, VTA\), 'acquisition/fp\[:, 2\]' \(465 nm, row 2, NAc\); pick one with "
        r"loader\.fiber",
    ) as e:
        load_nwb_photometry(str(two_fibers), ARGS)
    one_line(e)
    whole = load_nwb_photometry(str(two_fibers), {**ARGS, "fiber": "NAc"})
    np.testing.assert_allclose(whole.signal.values, (counts + 1000) * 1e-3, rtol=1e-12)
    # reads of one HDF5 chunk (7 samples), of 4 and of 17 chunks (uneven at the end), of all
    for read_bytes in (1, 8 * 7 * 4, 8 * 30 * 4, 8 * 3000 * 4 + 1):
        monkeypatch.setattr(module, "_READ_BYTES", read_bytes)
        nac = load_nwb_photometry(str(two_fibers), {**ARGS, "fiber": "NAc"})
        np.testing.assert_array_equal(nac.signal.values, whole.signal.values)
        np.testing.assert_array_equal(nac.isosbestic.values, whole.isosbestic.values)
    vta = load_nwb_photometry(str(two_fibers), {**ARGS, "fiber": "fiber_VTA"})
    np.testing.assert_allclose(vta.signal.values, counts * 1e-3, rtol=1e-12)
    assert vta.attrs["acquisition"]["signal"] == "acquisition/fp[:, 0]"
    assert vta.attrs["acquisition"]["isosbestic"] == "acquisition/fp[:, 1]"
    assert (vta.attrs["location"], vta.attrs["fiber"]) == ("VTA", "fiber_VTA")
    with pytest.raises(
        InputError,
        match=r"no channel of 465 nm \(loader\.signal\) is fibre 'CA1' \(loader\.fiber\)",
    ):
        load_nwb_photometry(str(two_fibers), {**ARGS, "fiber": "CA1"})


def test_isosbestic_on_its_own_times(tmp_path: Path, recording: Planted) -> None:
    """Interleaved excitation: the 405 nm frames fall between the 465 nm ones."""
    nwbfile = new_file()
    table = add_table(nwbfile, [("VTA", 465.0), ("VTA", 405.0)])
    iso_time = recording.time + 0.5 / FS
    nwbfile.add_acquisition(
        response_series(table, "raw_465", recording.signal, [0], time=recording.time)
    )
    nwbfile.add_acquisition(
        response_series(table, "raw_405", recording.isosbestic, [1], time=iso_time)
    )
    path = write(tmp_path / "interleaved.nwb", nwbfile)
    ds = load_nwb_photometry(str(path), {"signal": 465, "isosbestic": 405})
    # the signal's samples within the isosbestic's span, the isosbestic interpolated onto them
    np.testing.assert_array_equal(ds.time.values, recording.time[1:])
    np.testing.assert_array_equal(ds.signal.values, recording.signal[1:])
    expected = np.interp(recording.time[1:], iso_time, recording.isosbestic)
    np.testing.assert_allclose(ds.isosbestic.values, expected, rtol=1e-12)


def test_from_s3(one_fiber: Path, recording: Planted, s3_options: dict[str, Any]) -> None:
    fs = fsspec.filesystem("s3", **s3_options)
    fs.put_file(str(one_fiber), "lab/nwb/one.nwb")
    url = "s3://lab/nwb/one.nwb"
    ds = load_recording(
        url,
        {**ARGS, "format": "nwb-photometry"},
        format="nwb-photometry",
        storage_options=s3_options,
    )
    local = load_nwb_photometry(str(one_fiber), ARGS)
    np.testing.assert_array_equal(ds.signal.values, local.signal.values)
    np.testing.assert_array_equal(ds.isosbestic.values, local.isosbestic.values)
    np.testing.assert_array_equal(ds.event_time.values, local.event_time.values)
    assert ds.attrs["source"] == url
    assert check_nwb_photometry(url, ARGS, storage_options=s3_options) == local.attrs["acquisition"]


def test_files_without_photometry(tmp_path: Path) -> None:
    nwbfile = new_file()
    device = nwbfile.create_device(name="probe")
    group = nwbfile.create_electrode_group(
        name="shank", description="shank", location="CA1", device=device
    )
    for _ in range(2):
        nwbfile.add_electrode(group=group, location="CA1")
    region = nwbfile.create_electrode_table_region(region=[0, 1], description="all")
    nwbfile.add_acquisition(
        ElectricalSeries(name="raw", data=np.zeros((10, 2)), electrodes=region, rate=1000.0)
    )
    nwbfile.create_processing_module(name="behavior", description="b").add(
        TimeSeries(name="wheel", data=np.zeros(10), unit="m", rate=10.0)
    )
    ephys = write(tmp_path / "ephys.nwb", nwbfile)
    expected = (
        r"NWB file '.*ephys\.nwb' holds no FiberPhotometryResponseSeries \(format "
        r"'nwb-photometry' reads fiber photometry written with ndx-fiber-photometry\); it "
        r"holds acquisition/raw \(ElectricalSeries\), processing/behavior/wheel \(TimeSeries\)$"
    )
    check = LOADERS["nwb-photometry"].check
    assert check is check_nwb_photometry
    for read in (check, load_nwb_photometry):
        with pytest.raises(InputError, match=expected) as e:
            read(str(ephys), ARGS)
        one_line(e)
    with pytest.raises(InputNotFoundError, match=r"input '.*missing\.nwb' does not exist"):
        load_nwb_photometry(str(tmp_path / "missing.nwb"), ARGS)


def test_arguments() -> None:
    spec = LOADERS["nwb-photometry"]
    assert (spec.target, spec.chunked) == ("file", False)
    with pytest.raises(ConfigError, match=r"signal: .*4650 nm is not an excitation wavelength"):
        load_recording("x.nwb", {"signal": 4650, "isosbestic": None}, format="nwb-photometry")
    with pytest.raises(ConfigError, match=r"signal and isosbestic are both 465\.0"):
        load_recording("x.nwb", {"signal": 465, "isosbestic": 465.0}, format="nwb-photometry")
    with pytest.raises(ConfigError, match=r"column 'kind' is named but not the value"):
        load_recording(
            "x.nwb",
            {
                "signal": 465,
                "isosbestic": None,
                "events": {"cue": {"source": "t", "column": "kind"}},
            },
            format="nwb-photometry",
        )
    with pytest.raises(
        ConfigError, match=r"isosbestc: unknown argument; did you mean 'isosbestic'"
    ):
        load_recording("x.nwb", {"signal": 465, "isosbestc": 405}, format="nwb-photometry")


def test_pipeline_equals_the_csv_run(
    recording: Planted, tmp_path: Path, local_client: Client
) -> None:
    """Two NWB files through a whole photometry pipeline give the trials of the same
    recordings as PhoPro-layout CSV files."""
    for i, seed in enumerate((5, 6)):
        rec = planted(3000, 100.0, seed=seed)
        name = f"experiment_{i + 1}"
        per_wavelength_file(
            tmp_path / "nwb" / f"{name}.nwb",
            rec.time,
            {465.0: rec.signal, 405.0: rec.isosbestic},
            events(rec),
            identifier=name,
            rate=100.0,
        )
        write_phopro_csv(
            tmp_path / "csv" / f"{name}.csv", rec.time, rec.signal, rec.isosbestic, events(rec)
        )
    loader = {"format": "nwb-photometry", **ARGS}
    native, csv = run_both(
        tmp_path / "nwb", "*.nwb", loader, tmp_path / "csv", tmp_path / "out", local_client
    )
    assert_same_trials(native, csv)
