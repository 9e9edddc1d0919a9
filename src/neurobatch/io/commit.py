"""Commit markers of outputs, the inventory of their arrays, and its verification.

An item's stage output is visible only when complete: the data are written first, then
:func:`commit` writes a small JSON marker last. :func:`read_commit` is how a re-run tells a
finished output from a partial one, and :func:`remove` cleans a partial one before it is
rewritten.

Integrity. A chunk changed in place (same size) fails its CRC-32C checksum when read (see
:mod:`neurobatch.io.zarr`). A chunk deleted (zarr reads the hole as the fill value,
silently), truncated or rewritten with another size, an array resized or removed is found
here instead: ``commit(url, marker, arrays=True)`` records the store's :func:`inventory` (per
array: shape, chunk shape, number and total size of the stored chunk objects, from one
listing) in the marker, and :func:`verify` compares the store with it later (one listing
again) and names what differs.

The engine's use::

    commit(url, marker, arrays=True)                # after writing
    ...
    marker = read_commit(url)                       # on a re-run
    problems = verify(url, marker) if marker else []   # non-empty: rewrite the output
    with damage_reported(url):                      # any read not via open_dataset/open_trials
        values = xr.open_zarr(url).signal.values
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np

from neurobatch.io.files import retried, translated, write_text

__all__ = [
    "COMMIT_MARKER",
    "commit",
    "inventory",
    "read_commit",
    "remove",
    "to_json_safe",
    "verify",
]

logger = logging.getLogger(__name__)

COMMIT_MARKER = ".neurobatch-commit.json"
"""Name of the marker file that :func:`commit` writes inside an output URL."""

_MAX_NAMED_CHUNKS = 5
_MAX_GRID_CHUNKS = 1_000_000
"""Largest chunk grid whose chunks :func:`verify` enumerates to name the missing ones."""


# --- URLs, JSON ------------------------------------------------------------------------------


def _fs(url: str, storage_options: Mapping[str, Any] | None) -> tuple[Any, str]:
    """Return the fsspec filesystem and the path inside it for ``url``."""
    fs, path = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    return fs, str(path)


def to_json_safe(value: Any, *, name: str = "attrs") -> Any:
    """Return ``value`` with NumPy scalars and arrays, tuples and keys made plain JSON types.

    Parameters
    ----------
    value : object
        A scalar, list, tuple, dict or NumPy value (nested at will).
    name : str, default "attrs"
        What ``value`` is, for the error message.

    Returns
    -------
    object
        The same content built from ``dict``, ``list``, ``str``, ``int``, ``float``, ``bool``
        and ``None`` only (NaN stays a float NaN).

    Raises
    ------
    TypeError
        If something cannot be written as JSON (a set, an object, bytes, ...).

    Examples
    --------
    >>> to_json_safe({"fit": {"slope": np.float64(1.5), "n": np.int64(3)}, "ax": (1, 2)})
    {'fit': {'slope': 1.5, 'n': 3}, 'ax': [1, 2]}
    """
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, np.generic):
        return to_json_safe(value.item(), name=name)
    if isinstance(value, int | float):
        return value
    if isinstance(value, np.ndarray):
        return [to_json_safe(v, name=f"{name}[{i}]") for i, v in enumerate(value.tolist())]
    if isinstance(value, list | tuple):
        return [to_json_safe(v, name=f"{name}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        return {str(k): to_json_safe(v, name=f"{name}[{k!r}]") for k, v in value.items()}
    raise TypeError(
        f"{name} must hold only JSON values (dict, list, str, int, float, bool, None), "
        f"got {value!r} of type {type(value).__name__}"
    )


# --- commits ---------------------------------------------------------------------------------


def _marker_path(url: str, storage_options: Mapping[str, Any] | None) -> tuple[Any, str]:
    fs, path = _fs(url, storage_options)
    return fs, f"{path.rstrip('/')}/{COMMIT_MARKER}"


def _remove_marker(url: str, storage_options: Mapping[str, Any] | None) -> None:
    fs, marker = _marker_path(url, storage_options)
    with suppress(FileNotFoundError, NotADirectoryError):  # a plain file has no marker
        fs.rm_file(marker)


def commit(
    url: str,
    marker: Mapping[str, Any],
    *,
    storage_options: Mapping[str, Any] | None = None,
    arrays: bool = False,
) -> None:
    """Mark the output at ``url`` complete by writing ``<url>/.neurobatch-commit.json``, last.

    Call it after every byte of the output is written. On a local disk the marker is written
    to a temporary file and moved into place with ``os.replace``, so a reader sees either no
    marker or the whole of it; on an object store the single PUT is atomic.

    Parameters
    ----------
    url : str
        Local path or fsspec URL of the output (a Zarr store or a folder).
    marker : mapping
        JSON content of the marker, e.g. the parameter hash and the time.
    storage_options : mapping, optional
        Options for the fsspec filesystem.
    arrays : bool, default False
        Also record ``marker["arrays"] = inventory(url)`` (one listing of the store, replacing
        any ``"arrays"`` key of ``marker``), so that :func:`verify` can later tell whether a
        chunk was deleted, truncated or replaced, or an array resized, since the commit.

    Raises
    ------
    TypeError
        If ``marker`` holds something that is not a JSON value.
    ValueError
        With ``arrays=True``, if the metadata of an array in the store cannot be read.

    See Also
    --------
    verify : compare the store with the inventory recorded here.

    Examples
    --------
    >>> commit("memory://doc/item", {"params": "abc123"})
    >>> read_commit("memory://doc/item")
    {'params': 'abc123'}

    With the inventory of a store:

    >>> import xarray as xr
    >>> from neurobatch.io.zarr import write_dataset
    >>> ds = xr.Dataset({"x": ("time", np.arange(6.0))})
    >>> _ = write_dataset(ds, "memory://doc/counted.zarr", chunk_memory=32, minimum=4)
    >>> commit("memory://doc/counted.zarr", {"params": "abc123"}, arrays=True)
    >>> read_commit("memory://doc/counted.zarr")["arrays"]["x"]["stored_chunks"]
    2
    """
    content_of = dict(marker)
    if arrays:
        content_of["arrays"] = inventory(url, storage_options=storage_options)
    content = json.dumps(to_json_safe(content_of, name="commit marker"), indent=2) + "\n"
    write_text(f"{url.rstrip('/')}/{COMMIT_MARKER}", content, storage_options=storage_options)
    logger.debug("committed %s", url)


def read_commit(
    url: str, *, storage_options: Mapping[str, Any] | None = None
) -> dict[str, Any] | None:
    """Return the commit marker of the output at ``url``, or None if it is not committed.

    A transient error of the storage is retried (:func:`neurobatch.io.files.retried`):
    an output that cannot be read now is never taken for one that is not done, which
    would have it redone, or its item failed.

    Parameters
    ----------
    url : str
        Local path or fsspec URL of the output.
    storage_options : mapping, optional
        Options for the fsspec filesystem.

    Returns
    -------
    dict or None
        The marker written by :func:`commit`; None when there is none or it is unreadable
        (not JSON, not an object), which both mean "not done".

    Raises
    ------
    neurobatch.errors.StorageError
        If the marker cannot be read: the storage is unreachable for longer than the
        retries last, or refuses the read.

    Examples
    --------
    >>> read_commit("memory://doc/never-written") is None
    True
    """
    fs, path = _marker_path(url, storage_options)
    where = f"{url.rstrip('/')}/{COMMIT_MARKER}"
    try:
        with translated(where, action="reading"):
            content = retried(lambda: fs.cat_file(path), url=where, action="reading")
    except (FileNotFoundError, NotADirectoryError):  # a file where the output's folder goes
        return None
    try:
        marker = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        return None
    return marker if isinstance(marker, dict) else None


def remove(url: str, *, storage_options: Mapping[str, Any] | None = None) -> None:
    """Delete the output at ``url`` (a store or folder, recursively); nothing if it is absent.

    The commit marker goes first, so that an interrupted removal never leaves a marked,
    half-deleted output. Transient errors are retried.

    Parameters
    ----------
    url : str
        Local path or fsspec URL.
    storage_options : mapping, optional
        Options for the fsspec filesystem.

    Raises
    ------
    neurobatch.errors.StorageError
        If it cannot be removed.

    Examples
    --------
    >>> commit("memory://doc/stale", {"params": "old"})
    >>> remove("memory://doc/stale")
    >>> read_commit("memory://doc/stale") is None
    True
    """
    fs, path = _fs(url, storage_options)

    def delete() -> None:
        _remove_marker(url, storage_options)
        if fs.exists(path):
            fs.rm(path, recursive=True)
            logger.debug("removed %s", url)

    with translated(url, action="removing"):
        retried(delete, url=url, action="removing")


# --- inventories and their verification ----------------------------------------------------


_ARRAY_DOCUMENTS = {"zarr.json": 3, ".zarray": 2}
"""The metadata document that describes a node, and its Zarr format (a Zarr 2 array's
attributes are in ``.zattrs`` beside it)."""
_GROUP_DOCUMENTS = {"zarr.json": 3, ".zgroup": 2}
_METADATA_DOCUMENTS = {"zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"}
"""Every metadata document of either format: none of them is a chunk."""


@dataclass
class _Array:
    """One array of a store as the listing and its metadata document show it."""

    shape: list[int]
    chunks: list[int]
    key_encoding: Mapping[str, Any]
    objects: dict[str, int]
    """Stored chunk objects: key inside the array (``c.0``) to size in bytes."""

    def record(self) -> dict[str, Any]:
        return {
            "shape": self.shape,
            "chunks": self.chunks,
            "stored_chunks": len(self.objects),
            "stored_bytes": sum(self.objects.values()),
        }


@dataclass
class _Scan:
    """What one listing of a store shows."""

    arrays: dict[str, _Array]
    """By path: ``"signal"``, ``"group/signal"``."""
    problems: list[str]
    """Metadata documents that are not readable JSON, or listed but gone."""
    formats: set[int]
    """The Zarr formats of the group at the store's root (empty: no group there)."""


def _scan(url: str, storage_options: Mapping[str, Any] | None) -> _Scan:
    """Every array of the store from one recursive listing and one batched metadata read.

    A storage that cannot be read is no problem of the store's: the scan is retried after a
    transient error, and a :class:`~neurobatch.errors.StorageError` raised after any other.
    """
    with translated(url, action="listing"):
        return retried(lambda: _scan_once(url, storage_options), url=url, action="listing")


def _scan_once(url: str, storage_options: Mapping[str, Any] | None) -> _Scan:
    fs, root = _fs(url, storage_options)
    root = root.rstrip("/")
    fs.invalidate_cache(root)  # fsspec caches listings per filesystem instance
    listing = fs.find(root, detail=True)
    prefix = f"{root}/"
    sizes = {
        path[len(prefix) :]: int(info.get("size") or 0)
        for path, info in listing.items()
        if path.startswith(prefix) and info.get("type", "file") == "file"
    }
    documents = sorted(key for key in sizes if key.rsplit("/", 1)[-1] in _ARRAY_DOCUMENTS)
    # one batched read (concurrent on object stores); fsspec would expand a path holding a
    # glob character, so such a path (a variable named "a[0]") is read on its own
    plain = [prefix + key for key in documents if not any(c in key for c in "*?[")]
    contents: dict[str, Any] = dict(fs.cat(plain, on_error="return")) if plain else {}
    for key in documents:
        if prefix + key not in contents:
            try:
                contents[prefix + key] = fs.cat_file(prefix + key)
            except FileNotFoundError as e:
                contents[prefix + key] = e
    for content in contents.values():
        if isinstance(content, BaseException) and not isinstance(content, FileNotFoundError):
            raise content  # the storage's fault, not the store's
    arrays: dict[str, _Array] = {}
    problems: list[str] = []
    for key in documents:
        content = contents.get(prefix + key)
        try:
            if isinstance(content, BaseException):
                raise content
            if not isinstance(content, bytes | str):
                raise TypeError(f"read {type(content).__name__}, expected bytes")
            meta = json.loads(content)
            if not isinstance(meta, dict):
                continue
            owner, _, document = key.rpartition("/")
            if _ARRAY_DOCUMENTS[document] == 3:
                if meta.get("node_type") != "array":
                    continue
                grid = meta["chunk_grid"]["configuration"]["chunk_shape"]
                encoding = dict(meta.get("chunk_key_encoding") or {})
            else:
                grid = meta["chunks"]
                separator = meta.get("dimension_separator") or "."
                encoding = {"name": "v2", "configuration": {"separator": separator}}
            arrays[owner] = _Array(
                shape=[int(s) for s in meta["shape"]],
                chunks=[int(c) for c in grid],
                key_encoding=encoding,
                objects={},
            )
        except (OSError, ValueError, KeyError, TypeError) as e:
            problems.append(f"{key} is not readable Zarr metadata ({type(e).__name__}: {e})")
    for key, size in sizes.items():
        parts = key.split("/")
        for depth in range(1, len(parts)):
            owner = "/".join(parts[:depth])
            if owner in arrays:
                if parts[-1] not in _METADATA_DOCUMENTS:
                    arrays[owner].objects["/".join(parts[depth:])] = size
                break
    formats = {number for name, number in _GROUP_DOCUMENTS.items() if name in sizes}
    return _Scan(arrays, problems, formats)


def inventory(
    url: str, *, storage_options: Mapping[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    """List every array of the Zarr store at ``url`` with its stored chunks and bytes.

    One recursive listing of the store with sizes (``fs.find(path, detail=True)``) and one
    batched read of its arrays' metadata documents (``zarr.json`` in Zarr format 3,
    ``.zarray`` in format 2); no chunk is read. Zarr does not write a
    chunk that holds only the fill value (NaN for float variables), so ``stored_chunks`` can
    be below the number of chunks of the grid: the inventory records what is there.

    Parameters
    ----------
    url : str
        Local path or fsspec URL of a Zarr group of either format (such as one written by
        :func:`~neurobatch.io.zarr.write_dataset`), nested groups included.
    storage_options : mapping, optional
        Options for the fsspec filesystem.

    Returns
    -------
    dict of str to dict
        By array path (``"signal"``, or ``"group/signal"`` in a nested group): ``shape``
        and ``chunks`` (the chunk shape; the shard shape of a sharded array: what one stored
        object holds), as lists of ints; ``stored_chunks``, the number of chunk objects; and
        ``stored_bytes``, their total size. Empty when there is no store at ``url``.

    Raises
    ------
    ValueError
        If an array's metadata document is not readable Zarr metadata.

    See Also
    --------
    commit : record the inventory in the commit marker (``arrays=True``).
    verify : compare the store with a recorded inventory.

    Examples
    --------
    >>> import xarray as xr
    >>> from neurobatch.io.zarr import write_dataset
    >>> ds = xr.Dataset({"x": ("time", [1.0, 2.0, np.nan, np.nan, 3.0])})
    >>> _ = write_dataset(ds, "memory://doc/inventory.zarr", chunk_memory=16, minimum=2)
    >>> found = inventory("memory://doc/inventory.zarr")["x"]
    >>> found["shape"], found["chunks"], found["stored_chunks"]  # c.1 is all NaN: not written
    ([5], [2], 2)
    """
    scan = _scan(url, storage_options)
    if scan.problems:
        raise ValueError(f"cannot list the arrays of {url}: {'; '.join(scan.problems)}")
    return {name: scan.arrays[name].record() for name in sorted(scan.arrays)}


def _chunk_key(coords: tuple[int, ...], encoding: Mapping[str, Any]) -> str:
    """The chunk's key inside its array (Zarr v3 ``default`` or ``v2`` key encoding)."""
    configuration = encoding.get("configuration") or {}
    if encoding.get("name") == "v2":
        separator = str(configuration.get("separator", "."))
        return separator.join(map(str, coords)) or "0"
    separator = str(configuration.get("separator", "/"))
    return separator.join(["c", *map(str, coords)])


def _grid_keys(array: _Array) -> list[str] | None:
    """Every chunk key of the array's grid, in order (None if there are too many)."""
    counts = [-(-s // c) if c > 0 else 0 for s, c in zip(array.shape, array.chunks, strict=False)]
    if math.prod(counts) > _MAX_GRID_CHUNKS:
        return None
    return [
        _chunk_key(coords, array.key_encoding)
        for coords in itertools.product(*(range(n) for n in counts))
    ]


def _named(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_NAMED_CHUNKS])
    more = len(keys) - _MAX_NAMED_CHUNKS
    return f"{shown} and {more:,} more" if more > 0 else shown


def _array_problem(name: str, recorded: Mapping[str, Any], array: _Array) -> str | None:
    """What differs between an array and its record, or None."""
    shape, chunks = list(recorded["shape"]), list(recorded["chunks"])
    stored, stored_bytes = int(recorded["stored_chunks"]), int(recorded["stored_bytes"])
    now = array.record()
    if now["shape"] != shape:
        return (
            f"array {name!r}: shape {tuple(now['shape'])}, {tuple(shape)} recorded (it was "
            "resized or rewritten after the commit)"
        )
    if now["chunks"] != chunks:
        return (
            f"array {name!r}: chunk shape {tuple(now['chunks'])}, {tuple(chunks)} recorded "
            "(it was rewritten after the commit)"
        )
    present = now["stored_chunks"]
    if present < stored:
        grid = _grid_keys(array)
        absent = [k for k in grid if k not in array.objects] if grid is not None else []
        lost = stored - present
        if grid is not None and len(absent) == lost:
            which = f"chunk{'s' if lost > 1 else ''} {_named(absent)} missing"
        elif absent:
            which = (
                f"{lost:,} missing among {_named(absent)}; the others absent were never written "
                "(they hold only the fill value)"
            )
        else:
            which = f"{lost:,} missing"
        return f"array {name!r}: {present:,} of {stored:,} stored chunks present ({which})"
    if present > stored:
        grid = _grid_keys(array)
        strays = sorted(set(array.objects) - set(grid)) if grid is not None else []
        which = (
            f"{_named(strays)} not in the chunk grid"
            if strays
            else "chunks were written after the commit"
        )
        return f"array {name!r}: {present:,} stored chunks, {stored:,} recorded ({which})"
    if now["stored_bytes"] != stored_bytes:
        return (
            f"array {name!r}: {now['stored_bytes']:,} stored bytes, {stored_bytes:,} recorded "
            "(a chunk was truncated or replaced)"
        )
    return None


def verify(
    url: str,
    marker: Mapping[str, Any],
    *,
    storage_options: Mapping[str, Any] | None = None,
    zarr_format: int | None = None,
) -> list[str]:
    """Compare the store at ``url`` with the inventory its commit marker recorded.

    One listing of the store again (see :func:`inventory`), no chunk read. It finds chunks
    deleted (which zarr would read back as the fill value, silently), truncated or replaced
    by a different size, arrays missing, resized or added. A chunk changed in place with its
    size unchanged is found on read instead, by its checksum (see
    :func:`~neurobatch.io.zarr.damage_reported`).

    Parameters
    ----------
    url : str
        Local path or fsspec URL of the store.
    marker : mapping
        Its commit marker, as :func:`read_commit` returns it; the inventory is
        ``marker["arrays"]``, recorded by ``commit(..., arrays=True)``.
    storage_options : mapping, optional
        Options for the fsspec filesystem.
    zarr_format : {3, 2}, optional
        The Zarr format the store should be in (``output.zarr_format``): a store in the
        other one is a problem too, so that it is written again in this one. None: either.

    Returns
    -------
    list of str
        One plain-English problem per array that differs, e.g.
        ``"array 'signal': 3 of 4 stored chunks present (chunk c.2 missing)"``, and one when
        the store is in the other Zarr format; empty when the store is as committed, or when
        the marker has no ``"arrays"`` (a store committed before inventories were recorded,
        which verifies as intact).

    See Also
    --------
    commit : record the inventory (``arrays=True``).

    Examples
    --------
    >>> import xarray as xr
    >>> from neurobatch.io.zarr import write_dataset
    >>> ds = xr.Dataset({"x": ("time", np.arange(8.0))})
    >>> _ = write_dataset(ds, "memory://doc/verified.zarr", chunk_memory=32, minimum=4)
    >>> commit("memory://doc/verified.zarr", {"params": "abc123"}, arrays=True)
    >>> marker = read_commit("memory://doc/verified.zarr")
    >>> verify("memory://doc/verified.zarr", marker)
    []
    >>> fs = fsspec.filesystem("memory")
    >>> fs.rm("/doc/verified.zarr/x/c.1")
    >>> verify("memory://doc/verified.zarr", marker, zarr_format=2)  # doctest: +NORMALIZE_WHITESPACE
    ['the store is in Zarr format 3, and Zarr format 2 is asked (output.zarr_format)',
     "array 'x': 1 of 2 stored chunks present (chunk c.1 missing)"]
    """
    recorded = marker.get("arrays")
    if recorded is None:
        return []
    if not isinstance(recorded, Mapping):
        return [f"the commit marker's 'arrays' is a {type(recorded).__name__}, expected an object"]
    scan = _scan(url, storage_options)
    arrays, problems = scan.arrays, scan.problems
    if zarr_format is not None and scan.formats and zarr_format not in scan.formats:
        problems.append(
            f"the store is in Zarr format {min(scan.formats)}, and Zarr format {zarr_format} "
            "is asked (output.zarr_format)"
        )
    for name in sorted(recorded):
        record = recorded[name]
        if name not in arrays:
            if not any(p.startswith((f"{name}/zarr.json ", f"{name}/.zarray ")) for p in problems):
                shape = record.get("shape") if isinstance(record, Mapping) else None
                shown = tuple(shape) if isinstance(shape, list) else shape
                problems.append(f"array {name!r} is missing (recorded with shape {shown})")
            continue
        try:
            problem = _array_problem(str(name), record, arrays[name])
        except (KeyError, TypeError, ValueError) as e:
            problem = f"array {name!r}: its record in the commit marker is malformed ({e!r})"
        if problem is not None:
            problems.append(problem)
    for name in sorted(set(arrays) - set(recorded)):
        problems.append(f"array {name!r} is in the store but not in the commit record")
    return problems
