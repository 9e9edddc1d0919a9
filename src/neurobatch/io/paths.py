"""Path objects for user functions: what a loader resolver receives, and back to text.

A resolver is called with each discovered input as a path object, as PhoPro's
``loader_kwargs`` functions are: a :class:`pathlib.Path` for a local input, and a
:class:`upath.UPath` (pathlib's interface over fsspec, carrying the input's storage options)
for any other URL. Path objects in what it returns become strings again
(:func:`plain_paths`): ``annotation=csv.with_suffix(".json")`` works on either.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fsspec.implementations.local import LocalFileSystem
from upath import UPath

__all__ = ["input_path", "plain_paths"]


def input_path(url: str, fs: Any, storage_options: Mapping[str, Any] | None = None) -> Any:
    """The path object a resolver receives for an input.

    Parameters
    ----------
    url : str
        The input's URL (an absolute path for a local input).
    fs : fsspec.AbstractFileSystem
        Its filesystem.
    storage_options : mapping, optional
        The input's fsspec options, carried by a remote path.

    Returns
    -------
    pathlib.Path or upath.UPath

    Examples
    --------
    >>> import fsspec
    >>> input_path("/data/experiment_1.csv", fsspec.filesystem("file")).with_suffix(".json")
    PosixPath('/data/experiment_1.json')
    >>> path = input_path("memory://lab/experiment_1.csv", fsspec.filesystem("memory"))
    >>> str(path.with_suffix(".json"))
    'memory://lab/experiment_1.json'
    """
    if isinstance(fs, LocalFileSystem):
        return Path(url)
    return UPath(url, **dict(storage_options or {}))


def plain_paths(value: Any) -> Any:
    """``value`` with every path object in it (in mappings and lists) made a string.

    Parameters
    ----------
    value : object
        What a resolver returned.

    Returns
    -------
    object
        The same structure; a ``pathlib`` path becomes its text, a ``UPath`` its URL.

    Examples
    --------
    >>> plain_paths({"annotation": Path("/data/a.json"), "event_cols": ["cue"]})
    {'annotation': '/data/a.json', 'event_cols': ['cue']}
    """
    if isinstance(value, UPath):
        return str(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {key: plain_paths(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain_paths(item) for item in value]
    return value
