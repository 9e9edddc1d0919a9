"""Tests of :mod:`neurobatch.io.loaders` on real files.

Every loader reads real files written to ``tmp_path`` (or a real ``memory://`` filesystem)
and is checked against an independent reading (pandas, numpy) and against PhoPro's own
loaders on the same files. The TDT tests write a small real block (TSQ headers, TEV data,
Tbk notes) following the layout ``tdt.read_block`` documents and reads.
"""

from __future__ import annotations

import gzip
import importlib
import json
import logging
import struct
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa  # type: ignore[import-untyped, unused-ignore]
import pyarrow.parquet as pq  # type: ignore[import-untyped, unused-ignore]
import pytest
import xarray as xr
from numpy.typing import NDArray
from pydantic import BaseModel, ValidationError, create_model

from neurobatch.errors import ConfigError, InputError, InputNotFoundError, NonUniformSamplingWarning
from neurobatch.io.loaders import (
    LOADERS,
    LoaderArguments,
    PhotometryCSVArguments,
    PhotometryParquetArguments,
    TDTArguments,
    load_photometry_csv,
    load_photometry_parquet,
    load_recording,
    load_tdt,
    read_sidecar,
    resolve_sidecar,
)

EVENTS = ("trial_cue", "lever1", "lever2", "shock")

# ---------------------------------------------------------------------------------------------
# Fixtures: PhoPro (imported once), CSV files in PhoPro's layout
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


FlagStyle = Literal["bool", "int", "float", "lower", "sparse"]


def _flags(mask: NDArray[np.bool_], style: FlagStyle) -> Any:
    if style == "bool":
        return mask  # pandas writes True/False, as PhoPro's write_csv does
    if style == "int":
        return mask.astype(np.int8)
    if style == "float":
        return mask.astype(np.float64)  # 1.0 / 0.0
    if style == "lower":
        return np.where(mask, "true", "false")
    return np.where(mask, "1", "")  # empty = False


def recording_frame(
    n: int = 2000,
    fs: float = 100.0,
    *,
    seed: int = 0,
    events: Sequence[str] = EVENTS,
    style: FlagStyle = "bool",
    isosbestic: bool = True,
) -> tuple[pd.DataFrame, dict[str, NDArray[np.float64]]]:
    """A recording as PhoPro's wide frame, and the planted event times."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / fs
    frame = pd.DataFrame({"time": t, "signal": 1.6 + 0.01 * rng.standard_normal(n)})
    if isosbestic:
        frame["isosbestic"] = 0.9 + 0.01 * rng.standard_normal(n)
    planted = {}
    for k, name in enumerate(events):
        rows = np.sort(rng.choice(n, size=3 + k, replace=False))
        mask = np.zeros(n, dtype=bool)
        mask[rows] = True
        frame[name] = _flags(mask, style)
        planted[name] = t[rows]
    return frame, planted


def write_csv(path: Path, frame: pd.DataFrame, *, index: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=index)
    return path


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def events_of(ds: xr.Dataset, name: str) -> NDArray[np.float64]:
    return np.asarray(ds.event_time.values[ds.event_name.values == name])


def check_recording_shape(ds: xr.Dataset) -> None:
    """The Recording contract of IFACE.md: dtypes, sorted events, JSON-safe attrs."""
    assert ds.time.dtype == np.float64 and ds.signal.dtype == np.float64
    assert ds.signal.dims == ("time",)
    if "isosbestic" in ds:
        assert ds.isosbestic.dtype == np.float64
    assert ds.event_time.dims == ("event",) and ds.event_time.dtype == np.float64
    assert np.all(np.diff(ds.event_time.values) >= 0)
    assert set(ds.event_name.values.tolist()) <= set(ds.attrs["event_names"])
    assert ds.attrs["n_samples"] == ds.sizes["time"]
    json.dumps(ds.attrs)


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


def test_csv_single_channel(
    tmp_path: Path, phopro: ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    frame, _ = recording_frame(isosbestic=False)
    path = write_csv(tmp_path / "single.csv", frame)
    explicit = load_photometry_csv(str(path), {"isosbestic_col": None, "event_cols": EVENTS})
    assert "isosbestic" not in explicit

    # as PhoPro: a named isosbestic column the file lacks means single-channel, said at INFO
    with caplog.at_level(logging.INFO, logger="neurobatch.io.loaders"):
        absent = load_photometry_csv(
            str(path), {"isosbestic_col": "isosbestc", "event_cols": EVENTS}
        )
    assert "isosbestic" not in absent
    assert "has no column 'isosbestc' (isosbestic_col): loading it single-channel" in caplog.text
    xr.testing.assert_identical(explicit, absent)
    theirs = phopro.CSVLoader(str(path), isosbestic_col="isosbestc", event_cols=EVENTS)
    assert theirs.extract_data()["raw_isosbestic"] is None


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


def test_parquet_not_parquet(tmp_path: Path) -> None:
    path = write_text(tmp_path / "fake.parquet", "time,signal\n0,1\n")
    with pytest.raises(InputError, match=r"^'.*fake\.parquet' is not a Parquet file: "):
        load_photometry_parquet(str(path), {})


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


# ---------------------------------------------------------------------------------------------
# Sidecars
# ---------------------------------------------------------------------------------------------


def test_resolve_sidecar_templates(tmp_path: Path) -> None:
    csv = str(tmp_path / "day1" / "exp_1.csv")
    assert resolve_sidecar(csv, "{stem}.json") == str(tmp_path / "day1" / "exp_1.json")
    assert resolve_sidecar(csv, "{name}.yaml") == str(tmp_path / "day1" / "exp_1.csv.yaml")
    assert resolve_sidecar(csv, "../meta/{parent}.json") == str(tmp_path / "meta" / "day1.json")
    block = str(tmp_path / "day1" / "block-3")
    assert resolve_sidecar(block, "annotation.json", target="folder") == str(
        tmp_path / "day1" / "block-3" / "annotation.json"
    )
    assert resolve_sidecar(csv, "/abs/{stem}.json") == "/abs/exp_1.json"
    assert resolve_sidecar(csv, "memory://meta/{stem}.json") == "memory://meta/exp_1.json"
    with pytest.raises(ConfigError, match=r"sidecar template '\{subject\}\.json' is malformed"):
        resolve_sidecar(csv, "{subject}.json")


def test_sidecar_json_yaml_and_key(tmp_path: Path) -> None:
    csv = str(tmp_path / "exp_1.csv")
    write_text(tmp_path / "exp_1.json", json.dumps({"A": {"subject": "a"}, "B": {"x": [1, 2]}}))
    assert read_sidecar(csv, "{stem}.json") == {"A": {"subject": "a"}, "B": {"x": [1, 2]}}
    assert read_sidecar(csv, "{stem}.json", key="B") == {"x": [1, 2]}
    write_text(tmp_path / "exp_1.yml", "subject: m1\nweights: [20.5, 21]\nborn: 2024-01-02\n")
    assert read_sidecar(csv, "{stem}.yml") == {
        "subject": "m1",
        "weights": [20.5, 21],
        "born": "2024-01-02",
    }
    write_text(tmp_path / "exp_1.meta", '{"subject": "m2"}')
    assert read_sidecar(csv, "{stem}.meta", fmt="json") == {"subject": "m2"}


@pytest.mark.parametrize(
    ("name", "content", "kwargs", "match"),
    [
        pytest.param(
            "exp.json",
            None,
            {},
            r"^sidecar '.*exp\.json' of '.*exp\.csv' does not exist \(annotation template "
            r"'\{stem\}\.json'\)$",
            id="missing",
        ),
        pytest.param(
            "exp.json",
            '{\n  "subject": "m1",\n  "age": 60\n  "sex": "F"\n}',
            {},
            r"^sidecar '.*exp\.json' is not valid JSON: line 4 column 3: Expecting ',' "
            r"delimiter$",
            id="invalid-json",
        ),
        pytest.param(
            "exp.yaml",
            "subject: m1\nage: [60\nsex: F\n",
            {},
            r"^sidecar '.*exp\.yaml' is not valid YAML: line 3 column 4: expected ',' or ']', "
            r"but got ':'$",
            id="invalid-yaml",
        ),
        pytest.param(
            "exp.yaml",
            "!!python/object/apply:os.system ['echo unsafe']\n",
            {},
            r"is not valid YAML: line 1 column 1: could not determine a constructor for the tag "
            r"'tag:yaml.org,2002:python/object/apply:os.system'",
            id="unsafe-yaml",
        ),
        pytest.param(
            "exp.json", "[1, 2]", {}, r"sidecar '.*' holds a list; expected a mapping$", id="list"
        ),
        pytest.param(
            "exp.yaml",
            "",
            {},
            r"holds nothing \(an empty document\); expected a mapping",
            id="empty",
        ),
        pytest.param(
            "exp.json",
            '{"A": {"s": 1}}',
            {"key": "B"},
            r"sidecar '.*exp\.json' has no top-level key 'B' \(its keys: 'A'\)$",
            id="missing-key",
        ),
        pytest.param(
            "exp.json",
            '{"A": 3}',
            {"key": "A"},
            r"sidecar '.*exp\.json': key 'A' holds an int; expected a mapping$",
            id="key-not-mapping",
        ),
    ],
)
def test_sidecar_bad_input(
    tmp_path: Path, name: str, content: str | None, kwargs: dict[str, Any], match: str
) -> None:
    if content is not None:
        write_text(tmp_path / name, content)
    template = "{stem}" + Path(name).suffix
    with pytest.raises(InputError, match=match):
        read_sidecar(str(tmp_path / "exp.csv"), template, **kwargs)


def test_sidecar_cannot_overwrite_loader_attrs(tmp_path: Path) -> None:
    frame, _ = recording_frame(n=50, events=[])
    path = write_csv(tmp_path / "exp.csv", frame)
    write_text(tmp_path / "exp.json", json.dumps({"subject": "m1", "source": "elsewhere"}))
    with pytest.raises(
        InputError,
        match=r"^sidecar '.*exp\.json' of '.*exp\.csv' sets 'source', which the loader sets "
        r"itself \(reserved: event_names, n_samples, sampling_rate, source\); rename that key$",
    ):
        load_photometry_csv(str(path), {"annotation": "{stem}.json"})


def test_annotation_arguments_are_checked() -> None:
    with pytest.raises(ValidationError, match=r"uses \{subject\}; only \{stem\}, \{name\}"):
        PhotometryCSVArguments(annotation="{subject}.json")
    with pytest.raises(ValidationError, match=r"cannot tell the format of sidecar 'meta.txt'"):
        PhotometryCSVArguments(annotation="meta.txt")
    assert PhotometryCSVArguments(annotation="meta.txt", annotation_format="yaml").annotation


# ---------------------------------------------------------------------------------------------
# The registry
# ---------------------------------------------------------------------------------------------


def test_registry() -> None:
    assert {fmt: spec.target for fmt, spec in LOADERS.items()} == {
        "photometry-csv": "file",
        "photometry-parquet": "file",
        "tdt": "folder",
        "spikeglx": "file",
        "raw-binary": "file",
        "nwb": "file",
        "npy": "file",
        "zarr": "folder",  # a Zarr store is a folder
        "rgc-pickle": "file",
    }
    common = {
        "label",
        "annotation",
        "annotation_format",
        "annotation_key",
        "downsample",
        "downsample_method",
        "sampling_tolerance",
    }
    for fmt, spec in LOADERS.items():
        assert spec.format == fmt
        assert issubclass(spec.arguments, LoaderArguments)
        assert spec.arguments.model_config.get("extra") == "forbid"
        assert common <= set(spec.arguments.model_fields)
    csv = LOADERS["photometry-csv"].arguments.model_validate({"event_cols": ["a", "b"]})
    assert csv.event_names() == ["a", "b"]
    tdt = LOADERS["tdt"].arguments.model_validate(
        {"box": "A", "signal_label": "_465", "isosbestic_label": None, "event_labels": ["Cue"]}
    )
    assert tdt.event_names() == ["Cue"]
    with pytest.raises(ValidationError, match="isosbestic_label"):
        TDTArguments.model_validate({"box": "A", "signal_label": "_465"})


def test_arguments_validation() -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        PhotometryCSVArguments.model_validate({"event_columns": ["a"]})
    with pytest.raises(ValidationError, match=r"column 'time' is named twice"):
        PhotometryCSVArguments(signal_col="time")
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        PhotometryCSVArguments(downsample=0)
    # as PhoPro's CSVLoader: one name, a list or None
    assert PhotometryCSVArguments.model_validate({"event_cols": "cue"}).event_cols == ["cue"]
    assert PhotometryCSVArguments.model_validate({"event_cols": None}).event_cols == []


def test_config_style_subclass_round_trip() -> None:
    # the pipeline file adds `format` to each model and dumps it back without it
    for fmt, spec in LOADERS.items():
        tag: Any = Literal[fmt]
        model: type[BaseModel] = create_model("Tagged", __base__=spec.arguments, format=(tag, ...))
        required: dict[str, dict[str, Any]] = {
            "tdt": {"box": "A", "signal_label": "_465", "isosbestic_label": "_405"},
            "raw-binary": {"n_channels": 4, "dtype": "int16", "sampling_rate": 30000.0},
            "npy": {"kind": "traces", "sampling_rate": 1000.0},
        }
        raw = required.get(fmt, {})
        tagged = model.model_validate({"format": fmt, "label": "x", **raw})
        dumped = tagged.model_dump(mode="json", exclude={"format"})
        assert spec.arguments.model_validate(dumped).model_dump(mode="json") == dumped
        assert isinstance(tagged, spec.arguments)


def test_load_recording_arguments(tmp_path: Path) -> None:
    frame, _ = recording_frame(n=100)
    path = str(write_csv(tmp_path / "a.csv", frame))
    by_mapping = load_recording(path, {"event_cols": EVENTS}, format="photometry-csv")
    by_model = load_recording(
        path, PhotometryCSVArguments(event_cols=EVENTS), format="photometry-csv"
    )
    tagged = load_recording(
        path, {"format": "photometry-csv", "event_cols": EVENTS}, format="photometry-csv"
    )
    xr.testing.assert_identical(by_mapping, by_model)
    xr.testing.assert_identical(by_mapping, tagged)
    with pytest.raises(
        ConfigError, match=r"unknown loader format 'csv' \(known: 'photometry-csv', "
    ):
        load_recording(path, {}, format="csv")
    with pytest.raises(ConfigError, match=r"name format 'tdt', but this loader reads 'photometry"):
        load_recording(path, {"format": "tdt"}, format="photometry-csv")
    with pytest.raises(ConfigError, match=r"must be a PhotometryCSVArguments or a mapping, not a "):
        load_recording(path, PhotometryParquetArguments(), format="photometry-csv")
    with pytest.raises(
        ConfigError,
        match=r"^invalid loader arguments for format 'photometry-csv': downsample: Input should "
        r"be a valid integer.*; event_col: unknown argument; did you mean 'event_cols'\?$",
    ):
        load_recording(path, {"event_col": "x", "downsample": "x"}, format="photometry-csv")


# ---------------------------------------------------------------------------------------------
# TDT: a real block written to TDT's layout
# ---------------------------------------------------------------------------------------------

# tdt's constants (tdt/__init__.py)
EVTYPE_STRON = 0x101
EVTYPE_STREAM = 0x8101
EVTYPE_MARK = 0x8801
EVMARK_STARTBLOCK = 1
EVMARK_STOPBLOCK = 2
DFORM_FLOAT = 0
DFORM_DOUBLE = 4
TDT_FS = float(np.float32(1017.2526))  # a rate as TDT stores it: a float32
TDT_TICK = 195312.5  # tdt rounds epoc timestamps to this clock


def _code(name: str) -> int:
    """A store's 4-character name as the TSQ's little-endian uint32 code."""
    return int.from_bytes(name.encode("ascii"), "little")


def _tsq_header(
    *,
    size: int,
    evtype: int,
    code: int,
    channel: int = 0,
    sortcode: int = 0,
    timestamp: float = 0.0,
    offset: int = 0,
    strobe: float | None = None,
    dform: int = 0,
    fs: float = 0.0,
) -> bytes:
    """One 40-byte TSQ event header (TTank's tsqEventHeader).

    ``size`` (int32, in 4-byte words, the 10-word header included), ``type`` (int32),
    ``code`` (uint32), ``channel`` and ``sortcode`` (uint16), ``timestamp`` (float64,
    seconds since the epoch), ``ev_offset`` (uint64 byte offset into the TEV) or ``strobe``
    (float64 epoc value), ``format`` (int32) and ``frequency`` (float32).
    """
    head = struct.pack("<iiIHHd", size, evtype, code, channel, sortcode, timestamp)
    value = struct.pack("<Q", offset) if strobe is None else struct.pack("<d", strobe)
    return head + value + struct.pack("<if", dform, fs)


def write_tdt_block(
    folder: Path,
    *,
    streams: Mapping[str, NDArray[np.float32]],
    epocs: Mapping[str, NDArray[np.float64]],
    fs: float = TDT_FS,
    points: int = 256,
    start: float = 1_700_000_000.0,
    tank: str = "Tank",
) -> Path:
    """Write a TDT block folder that ``tdt.read_block`` reads.

    Files: ``<tank>_<block>.tsq`` (event headers: a file header, the start-of-block mark,
    the stream blocks of ``points`` float32 samples and the epoc onsets in time order, the
    end-of-block mark), ``.tev`` (the stream samples the headers point into), ``.Tbk``
    (block notes: one entry per store between ``[USERNOTEDELIMITER]`` marks) and ``.tnt``
    (the notes file: its version line, no notes).
    """
    folder.mkdir(parents=True)
    stem = folder / f"{tank}_{folder.name}"
    events: list[tuple[float, int, bytes]] = []  # (time, order, header)
    tev = bytearray()
    for k, (name, data) in enumerate(streams.items()):
        if data.size % points:
            raise ValueError("stream length must be a multiple of points")
        for b, block in enumerate(data.reshape(-1, points)):
            t = start + b * points / fs
            header = _tsq_header(
                size=10 + points,  # float32 samples: one word each
                evtype=EVTYPE_STREAM,
                code=_code(name),
                channel=1,
                timestamp=t,
                offset=len(tev),
                dform=DFORM_FLOAT,
                fs=fs,
            )
            tev += block.astype("<f4").tobytes()
            events.append((t, k, header))
    for name, onsets in epocs.items():
        for value, onset in enumerate(onsets, start=1):
            header = _tsq_header(
                size=10,
                evtype=EVTYPE_STRON,
                code=_code(name),
                channel=0x2020,  # the buddy epoc: "    " (none)
                sortcode=0x2020,
                timestamp=start + float(onset),
                strobe=float(value),
                dform=DFORM_DOUBLE,
            )
            events.append((start + float(onset), len(streams), header))
    events.sort(key=lambda e: (e[0], e[1]))
    duration = max(d.size for d in streams.values()) / fs
    mark = {"size": 10, "evtype": EVTYPE_MARK}
    tsq = [
        bytes(40),  # the file's own header record, not an event
        _tsq_header(**mark, code=EVMARK_STARTBLOCK, timestamp=start),
        *(header for _, _, header in events),
        _tsq_header(**mark, code=EVMARK_STOPBLOCK, timestamp=start + duration),
    ]
    stem.with_suffix(".tsq").write_bytes(b"".join(tsq))
    stem.with_suffix(".tev").write_bytes(bytes(tev))
    notes = "".join(
        f"NAME=StoreName;TYPE=L;VALUE={name};\n"
        f"NAME=HeadName;TYPE=L;VALUE={'Fi1r' if name in streams else 'Ep' + name};\n"
        "NAME=Enabled;TYPE=L;VALUE=1;\n"
        for name in [*streams, *epocs]
    )
    delimiter = "[USERNOTEDELIMITER]"
    stem.with_suffix(".Tbk").write_bytes(
        (delimiter + "block notes" + delimiter + notes + delimiter).encode("cp437")
    )
    stem.with_suffix(".tnt").write_text("1\n")
    return folder


def _onsets(seconds: list[float]) -> NDArray[np.float64]:
    return np.asarray(seconds, dtype=np.float64)


@pytest.fixture
def tdt_block(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    rng = np.random.default_rng(4)
    n = 40 * 256
    planted: dict[str, Any] = {
        "465A": (1.5 + 0.01 * rng.standard_normal(n)).astype(np.float32),
        "405A": (0.8 + 0.01 * rng.standard_normal(n)).astype(np.float32),
        "ACue": _onsets([1.0, 4.25, 7.5]),
        "ALev": _onsets([2.2, 5.125]),
        "BCue": _onsets([3.0]),
    }
    folder = write_tdt_block(
        tmp_path / "Mouse1-250101-120000",
        streams={k: planted[k] for k in ("465A", "405A")},
        epocs={k: planted[k] for k in ("ACue", "ALev", "BCue")},
    )
    write_text(
        folder / "annotation.json",
        json.dumps({"A": {"subject": "m1", "sex": "F"}, "B": {"subject": "m2"}}),
    )
    return folder, planted


def _tick(seconds: NDArray[np.float64]) -> NDArray[np.float64]:
    return np.asarray(np.round(seconds * TDT_TICK) / TDT_TICK)


def test_tdt_fixture_is_a_real_block(tdt_block: tuple[Path, dict[str, Any]]) -> None:
    tdt = importlib.import_module("tdt")
    folder, planted = tdt_block
    # pytest turns warnings into errors: tdt finds nothing wrong with the block
    block = tdt.read_block(str(folder))
    assert sorted(block.streams.keys()) == ["_405A", "_465A"]
    for store in ("465A", "405A"):
        stream = block.streams["_" + store]
        assert stream.fs == TDT_FS
        assert stream.start_time == 0.0
        assert stream.data.dtype == np.float32
        np.testing.assert_array_equal(stream.data, planted[store])
    assert sorted(block.epocs.keys()) == ["ACue", "ALev", "BCue"]
    for store in ("ACue", "ALev", "BCue"):
        np.testing.assert_allclose(block.epocs[store].onset, planted[store], atol=1e-5)
    np.testing.assert_array_equal(block.epocs.ACue.data, [1.0, 2.0, 3.0])
    assert block.info.blockname == folder.name


def test_tdt_matches_phopro(tdt_block: tuple[Path, dict[str, Any]], phopro: ModuleType) -> None:
    folder, planted = tdt_block
    labels = ["Cue", "Lev", "Shk"]
    ds = load_tdt(
        str(folder),
        {
            "box": "A",
            "signal_label": "_465",
            "isosbestic_label": "_405",
            "event_labels": labels,
            "annotation": "annotation.json",
        },
    )
    check_recording_shape(ds)
    # independent: the planted samples on TDT's time base
    np.testing.assert_array_equal(ds.signal.values, planted["465A"].astype(np.float64))
    np.testing.assert_array_equal(ds.isosbestic.values, planted["405A"].astype(np.float64))
    np.testing.assert_allclose(ds.time.values, np.arange(40 * 256) / TDT_FS, rtol=0, atol=1e-12)
    np.testing.assert_allclose(events_of(ds, "Cue"), _tick(planted["ACue"]), atol=1e-6)
    np.testing.assert_allclose(events_of(ds, "Lev"), _tick(planted["ALev"]), atol=1e-6)
    assert events_of(ds, "Shk").size == 0
    assert ds.attrs["missing_events"] == ["Shk"]
    assert ds.attrs["event_names"] == labels
    assert ds.attrs["subject"] == "m1" and ds.attrs["box"] == "A"

    theirs = phopro.TDTLoader(
        str(folder),
        box="A",
        event_labels=labels,
        signal_label="_465",
        isosbestic_label="_405",
        annotation_file="annotation.json",
    ).extract_data()
    np.testing.assert_array_equal(ds.signal.values, theirs["raw_signal"])
    np.testing.assert_array_equal(ds.isosbestic.values, theirs["raw_isosbestic"])
    np.testing.assert_array_equal(ds.time.values, theirs["time"])
    assert ds.attrs["sampling_rate"] == theirs["frequency"]
    for label in labels:
        np.testing.assert_array_equal(events_of(ds, label), np.sort(theirs["events"][label]))
    for key, value in theirs["metadata"].items():
        assert ds.attrs[key] == value


@pytest.mark.parametrize("method", ["resample", "mean"])
def test_tdt_downsample_matches_phopro(
    tdt_block: tuple[Path, dict[str, Any]], phopro: ModuleType, method: str
) -> None:
    folder, _ = tdt_block
    common = {"box": "A", "signal_label": "_465", "isosbestic_label": "_405"}
    ds = load_tdt(
        str(folder),
        {**common, "event_labels": ["Cue"], "downsample": 10, "downsample_method": method},
    )
    theirs = phopro.TDTLoader(
        str(folder),
        event_labels=["Cue"],
        downsample=10,
        downsample_kwargs={"method": method},
        **common,
    ).extract_data()
    np.testing.assert_array_equal(ds.signal.values, theirs["raw_signal"])
    np.testing.assert_array_equal(ds.isosbestic.values, theirs["raw_isosbestic"])
    np.testing.assert_array_equal(ds.time.values, theirs["time"])
    assert ds.attrs["sampling_rate"] == pytest.approx(theirs["frequency"], rel=1e-12)
    np.testing.assert_array_equal(events_of(ds, "Cue"), theirs["events"]["Cue"])


def test_tdt_single_channel_and_whole_sidecar(
    tdt_block: tuple[Path, dict[str, Any]],
) -> None:
    folder, _planted = tdt_block
    ds = load_tdt(
        str(folder),
        {
            "box": "A",
            "signal_label": "_465",
            "isosbestic_label": None,
            "event_labels": ["Cue"],
            "annotation": "annotation.json",
            "annotation_key": None,
        },
    )
    assert "isosbestic" not in ds
    assert ds.attrs["A"] == {"subject": "m1", "sex": "F"}
    assert ds.attrs["missing_events"] == []
    with pytest.raises(InputError, match=r"has no stream store '_465B' \(signal_label \+ box\)"):
        load_tdt(
            str(folder),
            {"box": "B", "signal_label": "_465", "isosbestic_label": None},
        )


@pytest.fixture
def tdt_args() -> dict[str, Any]:
    return {"box": "A", "signal_label": "_465", "isosbestic_label": "_405", "event_labels": ["Cue"]}


def test_tdt_missing_stream(
    tdt_block: tuple[Path, dict[str, Any]], tdt_args: dict[str, Any]
) -> None:
    folder, _ = tdt_block
    with pytest.raises(
        InputError,
        match=r"^TDT block '.*Mouse1-250101-120000' has no stream store '_470A' \(signal_label "
        r"\+ box\); did you mean '_405A'\? \(its streams: '_405A', '_465A'\)$",
    ):
        load_tdt(str(folder), {**tdt_args, "signal_label": "_470"})


def test_tdt_uneven_streams_and_tdt_warnings(
    tmp_path: Path, tdt_args: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    rng = np.random.default_rng(8)
    signal = rng.standard_normal(12 * 256).astype(np.float32)
    folder = write_tdt_block(
        tmp_path / "uneven",
        streams={"465A": signal, "405A": signal[: 10 * 256]},
        epocs={"ACue": _onsets([1.0])},
    )
    next(folder.glob("*.tnt")).unlink()  # tdt warns about the missing notes file
    with caplog.at_level(logging.INFO, logger="neurobatch.io.loaders"):
        ds = load_tdt(str(folder), tdt_args)
    assert ds.sizes["time"] == 10 * 256
    np.testing.assert_array_equal(ds.signal.values, signal[: 10 * 256])
    assert "streams '_465A' (3072 samples) and '_405A' (2560) differ in length" in caplog.text
    assert "tnt file could not be processed" in caplog.text


def test_tdt_bad_folders(tmp_path: Path, tdt_args: dict[str, Any]) -> None:
    with pytest.raises(InputNotFoundError, match=r"^input '.*nowhere' does not exist$"):
        load_tdt(str(tmp_path / "nowhere"), tdt_args)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match=r"^'.*empty' holds no \.tsq file; expected a TDT block"):
        load_tdt(str(empty), tdt_args)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "T_broken.tsq").write_bytes(bytes(80))
    (broken / "T_broken.tev").write_bytes(b"")
    with pytest.raises(InputError, match=r"^cannot read TDT block '.*broken': Block start marker"):
        load_tdt(str(broken), tdt_args)
    a_file = write_text(tmp_path / "x.csv", "time\n")
    with pytest.raises(InputError, match=r"is a file; format 'tdt' reads block folders"):
        load_tdt(str(a_file), tdt_args)


def test_tdt_memory_url(tdt_block: tuple[Path, dict[str, Any]], tdt_args: dict[str, Any]) -> None:
    folder, _ = tdt_block
    fs = fsspec.filesystem("memory")
    remote = "/loaders-test/tdt/" + folder.name
    for path in folder.iterdir():
        fs.pipe(f"{remote}/{path.name}", path.read_bytes())
    args = {**tdt_args, "annotation": "annotation.json"}
    local = load_tdt(str(folder), args)
    ds = load_recording("memory://" + remote.lstrip("/"), args, format="tdt")
    xr.testing.assert_identical(local.drop_attrs(deep=False), ds.drop_attrs(deep=False))
    assert ds.attrs["subject"] == "m1"
    assert ds.attrs["source"] == "memory://" + remote.lstrip("/")


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
