"""Loader plugins: input formats that other packages declare in the entry-point group
``neurobatch.loaders``.

A lab's package declares each of its formats in its ``pyproject.toml``::

    [project.entry-points."neurobatch.loaders"]
    mylab-csv = "mylab.loaders:loader"

where ``mylab.loaders.loader`` is a :class:`LoaderPlugin`: the format's pydantic arguments
model, its load function, and what it reads and returns. ``loader.format: mylab-csv`` then
works wherever a built-in format does (``validate``, ``discover``, ``run``, on every worker
process that can import the package). The built-in formats come first: a plugin of a
built-in's name is ignored, with a warning.

Entry points are only listed (names, no import) to tell the known formats apart; a plugin is
imported when its format is used, once per process, so that a broken plugin fails only the
pipelines that use it, with one line naming its entry point and the error.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Literal

from neurobatch.config.arguments import LoaderArguments
from neurobatch.errors import ConfigError

__all__ = ["ENTRY_POINT_GROUP", "LoaderPlugin", "load_plugin", "plugin_entry_points"]

logger = logging.getLogger(__name__)

#: The entry-point group in which packages declare loader formats.
ENTRY_POINT_GROUP = "neurobatch.loaders"

_TARGETS = ("file", "folder")
_KINDS = ("photometry", "ephys", "movie")


@dataclass(frozen=True)
class LoaderPlugin:
    """A loader format of another package, as its ``neurobatch.loaders`` entry point names it.

    Attributes
    ----------
    arguments : type of LoaderArguments
        The format's pydantic arguments model: a subclass of
        :class:`~neurobatch.config.arguments.LoaderArguments` (``extra="forbid"``, frozen;
        ``label``, ``annotation``, ``downsample``, ``sampling_tolerance`` and
        ``plausible_rate_hz`` come with it) whose fields are JSON-safe (they travel to the
        workers as JSON) and whose ``event_names()`` lists the events the loader provides.
    load : callable
        ``load(url, arguments, *, storage_options=None) -> xarray.Dataset``, called on the
        worker with an instance of ``arguments``; with ``chunked``, also ``chunk_memory=``
        (bytes per chunk).
    target : {"file", "folder"}, default "file"
        Whether each input is a file or a folder.
    kind : {"photometry", "ephys", "movie"}, default "photometry"
        What ``load`` returns (checked on every load): ``photometry``, the Recording of the
        built-in photometry loaders (``signal(time)``, optional ``isosbestic(time)``,
        float64 on a ``time`` coordinate in seconds, ``event_time(event)`` with coordinate
        ``event_name(event)``, ``attrs["sampling_rate"]``); ``ephys``,
        ``traces(time, channel)``; ``movie``, ``frames(frame, y, x)``.
    chunked : bool, default False
        Whether ``load`` reads lazily and takes ``chunk_memory``.
    check : callable, optional
        ``check(url, arguments, *, storage_options=None) -> None``, which ``neurobatch
        validate`` calls on every input: it reads no more than the input's header and raises
        :class:`~neurobatch.errors.InputError` (one line) when the arguments name something
        the input lacks.

    Raises
    ------
    TypeError
        If a field has the wrong type.

    Examples
    --------
    >>> import xarray as xr
    >>> def load(url, arguments, *, storage_options=None):
    ...     return xr.Dataset()
    >>> LoaderPlugin(LoaderArguments, load).target
    'file'
    >>> LoaderPlugin(dict, load)
    Traceback (most recent call last):
    ...
    TypeError: LoaderPlugin.arguments must be a subclass of neurobatch.config.arguments.LoaderArguments, got <class 'dict'>
    """

    arguments: type[LoaderArguments]
    load: Callable[..., Any]
    target: Literal["file", "folder"] = "file"
    kind: Literal["photometry", "ephys", "movie"] = "photometry"
    chunked: bool = False
    check: Callable[..., Any] | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.arguments, type) and issubclass(self.arguments, LoaderArguments)):
            raise TypeError(
                "LoaderPlugin.arguments must be a subclass of "
                f"neurobatch.config.arguments.LoaderArguments, got {self.arguments!r}"
            )
        for name in ("load", "check"):
            value = getattr(self, name)
            if not callable(value) and not (name == "check" and value is None):
                raise TypeError(f"LoaderPlugin.{name} must be a function, got {value!r}")
        if self.target not in _TARGETS:
            raise TypeError(f"LoaderPlugin.target must be 'file' or 'folder', got {self.target!r}")
        if self.kind not in _KINDS:
            raise TypeError(
                f"LoaderPlugin.kind must be one of {', '.join(map(repr, _KINDS))}, "
                f"got {self.kind!r}"
            )
        if not isinstance(self.chunked, bool):
            raise TypeError(f"LoaderPlugin.chunked must be a bool, got {self.chunked!r}")


_loaded: dict[str, LoaderPlugin] = {}
_lock = threading.Lock()


def plugin_entry_points() -> dict[str, list[EntryPoint]]:
    """The installed entry points of :data:`ENTRY_POINT_GROUP`, by name; none is imported.

    Returns
    -------
    dict of str to list of EntryPoint
        Each format name with the entry points that declare it (more than one when several
        distributions do), sorted by name.

    Examples
    --------
    >>> isinstance(plugin_entry_points(), dict)
    True
    """
    found: dict[str, list[EntryPoint]] = {}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(entry.name, [])
        if all(entry.value != other.value for other in found[entry.name]):
            found[entry.name].append(entry)
    return dict(sorted(found.items()))


def _describe(entry: EntryPoint) -> str:
    dist = getattr(entry, "dist", None)
    owner = f" of {dist.name} {dist.version}" if dist is not None else ""
    return f"entry point '{entry.name} = {entry.value}'{owner}"


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def load_plugin(name: str, entries: Mapping[str, list[EntryPoint]] | None = None) -> LoaderPlugin:
    """Import the loader plugin of format ``name``, once per process.

    Parameters
    ----------
    name : str
        The format: the entry point's name.
    entries : mapping, optional
        What :func:`plugin_entry_points` returned, when the caller has it.

    Returns
    -------
    LoaderPlugin
        The object the entry point names.

    Raises
    ------
    KeyError
        If no installed package declares ``name``.
    neurobatch.errors.ConfigError
        In one line naming the entry point: when importing it fails (with the error), when
        it names something other than a :class:`LoaderPlugin`, or when two distributions
        declare the name.

    Examples
    --------
    >>> load_plugin("no-such-format")
    Traceback (most recent call last):
    ...
    KeyError: 'no-such-format'
    """
    plugin = _loaded.get(name)
    if plugin is not None:
        return plugin
    declared = (plugin_entry_points() if entries is None else entries).get(name)
    if not declared:
        raise KeyError(name)
    if len(declared) > 1:
        listed = ", ".join(_describe(entry) for entry in declared)
        raise ConfigError(
            f"loader format {name!r} is declared by {len(declared)} entry points ({listed}) "
            f"in group {ENTRY_POINT_GROUP!r}; expected one: uninstall or rename the others"
        )
    entry = declared[0]
    with _lock:
        plugin = _loaded.get(name)
        if plugin is not None:
            return plugin
        logger.debug("importing loader plugin %s (%s)", name, entry.value)
        try:
            obj = entry.load()
        except Exception as e:  # whatever the plugin's import raises
            raise ConfigError(
                f"loader plugin {name!r} ({_describe(entry)}) failed to import: "
                f"{type(e).__name__}: {_one_line(e)}"
            ) from e
        if not isinstance(obj, LoaderPlugin):
            raise ConfigError(
                f"loader plugin {name!r} ({_describe(entry)}) names a {type(obj).__name__!r}; "
                "expected a neurobatch.io.loaders.LoaderPlugin(arguments=..., load=...)"
            )
        _loaded[name] = obj
    return obj
