"""Tests of the ``doric`` loader on files written in Doric's published layouts.

The ``.doric`` fixtures are written with h5py as Doric Neuroscience Studio lays them out
(Doric's ``ReadDoricFile`` notebook and GuPPy's Doric reader give the paths): V6,
``DataAcquisition/FPConsole/Signals/Series0001/<AIN01xAOUT01-LockIn>/{Values,Time}``,
``.../AnalogIn/{AIN01,Time}``, ``.../DigitalIO/{DIO01,DIO02,Time}`` beside a
``Configurations`` group; the older layout, ``Traces/Console/<channel>/<channel>`` on
``Traces/Console/Time(s)/Console_time(s)``; the CSV export, two header lines. Doric's own
reader does not install from the package index: the decoded values are checked against the
values the tests planted, and the events against the planted onsets.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import fsspec
import h5py
import numpy as np
import pytest
import xarray as xr
from distributed import Client
from numpy.typing import NDArray

from acquisition_files import Planted, assert_same_trials, planted, run_both, write_phopro_csv
from neurobatch.errors import ConfigError, InputError, InputNotFoundError
from neurobatch.io.loaders import LOADERS, load_recording
from neurobatch.io.loaders.doric import load_doric
from photometry_files import check_recording_shape, events_of

FS = 100.0
SERIES = "DataAcquisition/FPConsole/Signals/Series0001"

# ---------------------------------------------------------------------------------------------
# Writers of Doric's layouts
# ---------------------------------------------------------------------------------------------


def write_doric_v6(
    path: Path,
    groups: Mapping[str, Mapping[str, NDArray[Any]]],
    *,
    console: str = "FPConsole",
) -> Path:
    """A V6 ``.doric`` file: each group (under ``Series0001``) with its datasets and ``Time``.

    As Doric Neuroscience Studio writes it, the file also holds the acquisition settings under
    ``Configurations/<console>``, and datasets carry ``Username`` and ``Unit`` attributes.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        settings = f.require_group(f"Configurations/{console}/GlobalSettings")
        settings.attrs["SamplingRate"] = FS
        f.require_group(f"Configurations/{console}/AIN01/Settings")
        for group_path, datasets in groups.items():
            group = f.require_group(f"DataAcquisition/{console}/Signals/Series0001/{group_path}")
            for name, values in datasets.items():
                dataset = group.create_dataset(name, data=values)
                if name != "Time":
                    dataset.attrs["Username"] = group_path if name == "Values" else name
                    dataset.attrs["Unit"] = "V"
    return path


def v6_groups(rec: Planted) -> dict[str, dict[str, NDArray[Any]]]:
    """A lock-in recording: the 465 nm (AOUT02) and 405 nm (AOUT01) demodulated channels,
    the raw photodetector input, and two digital inputs, each group with its own Time."""
    return {
        "AIN01xAOUT01-LockIn": {"Values": rec.isosbestic, "Time": rec.time},
        "AIN01xAOUT02-LockIn": {"Values": rec.signal, "Time": rec.time.copy()},
        "AnalogIn": {"AIN01": rec.signal + rec.isosbestic, "Time": rec.time.copy()},
        "DigitalIO": {
            "DIO01": rec.levels("cue").astype(np.float64),
            "DIO02": rec.levels("lever").astype(np.float64),
            "Time": rec.time.copy(),
        },
    }


def write_doric_older(
    path: Path, time: NDArray[np.float64], channels: Mapping[str, NDArray[np.float64]]
) -> Path:
    """An older ``.doric`` file: ``Traces/Console/<name>/<name>`` on the console's time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        console = f.require_group("Traces/Console")
        console.require_group("Time(s)").create_dataset("Console_time(s)", data=time)
        for name, values in channels.items():
            console.require_group(name).create_dataset(name, data=values)
    return path


def write_doric_csv(
    path: Path,
    time: NDArray[np.float64],
    channels: Mapping[str, NDArray[np.float64]],
    *,
    names_first: bool = False,
) -> Path:
    """Doric's CSV export: a description line then the names (older exports), or the names
    then a units line (V6 exports); every line ends with a comma."""
    names = ["Time(s)", *channels]
    if names_first:
        header = ",".join(names) + ",\n" + ",".join(["Unit", *("V" for _ in channels)]) + ",\n"
    else:
        kinds = ["Digital I/O | Ch.1" if "DI" in name else "Analog In. | Ch.1" for name in channels]
        header = ",".join(["---", *kinds]) + ",\n" + ",".join(names) + ",\n"
    columns = np.column_stack([time, *channels.values()])
    rows = "".join(",".join(repr(float(v)) for v in row) + ",\n" for row in columns)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + rows)
    return path


def older_channels(rec: Planted) -> dict[str, NDArray[np.float64]]:
    return {
        "AIn-1 - Dem (AOut-1)": rec.isosbestic,
        "AIn-1 - Dem (AOut-2)": rec.signal,
        "AIn-1 - Raw": rec.signal + rec.isosbestic,
        "DI--O-1": rec.levels("cue").astype(np.float64),
        "DI--O-2": rec.levels("lever").astype(np.float64),
    }


V6_ARGS = {
    "signal_channel": "AIN01xAOUT02-LockIn",
    "isosbestic_channel": "AIN01xAOUT01-LockIn",
    "event_channels": {"cue": "DIO01", "lever": "DIO02"},
}


@pytest.fixture
def rec() -> Planted:
    return planted(3000, FS, seed=3)


def _check_planted(ds: xr.Dataset, rec: Planted) -> None:
    check_recording_shape(ds)
    np.testing.assert_array_equal(ds.time.values, rec.time)
    np.testing.assert_array_equal(ds.signal.values, rec.signal)
    np.testing.assert_array_equal(ds.isosbestic.values, rec.isosbestic)
    for name in ("cue", "lever"):
        np.testing.assert_array_equal(events_of(ds, name), rec.event_times(name))
    assert ds.attrs["sampling_rate"] == pytest.approx(FS, rel=1e-9)


# ---------------------------------------------------------------------------------------------
# The three layouts
# ---------------------------------------------------------------------------------------------


def test_v6_file_reads_the_lock_in_channels_and_digital_edges(tmp_path: Path, rec: Planted) -> None:
    path = write_doric_v6(tmp_path / "mouse1.doric", v6_groups(rec))
    ds = load_doric(str(path), V6_ARGS)
    _check_planted(ds, rec)
    assert ds.attrs["acquisition"] == {
        "format": "doric",
        "layout": "V6",
        "signal": "FPConsole/Signals/Series0001/AIN01xAOUT02-LockIn",
        "isosbestic": "FPConsole/Signals/Series0001/AIN01xAOUT01-LockIn",
        "events": {
            "cue": "FPConsole/Signals/Series0001/DigitalIO/DIO01",
            "lever": "FPConsole/Signals/Series0001/DigitalIO/DIO02",
        },
    }


@pytest.mark.parametrize(
    "signal",
    [
        "AIN01xAOUT02-LockIn",
        "Series0001/AIN01xAOUT02-LockIn",  # GuPPy's name for it
        "FPConsole/Signals/Series0001/AIN01xAOUT02-LockIn",
        "AnalogIn/AIN01",
        "AIN01",
    ],
)
def test_v6_channels_are_named_by_any_tail_of_their_path(
    tmp_path: Path, rec: Planted, signal: str
) -> None:
    path = write_doric_v6(tmp_path / "mouse1.doric", v6_groups(rec))
    ds = load_doric(str(path), {"signal_channel": signal, "isosbestic_channel": None})
    expected = (
        rec.signal + rec.isosbestic if "AIN01" in signal and "Lock" not in signal else rec.signal
    )
    np.testing.assert_array_equal(ds.signal.values, expected)
    assert "isosbestic" not in ds


def test_older_file_reads_the_console_traces(tmp_path: Path, rec: Planted) -> None:
    path = write_doric_older(tmp_path / "mouse1.doric", rec.time, older_channels(rec))
    ds = load_doric(
        str(path),
        {
            "signal_channel": "AIn-1 - Dem (AOut-2)",
            "isosbestic_channel": "Console/AIn-1 - Dem (AOut-1)",
            "event_channels": {"cue": "DI--O-1", "lever": "DI--O-2"},
        },
    )
    _check_planted(ds, rec)
    assert ds.attrs["acquisition"]["layout"] == "older"
    assert ds.attrs["acquisition"]["signal"] == "Console/AIn-1 - Dem (AOut-2)"


@pytest.mark.parametrize("names_first", [False, True])
def test_csv_export_reads_both_header_styles(
    tmp_path: Path, rec: Planted, names_first: bool
) -> None:
    if names_first:  # a V6 export: lock-in columns named <group>/Values, a units line
        channels = {
            "AIN01xAOUT01-LockIn/Values": rec.isosbestic,
            "AIN01xAOUT02-LockIn/Values": rec.signal,
            "DigitalIO/DIO01": rec.levels("cue").astype(np.float64),
            "DigitalIO/DIO02": rec.levels("lever").astype(np.float64),
        }
        args = V6_ARGS
    else:  # an older export: "---,Analog In. | Ch.1,..." then the names
        channels = {
            "AIn-1 - Dem (AOut-1)": rec.isosbestic,
            "AIn-1 - Dem (AOut-2)": rec.signal,
            "DI/O-1": rec.levels("cue").astype(np.float64),
            "DI/O-2": rec.levels("lever").astype(np.float64),
        }
        args = {
            "signal_channel": "AIn-1 - Dem (AOut-2)",
            "isosbestic_channel": "AIn-1 - Dem (AOut-1)",
            "event_channels": {"cue": "DI/O-1", "lever": "DI/O-2"},
        }
    path = write_doric_csv(tmp_path / "mouse1.csv", rec.time, channels, names_first=names_first)
    ds = load_doric(str(path), args)
    _check_planted(ds, rec)
    assert ds.attrs["acquisition"]["layout"].startswith("CSV")


def test_a_remote_file_is_read_through_fsspec(tmp_path: Path, rec: Planted) -> None:
    path = write_doric_v6(tmp_path / "mouse1.doric", v6_groups(rec))
    fsspec.filesystem("memory").pipe("/doric-remote/mouse1.doric", path.read_bytes())
    ds = load_doric("memory://doric-remote/mouse1.doric", V6_ARGS)
    _check_planted(ds, rec)
    assert ds.attrs["source"] == "memory://doric-remote/mouse1.doric"


def test_the_sidecar_is_merged(tmp_path: Path, rec: Planted) -> None:
    path = write_doric_v6(tmp_path / "mouse1.doric", v6_groups(rec))
    (tmp_path / "mouse1.json").write_text(json.dumps({"subject": "m1", "sex": "F"}))
    ds = load_doric(str(path), {**V6_ARGS, "annotation": "{stem}.json"})
    assert ds.attrs["subject"] == "m1" and ds.attrs["sex"] == "F"


# ---------------------------------------------------------------------------------------------
# Time bases, edges, non-finite samples
# ---------------------------------------------------------------------------------------------


def test_an_isosbestic_on_other_times_is_interpolated_onto_the_signal(tmp_path: Path) -> None:
    n = 2000
    time = np.arange(n) / FS
    iso_time = time + 0.4 / FS  # sampled 4 ms later
    signal = 1.0 + 0.001 * np.arange(n)
    # a line in time, whose linear interpolation is exact: a + b * t at the signal's times
    isosbestic = 0.5 + 0.25 * iso_time
    path = write_doric_v6(
        tmp_path / "a.doric",
        {
            "AIN01xAOUT02-LockIn": {"Values": signal, "Time": time},
            "AIN01xAOUT01-LockIn": {"Values": isosbestic, "Time": iso_time},
        },
    )
    ds = load_doric(str(path), {**V6_ARGS, "event_channels": {}})
    # the first signal sample is before the isosbestic starts: dropped, not extrapolated
    np.testing.assert_array_equal(ds.time.values, time[1:])
    np.testing.assert_array_equal(ds.signal.values, signal[1:])
    np.testing.assert_allclose(ds.isosbestic.values, 0.5 + 0.25 * time[1:], rtol=0, atol=1e-15)


def test_rising_edges_only(tmp_path: Path) -> None:
    """High at the first sample is no event; still high at the last sample is one."""
    n = 400
    time = 10.0 + np.arange(n) / FS  # an absolute clock: times are kept as recorded
    line = np.zeros(n)
    line[:5] = 1  # high from the start: its onset was not recorded
    line[100:103] = 1
    line[200:201] = 5.0  # a TTL at 5 V
    line[398:] = 1  # rises 2 samples before the end
    path = write_doric_v6(
        tmp_path / "a.doric",
        {
            "AnalogIn": {"AIN01": np.linspace(1, 2, n), "Time": time},
            "DigitalIO": {"DIO01": line, "Time": time},
        },
    )
    ds = load_doric(
        str(path),
        {"signal_channel": "AIN01", "isosbestic_channel": None, "event_channels": ["DIO01"]},
    )
    np.testing.assert_array_equal(events_of(ds, "DIO01"), time[[100, 200, 398]])
    assert ds.time.values[0] == 10.0


def test_leading_nan_of_a_lock_in_channel_is_dropped(tmp_path: Path, rec: Planted) -> None:
    groups = v6_groups(rec)
    signal = rec.signal.copy()
    signal[:3] = np.nan  # the lock-in filter settling
    groups["AIN01xAOUT02-LockIn"]["Values"] = signal
    path = write_doric_v6(tmp_path / "a.doric", groups)
    ds = load_doric(str(path), V6_ARGS)
    np.testing.assert_array_equal(ds.time.values, rec.time[3:])
    np.testing.assert_array_equal(ds.isosbestic.values, rec.isosbestic[3:])


# ---------------------------------------------------------------------------------------------
# Errors for people
# ---------------------------------------------------------------------------------------------


def test_a_missing_channel_names_the_file_the_closest_and_the_channels(
    tmp_path: Path, rec: Planted
) -> None:
    path = write_doric_v6(tmp_path / "a.doric", v6_groups(rec))
    with pytest.raises(InputError) as caught:
        load_doric(str(path), {**V6_ARGS, "signal_channel": "AIN01xAOUT03-LockIn"})
    message = str(caught.value)
    assert message.startswith(
        f"{str(path)!r} has no channel 'AIN01xAOUT03-LockIn' (signal_channel; did you mean"
    )
    assert "'FPConsole/Signals/Series0001/DigitalIO/DIO02'" in message and "\n" not in message


def test_an_ambiguous_channel_names_the_channels_it_fits(tmp_path: Path, rec: Planted) -> None:
    path = tmp_path / "a.doric"
    with h5py.File(path, "w") as f:
        for series in ("Series0001", "Series0002"):
            group = f.require_group(
                f"DataAcquisition/FPConsole/Signals/{series}/AIN01xAOUT01-LockIn"
            )
            group.create_dataset("Values", data=rec.signal)
            group.create_dataset("Time", data=rec.time)
    with pytest.raises(
        InputError,
        match=r"channel 'AIN01xAOUT01-LockIn' \(signal_channel\) fits 2 channels: .*Series0001.*Series0002.*longer part of its path",
    ):
        load_doric(str(path), {"signal_channel": "AIN01xAOUT01-LockIn", "isosbestic_channel": None})
    ds = load_doric(
        str(path), {"signal_channel": "Series0002/AIN01xAOUT01-LockIn", "isosbestic_channel": None}
    )
    assert ds.sizes["time"] == rec.time.size


def test_an_unused_channel_of_nan_is_named(tmp_path: Path, rec: Planted) -> None:
    channels = older_channels(rec)
    channels["AIn-1 - Dem (AOut-2)"] = np.full(rec.time.size, np.nan)
    path = write_doric_older(tmp_path / "a.doric", rec.time, channels)
    with pytest.raises(
        InputError,
        match=r"no sample of channels 'Console/AIn-1 - Dem \(AOut-2\)' and 'Console/AIn-1 - Dem \(AOut-1\)' is finite .*an unused channel",
    ):
        load_doric(
            str(path),
            {
                "signal_channel": "AIn-1 - Dem (AOut-2)",
                "isosbestic_channel": "AIn-1 - Dem (AOut-1)",
            },
        )


def test_a_nan_inside_the_recording_is_placed(tmp_path: Path, rec: Planted) -> None:
    groups = v6_groups(rec)
    groups["AIN01xAOUT02-LockIn"]["Values"] = rec.signal.copy()
    groups["AIN01xAOUT02-LockIn"]["Values"][1500] = np.nan
    path = write_doric_v6(tmp_path / "a.doric", groups)
    with pytest.raises(
        InputError, match=r"channel '.*AIN01xAOUT02-LockIn' has a NaN.* at sample 1500"
    ):
        load_doric(str(path), V6_ARGS)


def test_an_hdf5_file_without_doric_groups(tmp_path: Path) -> None:
    path = tmp_path / "other.doric"
    with h5py.File(path, "w") as f:
        f.create_dataset("acquisition/data", data=np.zeros(3))
    with pytest.raises(
        InputError,
        match=r"holds neither DataAcquisition \(Doric V6\) nor Traces .* its top-level entries: 'acquisition'",
    ):
        load_doric(str(path), V6_ARGS)


def test_a_truncated_doric_file(tmp_path: Path, rec: Planted) -> None:
    path = write_doric_v6(tmp_path / "a.doric", v6_groups(rec))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(InputError, match=r"(cannot be read as HDF5|cannot read channel).*"):
        load_doric(str(path), V6_ARGS)


def test_a_plain_csv_is_not_a_doric_export(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text("time,signal\n0.0,1.0\n0.1,1.1\n")
    with pytest.raises(
        InputError,
        match=r"is not a Doric file: it is UTF-8 text .*neither of its first two lines has a 'Time\(s\)' column",
    ):
        load_doric(str(path), V6_ARGS)


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda p: None, InputNotFoundError, "does not exist"),
        (lambda p: p.mkdir(), InputError, "is a folder; format 'doric' reads files"),
        (lambda p: p.write_bytes(b""), InputError, "is empty"),
        (lambda p: p.write_bytes("a,b\n".encode("utf-16")), InputError, "UTF-16 text"),
    ],
)
def test_inputs_that_are_not_doric_files(
    tmp_path: Path, make: object, error: type[Exception], match: str
) -> None:
    path = tmp_path / "x.doric"
    make(path)  # type: ignore[operator]
    with pytest.raises(error, match=match):
        load_doric(str(path), V6_ARGS)


def test_bad_arguments_are_config_errors() -> None:
    with pytest.raises(
        ConfigError, match=r"signal_chanel: unknown argument; did you mean 'signal_channel'"
    ):
        load_doric("x.doric", {"signal_chanel": "a", "isosbestic_channel": None})
    with pytest.raises(ConfigError, match=r"event name 'DigitalIO/DIO01' has a '/'"):
        load_doric(
            "x.doric",
            {
                "signal_channel": "a",
                "isosbestic_channel": None,
                "event_channels": ["DigitalIO/DIO01"],
            },
        )
    with pytest.raises(ConfigError, match=r"signal_channel and isosbestic_channel are both 'a'"):
        load_doric("x.doric", {"signal_channel": "a", "isosbestic_channel": "a"})


def test_registered_as_format_doric(tmp_path: Path, rec: Planted) -> None:
    path = write_doric_v6(tmp_path / "mouse1.doric", v6_groups(rec))
    assert LOADERS["doric"].target == "file" and not LOADERS["doric"].chunked
    ds = load_recording(str(path), {"format": "doric", **V6_ARGS}, format="doric")
    xr.testing.assert_identical(ds, load_doric(str(path), V6_ARGS))


# ---------------------------------------------------------------------------------------------
# End to end: a batch of .doric files gives the trials of the same data as PhoPro CSV
# ---------------------------------------------------------------------------------------------


def test_pipeline_on_doric_files_equals_pipeline_on_their_csv(
    tmp_path: Path, local_client: Client
) -> None:
    for k in range(2):
        rec = planted(6000, FS, seed=10 + k)
        write_doric_v6(tmp_path / "doric" / f"mouse{k}.doric", v6_groups(rec))
        events = {name: rec.event_times(name) for name in ("cue", "lever")}
        write_phopro_csv(
            tmp_path / "csv" / f"mouse{k}.csv", rec.time, rec.signal, rec.isosbestic, events
        )
    native, csv = run_both(
        tmp_path / "doric",
        "*.doric",
        {"format": "doric", **V6_ARGS},
        tmp_path / "csv",
        tmp_path / "out",
        local_client,
    )
    assert_same_trials(native, csv)
