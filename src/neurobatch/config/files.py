"""Pipeline files: validating parsed data, reading YAML or TOML, and dumping for provenance."""

from __future__ import annotations

import logging
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from neurobatch.config.base import _short
from neurobatch.config.errors import config_error_lines
from neurobatch.config.loaders import _LOADER_ADAPTER, LOADER_FORMATS
from neurobatch.config.objects import split_object_ref
from neurobatch.config.pipeline import PipelineConfig
from neurobatch.errors import ConfigError

__all__ = [
    "MAX_PIPELINE_FILE_BYTES",
    "MAX_PIPELINE_VALUES",
    "dump_config",
    "load_config",
    "loader_arguments",
    "validate_config",
    "validate_loader",
]

logger = logging.getLogger(__name__)

#: The largest pipeline file read: 1 MiB. A real one is a few KiB; a larger file is refused
#: before it is parsed, so that a wrong or hostile file costs neither minutes nor gigabytes.
MAX_PIPELINE_FILE_BYTES = 1 << 20

#: The most values a YAML pipeline file may stand for once its aliases are expanded.
MAX_PIPELINE_VALUES = 1_000_000


def validate_config(data: Mapping[str, Any], *, source: str = "<config>") -> PipelineConfig:
    """Validate a parsed pipeline file.

    Parameters
    ----------
    data : Mapping
        The file's content, as parsed from YAML or TOML.
    source : str, default "<config>"
        The name that starts each error line (the file).

    Returns
    -------
    PipelineConfig
        The validated configuration.

    Raises
    ------
    ConfigError
        With one line per problem: the source, the dotted field path and what was wrong.

    Examples
    --------
    >>> validate_config({"name": "x", "input": {"url": "d"},
    ...                  "loader": {"format": "photometry-csv"},
    ...                  "output": {"url": "o"}, "preproces": {}}, source="p.yaml")
    Traceback (most recent call last):
    ...
    neurobatch.errors.ConfigError: p.yaml: preproces: unknown key; did you mean 'preprocess'?
    """
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{source}: expected a mapping of sections at the top level, got {_short(data)}"
        )
    try:
        return PipelineConfig.model_validate(dict(data))
    except ValidationError as e:
        lines = config_error_lines(e, source=source, start=PipelineConfig)
        raise ConfigError("\n".join(lines)) from None


def validate_loader(value: Any, *, source: str) -> Any:
    """Validate a loader value: a mapping, a list of mappings or a resolver reference.

    Parameters
    ----------
    value : Mapping, list of Mapping, str or LoaderMapping
        What the ``loader`` key holds or a resolver returned. A loader format's own
        arguments model instance is accepted too.
    source : str
        What error lines start with (the pipeline file, or the input a resolver ran for).

    Returns
    -------
    LoaderMapping or list of LoaderMapping or str
        Validated mappings (each also an instance of its format's arguments model, with a
        ``format`` attribute), or the resolver reference.

    Raises
    ------
    ConfigError
        Naming ``source``, the field (``loader.<key>`` or ``loader[i].<key>``), what was
        wrong and the closest known name.

    Examples
    --------
    >>> m = validate_loader({"format": "photometry-csv"}, source="x.csv")
    >>> m.format
    'photometry-csv'
    >>> validate_loader({"format": "photometry-cvs"}, source="x.csv")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    neurobatch.errors.ConfigError: x.csv: loader.format: unknown loader format 'photometry-cvs'; did you mean 'photometry-csv'? (known formats: ...)
    """
    value = _plain_loader(value)
    try:
        return _LOADER_ADAPTER.validate_python(value)
    except ValidationError as e:
        lines = config_error_lines(e, source=source, prefix=("loader",))
        raise ConfigError("\n".join(lines)) from None


def _plain_loader(value: Any) -> Any:
    """Turn a format's own arguments model instance into a mapping with ``format``."""
    if isinstance(value, list | tuple):
        return [_plain_loader(v) for v in value]
    if isinstance(value, BaseModel) and not hasattr(value, "format"):
        for fmt, spec in LOADER_FORMATS.items():
            if isinstance(value, spec.arguments):
                return {"format": fmt, **value.model_dump()}
    return value


def loader_arguments(mapping: BaseModel) -> dict[str, Any]:
    """The validated arguments of one loader mapping, JSON-safe, without ``format``.

    Parameters
    ----------
    mapping : LoaderMapping
        A validated loader mapping (``config.loader`` or one element of it).

    Returns
    -------
    dict
        Keyword arguments for ``LOADERS[mapping.format].arguments``.

    Examples
    --------
    >>> from neurobatch.io.loaders import LOADERS
    >>> m = validate_loader({"format": "photometry-csv"}, source="example")
    >>> args = loader_arguments(m)
    >>> "format" in args, sorted(args) == sorted(
    ...     LOADERS["photometry-csv"].arguments.model_fields)
    (False, True)
    """
    return mapping.model_dump(mode="json", exclude={"format"})


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that rejects a key given twice in one mapping."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"key {key!r} appears twice in one mapping (first on line {seen[key] + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=True)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_unique_mapping,
)


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """How many values ``node`` stands for once its aliases are expanded (memoised)."""
    known = sizes.get(id(node))
    if known is not None:
        return known
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(child, sizes) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size += sum(_expanded_size(k, sizes) + _expanded_size(v, sizes) for k, v in node.value)
    sizes[id(node)] = size
    return size


def _parse_yaml(text: str, source: str) -> Any:
    # a SafeLoader subclass: only plain data, never Python objects
    loader = _UniqueKeyLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        # aliases of aliases make a few hundred bytes stand for billions of values
        values = _expanded_size(node, {})
        if values > MAX_PIPELINE_VALUES:
            raise ConfigError(
                f"{source}: its anchors and aliases expand to {values} values, over the "
                f"limit of {MAX_PIPELINE_VALUES} (a pipeline file holds a few hundred); "
                "expected aliases that are not nested in one another"
            )
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = " ".join(str(p) for p in (e.context, e.problem) if p)
        raise ConfigError(f"{source}: {where}invalid YAML: {problem}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: invalid YAML: {e}") from None
    finally:
        loader.dispose()


def _parse_toml(text: str, source: str) -> Any:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: invalid TOML: {e}") from None


def _is_local(url: str) -> bool:
    return "://" not in url and "::" not in url


def _local_path(url: str, base_dir: Path) -> str:
    if not _is_local(url):
        return url
    path = os.path.expanduser(url)
    if not os.path.isabs(path):
        path = os.path.join(base_dir, path)
    return os.path.normpath(path)


def _ref_path(ref: Any, base_dir: Path) -> Any:
    if not isinstance(ref, str):
        return ref
    try:
        target, attribute, is_file = split_object_ref(ref)
    except ValueError:
        return ref  # validation reports it
    if not is_file:
        return ref
    return f"{_local_path(target, base_dir)}:{attribute}"


def _resolve_relative(data: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    data = dict(data)
    for section in ("input", "output"):
        value = data.get(section)
        if isinstance(value, Mapping) and isinstance(value.get("url"), str):
            data[section] = {**value, "url": _local_path(value["url"], base_dir)}
    if isinstance(data.get("input"), list):  # sources: each URL, and a resolver of its own
        data["input"] = [
            {
                **source,
                **({"url": _local_path(source["url"], base_dir)} if "url" in source else {}),
                **({"loader": _ref_path(source["loader"], base_dir)} if "loader" in source else {}),
                **(
                    {"cache": _local_path(source["cache"], base_dir)}
                    if isinstance(source.get("cache"), str)
                    else {}
                ),
            }
            if isinstance(source, Mapping) and isinstance(source.get("url", ""), str)
            else source
            for source in data["input"]
        ]
    if isinstance(data.get("input"), Mapping) and isinstance(data["input"].get("cache"), str):
        data["input"] = {**data["input"], "cache": _local_path(data["input"]["cache"], base_dir)}
    if isinstance(data.get("loader"), str):
        data["loader"] = _ref_path(data["loader"], base_dir)
    hooks = data.get("hooks")
    if isinstance(hooks, Mapping):
        data["hooks"] = {key: _ref_path(ref, base_dir) for key, ref in hooks.items()}
    preprocess = data.get("preprocess")
    if isinstance(preprocess, Mapping):
        preprocess = dict(preprocess)
        fit = preprocess.get("fit")
        if isinstance(fit, Mapping) and "method" in fit:
            preprocess["fit"] = {**fit, "method": _ref_path(fit["method"], base_dir)}
        elif "fit" in preprocess:
            preprocess["fit"] = _ref_path(fit, base_dir)
        if "correction" in preprocess:
            preprocess["correction"] = _ref_path(preprocess["correction"], base_dir)
        data["preprocess"] = preprocess
    return data


def _read_text(file: Path, source: str) -> str:
    """The file's text; a file over the size limit is refused after reading only the limit."""
    with file.open("rb") as f:
        raw = f.read(MAX_PIPELINE_FILE_BYTES + 1)
        size = max(os.fstat(f.fileno()).st_size, len(raw))
    if len(raw) > MAX_PIPELINE_FILE_BYTES:
        raise ConfigError(
            f"{source}: the file is {_mib(size)}, over the {_mib(MAX_PIPELINE_FILE_BYTES)} "
            "limit of a pipeline file (a pipeline file takes a few KiB); is it the right file?"
        )
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{source}: byte {e.start} ({raw[e.start : e.start + 1]!r}) is not UTF-8; "
            "expected a UTF-8 text file"
        ) from None


def _mib(size: int) -> str:
    return f"{size / 2**20:.3g} MiB ({size} bytes)"


def load_config(path: str | os.PathLike[str]) -> PipelineConfig:
    """Read and validate a pipeline file (``.yaml``, ``.yml`` or ``.toml``).

    Relative local paths in ``input.url``, ``input.cache``, ``output.url`` and
    ``file.py:function`` references (hooks, a loader resolver, ``preprocess.fit`` or
    ``fit.method``, ``preprocess.correction``) are made absolute against the file's folder;
    URLs with a protocol (``s3://``, ``memory://``) are left alone.

    Parameters
    ----------
    path : str or os.PathLike
        The pipeline file.

    Returns
    -------
    PipelineConfig
        The validated configuration.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ConfigError
        If the file is larger than :data:`MAX_PIPELINE_FILE_BYTES` (1 MiB; refused after
        reading no more than that), is not UTF-8, has YAML aliases that expand to more than
        :data:`MAX_PIPELINE_VALUES` values, cannot be parsed or does not validate: one line
        per problem, each naming the file, the dotted field path, what was wrong and, for
        unknown names, the closest known one.

    See Also
    --------
    validate_config : the same for an already parsed mapping.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "pipeline.toml").write_text('''
    ... name = "demo"
    ... input = {url = "data", pattern = "*.csv"}
    ... loader = {format = "photometry-csv"}
    ... output = {url = "out"}
    ... [preprocess]
    ... fit = "ols"
    ... filter = false
    ... ''')
    >>> config = load_config(folder / "pipeline.toml")
    >>> config.input.url == str(folder / "data"), config.preprocess.filter
    (True, None)
    """
    source = os.fspath(path)
    file = Path(source)
    suffix = file.suffix.lower()
    if suffix not in (".yaml", ".yml", ".toml"):
        raise ConfigError(
            f"{source}: unsupported pipeline file type {file.suffix!r}; "
            "expected .yaml, .yml or .toml"
        )
    text = _read_text(file, source)
    data = _parse_toml(text, source) if suffix == ".toml" else _parse_yaml(text, source)
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{source}: expected a mapping of sections at the top level, got {_short(data)}"
        )
    data = _resolve_relative(dict(data), file.resolve().parent)
    logger.debug("loaded pipeline file %s", source)
    return validate_config(data, source=source)


# ---------------------------------------------------------------------------------------------
# Provenance and parameter hashes
# ---------------------------------------------------------------------------------------------


def _dump_loader(loader: Any) -> Any:
    if loader is None or isinstance(loader, str):
        return loader
    if isinstance(loader, list):
        return [_dump_loader(m) for m in loader]
    return {"format": loader.format, **loader_arguments(loader)}


def dump_config(config: PipelineConfig) -> dict[str, Any]:
    """The whole configuration as JSON-safe plain data (for provenance and hashes).

    Parameters
    ----------
    config : PipelineConfig
        The configuration.

    Returns
    -------
    dict
        Nested dicts, lists, strings, numbers, booleans and ``None`` only; loader mappings
        start with their ``format``. ``PipelineConfig.model_validate`` of it gives ``config``
        back.

    Examples
    --------
    >>> import json
    >>> config = PipelineConfig.model_validate({
    ...     "name": "demo", "input": {"url": "data"},
    ...     "loader": {"format": "photometry-csv"}, "output": {"url": "out"},
    ...     "cluster": {"memory_limit": "1GiB"}})
    >>> d = dump_config(config)
    >>> d["cluster"]["memory_limit"], list(d["loader"])[0]
    (1073741824, 'format')
    >>> PipelineConfig.model_validate(json.loads(json.dumps(d))) == config
    True
    """
    data = config.model_dump(mode="json")
    data["loader"] = _dump_loader(config.loader)
    if isinstance(config.input, list):
        for source, dumped in zip(config.input, data["input"], strict=True):
            dumped["loader"] = _dump_loader(source.loader)
    return data
