"""Errors for people: one line per pydantic error, with the dotted path and the closest name."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from neurobatch.config.base import _short, _suggest
from neurobatch.config.cluster import _CLUSTER_MODELS
from neurobatch.config.loaders import _FORMAT_TAG, _LOADER_MODELS, LOADER_FORMATS

__all__ = ["config_error_lines"]


def _annotation_models(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    models: list[type[BaseModel]] = []
    for arg in getattr(annotation, "__args__", ()) or ():
        models.extend(_annotation_models(arg))
    return list(dict.fromkeys(models))


def _model_at(start: type[BaseModel] | None, loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The model class validated at ``loc`` (the parent of an unknown key), if one is known."""
    model = start
    for part in loc:
        if isinstance(part, str) and part.startswith(_FORMAT_TAG):
            if part in _CLUSTER_MODELS:
                model = _CLUSTER_MODELS[part]
            elif part[1:] in _LOADER_MODELS:
                model = _LOADER_MODELS[part[1:]]
            continue
        if isinstance(part, int):
            continue
        if model is None or part not in model.model_fields:
            model = None
            continue
        candidates = _annotation_models(model.model_fields[part].annotation)
        model = candidates[0] if len(candidates) == 1 else None
    return model


def _display_path(loc: Sequence[str | int]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part.startswith(_FORMAT_TAG):
            continue
        else:
            text += ("." if text else "") + part
    return text


def _loader_format(loc: Sequence[str | int]) -> str | None:
    fmt = None
    for part in loc:
        if isinstance(part, str) and part.startswith(_FORMAT_TAG) and part[1:] in LOADER_FORMATS:
            fmt = part[1:]
    return fmt


def _format_list() -> str:
    return ", ".join(repr(fmt) for fmt in sorted(LOADER_FORMATS))


def _describe(
    error: Mapping[str, Any], start: type[BaseModel] | None, prefix: tuple[str | int, ...]
) -> tuple[str, str]:
    """(dotted path, message) for one pydantic error; ``start`` is validated below ``prefix``."""
    own: tuple[str | int, ...] = tuple(error["loc"])
    loc = (*prefix, *own)
    kind: str = error["type"]
    value = error.get("input")
    ctx = error.get("ctx") or {}
    path = _display_path(loc)
    fmt = _loader_format(loc)

    if kind == "extra_forbidden":
        model = _model_at(start, own[:-1])
        known = [k for k in model.model_fields if k != "format"] if model is not None else []
        what = f"unknown argument of loader format {fmt!r}" if fmt else "unknown key"
        suggestion = _suggest(loc[-1], known)
        if suggestion:
            return path, f"{what}; did you mean {suggestion!r}?"
        if known:
            return path, f"{what}; expected one of {', '.join(repr(k) for k in known)}"
        return path, what
    if kind == "missing" and loc and isinstance(loc[-1], int):
        # every tuple of a pipeline file is a [lo, hi] pair
        return _display_path(loc[:-1]), f"expected [lo, hi], got {_short(value)}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return path, f"expected a mapping, got {_short(value)}"
    if kind == "missing":
        what = f"argument of loader format {fmt!r}" if fmt else "key"
        return path, f"required {what} is missing"
    if kind == "loader_format_missing" and isinstance(value, Mapping) and "format" in value:
        name = value["format"]
        message = f"unknown loader format {name!r}"
        suggestion = _suggest(name, LOADER_FORMATS)
        if suggestion:
            message += f"; did you mean {suggestion!r}?"
        return _join(path, "format"), f"{message} (known formats: {_format_list()})"
    if kind == "loader_format_missing":
        if isinstance(value, Mapping):
            return _join(path, "format"), f"required key is missing; one of {_format_list()}"
        return path, f"expected a mapping with a 'format' key, got {_short(value)}"
    if kind == "literal_error":
        options = re.findall(r"'((?:[^'\\]|\\.)*)'", str(ctx.get("expected", "")))
        message = f"got {_short(value)}; expected {ctx.get('expected', '')}"
        suggestion = _suggest(value, options) if isinstance(value, str) else None
        if suggestion:
            message += f"; did you mean {suggestion!r}?"
        return path, message
    message = str(error["msg"])
    for noise in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(noise)
    message = message[:1].lower() + message[1:]
    builtin = "url" in error and kind not in ("value_error", "assertion_error")
    if builtin:
        message += f" (got {_short(value)})"
    return path, message


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def config_error_lines(
    error: ValidationError,
    *,
    source: str,
    start: type[BaseModel] | None = None,
    prefix: tuple[str | int, ...] = (),
) -> list[str]:
    """One line per problem of a pydantic ``ValidationError``, for people.

    Parameters
    ----------
    error : pydantic.ValidationError
        What pydantic raised.
    source : str
        What the lines start with: the pipeline file, or the input a resolver ran for.
    start : type of BaseModel, optional
        The model that was validated (for the known keys behind suggestions); ``None`` for a
        loader mapping.
    prefix : tuple, optional
        A location to put before every error's own (``("loader",)`` for a resolver's result).

    Returns
    -------
    list of str
        ``"<source>: <dotted.path>: <what was wrong>"`` lines.

    Examples
    --------
    >>> from neurobatch.config import FilterConfig
    >>> try:
    ...     FilterConfig.model_validate({"cutof_hz": 3})
    ... except ValidationError as e:
    ...     print(config_error_lines(e, source="pipeline.yaml", start=FilterConfig,
    ...                              prefix=("preprocess", "filter"))[0])
    pipeline.yaml: preprocess.filter.cutof_hz: unknown key; did you mean 'cutoff_hz'?
    """
    lines = []
    for item in error.errors(include_url=True):
        path, message = _describe(item, start, prefix)
        lines.append(f"{source}: {path}: {message}" if path else f"{source}: {message}")
    return list(dict.fromkeys(lines))
