"""Tests of the ``pyphotometry`` loader on ``.ppd`` files written in pyPhotometry's layout.

The fixtures are written as pyPhotometry's GUI writes them (``GUI/acquisition_board.py``:
a 2-byte little-endian header length, ``json.dumps`` of the header, then the uint16 samples
the board sends, ``value << 1 | digital``), for each acquisition mode, including a pre-1.0
file. pyPhotometry's reader (``tools/data_import.py``) does not install from the package
index, and none of it is copied here: the decoded volts and events are checked against the
ADC values and digital onsets the tests planted, decoded as its documentation says (volts =
value x ``volts_per_division[0]``; pulsed modes from 1.1: LED-on minus baseline; events at
the rising edges).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pytest
import xarray as xr
from distributed import Client
from numpy.typing import NDArray

from acquisition_files import assert_same_trials, planted, run_both, write_phopro_csv
from neurobatch.errors import ConfigError, InputError, InputNotFoundError
from neurobatch.io.loaders import LOADERS, load_recording
from neurobatch.io.loaders.pyphotometry import load_pyphotometry
from photometry_files import check_recording_shape, events_of

FS = 130
VPD = [0.00010122, 0.00010122]  # pyPhotometry_v1.0.json's ADC_volts_per_division


def ppd_header(
    mode: str, *, version: str = "1.1", n_analog: int = 2, n_digital: int = 2
) -> dict[str, Any]:
    """The header the GUI writes when it opens a recording."""
    return {
        "subject_ID": "m1",
        "date_time": "2025-01-02T10:11:12.000",
        "end_time": "2025-01-02T10:21:12.000",
        "n_analog_signals": n_analog,
        "n_digital_signals": n_digital,
        "mode": mode,
        "sampling_rate": FS,
        "volts_per_division": VPD,
        "ADC_max_value": 32768,
        "LED_current": [10, 10],
        "version": version,
    }


def write_ppd(path: Path, header: dict[str, Any], words: NDArray[Any]) -> Path:
    data_header = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        len(data_header).to_bytes(2, "little") + data_header + words.astype("<u2").tobytes()
    )
    return path


def samples(
    adc: list[NDArray[np.int64]],
    digital: list[NDArray[np.int64]],
    baselines: list[NDArray[np.int64]] | None = None,
) -> NDArray[np.uint16]:
    """The board's sample stream: per sample time, each analog input's value (and, in the
    pulsed modes, its baseline), digital input d in the low bit of analog input d's value."""
    columns = []
    for a, values in enumerate(adc):
        bit = digital[a] if a < len(digital) else np.zeros_like(values)
        columns.append((values << 1) | bit)
        if baselines is not None:
            columns.append(baselines[a] << 1)
    return np.column_stack(columns).astype(np.uint16).ravel()


def planted_adc(
    n: int, n_analog: int, seed: int
) -> tuple[list[NDArray[np.int64]], list[NDArray[np.int64]], list[NDArray[np.int64]]]:
    rng = np.random.default_rng(seed)
    adc = [rng.integers(8000 + 4000 * a, 9000 + 4000 * a, size=n) for a in range(n_analog)]
    base = [rng.integers(100, 300, size=n) for _ in range(n_analog)]
    digital = [np.zeros(n, dtype=np.int64) for _ in range(2)]
    digital[0][[0, 1, 40, 41, 42, 300, n - 1]] = 1  # high at the start: no edge there
    digital[1][[90, 91, 500]] = 1
    return adc, base, digital


@pytest.mark.parametrize(
    ("mode", "version", "n_analog", "n_digital", "pulsed"),
    [
        ("2EX_2EM_continuous", "1.1", 2, 2, False),
        ("2EX_1EM_pulsed", "1.1", 2, 2, True),
        ("2EX_2EM_pulsed", "1.1", 2, 2, True),
        ("3EX_2EM_pulsed", "1.1", 3, 1, True),
        ("2EX_1EM_pulsed", "1.0", 2, 2, False),  # baselines saved from 1.1 only
        ("2 colour time div.", "0.3.2", 2, 2, False),  # before 1.0: no n_*_signals keys
    ],
)
def test_every_mode_decodes_to_the_planted_volts_and_edges(
    tmp_path: Path, mode: str, version: str, n_analog: int, n_digital: int, pulsed: bool
) -> None:
    n = 1000
    adc, base, digital = planted_adc(n, n_analog, seed=n_analog)
    header = ppd_header(mode, version=version, n_analog=n_analog, n_digital=n_digital)
    if version < "1.0":
        del header["n_analog_signals"], header["n_digital_signals"]
    words = samples(adc, digital[:n_digital], base if pulsed else None)
    path = write_ppd(tmp_path / "m1-2025-01-02-101112.ppd", header, words)
    events = {"cue": "digital_1"} | ({"lever": "digital_2"} if n_digital > 1 else {})
    isosbestic = f"analog_{n_analog}"
    ds = load_pyphotometry(str(path), {"isosbestic_channel": isosbestic, "event_channels": events})
    check_recording_shape(ds)
    expected_sig = (adc[0] - base[0]) * VPD[0] if pulsed else adc[0] * VPD[0]
    expected_iso = (adc[-1] - base[-1]) * VPD[0] if pulsed else adc[-1] * VPD[0]
    np.testing.assert_allclose(ds.signal.values, expected_sig, rtol=1e-12, atol=0)
    np.testing.assert_allclose(ds.isosbestic.values, expected_iso, rtol=1e-12, atol=0)
    np.testing.assert_array_equal(ds.time.values, np.arange(n) / FS)
    np.testing.assert_array_equal(events_of(ds, "cue"), np.array([40, 300, n - 1]) / FS)
    if n_digital > 1:
        np.testing.assert_array_equal(events_of(ds, "lever"), np.array([90, 500]) / FS)
    assert ds.attrs["sampling_rate"] == pytest.approx(FS, rel=1e-12)
    assert ds.attrs["acquisition"]["header"]["mode"] == mode
    assert ds.attrs["acquisition"]["signal"] == "analog_1"


def test_a_remote_file_and_the_sidecar(tmp_path: Path) -> None:
    adc, _, digital = planted_adc(1000, 2, seed=1)
    path = write_ppd(tmp_path / "m1.ppd", ppd_header("2EX_2EM_continuous"), samples(adc, digital))
    memory = fsspec.filesystem("memory")
    memory.pipe("/ppd-remote/m1.ppd", path.read_bytes())
    memory.pipe("/ppd-remote/m1.json", json.dumps({"subject": "m1"}).encode())
    ds = load_pyphotometry("memory://ppd-remote/m1.ppd", {"annotation": "{stem}.json"})
    np.testing.assert_allclose(ds.signal.values, adc[0] * VPD[0], rtol=1e-15)
    assert ds.attrs["subject"] == "m1" and ds.attrs["source"] == "memory://ppd-remote/m1.ppd"


def test_a_recording_cut_short_reads_its_whole_sample_times(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    adc, base, digital = planted_adc(1000, 2, seed=2)
    words = samples(adc, digital, base)
    path = write_ppd(tmp_path / "m1.ppd", ppd_header("2EX_1EM_pulsed"), words)
    path.write_bytes(path.read_bytes()[:-5])  # the last sample time loses 2.5 of its 4 words
    with caplog.at_level(logging.WARNING):
        ds = load_pyphotometry(str(path), {})
    assert ds.sizes["time"] == 999
    np.testing.assert_allclose(
        ds.signal.values, (adc[0][:999] - base[0][:999]) * VPD[0], rtol=1e-12
    )
    assert "3 byte(s) after the last whole sample time" in caplog.text


# ---------------------------------------------------------------------------------------------
# Errors for people
# ---------------------------------------------------------------------------------------------


def test_an_input_the_mode_does_not_record_names_those_it_does(tmp_path: Path) -> None:
    adc, base, digital = planted_adc(1000, 3, seed=3)
    header = ppd_header("3EX_2EM_pulsed", n_analog=3, n_digital=1)
    path = write_ppd(tmp_path / "m1.ppd", header, samples(adc, digital[:1], base))
    with pytest.raises(
        InputError,
        match=r"has no digital_2 \(event_channels\): in mode '3EX_2EM_pulsed' it records digital_1$",
    ):
        load_pyphotometry(str(path), {"event_channels": ["digital_2"]})
    with pytest.raises(
        InputError,
        match=r"has no analog_4 \(isosbestic_channel\): .* analog_1, analog_2, analog_3$",
    ):
        load_pyphotometry(str(path), {"isosbestic_channel": "analog_4"})


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", r"is an empty file; expected a pyPhotometry \.ppd file"),
        (
            b"time,signal\n0.0,1.0\n",
            r"is not a pyPhotometry file \(its header would run past its end; it is UTF-8 text \(it starts 'time,signal'\)\)",
        ),
        ((9).to_bytes(2, "little") + b"not json!" + b"\0\0", r"its header is not JSON"),
        ((2).to_bytes(2, "little") + b"[]", r"its header is not a JSON object"),
    ],
)
def test_files_that_are_not_ppd(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "m1.ppd"
    path.write_bytes(content)
    with pytest.raises(InputError, match=match):
        load_pyphotometry(str(path), {})


def test_a_header_without_the_keys_of_the_layout(tmp_path: Path) -> None:
    header = ppd_header("2EX_2EM_continuous")
    del header["volts_per_division"]
    path = write_ppd(tmp_path / "m1.ppd", header, np.zeros(4, dtype=np.uint16))
    with pytest.raises(
        InputError, match=r"its header has no 'volts_per_division' \(its keys: 'subject_ID'"
    ):
        load_pyphotometry(str(path), {})


def test_missing_file_and_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(InputNotFoundError, match="does not exist"):
        load_pyphotometry(str(tmp_path / "none.ppd"), {})
    with pytest.raises(ConfigError, match=r"signal_channel: String should match pattern"):
        load_pyphotometry("x.ppd", {"signal_channel": "analog1"})
    with pytest.raises(ConfigError, match=r"event 'cue': 'analog_2' is not a digital input"):
        load_pyphotometry("x.ppd", {"event_channels": {"cue": "analog_2"}})


def test_registered_as_format_pyphotometry(tmp_path: Path) -> None:
    adc, _, digital = planted_adc(1000, 2, seed=1)
    path = write_ppd(tmp_path / "m1.ppd", ppd_header("2EX_2EM_continuous"), samples(adc, digital))
    assert LOADERS["pyphotometry"].target == "file" and not LOADERS["pyphotometry"].chunked
    args = {"event_channels": {"cue": "digital_1"}}
    ds = load_recording(str(path), {"format": "pyphotometry", **args}, format="pyphotometry")
    xr.testing.assert_identical(ds, load_pyphotometry(str(path), args))


# ---------------------------------------------------------------------------------------------
# End to end: a batch of .ppd files gives the trials of the same data as PhoPro CSV
# ---------------------------------------------------------------------------------------------


def test_pipeline_on_ppd_files_equals_pipeline_on_their_csv(
    tmp_path: Path, local_client: Client
) -> None:
    for k in range(2):
        rec = planted(60 * FS, float(FS), seed=20 + k)
        # the recording as the board digitises it: ADC values, the events on the digital inputs
        adc = [
            np.round(rec.signal / VPD[0]).astype(np.int64),
            np.round(rec.isosbestic / VPD[0]).astype(np.int64),
        ]
        digital = [rec.levels("cue").astype(np.int64), rec.levels("lever").astype(np.int64)]
        write_ppd(
            tmp_path / "ppd" / f"m{k}.ppd", ppd_header("2EX_2EM_continuous"), samples(adc, digital)
        )
        events = {name: rec.onsets[name] / FS for name in ("cue", "lever")}
        time = np.arange(rec.time.size) / FS
        write_phopro_csv(
            tmp_path / "csv" / f"m{k}.csv", time, adc[0] * VPD[0], adc[1] * VPD[0], events
        )
    loader = {
        "format": "pyphotometry",
        "event_channels": {"cue": "digital_1", "lever": "digital_2"},
    }
    native, csv = run_both(
        tmp_path / "ppd", "*.ppd", loader, tmp_path / "csv", tmp_path / "out", local_client
    )
    assert_same_trials(native, csv)
