"""Where an input and an output folder are, and whether the input's search reaches the output.

An output folder inside a folder searched for inputs would be taken as input on the next run
(its tables, logs and figures matching the pattern). :func:`output_reach` says when it would:
the URLs are compared as locations (a local path made absolute, with ``~``, ``..`` and
symbolic links resolved; a remote URL by protocol, endpoint and normalised path), then the
search's pattern and depth are matched against the path from the input to the output.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping
from fnmatch import fnmatchcase
from typing import Any, NamedTuple

__all__ = ["Location", "location", "output_reach"]

#: Spellings of one protocol.
_PROTOCOLS = {"s3a": "s3", "gs": "gcs", "az": "abfs", "adl": "abfs", "local": "file"}


class Location(NamedTuple):
    """A storage location: ``protocol`` (``file`` for local paths), ``endpoint`` (the
    store's endpoint or account when its options name one, else ``""``) and ``path``
    (``/``-separated, normalised)."""

    protocol: str
    endpoint: str
    path: str


def _endpoint(options: Mapping[str, Any]) -> str:
    client = options.get("client_kwargs")
    nested = client.get("endpoint_url") if isinstance(client, Mapping) else None
    found = options.get("endpoint_url") or nested or options.get("account_name") or ""
    return str(found).rstrip("/").lower()


def location(url: str, storage_options: Mapping[str, Any] | None = None) -> Location:
    """The normalised location of a URL or local path.

    Parameters
    ----------
    url : str
        An fsspec URL (for a chained URL, ``a::b``, its last part: the store holding the
        data) or a local path (relative to the working folder).
    storage_options : Mapping, optional
        The URL's fsspec options, for its endpoint (``endpoint_url``,
        ``client_kwargs.endpoint_url``, ``account_name``).

    Returns
    -------
    Location

    Examples
    --------
    >>> location("s3a://lab/data/../raw/", {"client_kwargs": {"endpoint_url": "http://minio:9000/"}})
    Location(protocol='s3', endpoint='http://minio:9000', path='lab/raw')
    >>> location("/data//raw/./day1").path
    '/data/raw/day1'
    """
    target = url.split("::")[-1]
    if "://" in target:
        protocol, path = target.split("://", 1)
        protocol = _PROTOCOLS.get(protocol.lower(), protocol.lower())
        if protocol != "file":
            normal = posixpath.normpath("/" + path).lstrip("/")
            return Location(protocol, _endpoint(storage_options or {}), normal)
        target = path
    resolved = os.path.realpath(os.path.expanduser(target))
    return Location("file", "", resolved.replace(os.sep, "/"))


def _relative(inner: Location, outer: Location) -> list[str] | None:
    """The path components from ``outer`` to ``inner``; None when it is not inside."""
    if inner.protocol != outer.protocol:
        return None
    if inner.endpoint and outer.endpoint and inner.endpoint != outer.endpoint:
        return None
    if inner.path == outer.path:
        return []
    prefix = outer.path.rstrip("/") + "/"
    if not inner.path.startswith(prefix):
        return None
    return inner.path[len(prefix) :].split("/")


def output_reach(
    input_url: str,
    output_url: str,
    *,
    pattern: str | None,
    recursive: bool,
    target: str,
    input_options: Mapping[str, Any] | None = None,
    output_options: Mapping[str, Any] | None = None,
) -> str | None:
    """How the input's search would reach into the output folder; None when it would not.

    It reaches when the output is the input folder itself, or is inside it and the search
    is recursive, or the pattern's first components match the path to the output and the
    pattern goes deeper (holding ``**`` there, or matching files inside it), or as deep with
    ``target: folder`` (matching the output folder as an input).

    Parameters
    ----------
    input_url, output_url : str
        ``input.url`` and ``output.url``.
    pattern : str or None
        ``input.pattern`` (None: every entry).
    recursive : bool
        ``input.recursive``.
    target : {"file", "folder"}
        ``input.target``.
    input_options, output_options : Mapping, optional
        Their storage options (a different endpoint is a different store).

    Returns
    -------
    str or None
        How the output is reached, as what follows its URL in a sentence, or None.

    Examples
    --------
    >>> output_reach("/data", "/data/out", pattern="*.csv", recursive=True, target="file")
    "is inside input.url '/data', which is searched recursively"
    >>> output_reach("/data", "/data/out", pattern="*.csv", recursive=False, target="file")
    >>> output_reach("/data", "/data/out", pattern="*/*.csv", recursive=False, target="file")
    "is inside input.url '/data', and input.pattern '*/*.csv' matches files inside it"
    >>> output_reach("s3://lab/d", "s3://lab/d", pattern=None, recursive=False, target="file")
    "is input.url itself ('s3://lab/d')"
    """
    inside = _relative(location(output_url, output_options), location(input_url, input_options))
    if inside is None:
        return None
    if not inside:
        return f"is input.url itself ({input_url!r})"
    where = f"is inside input.url {input_url!r}"
    if recursive:
        return f"{where}, which is searched recursively"
    parts = (pattern or "*").strip("/").split("/")
    what = repr(pattern) if pattern is not None else "(unset: every entry)"
    depth = len(inside)
    if "**" in parts:
        # '**' matches any depth: reached when the components before it lead towards OUT
        head = parts[: parts.index("**")]
        if all(map(fnmatchcase, inside, head)):
            return f"{where}, and input.pattern {what} goes into it"
        return None
    if len(parts) < depth or not all(map(fnmatchcase, inside, parts)):
        return None
    if len(parts) > depth:
        return f"{where}, and input.pattern {what} matches files inside it"
    if target == "folder":
        return f"{where}, and input.pattern {what} matches it as an input folder"
    return None
