"""Example pipeline files and small builders shared by the tests of :mod:`neurobatch.config`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

EXAMPLE = """\
name: lever-task                       # required, str
experimenters: [Jane Doe]              # optional list[str]
input:
  url: ./data                          # relative to the pipeline file
  pattern: "experiment_*.csv"          # glob relative to url; None = every entry
  recursive: false
  target: file                         # file | folder
  storage_options: {}                  # passed to fsspec
loader:
  format: photometry-csv
  time_col: time
  signal_col: signal
  isosbestic_col: isosbestic           # null = single-channel
  event_cols: [trial_cue, lever1, lever2, shock]
  annotation: "{stem}.json"            # sidecar template relative to the input's folder
  label: null                          # optional suffix for the item id
preprocess:
  filter: {cutoff_hz: 3.0, order: 4}   # null = no filter
  fit: {method: irls, intercept: true, c: 3.0, maxiter: 1000}   # or the shorthand `fit: ols`
  correction: dff                      # dff | df | none
  normalization: none                  # none | zscore | nullz
trials:                                # optional section: absent = no trial extraction
  align_to: trial_cue                  # str or list[str]
  bounds_s: [-8, 8]
  center_on: [lever1, lever2]          # str or list, default []
  baseline_bounds_s: null
  tolerances_s: {lever1: [2, 4], shock: null}
  normalization: none                  # none | zscore | zero | mad | amp
  check_overlap: true
  all_events: true
  window_alignment: nearest            # nearest | interp
  invalid_window_policy: drop          # drop | error
  event_conflict: first                # first | last | all | mean
passdown_metadata: [source]
hooks: {id_builder: null, post_load: null, post_preprocess: null, post_trials: null}
output:
  url: ./out                           # relative to the pipeline file
  formats: [zarr, parquet]             # subset of zarr | parquet | csv | h5ad
  dashboards: null                     # null | svg | png
  storage_options: {}
cluster: {kind: local, n_workers: null, threads_per_worker: 1, memory_limit: 2GiB,
          dashboard_address: "127.0.0.1:0"}
engine: {max_in_flight: null, chunk_memory: 64MiB}
"""

EXAMPLE_TOML = """\
name = "lever-task"
passdown_metadata = ["source"]

[input]
url = "data"
pattern = "experiment_*.csv"

[loader]
format = "photometry-csv"
event_cols = ["trial_cue", "lever1", "lever2", "shock"]

[preprocess]
filter = {cutoff_hz = 3.0, order = 4}
fit = "ols"

[trials]
align_to = "trial_cue"
bounds_s = [-8, 8]
center_on = ["lever1", "lever2"]
tolerances_s = {lever1 = [2, 4]}

[output]
url = "out"

[cluster]
memory_limit = "1GiB"
"""


def write(tmp_path: Path, text: str, name: str = "pipeline.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def edited(tmp_path: Path, old: str, new: str, *, base: str = EXAMPLE, name: str = "") -> Path:
    """The example with one edit, written to a file."""
    assert old in base, old
    suffix = ".toml" if base is EXAMPLE_TOML else ".yaml"
    return write(tmp_path, base.replace(old, new, 1), name or f"pipeline{suffix}")


def minimal(**sections: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "demo",
        "input": {"url": "data"},
        "loader": {"format": "photometry-csv", "event_cols": ["cue", "lever"]},
        "output": {"url": "out"},
    }
    data.update(sections)
    return data
