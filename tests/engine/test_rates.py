"""Plausible sampling rates (:mod:`neurobatch.engine.rates`): per item at ingest, per batch."""

from __future__ import annotations

import re
import statistics

import numpy as np
import pytest
import xarray as xr

from neurobatch.config.arguments import PLAUSIBLE_RATES_HZ
from neurobatch.engine.rates import check_sampling_rate, rate_outliers, recording_kind
from neurobatch.errors import InputError


def photometry(rate: float) -> xr.Dataset:
    return xr.Dataset({"signal": ("time", np.zeros(4))}, attrs={"sampling_rate": rate})


def ephys(rate: float) -> xr.Dataset:
    return xr.Dataset(
        {"traces": (("time", "channel"), np.zeros((4, 2)))}, attrs={"sampling_rate": rate}
    )


CSV = {"time_unit": "s", "downsample": None, "plausible_rate_hz": None}


# ---------------------------------------------------------------------------------------------
# One item against its kind's bounds
# ---------------------------------------------------------------------------------------------


def test_the_bounds_of_each_kind() -> None:
    assert PLAUSIBLE_RATES_HZ == {"photometry": (5.0, 1e5), "ephys": (100.0, 1e6)}
    # rigs of the field pass: Neurophotometrics, pyPhotometry, TDT, Doric; probes and LFP
    for rate in (5.0, 10.0, 20.0, 130.0, 1000.0, 1017.2526, 12_000.0, 1e5):
        check_sampling_rate(photometry(rate), source="x.csv", arguments=CSV)
    for rate in (100.0, 1000.0, 1250.0, 2500.0, 20_000.0, 30_000.0, 1e6):
        check_sampling_rate(ephys(rate), source="x.bin", arguments={})
    # just outside fails
    for rate in (4.99, 100_001.0):
        with pytest.raises(InputError, match="implausible for a photometry recording"):
            check_sampling_rate(photometry(rate), source="x.csv", arguments=CSV)
    for rate in (99.9, 1.1e6):
        with pytest.raises(InputError, match="implausible for an ephys recording"):
            check_sampling_rate(ephys(rate), source="x.bin", arguments={})


def test_a_time_column_in_milliseconds_is_named() -> None:
    # the attack: 1 kHz photometry whose time column is in ms, read as seconds: 1 Hz
    with pytest.raises(InputError) as error:
        check_sampling_rate(photometry(1.0), source="/data/r7.csv", arguments=CSV)
    assert str(error.value) == (
        "'/data/r7.csv': sampling rate 1 Hz is implausible for a photometry recording "
        "(expected 5 Hz to 100 kHz); set loader.time_unit: ms if the time column is in "
        "milliseconds, or loader.plausible_rate_hz: [low, high] if 1 Hz is right"
    )
    # microseconds: 1 kHz read as 0.001 Hz
    with pytest.raises(InputError, match=r"set loader\.time_unit: us if the time column is in "):
        check_sampling_rate(photometry(0.001), source="r.csv", arguments=CSV)
    # the other way: seconds declared as ms
    with pytest.raises(InputError, match=r"1 MHz .*set loader\.time_unit: s if the time column"):
        check_sampling_rate(photometry(1e6), source="r.csv", arguments={**CSV, "time_unit": "ms"})
    # a loader that guesses the unit: which one it took is not known here
    with pytest.raises(
        InputError,
        match=r"\); set loader\.time_unit \(now 'auto'\) to the time column's unit, or loader\.",
    ):
        check_sampling_rate(photometry(1.0), source="r.csv", arguments={"time_unit": "auto"})
    # no unit would help (and a format without a time column gets no unit hint)
    with pytest.raises(InputError) as error:
        check_sampling_rate(ephys(30.0), source="p.bin", arguments={})
    assert str(error.value) == (
        "'p.bin': sampling rate 30 Hz is implausible for an ephys recording (expected 100 Hz to "
        "1 MHz); set loader.plausible_rate_hz: [low, high] if 30 Hz is right"
    )


def test_the_rate_checked_is_the_inputs_before_downsampling() -> None:
    # 1 kHz downsampled by 250 is 4 Hz on output, but the file's time base is plausible
    check_sampling_rate(photometry(4.0), source="r.csv", arguments={**CSV, "downsample": 250})
    with pytest.raises(InputError, match=r"sampling rate 1 Hz"):
        check_sampling_rate(photometry(0.1), source="r.csv", arguments={**CSV, "downsample": 10})


def test_plausible_rate_hz_sets_other_bounds() -> None:
    circadian = {**CSV, "plausible_rate_hz": [0.01, 10.0]}
    check_sampling_rate(photometry(1.0), source="scn.csv", arguments=circadian)
    with pytest.raises(InputError, match=r"sampling rate 20 Hz .* \(expected 0\.01 Hz to 10 Hz\)"):
        check_sampling_rate(photometry(20.0), source="scn.csv", arguments=circadian)


def test_recordings_of_no_known_kind_or_without_a_rate_pass() -> None:
    movie = xr.Dataset({"frames": (("frame", "y", "x"), np.zeros((2, 1, 1)))})
    assert recording_kind(movie) is None
    check_sampling_rate(movie.assign_attrs(sampling_rate=0.001), source="m.npy", arguments={})
    check_sampling_rate(photometry(1.0).drop_attrs(), source="x.csv", arguments=CSV)
    assert recording_kind(photometry(1.0)) == "photometry"


# ---------------------------------------------------------------------------------------------
# The batch: rates orders of magnitude off the others'
# ---------------------------------------------------------------------------------------------


def brute_force(rates: dict[str, float | None], factor: float) -> set[str]:
    """The definition, item by item against every other: off by more than ``factor`` from
    more than half of the batch's valid rates."""
    valid = {k: v for k, v in rates.items() if v is not None and np.isfinite(v) and v > 0}
    flagged = set()
    for item, rate in valid.items():
        far = sum(1 for other in valid.values() if max(rate / other, other / rate) > factor)
        if 2 * far > len(valid):
            flagged.add(item)
    return flagged


def test_outliers_match_the_definition_on_random_batches() -> None:
    rng = np.random.default_rng(2026)
    for trial in range(400):
        n = int(rng.integers(0, 30))
        # rigs at a few rates, some read in the wrong unit, a few missing or broken rates
        base = rng.choice([20.0, 130.0, 1017.2526, 1000.0, 12_000.0], size=n)
        scale = rng.choice([1.0, 1.0, 1.0, 1e-3, 1e-6, 1e3], size=n)
        values: list[float | None] = list(base * scale * rng.uniform(0.98, 1.02, size=n))
        for i in rng.choice(n, size=min(n, int(rng.integers(0, 3))), replace=False):
            values[i] = [None, float("nan"), 0.0, -5.0, float("inf")][int(rng.integers(0, 5))]
        rates = {f"item-{i}": v for i, v in enumerate(values)}
        factor = float(rng.choice([10.0, 100.0, 1000.0]))
        found = rate_outliers(rates, factor=factor)
        assert set(found) == brute_force(rates, factor), (trial, rates, factor)
        assert list(found) == [k for k in rates if k in found]  # in the batch's order


def test_an_outlier_is_one_line_with_the_batchs_median() -> None:
    rates = {f"r{i}": 1000.0 + i for i in range(7)} | {"ms": 1.0, "slow-rig": 20.0}
    found = rate_outliers(rates)
    assert list(found) == ["ms"]  # 20 Hz is 50x off 1 kHz: a rig of its own, not flagged
    others = sorted([*(1000.0 + i for i in range(7))])
    assert statistics.median(others) == 1003.0
    assert found["ms"] == (
        "sampling rate 1 Hz is over 100x off the rates of 7 of the batch's 9 items (their "
        "median: 1003 Hz); set loader.time_unit: ms if its time column is in milliseconds"
    )
    # a factor of 10 flags the 20 Hz rig too, without the ms hint (20 kHz is not 1 kHz)
    strict = rate_outliers(rates, factor=10)
    assert set(strict) == {"ms", "slow-rig"}
    assert not re.search("time_unit", strict["slow-rig"])


def test_no_majority_flags_nothing() -> None:
    assert rate_outliers({}) == {}
    assert rate_outliers({"a": 1000.0}) == {}
    assert rate_outliers({"a": 1000.0, "b": 1.0}) == {}
    assert rate_outliers({"a": 1000.0, "b": 1000.0, "c": 1.0, "d": 1.0}) == {}
    assert rate_outliers({"a": 1000.0, "b": 10.0}, factor=100) == {}  # exactly 100x agrees
    with pytest.raises(ValueError, match="factor must be greater than 1, got 1"):
        rate_outliers({"a": 1.0}, factor=1)
