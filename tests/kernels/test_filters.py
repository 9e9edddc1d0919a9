"""Butterworth design, zero-phase filtering and overlap depth against SciPy."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.signal

from neurobatch.kernels import filters

DESIGNS = [
    ("lowpass", 3.0, 1000.0, 4),
    ("highpass", 0.5, 1000.0, 2),
    ("bandpass", (300.0, 6000.0), 30000.0, 3),
    ("bandstop", (45.0, 55.0), 1000.0, 2),
]


@pytest.mark.parametrize(("kind", "cutoff", "fs", "order"), DESIGNS)
def test_butter_sos_matches_scipy_design(kind, cutoff, fs, order) -> None:
    expected = scipy.signal.butter(order, cutoff, btype=kind, fs=fs, output="sos")
    np.testing.assert_allclose(
        filters.butter_sos(kind, cutoff, fs=fs, order=order), expected, rtol=1e-12
    )


@pytest.mark.parametrize(("kind", "cutoff", "fs", "order"), DESIGNS)
def test_zero_phase_filter_matches_sosfiltfilt_odd(kind, cutoff, fs, order) -> None:
    x = np.random.default_rng(1).standard_normal((5000, 3)).cumsum(axis=0)
    sos = scipy.signal.butter(order, cutoff, btype=kind, fs=fs, output="sos")
    expected = scipy.signal.sosfiltfilt(sos, x, axis=0, padtype="odd")
    np.testing.assert_array_equal(filters.zero_phase_filter(x, sos, axis=0), expected)
    np.testing.assert_array_equal(filters.zero_phase_filter(x.T, sos, axis=1), expected.T)


def test_lowpass_keeps_the_slow_component_without_phase_shift() -> None:
    fs = 1000.0
    t = np.arange(20_000) / fs
    slow = np.sin(2 * np.pi * 0.5 * t)
    y = filters.zero_phase_filter(
        slow + 0.5 * np.sin(2 * np.pi * 60 * t), filters.butter_sos("lowpass", 3.0, fs=fs)
    )
    # zero phase: the slow sine comes through unshifted and unattenuated
    np.testing.assert_allclose(y[2000:-2000], slow[2000:-2000], atol=2e-3)


@pytest.mark.parametrize(("kind", "cutoff", "fs", "order"), DESIGNS)
@pytest.mark.parametrize("rtol", [1e-6, 1e-12])
def test_overlap_depth_is_where_forward_backward_response_decays(
    kind, cutoff, fs, order, rtol
) -> None:
    sos = filters.butter_sos(kind, cutoff, fs=fs, order=order)
    depth = filters.overlap_depth(sos, rtol=rtol)
    # independent: the response of forward-then-backward filtering to a centred impulse
    n = 4 * depth + 1
    impulse = np.zeros(n)
    impulse[n // 2] = 1.0
    forward = scipy.signal.sosfilt(sos, impulse)
    response = scipy.signal.sosfilt(sos, forward[::-1])[::-1]
    lags = np.abs(response[n // 2 :])
    assert lags[depth:].max() < rtol * lags.max()
    if depth > filters.pad_length(sos):
        assert lags[depth - 1] >= rtol * lags.max()


def test_filtering_a_block_extended_by_the_depth_matches_the_whole_array() -> None:
    sos = filters.butter_sos("highpass", 0.5, fs=1000.0, order=2)
    x = np.random.default_rng(2).standard_normal(150_000).cumsum()
    whole = filters.zero_phase_filter(x, sos)
    depth = filters.overlap_depth(sos)
    lo, hi = 60_000, 70_000
    block = filters.zero_phase_filter(x[lo - depth : hi + depth], sos)[depth:-depth]
    assert np.abs(block - whole[lo:hi]).max() <= 1e-9 * np.abs(x).max()


@pytest.mark.parametrize("splits", [(5000,), (1, 4999), (900, 0, 2100, 2000), (2500, 2500)])
@pytest.mark.parametrize("trim", [(0, 0), (3, 0), (812, 1000)])
def test_pieces_filter_exactly_as_one_call_over_the_joined_stretch(splits, trim) -> None:
    x = np.random.default_rng(3).standard_normal((5000, 3)).cumsum(axis=0)
    sos = filters.butter_sos("bandpass", (300.0, 6000.0), fs=30000.0, order=3)
    edges = np.cumsum((0, *splits))
    # each piece with a margin that its cut leaves out
    pieces = [x[max(a - 7, 0) : b + 7] for a, b in itertools.pairwise(edges)]
    cuts = [[a - max(a - 7, 0), b - max(a - 7, 0)] for a, b in itertools.pairwise(edges)]
    got = filters.zero_phase_from_pieces(sos, cuts, trim, *pieces)
    expected = scipy.signal.sosfiltfilt(sos, x, axis=0, padtype="odd")
    np.testing.assert_array_equal(got, expected[trim[0] : 5000 - trim[1]])


@pytest.mark.parametrize("reference", ["none", "median"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_raw_counts_scaled_referenced_and_cast_match_sosfiltfilt_of_microvolts(
    reference, dtype
) -> None:
    counts = (np.random.default_rng(4).standard_normal((4000, 5)).cumsum(axis=0) * 20).astype(
        np.int16
    )
    sos = filters.butter_sos("highpass", 300.0, fs=30000.0, order=3)
    uv = counts.astype(np.float64) * 0.195
    if reference == "median":
        uv -= np.median(uv, axis=1, keepdims=True)
    expected = scipy.signal.sosfiltfilt(sos, uv, axis=0, padtype="odd")
    for pieces, cuts in (
        ((counts,), [[0, 4000]]),
        ((counts[:1500], counts[1500:]), [[0, 1500], [0, 2500]]),
    ):
        got = filters.zero_phase_from_pieces(
            sos, cuts, (0, 0), *pieces, scale=0.195, common_reference=reference, dtype=dtype
        )
        assert got.dtype == dtype
        # a new C-ordered array; in float64 it may be SciPy's output as sosfiltfilt lays it out
        assert got.flags.c_contiguous or dtype == np.float64
        # scaled after filtering: rounding apart, the same; float32 rounds at about 6e-8
        rtol = 1e-7 if dtype == np.float32 else 1e-13
        assert np.abs(got - expected).max() <= rtol * np.abs(expected).max()


@pytest.mark.parametrize("raw_type", [np.int16, np.uint16, np.int32, np.int64])
@pytest.mark.parametrize("n_channels", [1, 2, 3, 8, 9, 64])
def test_median_reference_of_integers_is_bitwise_that_of_numpy_on_floats(
    raw_type, n_channels
) -> None:
    rng = np.random.default_rng(n_channels)
    info = np.iinfo(raw_type)
    lo, hi = int(info.min), int(info.max)
    counts = rng.integers(lo, hi, size=(900, n_channels), endpoint=True, dtype=raw_type)
    # the extremes, alone, paired as the two middle values, and on every channel at once
    counts[rng.random(counts.shape) < 0.05] = lo
    counts[rng.random(counts.shape) < 0.05] = hi
    counts[:40] = lo
    counts[40:80] = hi
    counts[80:120, : n_channels // 2] = lo
    counts[80:120, n_channels // 2 :] = hi
    counts[120:160] = rng.integers(-3, 3, size=(40, n_channels), endpoint=True) + hi // 2
    floats = counts.astype(np.float64)
    referenced = floats - np.median(floats, axis=1, keepdims=True)
    sos = filters.butter_sos("bandpass", (300.0, 6000.0), fs=30000.0, order=3)
    for scale in (None, 0.195, 1.0, 3.7e-3, 12.5):
        expected = filters.zero_phase_filter(referenced, sos, scale=scale)
        for x in (counts, floats):
            got = filters.zero_phase_filter(x, sos, scale=scale, common_reference="median")
            np.testing.assert_array_equal(got, expected)
        # in uneven pieces, a one-sample one among them
        cuts = [[0, 1], [0, 399], [0, 500]]
        pieces = (counts[:1], counts[1:400], counts[400:])
        got = filters.zero_phase_from_pieces(
            sos, cuts, (30, 7), *pieces, scale=scale, common_reference="median"
        )
        np.testing.assert_array_equal(got, expected[30:-7])


def test_median_reference_leaves_the_input_alone() -> None:
    x = np.random.default_rng(5).standard_normal((600, 4))
    before = x.copy()
    filters.zero_phase_filter(
        x, filters.butter_sos("lowpass", 40.0, fs=1000.0), common_reference="median"
    )
    np.testing.assert_array_equal(x, before)


def test_pad_length_is_scipys_default() -> None:
    sos = filters.butter_sos("lowpass", 3.0, fs=1000.0, order=4)
    n = filters.pad_length(sos)
    x = np.arange(n + 1, dtype=float)
    scipy.signal.sosfiltfilt(sos, x, padtype="odd")  # longest rejected length is n
    with pytest.raises(ValueError, match="greater than padlen"):
        scipy.signal.sosfiltfilt(sos, x[:n], padtype="odd")


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: filters.butter_sos("lowpass", 500.0, fs=1000.0), "Nyquist frequency 500.0 Hz"),
        (lambda: filters.butter_sos("lowpass", 0.0, fs=1000.0), "strictly between 0"),
        (lambda: filters.butter_sos("lowpass", 3.0, fs=-1.0), "fs must be a positive"),
        (lambda: filters.butter_sos("low", 3.0, fs=1000.0), "kind must be one of 'lowpass'"),
        (lambda: filters.butter_sos("lowpass", 3.0, fs=1e3, order=0), "order must be a positive"),
        (lambda: filters.butter_sos("bandpass", 3.0, fs=1000.0), r"\(low, high\) pair"),
        (lambda: filters.butter_sos("bandpass", (9.0, 3.0), fs=1e3), r"\(low, high\) pair"),
        (lambda: filters.butter_sos("highpass", (1.0, 2.0), fs=1e3), "must be one frequency"),
        (
            lambda: filters.zero_phase_filter(
                np.ones(10), filters.butter_sos("lowpass", 3.0, fs=1e3)
            ),
            "has 10 samples along the time axis; .* needs at least 16",
        ),
        (
            lambda: filters.zero_phase_filter(
                np.r_[np.ones(50), np.nan], filters.butter_sos("lowpass", 3.0, fs=1e3)
            ),
            r"x must be finite, got 1 NaN .* \(first at index 50\)",
        ),
        (
            lambda: filters.zero_phase_filter(np.ones(50), np.ones((2, 5))),
            r"shape \(n_sections, 6\)",
        ),
        (
            lambda: filters.zero_phase_from_pieces(
                filters.butter_sos("lowpass", 3.0, fs=1e3), [[0, 50]], (30, 30), np.ones(50)
            ),
            r"trim \(30, 30\) does not fit a stretch of 50 samples",
        ),
        (
            lambda: filters.zero_phase_filter(
                np.ones(50), filters.butter_sos("lowpass", 3.0, fs=1e3), common_reference="mean"
            ),
            "common_reference must be one of 'none', 'median'",
        ),
        (lambda: filters.overlap_depth(np.array([[1, 0, 0, 1, -2.5, 1.0]])), "unstable"),
        (
            lambda: filters.overlap_depth(filters.butter_sos("lowpass", 3.0, fs=1e3), rtol=0),
            r"rtol must be in \(0, 1\)",
        ),
    ],
)
def test_bad_arguments_say_what_was_wrong(call, match) -> None:
    with pytest.raises(ValueError, match=match):
        call()
