"""The run's hooks: user functions called at fixed points of an item's stages.

``post_load`` sees the ingested recording before any stage reads it, ``id_builder`` makes
the experiment id from it, ``post_preprocess`` and ``post_trials`` see a stage's output
before it is stored. Hooks named in a pipeline file are imported only because the file
names them; hooks given from Python (in the config's ``hooks`` or ``run(hooks=...)``,
lambdas included) are used as they are. They travel to the workers by value.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import cloudpickle
import xarray as xr

from neurobatch.config import PipelineConfig, by_value, resolve_object
from neurobatch.errors import NeurobatchError

logger = logging.getLogger(__name__)

__all__ = ["HOOK_NAMES", "Hooks", "apply_hook", "resolve_hooks"]

#: The hooks a run accepts, in the order they are called on an item.
HOOK_NAMES = ("post_load", "id_builder", "post_preprocess", "post_trials")


class Hooks(dict[str, Callable[..., Any]]):
    """The run's hooks; they travel to the workers through cloudpickle.

    Dask pickles a task's arguments with the standard pickle first, which stores a function
    by reference; a worker cannot import a hook loaded from a file (or a test module).
    cloudpickle ships those functions by value (see :func:`neurobatch.config.import_object`).
    """

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        return _load_hooks, (cloudpickle.dumps(dict(self)),)


def _load_hooks(payload: bytes) -> Hooks:
    return Hooks(cloudpickle.loads(payload))


def resolve_hooks(
    config: PipelineConfig, overrides: Mapping[str, Callable[..., Any] | None] | None
) -> Hooks:
    """The pipeline file's hooks, imported, with the caller's overrides.

    Parameters
    ----------
    config : neurobatch.config.PipelineConfig
        The pipeline file.
    overrides : mapping of str to callable or None, optional
        Hooks by name; None removes the file's hook of that name.

    Returns
    -------
    Hooks

    Raises
    ------
    neurobatch.errors.NeurobatchError
        If an override names an unknown hook.

    Examples
    --------
    >>> config = PipelineConfig.model_validate({"name": "h", "input": {"url": "d"},
    ...     "loader": {"format": "photometry-csv"}, "output": {"url": "o"}})
    >>> sorted(resolve_hooks(config, {"id_builder": str}))
    ['id_builder']
    >>> resolve_hooks(config, {"post_laod": str})
    Traceback (most recent call last):
    ...
    neurobatch.errors.NeurobatchError: unknown hook 'post_laod'; expected one of post_load, id_builder, post_preprocess, post_trials
    """
    hooks = Hooks()
    for name in HOOK_NAMES:
        target = getattr(config.hooks, name)
        if target is not None:
            hooks[name] = resolve_object(target)
    for name, hook in (overrides or {}).items():
        if name not in HOOK_NAMES:
            raise NeurobatchError(f"unknown hook {name!r}; expected one of {', '.join(HOOK_NAMES)}")
        if hook is None:
            hooks.pop(name, None)
        else:
            hooks[name] = by_value(hook)
    return hooks


def apply_hook(hooks: Mapping[str, Callable[..., Any]], name: str, ds: xr.Dataset) -> xr.Dataset:
    """``hooks[name](ds)``, or ``ds`` when there is no such hook or it returns None.

    Raises
    ------
    TypeError
        If the hook returns something other than a Dataset or None.

    Examples
    --------
    >>> ds = xr.Dataset(attrs={"subject": "m1"})
    >>> apply_hook({"post_load": lambda d: d.assign_attrs(subject="m2")}, "post_load", ds).attrs
    {'subject': 'm2'}
    >>> apply_hook({}, "post_load", ds) is ds
    True
    """
    hook = hooks.get(name)
    if hook is None:
        return ds
    logger.info("running hook %s (%s)", name, getattr(hook, "__qualname__", hook))
    result = hook(ds)
    if result is None:
        return ds
    if not isinstance(result, xr.Dataset):
        raise TypeError(
            f"hook {name} returned {type(result).__name__}; expected an xarray.Dataset or None"
        )
    return result
