"""Where everything lies under an output folder: the one owner of every path under OUT.

::

    OUT/
      manifest.parquet          the last run's items (ledger)
      items.parquet             one row per item of the manifest
      trials.zarr               every committed item's trials (replaced whole, atomically)
      .trials.zarr              the same, when output.formats has no zarr (the engine's own)
      trials_obs.parquet|csv    the per-trial table
      trials.h5ad               AnnData
      run.json  processing.json
      catalog.duckdb            the tables of the outputs, for SQL (neurobatch.engine.catalog)
      report.html               one self-contained page of the batch (neurobatch.engine.report)
      items/<item>/             the item's Zarr group: one subgroup per stage
        ingest/ preprocess/ trials/ ...   each with its commit record
        .neurobatch-failed.json           while the item's last run failed
        processing.json
      dashboards/<item>.<fmt>
      logs/run.log  logs/<item>.log
      logs/watch.log            one line per cycle of `neurobatch watch`
      runs/<run>/run.json       each run's record: command, times, state (engine.statuses)
      runs/<run>/tasks.parquet  each run's item-stage statuses, live while it runs
      .neurobatch-lock.json     held while a run writes here (neurobatch.io.lock)
      .staging/<run>/           combined outputs being built (swapped in at the end)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CATALOG",
    "ENGINE_TRIALS",
    "FAILURE_MARKER",
    "ITEMS_TABLE",
    "MANIFEST",
    "TRIALS",
    "OutputLayout",
]

#: The last run's items, relative to OUT.
MANIFEST = "manifest.parquet"

#: The combined trials and the items table, relative to OUT.
TRIALS, ITEMS_TABLE = "trials.zarr", "items.parquet"

#: The database of the outputs (:mod:`neurobatch.engine.catalog`), relative to OUT.
CATALOG = "catalog.duckdb"

#: The combined trials when ``output.formats`` does not ask for ``zarr``: kept, hidden, for
#: ``RunResult.trials`` and :func:`neurobatch.open_trials`.
ENGINE_TRIALS = ".trials.zarr"

#: Beside an item's stages while its last run failed: ``{"stage", "error", "run", "time"}``.
FAILURE_MARKER = ".neurobatch-failed.json"


def _join(url: str, *parts: str) -> str:
    return "/".join([url.rstrip("/"), *parts])


@dataclass(frozen=True)
class OutputLayout:
    """The paths of one output folder.

    Parameters
    ----------
    url : str
        The output folder (any fsspec URL).
    storage_options : mapping, optional
        Options for its filesystem.

    Examples
    --------
    >>> out = OutputLayout("s3://lab/out")
    >>> out.stage("experiment_001", "trials")
    's3://lab/out/items/experiment_001/trials'
    >>> out.combined("trials.zarr", staging="1a2b")
    's3://lab/out/.staging/1a2b/trials.zarr'
    """

    url: str
    storage_options: Mapping[str, Any] = field(default_factory=dict)

    def path(self, *parts: str) -> str:
        """A path under OUT."""
        return _join(self.url, *parts)

    def item(self, item_id: str) -> str:
        """The item's Zarr group."""
        return self.path("items", item_id)

    def stage(self, item_id: str, stage: str) -> str:
        """A stage's output: a subgroup of the item's group."""
        return self.path("items", item_id, stage)

    def scratch(self, item_id: str, stage: str) -> str:
        """Temporaries of a stage while it runs (removed after it)."""
        return self.path("items", item_id, f".scratch-{stage}")

    def failure(self, item_id: str) -> str:
        """The item's failure marker."""
        return self.path("items", item_id, FAILURE_MARKER)

    def item_processing(self, item_id: str) -> str:
        """The item's own provenance record."""
        return self.path("items", item_id, "processing.json")

    def item_log(self, item_id: str) -> str:
        """The item's log of its last run."""
        return self.path("logs", f"{item_id}.log")

    def dashboard(self, item_id: str, suffix: str, fmt: str) -> str:
        """A figure of the item."""
        return self.path("dashboards", f"{item_id}{suffix}.{fmt}")

    def combined(self, name: str, *, staging: str | None = None) -> str:
        """A combined output (``trials.zarr``, ``items.parquet``, ...), or its staged copy."""
        return self.path(".staging", staging, name) if staging else self.path(name)

    def staging(self, run_id: str | None = None) -> str:
        """The staging folder of a run (of every run without ``run_id``)."""
        return self.path(".staging", run_id) if run_id else self.path(".staging")

    @property
    def manifest(self) -> str:
        """The last run's items (:mod:`neurobatch.engine.ledger`)."""
        return self.path(MANIFEST)

    @property
    def catalog(self) -> str:
        """The database of the outputs (``catalog.duckdb``)."""
        return self.path(CATALOG)

    @property
    def processing(self) -> str:
        """The provenance record of every run."""
        return self.path("processing.json")

    @property
    def run_record(self) -> str:
        """What the last run did, item by item (``run.json``)."""
        return self.path("run.json")

    def runs(self, run_id: str | None = None) -> str:
        """The folder of a run's record and statuses (of every run's without ``run_id``)."""
        return self.path("runs", run_id) if run_id else self.path("runs")

    def run_tasks(self, run_id: str) -> str:
        """A run's table of statuses, one row per item and stage."""
        return self.path("runs", run_id, "tasks.parquet")

    def past_run(self, run_id: str) -> str:
        """A run's record, kept (``run.json`` with its command, times and state)."""
        return self.path("runs", run_id, "run.json")

    @property
    def report(self) -> str:
        """The page of the batch (``report.html``)."""
        return self.path("report.html")

    @property
    def run_log(self) -> str:
        """The log of the last run."""
        return self.path("logs", "run.log")

    @property
    def watch_log(self) -> str:
        """One line per cycle of ``neurobatch watch`` (:mod:`neurobatch.engine.watch`)."""
        return self.path("logs", "watch.log")
