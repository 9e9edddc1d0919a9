"""The sta stage on a real cluster equals the whole-movie kernel, however the movie is held."""

from __future__ import annotations

from pathlib import Path

import dask
import numpy as np
import pytest
from distributed import Client, futures_of

from neurobatch import synthetic
from neurobatch.config import StaConfig
from neurobatch.engine import stages
from neurobatch.io.zarr import open_dataset
from neurobatch.kernels import sta

N_LAGS = 4
HEIGHT, WIDTH = 4, 5


@pytest.mark.parametrize("persist", [False, True], ids=["from-zarr", "persisted-on-cluster"])
def test_sta_stage_equals_the_kernel(tmp_path: Path, local_client: Client, persist: bool) -> None:
    """Spikes read from Zarr are read by the caller; persisted ones come from the cluster."""
    planted = synthetic.receptive_field_movie(
        n_frames=900, height=HEIGHT, width=WIDTH, n_units=3, n_lags=N_LAGS, seed=7
    )
    frame_bytes = HEIGHT * WIDTH * 4 + 8
    synthetic.write_movie(
        planted.movie, str(tmp_path / "movie.zarr"), chunk_memory=200 * frame_bytes
    )
    movie = open_dataset(str(tmp_path / "movie.zarr"))
    assert movie["frames"].chunks[0] == (200, 200, 200, 200, 100)
    if persist:
        movie = local_client.persist(movie)
        assert futures_of(movie["spike_time"].data)
    with dask.config.set(scheduler=local_client.get):
        out = stages.spike_triggered_average(movie, StaConfig(n_lags=N_LAGS)).compute()

    expected = planted.movie.load()
    frames = expected["frames"].to_numpy()
    assert frames.dtype == np.float32
    whole = sta.spike_triggered_average(
        expected["spike_time"].to_numpy(),
        expected["unit"].to_numpy(),
        frames,
        fps=expected.attrs["fps"],
        n_lags=N_LAGS,
        onset=expected.attrs["stimulus_onset"],
        unit_ids=expected["unit_ids"].to_numpy(),
    )
    assert out["unit"].to_numpy().tolist() == whole.bins.unit_ids.tolist()
    assert out["n_spikes"].to_numpy().tolist() == whole.bins.n_used.tolist()
    # float32 products: chunked equals whole within 1e-6 of the movie's largest magnitude
    np.testing.assert_allclose(
        out["sta"].to_numpy(), whole.sta, rtol=0, atol=1e-6 * np.abs(frames).max()
    )


@pytest.mark.parametrize("spike_chunks", [1, 7, 1000], ids=["1", "7", "1000"])
def test_spikes_in_several_chunks_are_read_whole(spike_chunks: int) -> None:
    """Spikes stored in chunks of any size (one spike, uneven, one chunk) give the kernel's STA;
    the movie in chunks shorter than the window."""
    planted = synthetic.receptive_field_movie(
        n_frames=300, height=2, width=3, n_units=2, n_lags=N_LAGS, seed=5
    )
    expected = planted.movie.load()
    movie = expected.chunk(frame=3, spike=spike_chunks)
    out = stages.spike_triggered_average(movie, StaConfig(n_lags=N_LAGS)).compute(scheduler="sync")
    whole = sta.spike_triggered_average(
        expected["spike_time"].to_numpy(),
        expected["unit"].to_numpy(),
        expected["frames"].to_numpy(),
        fps=expected.attrs["fps"],
        n_lags=N_LAGS,
        onset=expected.attrs["stimulus_onset"],
        unit_ids=expected["unit_ids"].to_numpy(),
    )
    assert out["n_spikes"].to_numpy().tolist() == whole.bins.n_used.tolist()
    np.testing.assert_allclose(out["sta"].to_numpy(), whole.sta, rtol=0, atol=1e-6)
