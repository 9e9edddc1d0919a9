"""Zarr datasets: they round-trip, carry checksums, and damaged chunks are named."""

from __future__ import annotations

import json
import pickle
import tracemalloc
from pathlib import Path
from typing import Any

import dask.array as da
import numcodecs  # type: ignore[import-untyped]
import numpy as np
import pytest
import xarray as xr
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec

from neurobatch.chunking import STAGE_HANDOFF_MEMORY
from neurobatch.errors import StoreDamagedError
from neurobatch.io.commit import commit, read_commit, remove, to_json_safe, verify
from neurobatch.io.zarr import (
    ZarrFormat,
    damage_reported,
    ensure_group,
    is_damage,
    open_dataset,
    write_dataset,
)
from stores import CHUNKED, RNG, flip_byte, recording
from zarr_formats import CHECKSUM, FORMATS, chunk_key, chunk_path, committed

# --- write_dataset / open_dataset -------------------------------------------------------------


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


@FORMATS
def test_write_open_round_trip_chunks_from_budget(tmp_path: Path, zarr_format: ZarrFormat) -> None:
    ds = recording()
    url = str(tmp_path / "recording.zarr")
    # 3 float64 variables along time (signal, isosbestic, time): 24 bytes per sample
    write_dataset(ds, url, chunk_memory=24 * 4096, zarr_format=zarr_format)
    back = open_dataset(url)
    assert isinstance(back.signal.data, da.Array)  # lazy
    assert back.signal.chunks == ((4096, 4096, 1808),)  # the store's chunks
    assert_round_trip(ds, back)
    group = zarr.open_group(url, mode="r")
    assert group.metadata.zarr_format == zarr_format
    assert group.metadata.consolidated_metadata is not None
    signal = group["signal"]
    assert isinstance(signal, zarr.Array)
    assert signal.chunks == (4096,)
    names = group["event_name"]
    assert isinstance(names, zarr.Array)
    if zarr_format == 3:
        # compressed, then a CRC-32C of the compressed bytes, last
        assert [type(c).__name__ for c in signal.compressors] == ["BloscCodec", "Crc32cCodec"]
        assert str(names.dtype) == "StringDType()"  # no fixed-width <U in the store
    else:
        # compressed (the last filter), then a CRC-32 of the compressed bytes (the compressor)
        assert signal.filters == (numcodecs.Blosc(cname="lz4", clevel=5, shuffle=1),)
        assert signal.compressors == (numcodecs.CRC32(),)
        zarray = json.loads((Path(url) / "event_name" / ".zarray").read_text())
        assert zarray["dtype"] == "|O"  # variable-length: no fixed-width <U in the store
        assert [f["id"] for f in zarray["filters"]] == ["vlen-utf8", "zstd"]


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


# --- checksums and damaged chunks -------------------------------------------------------------


@FORMATS
def test_every_array_carries_a_checksum_after_its_compressor(
    tmp_path: Path, zarr_format: ZarrFormat
) -> None:
    url = str(tmp_path / "recording.zarr")
    write_dataset(recording(), url, chunk_memory=CHUNKED, zarr_format=zarr_format)
    group = zarr.open_group(url, mode="r")
    names = sorted(name for name, _ in group.arrays())
    assert names == ["event_name", "event_time", "isosbestic", "signal", "time"]
    for name in names:
        array = zarr.open_array(f"{url}/{name}", mode="r")
        if zarr_format == 3:
            assert isinstance(array.compressors[-1], Crc32cCodec), name
            written = json.loads((Path(url) / name / "zarr.json").read_text())
            assert written["codecs"][-1] == {"name": "crc32c"}, name
        else:
            assert array.compressors == (numcodecs.CRC32(),), name
            written = json.loads((Path(url) / name / ".zarray").read_text())
            assert written["compressor"] == {"id": "crc32"}, name  # no "location": any release
            assert written["filters"][-1]["id"] in ("blosc", "zstd"), name
    if zarr_format == 3:
        signal = zarr.open_array(f"{url}/signal", mode="r")
        assert [type(c) for c in signal.compressors] == [BloscCodec, Crc32cCodec]


@FORMATS
def test_a_flipped_byte_raises_store_damaged_naming_the_store(
    tmp_path: Path, zarr_format: ZarrFormat
) -> None:
    url = str(tmp_path / "recording.zarr")
    ds = recording()
    marker = committed(ds, url, zarr_format=zarr_format)
    flip_byte(chunk_path(url, "signal", 1, zarr_format=zarr_format))
    assert verify(url, marker) == []  # same size: the listing cannot see it, the checksum can
    back = open_dataset(url)
    np.testing.assert_array_equal(back.isosbestic.values, ds.isosbestic.values)  # intact
    with pytest.raises(StoreDamagedError) as caught:
        back.signal.mean().compute()
    message = str(caught.value)
    key, checksum = chunk_key(1, zarr_format=zarr_format), CHECKSUM[zarr_format]
    assert message.startswith(f"{url}: array 'signal': chunk {key} failed its {checksum} checksum")
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
    damaged = rf"^{url}: array 'signal': chunk {key}"
    with pytest.raises(StoreDamagedError, match=damaged), damage_reported("memory://other"):
        open_dataset(url).signal.values  # noqa: B018


@FORMATS
def test_a_damaged_index_fails_on_open(tmp_path: Path, zarr_format: ZarrFormat) -> None:
    url = str(tmp_path / "recording.zarr")
    committed(recording(), url, zarr_format=zarr_format)
    flip_byte(chunk_path(url, "time", 2, zarr_format=zarr_format))
    with pytest.raises(StoreDamagedError, match=rf"^{url}: array 'time': a chunk failed its"):
        open_dataset(url)


def test_an_item_group_changes_format_and_keeps_what_it_holds(tmp_path: Path) -> None:
    item = tmp_path / "item"
    ensure_group(str(item))
    write_dataset(recording(100), str(item / "ingest"), chunk_memory=2**20)
    ensure_group(str(item), zarr_format=2)  # output.zarr_format changed: one format only
    assert sorted(p.name for p in item.iterdir()) == [".zattrs", ".zgroup", "ingest"]
    assert zarr.open_group(str(item), mode="r").metadata.zarr_format == 2
    assert open_dataset(str(item / "ingest")).sizes["time"] == 100
    ensure_group(str(item), zarr_format=2)  # already one: nothing changes
    ensure_group(str(item))
    assert sorted(p.name for p in item.iterdir()) == ["ingest", "zarr.json"]
    with pytest.raises(ValueError, match="zarr_format must be 2 or 3, got 4"):
        write_dataset(recording(10), str(tmp_path / "x.zarr"), chunk_memory=2**20, zarr_format=4)  # type: ignore[arg-type]


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
    assert is_damage(RuntimeError("Stored and computed crc32 checksum do not match. Stored: 1."))
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


def _metadata(path: Path) -> dict[str, Any]:
    """Every metadata document of a store (consolidated copies dropped), by path."""
    found = {}
    for file in sorted(path.rglob("*")):
        if file.name not in ("zarr.json", ".zarray", ".zattrs", ".zgroup"):
            continue
        meta = json.loads(file.read_text())
        meta.pop("consolidated_metadata", None)
        found[str(file.relative_to(path))] = meta
    return found


@FORMATS
@pytest.mark.parametrize(
    "ds",
    [
        recording(n=5000),
        xr.Dataset(
            {
                "value": ("row", [1.5, np.nan, -2.0]),
                "count": ("row", np.array([1, 2, 3], dtype=np.int64)),
                "flag": ("row", [True, False, True]),
                "label": ("row", np.array(["a", "", "ccc"], dtype=np.dtypes.StringDType())),
                "mean": ((), 2.5),
                "none": ("empty", np.zeros(0)),
            },
            coords={"row": [10, 20, 30], "note": ("row", np.array(["x", "y", "z"], dtype=object))},
            attrs={"fit": {"slope": 1.0, "names": ["a", "b"]}, "n": 3},
        ),
    ],
    ids=["recording", "mixed"],
)
def test_an_in_memory_dataset_is_stored_as_xarray_stores_it(
    ds: xr.Dataset, tmp_path: Path, zarr_format: ZarrFormat
) -> None:
    """write_dataset writes in-memory datasets without Dataset.to_zarr; the store is the
    same: metadata (dtypes, fill values, dimension names, attributes, codecs) and values."""
    ours = tmp_path / "ours.zarr"
    write_dataset(ds, str(ours), chunk_memory=2**16, dim=None, zarr_format=zarr_format)
    theirs = tmp_path / "theirs.zarr"
    # the same dataset through xarray: dask-backed, so write_dataset hands it to to_zarr
    write_dataset(ds.chunk(), str(theirs), chunk_memory=2**16, dim=None, zarr_format=zarr_format)
    assert _metadata(ours) == _metadata(theirs)
    # every node's documents were compared: zarr.json, or .zarray/.zgroup and .zattrs
    assert len(_metadata(ours)) == (len(ds.variables) + 1) * (2 if zarr_format == 2 else 1)
    back, reference = xr.open_zarr(ours).load(), xr.open_zarr(theirs).load()
    xr.testing.assert_identical(back, reference)
    for name in reference.variables:
        fill = back[name].encoding.get("_FillValue")
        assert str(fill) == str(reference[name].encoding.get("_FillValue")), name


def _chunk_files(path: Path) -> dict[str, bytes]:
    """Every chunk file of a local store, by path."""
    return {
        str(file.relative_to(path)): file.read_bytes()
        for file in sorted(path.rglob("*"))
        if file.is_file() and file.name not in ("zarr.json", ".zarray", ".zattrs", ".zgroup")
    }


def _all_types(n: int) -> xr.Dataset:
    rng = np.random.default_rng(3)
    return xr.Dataset(
        {
            "flag": ("time", rng.random(n) > 0.5),
            "small": ("time", rng.integers(-5, 5, n).astype("i1")),
            "count": ("time", rng.integers(0, 500, n).astype("u2")),
            "signal": ("time", rng.random(n).astype("f4")),
            "frame": ("time", rng.integers(0, 10**12, n)),
            "label": ("time", [str(i % 7) * (i % 3) for i in range(n)]),
            "missing": ("time", np.full(n, np.nan)),  # every chunk is the fill value
            "windows": (("trial", "rel_time"), rng.random((7, 33))),
            "event_time": ("event", np.zeros(0)),
        },
        coords={"time": np.arange(n) / 20, "event_name": ("event", np.zeros(0, dtype=str))},
        attrs={"sampling_rate": 20.0, "fit": {"slope": 0.5, "names": ["a", "b"]}},
    )


@pytest.mark.parametrize(
    ("n", "chunk_memory"), [(1001, 2**20), (1001, 4000), (203, 600), (31, 40)], ids=str
)
def test_an_in_memory_store_is_byte_for_byte_zarr_pythons(
    tmp_path: Path, n: int, chunk_memory: int
) -> None:
    """Zarr 3 stores of in-memory datasets are encoded by neurobatch: whatever the chunking
    (one chunk, several, an uneven last one padded with the fill value, chunks of one
    sample), the chunk files are zarr-python's byte for byte, a chunk that is all fill
    value is not written, and the metadata documents are zarr-python's."""
    ds = _all_types(n)
    ours, theirs = tmp_path / "ours.zarr", tmp_path / "theirs.zarr"
    options = {"chunk_memory": chunk_memory, "dim": "time", "minimum": 1}
    write_dataset(ds, str(ours), **options)
    write_dataset(ds.chunk(), str(theirs), **options)  # dask-backed: zarr-python writes it
    assert _chunk_files(ours) == _chunk_files(theirs)
    assert not (ours / "missing" / "c").exists()
    assert _metadata(ours) == _metadata(theirs)
    consolidated = [json.loads((p / "zarr.json").read_text()) for p in (ours, theirs)]
    assert consolidated[0] == consolidated[1]
    xr.testing.assert_identical(open_dataset(str(ours)).load(), open_dataset(str(theirs)).load())


@FORMATS
@pytest.mark.parametrize(
    "made", [lambda: recording(500), lambda: _all_types(301)], ids=["rec", "types"]
)
def test_what_write_dataset_returns_is_what_open_dataset_reads(
    made: Any, tmp_path: Path, zarr_format: ZarrFormat
) -> None:
    """A dataset written from memory comes back as open_dataset reads the store (values,
    types, coordinates, attributes), loaded; nothing is kept of one larger than the budget
    or written chunk by chunk."""
    ds = made()
    ds.signal.attrs.update(units="V", note=None)
    url = str(tmp_path / "store.zarr")
    kept = write_dataset(ds, url, chunk_memory=2**20, zarr_format=zarr_format)
    assert kept is not None
    assert all(not isinstance(v.data, da.Array) for v in kept.variables.values())
    xr.testing.assert_identical(kept, open_dataset(url).load())
    for name in kept.variables:
        assert kept[name].dtype == open_dataset(url)[name].dtype, name
    kept.signal.values[0] = 1e6  # a copy: neither the store nor the dataset change
    assert open_dataset(url).signal.values[0] == ds.signal.values[0] != 1e6
    assert write_dataset(ds, url, chunk_memory=ds.nbytes // 2, zarr_format=zarr_format) is None
    large = xr.Dataset({"x": ("time", np.zeros(STAGE_HANDOFF_MEMORY // 8 + 1))})
    assert write_dataset(large, url, chunk_memory=2**30, zarr_format=zarr_format) is None
    assert (
        write_dataset(ds.chunk(time=100), url, chunk_memory=1000, zarr_format=zarr_format) is None
    )
