"""Exports: obs tables as Parquet/CSV, and .h5ad files that AnnData and PhoPro read."""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from typing import Any

import anndata as ad
import fsspec
import h5py
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import xarray as xr

from disks import small_disk
from neurobatch.errors import StorageError
from neurobatch.io.export import clean_axis_dtype, trials_obs, write_h5ad, write_obs
from neurobatch.io.trials_store import append_trials, open_trials

RNG = np.random.default_rng(7)
REL_TIME = np.arange(-40, 40) / 10.0


def item(k: int, n: int, *, n_rel: int = REL_TIME.size) -> xr.Dataset:
    """Item ``k``'s Trials dataset (odd items carry extra metadata columns)."""
    rel_time = REL_TIME if n_rel == REL_TIME.size else np.arange(n_rel) / 100.0
    coords: dict[str, Any] = {  # in the order of the trials stage's columns
        "rel_time": rel_time,
        "trial_num": ("trial", np.arange(1, n + 1)),
        "start_time": ("trial", 30.0 * np.arange(n) + 8.0),
        "stop_time": ("trial", 30.0 * np.arange(n) + 24.0),
        "trial_cue": ("trial", np.zeros(n)),
        "lever1": ("trial", np.where(np.arange(n) % 3 == 0, np.nan, 2.5 + 0.1 * np.arange(n))),
        "item_id": ("trial", np.array([f"item_{k}"] * n)),
        "experiment_id": ("trial", np.array([f"exp_{k}"] * n)),
        "rewarded": ("trial", np.arange(n) % 2 == 0),
    }
    if k % 2:
        coords["sex"] = ("trial", np.array(["F"] * n))
        coords["age"] = ("trial", np.full(n, 60 + k))
    return xr.Dataset(
        {"dff": (("trial", "rel_time"), RNG.normal(size=(n, rel_time.size)))},
        coords=coords,
        attrs={
            "processed_variable": "dff",
            "sampling_rate": 10.0,
            "settings": {"bounds_s": [-4, 4], "center_on": ["lever1", "lever2"], "tol": None},
        },
    )


@pytest.fixture
def store(tmp_path: Path) -> str:
    url = str(tmp_path / "trials.zarr")
    for k in range(4):
        append_trials(item(k, 5 + k), url)
    return url


#: The obs columns of the store: the trials' order (events, then metadata), not alphabetical;
#: the columns only odd items have come after the metadata column before them there.
COLUMNS = ["trial_num", "start_time", "stop_time", "trial_cue", "lever1", "item_id"]
COLUMNS += ["experiment_id", "rewarded", "sex", "age"]


def test_trials_obs_is_the_per_trial_table(store: str) -> None:
    obs = trials_obs(open_trials(store))
    assert obs.index.tolist() == [str(i) for i in range(26)]
    assert list(obs.columns) == COLUMNS
    assert obs.item_id.dtype == object and isinstance(obs.item_id.iloc[0], str)
    assert obs.sex.tolist() == [""] * 5 + ["F"] * 6 + [""] * 7 + ["F"] * 8
    assert obs.trial_num.dtype == np.int64 and obs.rewarded.dtype == bool
    np.testing.assert_array_equal(
        obs.age.isna(), [True] * 5 + [False] * 6 + [True] * 7 + [False] * 8
    )


@pytest.mark.parametrize("where", ["local", "memory"])
def test_write_obs_parquet_and_csv(store: str, tmp_path: Path, where: str) -> None:
    expected = trials_obs(open_trials(store)).reset_index(drop=True)
    folder = str(tmp_path / "out") if where == "local" else "memory://export-test/out"
    write_obs(store, f"{folder}/trials_obs.parquet", format="parquet")
    write_obs(open_trials(store), f"{folder}/trials_obs.csv", format="csv")

    with fsspec.open(f"{folder}/trials_obs.parquet", "rb") as f:
        parquet = pq.read_table(f).to_pandas()
    pd.testing.assert_frame_equal(parquet, expected)
    assert list(parquet.columns) == COLUMNS

    with fsspec.open(f"{folder}/trials_obs.csv", "r") as f:
        csv = pd.read_csv(f)
    for name in ("item_id", "experiment_id", "sex"):
        csv[name] = csv[name].fillna("")  # CSV cannot tell "" from missing
    pd.testing.assert_frame_equal(csv, expected)
    assert list(csv.columns) == COLUMNS


def test_write_obs_rejects_unknown_format(store: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="format must be 'parquet' or 'csv', got 'xlsx'"):
        write_obs(store, str(tmp_path / "x.xlsx"), format="xlsx")  # type: ignore[arg-type]


def test_clean_axis_dtype_matches_phopro_rules() -> None:
    df = pd.DataFrame(
        {
            "repeated": ["a", "a", "b"],
            "unique": ["x", "y", "z"],
            "number": [1.0, np.nan, 3.0],
            "objects": [{"a": 1}, None, [1, 2]],
        },
        index=[0, 1, 2],
    )
    out = clean_axis_dtype(df)
    assert out.index.tolist() == ["0", "1", "2"]
    assert isinstance(out.repeated.dtype, pd.CategoricalDtype)
    assert out.unique.dtype == object
    assert out.number.dtype == np.float64
    assert out.objects.tolist()[0] == '{"a": 1}' and out.objects.isna().tolist()[1]


def assert_h5ad_matches(adata: Any, store: str) -> None:
    trials = open_trials(store)
    obs = trials_obs(trials)
    np.testing.assert_array_equal(adata.X, trials.dff.values)
    assert adata.X.dtype == np.float64
    np.testing.assert_array_equal(adata.var["t"].to_numpy(), trials.rel_time.values)
    assert adata.var.index.tolist() == [str(i) for i in range(trials.sizes["rel_time"])]
    assert adata.obs.index.tolist() == obs.index.tolist()
    assert list(adata.obs.columns) == list(obs.columns) == COLUMNS
    for name in obs.columns:
        ours = adata.obs[name]
        if isinstance(ours.dtype, pd.CategoricalDtype):
            ours = ours.astype(object)
        pd.testing.assert_series_equal(ours, obs[name], check_dtype=False, check_names=False)
    assert isinstance(adata.obs["item_id"].dtype, pd.CategoricalDtype)  # repeated strings


def test_write_h5ad_round_trips_with_anndata(store: str, tmp_path: Path) -> None:
    path = tmp_path / "out" / "trials.h5ad"
    write_h5ad(store, path)
    adata = ad.read_h5ad(path)
    assert_h5ad_matches(adata, store)
    assert adata.uns["processed_variable"] == "dff"
    assert adata.uns["sampling_rate"] == 10.0
    settings = adata.uns["settings"]
    assert settings["bounds_s"].tolist() == [-4, 4]
    assert settings["center_on"].tolist() == ["lever1", "lever2"]
    assert [p.name for p in path.parent.iterdir()] == ["trials.h5ad"]  # no temporary left


def test_write_h5ad_from_a_dataset_to_a_url(store: str) -> None:
    url = "memory://export-test/h5/trials.h5ad"
    write_h5ad(open_trials(store).load(), url, variable="dff")
    with fsspec.open(url, "rb") as f, h5py.File(f, "r") as h5:
        assert h5["X"].shape == (26, REL_TIME.size)
    with pytest.raises(ValueError, match=r"cannot pick the variable for X: got 'dF', expected"):
        write_h5ad(store, "memory://export-test/h5/other.h5ad", variable="dF")


@pytest.mark.parametrize("lazy", [True, False], ids=["lazy", "loaded"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_write_h5ad_keeps_the_stored_type(store: str, dtype: Any, lazy: bool) -> None:
    """float32 windows (preprocess.dtype's default) give a float32 X, equal value for value."""
    trials = open_trials(store, chunk_memory=2**12)  # several dask chunks
    trials = trials if lazy else trials.load()
    trials["dff"] = trials["dff"].astype(dtype)
    url = f"memory://export-test/h5/{np.dtype(dtype).name}-{lazy}.h5ad"
    write_h5ad(trials, url)
    with fsspec.open(url, "rb") as f, h5py.File(f, "r") as h5:
        assert h5["X"].dtype == dtype
        np.testing.assert_array_equal(h5["X"][:], trials["dff"].values)


def test_write_h5ad_streams_x_in_blocks(tmp_path: Path) -> None:
    url = str(tmp_path / "big.zarr")
    n_rel = 3000
    for k in range(2):  # 800 trials x 3000 points: 19 MB of float64
        append_trials(item(k, 400, n_rel=n_rel), url, chunk_memory=2**18)
    x_bytes = 800 * n_rel * 8
    path = tmp_path / "big.h5ad"
    tracemalloc.start()
    try:
        write_h5ad(url, path, chunk_memory=2**20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < x_bytes / 3, f"peak {peak / 2**20:.1f} MiB for a {x_bytes / 2**20:.0f} MiB X"
    with h5py.File(path, "r") as h5:
        np.testing.assert_array_equal(h5["X"][-3:], open_trials(url).dff[-3:].values)


@pytest.fixture(scope="module")
def photometry_data() -> Any:
    """PhoPro's ``PhotometryData`` (its package import takes ~20 s: once per module)."""
    from PhoPro.core.PhotometryData import PhotometryData

    return PhotometryData


def test_phopro_reads_the_h5ad(photometry_data: Any, store: str, tmp_path: Path) -> None:
    path = str(tmp_path / "trials.h5ad")
    write_h5ad(store, path)
    data = photometry_data.read_h5ad(path)
    trials = open_trials(store)
    np.testing.assert_array_equal(data.X, trials.dff.values)
    np.testing.assert_array_equal(data.ts, trials.rel_time.values)
    assert data.n_trials == 26 and data.n_times == REL_TIME.size
    assert data.freq == pytest.approx(10.0)
    assert_h5ad_matches(data.adata, store)
    # and PhoPro's own writer accepts what it read (its downstream tools work on it)
    data.write_h5ad(str(tmp_path / "again.h5ad"))


def test_a_full_disk_leaves_the_old_exports_and_nothing_else(store: str, tmp_path: Path) -> None:
    big = str(tmp_path / "big.zarr")
    for k in range(3):
        append_trials(item(k, 400, n_rel=400), big)  # X: 1200 x 400 float64, 3.8 MB
    with small_disk(tmp_path / "disk", "1m") as disk:
        out = disk / "out"
        write_obs(store, str(out / "trials_obs.parquet"))
        write_h5ad(store, out / "trials.h5ad")
        before = {p.name: p.read_bytes() for p in out.iterdir()}

        with pytest.raises(StorageError) as caught:
            write_h5ad(big, out / "trials.h5ad")
        assert str(caught.value) == (
            f"no space left on device writing {out}/trials.h5ad; free space or choose another "
            "output.url"
        )
        many = xr.Dataset(coords={"x": ("trial", RNG.normal(size=200_000))})  # 1.6 MB
        with pytest.raises(StorageError, match=f"^no space left on device writing {out}/"):
            write_obs(many, str(out / "trials_obs.parquet"))
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing else left
        ad.read_h5ad(out / "trials.h5ad")
        pq.read_table(out / "trials_obs.parquet")
