"""The ``loader`` section (:mod:`neurobatch.config.loaders`)."""

from __future__ import annotations

import sys

import pytest

from neurobatch.config import (
    validate_config,
)
from neurobatch.errors import ConfigError
from pipeline_files import minimal


def test_loader_list_is_validated_item_by_item() -> None:
    loader = [
        {"format": "photometry-csv", "event_cols": ["cue"], "label": "a"},
        {"format": "photometry-csv", "event_colz": ["cue"], "label": "b"},
    ]
    with pytest.raises(
        ConfigError,
        match=r"<config>: loader\[1\]\.event_colz: unknown argument of "
        r"loader format 'photometry-csv'; did you mean 'event_cols'\?",
    ):
        validate_config(minimal(loader=loader))
    loader[1] = {"format": "photometry-csv", "event_cols": ["other"], "label": "b"}
    trials = {"align_to": "cue", "bounds_s": [-1, 1]}
    with pytest.raises(
        ConfigError,
        match=r"trials\.align_to: unknown event 'cue' \(loader\[1\] "
        r"provides 'other'\)",
    ):
        validate_config(minimal(loader=loader, trials=trials))
    loader[1] = {"format": "photometry-csv", "event_cols": ["cue"], "label": "a"}
    with pytest.raises(
        ConfigError, match=r"<config>: loader\[1\]\.label: 'a' is also loader\[0\]'s label"
    ):
        validate_config(minimal(loader=loader, trials=trials))
    loader[1] = {"format": "photometry-csv", "event_cols": ["cue"], "label": "b"}
    config = validate_config(minimal(loader=loader, trials=trials))
    assert isinstance(config.loader, list)
    assert [m.label for m in config.loader] == ["a", "b"]  # type: ignore[attr-defined]


def test_loader_resolver_reference() -> None:
    config = validate_config(
        minimal(loader="mylab.loaders:for_input", trials={"align_to": "any", "bounds_s": [-1, 1]})
    )
    # a resolver is not imported now, and its events are checked at discovery
    assert config.loader == "mylab.loaders:for_input"
    assert "mylab" not in sys.modules
    with pytest.raises(ConfigError, match=r"loader: expected 'module:function' or "):
        validate_config(minimal(loader="photometry-csv"))
    with pytest.raises(
        ConfigError, match=r"loader: expected a mapping with a 'format' key, a list"
    ):
        validate_config(minimal(loader=3))
    with pytest.raises(
        ConfigError, match=r"loader\[0\]: expected a mapping with a 'format' key, got 'x'"
    ):
        validate_config(minimal(loader=["x"]))


def test_time_unit_and_plausible_rates_are_loader_arguments() -> None:
    loader = {"format": "photometry-csv", "time_unit": "ms", "plausible_rate_hz": [0.5, 20]}
    config = validate_config(minimal(loader=loader))
    assert config.loader.time_unit == "ms"  # type: ignore[union-attr]
    assert config.loader.plausible_rate_hz == (0.5, 20.0)  # type: ignore[union-attr]
    defaults = validate_config(minimal()).loader
    assert defaults.time_unit == "s" and defaults.plausible_rate_hz is None  # type: ignore[union-attr]
    with pytest.raises(
        ConfigError,
        match=r"^<config>: loader\.time_unit: got 'min'; expected 's', 'ms', 'us' or 'ns'$",
    ):
        validate_config(minimal(loader={"format": "photometry-csv", "time_unit": "min"}))
    for bounds in ([20, 5], [0, 5], [1, float("inf")]):
        with pytest.raises(
            ConfigError,
            match=r"loader\.plausible_rate_hz: expected \[low, high\] in Hz with 0 < low < high",
        ):
            validate_config(
                minimal(loader={"format": "photometry-csv", "plausible_rate_hz": bounds})
            )
    # every format takes plausible_rate_hz; only the column formats have a time column
    spikeglx = validate_config(
        minimal(
            kind="filter",
            filter={},
            loader={"format": "spikeglx", "plausible_rate_hz": [1000, 50000]},
        )
    )
    assert spikeglx.loader.plausible_rate_hz == (1000.0, 50000.0)  # type: ignore[union-attr]
    with pytest.raises(
        ConfigError, match=r"loader\.time_unit: unknown argument of loader format 'spikeglx'"
    ):
        validate_config(
            minimal(kind="filter", filter={}, loader={"format": "spikeglx", "time_unit": "ms"})
        )
