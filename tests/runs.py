"""Comparing the outputs of two pipeline runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import xarray as xr

from neurobatch.io.trials_store import open_trials


def assert_same_results(
    out: str | Path, reference: Path, *, rerun: bool = False, **storage_options: Any
) -> None:
    """The run at ``out`` combined the same trials and items as the one at ``reference``.

    Every item of ``out`` is done, or with ``rerun`` (the last run at ``out`` was a re-run)
    done or skipped: none failed.
    """
    trials = open_trials(f"{out}/trials.zarr", storage_options=storage_options).load()
    expected = open_trials(str(reference / "trials.zarr")).load()
    # the same files, wherever they were read from
    for dataset in (trials, expected):
        names = [str(url).rsplit("/", 1)[-1] for url in dataset["source"].to_numpy()]
        dataset["source"] = ("trial", np.array(names, dtype=object))
    xr.testing.assert_identical(trials, expected)
    with fsspec.open(f"{out}/items.parquet", "rb", **storage_options) as f:
        items = pd.read_parquet(f).set_index("item_id").sort_index()
    expected = pd.read_parquet(reference / "items.parquet").set_index("item_id").sort_index()
    statuses = ("done", "skipped") if rerun else ("done",)
    assert items["status"].isin(statuses).all(), items["status"].to_dict()
    pd.testing.assert_series_equal(items["n_trials"], expected["n_trials"])


def run_sta_demo(folder: Path, client: Any) -> Path:
    """Run the STA demo's pipeline on a small white-noise movie (3 units); its output folder."""
    from neurobatch import Pipeline
    from neurobatch.config import load_config
    from neurobatch.synthetic import demo_pipeline_file, receptive_field_movie
    from neurobatch.synthetic.writers import write_movie

    movie, _ = receptive_field_movie(n_frames=3000, height=8, width=8, n_units=3, seed=2)
    (folder / "data").mkdir(parents=True)
    write_movie(movie, str(folder / "data" / "movie.zarr"))
    config = load_config(demo_pipeline_file(folder, "sta"))
    output = config.output.model_copy(update={"url": str(folder / "out"), "dashboards": None})
    Pipeline(config.model_copy(update={"output": output})).run(client=client)
    return folder / "out"


def run_filter_demo(folder: Path, client: Any) -> Path:
    """Run the filter demo's pipeline on one 8-channel SpikeGLX recording of 2 s at 30 kHz."""
    from neurobatch import Pipeline, synthetic
    from neurobatch.config import load_config

    (folder / "data").mkdir(parents=True)
    recording = synthetic.ephys_recording(n_channels=8, duration_s=2.0, fs=30_000.0, seed=1)
    synthetic.write_spikeglx(recording.recording, str(folder / "data" / "recording_001.bin"))
    config = load_config(synthetic.demo_pipeline_file(folder, "filter"))
    output = config.output.model_copy(update={"url": str(folder / "out"), "dashboards": None})
    Pipeline(config.model_copy(update={"output": output})).run(client=client)
    return folder / "out"
