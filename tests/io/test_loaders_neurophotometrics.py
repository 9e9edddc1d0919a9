"""Tests of the ``neurophotometrics`` loader on CSVs written in Neurophotometrics' layout.

The fixtures are the files Neurophotometrics' Bonsai workflow writes, as GuPPy's and IBL's
readers take them: one row per camera frame (``FrameCounter``, ``Timestamp`` or
``SystemTimestamp`` and ``ComputerTimestamp`` (ms), ``LedState`` or, in older files,
``Flags`` with higher bits set, ``Region<n><G|R>``), the LEDs taking turns frame by frame
(state 1 = 415 nm, 2 = 470 nm, 4 = 560 nm), and a separate event file of ``time,state`` rows
(with or without a header). No vendor reader installs from the package index: the
demultiplexed channels are checked against the planted frame values, the isosbestic
interpolation against a channel that is a line in time (exact under linear interpolation),
and the events against the planted event times.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from distributed import Client
from numpy.typing import NDArray

from acquisition_files import assert_same_trials, planted, run_both, write_phopro_csv
from neurobatch.errors import ConfigError, InputError, InputNotFoundError
from neurobatch.io.loaders import LOADERS, load_recording
from neurobatch.io.loaders.neurophotometrics import load_neurophotometrics
from photometry_files import check_recording_shape, events_of

RATE = 40.0  # frames per second; each of two LEDs at 20 Hz
T0 = 1234.5  # the FP3002's clock at the first frame (s)
PC0 = 45_000_000.0  # the computer's clock at the first frame (ms)
DRIFT = 1 + 20e-6  # the computer's clock runs 20 ppm fast


@dataclass
class Frames:
    table: pd.DataFrame
    leds: NDArray[np.int64]  # wavelength of each frame
    time: NDArray[np.float64]  # the FP3002 clock (s)
    computer: NDArray[np.float64]  # the computer clock (ms)


def frames(
    n: int,
    *,
    cycle: Sequence[int] = (415, 470),
    seed: int = 0,
    style: str = "v2",
    extra_bits: int = 0,
) -> Frames:
    """A Neurophotometrics file's frames: ``style`` v2 (SystemTimestamp, LedState,
    ComputerTimestamp, three regions), v1 (Timestamp, Flags, two regions)."""
    rng = np.random.default_rng(seed)
    k = np.arange(n)
    leds = np.asarray(cycle)[k % len(cycle)]
    state = np.select([leds == 415, leds == 470, leds == 560], [1, 2, 4]) | extra_bits
    time = T0 + k / RATE
    computer = PC0 + k / RATE * 1000.0 * DRIFT
    # Region0G: 470 nm frames carry the sensor, 415 nm frames a line in time (so that its
    # linear interpolation at any time is known exactly), 560 nm frames a constant
    region0g = np.where(leds == 470, 1.5 + 0.01 * rng.standard_normal(n), 0.4 + 0.001 * (time - T0))
    region0g = np.where(leds == 560, 0.1, region0g)
    region1r = np.where(leds == 560, 2.0 + 0.01 * rng.standard_normal(n), 0.3 + 0.002 * (time - T0))
    if style == "v2":
        table = pd.DataFrame(
            {
                "FrameCounter": k,
                "SystemTimestamp": time,
                "LedState": state,
                "ComputerTimestamp": computer,
                "Region0G": region0g,
                "Region1R": region1r,
                "Region2G": rng.standard_normal(n),
            }
        )
    else:
        table = pd.DataFrame(
            {
                "FrameCounter": k,
                "Timestamp": time,
                "Flags": state,
                "Region0G": region0g,
                "Region1R": region1r,
            }
        )
    return Frames(table, leds, time, computer)


def write_npm(path: Path, f: Frames) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    f.table.to_csv(path, index=False)
    return path


def write_events(
    path: Path, times: NDArray[np.float64], states: Sequence[object], header: str | None = None
) -> Path:
    """Bonsai's event log: ``time,state`` per row, a header line only when asked."""
    lines = [header] if header else []
    lines += [f"{float(t)!r},{s}" for t, s in zip(times, states, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------------------------------------
# Demultiplexing
# ---------------------------------------------------------------------------------------------


def test_newer_file_is_demultiplexed_onto_the_signal_frames(tmp_path: Path) -> None:
    f = frames(2001)
    path = write_npm(tmp_path / "fp.csv", f)
    ds = load_neurophotometrics(str(path), {})
    check_recording_shape(ds)
    sig = f.leds == 470
    # every 470 nm frame lies between two 415 nm frames but the last (after the last one)
    expected_time = f.time[sig][:-1] if f.leds[-1] == 470 else f.time[sig]
    np.testing.assert_array_equal(ds.time.values, expected_time)
    np.testing.assert_array_equal(
        ds.signal.values, f.table["Region0G"].to_numpy()[sig][: expected_time.size]
    )
    np.testing.assert_allclose(
        ds.isosbestic.values, 0.4 + 0.001 * (expected_time - T0), rtol=0, atol=1e-13
    )
    assert ds.attrs["sampling_rate"] == pytest.approx(RATE / 2, rel=1e-9)
    assert ds.attrs["acquisition"] == {
        "format": "neurophotometrics",
        "column": "Region0G",
        "time_col": "SystemTimestamp",
        "led_col": "LedState",
        "signal_led": 470,
        "isosbestic_led": 415,
        "events_file": None,
    }


def test_older_file_with_flags_and_combined_bits(tmp_path: Path) -> None:
    # older Bonsai files set higher bits beside the LED's (16: output 0 high): 17, 18
    f = frames(1000, style="v1", extra_bits=16)
    path = write_npm(tmp_path / "fp.csv", f)
    ds = load_neurophotometrics(str(path), {})
    assert set(f.table["Flags"]) == {17, 18}
    sig = f.leds == 470
    np.testing.assert_array_equal(
        ds.signal.values, f.table["Region0G"].to_numpy()[sig][: ds.sizes["time"]]
    )
    assert ds.attrs["acquisition"]["time_col"] == "Timestamp"
    assert ds.attrs["acquisition"]["led_col"] == "Flags"


def test_three_leds_and_a_red_region(tmp_path: Path) -> None:
    f = frames(3000, cycle=(415, 470, 560))
    path = write_npm(tmp_path / "fp.csv", f)
    ds = load_neurophotometrics(str(path), {"region": 1, "color": "R", "signal_led": 560})
    sig = f.leds == 560
    # the last frame is a 560 nm one after the last 415 nm frame: dropped, not extrapolated
    expected = f.time[sig][:-1]
    np.testing.assert_array_equal(ds.time.values, expected)
    np.testing.assert_array_equal(ds.signal.values, f.table["Region1R"].to_numpy()[sig][:-1])
    np.testing.assert_allclose(
        ds.isosbestic.values, 0.3 + 0.002 * (expected - T0), rtol=0, atol=1e-13
    )
    assert ds.attrs["sampling_rate"] == pytest.approx(RATE / 3, rel=1e-9)


def test_single_channel_and_the_computer_clock_in_milliseconds(tmp_path: Path) -> None:
    f = frames(1000)
    path = write_npm(tmp_path / "fp.csv", f)
    ds = load_neurophotometrics(
        str(path), {"isosbestic_led": None, "time_col": "ComputerTimestamp"}
    )
    assert "isosbestic" not in ds
    np.testing.assert_array_equal(ds.time.values, f.computer[f.leds == 470] / 1000.0)


# ---------------------------------------------------------------------------------------------
# The event file
# ---------------------------------------------------------------------------------------------


def test_events_by_state_from_a_headerless_bonsai_file(tmp_path: Path) -> None:
    f = frames(4000)
    write_npm(tmp_path / "fp.csv", f)
    on = f.time[[400, 1201, 2600]]
    off = on + 0.1
    times = np.sort(np.concatenate([on, off]))
    states = [1 if t in on else 0 for t in times]
    write_events(tmp_path / "fp_ttl.csv", times, states)
    ds = load_neurophotometrics(
        str(tmp_path / "fp.csv"),
        {"events_file": "{stem}_ttl.csv", "event_states": {"cue": 1, "ttl": "*"}},
    )
    np.testing.assert_array_equal(events_of(ds, "cue"), on)
    np.testing.assert_array_equal(events_of(ds, "ttl"), times)
    assert ds.attrs["acquisition"]["events_file"] == str(tmp_path / "fp_ttl.csv")


def test_events_by_name_and_boolean_states_with_a_header(tmp_path: Path) -> None:
    f = frames(2000)
    write_npm(tmp_path / "fp.csv", f)
    times = f.time[[100, 300, 500, 700]]
    write_events(
        tmp_path / "names.csv", times, ["Lever", "Cue", "Lever", "cue"], header="Seconds,Name"
    )
    write_events(tmp_path / "ttl.csv", times, [True, False, True, False], header="Timestamp,Value")
    by_name = load_neurophotometrics(
        str(tmp_path / "fp.csv"),
        {"events_file": "names.csv", "event_states": {"cue": "Cue", "lever": "Lever"}},
    )
    np.testing.assert_array_equal(events_of(by_name, "cue"), times[[1, 3]])  # case-insensitive
    np.testing.assert_array_equal(events_of(by_name, "lever"), times[[0, 2]])
    by_bool = load_neurophotometrics(
        str(tmp_path / "fp.csv"),
        {"events_file": "ttl.csv", "event_states": {"cue": True}, "events_state_col": "Value"},
    )
    np.testing.assert_array_equal(events_of(by_bool, "cue"), times[[0, 2]])


def test_events_on_the_computer_clock_are_mapped_onto_the_frame_clock(tmp_path: Path) -> None:
    f = frames(4000)
    write_npm(tmp_path / "fp.csv", f)
    rows = np.array([350, 1777, 3001])
    # Bonsai logged the events with the computer's clock (ms), at those frames, plus one
    # event after the recording stopped
    logged = np.append(f.computer[rows], f.computer[-1] + 5000.0)
    write_events(tmp_path / "fp_ttl.csv", logged, [1] * logged.size)
    ds = load_neurophotometrics(
        str(tmp_path / "fp.csv"),
        {
            "events_file": "{stem}_ttl.csv",
            "event_states": {"cue": 1},
            "events_clock": "ComputerTimestamp",
        },
    )
    np.testing.assert_allclose(events_of(ds, "cue"), f.time[rows], rtol=0, atol=1e-9)


def test_a_remote_file_with_its_event_file_and_sidecar(tmp_path: Path) -> None:
    f = frames(1000)
    memory = fsspec.filesystem("memory")
    memory.pipe("/npm-remote/fp.csv", f.table.to_csv(index=False).encode())
    memory.pipe("/npm-remote/fp_ttl.csv", f"{float(f.time[101])!r},1\n".encode())
    memory.pipe("/npm-remote/fp.json", json.dumps({"subject": "m2"}).encode())
    ds = load_neurophotometrics(
        "memory://npm-remote/fp.csv",
        {"events_file": "{stem}_ttl.csv", "event_states": {"cue": 1}, "annotation": "{stem}.json"},
    )
    np.testing.assert_array_equal(events_of(ds, "cue"), [f.time[101]])
    assert ds.attrs["subject"] == "m2"


# ---------------------------------------------------------------------------------------------
# Errors for people
# ---------------------------------------------------------------------------------------------


def test_a_missing_region_names_the_columns_and_the_closest(tmp_path: Path) -> None:
    path = write_npm(tmp_path / "fp.csv", frames(100))
    with pytest.raises(
        InputError,
        match=r"has no column 'Region3G' \(region \+ color; did you mean 'Region2G'\?\); its columns: 'FrameCounter', .*'Region1R', 'Region2G'$",
    ):
        load_neurophotometrics(str(path), {"region": "Region3"})


def test_an_led_the_file_never_lit_names_those_it_did(tmp_path: Path) -> None:
    path = write_npm(tmp_path / "fp.csv", frames(100))
    with pytest.raises(
        InputError,
        match=r"has no frame lit by the 560 nm LED \(LedState & 4\); its LedState values: 1, 2 \(LEDs 415 nm, 470 nm\)",
    ):
        load_neurophotometrics(str(path), {"signal_led": 560})


def test_dropped_frames_are_placed_by_their_line(tmp_path: Path) -> None:
    f = frames(1000)
    f.table = f.table.drop(index=range(500, 540)).reset_index(drop=True)  # 1 s of frames lost
    path = write_npm(tmp_path / "fp.csv", f)
    with pytest.raises(
        InputError, match=r"sampling is not uniform: the interval ending at line 503 is 1\.05 s"
    ):
        load_neurophotometrics(str(path), {})


@pytest.mark.parametrize(
    ("events", "states", "match"),
    [
        (
            None,
            {"cue": 1},
            r"event file '.*fp_ttl\.csv' of '.*fp\.csv' does not exist \(events_file '\{stem\}_ttl\.csv'\)",
        ),
        (
            "1.0,1\nnext,1\n",
            {"cue": 1},
            r"event file '.*fp_ttl\.csv': line 2 has time 'next'; expected a number",
        ),
        (
            "1.0\n2.0\n",
            {"cue": 1},
            r"has no state column, so event 'cue' cannot be the rows of state '1'; use '\*'",
        ),
    ],
)
def test_bad_event_files(
    tmp_path: Path, events: str | None, states: dict[str, object], match: str
) -> None:
    write_npm(tmp_path / "fp.csv", frames(100))
    if events is not None:
        (tmp_path / "fp_ttl.csv").write_text(events)
    with pytest.raises(InputError, match=match):
        load_neurophotometrics(
            str(tmp_path / "fp.csv"), {"events_file": "{stem}_ttl.csv", "event_states": states}
        )


@pytest.mark.parametrize(
    ("content", "error", "match"),
    [
        (None, InputNotFoundError, "does not exist"),
        (b"", InputError, "is empty"),
        (
            b"1234.5,1,0.5\n1234.6,2,1.5\n",
            InputError,
            r"has no header line \(its first line is numbers",
        ),
        (b"\x00\x01\x02binary", InputError, r"is binary data"),
        (
            b"time,signal\n0,1\n",
            InputError,
            r"has none of the columns 'Timestamp', 'SystemTimestamp', 'ComputerTimestamp' \(time_col\)",
        ),
    ],
)
def test_files_that_are_not_neurophotometrics_csv(
    tmp_path: Path, content: bytes | None, error: type[Exception], match: str
) -> None:
    path = tmp_path / "fp.csv"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(error, match=match):
        load_neurophotometrics(str(path), {})


def test_bad_arguments_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"event_states names events, but events_file"):
        load_neurophotometrics("x.csv", {"event_states": {"cue": 1}})
    with pytest.raises(ConfigError, match=r"events_file is set, but event_states names no event"):
        load_neurophotometrics("x.csv", {"events_file": "{stem}_ttl.csv"})
    with pytest.raises(ConfigError, match=r"signal_led and isosbestic_led are both 470 nm"):
        load_neurophotometrics("x.csv", {"isosbestic_led": 470})
    with pytest.raises(ConfigError, match=r"signal_led: Input should be 415, 470 or 560"):
        load_neurophotometrics("x.csv", {"signal_led": 465})
    with pytest.raises(
        ConfigError,
        match=r"events_file: Value error, sidecar template '\{sterm\}_ttl.csv' uses \{sterm\}",
    ):
        load_neurophotometrics(
            "x.csv", {"events_file": "{sterm}_ttl.csv", "event_states": {"a": 1}}
        )


def test_registered_as_format_neurophotometrics(tmp_path: Path) -> None:
    path = write_npm(tmp_path / "fp.csv", frames(500))
    spec = LOADERS["neurophotometrics"]
    assert spec.target == "file" and not spec.chunked
    args = {"region": 1, "color": "R", "isosbestic_led": None}
    ds = load_recording(
        str(path), {"format": "neurophotometrics", **args}, format="neurophotometrics"
    )
    xr.testing.assert_identical(ds, load_neurophotometrics(str(path), args))


# ---------------------------------------------------------------------------------------------
# End to end: a batch of Neurophotometrics files gives the trials of the same data as PhoPro CSV
# ---------------------------------------------------------------------------------------------


def test_pipeline_on_neurophotometrics_files_equals_pipeline_on_their_csv(
    tmp_path: Path, local_client: Client
) -> None:
    (tmp_path / "npm").mkdir()
    for k in range(2):
        rec = planted(int(60 * RATE / 2), RATE / 2, seed=30 + k)
        # frames alternate 415 / 470 nm, the 415 nm frame 25 ms before each 470 nm one
        n = 2 * rec.time.size
        time = T0 + np.arange(n) / RATE
        region = np.empty(n)
        region[0::2], region[1::2] = rec.isosbestic, rec.signal
        table = pd.DataFrame(
            {
                "FrameCounter": np.arange(n),
                "SystemTimestamp": time,
                "LedState": np.tile([1, 2], n // 2),
                "ComputerTimestamp": PC0 + np.arange(n) / RATE * 1000.0,
                "Region0G": region,
            }
        )
        table.to_csv(tmp_path / "npm" / f"m{k}.csv", index=False)
        signal_time = time[1::2]
        cue, lever = signal_time[rec.onsets["cue"]], signal_time[rec.onsets["lever"]]
        stamps = np.concatenate([cue, lever])
        names = ["Cue"] * cue.size + ["Lever"] * lever.size
        (tmp_path / "npm" / f"m{k}_events.csv").write_text(
            "".join(f"{float(stamps[i])!r},{names[i]}\n" for i in np.argsort(stamps))
        )
        # the same data in PhoPro's layout: the signal's frames, the isosbestic interpolated
        # onto them; the last signal frame, after the last 415 nm frame, is not in the recording
        iso = np.interp(signal_time[:-1], time[0::2], rec.isosbestic)
        events = {"cue": cue, "lever": lever}
        write_phopro_csv(
            tmp_path / "csv" / f"m{k}.csv", signal_time[:-1], rec.signal[:-1], iso, events
        )
    loader = {
        "format": "neurophotometrics",
        "events_file": "{stem}_events.csv",
        "event_states": {"cue": "Cue", "lever": "Lever"},
    }
    native, csv = run_both(
        tmp_path / "npm", "m?.csv", loader, tmp_path / "csv", tmp_path / "out", local_client
    )
    assert_same_trials(native, csv)
