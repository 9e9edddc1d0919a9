"""Blocked zero-phase filtering and normalisation equal the whole-array kernels."""

from __future__ import annotations

import logging

import dask.array as da
import numpy as np
import pytest
import scipy.signal
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


def test_small_chunks_are_filtered_in_place_one_task_each(caplog) -> None:
    sos = DESIGNS["bandpass"]
    x = da.from_array(SIGNAL[:, 0], chunks=50)
    with caplog.at_level(logging.DEBUG, logger="neurobatch.engine.blocked"):
        y = blocked.zero_phase_filter(x, sos)
    assert "60 output blocks from 60 input chunks" in caplog.text
    assert y.chunks == x.chunks
    # one layer over the input's: no merge, no rechunk back
    assert len(y.dask.layers) == len(x.dask.layers) + 1
    assert_filter_close(y.compute(scheduler="sync"), filters.zero_phase_filter(SIGNAL[:, 0], sos))


@given(
    in_chunks=chunkings(N),
    out_chunks=chunkings(N),
    scale=st.sampled_from([None, 0.195, -2.5]),
    reference=st.sampled_from(["none", "median"]),
)
def test_raw_integers_to_scaled_float32_in_other_chunks_equals_whole(
    scheduler, in_chunks, out_chunks, scale, reference
) -> None:
    """int16 counts, scaled and referenced, filtered into other chunks: one task per block."""
    sos = DESIGNS["bandpass"]
    raw = (SIGNAL * 50).astype(np.int16)
    x = da.from_array(raw, chunks=(in_chunks, 2))
    with raise_if_dask_computes():
        y = blocked.zero_phase_filter(
            x, sos, scale=scale, common_reference=reference, dtype=np.float32, chunks=out_chunks
        )
    assert y.chunks == (out_chunks, (3,) if reference == "median" else (2, 1))
    assert y.dtype == np.float32
    uv = raw.astype(np.float64) * (1.0 if scale is None else scale)
    if reference == "median":
        uv -= np.median(uv, axis=1, keepdims=True)
    whole = scipy.signal.sosfiltfilt(sos, uv, axis=0, padtype="odd")
    got = y.compute()
    assert got.dtype == np.float32 and got.flags.c_contiguous
    # float32 rounding of the result: about 6e-8 of its scale
    assert np.abs(got - whole).max() <= 1e-6 * np.abs(whole).max()
    exact = blocked.zero_phase_filter(
        x, sos, scale=scale, common_reference=reference, chunks=out_chunks
    ).compute()
    assert_filter_close(exact, whole)


def test_output_chunks_by_length_and_bad_chunks_say_what_was_wrong() -> None:
    x = da.from_array(SIGNAL[:, 0], chunks=700)
    y = blocked.zero_phase_filter(x, DESIGNS["lowpass"], chunks=1000)
    assert y.chunks == ((1000, 1000, 1000),)
    with pytest.raises(ValueError, match="add up to the 3000 samples along axis 0"):
        blocked.zero_phase_filter(x, DESIGNS["lowpass"], chunks=(1000, 1000))
    with pytest.raises(ValueError, match="positive length or a tuple of lengths, got 0"):
        blocked.zero_phase_filter(x, DESIGNS["lowpass"], chunks=0)


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
