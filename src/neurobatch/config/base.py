"""What every section of the pipeline file shares: the base model and small field types."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Annotated, Any, Literal, Union

from dask.utils import parse_bytes
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    WithJsonSchema,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

__all__ = ["Bounds", "EventNames", "Kind", "MemorySize", "NameList"]

#: What a pipeline does with its items.
Kind = Literal["photometry", "filter", "sta", "custom"]


def _parse_memory(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return parse_bytes(value)
        except (ValueError, TypeError) as e:
            raise ValueError(
                f"expected a memory size such as '2GiB', '512MB' or a number of bytes, "
                f"got {value!r}"
            ) from e
    return value


MemorySize = Annotated[
    int,
    BeforeValidator(_parse_memory),
    Field(gt=0),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "exclusiveMinimum": 0},
                {"type": "string", "description": "a size such as '2GiB' or '512MB'"},
            ]
        }
    ),
]
"""A memory size in bytes; strings such as ``"2GiB"`` are parsed by ``dask.utils.parse_bytes``."""


def _one_or_many_tag(value: Any) -> str | None:
    if isinstance(value, str):
        return "@one"
    if isinstance(value, list | tuple):
        return "@many"
    return None


EventNames = Annotated[
    Union[Annotated[str, Tag("@one")], Annotated[list[str], Tag("@many")]],  # noqa: UP007
    Discriminator(
        _one_or_many_tag,
        custom_error_type="event_names_type",
        custom_error_message="expected an event name or a list of event names",
    ),
]


def _as_list(value: Any) -> Any:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return value


NameList = Annotated[
    list[str],
    BeforeValidator(_as_list),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}),
]
"""A list of names; a single string is a list of one."""

Bounds = tuple[float, float]


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        allow_inf_nan=False,
        use_attribute_docstrings=True,
        validate_assignment=True,
    )


def _problem(loc: tuple[str | int, ...], kind: str, message: str, value: Any) -> InitErrorDetails:
    return InitErrorDetails(type=PydanticCustomError(kind, message), loc=loc, input=value)


def _raise_problems(title: str, problems: list[InitErrorDetails]) -> None:
    if problems:
        raise ValidationError.from_exception_data(title, problems)


def _check_bounds(value: Bounds | None, *, strict: bool = True) -> Bounds | None:
    if value is None:
        return None
    lo, hi = value
    if lo > hi or (strict and lo == hi):
        relation = "lo < hi" if strict else "lo <= hi"
        raise ValueError(f"expected [lo, hi] with {relation}, got [{lo:g}, {hi:g}]")
    return value


def _suggest(name: Any, known: Iterable[str]) -> str | None:
    matches = difflib.get_close_matches(str(name), list(known), n=1, cutoff=0.6)
    return matches[0] if matches else None


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
