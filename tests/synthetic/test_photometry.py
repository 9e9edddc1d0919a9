"""Photometry batches in PhoPro's layout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from neurobatch.synthetic import write_photometry_batch


def test_photometry_batch_written_in_processes_is_the_same(tmp_path: Path) -> None:
    kwargs: dict[str, Any] = {"n_items": 4, "duration_s": 30.0, "fs": 50.0, "seed": 2}
    serial = write_photometry_batch(tmp_path / "serial", **kwargs)
    parallel = write_photometry_batch(tmp_path / "parallel", processes=2, **kwargs)
    assert [p.name for p in parallel] == [p.name for p in serial]
    for a, b in zip(serial, parallel, strict=True):
        assert a.read_bytes() == b.read_bytes()
        assert a.with_suffix(".json").read_text() == b.with_suffix(".json").read_text()
