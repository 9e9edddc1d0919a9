"""Sidecar metadata: a JSON or YAML mapping found beside (or inside) each input.

A template such as ``{stem}.json`` names the sidecar relative to the input's folder (for a
folder input, inside the folder): ``experiment_1.json`` beside ``experiment_1.csv``, or
``annotation.yaml`` in each TDT block folder. YAML is read with ``yaml.safe_load`` only.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import posixpath
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any, Literal

import fsspec
import yaml
from fsspec.implementations.local import LocalFileSystem

from neurobatch.config.arguments import LoaderArguments
from neurobatch.errors import ConfigError, InputError
from neurobatch.io.loaders._common import note_read

logger = logging.getLogger(__name__)

__all__ = ["load_annotation", "read_sidecar", "resolve_sidecar"]

_SUFFIXES: dict[str, Literal["json", "yaml"]] = {".json": "json", ".yaml": "yaml", ".yml": "yaml"}


def _display(fs: Any, path: str) -> str:
    return path if isinstance(fs, LocalFileSystem) else str(fs.unstrip_protocol(path))


def resolve_sidecar(
    input_url: str,
    template: str,
    *,
    target: Literal["file", "folder"] = "file",
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """The URL of an input's sidecar, from a template.

    The template is formatted with ``stem`` (the input's name without its last suffix),
    ``name`` (the input's name) and ``parent`` (the name of the folder that holds the
    input). A relative result is taken relative to the input's folder, or for a folder
    input (``target="folder"``) relative to the input itself; an absolute path or a URL is
    used as it is.

    Parameters
    ----------
    input_url : str
        The input file or folder, any fsspec URL or local path.
    template : str
        The sidecar template, e.g. ``"{stem}.json"`` or ``"annotation.yaml"``.
    target : {"file", "folder"}, default "file"
        Whether the input is a file or a folder.
    storage_options : mapping, optional
        Passed to fsspec.

    Returns
    -------
    str
        The sidecar's URL (a plain path for local inputs).

    Raises
    ------
    neurobatch.errors.ConfigError
        If the template uses a field other than ``stem``, ``name`` and ``parent``.

    Examples
    --------
    >>> resolve_sidecar("memory://lab/day1/experiment_1.csv", "{stem}.json")
    'memory:///lab/day1/experiment_1.json'
    >>> resolve_sidecar("memory://lab/day1/block-3", "{parent}.yaml", target="folder")
    'memory:///lab/day1/block-3/day1.yaml'
    """
    fs, path = fsspec.core.url_to_fs(input_url, **dict(storage_options or {}))
    path = str(path).rstrip("/") or "/"
    pure = PurePosixPath(path)
    folder = path if target == "folder" else posixpath.dirname(path)
    try:
        relative = template.format(
            stem=pure.stem, name=pure.name, parent=PurePosixPath(posixpath.dirname(path)).name
        )
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(
            f"sidecar template {template!r} is malformed ({e!r}); it may use {{stem}}, "
            "{name} and {parent}"
        ) from None
    if "://" in relative:
        return relative
    resolved = relative if relative.startswith("/") else posixpath.join(folder, relative)
    return _display(fs, posixpath.normpath(resolved))


def _jsonable(value: Any, *, where: str, sidecar: str) -> Any:
    """Sidecar data as JSON-safe values: dates become ISO strings, keys strings."""
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, dt.date | dt.datetime | dt.time):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {
            str(k): _jsonable(v, where=f"{where}.{k}" if where else str(k), sidecar=sidecar)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_jsonable(v, where=f"{where}[{i}]", sidecar=sidecar) for i, v in enumerate(value)]
    raise InputError(
        f"sidecar {sidecar!r}: {where or 'its content'} is a {type(value).__name__}; expected "
        "JSON-like values (strings, numbers, booleans, lists, mappings)"
    )


def _parse(text: str, fmt: Literal["json", "yaml"], sidecar: str) -> Any:
    if fmt == "json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(
                f"sidecar {sidecar!r} is not valid JSON: line {e.lineno} column {e.colno}: {e.msg}"
            ) from e
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = "" if mark is None else f"line {mark.line + 1} column {mark.column + 1}: "
        problem = " ".join(str(e.problem or e.context or "").split())
        raise InputError(f"sidecar {sidecar!r} is not valid YAML: {where}{problem}") from e
    except yaml.YAMLError as e:
        reason = " ".join(str(e).split())
        raise InputError(f"sidecar {sidecar!r} is not valid YAML: {reason}") from e


def read_sidecar(
    input_url: str,
    template: str,
    *,
    fmt: Literal["auto", "json", "yaml"] = "auto",
    key: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    target: Literal["file", "folder"] = "file",
) -> dict[str, Any]:
    """Read the sidecar metadata of one input: a JSON or YAML mapping.

    Parameters
    ----------
    input_url : str
        The input file or folder, any fsspec URL or local path.
    template : str
        The sidecar template (see :func:`resolve_sidecar`), e.g. ``"{stem}.json"``.
    fmt : {"auto", "json", "yaml"}, default "auto"
        The sidecar's format; ``auto`` goes by its suffix (``.json``, ``.yaml``, ``.yml``).
        YAML is read with ``yaml.safe_load`` only.
    key : str, optional
        Select this top-level key of the sidecar (PhoPro's ``parent_key``).
    storage_options : mapping, optional
        Passed to fsspec.
    target : {"file", "folder"}, default "file"
        Whether the input is a file or a folder (a folder's sidecar lies inside it).

    Returns
    -------
    dict
        The sidecar's mapping, JSON-safe (YAML dates become ISO strings).

    Raises
    ------
    neurobatch.errors.InputError
        If the sidecar is missing, is not valid JSON/YAML (with the line and column), is not
        a mapping, or lacks ``key``.
    neurobatch.errors.ConfigError
        If the template is malformed or ``fmt="auto"`` cannot tell the format.

    Examples
    --------
    >>> import fsspec
    >>> fs = fsspec.filesystem("memory")
    >>> fs.pipe("/sidecar-doc/exp_1.yaml", b"A: {subject: m1, date: 2024-05-01}\\n")
    >>> read_sidecar("memory://sidecar-doc/exp_1.csv", "{stem}.yaml", key="A")
    {'subject': 'm1', 'date': '2024-05-01'}
    >>> fs.pipe("/sidecar-doc/exp_2.json", b'{"subject": "m2",\\n "age" 60}')
    >>> read_sidecar("memory://sidecar-doc/exp_2.csv", "{stem}.json")
    Traceback (most recent call last):
    ...
    neurobatch.errors.InputError: sidecar 'memory:///sidecar-doc/exp_2.json' is not valid JSON: line 2 column 8: Expecting ':' delimiter
    """
    so = dict(storage_options or {})
    url = resolve_sidecar(input_url, template, target=target, storage_options=so)
    if fmt == "auto":
        suffix = PurePosixPath(url.split("?", 1)[0]).suffix.lower()
        if suffix not in _SUFFIXES:
            raise ConfigError(
                f"cannot tell the format of sidecar {url!r} from its suffix {suffix!r}; set "
                "the annotation format to json or yaml"
            )
        fmt = _SUFFIXES[suffix]
    logger.debug("reading %s sidecar %s of %s", fmt, url, input_url)
    note_read(url)
    try:
        with fsspec.open(url, "rb", **so) as f:
            raw = f.read()
    except FileNotFoundError:
        raise InputError(
            f"sidecar {url!r} of {input_url!r} does not exist (annotation template {template!r})"
        ) from None
    except IsADirectoryError:
        raise InputError(f"sidecar {url!r} of {input_url!r} is a folder, not a file") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"sidecar {url!r} is not UTF-8 text: {e.reason} at byte {e.start}") from e
    data = _parse(text, fmt, url)
    if key is not None:
        if not isinstance(data, Mapping):
            raise InputError(
                f"sidecar {url!r} holds {_kind(data)}, not a mapping, so it has no key {key!r}"
            )
        if key not in data:
            keys = ", ".join(repr(str(k)) for k in data) or "none"
            raise InputError(f"sidecar {url!r} has no top-level key {key!r} (its keys: {keys})")
        data = data[key]
        if not isinstance(data, Mapping):
            raise InputError(
                f"sidecar {url!r}: key {key!r} holds {_kind(data)}; expected a mapping"
            )
    elif not isinstance(data, Mapping):
        raise InputError(f"sidecar {url!r} holds {_kind(data)}; expected a mapping")
    result: dict[str, Any] = _jsonable(data, where="", sidecar=url)
    return result


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (an empty document)"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    name = type(value).__name__
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"


def load_annotation(
    input_url: str,
    arguments: LoaderArguments,
    *,
    target: Literal["file", "folder"],
    key: str | None,
    storage_options: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], str | None]:
    """The sidecar metadata a loader's arguments ask for, and the sidecar's URL.

    Parameters
    ----------
    input_url : str
        The input file or folder.
    arguments : LoaderArguments
        The loader's arguments (``annotation``, ``annotation_format``).
    target : {"file", "folder"}
        Whether the input is a file or a folder.
    key : str or None
        The top-level key to select (the loader's resolved ``annotation_key``).
    storage_options : mapping, optional
        Passed to fsspec.

    Returns
    -------
    tuple of (dict, str or None)
        The metadata (empty without ``annotation``) and the sidecar's URL (None without).

    Examples
    --------
    >>> from neurobatch.config.arguments import LoaderArguments
    >>> load_annotation("x.csv", LoaderArguments(), target="file", key=None)
    ({}, None)
    """
    if arguments.annotation is None:
        return {}, None
    so = dict(storage_options or {})
    url = resolve_sidecar(input_url, arguments.annotation, target=target, storage_options=so)
    metadata = read_sidecar(
        input_url,
        arguments.annotation,
        fmt=arguments.annotation_format,
        key=key,
        storage_options=so,
        target=target,
    )
    return metadata, url
