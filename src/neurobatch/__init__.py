"""neurobatch: Dask-parallel batch processing of neuroscience recordings.

The public API, imported on first use (``import neurobatch.kernels`` stays free of dask):

- :class:`Pipeline` (``neurobatch.engine.pipeline``): a pipeline file, run on a cluster;
- :class:`PipelineConfig` and :func:`load_config` (``neurobatch.config``): its models.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["Pipeline", "PipelineConfig", "load_config"]

_EXPORTS = {
    "Pipeline": "neurobatch.engine.pipeline",
    "PipelineConfig": "neurobatch.config",
    "load_config": "neurobatch.config",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'neurobatch' has no attribute {name!r}")
