"""The combined trials store appends flat, outer-joins its columns and carries checksums."""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from typing import Any

import dask.array as da
import numcodecs  # type: ignore[import-untyped]
import numpy as np
import pytest
import xarray as xr
import zarr
from zarr.codecs import Crc32cCodec

from disks import resize, small_disk
from neurobatch.errors import StorageError, StoreDamagedError
from neurobatch.io.trials_store import append_trials, open_trials, resample_trials, stored_trials
from neurobatch.io.zarr import ZarrFormat
from stores import RNG, flip_byte
from zarr_formats import FORMATS, chunk_key, chunk_path

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


def traced_peak(function: Any, *args: Any, **kwargs: Any) -> int:
    tracemalloc.start()
    try:
        function(*args, **kwargs)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@FORMATS
def test_append_30_items_flat_memory_and_equal_to_outer_concat(
    tmp_path: Path, zarr_format: ZarrFormat
) -> None:
    url = str(tmp_path / "trials.zarr")
    items = [trials_item(k) for k in range(30)]  # 40 trials x 1000 points each
    early, late = (2, 3, 4), (28, 29, 30)
    peaks: dict[int, int] = {}
    total = 0
    for k, item in enumerate(items, start=1):
        if k in early + late:
            peaks[k] = traced_peak(
                append_trials, item, url, chunk_memory=CHUNK, zarr_format=zarr_format
            )
        else:
            append_trials(item, url, chunk_memory=CHUNK, zarr_format=zarr_format)
        total += item.sizes["trial"]
        readable = xr.open_zarr(url)  # a plain reader, between appends
        assert readable.sizes["trial"] == total
        assert "item_id" in readable.coords and "dff" in readable.data_vars
    item_bytes = items[0].nbytes
    store_bytes = sum(item.nbytes for item in items)
    # appending item 30 costs what appending item 3 did (an item, a few chunks and zarr's
    # buffers, which vary with the timing of its concurrent writes: 2-4 MB, a tenth more in
    # Zarr 2, whose numcodecs filters copy each chunk), never the whole store
    peak_early, peak_late = max(peaks[k] for k in early), max(peaks[k] for k in late)
    assert peak_late < 1.5 * peak_early, peaks
    assert peak_late < store_bytes / 2, (peaks, item_bytes, store_bytes)

    assert zarr.open_group(url, mode="r").metadata.zarr_format == zarr_format
    combined = open_trials(url)
    assert isinstance(combined.dff.data, da.Array)
    assert combined.sizes == {"trial": 1200, "rel_time": N_REL}
    assert_trials_equal(combined, outer_concat(items))
    assert combined.rewarded.dtype == bool  # present everywhere: stays bool
    assert combined.trial_num.dtype == np.int64
    assert combined.age.dtype == np.float64  # int with missing values: float, NaN
    assert combined.opto.dtype == np.float64  # bool with missing values: 1.0 / 0.0 / NaN
    assert combined.attrs == {"processed_variable": "dff", "sampling_rate": 100.0}


@FORMATS
def test_column_types_are_promoted_on_both_sides(tmp_path: Path, zarr_format: ZarrFormat) -> None:
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
    append_trials(first, url, zarr_format=zarr_format)
    append_trials(second, url)  # an existing store keeps its format
    assert zarr.open_group(url, mode="r").metadata.zarr_format == zarr_format
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


@FORMATS
def test_items_without_trials(tmp_path: Path, zarr_format: ZarrFormat) -> None:
    url = str(tmp_path / "trials.zarr")
    # creates an empty store
    assert append_trials(trials_item(0, 0), url, zarr_format=zarr_format) == 0
    assert open_trials(url).sizes["trial"] == 0
    assert append_trials(trials_item(1, 2), url) == 2
    assert append_trials(trials_item(2, 0), url) == 2
    back = open_trials(url)
    assert back.age.dtype == np.int64  # nothing was missing, so no promotion
    assert back.item_id.values.tolist() == ["item_01", "item_01"]


@FORMATS
def test_interrupted_append_is_cut_back(tmp_path: Path, zarr_format: ZarrFormat) -> None:
    url = str(tmp_path / "trials.zarr")
    append_trials(trials_item(0, 5), url, zarr_format=zarr_format)
    group = zarr.open_group(url, mode="r+", use_consolidated=False)
    for name in ("dff", "trial_num"):  # a crash after growing two arrays, before the rest
        array = group[name]
        assert isinstance(array, zarr.Array)
        array.resize((9, *array.shape[1:]))
        array[5:9] = 99
    if zarr_format == 3:
        group.create_array("begun", shape=(9,), dtype="f8", dimension_names=["trial"])
    else:
        group.create_array(
            "begun", shape=(9,), dtype="f8", attributes={"_ARRAY_DIMENSIONS": ["trial"]}
        )
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


@FORMATS
def test_trials_store_arrays_carry_checksums(tmp_path: Path, zarr_format: ZarrFormat) -> None:
    url = str(tmp_path / "trials.zarr")
    # created with 2 trials per chunk
    append_trials(trials_item(1, 5), url, chunk_memory=8 * N_REL * 2, zarr_format=zarr_format)
    append_trials(trials_item(3, 4), url)  # new column "shock"; "age" (int) becomes float
    group = zarr.open_group(url, mode="r")
    names = sorted(name for name, _ in group.arrays())
    assert {"dff", "rel_time", "item_id", "shock", "age"} <= set(names)
    for name in names:
        array = group[name]
        assert isinstance(array, zarr.Array)
        if zarr_format == 3:
            assert isinstance(array.compressors[-1], Crc32cCodec), name
        else:
            assert array.compressors == (numcodecs.CRC32(),), name
    flip_byte(chunk_path(url, "dff", 1, 0, zarr_format=zarr_format))
    first = chunk_key(0, 0, zarr_format=zarr_format)[:2]
    with pytest.raises(StoreDamagedError, match=rf"^{url}: array 'dff': one of chunks {first}"):
        open_trials(url).dff.values  # noqa: B018
    flip_byte(chunk_path(url, "trial_num", 0, zarr_format=zarr_format), at=30)
    with pytest.raises(StoreDamagedError, match=rf"^{url}: array 'trial_num': a chunk failed"):
        open_trials(url)
    with pytest.raises(StoreDamagedError, match=rf"^{url}: "):
        append_trials(trials_item(4, 2), url)  # reads the damaged partial last chunk


def test_a_full_disk_leaves_no_partial_store_and_an_append_that_resumes(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", "1m") as disk:
        new = str(disk / "new.zarr")
        with pytest.raises(StorageError, match=f"^no space left on device writing {new};"):
            append_trials(trials_item(0, 200), new)  # 1.6 MB of dff
        assert not Path(new).exists()  # what was written of it is removed
        assert stored_trials(new) == 0

        grown = str(disk / "grown.zarr")
        first, second = trials_item(1, 20), trials_item(2, 200)
        append_trials(first, grown)
        with pytest.raises(StorageError, match=f"^no space left on device writing {grown};"):
            append_trials(second, grown)
        assert stored_trials(grown) == 20  # the appends that ended
        assert open_trials(grown).item_id.values.tolist() == ["item_01"] * 20

        resize(disk, "8m")  # more room: the next append cuts the interrupted one back
        assert append_trials(second, grown) == 220
        assert_trials_equal(open_trials(grown).load(), outer_concat([first, second]))


def ordered_item(k: int, columns: dict[str, Any], n: int = 3) -> xr.Dataset:
    """A Trials dataset whose per-trial coordinates are ``columns``, in that order."""
    return xr.Dataset(
        {"dff": (("trial", "rel_time"), RNG.normal(size=(n, 4)))},
        coords={"rel_time": np.arange(4) / 10.0, **{c: ("trial", v) for c, v in columns.items()}},
        attrs={"item": k},
    )


@FORMATS
def test_columns_keep_the_items_order(tmp_path: Path, zarr_format: ZarrFormat) -> None:
    """Not alphabetical: the first item's order, a later item's new columns where it has
    them, promoted columns where they were."""
    url = str(tmp_path / "trials.zarr")
    first = {
        "trial_num": np.arange(1, 4),
        "start_time": np.zeros(3),
        "stop_time": np.ones(3),
        "trial_cue": np.zeros(3),
        "lever": np.ones(3),
        "item_id": np.array(["a"] * 3),
        "age": np.array([60, 60, 60]),  # int, missing from the next item: becomes float
    }
    second = {
        "trial_num": np.arange(1, 4),
        "start_time": np.zeros(3),
        "stop_time": np.ones(3),
        "trial_cue": np.zeros(3),
        "lever": np.ones(3),
        "shock": np.ones(3),  # new, after lever
        "item_id": np.array(["b"] * 3),
        "sex": np.array(["F"] * 3),  # new, after item_id
    }
    assert list(ordered_item(0, first).coords)[1:] == list(first)
    append_trials(ordered_item(0, first), url, zarr_format=zarr_format)
    assert list(open_trials(url).coords) == ["rel_time", *first]
    append_trials(ordered_item(1, second), url)
    expected = ["trial_num", "start_time", "stop_time", "trial_cue", "lever", "shock"]
    expected += ["item_id", "sex", "age"]
    back = open_trials(url)
    assert list(back.coords) == ["rel_time", *expected]
    assert back.age.dtype == np.float64
    # a later item with the columns in another order changes nothing stored
    append_trials(ordered_item(2, dict(reversed(second.items()))), url)
    assert list(open_trials(url).coords) == ["rel_time", *expected]
    assert sorted(xr.open_zarr(url).coords) == sorted(["rel_time", *expected])  # all there


@FORMATS
@pytest.mark.parametrize("n", [1, 5, 40])
def test_a_store_written_once_has_chunks_no_longer_than_its_trials(
    tmp_path: Path, zarr_format: ZarrFormat, n: int
) -> None:
    """An item's own trials (written_once) are stored in chunks of at most its trials (at
    most chunk_memory bytes of windows), and read back as the default store does; the
    combined store keeps chunks that leave room for appends."""
    item = trials_item(3, n)
    once, default = str(tmp_path / "once.zarr"), str(tmp_path / "default.zarr")
    append_trials(item, once, chunk_memory=CHUNK, zarr_format=zarr_format, written_once=True)
    append_trials(item, default, chunk_memory=CHUNK, zarr_format=zarr_format)
    group = zarr.open_group(once, mode="r")
    assert group["dff"].chunks == (min(n, 32), REL_TIME.size)
    assert all(group[name].chunks == (n,) for name in item.coords if name != "rel_time")
    assert group["rel_time"].chunks == (REL_TIME.size,)  # whole, in one stored chunk
    assert chunk_path(once, "rel_time", 0, zarr_format=zarr_format).exists()
    assert not chunk_path(once, "rel_time", 1, zarr_format=zarr_format).exists()
    assert zarr.open_group(default, mode="r")["trial_num"].chunks == (8192,)
    assert_trials_equal(open_trials(once).load(), open_trials(default).load())
    later = trials_item(4, 3)
    append_trials(later, once)  # appending anyway still works
    assert_trials_equal(open_trials(once).load(), outer_concat([item, later]))
