"""neurobatch: Dask-parallel batch processing of neuroscience recordings.

The public API, imported on first use (``import neurobatch.kernels`` stays free of dask):

- :class:`Pipeline` (``neurobatch.engine.run``): a pipeline file, run on a cluster;
- :class:`Stage` and :func:`stage` (``neurobatch.engine.stages``): stages of your own;
- :class:`PipelineConfig` and :func:`load_config` (``neurobatch.config``): its models.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["Pipeline", "PipelineConfig", "Stage", "load_config", "stage"]

_EXPORTS = {
    "Pipeline": "neurobatch.engine.run",
    "PipelineConfig": "neurobatch.config",
    "Stage": "neurobatch.engine.stages",
    "load_config": "neurobatch.config",
    "stage": "neurobatch.engine.stages",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'neurobatch' has no attribute {name!r}")
