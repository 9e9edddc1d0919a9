"""The driver's combined outputs: every committed item's trials, the tables and the AnnData.

As items finish, their trials are appended, in manifest order, to a new ``trials.zarr``
built in the run's staging folder (``OUT/.staging/<run>/``), several items in one append
while they have the same columns and attributes (up to
:data:`neurobatch.chunking.TRIALS_BATCH_MEMORY`: an append costs the same for one small item
as for many); items the run did not touch
(``--only``) are carried over from their committed stores, so the combined outputs always
cover every committed item of the manifest. At the end the obs table, the AnnData and the
items table are written beside it, and each output then takes the place of its old
version in one step (:mod:`neurobatch.io.files`): a run killed at any moment leaves the
previous complete outputs readable, and the next run rebuilds them.

Storage faults. Every read and write of the combiner retries transient errors
(:func:`neurobatch.io.files.retried`). An item's rows are never dropped because its trials
could not be read: if the storage keeps failing the read, or any write, the combined
outputs are not built at all (:class:`~neurobatch.errors.StorageError`, naming the path):
what this run staged is removed, and the outputs of the last complete run stay in place.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Literal, cast

import numpy as np
import pandas as pd
import xarray as xr

from neurobatch.chunking import TRIALS_BATCH_MEMORY
from neurobatch.engine.item import ItemOutcome
from neurobatch.engine.layout import ENGINE_TRIALS, ITEMS_TABLE, TRIALS, OutputLayout
from neurobatch.errors import StorageError
from neurobatch.io import export, files, trials_store
from neurobatch.io.commit import remove
from neurobatch.io.trials_store import TRIAL_DIM
from neurobatch.io.zarr import ZarrFormat

logger = logging.getLogger(__name__)

__all__ = ["Combiner"]

#: The combined outputs, by the output format that asks for each.
_TABLES = {"parquet": "trials_obs.parquet", "csv": "trials_obs.csv", "h5ad": "trials.h5ad"}


class Combiner:
    """Builds the combined outputs of a run beside the old ones, then swaps them in.

    Parameters
    ----------
    layout : OutputLayout
        The output folder.
    order : sequence of str
        Every item of the manifest, in its order.
    run_id : str
        The run, which names its staging folder.
    trials_stage : str or None
        The stage whose trials are combined (None: the kind has no trials).
    zarr_format : {3, 2}, default 3
        The Zarr format of the combined ``trials.zarr`` (``output.zarr_format``).
    """

    def __init__(
        self,
        layout: OutputLayout,
        order: Sequence[str],
        run_id: str,
        trials_stage: str | None,
        *,
        zarr_format: ZarrFormat = 3,
    ) -> None:
        self.layout = layout
        self.zarr_format = zarr_format
        self.order = list(order)
        self.run_id = run_id
        self.trials_stage = trials_stage
        self.staged = layout.combined(TRIALS, staging=run_id)
        self.outcomes: dict[str, ItemOutcome] = {}
        self.next = 0
        self.rel_time: np.ndarray | None = None
        self.grid_item: str | None = None
        self.n_trials = 0
        self.n_items = 0
        self.n_staged = 0
        """Trials in the staged store (appended; :attr:`batch` holds the others)."""
        self.started: float | None = None
        self.batch: list[xr.Dataset] = []
        self.batch_bytes = 0
        """What :attr:`batch` holds, in bytes (counted as it grows, not summed per item)."""
        remove(layout.staging(), storage_options=layout.storage_options)

    def add(self, outcome: ItemOutcome) -> None:
        """An item finished (or was carried over): append every item now in order.

        Raises
        ------
        neurobatch.errors.StorageError
            If an item's committed trials cannot be read, or the staged store written, after
            the retries: the run's staged outputs are discarded.
        """
        self.outcomes[outcome.item_id] = outcome
        with self._discarded_on_failure():
            while self.next < len(self.order) and self.order[self.next] in self.outcomes:
                self._append(self.outcomes[self.order[self.next]])
                self.next += 1

    def _append(self, outcome: ItemOutcome) -> None:
        stage = self.trials_stage
        if stage is None or outcome.status == "failed" or not outcome.n_trials:
            return
        if self.started is None:
            self.started = time.time()
        trials = outcome.trials
        if trials is None:
            trials = self._read(outcome.item_id, stage)
        outcome.trials = None  # the driver keeps no item's trials once appended
        rel_time = trials["rel_time"].to_numpy()
        if self.rel_time is None:
            self.rel_time, self.grid_item = rel_time, outcome.item_id
        elif rel_time.shape != self.rel_time.shape or not np.allclose(
            rel_time, self.rel_time, rtol=0, atol=1e-9
        ):
            logger.warning(
                "%s: its trials (%d points at %g Hz) were resampled onto the common relative "
                "time grid of %s (%d points) by linear interpolation",
                outcome.item_id,
                rel_time.size,
                outcome.records.get("ingest", {}).get("sampling_rate", float("nan")),
                self.grid_item,
                self.rel_time.size,
            )
            trials = trials_store.resample_trials(trials, self.rel_time)
        trials = trials.load()
        if self.batch and _schema(trials) != _schema(self.batch[0]):
            self._flush()
        self.batch.append(trials)
        self.batch_bytes += trials.nbytes
        if self.batch_bytes >= TRIALS_BATCH_MEMORY:
            self._flush()
        self.n_trials += outcome.n_trials
        self.n_items += 1

    def _read(self, item_id: str, stage: str) -> xr.Dataset:
        """An item's committed trials, in memory (transient errors retried)."""
        url = self.layout.stage(item_id, stage)
        so = self.layout.storage_options
        try:
            with files.translated(url, action="reading"):
                return files.retried(
                    lambda: trials_store.open_trials(url, storage_options=so).load(),
                    url=url,
                    action="reading",
                )
        except FileNotFoundError as error:
            raise StorageError(
                f"the committed trials of {item_id} are gone from {url} ({error}); the "
                "combined outputs were left as they were: re-run to redo the item"
            ) from error

    def _flush(self) -> None:
        """Append the batched items' trials in one go (they share columns and attributes)."""
        if not self.batch:
            return
        trials = self.batch[0] if len(self.batch) == 1 else xr.concat(self.batch, dim=TRIAL_DIM)
        so = self.layout.storage_options
        after = self.n_staged + int(trials.sizes[TRIAL_DIM])
        attempts = 0

        def append() -> None:
            nonlocal attempts
            attempts += 1
            # an append that ended before its error (an answer lost) is not made twice
            if (
                attempts > 1
                and trials_store.stored_trials(self.staged, storage_options=so) == after
            ):
                return
            trials_store.append_trials(
                trials, self.staged, storage_options=so, zarr_format=self.zarr_format
            )

        files.retried(append, url=self.staged, action="writing")
        self.n_staged = after
        self.batch, self.batch_bytes = [], 0

    def finish(self, items: pd.DataFrame, formats: Sequence[str]) -> None:
        """Write the tables beside the staged trials, then put each output in its place.

        Parameters
        ----------
        items : pandas.DataFrame
            The items table, one row per item of the manifest.
        formats : sequence of str
            ``output.formats``: which of the obs tables and the AnnData to write, and
            whether the combined trials are ``trials.zarr`` (``zarr``) or the engine's
            hidden ``.trials.zarr``. The outputs of a format not asked for are removed.

        Raises
        ------
        neurobatch.errors.StorageError
            If an output cannot be written after the retries (a full disk, an unreachable
            endpoint): the staged outputs are discarded; those not yet put in place keep
            their previous version.
        """
        with self._discarded_on_failure():
            self._finish(items, formats)

    def _finish(self, items: pd.DataFrame, formats: Sequence[str]) -> None:
        self._flush()
        layout, so = self.layout, self.layout.storage_options
        names = [ITEMS_TABLE]
        files.write_bytes(
            layout.combined(ITEMS_TABLE, staging=self.run_id),
            _parquet(items),
            storage_options=so,
        )
        if self.n_trials:
            with files.translated(self.staged, action="reading"):
                trials = files.retried(
                    lambda: trials_store.open_trials(self.staged, storage_options=so),
                    url=self.staged,
                    action="reading",
                )
            for fmt, name in _TABLES.items():
                if fmt not in formats:
                    continue
                url = layout.combined(name, staging=self.run_id)
                if fmt == "h5ad":  # opened again, in the export's smaller blocks
                    write = functools.partial(
                        export.write_h5ad, self.staged, url, storage_options=so
                    )
                    files.retried(write, url=url, action="writing")
                else:
                    table = cast(Literal["parquet", "csv"], fmt)
                    export.write_obs(trials, url, format=table, storage_options=so)
                names.append(name)
            # without 'zarr' in formats the store is kept as the engine's own, hidden
            kept, other = (TRIALS, ENGINE_TRIALS) if "zarr" in formats else (ENGINE_TRIALS, TRIALS)
            files.replace_folder(self.staged, layout.combined(kept), storage_options=so)
            remove(layout.combined(other), storage_options=so)
        else:  # no committed item has trials (any more)
            for name in (TRIALS, ENGINE_TRIALS, *_TABLES.values()):
                remove(layout.combined(name), storage_options=so)
        for fmt, name in _TABLES.items():  # a format no longer asked for: its old file goes
            if fmt not in formats:
                remove(layout.combined(name), storage_options=so)
        for name in names:
            files.replace_file(
                layout.combined(name, staging=self.run_id),
                layout.combined(name),
                storage_options=so,
            )
        remove(layout.staging(self.run_id), storage_options=so)

    def rebuilt(self) -> Combiner:
        """This run's combined trials staged again from the items' stores, after some of
        the outcomes it holds changed to failed: what was staged is discarded.

        Returns
        -------
        Combiner
            A new combiner of the same run, holding every outcome so far.
        """
        self.discard()
        rebuilt = Combiner(
            self.layout, self.order, self.run_id, self.trials_stage, zarr_format=self.zarr_format
        )
        for item_id in self.order:
            if item_id in self.outcomes:
                self.outcomes[item_id].trials = None  # read again from its store
                rebuilt.add(self.outcomes[item_id])
        return rebuilt

    def discard(self, error: BaseException | None = None) -> None:
        """Remove what this run staged, after a failure: the outputs in place stay as they
        are. Nothing is tried when ``error`` (the failure) says the storage cannot be
        reached: the next run removes it.

        Parameters
        ----------
        error : BaseException, optional
            What failed the run.
        """
        if error is not None and files.is_transient(error):
            return
        try:
            remove(self.layout.staging(self.run_id), storage_options=self.layout.storage_options)
        except StorageError as failure:
            logger.warning("could not remove the staged outputs: %s", failure)

    @contextmanager
    def _discarded_on_failure(self) -> Iterator[None]:
        try:
            yield
        except Exception as error:
            self.discard(error)
            raise


def _schema(trials: xr.Dataset) -> str:
    """What two items' trials must share to be appended together: every variable's name,
    dimensions, dtype and attributes, and the dataset's attributes."""
    variables = {
        str(name): [list(map(str, v.dims)), str(v.dtype), v.attrs]
        for name, v in trials.variables.items()
    }
    return json.dumps([variables, trials.attrs], sort_keys=True, default=str)


def _parquet(table: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    table.to_parquet(buffer, index=False)
    return buffer.getvalue()
