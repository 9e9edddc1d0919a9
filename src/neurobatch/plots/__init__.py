"""Per-item dashboards of a photometry recording, cheap enough to draw for every item.

- :func:`dashboard`: one figure per item (filtered channels with the fitted reference, the
  processed variable with event markers, a trial heatmap, mean ± SEM per trial type),
  written as SVG or PNG to any fsspec URL; :func:`trial_labels` gives the trial types.
- :func:`envelope`: the min/max envelope decimation behind it, so that a 1-hour 1 kHz
  recording is drawn from a few thousand points while spikes and artefacts stay visible.
- :func:`resource_usage`: a run's CPU and RAM usage over time, stage by stage, from its
  ``processing.json`` record.
- :func:`sta_grid` and :func:`strf`: per-unit spike-triggered averages, lag by lag, and the
  collapsed STRF of each unit.
- :func:`trace_snippet`: a few channels of a recording before and after filtering.

Figures are built on :class:`matplotlib.figure.Figure` directly (no ``pyplot`` global
state), so dashboards can be drawn concurrently on the threads of a Dask worker. Inputs may
be NumPy- or Dask-backed; lazy inputs are reduced block by block in a single
``dask.compute`` call, never loaded at full resolution.
"""

from neurobatch.plots._common import envelope
from neurobatch.plots.ephys import trace_snippet
from neurobatch.plots.photometry import dashboard, trial_labels
from neurobatch.plots.provenance import resource_usage
from neurobatch.plots.sta import sta_grid, strf

__all__ = [
    "dashboard",
    "envelope",
    "resource_usage",
    "sta_grid",
    "strf",
    "trace_snippet",
    "trial_labels",
]
