"""Zarr storage: datasets round-trip, commits are atomic, the trials store appends flat."""

from __future__ import annotations

import json
import os
import pickle
import tracemalloc
from pathlib import Path
from typing import Any

import dask.array as da
import fsspec
import numpy as np
import pytest
import xarray as xr
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec

from neurobatch.errors import StoreDamagedError
from neurobatch.io.store import (
    COMMIT_MARKER,
    append_trials,
    chunk_length,
    commit,
    damage_reported,
    inventory,
    is_damage,
    open_dataset,
    open_trials,
    read_commit,
    remove,
    resample_trials,
    to_json_safe,
    verify,
    write_dataset,
)

RNG = np.random.default_rng(20260101)


def recording(n: int = 10_000, *, rate: float = 1000.0) -> xr.Dataset:
    """A Recording dataset as a loader returns it (numpy-backed, ``<U`` event names)."""
    time = 12.5 + np.arange(n) / rate + RNG.normal(0.0, 1e-7, n)  # as read from a file
    return xr.Dataset(
        {
            "signal": ("time", RNG.normal(size=n)),
            "isosbestic": ("time", RNG.normal(size=n)),
            "event_time": ("event", np.array([12.6, 13.1, 13.100000000000001, 19.25])),
        },
        coords={
            "time": time,
            "event_name": ("event", np.array(["trial_cue", "lever1", "trial_cue", "shock"])),
        },
        attrs={
            "sampling_rate": (n - 1) / (time[-1] - time[0]),
            "event_names": ["trial_cue", "lever1", "lever2", "shock"],
            "source": "memory://lab/experiment_1.csv",
            "n_samples": n,
            "subject": {"id": "m12", "weights_g": [21.5, 22.0], "implant": None},
            "fit": {"slope": np.float64(0.75), "converged": True, "n_iter": np.int64(7)},
        },
    )


# --- chunk_length ----------------------------------------------------------------------------


def test_chunk_length_fits_the_budget() -> None:
    assert chunk_length(64 * 2**20, bytes_per_sample=16) == 4 * 2**20
    assert chunk_length(100, bytes_per_sample=8) == 4096
    assert chunk_length(100, bytes_per_sample=8, minimum=1) == 12
    assert chunk_length(7, bytes_per_sample=8, minimum=1) == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"chunk_memory": 0, "bytes_per_sample": 8}, "chunk_memory must be a positive integer"),
        ({"chunk_memory": 2.5, "bytes_per_sample": 8}, "chunk_memory must be a positive integer"),
        ({"chunk_memory": 10, "bytes_per_sample": -8}, "bytes_per_sample must be a positive"),
        ({"chunk_memory": 10, "bytes_per_sample": 8, "minimum": 0}, "minimum must be a positive"),
    ],
)
def test_chunk_length_rejects_bad_values(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        chunk_length(**kwargs)


# --- write_dataset / open_dataset ------------------------------------------------------------


def assert_round_trip(original: xr.Dataset, back: xr.Dataset) -> None:
    np.testing.assert_array_equal(back.time.values, original.time.values)  # bit for bit
    assert back.time.dtype == np.float64
    for name in ("signal", "isosbestic", "event_time"):
        np.testing.assert_array_equal(back[name].values, original[name].values)
        assert back[name].dtype == np.float64
    assert back.event_name.values.tolist() == original.event_name.values.tolist()
    assert set(back.coords) == {"time", "event_name"}
    assert back.attrs == to_json_safe(original.attrs)
    assert back.attrs["subject"] == {"id": "m12", "weights_g": [21.5, 22.0], "implant": None}
    assert back.attrs["fit"] == {"slope": 0.75, "converged": True, "n_iter": 7}


def test_write_open_round_trip_chunks_from_budget(tmp_path: Path) -> None:
    ds = recording()
    url = str(tmp_path / "recording.zarr")
    # 3 float64 variables along time (signal, isosbestic, time): 24 bytes per sample
    write_dataset(ds, url, chunk_memory=24 * 4096)
    back = open_dataset(url)
    assert isinstance(back.signal.data, da.Array)  # lazy
    assert back.signal.chunks == ((4096, 4096, 1808),)  # the store's chunks
    assert_round_trip(ds, back)
    group = zarr.open_group(url, mode="r")
    assert group.metadata.consolidated_metadata is not None
    signal = group["signal"]
    assert isinstance(signal, zarr.Array)
    assert signal.chunks == (4096,)
    # compressed, then a CRC-32C of the compressed bytes, last
    assert [type(c).__name__ for c in signal.compressors] == ["BloscCodec", "Crc32cCodec"]
    names = group["event_name"]
    assert isinstance(names, zarr.Array)
    assert str(names.dtype) == "StringDType()"  # no fixed-width <U in the store


def test_write_overwrites_and_short_recordings_are_one_chunk(tmp_path: Path) -> None:
    url = str(tmp_path / "recording.zarr")
    write_dataset(recording(20_000), url, chunk_memory=2**20)
    write_dataset(recording(50), url, chunk_memory=2**20)
    back = open_dataset(url)
    assert back.sizes["time"] == 50
    assert back.signal.chunks == ((50,),)


def test_write_without_events_or_with_a_processed_dataset(tmp_path: Path) -> None:
    ds = recording(100).isel(event=slice(0, 0))
    ds["dff"] = ds.signal * 0.01
    ds.attrs.update(processed_variable="dff", fit={"r_squared": float("nan")})
    url = str(tmp_path / "preprocessed.zarr")
    write_dataset(ds, url, chunk_memory=2**20)
    back = open_dataset(url)
    assert back.sizes["event"] == 0
    assert back.event_name.values.tolist() == []
    np.testing.assert_array_equal(back.dff.values, ds.dff.values)
    assert np.isnan(back.attrs["fit"]["r_squared"])


def test_write_dask_dataset_chunk_by_chunk(tmp_path: Path) -> None:
    n = 5_000_000  # 40 MB of float64
    blocks: list[int] = []

    def make(block: np.ndarray[Any, Any], block_info: Any = None) -> np.ndarray[Any, Any]:
        blocks.append(block.size)
        return np.sin(block * 1e-3)

    signal = da.arange(n, dtype=np.float64, chunks=300_001).map_blocks(make, dtype=np.float64)
    ds = xr.Dataset({"signal": ("time", signal)}, attrs={"sampling_rate": 1000.0})
    url = str(tmp_path / "lazy.zarr")
    tracemalloc.start()
    try:
        write_dataset(ds, url, chunk_memory=2**20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20, f"writing a 40 MB dask dataset peaked at {peak / 2**20:.1f} MiB"
    assert max(blocks) == 300_001  # computed in its own blocks, never as a whole
    back = open_dataset(url)
    assert back.signal.chunks[0][0] == 2**20 // 8
    np.testing.assert_array_equal(back.signal[-1000:].values, np.sin(np.arange(n - 1000, n) * 1e-3))


def test_memory_url_with_storage_options() -> None:
    url = "memory://test-store/items/a/recording.zarr"
    ds = recording(300)
    write_dataset(ds, url, chunk_memory=2**20, storage_options={})
    assert_round_trip(ds, open_dataset(url, storage_options={}))
    commit(url, {"params": "h1"}, storage_options={})
    assert read_commit(url, storage_options={}) == {"params": "h1"}
    remove(url)
    assert read_commit(url) is None
    with pytest.raises(FileNotFoundError, match="no Zarr store"):
        open_dataset(url)


def test_write_errors_name_the_problem(tmp_path: Path) -> None:
    url = str(tmp_path / "x.zarr")
    with pytest.raises(ValueError, match=r"x\.zarr: the dataset has no dimension 'time'"):
        write_dataset(xr.Dataset({"a": ("sample", [1.0])}), url, chunk_memory=2**20)
    bad = recording(10)
    bad.attrs["when"] = {1, 2}
    with pytest.raises(TypeError, match=r"attrs of .*\['when'\] must hold only JSON values"):
        write_dataset(bad, url, chunk_memory=2**20)
    with pytest.raises(FileNotFoundError, match="no Zarr store there"):
        open_dataset(str(tmp_path / "missing.zarr"))


# --- commits ---------------------------------------------------------------------------------


def test_commit_is_written_last_and_read_back(tmp_path: Path) -> None:
    url = str(tmp_path / "items" / "a" / "recording.zarr")
    assert read_commit(url) is None
    write_dataset(recording(100), url, chunk_memory=2**20)
    assert read_commit(url) is None  # data without a marker: not done
    marker = {"params": "abc", "n_trials": np.int64(12), "finished": "2026-01-01T00:00:00"}
    commit(url, marker)
    assert read_commit(url) == {"params": "abc", "n_trials": 12, "finished": "2026-01-01T00:00:00"}
    assert sorted(p for p in os.listdir(url) if p.startswith(COMMIT_MARKER)) == [COMMIT_MARKER]
    commit(url, {"params": "def"})  # replaced whole
    assert read_commit(url) == {"params": "def"}
    open_dataset(url)  # the marker does not disturb zarr

    write_dataset(recording(100), url, chunk_memory=2**20)  # a rewrite un-commits first
    assert read_commit(url) is None


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", ""])
def test_unreadable_commit_means_not_done(tmp_path: Path, content: str) -> None:
    (tmp_path / COMMIT_MARKER).write_text(content)
    assert read_commit(str(tmp_path)) is None


def test_remove_cleans_a_partial_output(tmp_path: Path) -> None:
    url = str(tmp_path / "trials.zarr")
    write_dataset(recording(100), url, chunk_memory=2**20)
    commit(url, {"params": "x"})
    remove(url)
    assert not os.path.exists(url)
    remove(url)  # absent: nothing to do


# --- the combined trials store ---------------------------------------------------------------

N_REL = 1000
CHUNK = 2**18  # 32 trials of 1000 points per chunk
REL_TIME = np.round(np.arange(-500, 500) / 100.0, 10)


def trials_item(k: int, n: int = 40, *, rel_time: np.ndarray[Any, Any] = REL_TIME) -> xr.Dataset:
    """Item ``k``'s Trials dataset; some columns exist only in some items."""
    coords: dict[str, Any] = {
        "rel_time": rel_time,
        "item_id": ("trial", np.array([f"item_{k:02d}"] * n)),
        "experiment_id": ("trial", np.array([f"exp{k}"] * n, dtype=object)),
        "trial_num": ("trial", np.arange(1, n + 1, dtype=np.int64)),
        "start_time": ("trial", 10.0 * np.arange(n) + k),
        "stop_time": ("trial", 10.0 * np.arange(n) + k + 16.0),
        "lever1": ("trial", np.where(RNG.random(n) < 0.3, np.nan, RNG.uniform(2, 4, n))),
        "rewarded": ("trial", RNG.random(n) < 0.5),  # bool in every item
    }
    if k % 3 == 0:
        coords["shock"] = ("trial", RNG.uniform(0, 1, n))  # float, only in some items
    if k % 4 == 1:
        coords["age"] = ("trial", np.full(n, 60 + k, dtype=np.int64))  # int, only in some
    if k % 5 == 2:
        coords["sex"] = ("trial", np.array(["F" if k % 2 else "M"] * n))  # str, only in some
    if k % 7 == 3:
        coords["opto"] = ("trial", np.arange(n) % 2 == 0)  # bool, only in some
    return xr.Dataset(
        {"dff": (("trial", "rel_time"), RNG.normal(size=(n, rel_time.size)))},
        coords=coords,
        attrs={"processed_variable": "dff", "sampling_rate": 100.0},
    )


def outer_concat(items: list[xr.Dataset]) -> xr.Dataset:
    """What the store must hold: ``xr.concat`` with ``join="outer"``, strings missing as ""."""
    coords = sorted({str(c) for item in items for c in item.coords if c != "rel_time"})
    combined = xr.concat(
        [item.reset_coords() for item in items],
        dim="trial",
        join="outer",
        data_vars="all",
        coords="different",
        compat="equals",
    )
    for name in coords:
        if combined[name].dtype.kind in "UO":  # xr.concat leaves NaN (or "nan") where missing
            parts = [
                item[name].values.astype(object)
                if name in item.coords
                else [""] * item.sizes["trial"]
                for item in items
            ]
            combined[name] = ("trial", np.concatenate(parts))
    return combined.set_coords(coords)


def assert_trials_equal(store: xr.Dataset, expected: xr.Dataset) -> None:
    assert set(store.coords) == set(expected.coords)
    assert set(store.data_vars) == set(expected.data_vars)
    np.testing.assert_array_equal(store.rel_time.values, expected.rel_time.values)
    for name in expected.variables:
        ours, theirs = store[name].values, expected[name].values
        if theirs.dtype.kind in "UO":
            assert ours.tolist() == theirs.tolist(), name
        else:
            np.testing.assert_array_equal(ours, theirs, err_msg=str(name))
            assert ours.dtype == theirs.dtype, name


def traced_peak(function: Any, *args: Any, chunk_memory: int) -> int:
    tracemalloc.start()
    try:
        function(*args, chunk_memory=chunk_memory)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_append_30_items_flat_memory_and_equal_to_outer_concat(tmp_path: Path) -> None:
    url = str(tmp_path / "trials.zarr")
    items = [trials_item(k) for k in range(30)]  # 40 trials x 1000 points each
    early, late = (2, 3, 4), (28, 29, 30)
    peaks: dict[int, int] = {}
    total = 0
    for k, item in enumerate(items, start=1):
        if k in early + late:
            peaks[k] = traced_peak(append_trials, item, url, chunk_memory=CHUNK)
        else:
            append_trials(item, url, chunk_memory=CHUNK)
        total += item.sizes["trial"]
        readable = xr.open_zarr(url)  # a plain reader, between appends
        assert readable.sizes["trial"] == total
        assert "item_id" in readable.coords and "dff" in readable.data_vars
    item_bytes = items[0].nbytes
    store_bytes = sum(item.nbytes for item in items)
    # appending item 30 costs what appending item 3 did (an item, a few chunks and zarr's
    # buffers, which vary with the timing of its concurrent writes), never the whole store
    peak_early, peak_late = max(peaks[k] for k in early), max(peaks[k] for k in late)
    assert peak_late < 1.5 * peak_early, peaks
    assert peak_late < store_bytes / 2.5, (peaks, item_bytes, store_bytes)

    combined = open_trials(url)
    assert isinstance(combined.dff.data, da.Array)
    assert combined.sizes == {"trial": 1200, "rel_time": N_REL}
    assert_trials_equal(combined, outer_concat(items))
    assert combined.rewarded.dtype == bool  # present everywhere: stays bool
    assert combined.trial_num.dtype == np.int64
    assert combined.age.dtype == np.float64  # int with missing values: float, NaN
    assert combined.opto.dtype == np.float64  # bool with missing values: 1.0 / 0.0 / NaN
    assert combined.attrs == {"processed_variable": "dff", "sampling_rate": 100.0}


def test_column_types_are_promoted_on_both_sides(tmp_path: Path) -> None:
    url = str(tmp_path / "trials.zarr")
    first = (
        trials_item(1, 3)
        .drop_vars(["age"])
        .assign_coords(
            subject=("trial", np.array([7, 7, 7])),  # int, then a string in the next item
            dose=("trial", np.array([1, 2, 3])),  # int, absent from the next item
            site=("trial", np.array(["NAc", "NAc", "NAc"])),
            weight=("trial", np.array([21.5, 22.0, 22.5], dtype=np.float32)),
            session=("trial", np.array([1, 1, 1], dtype=np.int16)),
        )
    )
    second = (
        trials_item(2, 2)
        .drop_vars(["sex"])
        .assign_coords(
            subject=("trial", np.array(["m8", "m9"])),
            site=("trial", np.array([1.5, np.nan])),  # a number where the store holds strings
        )
    )
    append_trials(first, url)
    append_trials(second, url)
    back = open_trials(url)
    assert back.subject.values.tolist() == ["7", "7", "7", "m8", "m9"]
    np.testing.assert_array_equal(back.dose.values, [1.0, 2.0, 3.0, np.nan, np.nan])
    assert back.site.values.tolist() == ["NAc", "NAc", "NAc", "1.5", ""]
    assert back.weight.dtype == np.float64  # float32 stored as float64
    assert back.session.dtype == np.float64  # int16, missing in the second item
    assert "subject" in xr.open_zarr(url).coords  # rewritten columns stay coordinates


def test_rel_time_must_match_and_resampling_fixes_it(tmp_path: Path) -> None:
    url = str(tmp_path / "trials.zarr")
    append_trials(trials_item(0, 4), url)
    other = trials_item(1, 3, rel_time=np.arange(-250, 250) / 50.0)  # 50 Hz, not 100 Hz
    with pytest.raises(ValueError, match=r"rel_time \(500 points from -5 to 4\.98 s.*differs"):
        append_trials(other, url)
    assert open_trials(url).sizes["trial"] == 4  # untouched
    resampled = resample_trials(other, REL_TIME)
    assert resampled.attrs["sampling_rate"] == pytest.approx(100.0)
    np.testing.assert_array_equal(resampled.trial_num.values, other.trial_num.values)
    assert np.isnan(resampled.dff.values[:, -1]).all()  # 4.99 s is past the old grid's end
    np.testing.assert_allclose(
        resampled.dff.values[:, 1], (other.dff.values[:, 0] + other.dff.values[:, 1]) / 2
    )
    assert append_trials(resampled, url) == 7
    with pytest.raises(ValueError, match="increasing"):
        resample_trials(other, [0.0, 0.0])


def test_tiny_rel_time_differences_are_tolerated(tmp_path: Path) -> None:
    url = str(tmp_path / "trials.zarr")
    append_trials(trials_item(0, 2), url)
    assert append_trials(trials_item(1, 2, rel_time=REL_TIME + 1e-12), url) == 4
    np.testing.assert_array_equal(open_trials(url).rel_time.values, REL_TIME)


def test_items_without_trials(tmp_path: Path) -> None:
    url = str(tmp_path / "trials.zarr")
    assert append_trials(trials_item(0, 0), url) == 0  # creates an empty store
    assert open_trials(url).sizes["trial"] == 0
    assert append_trials(trials_item(1, 2), url) == 2
    assert append_trials(trials_item(2, 0), url) == 2
    back = open_trials(url)
    assert back.age.dtype == np.int64  # nothing was missing, so no promotion
    assert back.item_id.values.tolist() == ["item_01", "item_01"]


def test_interrupted_append_is_cut_back(tmp_path: Path) -> None:
    url = str(tmp_path / "trials.zarr")
    append_trials(trials_item(0, 5), url)
    group = zarr.open_group(url, mode="r+", use_consolidated=False)
    for name in ("dff", "trial_num"):  # a crash after growing two arrays, before the rest
        array = group[name]
        assert isinstance(array, zarr.Array)
        array.resize((9, *array.shape[1:]))
        array[5:9] = 99
    group.create_array("begun", shape=(9,), dtype="f8", dimension_names=["trial"])
    assert xr.open_zarr(url).sizes["trial"] == 5  # readers still see the committed trials
    append_trials(trials_item(1, 3), url)
    back = open_trials(url)
    assert back.trial_num.values.tolist() == [1, 2, 3, 4, 5, 1, 2, 3]
    assert not (back.dff.values == 99).any()
    assert "begun" not in back.variables


def test_interrupted_first_append_starts_over(tmp_path: Path) -> None:
    url = str(tmp_path / "trials.zarr")
    partial = trials_item(0, 5).drop_vars(["item_id", "experiment_id"])
    partial.to_zarr(url, zarr_format=3, consolidated=False)  # never consolidated
    assert append_trials(trials_item(1, 3), url) == 3
    assert open_trials(url).item_id.values.tolist() == ["item_01"] * 3


def test_dask_backed_trials_and_bad_input(tmp_path: Path) -> None:
    url = str(tmp_path / "trials.zarr")
    item = trials_item(0, 6).chunk({"trial": 2})
    assert append_trials(item, url) == 6
    np.testing.assert_array_equal(open_trials(url).dff.values, item.dff.values)
    with pytest.raises(ValueError, match="needs dimensions 'trial' and 'rel_time'"):
        append_trials(xr.Dataset({"x": ("trial", [1.0])}), url)
    with pytest.raises(ValueError, match=r"no \('trial', 'rel_time'\) data variable"):
        append_trials(trials_item(1, 2).drop_vars("dff"), url)
    bad = trials_item(1, 2)
    bad["extra"] = ("channel", [1.0, 2.0])
    with pytest.raises(ValueError, match=r"'extra' has dimensions \('channel',\)"):
        append_trials(bad, url)
    odd = trials_item(1, 2).assign_coords(when=("trial", np.array([1, 2], dtype="m8[s]")))
    with pytest.raises(TypeError, match="'when' has dtype timedelta64"):
        append_trials(odd, url)


def test_marker_file_is_plain_json(tmp_path: Path) -> None:
    commit(str(tmp_path), {"params": "abc", "nested": {"a": [1, 2]}})
    assert json.loads((tmp_path / COMMIT_MARKER).read_text()) == {
        "params": "abc",
        "nested": {"a": [1, 2]},
    }


# --- integrity: checksums, inventories, verification -----------------------------------------

CHUNKED = 24 * 4096  # signal, isosbestic and time: 24 bytes a sample, so 4096-sample chunks


def chunk_sizes(url: str, name: str) -> dict[str, int]:
    """The chunk objects of array ``name`` in a local store: key to size in bytes."""
    folder = Path(url) / name
    return {
        p.relative_to(folder).as_posix(): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "zarr.json"
    }


def flip_byte(path: Path, *, at: int = 100) -> None:
    """Change one byte of a file in place; its size stays the same."""
    content = bytearray(path.read_bytes())
    content[at] ^= 0xFF
    path.write_bytes(bytes(content))


def committed(ds: xr.Dataset, url: str) -> dict[str, Any]:
    """Write ``ds`` in 4096-sample chunks, commit it with its inventory, return the marker."""
    write_dataset(ds, url, chunk_memory=CHUNKED)
    commit(url, {"params": "abc"}, arrays=True)
    marker = read_commit(url)
    assert marker is not None
    return dict(marker)


def test_every_array_carries_a_checksum_after_its_compressor(tmp_path: Path) -> None:
    url = str(tmp_path / "recording.zarr")
    write_dataset(recording(), url, chunk_memory=CHUNKED)
    group = zarr.open_group(url, mode="r")
    names = sorted(name for name, _ in group.arrays())
    assert names == ["event_name", "event_time", "isosbestic", "signal", "time"]
    for name in names:
        array = zarr.open_array(f"{url}/{name}", mode="r")
        assert isinstance(array.compressors[-1], Crc32cCodec), name
        written = json.loads((Path(url) / name / "zarr.json").read_text())
        assert written["codecs"][-1] == {"name": "crc32c"}, name
    signal = zarr.open_array(f"{url}/signal", mode="r")
    assert [type(c) for c in signal.compressors] == [BloscCodec, Crc32cCodec]


def test_inventory_counts_stored_chunks_not_the_grid(tmp_path: Path) -> None:
    ds = recording()  # 10,000 samples in chunks of 4096: two full chunks, 1808 in the last
    ds["signal"][4096:8192] = np.nan  # chunk c/1 holds only the fill value: never written
    url = str(tmp_path / "recording.zarr")
    write_dataset(ds, url, chunk_memory=CHUNKED)
    nested = zarr.open_group(url, mode="a").create_group("units")
    nested.create_array("rate", shape=(3,), dtype="f8", chunks=(2,))[:] = [1.0, 2.0, 3.0]

    found = inventory(url)
    assert sorted(found) == [
        "event_name",
        "event_time",
        "isosbestic",
        "signal",
        "time",
        "units/rate",
    ]
    signal = chunk_sizes(url, "signal")
    assert sorted(signal) == ["c/0", "c/2"]
    assert found["signal"] == {
        "shape": [10_000],
        "chunks": [4096],
        "stored_chunks": 2,
        "stored_bytes": sum(signal.values()),
    }
    assert found["isosbestic"]["stored_chunks"] == 3
    assert found["isosbestic"]["stored_bytes"] == sum(chunk_sizes(url, "isosbestic").values())
    assert found["units/rate"] == {
        "shape": [3],
        "chunks": [2],
        "stored_chunks": 2,
        "stored_bytes": sum(chunk_sizes(url, "units/rate").values()),
    }
    np.testing.assert_array_equal(open_dataset(url).signal.values, ds.signal.values)
    assert inventory(str(tmp_path / "absent.zarr")) == {}


def test_commit_records_the_inventory_only_when_asked(tmp_path: Path) -> None:
    url = str(tmp_path / "recording.zarr")
    write_dataset(recording(), url, chunk_memory=CHUNKED)
    commit(url, {"params": "abc"})
    assert read_commit(url) == {"params": "abc"}
    commit(url, {"params": "abc", "arrays": "stale"}, arrays=True)
    marker = read_commit(url)
    assert marker is not None
    assert marker["params"] == "abc"
    assert marker["arrays"] == inventory(url)
    assert sorted(p for p in os.listdir(url) if p.startswith(COMMIT_MARKER)) == [COMMIT_MARKER]


def test_verify_an_intact_store_and_an_older_marker(tmp_path: Path) -> None:
    url = str(tmp_path / "recording.zarr")
    marker = committed(recording(), url)
    assert verify(url, marker) == []
    open_dataset(url).load()  # reading changes nothing
    assert verify(url, marker) == []
    assert verify(url, {"params": "abc"}) == []  # committed before inventories: intact


def test_verify_names_a_deleted_chunk(tmp_path: Path) -> None:
    url = str(tmp_path / "recording.zarr")
    marker = committed(recording(), url)
    (Path(url) / "signal" / "c" / "1").unlink()
    assert verify(url, marker) == [
        "array 'signal': 2 of 3 stored chunks present (chunk c/1 missing)"
    ]
    # zarr alone reads the hole as the fill value, silently
    assert np.isnan(open_dataset(url).signal.values[4096:8192]).all()


def test_verify_a_deleted_chunk_beside_a_never_written_one(tmp_path: Path) -> None:
    ds = recording()
    ds["signal"][4096:8192] = np.nan
    url = str(tmp_path / "recording.zarr")
    marker = committed(ds, url)
    (Path(url) / "signal" / "c" / "2").unlink()
    assert verify(url, marker) == [
        (
            "array 'signal': 1 of 2 stored chunks present (1 missing among c/1, c/2; the "
            "others absent were never written (they hold only the fill value))"
        )
    ]
    zarr.open_array(f"{url}/signal", mode="r+")[4096:] = 1.0  # c/1 and c/2 written anew
    assert verify(url, marker) == [
        "array 'signal': 3 stored chunks, 2 recorded (chunks were written after the commit)"
    ]


def test_verify_names_a_truncated_chunk_and_a_resized_or_missing_array(tmp_path: Path) -> None:
    url = str(tmp_path / "recording.zarr")
    marker = committed(recording(), url)
    before = chunk_sizes(url, "signal")["c/0"]
    with open(Path(url) / "signal" / "c" / "0", "r+b") as f:
        f.truncate(before - 100)
    zarr.open_array(f"{url}/isosbestic", mode="r+").resize((5000,))
    remove(f"{url}/event_time")
    zarr.open_group(url, mode="a").create_array("extra", shape=(2,), dtype="f8")
    recorded = marker["arrays"]["signal"]["stored_bytes"]
    assert verify(url, marker) == [
        "array 'event_time' is missing (recorded with shape (4,))",
        (
            "array 'isosbestic': shape (5000,), (10000,) recorded (it was resized or "
            "rewritten after the commit)"
        ),
        (
            f"array 'signal': {recorded - 100:,} stored bytes, {recorded:,} recorded (a chunk "
            "was truncated or replaced)"
        ),
        "array 'extra' is in the store but not in the commit record",
    ]
    with pytest.raises(StoreDamagedError, match=r"array 'signal': chunk c/0 failed its CRC-32C"):
        open_dataset(url).signal.values  # noqa: B018


def test_a_flipped_byte_raises_store_damaged_naming_the_store(tmp_path: Path) -> None:
    url = str(tmp_path / "recording.zarr")
    ds = recording()
    marker = committed(ds, url)
    flip_byte(Path(url) / "signal" / "c" / "1")
    assert verify(url, marker) == []  # same size: the listing cannot see it, the checksum can
    back = open_dataset(url)
    np.testing.assert_array_equal(back.isosbestic.values, ds.isosbestic.values)  # intact
    with pytest.raises(StoreDamagedError) as caught:
        back.signal.mean().compute()
    message = str(caught.value)
    assert message.startswith(f"{url}: array 'signal': chunk c/1 failed its CRC-32C checksum")
    assert "remove it and run the stage that wrote it again" in message
    assert isinstance(caught.value, OSError)
    assert "checksum do not match" in str(caught.value.__cause__)
    again = pickle.loads(pickle.dumps(caught.value))  # it travels back from a worker
    assert type(again) is StoreDamagedError and str(again) == message

    # a plain xarray (or zarr) read, translated by the context manager
    damaged = rf"^{url}: array 'signal': a chunk failed"
    with pytest.raises(StoreDamagedError, match=damaged), damage_reported(url):
        xr.open_zarr(url).signal.values  # noqa: B018
    # the array at its own URL is the root of its store: named by that URL
    damaged = rf"^{url}: array '.*signal': a chunk failed"
    with pytest.raises(StoreDamagedError, match=damaged), damage_reported(url):
        zarr.open_array(f"{url}/signal", mode="r")[:]
    # other errors pass unchanged, and so does StoreDamagedError raised inside
    with pytest.raises(KeyError), damage_reported(url):
        raise KeyError("signal")
    damaged = rf"^{url}: array 'signal': chunk c/1"
    with pytest.raises(StoreDamagedError, match=damaged), damage_reported("memory://other"):
        open_dataset(url).signal.values  # noqa: B018


def test_a_damaged_index_fails_on_open(tmp_path: Path) -> None:
    url = str(tmp_path / "recording.zarr")
    committed(recording(), url)
    flip_byte(Path(url) / "time" / "c" / "2")
    with pytest.raises(StoreDamagedError, match=rf"^{url}: array 'time': a chunk failed its"):
        open_dataset(url)


def test_a_store_without_checksums_reports_what_it_cannot_decompress(tmp_path: Path) -> None:
    url = str(tmp_path / "old.zarr")
    ds = xr.Dataset({"signal": ("time", RNG.normal(size=10_000))})
    ds.to_zarr(  # as written before checksums: compressed only
        url,
        zarr_format=3,
        consolidated=False,
        encoding={"signal": {"chunks": (4096,), "compressors": (BloscCodec(cname="lz4"),)}},
    )
    path = Path(url) / "signal" / "c" / "1"
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(
        StoreDamagedError,
        match=r"array 'signal': chunk c/1 could not be decompressed \(error during blosc "
        r"decompression: -1; the store has no checksums\)",
    ):
        open_dataset(url).signal.values  # noqa: B018


def test_is_damage_tells_codec_failures_from_other_errors() -> None:
    checksum = ValueError("Stored and computed checksum do not match. Stored: b'1'.")
    assert is_damage(checksum)
    assert is_damage(RuntimeError("error during blosc decompression: -1"))
    assert is_damage(RuntimeError("Zstd decompression error: invalid input data"))
    assert is_damage(StoreDamagedError("memory://x.zarr: array 'a': chunk c/0 failed"))
    try:
        try:
            raise checksum
        except ValueError as e:
            raise OSError("while reading a task's input") from e
    except OSError as wrapped:
        assert is_damage(wrapped)  # found through __cause__
    assert not is_damage(ValueError("cannot reshape array of size 3 into shape (2,)"))
    assert not is_damage(FileNotFoundError("memory://x.zarr/zarr.json"))
    assert not is_damage(RuntimeError("Zstd compression error"))


def test_verify_on_a_memory_filesystem() -> None:
    url = "memory://integrity/items/a/recording.zarr"
    fs = fsspec.filesystem("memory")
    root = "/integrity/items/a/recording.zarr"
    try:
        marker = committed(recording(), url)
        assert marker["arrays"]["signal"]["stored_chunks"] == 3
        assert verify(url, marker) == []
        fs.rm(f"{root}/signal/c/2")
        content = fs.cat_file(f"{root}/isosbestic/c/0")
        fs.pipe_file(f"{root}/isosbestic/c/0", content[:-7])
        recorded = marker["arrays"]["isosbestic"]["stored_bytes"]
        assert verify(url, marker) == [
            (
                f"array 'isosbestic': {recorded - 7:,} stored bytes, {recorded:,} recorded (a "
                "chunk was truncated or replaced)"
            ),
            "array 'signal': 2 of 3 stored chunks present (chunk c/2 missing)",
        ]
        with pytest.raises(StoreDamagedError, match=rf"^{url}: array 'isosbestic': chunk c/0"):
            open_dataset(url).isosbestic.values  # noqa: B018
    finally:
        remove(url)
    assert verify(url, marker) == [
        f"array {name!r} is missing (recorded with shape {shape})"
        for name, shape in [
            ("event_name", (4,)),
            ("event_time", (4,)),
            ("isosbestic", (10_000,)),
            ("signal", (10_000,)),
            ("time", (10_000,)),
        ]
    ]


def test_trials_store_arrays_carry_checksums(tmp_path: Path) -> None:
    url = str(tmp_path / "trials.zarr")
    append_trials(trials_item(1, 5), url, chunk_memory=8 * N_REL * 2)  # created: 2 per chunk
    append_trials(trials_item(3, 4), url)  # new column "shock"; "age" (int) becomes float
    group = zarr.open_group(url, mode="r")
    names = sorted(name for name, _ in group.arrays())
    assert {"dff", "rel_time", "item_id", "shock", "age"} <= set(names)
    for name in names:
        array = group[name]
        assert isinstance(array, zarr.Array)
        assert isinstance(array.compressors[-1], Crc32cCodec), name
    flip_byte(Path(url) / "dff" / "c" / "1" / "0")
    with pytest.raises(StoreDamagedError, match=rf"^{url}: array 'dff': one of chunks c/"):
        open_trials(url).dff.values  # noqa: B018
    flip_byte(Path(url) / "trial_num" / "c" / "0", at=30)
    with pytest.raises(StoreDamagedError, match=rf"^{url}: array 'trial_num': a chunk failed"):
        open_trials(url)
    with pytest.raises(StoreDamagedError, match=rf"^{url}: "):
        append_trials(trials_item(4, 2), url)  # reads the damaged partial last chunk
