"""The filter stage's blocks: they tile the stored chunks and equal the whole-array filter."""

from __future__ import annotations

import itertools

import dask
import numpy as np
import pytest
import scipy.signal
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from neurobatch import synthetic
from neurobatch.config import EphysFilterConfig
from neurobatch.engine.stages import filter_traces
from neurobatch.engine.stages.ephys import WORK_MEMORY
from neurobatch.io.zarr import open_dataset, write_dataset
from neurobatch.kernels import filters
from strategies import chunkings

FS = 30_000.0
N = 60_000
CHANNELS = 8
BAND = (300.0, 6000.0)


@pytest.fixture(scope="module")
def recording() -> xr.Dataset:
    made: xr.Dataset = synthetic.ephys_recording(
        n_channels=CHANNELS, duration_s=N / FS, fs=FS, seed=3
    ).recording.load()
    return made


@settings(max_examples=30, deadline=None)
@given(
    raw_chunks=chunkings(N, max_chunks=8),
    chunk_memory=st.sampled_from([None, 60_000, 333_333, 2**20]),
    work_memory=st.sampled_from([200_000, 1_000_003, WORK_MEMORY]),
    reference=st.sampled_from(["none", "median"]),
)
def test_blocks_tile_the_stored_chunks_and_equal_sosfiltfilt(
    recording: xr.Dataset,
    raw_chunks: tuple[int, ...],
    chunk_memory: int | None,
    work_memory: int,
    reference: str,
) -> None:
    params = EphysFilterConfig(cutoff_hz=BAND, common_reference=reference, dtype="float64")
    out = filter_traces(
        recording.chunk({"time": raw_chunks}),
        params,
        chunk_memory=chunk_memory,
        work_memory=work_memory,
    )
    blocks = out["traces"].data.chunks[0]
    # every stored chunk is whole blocks: those of a store written as the engine writes it,
    # or, without a budget, the raw chunks
    if chunk_memory is None:
        stored = raw_chunks
    else:
        url = f"memory://filter-blocks/{chunk_memory}-{work_memory}-{reference}"
        with dask.config.set(scheduler="synchronous"):
            write_dataset(out, url, chunk_memory=chunk_memory)
        stored = open_dataset(url)["traces"].chunks[0]
    assert set(itertools.accumulate(stored)) <= set(itertools.accumulate(blocks))
    # no block longer than the work memory allows (or 16 overlap depths), none cut needlessly
    sos = filters.butter_sos("bandpass", BAND, fs=FS, order=params.order)
    depth = filters.overlap_depth(sos)
    longest = max(work_memory // (8 * CHANNELS) - 2 * depth, 16 * depth)
    assert max(blocks) <= longest
    assert len(blocks) == sum(-(-chunk // longest) for chunk in stored)

    uv = recording["traces"].to_numpy().astype(np.float64) * recording.attrs["gain_uv"]
    if reference == "median":
        uv -= np.median(uv, axis=1, keepdims=True)
    whole = scipy.signal.sosfiltfilt(
        scipy.signal.butter(3, BAND, btype="bandpass", fs=FS, output="sos"), uv, axis=0
    )
    with dask.config.set(scheduler="synchronous"):
        got = out["traces"].to_numpy()
    assert np.abs(got - whole).max() <= 1e-9 * np.abs(whole).max()
