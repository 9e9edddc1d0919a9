"""The ``loader`` section: the loader formats, and one mapping model per format.

:data:`LOADER_FORMATS` names every loader format with its arguments model and whether it
reads files or folders; :mod:`neurobatch.io.loaders` pairs each with its load function. A
pipeline file's ``loader`` is a mapping with ``format`` (validated by that format's arguments
model plus ``format``), a list of such mappings, or a ``module:function`` resolver.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal, NamedTuple, TypeAlias, Union

from pydantic import BaseModel, Discriminator, Field, Tag, TypeAdapter, create_model

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
from neurobatch.config.lazy_arguments import (
    NpyArguments,
    NWBArguments,
    RawBinaryArguments,
    RGCPickleArguments,
    SpikeGLXArguments,
    ZarrArguments,
)
from neurobatch.config.objects import ObjectRef

__all__ = ["LOADER_FORMATS", "LoaderField", "LoaderFormat", "LoaderMapping"]


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


#: Every loader format by name: its arguments model and target.
LOADER_FORMATS: dict[str, LoaderFormat] = {
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


# ---------------------------------------------------------------------------------------------
# Loader mappings: one model per registered format, the format's arguments plus `format`
# ---------------------------------------------------------------------------------------------


def _class_name(fmt: str) -> str:
    words = re.split(r"[^A-Za-z0-9]+", fmt)
    return "".join(word[:1].upper() + word[1:] for word in words if word) + "Loader"


def _build_loader_models() -> dict[str, type[BaseModel]]:
    models: dict[str, type[BaseModel]] = {}
    for fmt, spec in sorted(LOADER_FORMATS.items()):
        name = _class_name(fmt)
        model = create_model(
            name,
            __base__=spec.arguments,
            __module__=__name__,
            __doc__=f"Loader arguments of the {fmt!r} format, with ``format: {fmt}``.",
            format=(Literal[fmt], Field(description="The input format.")),
        )
        # module-level names make the models picklable (a config travels to the workers)
        globals()[name] = model
        models[fmt] = model
    return models


_LOADER_MODELS = _build_loader_models()
_FORMAT_TAG = "@"


def _format_tag(value: Any) -> str | None:
    if isinstance(value, Mapping) and "format" in value:
        return _FORMAT_TAG + str(value["format"])
    if isinstance(value, BaseModel) and hasattr(value, "format"):
        return _FORMAT_TAG + str(value.format)
    return None


def _loader_tag(value: Any) -> str | None:
    if isinstance(value, str):
        return "@resolver"
    if isinstance(value, list | tuple):
        return "@list"
    if isinstance(value, Mapping | BaseModel):
        return "@mapping"
    return None


def _tagged_union(members: Sequence[Any]) -> Any:
    # a Union of one member collapses to that member, which a Discriminator rejects
    choices = (*members, Annotated[None, Tag("@never")]) if len(members) == 1 else tuple(members)
    return Union[choices]  # noqa: UP007


if TYPE_CHECKING:
    LoaderMapping: TypeAlias = BaseModel
    LoaderField: TypeAlias = BaseModel | list[BaseModel] | str
else:
    LoaderMapping = Annotated[
        _tagged_union(
            [Annotated[model, Tag(_FORMAT_TAG + fmt)] for fmt, model in _LOADER_MODELS.items()]
        ),
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
        ],
        Discriminator(
            _loader_tag,
            custom_error_type="loader_type",
            custom_error_message=(
                "expected a mapping with a 'format' key, a list of such mappings, or a "
                "'module:function' resolver"
            ),
        ),
    ]

_LOADER_ADAPTER: TypeAdapter[Any] = TypeAdapter(LoaderField)
