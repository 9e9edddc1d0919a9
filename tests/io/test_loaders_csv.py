"""Tests of the ``photometry-csv`` loader on real files, against pandas and PhoPro."""

from __future__ import annotations

import codecs
import gzip
import importlib
import io
import json
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa  # type: ignore[import-untyped, unused-ignore]
import pytest
import xarray as xr

from neurobatch.errors import InputError, InputNotFoundError, NonUniformSamplingWarning
from neurobatch.io.loaders import load_photometry_csv, load_recording
from photometry_files import (
    EVENTS,
    FlagStyle,
    check_recording_shape,
    events_of,
    recording_frame,
    write_csv,
    write_text,
)

# ---------------------------------------------------------------------------------------------
# Fixtures: PhoPro (imported once)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def phopro() -> ModuleType:
    """PhoPro's loader module (the package import takes ~20 s, so once per module).

    A missing PhoPro fails the tests rather than skipping them: parity is a requirement.
    """
    try:
        return importlib.import_module("PhoPro.core.PhotometryLoader")
    except ImportError as error:
        raise ImportError(
            "PhoPro (the parity reference) is missing: install the 'test' extra"
        ) from error


@pytest.fixture(scope="module")
def phopro_operations(phopro: ModuleType) -> ModuleType:
    """PhoPro's downsampling helpers (``PhoPro/utils/operations.py``)."""
    return importlib.import_module("PhoPro.utils.operations")


# ---------------------------------------------------------------------------------------------
# CSV: against pandas and PhoPro
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("style", "index"),
    [("bool", True), ("int", True), ("float", False), ("lower", True), ("sparse", False)],
)
def test_csv_matches_pandas_and_phopro(
    tmp_path: Path, phopro: ModuleType, style: FlagStyle, index: bool
) -> None:
    frame, planted = recording_frame(style=style, seed=3)
    path = write_csv(tmp_path / "experiment_1.csv", frame, index=index)
    write_text(tmp_path / "experiment_1.json", json.dumps({"subject": "m1", "age": 60}))

    ds = load_photometry_csv(str(path), {"event_cols": EVENTS, "annotation": "{stem}.json"})
    check_recording_shape(ds)

    # independent: pandas' own reading of the file
    expected = pd.read_csv(path)
    for column in ("time", "signal", "isosbestic"):
        np.testing.assert_array_max_ulp(ds[column].values, expected[column].to_numpy(), 1)
    for name in EVENTS:
        np.testing.assert_array_equal(events_of(ds, name), planted[name])

    # PhoPro's CSVLoader on the same file and sidecar
    loader = phopro.CSVLoader(
        str(path), event_cols=EVENTS, annotation_file=str(tmp_path / "experiment_1.json")
    )
    theirs = loader.extract_data()
    np.testing.assert_array_max_ulp(ds.time.values, theirs["time"], 1)
    np.testing.assert_array_max_ulp(ds.signal.values, theirs["raw_signal"], 1)
    np.testing.assert_array_max_ulp(ds.isosbestic.values, theirs["raw_isosbestic"], 1)
    for name in EVENTS:
        np.testing.assert_array_max_ulp(events_of(ds, name), theirs["events"][name], 1)
    for key, value in theirs["metadata"].items():
        assert ds.attrs[key] == value
    experiment = phopro.PhotometryExperiment(**theirs)
    assert ds.attrs["sampling_rate"] == pytest.approx(experiment.frequency, rel=1e-12)
    assert ds.attrs["event_names"] == list(EVENTS)
    assert ds.attrs["source"] == str(path)


def test_csv_quoted_header_from_pyarrow_writer(tmp_path: Path) -> None:
    # neurobatch.synthetic writes with pyarrow: a quoted header and an empty index name
    frame, planted = recording_frame(style="int")
    path = tmp_path / "x.csv"
    import pyarrow.csv as pacsv  # type: ignore[import-untyped, unused-ignore]

    pacsv.write_csv(pa.Table.from_pandas(frame.reset_index(names=""), preserve_index=False), path)
    assert path.read_text().startswith('"","time"')
    ds = load_photometry_csv(str(path), {"event_cols": EVENTS})
    np.testing.assert_array_equal(ds.signal.values, frame.signal.to_numpy())
    for name in EVENTS:
        np.testing.assert_array_equal(events_of(ds, name), planted[name])


def test_csv_multi_block_file_matches_pandas(tmp_path: Path) -> None:
    # ~4 MB: several of pyarrow's 1 MiB blocks, so chunked columns are joined correctly
    frame, planted = recording_frame(n=60_000, fs=1000.0, seed=5)
    path = write_csv(tmp_path / "long.csv", frame)
    ds = load_photometry_csv(str(path), {"event_cols": EVENTS})
    expected = pd.read_csv(path)
    np.testing.assert_array_max_ulp(ds.signal.values, expected.signal.to_numpy(), 1)
    np.testing.assert_array_max_ulp(ds.time.values, expected.time.to_numpy(), 1)
    for name in EVENTS:
        np.testing.assert_array_equal(events_of(ds, name), planted[name])
    assert ds.attrs["sampling_rate"] == pytest.approx(1000.0, rel=1e-9)


@pytest.mark.parametrize(("unit", "per_second"), [("ms", 10**3), ("us", 10**6), ("ns", 10**9)])
def test_csv_time_unit_converts_to_seconds(tmp_path: Path, unit: str, per_second: int) -> None:
    # integer milliseconds, as a rig writes them: 1 kHz, starting at 1 min 12.5 s
    ms = 72_500 + np.arange(3000)
    frame, _ = recording_frame(n=ms.size, fs=1000.0, seed=8)
    # the reference: the same recording in seconds (pandas writes repr: an exact round trip)
    frame["time"] = ms / 1000
    seconds = load_photometry_csv(str(write_csv(tmp_path / "s.csv", frame)), {"event_cols": EVENTS})
    frame["time"] = ms * (per_second // 1000)
    path = write_csv(tmp_path / f"{unit}.csv", frame)
    assert pd.read_csv(path)["time"].dtype == np.int64  # integers in the file
    arguments = {"event_cols": EVENTS, "time_unit": unit}
    converted = load_photometry_csv(str(path), arguments)
    np.testing.assert_array_equal(converted.time.values, seconds.time.values)
    assert converted.sizes["event"] == seconds.sizes["event"] > 0
    for name in EVENTS:
        np.testing.assert_array_equal(events_of(converted, name), events_of(seconds, name))
    assert converted.attrs["sampling_rate"] == seconds.attrs["sampling_rate"]
    assert converted.attrs["sampling_rate"] == pytest.approx(1000.0, rel=1e-9)
    # read as seconds, the same file is 1000 (10**6, 10**9) times slower
    as_seconds = load_photometry_csv(str(path), {**arguments, "time_unit": "s"})
    assert as_seconds.attrs["sampling_rate"] == pytest.approx(1000.0 / per_second, rel=1e-9)


def test_csv_single_channel(tmp_path: Path, phopro: ModuleType) -> None:
    frame, _ = recording_frame(isosbestic=False)
    path = write_csv(tmp_path / "single.csv", frame)
    explicit = load_photometry_csv(str(path), {"isosbestic_col": None, "event_cols": EVENTS})
    assert "isosbestic" not in explicit

    # PhoPro reads a named isosbestic column the file lacks as single-channel: a misspelling
    # silently loses the isosbestic. Here it is an error, as for any other column
    theirs = phopro.CSVLoader(str(path), isosbestic_col="isosbestc", event_cols=EVENTS)
    assert theirs.extract_data()["raw_isosbestic"] is None
    with pytest.raises(
        InputError,
        match=r"has no column 'isosbestc' \(isosbestic_col\); .*set isosbestic_col: null to "
        r"read a single-channel recording$",
    ):
        load_photometry_csv(str(path), {"isosbestic_col": "isosbestc", "event_cols": EVENTS})


@pytest.mark.parametrize("method", ["resample", "mean"])
def test_csv_downsample_matches_phopro(
    tmp_path: Path, phopro: ModuleType, phopro_operations: ModuleType, method: str
) -> None:
    frame, planted = recording_frame(n=2003, seed=7)
    path = write_csv(tmp_path / "ds.csv", frame)
    args = {"downsample": 10, "downsample_method": method}
    ds = load_photometry_csv(str(path), {**args, "event_cols": EVENTS})
    ops = phopro_operations
    np.testing.assert_array_equal(
        ds.signal.values, ops.downsample_signal(frame.signal.to_numpy(), 10, method=method)
    )
    np.testing.assert_array_equal(
        ds.isosbestic.values,
        ops.downsample_signal(frame.isosbestic.to_numpy(), 10, method=method),
    )
    np.testing.assert_array_equal(
        ds.time.values, ops.downsample_time(frame.time.to_numpy(), 10, method=method)
    )
    # PhoPro's loader (without events: with events and downsampling it fails, see below);
    # pandas' default float parser is off by an ulp now and then, pyarrow's is exact
    theirs = phopro.CSVLoader(
        str(path), event_cols=None, downsample=10, downsample_kwargs={"method": method}
    ).extract_data()
    np.testing.assert_allclose(ds.signal.values, theirs["raw_signal"], rtol=1e-14)
    np.testing.assert_allclose(ds.time.values, theirs["time"], rtol=1e-14)
    experiment = phopro.PhotometryExperiment(**theirs)
    assert ds.attrs["sampling_rate"] == pytest.approx(experiment.frequency, rel=1e-12)
    assert ds.attrs["n_samples"] == theirs["time"].size
    # event times stay those of the flagged rows at the full rate
    for name in EVENTS:
        np.testing.assert_array_equal(events_of(ds, name), planted[name])


def test_csv_downsample_with_events_fixes_phopro(tmp_path: Path, phopro: ModuleType) -> None:
    # PhoPro indexes the downsampled time with the full-length flags: an IndexError
    frame, planted = recording_frame(n=500)
    path = write_csv(tmp_path / "ds.csv", frame)
    with pytest.raises(IndexError):
        phopro.CSVLoader(str(path), event_cols=EVENTS, downsample=5).extract_data()
    ds = load_photometry_csv(str(path), {"event_cols": EVENTS, "downsample": 5})
    np.testing.assert_array_equal(events_of(ds, "lever1"), planted["lever1"])


def test_csv_resample_needs_regular_time(tmp_path: Path) -> None:
    frame, _ = recording_frame(n=400, events=[])
    frame.loc[200:, "time"] += 0.001  # one interval 10 % long: within sampling_tolerance=0.2
    path = write_csv(tmp_path / "irregular.csv", frame)
    base = {"downsample": 4, "sampling_tolerance": 0.2}
    with pytest.raises(
        InputError,
        match=r"downsample_method 'resample' needs regularly spaced timestamps .* use "
        r"downsample_method 'mean'",
    ):
        load_photometry_csv(str(path), base)
    ds = load_photometry_csv(str(path), {**base, "downsample_method": "mean"})
    assert ds.sizes["time"] == 100


def test_csv_downsample_too_far(tmp_path: Path) -> None:
    path = write_text(tmp_path / "short.csv", "time,signal\n0,1\n0.1,2\n0.2,3\n")
    with pytest.raises(InputError, match=r"downsample=2 \(mean\) leaves 1 of 3 samples"):
        load_photometry_csv(
            str(path), {"isosbestic_col": None, "downsample": 2, "downsample_method": "mean"}
        )


def test_csv_gzip_and_memory(tmp_path: Path) -> None:
    frame, planted = recording_frame(n=300)
    text = frame.to_csv().encode()
    local = tmp_path / "exp.csv.gz"
    local.write_bytes(gzip.compress(text))
    ours = load_photometry_csv(str(local), {"event_cols": EVENTS})
    fs = fsspec.filesystem("memory")
    fs.pipe("/loaders-test/gz/exp.csv.gz", gzip.compress(text))
    remote = load_photometry_csv("memory://loaders-test/gz/exp.csv.gz", {"event_cols": EVENTS})
    xr.testing.assert_identical(ours.drop_attrs(), remote.drop_attrs())
    np.testing.assert_array_equal(events_of(ours, "shock"), planted["shock"])


# ---------------------------------------------------------------------------------------------
# CSV: bad input, one clear line each
# ---------------------------------------------------------------------------------------------

HEADER = ",time,signal,isosbestic,cue\n"


def _rows(n: int, fs: float = 10.0) -> str:
    return "".join(f"{i},{i / fs},{1 + i / 100},{0.5 + i / 200},{int(i == 2)}\n" for i in range(n))


@pytest.mark.parametrize(
    ("text", "match"),
    [
        pytest.param(
            "", r"^'.*bad\.csv' is empty; expected a CSV header and data rows$", id="empty"
        ),
        pytest.param("\n\n", r"is empty", id="blank-lines"),
        pytest.param(
            HEADER,
            r"^'.*bad\.csv' has a header but no data rows; expected at least two samples$",
            id="header-only",
        ),
        pytest.param(
            HEADER + _rows(1), r"has only one sample; a recording needs at least two", id="one-row"
        ),
        pytest.param(
            ",time,sginal,isosbestic,cue\n" + _rows(5),
            r"^'.*bad\.csv' has no column 'signal' \(signal_col; did you mean 'sginal'\?\); "
            r"its columns: 'time', 'sginal', 'isosbestic', 'cue'$",
            id="misspelled-column",
        ),
        pytest.param(
            HEADER + _rows(3) + "3,0.3,abc,0.6,0\n" + _rows(2),
            r"^'.*bad\.csv': column 'signal' holds 'abc' at line 5; expected a number$",
            id="non-numeric",
        ),
        pytest.param(
            HEADER + _rows(2) + "2,0.2,1.1,0.6,2\n",
            r"^'.*bad\.csv': event column 'cue' holds '2' at line 4; expected a boolean or 0/1 "
            r"flag \(True/False, true/false, 1/0, 1.0/0.0 or empty\)$",
            id="bad-flag",
        ),
        pytest.param(
            HEADER + _rows(2) + "2,nan,1.1,0.6,0\n" + "3,0.3,1.1,0.6,0\n",
            r"^'.*bad\.csv': column 'time' has a NaN, inf or empty value \(nan\) at line 4; "
            r"expected finite numbers$",
            id="nan-time",
        ),
        pytest.param(
            HEADER + _rows(2) + "2,0.2,inf,0.6,0\n",
            r"column 'signal' has a NaN, inf or empty value \(inf\) at line 4",
            id="inf-signal",
        ),
        pytest.param(
            HEADER + _rows(3) + "3,0.3,,0.6,0\n",
            r"column 'signal' has a NaN, inf or empty value \(nan\) at line 5",
            id="empty-signal",
        ),
        pytest.param(
            HEADER + _rows(4) + "4,0.4",
            r"^'.*bad\.csv' is truncated: its last line \(line 6\) has 2 of the header's 5 "
            r"fields: '4,0.4'$",
            id="truncated",
        ),
        pytest.param(
            HEADER + _rows(2) + "2,0.2,1.1,0.6,0,9\n" + _rows(5)[24:],
            r"^'.*bad\.csv': line 4 has 6 fields, but the header has 5: '2,0.2,1.1,0.6,0,9'$",
            id="extra-field",
        ),
        pytest.param(
            HEADER + "0,0.0,1,1,0\n1,0.1,1,1,0\n2,0.1,1,1,0\n3,0.3,1,1,0\n",
            r"^'.*bad\.csv': column 'time' repeats the timestamp 0.1 s at line 4 \(also at "
            r"line 3\); time must be strictly increasing$",
            id="duplicate-time",
        ),
        pytest.param(
            HEADER + "0,0.0,1,1,0\n1,0.2,1,1,0\n2,0.1,1,1,0\n3,0.3,1,1,0\n",
            r"column 'time' goes back from 0.2 s to 0.1 s at line 4; time must be strictly "
            r"increasing \(are the rows sorted\?\)$",
            id="time-goes-back",
        ),
    ],
)
def test_csv_bad_input(tmp_path: Path, text: str, match: str) -> None:
    path = write_text(tmp_path / "bad.csv", text)
    with pytest.raises(InputError, match=match):
        load_photometry_csv(str(path), {"event_cols": ["cue"]})


def _zipped(text: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("sheet.csv", text)
    return buffer.getvalue()


#: Files that are not UTF-8 text, as Excel, a rig's software or a wrong export write them:
#: the file's bytes (from the good CSV's text) and what the error says it is.
EXCEL_SAVE = "save it again as UTF-8 \\(in Excel: 'CSV UTF-8'\\)"
NOT_UTF8 = {
    "utf-16-bom": (
        lambda text: text.encode("utf-16"),
        r"UTF-16 text \(it starts with a UTF-16 byte-order mark\)",
        EXCEL_SAVE,
    ),
    "utf-16-be-bom": (
        lambda text: codecs.BOM_UTF16_BE + text.encode("utf-16-be"),
        r"UTF-16 text \(it starts with a UTF-16 byte-order mark\)",
        EXCEL_SAVE,
    ),
    "utf-16-no-bom": (
        lambda text: text.encode("utf-16-le"),
        r"UTF-16 text \(little-endian, without a byte-order mark\)",
        EXCEL_SAVE,
    ),
    "utf-32-bom": (
        lambda text: text.encode("utf-32"),
        r"UTF-32 text \(it starts with a UTF-32 byte-order mark\)",
        EXCEL_SAVE,
    ),
    "latin-1": (
        lambda text: text.replace("signal", "r\xe9ponse").encode("latin-1"),
        r"text that is not UTF-8 \(byte 0xe9 at offset 7: Latin-1 or Windows-1252\?\)",
        EXCEL_SAVE,
    ),
    "binary": (
        lambda text: np.random.default_rng(5).bytes(4096),
        r"binary data \(byte 0x[0-9a-f]{2} at offset \d+\)",
        "",
    ),
    "gzip-without-gz": (
        lambda text: gzip.compress(text.encode()),
        "gzip-compressed data",
        "name a gzipped CSV '.csv.gz'",
    ),
    "zip": (
        _zipped,
        r"a ZIP archive \(an Excel \.xlsx workbook\?\)",
        "export the sheet as CSV UTF-8",
    ),
}


@pytest.mark.parametrize("case", sorted(NOT_UTF8))
def test_a_csv_that_is_not_utf8_text_is_one_line_naming_it(tmp_path: Path, case: str) -> None:
    encode, found, hint = NOT_UTF8[case]
    text = HEADER + _rows(5)
    path = tmp_path / "recording.csv"
    path.write_bytes(encode(text))
    with pytest.raises(InputError) as error:
        load_photometry_csv(str(path), {"event_cols": ["cue"]})
    expected = rf"'{re.escape(str(path))}' is {found}; expected a UTF-8 CSV in PhoPro's layout"
    assert re.fullmatch(expected + (f": {hint}" if hint else ""), str(error.value)), str(
        error.value
    )


def test_a_utf8_csv_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    text = HEADER + _rows(5)
    plain = write_text(tmp_path / "plain.csv", text)
    marked = tmp_path / "marked.csv"
    marked.write_bytes(text.encode("utf-8-sig"))
    assert marked.read_bytes().startswith(codecs.BOM_UTF8)
    ours = load_photometry_csv(str(marked), {"event_cols": ["cue"]})
    reference = load_photometry_csv(str(plain), {"event_cols": ["cue"]})
    xr.testing.assert_identical(ours.drop_attrs(), reference.drop_attrs())
    # a gzipped one too: the mark is inside the stream
    packed = tmp_path / "marked.csv.gz"
    packed.write_bytes(gzip.compress(text.encode("utf-8-sig")))
    xr.testing.assert_identical(
        load_photometry_csv(str(packed), {"event_cols": ["cue"]}).drop_attrs(),
        reference.drop_attrs(),
    )


def test_csv_missing_event_column(tmp_path: Path) -> None:
    path = write_text(tmp_path / "bad.csv", HEADER + _rows(4))
    with pytest.raises(
        InputError,
        match=r"has no column 'lever1' \(event_cols\), no column 'CUE' \(event_cols; did you "
        r"mean 'cue'\?\); its columns: 'time', 'signal', 'isosbestic', 'cue'$",
    ):
        load_photometry_csv(str(path), {"event_cols": ["lever1", "CUE"]})


def test_csv_error_line_in_a_late_block(tmp_path: Path) -> None:
    frame, _ = recording_frame(n=60_000, events=["cue"])
    frame["signal"] = frame["signal"].astype(object)
    frame.loc[50_000, "signal"] = "1.6O"  # a letter O: row 50 000 is line 50 002
    path = write_csv(tmp_path / "typo.csv", frame)
    with pytest.raises(InputError, match=r"column 'signal' holds '1.6O' at line 50002;"):
        load_photometry_csv(str(path), {"event_cols": ["cue"]})


def test_csv_missing_and_folder_inputs(tmp_path: Path) -> None:
    with pytest.raises(InputNotFoundError, match=r"^input '.*nope\.csv' does not exist$"):
        load_photometry_csv(str(tmp_path / "nope.csv"), {})
    with pytest.raises(InputError, match=r"is a folder; format 'photometry-csv' reads files"):
        load_photometry_csv(str(tmp_path), {})


def test_non_uniform_sampling_is_said(tmp_path: Path) -> None:
    t = np.arange(20) * 0.01
    t[6:] += 0.004  # the interval ending at sample 6 (line 8) is 14 ms: warned, not rejected
    frame = pd.DataFrame({"time": t, "signal": np.ones(20)})
    path = write_csv(tmp_path / "jitter.csv", frame)
    with pytest.warns(
        NonUniformSamplingWarning,
        match=r"^'.*jitter\.csv': sampling is not uniform: median interval 0\.01 s, but the "
        r"interval ending at line 8 is 0\.014 s, 40\.00% off \(sampling_tolerance 1\.00%\)",
    ):
        ds = load_photometry_csv(str(path), {"isosbestic_col": None})
    assert ds.sizes["time"] == 20
    # within a looser tolerance: silent (pytest turns any warning into an error)
    load_photometry_csv(str(path), {"isosbestic_col": None, "sampling_tolerance": 0.6})


def test_small_jitter_is_silent(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    t = np.arange(500) / 1000.0 + rng.uniform(-2e-6, 2e-6, 500)  # 0.4 % jitter
    path = write_csv(tmp_path / "ok.csv", pd.DataFrame({"time": t, "signal": np.ones(500)}))
    ds = load_photometry_csv(str(path), {"isosbestic_col": None})
    assert ds.attrs["sampling_rate"] == pytest.approx(499 / (t[-1] - t[0]))


# ---------------------------------------------------------------------------------------------
# memory:// CSV with a sidecar, through the registry
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def memory_csv() -> Iterator[str]:
    frame, _ = recording_frame(n=300, seed=9)
    fs = fsspec.filesystem("memory")
    fs.pipe("/loaders-test/csv/exp_1.csv", frame.to_csv().encode())
    fs.pipe("/loaders-test/csv/exp_1.json", json.dumps({"subject": "m9"}).encode())
    yield "memory://loaders-test/csv/exp_1.csv"
    fs.rm("/loaders-test/csv", recursive=True)


def test_csv_memory_url(memory_csv: str, tmp_path: Path) -> None:
    ds = load_recording(
        memory_csv,
        {"event_cols": EVENTS, "annotation": "{stem}.json"},
        format="photometry-csv",
    )
    assert ds.attrs["subject"] == "m9" and ds.attrs["source"] == memory_csv
    local = tmp_path / "exp_1.csv"
    local.write_bytes(fsspec.filesystem("memory").cat(memory_csv))
    xr.testing.assert_identical(
        ds.drop_attrs(), load_photometry_csv(str(local), {"event_cols": EVENTS}).drop_attrs()
    )
    fsspec.filesystem("memory").pipe(
        "/loaders-test/csv/cut.csv", (HEADER + _rows(3) + "3,0.3").encode()
    )
    with pytest.raises(InputError, match=r"is truncated: its last line \(line 5\) has 2 of the"):
        load_photometry_csv("memory://loaders-test/csv/cut.csv", {"event_cols": ["cue"]})
