"""The pipeline file: pydantic models, loading from YAML or TOML, and errors for people.

A pipeline file names its inputs, the loader that reads them, the preprocessing and trial
settings, the hooks, the outputs and the cluster. Every section is a pydantic model with
``extra="forbid"``, so a misspelled key is an error, and :func:`load_config` turns pydantic's
errors into a :class:`~neurobatch.errors.ConfigError` with one line per problem: the file, the
dotted field path, what was wrong and, for unknown keys, formats and event names, the closest
known name::

    pipeline.yaml: preprocess.filter.cutof_hz: unknown key; did you mean 'cutoff_hz'?

The loader section is checked against the table of loader formats,
:data:`~neurobatch.config.loaders.LOADER_FORMATS`: the ``format`` picks the arguments model of
that loader, and every event name that the ``trials`` section uses must be one the loader
provides. This package imports nothing of neurobatch but :mod:`neurobatch.errors`.
"""

from neurobatch.config.base import Bounds, EventNames, Kind, MemorySize, NameList
from neurobatch.config.cluster import (
    AdaptiveConfig,
    AddressClusterConfig,
    ClusterConfig,
    JobqueueClusterConfig,
    KubernetesClusterConfig,
    LocalClusterConfig,
    TlsConfig,
)
from neurobatch.config.errors import config_error_lines
from neurobatch.config.files import (
    dump_config,
    load_config,
    loader_arguments,
    validate_config,
    validate_loader,
)
from neurobatch.config.loaders import LOADER_FORMATS, LoaderField, LoaderFormat, LoaderMapping
from neurobatch.config.objects import ObjectRef, import_object, split_object_ref
from neurobatch.config.pipeline import PipelineConfig, SourceConfig, trial_event_names
from neurobatch.config.sections import (
    EngineConfig,
    EphysFilterConfig,
    FilterConfig,
    FitConfig,
    HooksConfig,
    InputConfig,
    OutputConfig,
    OutputFormat,
    PreprocessConfig,
    StaConfig,
    StageConfig,
    TrialsConfig,
)

__all__ = [
    "LOADER_FORMATS",
    "AdaptiveConfig",
    "AddressClusterConfig",
    "Bounds",
    "ClusterConfig",
    "EngineConfig",
    "EphysFilterConfig",
    "EventNames",
    "FilterConfig",
    "FitConfig",
    "HooksConfig",
    "InputConfig",
    "JobqueueClusterConfig",
    "Kind",
    "KubernetesClusterConfig",
    "LoaderField",
    "LoaderFormat",
    "LoaderMapping",
    "LocalClusterConfig",
    "MemorySize",
    "NameList",
    "ObjectRef",
    "OutputConfig",
    "OutputFormat",
    "PipelineConfig",
    "PreprocessConfig",
    "SourceConfig",
    "StaConfig",
    "StageConfig",
    "TlsConfig",
    "TrialsConfig",
    "config_error_lines",
    "dump_config",
    "import_object",
    "load_config",
    "loader_arguments",
    "split_object_ref",
    "trial_event_names",
    "validate_config",
    "validate_loader",
]
