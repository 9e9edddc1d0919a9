"""Tests of the ``photometry-parquet`` loader: the same columns as CSV, the same Dataset."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa  # type: ignore[import-untyped, unused-ignore]
import pyarrow.parquet as pq  # type: ignore[import-untyped, unused-ignore]
import pytest
import xarray as xr

from neurobatch.errors import InputError
from neurobatch.io.loaders import load_photometry_csv, load_photometry_parquet, load_recording
from photometry_files import (
    EVENTS,
    check_recording_shape,
    events_of,
    recording_frame,
    write_csv,
)

# ---------------------------------------------------------------------------------------------
# Parquet: the same columns, the same Dataset
# ---------------------------------------------------------------------------------------------


def test_parquet_equals_csv(tmp_path: Path) -> None:
    frame, planted = recording_frame(seed=11)
    csv_path = write_csv(tmp_path / "exp.csv", frame)
    parquet_path = tmp_path / "exp.parquet"
    frame.to_parquet(parquet_path)
    args = {"event_cols": EVENTS}
    from_csv = load_photometry_csv(str(csv_path), args)
    from_parquet = load_photometry_parquet(str(parquet_path), args)
    check_recording_shape(from_parquet)
    xr.testing.assert_identical(
        from_csv.drop_attrs(deep=False), from_parquet.drop_attrs(deep=False)
    )
    assert {k: v for k, v in from_parquet.attrs.items() if k != "source"} == {
        k: v for k, v in from_csv.attrs.items() if k != "source"
    }
    for name in EVENTS:
        np.testing.assert_array_equal(events_of(from_parquet, name), planted[name])


def test_parquet_time_unit_converts_to_seconds(tmp_path: Path) -> None:
    # a rig's integer nanosecond stamps, 1 kHz
    ns = 5 * 10**9 + np.arange(2000, dtype=np.int64) * 10**6
    frame, _ = recording_frame(n=ns.size, fs=1000.0, seed=12)
    frame["time"] = ns / 10**9
    seconds = load_photometry_parquet(
        _parquet(frame, tmp_path / "s.parquet"), {"event_cols": EVENTS}
    )
    frame["time"] = ns
    path = _parquet(frame, tmp_path / "ns.parquet")
    assert pq.read_schema(path).field("time").type == pa.int64()
    converted = load_photometry_parquet(path, {"event_cols": EVENTS, "time_unit": "ns"})
    xr.testing.assert_identical(converted.drop_attrs(), seconds.drop_attrs())
    assert converted.attrs["sampling_rate"] == pytest.approx(1000.0, rel=1e-9)


def _parquet(frame: Any, path: Path) -> str:
    frame.to_parquet(path)
    return str(path)


def test_parquet_flag_types_and_index(tmp_path: Path) -> None:
    n = 50
    t = np.arange(n) / 10.0
    table = pa.table(
        {
            "__index_level_0__": pa.array(np.arange(n) + 100),
            "time": pa.array(t, pa.float32()),  # numbers of any width are read as float64
            "signal": pa.array(np.arange(n, dtype=np.int64)),
            "as_bool": pa.array([i == 3 if i != 4 else None for i in range(n)], pa.bool_()),
            "as_int": pa.array(np.isin(np.arange(n), [5, 9]).astype(np.uint8)),
            "as_float": pa.array(
                [1.0 if i == 7 else (np.nan if i == 8 else 0.0) for i in range(n)]
            ),
        }
    )
    path = tmp_path / "flags.parquet"
    pq.write_table(table, path)
    ds = load_photometry_parquet(
        str(path), {"isosbestic_col": None, "event_cols": ["as_bool", "as_int", "as_float"]}
    )
    t32 = t.astype(np.float32).astype(np.float64)
    np.testing.assert_array_equal(ds.time.values, t32)
    assert ds.event_name.values.tolist() == ["as_bool", "as_int", "as_float", "as_int"]
    np.testing.assert_array_equal(ds.event_time.values, t32[[3, 5, 7, 9]])


@pytest.mark.parametrize(
    ("columns", "match"),
    [
        pytest.param(
            {"signal": pa.array(["a", "b", "c"])},
            r"column 'signal' holds string values; expected numbers",
            id="string-signal",
        ),
        pytest.param(
            {"cue": pa.array([0, 2, 0])},
            r"^'.*bad\.parquet': event column 'cue' holds 2\.0 at row 1; expected a boolean or "
            r"0/1 flag$",
            id="flag-two",
        ),
        pytest.param(
            {"cue": pa.array(["yes", "no", "no"])},
            r"event column 'cue' holds string values; expected a boolean or 0/1 flag",
            id="string-flag",
        ),
        pytest.param(
            {"signal": pa.array([1.0, np.nan, 2.0])},
            r"column 'signal' has a NaN, inf or empty value \(nan\) at row 1",
            id="nan-signal",
        ),
        pytest.param(
            {"sgnal": pa.array([1.0, 1.0, 2.0]), "signal": None},
            r"has no column 'signal' \(signal_col; did you mean 'sgnal'\?\)",
            id="missing-column",
        ),
    ],
)
def test_parquet_bad_input(tmp_path: Path, columns: dict[str, Any], match: str) -> None:
    base: dict[str, Any] = {
        "time": pa.array([0.0, 0.1, 0.2]),
        "signal": pa.array([1.0, 1.1, 1.2]),
        "cue": pa.array([False, True, False]),
    }
    base.update(columns)
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({k: v for k, v in base.items() if v is not None}), path)
    with pytest.raises(InputError, match=match):
        load_photometry_parquet(str(path), {"isosbestic_col": None, "event_cols": ["cue"]})


EXPECTED = "expected Parquet with PhoPro's columns \\(its first and last bytes 'PAR1'\\)"


@pytest.mark.parametrize(
    ("content", "found"),
    [
        pytest.param(
            b"time,signal\n0,1\n",
            r"UTF-8 text \(it starts 'time,signal'\); "
            + EXPECTED
            + "; for a CSV, use format photometry-csv",
            id="csv",
        ),
        pytest.param(
            "time,signal\n0,1\n".encode("utf-16"),
            r"UTF-16 text \(it starts with a UTF-16 byte-order mark\); " + EXPECTED,
            id="utf-16",
        ),
        pytest.param(
            b"\x00\x01\x02" + bytes(range(256)) * 4,
            r"binary data \(byte 0x00 at offset 0\); " + EXPECTED,
            id="binary",
        ),
        pytest.param(b"", "an empty file; " + EXPECTED, id="empty"),
    ],
)
def test_a_file_that_is_not_parquet_is_one_line(tmp_path: Path, content: bytes, found: str) -> None:
    path = tmp_path / "fake.parquet"
    path.write_bytes(content)
    with pytest.raises(InputError) as error:
        load_photometry_parquet(str(path), {})
    expected = rf"'{re.escape(str(path))}' is not a Parquet file: it is {found}"
    assert re.fullmatch(expected, str(error.value)), str(error.value)


def test_a_truncated_or_damaged_parquet_file_is_one_line(tmp_path: Path) -> None:
    whole = tmp_path / "whole.parquet"
    pq.write_table(pa.table({"time": [0.0, 0.1, 0.2], "signal": [1.0, 1.1, 1.2]}), whole)
    content = whole.read_bytes()
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(content[: len(content) // 2])
    with pytest.raises(InputError) as error:
        load_photometry_parquet(str(cut), {"isosbestic_col": None})
    assert re.fullmatch(
        rf"'{re.escape(str(cut))}' is truncated or damaged: it starts as Parquet but has no "
        r"Parquet footer \(.+\); expected a complete Parquet file",
        str(error.value),
    ), str(error.value)
    # both marks in place, the metadata between them zeroed
    damaged = tmp_path / "damaged.parquet"
    damaged.write_bytes(content[:4] + bytes(len(content) - 8) + content[-4:])
    with pytest.raises(InputError) as error:
        load_photometry_parquet(str(damaged), {"isosbestic_col": None})
    assert re.fullmatch(
        rf"'{re.escape(str(damaged))}' is truncated or damaged: it starts as Parquet but "
        r"cannot be read \(.+\); expected a complete Parquet file",
        str(error.value),
    ), str(error.value)


def test_parquet_memory_url_with_sidecar() -> None:
    frame, planted = recording_frame(n=200, seed=2)
    fs = fsspec.filesystem("memory")
    with fs.open("/loaders-test/pq/day1/exp_7.parquet", "wb") as f:
        frame.to_parquet(f)
    fs.pipe("/loaders-test/pq/day1/day1.yaml", b"subject: m7\nsession: 2024-03-01\n")
    url = "memory://loaders-test/pq/day1/exp_7.parquet"
    ds = load_recording(
        url,
        {"format": "photometry-parquet", "event_cols": EVENTS, "annotation": "{parent}.yaml"},
        format="photometry-parquet",
    )
    assert ds.attrs["subject"] == "m7"
    assert ds.attrs["session"] == "2024-03-01"  # a YAML date, kept JSON-safe
    assert ds.attrs["source"] == url
    np.testing.assert_array_equal(ds.signal.values, frame.signal.to_numpy())
    np.testing.assert_array_equal(events_of(ds, "trial_cue"), planted["trial_cue"])
