"""neurobatch: Dask-parallel batch processing of neuroscience recordings.

The public API, imported on first use (``import neurobatch.kernels`` stays free of dask):

- :class:`Pipeline` (``neurobatch.engine.run``): a pipeline file, run on a cluster;
  ``run()`` returns a :class:`RunResult` (``.trials``, ``.to_anndata()``, ``.to_phopro()``);
- :func:`open_trials` (``neurobatch.engine.results``): the same for an earlier run's folder;
- :class:`Stage` and :func:`stage` (``neurobatch.engine.stages``): stages of your own;
- :class:`PipelineConfig` and :func:`load_config` (``neurobatch.config``): its models;
- ``__version__``: the installed version (read once: every stage key and provenance record
  names it).
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import Any

__all__ = [
    "Pipeline",
    "PipelineConfig",
    "RunResult",
    "Stage",
    "__version__",
    "load_config",
    "open_trials",
    "stage",
]

try:
    __version__ = version("neurobatch")
except PackageNotFoundError:  # pragma: no cover - a source tree that was never installed
    __version__ = "0.0.0+unknown"

_EXPORTS = {
    "Pipeline": "neurobatch.engine.run",
    "PipelineConfig": "neurobatch.config",
    "RunResult": "neurobatch.engine.run",
    "open_trials": "neurobatch.engine.results",
    "Stage": "neurobatch.engine.stages",
    "load_config": "neurobatch.config",
    "stage": "neurobatch.engine.stages",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'neurobatch' has no attribute {name!r}")
