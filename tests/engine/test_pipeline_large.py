"""The filter and sta pipelines end to end on real clusters, against whole-array references."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import scipy.signal
import xarray as xr
from aind_data_schema.core.processing import Processing
from distributed import Client, LocalCluster

from neurobatch import synthetic
from neurobatch.engine.run import Pipeline
from neurobatch.engine.stages import stage
from neurobatch.errors import ConfigError

FS = 30_000.0


@pytest.fixture(scope="module")
def ephys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, xr.Dataset]:
    folder = tmp_path_factory.mktemp("ephys")
    recording = synthetic.ephys_recording(n_channels=12, duration_s=4.0, fs=FS, seed=7).recording
    synthetic.write_spikeglx(recording, str(folder / "probe.bin"))
    return folder, recording.load()


def _filter_config(data: Path, out: Path, **filter_settings: Any) -> dict[str, Any]:
    return {
        "name": "filter-test",
        "kind": "filter",
        "input": {"url": str(data), "pattern": "*.bin"},
        "loader": {"format": "spikeglx"},
        "filter": {"cutoff_hz": [300.0, 6000.0], "order": 3, "dtype": "float64"} | filter_settings,
        "output": {"url": str(out)},
    }


@pytest.mark.parametrize("chunk_memory", [96_000, 1_000_003, 64 * 2**20])
@pytest.mark.parametrize("reference", ["none", "median"])
def test_filter_equals_whole_array_sosfiltfilt(
    ephys: tuple[Path, xr.Dataset],
    tmp_path: Path,
    local_client: Client,
    chunk_memory: int,
    reference: str,
) -> None:
    data, recording = ephys
    config = _filter_config(data, tmp_path / "out", common_reference=reference)
    config["engine"] = {"chunk_memory": chunk_memory}
    summary = Pipeline(config).run(client=local_client)
    assert summary.n_done == 1
    filtered = xr.open_zarr(tmp_path / "out" / "items" / "probe" / "filter")
    assert filtered["traces"].dtype == np.float64
    assert filtered.attrs["units"] == "uV"
    # the whole-array reference, written out with SciPy
    uv = recording["traces"].to_numpy().astype(np.float64) * recording.attrs["gain_uv"]
    if reference == "median":
        uv = uv - np.median(uv, axis=1, keepdims=True)
    sos = scipy.signal.butter(3, [300.0, 6000.0], btype="bandpass", fs=FS, output="sos")
    whole = scipy.signal.sosfiltfilt(sos, uv, axis=0)
    got = filtered["traces"].to_numpy()
    assert np.abs(got - whole).max() <= 1e-9 * np.abs(whole).max()
    np.testing.assert_array_equal(filtered["time"].to_numpy(), recording["time"].to_numpy())


def test_filter_stays_within_worker_memory_on_a_recording_larger_than_it(
    tmp_path: Path,
) -> None:
    """One worker of 600 MiB filters a 634 MB recording: out of core, under its limit."""
    data = tmp_path / "data"
    recording = synthetic.ephys_recording(n_channels=32, duration_s=330.0, fs=FS, seed=3)
    synthetic.write_spikeglx(recording.recording, str(data / "long.bin"))
    limit = 600 * 2**20
    assert (data / "long.bin").stat().st_size > limit
    config = _filter_config(data, tmp_path / "out")
    config["filter"]["dtype"] = "float32"
    config["engine"] = {"chunk_memory": 8 * 2**20}
    with (
        LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            memory_limit=limit,
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        summary = Pipeline(config).run(client=client)
    assert summary.n_done == 1, summary
    record = Processing.model_validate_json(
        (tmp_path / "out" / "items" / "long" / "processing.json").read_text()
    )
    assert record.process_names == ["filter"]  # no copy of the raw recording
    for process in record.data_processes:
        usage = process.resources
        assert usage is not None and usage.ram_usage
        # the worker's memory as a percent of its limit, sampled at each heartbeat
        assert max(u.usage for u in usage.ram_usage) < 100, process.name
    filtered = xr.open_zarr(tmp_path / "out" / "items" / "long" / "filter")
    assert filtered["traces"].shape == recording.recording["traces"].shape
    # a stretch in the middle against SciPy on a wider stretch around it (float32 storage)
    sos = scipy.signal.butter(3, [300.0, 6000.0], btype="bandpass", fs=FS, output="sos")
    wide = recording.recording["traces"][4_000_000:4_900_000].to_numpy().astype(np.float64)
    reference = scipy.signal.sosfiltfilt(sos, wide * recording.recording.attrs["gain_uv"], axis=0)
    got = filtered["traces"][4_300_000:4_600_000].to_numpy()
    middle = reference[300_000:600_000]
    assert np.abs(got - middle).max() <= 1e-5 * np.abs(middle).max()


def _whole_array_filter(raw: np.ndarray, gain_uv: float, *, reference: str) -> np.ndarray:
    """The filter pipeline's result written out with SciPy on the whole array (float64 µV)."""
    uv = raw.astype(np.float64) * gain_uv
    if reference == "median":
        uv = uv - np.median(uv, axis=1, keepdims=True)
    sos = scipy.signal.butter(3, [300.0, 6000.0], btype="bandpass", fs=FS, output="sos")
    return np.asarray(scipy.signal.sosfiltfilt(sos, uv, axis=0))


@pytest.mark.parametrize("chunk_memory", [96_000, 1_000_003])
def test_filter_reads_the_raw_file_itself_and_equals_the_filter_of_a_copy(
    ephys: tuple[Path, xr.Dataset], tmp_path: Path, local_client: Client, chunk_memory: int
) -> None:
    """By default no raw copy is written; ``copy_raw: true`` writes it, with the same result."""
    data, recording = ephys
    outputs = {}
    for copy_raw in (False, True):
        out = tmp_path / f"copy-{copy_raw}"
        config = _filter_config(data, out, common_reference="median", copy_raw=copy_raw)
        config["engine"] = {"chunk_memory": chunk_memory}
        summary = Pipeline(config).run(client=local_client)
        assert summary.n_done == 1, summary
        # the items table has the rate either way (from ingest, or from the filter's read)
        assert summary.items["sampling_rate"].tolist() == [recording.attrs["sampling_rate"]]
        item = out / "items" / "probe"
        assert (item / "ingest").exists() is copy_raw
        record = Processing.model_validate_json((item / "processing.json").read_text())
        assert record.process_names == (["ingest", "filter"] if copy_raw else ["filter"])
        outputs[copy_raw] = xr.open_zarr(item / "filter").load()
    # the copy holds the raw samples as the file does
    copied = xr.open_zarr(tmp_path / "copy-True" / "items" / "probe" / "ingest")
    np.testing.assert_array_equal(copied["traces"].values, recording["traces"].values)
    direct, from_copy = outputs[False], outputs[True]
    np.testing.assert_array_equal(direct["traces"].values, from_copy["traces"].values)
    np.testing.assert_array_equal(direct["time"].values, from_copy["time"].values)
    np.testing.assert_array_equal(direct["channel"].values, from_copy["channel"].values)
    assert json.loads(direct.attrs["filter"]) == json.loads(from_copy.attrs["filter"])
    assert "copy_raw" not in json.loads(direct.attrs["filter"])
    whole = _whole_array_filter(
        recording["traces"].values, recording.attrs["gain_uv"], reference="median"
    )
    assert np.abs(direct["traces"].values - whole).max() <= 1e-9 * np.abs(whole).max()


def test_filter_without_a_copy_skips_when_unchanged_and_redoes_on_a_meta_or_input_edit(
    ephys: tuple[Path, xr.Dataset], tmp_path: Path, local_client: Client
) -> None:
    """The filter's key holds the input's fingerprint and the ``.meta``'s, as ingest's does."""
    source, recording = ephys
    data = tmp_path / "data"
    data.mkdir()
    for name in ("probe.bin", "probe.meta"):
        shutil.copy2(source / name, data / name)
    out = tmp_path / "out"
    config = _filter_config(data, out)
    gain = recording.attrs["gain_uv"]
    raw = recording["traces"].values

    def run() -> tuple[pd.DataFrame, np.ndarray]:
        summary = Pipeline(config).run(client=local_client)
        assert summary.n_failed == 0, summary
        filtered = xr.open_zarr(out / "items" / "probe" / "filter")["traces"].values
        return summary.items.set_index("item_id"), filtered

    def touch(path: Path) -> None:  # a later mtime, whatever the file system's resolution
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**10))

    items, first = run()
    assert items.loc["probe", "stages_run"] == "filter"
    np.testing.assert_allclose(first, _whole_array_filter(raw, gain, reference="none"), atol=1e-9)
    items, again = run()
    assert items.loc["probe", "status"] == "skipped"
    np.testing.assert_array_equal(again, first)

    # the .meta halves the gain: the filter is redone, and its traces are halved
    meta = data / "probe.meta"
    text = meta.read_text()
    assert "imAiRangeMax=0.6\n" in text
    meta.write_text(text.replace("imAiRangeMax=0.6\n", "imAiRangeMax=0.3\n"))
    touch(meta)
    items, halved = run()
    assert items.loc["probe", "stages_run"] == "filter"
    np.testing.assert_allclose(halved, first / 2, rtol=1e-12, atol=1e-12)

    # the samples negated in the .bin (same size): redone, negated
    (data / "probe.bin").write_bytes((-raw).astype("<i2").tobytes())
    touch(data / "probe.bin")
    items, negated = run()
    assert items.loc["probe", "stages_run"] == "filter"
    np.testing.assert_array_equal(negated, -halved)
    items, _ = run()
    assert items.loc["probe", "status"] == "skipped"


def test_filter_without_a_copy_draws_its_figure_and_builds_the_experiment_id(
    ephys: tuple[Path, xr.Dataset], tmp_path: Path, local_client: Client
) -> None:
    """The raw panel of the figure is read from the input; ``id_builder`` sees the input."""
    data, _ = ephys
    out = tmp_path / "out"
    config = _filter_config(data, out, snippet_s=(0.5, 0.6))
    config["output"]["dashboards"] = "png"

    def experiment(recording: xr.Dataset) -> str:
        return f"probe-{recording.sizes['channel']}ch"

    for status in ("done", "skipped"):
        summary = Pipeline(config).run(client=local_client, hooks={"id_builder": experiment})
        assert summary.items["status"].tolist() == [status], summary
        assert summary.items["experiment_id"].tolist() == ["probe-12ch"]
    assert not (out / "items" / "probe" / "ingest").exists()
    figure = out / "dashboards" / "probe.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_stage_that_needs_the_raw_copy_asks_for_copy_raw(
    ephys: tuple[Path, xr.Dataset], tmp_path: Path
) -> None:
    data, _ = ephys
    spikes = stage(lambda ingest: None, name="spikes", needs=["ingest"])
    config = _filter_config(data, tmp_path / "out")
    with pytest.raises(
        ConfigError,
        match=r"stage 'spikes' needs 'ingest', which does not run before it; expected one of "
        r"filter; a filter pipeline stores the raw recording as 'ingest' only with "
        r"filter.copy_raw: true",
    ):
        Pipeline(config, stages=[spikes])
    copied = Pipeline(_filter_config(data, tmp_path / "out", copy_raw=True), stages=[spikes])
    assert [s.name for s in copied.stages] == ["ingest", "filter", "spikes"]


def _loop_sta(
    frames: np.ndarray,
    times: np.ndarray,
    units: np.ndarray,
    *,
    fps: float,
    onset: float,
    n_lags: int,
) -> tuple[dict[Any, np.ndarray], dict[Any, int], int]:
    """The per-spike Python loop of the retinal-ganglion pipeline, in float64."""
    sums: dict[Any, np.ndarray] = {}
    counts: dict[Any, int] = {}
    excluded = 0
    for t, unit in zip(times, units, strict=True):
        frame = math.floor((t - onset) * fps)
        if frame < n_lags - 1 or frame >= frames.shape[0]:
            excluded += 1
            continue
        window = np.stack([frames[frame - k] for k in range(n_lags)]).astype(np.float64)
        sums[unit] = sums.get(unit, 0) + window
        counts[unit] = counts.get(unit, 0) + 1
    return {u: sums[u] / counts[u] for u in sums}, counts, excluded


def test_sta_pipeline_equals_the_spike_loop_and_recovers_planted_fields(
    tmp_path: Path, local_client: Client
) -> None:
    n_lags = 6
    planted = synthetic.receptive_field_movie(
        n_frames=6_000,
        height=8,
        width=8,
        n_units=5,
        fps=60.0,
        n_lags=n_lags,
        seed=11,
        n_silent=1,
        outside_s=1.5,
        chunk_frames=700,
    )
    data = tmp_path / "data"
    synthetic.write_movie(planted.movie, str(data / "retina.zarr"), chunk_memory=100_000)
    config = {
        "name": "sta-test",
        "kind": "sta",
        "input": {"url": str(data), "pattern": "*.zarr", "target": "folder"},
        "loader": {"format": "zarr"},
        "sta": {"n_lags": n_lags, "delay_frames": 3},
        "output": {"url": str(tmp_path / "out"), "dashboards": "png"},
    }
    summary = Pipeline(config).run(client=local_client)
    assert summary.n_done == 1, summary
    result = xr.open_zarr(tmp_path / "out" / "items" / "retina" / "sta").load()
    movie = planted.movie.load()
    expected, counts, excluded = _loop_sta(
        movie["frames"].to_numpy(),
        movie["spike_time"].to_numpy(),
        movie["unit"].to_numpy(),
        fps=60.0,
        onset=movie.attrs["stimulus_onset"],
        n_lags=n_lags,
    )
    units = result["unit"].to_numpy().tolist()
    assert units == movie["unit_ids"].to_numpy().tolist()
    # a float32 movie is multiplied in float32: within 1e-6 of its largest magnitude
    tolerance = 1e-6 * float(np.abs(movie["frames"]).max())
    for i, unit in enumerate(units):
        if unit in expected:
            np.testing.assert_allclose(
                result["sta"][i].to_numpy(), expected[unit], rtol=0, atol=tolerance
            )
            assert int(result["n_spikes"][i]) == counts[unit]
        else:  # the silent unit: NaN, and a warning in its log
            assert np.isnan(result["sta"][i]).all()
    assert int(result[["n_before", "n_after", "n_too_early"]].to_array().sum()) == excluded
    assert excluded > 0  # spikes before and after the movie were planted
    # the collapsed STRF: the mean of frames N-2 .. N
    np.testing.assert_allclose(result["strf"], result["sta"].isel(lag=slice(0, 3)).mean("lag"))
    # the planted receptive fields come back
    truth = planted.receptive_fields.to_numpy()
    for i, unit in enumerate(units):
        if unit in expected:
            r = np.corrcoef(result["sta"][i].to_numpy().ravel(), truth[i].ravel())[0, 1]
            assert r >= 0.9, (unit, r)
    log = (tmp_path / "out" / "logs" / "retina.log").read_text()
    assert "have no usable spikes, so their STA is NaN" in log
    items = pd.read_parquet(tmp_path / "out" / "items.parquet")
    details = json.loads(items["details"].iloc[0])
    assert details["n_units"] == 5
    for figure in ("retina.sta.png", "retina.strf.png"):
        assert (tmp_path / "out" / "dashboards" / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = Processing.model_validate_json((tmp_path / "out" / "processing.json").read_text())
    assert record.process_names == ["ingest", "sta"]
    assert record.dependency_graph == {"ingest": [], "sta": ["ingest"]}
