"""What a run leaves in its output folder, opened from Python: the combined trials (lazy
xarray), AnnData, PhoPro's ``PhotometryData`` and the items table.

:meth:`neurobatch.Pipeline.run` returns a :class:`~neurobatch.engine.run.RunResult` (the
run's summary with these accessors); :func:`open_trials` gives the same for the output
folder of an earlier run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pandas as pd
import xarray as xr

from neurobatch.engine.layout import ENGINE_TRIALS, ITEMS_TABLE, TRIALS, OutputLayout
from neurobatch.errors import InputNotFoundError
from neurobatch.io import export, files, trials_store

logger = logging.getLogger(__name__)

__all__ = ["Results", "TrialsOutputs", "combined_trials_url", "open_trials"]


def combined_trials_url(layout: OutputLayout) -> str:
    """Where an output folder's combined trials are: ``trials.zarr``, or the engine's hidden
    ``.trials.zarr`` when ``output.formats`` did not ask for ``zarr`` (one of them at most).

    Parameters
    ----------
    layout : OutputLayout
        The output folder.

    Returns
    -------
    str
        The URL of the one that exists; of ``trials.zarr`` when neither does.

    Examples
    --------
    >>> import fsspec
    >>> fsspec.filesystem("memory").pipe("/doc-combined/.trials.zarr/zarr.json", b"{}")
    >>> combined_trials_url(OutputLayout("memory://doc-combined"))
    'memory://doc-combined/.trials.zarr'
    """
    for name in (TRIALS, ENGINE_TRIALS):
        url = layout.combined(name)
        fs, path = fsspec.core.url_to_fs(url, **dict(layout.storage_options))
        if files.retried(lambda: fs.exists(path), url=url, action="reading"):  # noqa: B023
            return url
    return layout.combined(TRIALS)


class TrialsOutputs:
    """The accessors of an output folder's combined trials (a mixin: ``output_url`` and
    ``storage_options`` come from the class it is mixed into)."""

    output_url: str
    storage_options: Mapping[str, Any]

    @property
    def layout(self) -> OutputLayout:
        """The output folder's paths."""
        return OutputLayout(self.output_url, dict(self.storage_options))

    @property
    def trials(self) -> xr.Dataset:
        """Every committed item's trials, lazily (dask): dimensions ``trial`` and
        ``rel_time``, the per-trial columns as coordinates.

        Read from ``trials.zarr``, or from the engine's hidden ``.trials.zarr`` when
        ``output.formats`` did not ask for ``zarr``.

        Raises
        ------
        neurobatch.errors.InputNotFoundError
            If the folder holds no combined trials (no item had any).
        """
        url = combined_trials_url(self.layout)
        try:
            return trials_store.open_trials(url, storage_options=dict(self.storage_options))
        except FileNotFoundError:
            raise InputNotFoundError(
                f"{self.output_url}: no combined trials ({TRIALS}); expected the output "
                "folder of a run whose items had trials"
            ) from None

    def to_anndata(self, *, variable: str | None = None) -> Any:
        """The combined trials as an in-memory AnnData, as ``trials.h5ad`` holds them.

        Parameters
        ----------
        variable : str, optional
            The ``(trial, rel_time)`` variable for ``X``; default: the processed one.

        Returns
        -------
        anndata.AnnData
        """
        return export.to_anndata(self.trials, variable=variable)

    def to_phopro(self, *, variable: str | None = None) -> Any:
        """The combined trials as PhoPro's ``PhotometryData`` (PhoPro must be installed).

        Parameters
        ----------
        variable : str, optional
            The ``(trial, rel_time)`` variable for ``X``; default: the processed one.

        Returns
        -------
        PhoPro.core.PhotometryData.PhotometryData

        Raises
        ------
        ImportError
            If PhoPro is not installed.
        """
        try:
            from PhoPro.core.PhotometryData import (  # type: ignore[import-untyped]
                PhotometryData,
            )
        except ImportError as error:
            raise ImportError(
                f"to_phopro needs PhoPro ({error}); install it with 'pip install PhoPro', "
                "or use to_anndata(), the AnnData PhotometryData wraps"
            ) from error
        return PhotometryData(self.to_anndata(variable=variable))


@dataclass
class Results(TrialsOutputs):
    """The outputs of an earlier run (:func:`open_trials`).

    Attributes
    ----------
    output_url : str
        The output folder.
    items : pandas.DataFrame
        The items table (``items.parquet``): one row per item, its status and facts.
    storage_options : mapping
        Options of the folder's filesystem.
    """

    output_url: str
    items: pd.DataFrame
    storage_options: Mapping[str, Any] = field(default_factory=dict, repr=False)  # secrets


def open_trials(
    url: str | os.PathLike[str], *, storage_options: Mapping[str, Any] | None = None
) -> Results:
    """Open the outputs of an earlier run: its trials, AnnData, PhotometryData, items.

    Parameters
    ----------
    url : str or os.PathLike
        The run's output folder (``output.url``): a local path or any fsspec URL.
    storage_options : mapping, optional
        Options for its filesystem.

    Returns
    -------
    Results
        ``.trials`` (lazy xarray Dataset), ``.to_anndata()``, ``.to_phopro()``, ``.items``.

    Raises
    ------
    neurobatch.errors.InputNotFoundError
        If ``url`` holds no neurobatch outputs (no ``items.parquet``).
    neurobatch.errors.StorageError
        If the storage fails the read.

    Examples
    --------
    >>> import tempfile
    >>> from neurobatch import Pipeline, synthetic
    >>> tmp = tempfile.mkdtemp()
    >>> _ = synthetic.write_photometry_batch(f"{tmp}/data", n_items=2, duration_s=120.0, fs=20.0)
    >>> _ = Pipeline({
    ...     "name": "doc", "input": {"url": f"{tmp}/data", "pattern": "*.csv"},
    ...     "loader": {"format": "photometry-csv", "event_cols": list(synthetic.EVENT_NAMES)},
    ...     "trials": {"align_to": "trial_cue", "bounds_s": [-2, 4]},
    ...     "output": {"url": f"{tmp}/out"}}).run(progress=False)
    >>> results = open_trials(f"{tmp}/out")
    >>> results.items["status"].tolist()
    ['done', 'done']
    >>> results.trials.sizes["rel_time"], results.to_anndata().n_vars
    (120, 120)
    """
    folder = os.fspath(url)
    options = dict(storage_options or {})
    layout = OutputLayout(folder, options)
    try:
        with files.translated(layout.combined(ITEMS_TABLE), action="reading"):
            items = pd.read_parquet(layout.combined(ITEMS_TABLE), storage_options=options)
    except FileNotFoundError:
        raise InputNotFoundError(
            f"{folder}: no neurobatch outputs here ({ITEMS_TABLE} not found); expected the "
            "output.url of a run"
        ) from None
    return Results(output_url=folder, items=items, storage_options=options)
