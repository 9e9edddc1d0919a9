"""The ``loader`` section: the loader formats, and one mapping model per format.

:data:`LOADER_FORMATS` names every loader format with its arguments model and whether it
reads files or folders: the built-in formats, then those that installed packages declare
in the entry-point group ``neurobatch.loaders`` (:mod:`neurobatch.config.plugins`), each
imported when its format is first used. :mod:`neurobatch.io.loaders` pairs each with its
load function. A pipeline file's ``loader`` is a mapping with ``format`` (validated by that
format's arguments model plus ``format``), a list of such mappings, or a ``module:function``
resolver (from Python: the function itself).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal, NamedTuple, TypeAlias, Union

from pydantic import (
    BaseModel,
    Discriminator,
    Field,
    PlainValidator,
    Tag,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    create_model,
)
from pydantic_core import PydanticCustomError

from neurobatch.config.acquisition_arguments import (
    DoricArguments,
    NeurophotometricsArguments,
    NWBPhotometryArguments,
    PyPhotometryArguments,
)
from neurobatch.config.arguments import (
    LoaderArguments,
    PhotometryCSVArguments,
    PhotometryParquetArguments,
    TDTArguments,
)
from neurobatch.config.base import _problem
from neurobatch.config.lazy_arguments import (
    NpyArguments,
    NWBArguments,
    RawBinaryArguments,
    RGCPickleArguments,
    SpikeGLXArguments,
    ZarrArguments,
)
from neurobatch.config.objects import CallableRef, ObjectRef
from neurobatch.config.plugins import load_plugin, plugin_entry_points
from neurobatch.errors import ConfigError

__all__ = ["LOADER_FORMATS", "LoaderField", "LoaderFormat", "LoaderMapping"]

logger = logging.getLogger(__name__)


class LoaderFormat(NamedTuple):
    """One loader format: its arguments model and whether each input is a file or a folder.

    Examples
    --------
    >>> LOADER_FORMATS["tdt"].target, LOADER_FORMATS["tdt"].arguments.__name__
    ('folder', 'TDTArguments')
    """

    arguments: type[LoaderArguments]
    """Its pydantic arguments model; ``event_names()`` lists the events the loader provides."""
    target: Literal["file", "folder"]
    """Whether each input is a file or a folder."""


#: The built-in loader formats by name: their arguments model and target.
_BUILTIN_FORMATS: dict[str, LoaderFormat] = {
    "photometry-csv": LoaderFormat(PhotometryCSVArguments, "file"),
    "photometry-parquet": LoaderFormat(PhotometryParquetArguments, "file"),
    "tdt": LoaderFormat(TDTArguments, "folder"),
    "doric": LoaderFormat(DoricArguments, "file"),
    "neurophotometrics": LoaderFormat(NeurophotometricsArguments, "file"),
    "pyphotometry": LoaderFormat(PyPhotometryArguments, "file"),
    "nwb-photometry": LoaderFormat(NWBPhotometryArguments, "file"),
    "spikeglx": LoaderFormat(SpikeGLXArguments, "file"),
    "raw-binary": LoaderFormat(RawBinaryArguments, "file"),
    "nwb": LoaderFormat(NWBArguments, "file"),
    "npy": LoaderFormat(NpyArguments, "file"),
    "zarr": LoaderFormat(ZarrArguments, "folder"),
    "rgc-pickle": LoaderFormat(RGCPickleArguments, "file"),
}


_shadowed: set[str] = set()


def _plugin_names() -> list[str]:
    """The formats installed packages declare, but for those of a built-in's name."""
    names = []
    for name in plugin_entry_points():
        if name not in _BUILTIN_FORMATS:
            names.append(name)
        elif name not in _shadowed:
            _shadowed.add(name)
            logger.warning(
                "a package declares loader format %r in group 'neurobatch.loaders', which is "
                "a built-in format's name: the built-in is used",
                name,
            )
    return names


class _LoaderFormats(Mapping[str, LoaderFormat]):
    """The built-in formats, then the plugins' (each imported when it is looked up).

    Membership and iteration list the names only; looking a plugin up imports it
    (:func:`~neurobatch.config.plugins.load_plugin`: a ConfigError in one line when that
    fails).
    """

    def __getitem__(self, fmt: str) -> LoaderFormat:
        builtin = _BUILTIN_FORMATS.get(fmt)
        if builtin is not None:
            return builtin
        plugin = load_plugin(fmt)
        return LoaderFormat(plugin.arguments, plugin.target)

    def __contains__(self, fmt: object) -> bool:
        return fmt in _BUILTIN_FORMATS or fmt in _plugin_names()

    def __iter__(self) -> Iterator[str]:
        yield from _BUILTIN_FORMATS
        yield from _plugin_names()

    def __len__(self) -> int:
        return len(_BUILTIN_FORMATS) + len(_plugin_names())


#: Every loader format by name: its arguments model and target. The built-in formats come
#: first, then the formats of installed plugins, imported when looked up.
LOADER_FORMATS: Mapping[str, LoaderFormat] = _LoaderFormats()


# ---------------------------------------------------------------------------------------------
# Loader mappings: one model per format, the format's arguments plus `format`
# ---------------------------------------------------------------------------------------------


def _class_name(fmt: str) -> str:
    words = re.split(r"[^A-Za-z0-9]+", fmt)
    return "".join(word[:1].upper() + word[1:] for word in words if word) + "Loader"


def _plugin_class_name(fmt: str) -> str:
    return "Plugin" + _class_name(fmt)


def _mapping_model(fmt: str, arguments: type[BaseModel], name: str) -> type[BaseModel]:
    model = create_model(
        name,
        __base__=arguments,
        __module__=__name__,
        __doc__=f"Loader arguments of the {fmt!r} format, with ``format: {fmt}``.",
        format=(Literal[fmt], Field(description="The input format.")),
    )
    # module-level names make the models picklable (a config travels to the workers)
    globals()[name] = model
    return model


_LOADER_MODELS: dict[str, type[BaseModel]] = {
    fmt: _mapping_model(fmt, spec.arguments, _class_name(fmt))
    for fmt, spec in sorted(_BUILTIN_FORMATS.items())
}
_FORMAT_TAG = "@"
_PLUGIN_TAG = "@<plugin>"


def _format_of(value: Any) -> str | None:
    if isinstance(value, Mapping) and "format" in value:
        return str(value["format"])
    if isinstance(value, BaseModel) and hasattr(value, "format"):
        return str(value.format)
    return None


def _format_tag(value: Any) -> str | None:
    fmt = _format_of(value)
    if fmt is None:
        return None
    return _FORMAT_TAG + fmt if fmt in _BUILTIN_FORMATS else _PLUGIN_TAG


_plugin_adapters: dict[str, TypeAdapter[Any]] = {}
_models_lock = threading.Lock()


def _plugin_model(fmt: str) -> type[BaseModel]:
    """The mapping model of a plugin's format, built when first asked for (then cached)."""
    with _models_lock:
        model = _LOADER_MODELS.get(fmt)
        if model is not None:
            return model
        plugin = load_plugin(fmt)
        name = _plugin_class_name(fmt)
        alike = [other for other in _plugin_names() if _plugin_class_name(other) == name]
        if len(alike) > 1:
            raise ConfigError(
                f"loader formats {', '.join(map(repr, alike))} of group 'neurobatch.loaders' "
                "differ only in case or punctuation; expected names that differ in letters "
                "or digits"
            )
        model = _mapping_model(fmt, plugin.arguments, name)
        _LOADER_MODELS[fmt] = model  # the errors' suggestions look arguments up here
        return model


def _plugin_adapter(fmt: str) -> TypeAdapter[Any]:
    adapter = _plugin_adapters.get(fmt)
    if adapter is None:
        # a tagged union of one (and a member never chosen), so that errors are located
        # under '@<format>' as the built-ins' are
        choices: Any = (
            Annotated[_plugin_model(fmt), Tag(_FORMAT_TAG + fmt)],
            Annotated[None, Tag("@never")],
        )
        tagged: Any = Annotated[
            Union[choices],  # noqa: UP007
            Discriminator(lambda _: _FORMAT_TAG + fmt),
        ]
        adapter = TypeAdapter(tagged)
        _plugin_adapters[fmt] = adapter
    return adapter


def _validate_plugin(value: Any) -> Any:
    """Validate a mapping whose format is not built in, by the plugin that declares it."""
    fmt = str(_format_of(value))
    try:
        adapter = _plugin_adapter(fmt)
    except KeyError:
        raise PydanticCustomError("loader_format_missing", "unknown loader format") from None
    except ConfigError as e:
        problem = _problem(("format",), "loader_plugin", str(e), fmt)
        raise ValidationError.from_exception_data("LoaderMapping", [problem]) from None
    return adapter.validate_python(value)


def __getattr__(name: str) -> Any:
    """A plugin format's mapping model by its class name: how a worker unpickles one."""
    if name.startswith("Plugin"):
        for fmt in _plugin_names():
            if _plugin_class_name(fmt) == name:
                return _plugin_model(fmt)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _loader_tag(value: Any) -> str | None:
    if isinstance(value, str):
        return "@resolver"
    if callable(value) and not isinstance(value, BaseModel | type):
        return "@function"
    if isinstance(value, list | tuple):
        return "@list"
    if isinstance(value, Mapping | BaseModel):
        return "@mapping"
    return None


_PLUGIN_MAPPING = Annotated[
    Any,
    PlainValidator(_validate_plugin),
    WithJsonSchema(
        {
            "type": "object",
            "required": ["format"],
            "properties": {"format": {"type": "string", "not": {"enum": list(_BUILTIN_FORMATS)}}},
            "description": "The arguments of a loader plugin's format (group neurobatch.loaders).",
        }
    ),
    Tag(_PLUGIN_TAG),
]


if TYPE_CHECKING:
    LoaderMapping: TypeAlias = BaseModel
    LoaderField: TypeAlias = BaseModel | list[BaseModel] | str | Callable[..., Any]
else:
    LoaderMapping = Annotated[
        Union[  # noqa: UP007
            tuple(
                [Annotated[model, Tag(_FORMAT_TAG + fmt)] for fmt, model in _LOADER_MODELS.items()]
                + [_PLUGIN_MAPPING]
            )
        ],
        Discriminator(
            _format_tag,
            custom_error_type="loader_format_missing",
            custom_error_message="expected a mapping with a 'format' key",
        ),
    ]
    LoaderField = Annotated[
        Union[  # noqa: UP007
            Annotated[LoaderMapping, Tag("@mapping")],
            Annotated[list[LoaderMapping], Tag("@list")],
            Annotated[ObjectRef, Tag("@resolver")],
            Annotated[CallableRef, Tag("@function")],
        ],
        Discriminator(
            _loader_tag,
            custom_error_type="loader_type",
            custom_error_message=(
                "expected a mapping with a 'format' key, a list of such mappings, or a "
                "'module:function' resolver (from Python: a function)"
            ),
        ),
    ]

_LOADER_ADAPTER: TypeAdapter[Any] = TypeAdapter(LoaderField)
