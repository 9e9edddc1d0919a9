"""Butterworth design, zero-phase filtering and overlap depth against SciPy."""

from __future__ import annotations

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
