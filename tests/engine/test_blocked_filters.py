"""Blocked zero-phase filtering and normalisation equal the whole-array kernels."""

from __future__ import annotations

import logging

import dask
import dask.array as da
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import raise_if_dask_computes
from neurobatch.engine import blocked
from neurobatch.kernels import correction, filters
from strategies import chunkings

# Tolerance of a zero-phase overlap filter (DESIGN.md): the overlap depth is where the
# forward-backward impulse response has decayed below rtol=1e-12 of its peak, so block
# edges perturb the kept samples by about 1e-12 of the signal's scale; we require 1e-9.
FILTER_RTOL = 1e-9
N = 3000
SIGNAL = np.random.default_rng(7).standard_normal((N, 3)).cumsum(axis=0)
DESIGNS = {
    "bandpass": filters.butter_sos("bandpass", (20.0, 200.0), fs=1000.0, order=2),
    "lowpass": filters.butter_sos("lowpass", 40.0, fs=1000.0, order=4),
    "highpass": filters.butter_sos("highpass", 10.0, fs=1000.0, order=3),
}


def assert_filter_close(actual: np.ndarray, whole: np.ndarray) -> None:
    assert np.abs(actual - whole).max() <= FILTER_RTOL * np.abs(whole).max()


@pytest.mark.parametrize("design", sorted(DESIGNS))
@given(chunks=chunkings(N))
def test_chunked_filter_equals_whole(scheduler, design, chunks) -> None:
    sos = DESIGNS[design]
    x = da.from_array(SIGNAL[:, 0], chunks=(chunks,))
    with raise_if_dask_computes():
        y = blocked.zero_phase_filter(x, sos)
    assert y.chunks == x.chunks
    assert y.dtype == np.float64
    assert_filter_close(y.compute(), filters.zero_phase_filter(SIGNAL[:, 0], sos))


@given(time_chunks=chunkings(N), channel_chunks=chunkings(3))
def test_chunked_filter_of_many_channels(scheduler, time_chunks, channel_chunks) -> None:
    sos = DESIGNS["bandpass"]
    x = da.from_array(SIGNAL, chunks=(time_chunks, channel_chunks))
    y = blocked.zero_phase_filter(x, sos, axis=0)
    assert y.chunks == x.chunks
    assert_filter_close(y.compute(), filters.zero_phase_filter(SIGNAL, sos, axis=0))
    # time on the last axis, addressed with a negative axis
    y_t = blocked.zero_phase_filter(x.T, sos, axis=-1)
    assert_filter_close(y_t.compute(), filters.zero_phase_filter(SIGNAL.T, sos, axis=1))


def test_filter_with_a_depth_longer_than_the_array_is_one_block() -> None:
    sos = filters.butter_sos("lowpass", 3.0, fs=1000.0)  # depth 3728 > N
    x = da.from_array(SIGNAL[:, 1], chunks=100)
    y = blocked.zero_phase_filter(x, sos)
    assert y.chunks == x.chunks
    np.testing.assert_allclose(
        y.compute(scheduler="sync"), filters.zero_phase_filter(SIGNAL[:, 1], sos), rtol=1e-14
    )


def test_small_chunks_are_merged_explicitly_and_logged(caplog) -> None:
    sos = DESIGNS["bandpass"]
    x = da.from_array(SIGNAL[:, 0], chunks=50)
    with caplog.at_level(logging.DEBUG, logger="neurobatch.engine.blocked"):
        y = blocked.zero_phase_filter(x, sos)
    assert "merging 60 chunks along axis 0" in caplog.text
    assert y.chunks == x.chunks
    with dask.config.set({"array.rechunk.method": "tasks"}):
        assert_filter_close(y.compute(scheduler="sync"), filters.zero_phase_filter(x, sos))


def test_filter_of_a_too_short_signal_says_so() -> None:
    with pytest.raises(ValueError, match="has 12 samples along the time axis"):
        blocked.zero_phase_filter(da.ones(12, chunks=5), DESIGNS["lowpass"])


@pytest.mark.parametrize("method", ["zscore", "nullz", "none"])
@given(chunks=chunkings(N))
def test_chunked_normalisation_equals_whole(scheduler, method, chunks) -> None:
    x = da.from_array(SIGNAL[:, 2], chunks=(chunks,))
    with raise_if_dask_computes():
        y = blocked.normalize(x, method=method)
    assert y.chunks == x.chunks
    np.testing.assert_allclose(
        y.compute(), correction.normalize(SIGNAL[:, 2], method=method), rtol=1e-12, atol=1e-12
    )


@given(st.sampled_from(["zscore", "nullz"]))
def test_normalising_a_constant_signal_says_so(method) -> None:
    with pytest.raises(ValueError, match="constant signal"):
        blocked.normalize(da.ones(10, chunks=3), method=method).compute(scheduler="sync")
