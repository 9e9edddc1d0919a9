"""The per-trial columns of a trials store: their kinds, promotions, missing values and order.

Private to :mod:`neurobatch.io.trials_store`, whose module documentation states the rules
(columns outer-joined across items, missing values, type promotions, the columns' order).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import xarray as xr
from numpy.typing import NDArray

from neurobatch.io.zarr import _STRING, _is_string_dtype, _to_strings

TRIAL_DIM = "trial"
REL_TIME = "rel_time"

Kind = Literal["b", "i", "f", "U"]
_DTYPES: dict[str, np.dtype[Any]] = {
    "b": np.dtype(bool),
    "i": np.dtype(np.int64),
    "f": np.dtype(np.float64),
    "U": np.dtype(_STRING),
}


@dataclass(frozen=True)
class _Column:
    """A per-trial variable: its dimensions, value kind and whether it is a coordinate."""

    dims: tuple[str, ...]
    kind: Kind
    coord: bool


def _kind(dtype: np.dtype[Any], name: str) -> Kind:
    if dtype.kind == "b":
        return "b"
    if dtype.kind in "iu":
        return "i"
    if dtype.kind == "f":
        return "f"
    if _is_string_dtype(dtype):
        return "U"
    raise TypeError(
        f"per-trial variable {name!r} has dtype {dtype}; expected bool, integer, float or string"
    )


def _promote(stored: Kind | None, new: Kind | None, *, n_stored: int, n_new: int) -> Kind:
    """Return the kind that holds both sides, with missing values where one side lacks it."""
    if stored is not None and new is not None:
        if stored == new:
            return stored
        return "U" if "U" in (stored, new) else "f"
    present = stored if stored is not None else new
    if present is None:
        raise ValueError("a column must be present on at least one side")
    lacking = n_new if stored is not None else n_stored
    if lacking == 0 or present in ("f", "U"):
        return present
    return "f"


def _convert(values: NDArray[Any], kind: Kind) -> NDArray[Any]:
    """Return ``values`` as the dtype of ``kind`` (numbers to float, anything to strings)."""
    if kind == "U":
        if values.dtype.kind == "b":
            return np.array([str(bool(v)) for v in values.ravel()], dtype=_STRING).reshape(
                values.shape
            )
        return _to_strings(values)
    return values.astype(_DTYPES[kind], copy=False)


def _missing(kind: Kind, shape: tuple[int, ...]) -> NDArray[Any]:
    if kind == "U":
        return np.full(shape, "", dtype=_STRING)
    if kind == "f":
        return np.full(shape, np.nan)
    raise ValueError(f"a {_DTYPES[kind]} column has no missing value")


def _fill_value(kind: Kind) -> Any:
    return {"b": False, "i": 0, "f": np.nan, "U": ""}[kind]


def _validate_trials(trials: xr.Dataset, url: str) -> dict[str, _Column]:
    if TRIAL_DIM not in trials.dims or REL_TIME not in trials.dims:
        raise ValueError(
            f"cannot append to {url}: a Trials dataset needs dimensions {TRIAL_DIM!r} and "
            f"{REL_TIME!r}, got {sorted(map(str, trials.dims))}"
        )
    if REL_TIME not in trials.coords or trials[REL_TIME].dims != (REL_TIME,):
        raise ValueError(
            f"cannot append to {url}: the Trials dataset has no coordinate {REL_TIME!r}"
        )
    if trials.sizes[REL_TIME] < 1:
        raise ValueError(f"cannot append to {url}: the Trials dataset's {REL_TIME!r} is empty")
    if not any(v.dims == (TRIAL_DIM, REL_TIME) for v in trials.data_vars.values()):
        raise ValueError(
            f"cannot append to {url}: the Trials dataset has no ({TRIAL_DIM!r}, {REL_TIME!r}) "
            "data variable (the processed signal, e.g. 'dff')"
        )
    columns: dict[str, _Column] = {}
    for name, variable in trials.variables.items():
        if name == REL_TIME:
            continue
        if variable.dims not in ((TRIAL_DIM,), (TRIAL_DIM, REL_TIME)):
            raise ValueError(
                f"cannot append to {url}: variable {name!r} has dimensions {variable.dims}; "
                f"expected ({TRIAL_DIM!r},) or ({TRIAL_DIM!r}, {REL_TIME!r})"
            )
        columns[str(name)] = _Column(
            dims=tuple(map(str, variable.dims)),
            kind=_kind(variable.dtype, str(name)),
            coord=name in trials.coords,
        )
    return columns


def _dimension_names(meta: Any) -> tuple[str, ...]:
    """An array's dimension names from its metadata: Zarr 3's own field, or Zarr 2's
    ``_ARRAY_DIMENSIONS`` attribute (xarray's convention)."""
    names = getattr(meta, "dimension_names", None)
    if names is None:
        names = meta.attributes.get("_ARRAY_DIMENSIONS")
    return tuple(str(name) for name in names or ())


def _merged_order(stored: list[str], new: list[str]) -> list[str]:
    """The columns of both lists: ``stored``'s order, each column that only ``new`` has
    placed right after the column before it in ``new`` (first when none is before it).

    Examples
    --------
    >>> _merged_order(["trial_num", "cue", "item_id"], ["trial_num", "cue", "shock", "item_id"])
    ['trial_num', 'cue', 'shock', 'item_id']
    """
    order = list(stored)
    previous: str | None = None
    for name in new:
        if name not in order:
            order.insert(0 if previous is None else order.index(previous) + 1, name)
        previous = name
    return order


def _stored_columns(
    metadata: Mapping[str, Any], group_attrs: Mapping[str, Any]
) -> dict[str, _Column]:
    coords: set[str] = set(str(group_attrs.get("coordinates", "")).split())
    for meta in metadata.values():
        coords.update(str(meta.attributes.get("coordinates", "")).split())
    columns: dict[str, _Column] = {}
    for name, meta in metadata.items():
        if name == REL_TIME or "/" in name:
            continue
        dims = _dimension_names(meta)
        columns[name] = _Column(
            dims=dims, kind=_kind(meta.dtype.to_native_dtype(), name), coord=name in coords
        )
    return columns


def _plan(
    item: xr.Dataset,
    names: list[str],
    stored: Mapping[str, _Column],
    columns: Mapping[str, _Column],
    url: str,
    *,
    n_stored: int,
) -> tuple[dict[str, Kind], dict[str, NDArray[Any]]]:
    """The kind of every column after the append, and the new trials' values in it.

    Every check of the append is made here, before the store changes.
    """
    n_new = int(item.sizes[TRIAL_DIM])
    n_rel = int(item.sizes[REL_TIME])
    kinds: dict[str, Kind] = {}
    values: dict[str, NDArray[Any]] = {}
    for name in names:
        old, new = stored.get(name), columns.get(name)
        dims = old.dims if old is not None else columns[name].dims
        if old is not None and new is not None and old.dims != new.dims:
            raise ValueError(
                f"cannot append to {url}: variable {name!r} has dimensions {new.dims} in the "
                f"new item but {old.dims} in the store"
            )
        kinds[name] = _promote(
            old.kind if old else None, new.kind if new else None, n_stored=n_stored, n_new=n_new
        )
        if len(dims) == 2 and old is not None and kinds[name] != old.kind:
            raise ValueError(
                f"cannot append to {url}: the 2-D variable {name!r} is {_DTYPES[old.kind]} in "
                f"the store and cannot become {_DTYPES[kinds[name]]}; expected float data"
            )
        shape = (n_new, n_rel) if len(dims) == 2 else (n_new,)
        values[name] = (
            _convert(np.asarray(item[name].values), kinds[name])
            if new is not None
            else _missing(kinds[name], shape)
        )
    return kinds, values
