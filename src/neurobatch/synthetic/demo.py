"""The pipeline files of ``neurobatch demo`` (:data:`DEMO_PIPELINES`), and writing one."""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "DEMO_FILTER_PIPELINE",
    "DEMO_PIPELINE",
    "DEMO_PIPELINES",
    "DEMO_STA_PIPELINE",
    "demo_pipeline_file",
]

DEMO_PIPELINE = """\
# The pipeline of `neurobatch demo`: PhoPro's defaults for a lever task.
name: neurobatch-demo
input:
  url: data                      # relative to this file; any fsspec URL works (s3://...)
  pattern: "experiment_*.csv"
loader:
  format: photometry-csv
  time_col: time
  signal_col: signal
  isosbestic_col: isosbestic
  event_cols: [trial_cue, lever1, lever2, shock]
  annotation: "{stem}.json"      # sidecar metadata beside each CSV
preprocess:
  filter: {cutoff_hz: 3.0, order: 4}
  fit: {method: irls}            # robust Tukey biweight, as PhoPro's default
  correction: dff
  normalization: none
trials:
  align_to: trial_cue
  center_on: [lever1, lever2]
  bounds_s: [-8, 8]
  tolerances_s: {lever1: [2, 4], lever2: [2, 4], shock: null}
  normalization: none
  window_alignment: nearest
passdown_metadata: [source, subject, sex, age, session]
output:
  url: output
  formats: [zarr, parquet, h5ad]
  dashboards: png
cluster: {kind: auto, n_workers: 2, threads_per_worker: 1, memory_limit: 2GiB}
"""


DEMO_FILTER_PIPELINE = """\
# The pipeline of `neurobatch demo --kind filter`: spike-band filtering of raw recordings.
name: neurobatch-demo-filter
kind: filter
input:
  url: data                      # relative to this file; any fsspec URL works (s3://...)
  pattern: "*.bin"
loader:
  format: spikeglx               # the .meta beside each .bin gives channels, rate and gain
filter:
  type: bandpass
  cutoff_hz: [300, 6000]
  order: 3
  common_reference: median       # removes what all channels share (line noise, artefacts)
  dtype: float32
output:
  url: output
  dashboards: png                # raw versus filtered traces
engine:
  chunk_memory: 16777216         # 16 MiB of samples per task
"""

DEMO_STA_PIPELINE = """\
# The pipeline of `neurobatch demo --kind sta`: receptive fields from a white-noise movie.
name: neurobatch-demo-sta
kind: sta
input:
  url: data                      # relative to this file; any fsspec URL works (s3://...)
  pattern: "*.zarr"
  target: folder                 # a Zarr store is a folder
loader:
  format: zarr                   # frames(frame, y, x), spike_time(spike), unit(spike)
sta:
  n_lags: 8                      # frames before each spike's frame
  delay_frames: 5                # the collapsed STRF: the mean of frames N-4 .. N
output:
  url: output
  dashboards: png                # per-unit STA images per lag and the STRFs
"""

#: Each demo's pipeline file.
DEMO_PIPELINES = {
    "photometry": DEMO_PIPELINE,
    "filter": DEMO_FILTER_PIPELINE,
    "sta": DEMO_STA_PIPELINE,
}


def demo_pipeline_file(folder: str | Path, kind: str = "photometry") -> Path:
    """Write a demo's pipeline file (``pipeline.yaml``) for the inputs in ``folder/data``.

    Parameters
    ----------
    folder : str or pathlib.Path
        The demo folder: its inputs are in its ``data`` folder (:func:`write_photometry_batch`,
        :func:`write_spikeglx` or :func:`write_movie`); the outputs go to ``output``.
    kind : {"photometry", "filter", "sta"}, default "photometry"
        Which pipeline.

    Returns
    -------
    pathlib.Path
        The pipeline file.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     demo_pipeline_file(tmp, "sta").read_text().splitlines()[1]
    'name: neurobatch-demo-sta'
    """
    path = Path(folder) / "pipeline.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(DEMO_PIPELINES[kind])
    return path
