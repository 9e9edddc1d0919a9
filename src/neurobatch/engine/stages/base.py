"""The engine's unit of work: a :class:`Stage`, and the key that says when its output is done.

A stage has a name, the stages whose outputs it reads (``needs``), a function of the
pipeline file that gives its parameters, the hooks whose code its output depends on, a
version (its code's identity) and a run function. One generic item runner
(:mod:`neurobatch.engine.item`) executes any list of stages: it stores each output in the
item's Zarr group under the stage's name, commits it with its key, skips it when the key
still matches, and records it in provenance, whatever the stage.

A stage's **key** hashes everything its output depends on (:func:`key_parts`): the
stage's parameters; its code (neurobatch's version for built-ins, a hash of the source of
a user's function) and the source of each hook it calls; the keys of the stages it
needs; and, for a stage that reads the input itself, the input's fingerprint and the
fingerprint of every other file its loader read (sidecars, ``.meta``). The parts are kept
beside the key, so that a stage whose key no longer matches can say why.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import keyword
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import cloudpickle
import xarray as xr

from neurobatch import __version__
from neurobatch.config import PipelineConfig
from neurobatch.errors import ConfigError
from neurobatch.io.cache import Fetched
from neurobatch.io.loaders._common import closest

__all__ = [
    "FigureContext",
    "Kind",
    "Stage",
    "StageContext",
    "StageOutput",
    "code_hash",
    "key_parts",
    "source_of",
    "stage",
    "stale_reason",
]


def source_of(ds: xr.Dataset) -> str:
    """The input a dataset came from, for messages (its ``source`` attribute)."""
    return str(ds.attrs.get("source", "recording"))


def _hash(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def code_hash(function: Callable[..., Any]) -> str:
    """The identity of a user's function: a hash of its source, or of its pickle.

    Parameters
    ----------
    function : callable
        A hook or a user stage's function.

    Returns
    -------
    str
        16 hex digits; it changes when the function's source does (its pickled bytes for
        a function whose source cannot be read, such as one typed at a prompt).

    Examples
    --------
    >>> def trim(ds):
    ...     return ds
    >>> len(code_hash(trim)), code_hash(trim) == code_hash(trim)
    (16, True)
    """
    target = inspect.unwrap(getattr(function, "function", None) or function)
    try:
        text = inspect.getsource(target)
    except (OSError, TypeError):
        return hashlib.sha256(cloudpickle.dumps(target)).hexdigest()[:16]
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class StageOutput:
    """What a stage's run returns.

    Attributes
    ----------
    dataset : xarray.Dataset or None
        Stored in the item's group under the stage's name (None: nothing to store).
    record : dict
        JSON facts kept in the stage's commit record and shown in the items table (the fit,
        the number of trials, ...).
    sources : list of str
        Other files the stage read (sidecars, ``.meta``): their fingerprints join its key.
    chunk_dim : str or None
        The dimension to chunk the stored dataset along; by default the stage's own.
    """

    dataset: xr.Dataset | None
    record: dict[str, Any] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)
    chunk_dim: str | None = None


@dataclass
class StageContext:
    """Everything a stage's run may use for one item.

    Attributes
    ----------
    item_id, url : str
        The item and its input.
    format : str
        The loader's format.
    loader_arguments : dict
        The item's loader arguments.
    config : neurobatch.config.PipelineConfig
        The pipeline file.
    parameters : dict
        The stage's own parameters.
    inputs : dict of str to xarray.Dataset
        The outputs of the stages it needs, lazily opened from the item's store (with the
        ``post_load`` hook applied to the ingested recording).
    hooks : mapping of str to callable
        The run's hooks.
    chunk_memory : int
        Bytes of one stored chunk.
    scratch_url : str
        A folder the stage may use for temporaries (removed after it).
    experiment_id : callable
        Returns the item's experiment id (``id_builder`` hook, or the item id).
    storage_options : mapping
        fsspec options of the item's input: its source's ``storage_options``.
    input_copy : neurobatch.io.cache.Fetched or None
        The input's verified copy in ``input.cache``, which a stage that reads the input
        reads instead of ``url`` (:func:`~neurobatch.engine.stages.ingest.read_input`).
    """

    item_id: str
    url: str
    format: str
    loader_arguments: dict[str, Any]
    config: PipelineConfig
    parameters: dict[str, Any]
    inputs: dict[str, xr.Dataset]
    hooks: Mapping[str, Callable[..., Any]]
    chunk_memory: int
    scratch_url: str
    experiment_id: Callable[[], str]
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    input_copy: Fetched | None = None

    @property
    def metadata(self) -> dict[str, Any]:
        """The attributes of every input, later stages' values winning (for passdown)."""
        merged: dict[str, Any] = {}
        for ds in self.inputs.values():
            merged |= ds.attrs
        return merged


def _no_parameters(config: PipelineConfig) -> dict[str, Any]:
    return {}


def _fixed_parameters(params: dict[str, Any], config: PipelineConfig) -> dict[str, Any]:
    return dict(params)


def _always(config: PipelineConfig) -> bool:
    return True


@dataclass(frozen=True)
class Stage:
    """One step of an item's processing: stored, keyed, resumed, logged and recorded.

    Parameters
    ----------
    name : str
        The stage's name: its group in the item's store and its name in provenance.
    run : callable
        ``run(context: StageContext) -> StageOutput``.
    needs : tuple of str
        The stages whose outputs it reads, in the order it takes them. A stage that needs
        none reads the item's input itself (as ingest does, and the filter without a raw
        copy): its key then has the input part, with the files it reports in
        :attr:`StageOutput.sources`.
    parameters : callable
        ``parameters(config) -> dict``: what its output depends on in the pipeline file.
    hooks : tuple of str
        The hooks its output depends on (their source joins its key).
    version : str
        Its code's identity; empty for a built-in (neurobatch's version stands in).
    store : {"dataset", "trials"}
        How its output is stored: a Zarr dataset chunked along ``chunk_dim``, or the
        trials layout (:func:`neurobatch.io.trials_store.append_trials`).
    chunk_dim : str or None
        The dimension its stored output is chunked along; None for the output's first.
    process : str
        Its AIND process name (``aind_data_schema_models.process_names.ProcessName``).
    processing_stage : {"Processing", "Analysis"}
        Its AIND processing stage.
    view_hook : str or None
        The hook applied to its stored output when later stages read it (``post_load``
        for the ingested recording).
    enabled : callable
        ``enabled(config) -> bool``: whether a pipeline file runs it.
    function : callable or None
        A user's function the stage wraps (see :func:`stage`): calling the stage calls it.
    """

    name: str
    run: Callable[[StageContext], StageOutput]
    needs: tuple[str, ...] = ()
    parameters: Callable[[PipelineConfig], dict[str, Any]] = _no_parameters
    hooks: tuple[str, ...] = ()
    version: str = ""
    store: Literal["dataset", "trials"] = "dataset"
    chunk_dim: str | None = None
    process: str = "Analysis"
    processing_stage: Literal["Processing", "Analysis"] = "Analysis"
    view_hook: str | None = None
    enabled: Callable[[PipelineConfig], bool] = _always
    function: Callable[..., Any] | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the user's function the stage wraps (e.g. in a notebook)."""
        if self.function is None:
            raise TypeError(f"built-in stage {self.name!r} is run by a pipeline, not called")
        return self.function(*args, **kwargs)

    def with_parameters(self, params: Mapping[str, Any]) -> Stage:
        """This stage with fixed parameters (a user stage's ``params`` from the file).

        Raises
        ------
        neurobatch.errors.ConfigError
            If the stage's function takes no keyword of that name.
        """
        if self.function is not None:
            _check_keywords(self.name, self.function, params)
        return replace(self, parameters=functools.partial(_fixed_parameters, dict(params)))


def _check_keywords(name: str, function: Callable[..., Any], params: Mapping[str, Any]) -> None:
    signature = inspect.signature(function)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    known = [
        p.name
        for p in signature.parameters.values()
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    for key in params:
        if not takes_any and key not in known:
            guess = closest(key, known)
            hint = f"; did you mean {guess!r}?" if guess else ""
            raise ConfigError(
                f"stage {name!r}: params.{key}: {function.__qualname__} takes no argument "
                f"{key!r}{hint} (it takes {', '.join(known) or 'none'})"
            )


def _user_run(function: Callable[..., Any]) -> Callable[[StageContext], StageOutput]:
    @functools.wraps(function)
    def run(context: StageContext) -> StageOutput:
        # the inputs come in the order of the stage's needs
        result = function(*context.inputs.values(), **context.parameters)
        if result is None or isinstance(result, xr.Dataset):
            return StageOutput(result)
        if isinstance(result, xr.DataArray):
            return StageOutput(result.to_dataset(name=result.name or function.__name__))
        raise TypeError(
            f"stage function {function.__qualname__} returned {type(result).__name__}; "
            "expected an xarray.Dataset, a named DataArray or None"
        )

    return run


def stage(
    function: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    needs: Sequence[str] | None = None,
    params: Mapping[str, Any] | None = None,
) -> Any:
    """Make a user's function a pipeline stage (a decorator, with or without arguments).

    The function takes the outputs of the stages it ``needs`` as positional datasets and
    its ``params`` as keywords, and returns an ``xarray.Dataset`` (or None). Its stage is
    stored, keyed, resumed, logged and recorded like a built-in one; its key covers its
    source code, so editing the function redoes it (and only it, and what needs it).

    Parameters
    ----------
    function : callable, optional
        The function (when used as ``@stage`` without arguments).
    name : str, optional
        The stage's name; by default the function's.
    needs : sequence of str, optional
        The stages whose outputs it takes, in order; by default the stage before it in
        the pipeline.
    params : mapping, optional
        Keyword arguments it is called with.

    Returns
    -------
    Stage, or a decorator that makes one

    Raises
    ------
    neurobatch.errors.ConfigError
        If the name is not an identifier, or ``params`` names an argument the function
        does not take.

    Examples
    --------
    >>> @stage(needs=["trials"], params={"window_s": (0.0, 2.0)})
    ... def peak(trials, *, window_s):
    ...     inside = trials.dff.sel(rel_time=slice(*window_s))
    ...     return inside.max("rel_time").to_dataset(name="peak")
    >>> peak.name, peak.needs
    ('peak', ('trials',))
    >>> stage(lambda trials: None, name="bad name")
    Traceback (most recent call last):
    ...
    neurobatch.errors.ConfigError: stage name 'bad name' is not an identifier; expected letters, digits and underscores
    """

    def make(fn: Callable[..., Any]) -> Stage:
        stage_name = name or fn.__name__
        if not stage_name.isidentifier() or keyword.iskeyword(stage_name):
            raise ConfigError(
                f"stage name {stage_name!r} is not an identifier; expected letters, digits "
                "and underscores"
            )
        made = Stage(
            name=stage_name,
            run=_user_run(fn),
            needs=tuple(needs or ()),
            version=code_hash(fn),
            function=fn,
        )
        return made.with_parameters(params or {})

    return make if function is None else make(function)


def key_parts(
    stage_: Stage,
    config: PipelineConfig,
    *,
    hooks: Mapping[str, Callable[..., Any]],
    upstream: Mapping[str, str],
    input_fingerprint: str | None = None,
    sources: Mapping[str, str | None] | None = None,
) -> dict[str, str]:
    """The parts of a stage's key, each a hash: what its output depends on.

    Parameters
    ----------
    stage_ : Stage
        The stage.
    config : neurobatch.config.PipelineConfig
        The pipeline file.
    hooks : mapping
        The run's hooks; the source of those the stage depends on joins ``code``.
    upstream : mapping of str to str
        The keys of the stages it needs.
    input_fingerprint : str, optional
        The input's fingerprint, for a stage that reads the input itself.
    sources : mapping of str to str or None, optional
        The fingerprints of the other files it read (None for one that is gone).

    Returns
    -------
    dict of str to str
        ``parameters``, ``code``, ``upstream``, ``input`` and ``key`` (the hash of the
        others).

    Examples
    --------
    >>> config = PipelineConfig.model_validate({"name": "k", "input": {"url": "d"},
    ...     "loader": {"format": "photometry-csv"}, "output": {"url": "o"}})
    >>> s = Stage("s", run=lambda context: StageOutput(None))
    >>> a = key_parts(s, config, hooks={}, upstream={"ingest": "abc"})
    >>> b = key_parts(s, config, hooks={}, upstream={"ingest": "abd"})
    >>> a["key"] == b["key"], a["parameters"] == b["parameters"]
    (False, True)
    """
    code = {
        "stage": stage_.version or f"neurobatch {__version__}",
        "hooks": {name: code_hash(hooks[name]) for name in stage_.hooks if name in hooks},
    }
    parts = {
        "parameters": _hash([stage_.name, stage_.parameters(config)]),
        "code": _hash(code),
        "upstream": _hash(dict(upstream)),
        "input": _hash([input_fingerprint, dict(sorted((sources or {}).items()))]),
    }
    return parts | {"key": _hash(parts)}


#: What a changed part of a key means, for ``neurobatch status``.
_REASONS = {
    "input": "its input or a file its loader read (sidecar, .meta) changed",
    "parameters": "its parameters in the pipeline file changed",
    "code": "its code changed (neurobatch's version, a hook or the stage's function)",
    "upstream": "a stage it needs is stale or was redone",
}


def stale_reason(committed: Mapping[str, Any], expected: Mapping[str, str]) -> str | None:
    """Why a committed stage's key no longer matches; None when it does.

    Examples
    --------
    >>> stale_reason({"key": "1", "parts": {"code": "a", "input": "b"}},
    ...              {"key": "2", "code": "c", "input": "b"})
    "its code changed (neurobatch's version, a hook or the stage's function)"
    """
    if committed.get("key") == expected["key"]:
        return None
    parts = committed.get("parts") or {}
    changed = [_REASONS[name] for name in _REASONS if parts.get(name) != expected.get(name)]
    return "; ".join(changed) or "committed by another version of neurobatch"


@dataclass
class FigureContext:
    """What a kind's figures of one item may use (see :class:`Kind`).

    Attributes
    ----------
    open : callable
        ``open(stage) -> Dataset or None``: a stage's stored output, as later stages see it.
    path : callable
        ``path(suffix) -> str``: the figure's URL, ``dashboards/<item><suffix>.<format>``.
    records : dict of str to dict
        Each stage's commit record.
    config : neurobatch.config.PipelineConfig
        The pipeline file.
    experiment_id : str
        The item's experiment id.
    storage_options : mapping
        fsspec options of the item's input: its source's ``storage_options``.
    """

    open: Callable[[str], xr.Dataset | None]
    path: Callable[[str], str]
    records: dict[str, dict[str, Any]]
    config: PipelineConfig
    experiment_id: str
    storage_options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Kind:
    """A kind of pipeline: its stages, in order, and what to draw of an item.

    Attributes
    ----------
    name : str
        ``photometry``, ``filter``, ``sta`` or ``custom``.
    stages : tuple of Stage
        Its built-in stages (a user's stages follow them).
    on_cluster : bool
        Whether an item is larger than a worker: its graphs then run on the whole cluster,
        one item at a time.
    figures : callable or None
        ``figures(context: FigureContext)``: the item's figures, when ``output.dashboards``.
    trials : str or None
        The stage whose trials are combined into ``OUT/trials.zarr``.
    """

    name: str
    stages: tuple[Stage, ...]
    on_cluster: bool = False
    figures: Callable[[FigureContext], None] | None = None
    trials: str | None = None
