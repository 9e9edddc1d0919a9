"""Blocked photobleaching fits: chunked equals whole, on threads and on a real LocalCluster."""

from __future__ import annotations

from typing import Any

import dask
import dask.array as da
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from conftest import raise_if_dask_computes
from neurobatch import synthetic
from neurobatch.engine import blocked
from neurobatch.kernels import bleaching, detrend
from strategies import chunkings, split_everies

FS = 20.0
RECORDING = synthetic.photometry_recording(duration_s=150.0, fs=FS, seed=8)
N = RECORDING.sizes["time"]
TIME = RECORDING["time"].values
SIGNAL = RECORDING["signal"].values
ISOSBESTIC = RECORDING["isosbestic"].values
WINDOW = 100  # 5 s

WHOLE = bleaching.fit_bleaching(SIGNAL, TIME, window=WINDOW)
DETREND = {
    "detrend_retrend": detrend.fit_detrend(
        SIGNAL, ISOSBESTIC, TIME, method="detrend_retrend", window=WINDOW
    ),
    "detrend_fit_retrend": detrend.fit_detrend(
        SIGNAL, ISOSBESTIC, TIME, method="detrend_fit_retrend", window=WINDOW
    ),
}


def chunked(a: NDArray[Any], chunks: Any) -> da.Array:
    """``da.from_array`` with a type (dask's is untyped)."""
    return da.from_array(a, chunks=chunks)  # type: ignore[no-untyped-call,no-any-return]


@settings(max_examples=40)
@given(
    n=st.integers(min_value=2, max_value=120),
    window=st.integers(min_value=2, max_value=40),
    stride=st.one_of(st.none(), st.integers(min_value=1, max_value=50)),
    data=st.data(),
)
def test_strided_median_chunked_equals_whole(
    n: int, window: int, stride: int | None, data: st.DataObject
) -> None:
    """Exactly the kernel's medians, for tiny, uneven and single chunks, any stride."""
    window = min(window, n)
    x = np.random.default_rng(n).standard_normal(n)
    chunks = data.draw(chunkings(n, max_chunks=n))
    with raise_if_dask_computes():
        medians = blocked.strided_median(chunked(x, (chunks,)), window, stride=stride)
    expected, _ = bleaching.strided_median(x, window, stride=stride)
    np.testing.assert_array_equal(medians.compute(), expected)
    assert medians.shape == expected.shape and sum(medians.chunks[0]) == expected.size


@settings(max_examples=6)
@given(chunks=chunkings(N, max_chunks=10), split_every=split_everies())
def test_fit_bleaching_chunked_equals_whole(
    chunks: tuple[int, ...], split_every: int | None
) -> None:
    fit = blocked.fit_bleaching(
        chunked(SIGNAL, (chunks,)), TIME, window=WINDOW, split_every=split_every
    )
    assert fit.curve == WHOLE.curve  # the same medians, the same optimisation: bit for bit
    assert fit.r_squared == pytest.approx(WHOLE.r_squared, rel=1e-12)
    assert (fit.n_samples, fit.window, fit.stride) == (N, WINDOW, WINDOW // 2)
    reference = blocked.fitted_reference(fit, chunked(TIME, (chunks,)))
    np.testing.assert_array_equal(reference.compute(), WHOLE.reference(TIME))


def test_fit_bleaching_on_scheduler(scheduler: str) -> None:
    chunks = ((1, 700, 3, 1200, N - 1904),)
    fit = blocked.fit_bleaching(chunked(SIGNAL, chunks), TIME, window=WINDOW, split_every=2)
    assert fit.curve == WHOLE.curve


def assert_detrend_equal(fit: detrend.DetrendFit, whole: detrend.DetrendFit) -> None:
    assert fit.signal.curve == whole.signal.curve
    assert fit.isosbestic.curve == whole.isosbestic.curve
    assert fit.r_squared == pytest.approx(whole.r_squared, rel=1e-10)
    if whole.line is None:
        assert fit.line is None
        return
    assert fit.line is not None
    assert fit.line.slope == pytest.approx(whole.line.slope, rel=1e-10)
    assert fit.line.intercept == pytest.approx(whole.line.intercept, rel=1e-10)


@settings(max_examples=4)
@given(
    sig_chunks=chunkings(N, max_chunks=8),
    iso_chunks=chunkings(N, max_chunks=8),
    method=st.sampled_from(sorted(DETREND)),
    persist=st.booleans(),
)
def test_fit_detrend_chunked_equals_whole(
    sig_chunks: tuple[int, ...], iso_chunks: tuple[int, ...], method: str, persist: bool
) -> None:
    sig, iso = chunked(SIGNAL, (sig_chunks,)), chunked(ISOSBESTIC, (iso_chunks,))
    if persist:
        sig, iso = dask.persist(sig, iso)
    fit = blocked.fit_detrend(sig, iso, TIME, method=method, window=WINDOW)  # type: ignore[arg-type]
    whole = DETREND[method]
    assert_detrend_equal(fit, whole)
    iso_t = chunked(ISOSBESTIC, (sig_chunks,))
    reference = blocked.fitted_reference(fit, chunked(TIME, (sig_chunks,)), iso_t)
    np.testing.assert_allclose(reference.compute(), whole.reference(ISOSBESTIC, TIME), rtol=1e-10)


def test_fit_detrend_on_scheduler(scheduler: str) -> None:
    chunks = ((2, 900, 1, N - 903),)
    fit = blocked.fit_detrend(
        chunked(SIGNAL, chunks),
        chunked(ISOSBESTIC, chunks),
        TIME,
        method="detrend_fit_retrend",
        window=WINDOW,
        split_every=2,
    )
    assert_detrend_equal(fit, DETREND["detrend_fit_retrend"])


def test_blocked_errors_say_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="signal must be finite"):
        blocked.fit_bleaching(
            chunked(np.where(TIME == TIME[5], np.inf, SIGNAL), 500), TIME, window=WINDOW
        )
    with pytest.raises(ValueError, match=f"time must have the signal's {N} samples"):
        blocked.fit_bleaching(chunked(SIGNAL, 500), TIME[:-1], window=WINDOW)
    with pytest.raises(ValueError, match="a detrend_retrend reference needs the isosbestic"):
        blocked.fitted_reference(DETREND["detrend_retrend"], chunked(TIME, 500))
