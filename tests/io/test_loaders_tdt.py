"""Tests of the ``tdt`` loader on a small real block written to TDT's layout.

The block (TSQ headers, TEV data, Tbk notes) follows the layout ``tdt.read_block``
documents and reads; the loaded recording is checked against PhoPro's own loader.
"""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path
from types import ModuleType
from typing import Any

import fsspec
import numpy as np
import pytest
import xarray as xr
from numpy.typing import NDArray

from neurobatch.errors import InputError, InputNotFoundError
from neurobatch.io.loaders import load_recording, load_tdt
from photometry_files import check_recording_shape, events_of, write_text
from tdt_files import TDT_FS, TDT_TICK, write_tdt_block


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


# ---------------------------------------------------------------------------------------------
# TDT: a real block written to TDT's layout
# ---------------------------------------------------------------------------------------------


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
