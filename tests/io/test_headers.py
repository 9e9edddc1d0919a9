"""Headers: the columns the arguments name, checked when an item loads and before a run."""

from __future__ import annotations

import gzip
import logging
import re
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pytest

from neurobatch.errors import InputError, InputNotFoundError
from neurobatch.io.loaders.csv import check_photometry_csv, load_photometry_csv
from neurobatch.io.loaders.headers import HEADER_BLOCK_BYTES, MAX_LISTED_COLUMNS, check_columns
from neurobatch.io.loaders.parquet import check_photometry_parquet, load_photometry_parquet
from photometry_files import EVENTS, recording_frame, write_csv

LAB = {"signal_col": "raw_signal", "isosbestic_col": "raw_isosbestic", "event_cols": list(EVENTS)}


def _lab_frame(n: int = 500) -> pd.DataFrame:
    frame, _ = recording_frame(n=n)
    return frame.rename(columns={"signal": "raw_signal", "isosbestic": "raw_isosbestic"})


def _write(tmp_path: Path, kind: str, frame: pd.DataFrame, name: str = "m1") -> str:
    if kind == "csv":
        return str(write_csv(tmp_path / f"{name}.csv", frame))
    path = tmp_path / f"{name}.parquet"
    frame.to_parquet(path, index=False)
    return str(path)


CHECKS = {"csv": check_photometry_csv, "parquet": check_photometry_parquet}
LOADS = {"csv": load_photometry_csv, "parquet": load_photometry_parquet}


@pytest.mark.parametrize("kind", ["csv", "parquet"])
@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"signal_col": "raw_signl"},
            (
                r"has no column 'raw_signl' \(signal_col; did you mean 'raw_signal'\?\); its "
                r"columns: 'time', 'raw_signal', 'raw_isosbestic', 'trial_cue', 'lever1', "
                r"'lever2', 'shock'$"
            ),
        ),
        (
            {"isosbestic_col": "raw_isosbestc"},
            (
                r"has no column 'raw_isosbestc' \(isosbestic_col; did you mean "
                r"'raw_isosbestic'\?\); its columns: .*'shock'; set isosbestic_col: null to "
                r"read a single-channel recording$"
            ),
        ),
        (
            {"time_col": "Time", "event_cols": ["trial_cue", "levr1"]},
            (
                r"has no column 'Time' \(time_col; did you mean 'time'\?\), no column 'levr1' "
                r"\(event_cols; did you mean 'lever1'\?\); its columns"
            ),
        ),
    ],
)
def test_the_check_and_the_load_fail_in_the_same_line(
    tmp_path: Path, kind: str, change: dict[str, Any], message: str
) -> None:
    url = _write(tmp_path, kind, _lab_frame())
    arguments = {**LAB, **change}
    with pytest.raises(InputError, match=f"^'{re.escape(url)}' {message}") as checked:
        CHECKS[kind](url, arguments)
    with pytest.raises(InputError) as loaded:
        LOADS[kind](url, arguments)
    assert str(loaded.value) == str(checked.value)
    assert CHECKS[kind](url, LAB) == {
        "format": f"photometry-{kind}",
        "columns": ["time", "raw_signal", "raw_isosbestic", *EVENTS],
    }


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_a_named_isosbestic_is_read_or_fails_and_null_reads_one_channel(
    tmp_path: Path, kind: str
) -> None:
    frame = _lab_frame()
    url = _write(tmp_path, kind, frame)
    both = LOADS[kind](url, LAB)
    np.testing.assert_array_equal(both.isosbestic.values, frame["raw_isosbestic"].to_numpy())
    one = LOADS[kind](url, {**LAB, "isosbestic_col": None})
    assert "isosbestic" not in one
    np.testing.assert_array_equal(one.signal.values, frame["raw_signal"].to_numpy())
    # a misspelled isosbestic used to load the file as single-channel, silently
    with pytest.raises(InputError, match=r"no column 'raw_isosbestc' .*single-channel"):
        LOADS[kind](url, {**LAB, "isosbestic_col": "raw_isosbestc"})
    # the default isosbestic_col ('isosbestic') names a column too
    with pytest.raises(InputError, match=r"no column 'isosbestic' \(isosbestic_col; did you"):
        LOADS[kind](url, {"signal_col": "raw_signal"})


def test_a_compressed_csv_and_a_leading_index(tmp_path: Path) -> None:
    frame = _lab_frame()
    path = tmp_path / "m1.csv.gz"
    with gzip.open(path, "wt") as f:
        frame.to_csv(f)  # pandas' unnamed index column first
    assert check_photometry_csv(str(path), LAB)["columns"][1] == "raw_signal"
    with pytest.raises(InputError, match=r"did you mean 'raw_signal'\?\); its columns: 'time',"):
        check_photometry_csv(str(path), {**LAB, "signal_col": "raw_signl"})


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_a_missing_or_wrong_input_is_one_line(tmp_path: Path, kind: str) -> None:
    with pytest.raises(InputNotFoundError, match=r"input '.*absent\.\w+' does not exist"):
        CHECKS[kind](str(tmp_path / f"absent.{kind}"), LAB)
    (tmp_path / f"empty.{kind}").write_bytes(b"")
    with pytest.raises(InputError, match=r"'.*empty\.\w+' (is empty|is not a Parquet file)"):
        CHECKS[kind](str(tmp_path / f"empty.{kind}"), LAB)


def test_a_wide_header_is_listed_in_part() -> None:
    header = ["time", "signal", *(f"roi_{i}" for i in range(100))]
    with pytest.raises(InputError) as error:
        check_columns(header, {"time_col": "time", "signal_col": "roi_100"}, source="w.csv")
    shown = MAX_LISTED_COLUMNS
    assert str(error.value).endswith(f"'roi_{shown - 3}' and {len(header) - shown} more")
    assert "did you mean 'roi_10'?" in str(error.value)
    with pytest.raises(InputError, match="column 'time' appears 2 times"):
        check_columns(["time", "signal", "time"], {"time_col": "time"}, source="w.csv")


def _requested(caplog: pytest.LogCaptureFixture) -> int:
    """The most bytes any file asked of the store, as fsspec's read cache counted them."""
    found = re.findall(r"(\d+) total requested bytes", caplog.text)
    assert found, "fsspec logged no read"
    return max(int(n) for n in found)


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_the_check_reads_the_header_only_from_s3(
    kind: str, s3_options: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    frame = _lab_frame(n=200_000)  # about 20 MB of CSV, 5 MB of Parquet
    local = Path(_write(tmp_path, kind, frame))
    size = local.stat().st_size
    url = f"s3://lab/headers/{local.name}"
    fs = fsspec.filesystem("s3", **s3_options)
    fs.put_file(str(local), url)
    with caplog.at_level(logging.DEBUG, logger="fsspec"):
        CHECKS[kind](url, LAB, storage_options=s3_options)
    assert _requested(caplog) <= 2 * HEADER_BLOCK_BYTES < size / 30
    with pytest.raises(InputError, match="did you mean 'raw_signal'"):
        CHECKS[kind](url, {**LAB, "signal_col": "raw_signl"}, storage_options=s3_options)
