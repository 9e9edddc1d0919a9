"""Discovery: glob an fsspec URL into a manifest, one row per job.

The manifest is what the engine plans from: one row per job (an input fans out to several
jobs when the loader is a list of mappings or a resolver returns a list), sorted by URL so that
the same inputs always give the same order, with a stable, filesystem-safe, unique ``item_id``
and a ``fingerprint`` that changes when the input's bytes (or their time stamps) do.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import posixpath
import unicodedata
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import fsspec
import pandas as pd
from fsspec.implementations.local import LocalFileSystem
from pydantic import BaseModel

from neurobatch.config import (
    InputConfig,
    PipelineConfig,
    SourceConfig,
    TrialsConfig,
    import_object,
    loader_arguments,
    trial_event_names,
    validate_loader,
)
from neurobatch.errors import ConfigError, InputError, InputNotFoundError
from neurobatch.io.listing import list_entries, walk_local
from neurobatch.io.loaders import LOADERS

__all__ = [
    "MANIFEST_COLUMNS",
    "discover",
    "discover_config",
    "fingerprint",
    "fingerprints",
    "safe_id",
]

logger = logging.getLogger(__name__)

MANIFEST_COLUMNS: tuple[str, ...] = (
    "item_id",
    "url",
    "fingerprint",
    "size",
    "format",
    "loader_arguments",
    "source",
)
"""The columns of a manifest, in order."""

_MAX_ID = 120
_CONTENT_KEYS = ("ETag", "etag", "md5Hash", "content_md5", "crc32c")
_TIME_KEYS = ("mtime", "LastModified", "last_modified", "updated", "modified", "created")


@dataclass(frozen=True)
class _Input:
    path: str
    relative: str
    url: str
    info: Mapping[str, Any]


@dataclass(frozen=True)
class _Job:
    input: _Input
    suffix: str | None
    mapping: BaseModel


# ---------------------------------------------------------------------------------------------
# Ids and fingerprints
# ---------------------------------------------------------------------------------------------


def _digest(text: str, size: int = 8) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=size).hexdigest()


def safe_id(text: str) -> str:
    """Make a string safe as a file or folder name: only ``[A-Za-z0-9._-]``.

    Accents are dropped (``é`` -> ``e``), every other character becomes ``_``, a leading
    ``.`` or ``-`` becomes ``_`` (so never ``.``, ``..`` or a hidden name, nor an option-like
    name), a trailing ``.`` becomes ``_``, and an empty string becomes ``_``.

    Parameters
    ----------
    text : str
        Any string.

    Returns
    -------
    str
        The safe form (not necessarily unique: :func:`discover` adds a hash where two
        inputs collide).

    Examples
    --------
    >>> safe_id("mouse 3/séance 1.csv")
    'mouse_3_seance_1.csv'
    >>> safe_id(".."), safe_id("-x"), safe_id("")
    ('__', '_x', '_')
    """
    out = []
    for char in unicodedata.normalize("NFKD", text):
        if char.isascii() and (char.isalnum() or char in "._-"):
            out.append(char)
        elif not unicodedata.combining(char):
            out.append("_")
    result = "".join(out)
    stripped = result.lstrip(".-")
    result = "_" * (len(result) - len(stripped)) + stripped
    if result.endswith("."):
        result = result[:-1] + "_"
    return result or "_"


def _stamp(info: Mapping[str, Any]) -> str:
    for key in _CONTENT_KEYS:
        if info.get(key):
            return f"{key}={str(info[key]).strip(chr(34))}"
    for key in _TIME_KEYS:
        value = info.get(key)
        if value is not None and value != "":
            text = value.isoformat() if hasattr(value, "isoformat") else repr(value)
            return f"{key}={text}"
    return ""


def fingerprint(info: Mapping[str, Any]) -> str:
    """A short string that changes when a file changes, from its fsspec ``info``.

    Parameters
    ----------
    info : Mapping
        ``fs.info(path)``: the size plus the content hash where the store has one (``ETag``
        on S3, ``md5Hash`` on GCS), else the modification time (``mtime``,
        ``LastModified``, ...).

    Returns
    -------
    str
        16 hexadecimal characters.

    Examples
    --------
    >>> fingerprint({"size": 10, "mtime": 1.5}) == fingerprint({"size": 10, "mtime": 1.5})
    True
    >>> fingerprint({"size": 10, "mtime": 1.5}) == fingerprint({"size": 11, "mtime": 1.5})
    False
    >>> len(fingerprint({"size": 3, "ETag": '"abc"'}))
    16
    """
    return _digest(f"{info.get('size') or 0}|{_stamp(info)}")


def fingerprints(
    urls: Sequence[str], storage_options: Mapping[str, Any] | None = None
) -> dict[str, str | None]:
    """The :func:`fingerprint` of each of ``urls`` now; None for one that is gone.

    Parameters
    ----------
    urls : sequence of str
        Files, on one filesystem (a loader's sidecars and ``.meta`` files, say).
    storage_options : mapping, optional
        Options for the fsspec filesystem.

    Returns
    -------
    dict of str to str or None

    Examples
    --------
    >>> fsspec.filesystem("memory").pipe("/fingerprints-doc/a.json", b"{}")
    >>> found = fingerprints(["memory://fingerprints-doc/a.json", "memory://nowhere.json"])
    >>> len(found["memory://fingerprints-doc/a.json"]), found["memory://nowhere.json"]
    (16, None)
    """
    found: dict[str, str | None] = {}
    for url in urls:
        fs, path = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
        try:
            found[url] = fingerprint(fs.info(path))
        except FileNotFoundError:
            found[url] = None
    return found


def _folder_fingerprint(fs: Any, path: str) -> tuple[str, int]:
    if isinstance(fs, LocalFileSystem):  # symbolic links inside followed, as in discovery
        files = {k: v for k, v in walk_local(path).items() if v["type"] != "directory"}
    else:
        prefix = path.rstrip("/") + "/"
        files = {k.removeprefix(prefix): v for k, v in fs.find(path, detail=True).items()}
    rows = sorted((name, int(info.get("size") or 0), _stamp(info)) for name, info in files.items())
    total = sum(size for _, size, _ in rows)
    return _digest(json.dumps(rows)), total


def _item_ids(jobs: Sequence[_Job]) -> list[str]:
    """Stable, safe, unique ids: the relative path with ``/`` -> ``__`` (the extension
    dropped), plus a job suffix."""
    raw = []
    for job in jobs:
        parts = job.input.relative.split("/")
        # a folder's extension goes too: an id ending in .zarr would look like a store
        parts[-1] = posixpath.splitext(parts[-1])[0] or parts[-1]
        base = "__".join(safe_id(part) for part in parts)
        suffix = "" if job.suffix is None else "-" + safe_id(job.suffix)
        key = job.input.relative + ("" if job.suffix is None else "\0" + job.suffix)
        candidate = base + suffix
        if len(candidate) > _MAX_ID:
            candidate = candidate[: _MAX_ID - 17].rstrip(".") + "-" + _digest(key)
        raw.append((candidate, key))
    counts = Counter(candidate for candidate, _ in raw)
    ids = [
        candidate if counts[candidate] == 1 else f"{candidate}-{_digest(key, 4)}"
        for candidate, key in raw
    ]
    if len(set(ids)) != len(ids):  # a hash suffix landed on another input's id: lengthen all
        ids = [f"{candidate}-{_digest(key)}" for candidate, key in raw]
    return ids


# ---------------------------------------------------------------------------------------------
# Listing inputs
# ---------------------------------------------------------------------------------------------


def _is_hidden(relative: str) -> bool:
    return any(part.startswith(".") for part in relative.split("/"))


def _describe_search(input: InputConfig) -> str:
    pattern = "every entry" if input.pattern is None else f"pattern {input.pattern!r}"
    depth = "recursively" if input.recursive else "not recursively"
    return f"input.url {input.url!r} with {pattern} ({depth}, target: {input.target})"


def _missing(fs: Any, root: str, input: InputConfig) -> InputNotFoundError:
    """input.url does not exist; on an object store, say when its bucket does not."""
    if hasattr(fs, "split_path"):  # s3fs, gcsfs, adlfs: bucket (container) and key
        try:
            bucket = str(fs.split_path(root)[0])
            exists = bool(fs.exists(bucket))
        except Exception:  # noqa: BLE001 - only a better message is at stake
            exists = True
        if not exists:
            return InputNotFoundError(
                f"input.url {input.url!r} does not exist: there is no bucket {bucket!r} (or "
                "these credentials cannot see it); expected an existing bucket"
            )
    return InputNotFoundError(f"input.url {input.url!r} does not exist")


def _unreadable(input: InputConfig, error: Exception, *, local: bool) -> InputError:
    """A listing that failed for another reason than a missing path, as one line."""
    reason = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, PermissionError):
        expected = (
            "read and list permissions for this user"
            if local
            else "credentials allowed to list and read it (input.storage_options or the "
            "environment: are the key and secret right?)"
        )
        return InputError(
            f"input.url {input.url!r} cannot be listed: access denied ({reason}); "
            f"expected {expected}"
        )
    expected = "a readable folder" if local else "a reachable store (check the endpoint)"
    return InputError(
        f"input.url {input.url!r} cannot be listed: {type(error).__name__}: {reason}; "
        f"expected {expected}"
    )


def _list_inputs(fs: Any, root: str, input: InputConfig) -> list[_Input]:
    local = "://" not in input.url and "::" not in input.url
    fs.invalidate_cache()  # object stores cache listings: a re-run must see new and changed inputs
    try:
        if not fs.exists(root):
            raise _missing(fs, root, input)
        if input.files is not None:
            return _listed(fs, root, input, local)
        return _list(fs, root, input, local)
    except InputError:
        raise
    except FileNotFoundError as e:  # removed while it was listed
        raise InputNotFoundError(f"input.url {input.url!r} does not exist") from e
    except Exception as e:
        # a store's own errors (botocore's, an OSError) become one line; a bug stays a bug
        if type(e).__module__ == "builtins" and not isinstance(e, OSError):
            raise
        raise _unreadable(input, e, local=local) from e


def _list(fs: Any, root: str, input: InputConfig, local: bool) -> list[_Input]:
    if not fs.isdir(root):
        info = fs.info(root)
        name = posixpath.basename(root)
        if input.target == "folder":
            raise InputError(f"input.url {input.url!r} is a file, but input.target is 'folder'")
        if input.pattern is not None and not fnmatchcase(name, input.pattern):
            raise InputNotFoundError(f"no inputs: {_describe_search(input)} matched nothing")
        return [_Input(root, name, root if local else input.url, info)]

    wanted = "file" if input.target == "file" else "directory"
    explicit_hidden = input.pattern is not None and _is_hidden(input.pattern)
    entries = list_entries(
        fs,
        root,
        pattern=input.pattern,
        recursive=input.recursive,
        local=isinstance(fs, LocalFileSystem),
        hidden=explicit_hidden,
        folders=input.target == "folder",
    )
    prefix = root.rstrip("/") + "/"
    inputs: list[_Input] = []
    other = 0
    for relative, info in entries.items():
        if _is_hidden(relative) and not explicit_hidden:
            continue
        if info.get("type") != wanted:
            other += 1
            continue
        url = prefix + relative if local else input.url.rstrip("/") + "/" + relative
        inputs.append(_Input(prefix + relative, relative, url, info))
    if not inputs:
        hint = ""
        if other:
            kind = "folders" if wanted == "file" else "files"
            hint = f"; it matched {other} {kind}: is input.target right?"
        raise InputNotFoundError(f"no inputs: {_describe_search(input)} matched nothing{hint}")
    inputs.sort(key=lambda item: item.url)
    logger.debug("%d inputs under %s", len(inputs), input.url)
    return inputs


def _listed(fs: Any, root: str, source: InputConfig, local: bool) -> list[_Input]:
    """The inputs a source names (``files``), relative to its URL; each must exist."""
    wanted = "file" if source.target == "file" else "directory"
    prefix = root.rstrip("/") + "/"
    inputs, missing = [], []
    for relative in dict.fromkeys(name.strip("/") for name in source.files or ()):
        try:
            info = fs.info(prefix + relative)
        except FileNotFoundError:
            missing.append(relative)
            continue
        if info.get("type") != wanted:
            raise InputError(
                f"input {source.url!r}: listed {relative!r} is a {info.get('type')}, but "
                f"target is {source.target!r}"
            )
        url = prefix + relative if local else source.url.rstrip("/") + "/" + relative
        inputs.append(_Input(prefix + relative, relative, url, info))
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise InputNotFoundError(
            f"input {source.url!r}: listed file(s) {', '.join(map(repr, missing[:3]))}{more} "
            "do not exist; expected every entry of files to exist under the url"
        )
    return sorted(inputs, key=lambda item: item.url)


# ---------------------------------------------------------------------------------------------
# Jobs
# ---------------------------------------------------------------------------------------------


def _enumerated(
    mapping: BaseModel, url: str, storage_options: Mapping[str, Any]
) -> list[tuple[str, BaseModel]]:
    """The jobs one loader mapping makes of one input: itself, or one per recording the
    input holds (a format's :attr:`~neurobatch.io.loaders.LoaderSpec.enumerate`)."""
    enumerate_items = LOADERS[str(mapping.format)].enumerate  # type: ignore[attr-defined]
    if enumerate_items is None:
        return [("", mapping)]
    found = enumerate_items(url, loader_arguments(mapping), storage_options=storage_options)
    return [(label, mapping.model_copy(update=update)) for label, update in found]


def _as_list(validated: Any) -> list[BaseModel]:
    return list(validated) if isinstance(validated, list) else [validated]


def _check_mappings(
    mappings: Sequence[BaseModel],
    *,
    source: str | None,
    input: InputConfig,
    trials: TrialsConfig | None,
    fanned: bool,
) -> None:
    problems = []
    labels: dict[str, int] = {}
    start = "" if source is None else f"{source}: "
    for i, mapping in enumerate(mappings):
        where = f"loader[{i}]" if fanned else "loader"
        fmt = str(mapping.format)  # type: ignore[attr-defined]
        target = LOADERS[fmt].target
        if target != input.target:
            problems.append(
                f"{start}{where}.format: format {fmt!r} reads {target}s, "
                f"but input.target is {input.target!r}"
            )
        label = getattr(mapping, "label", None)
        if label is not None and len(mappings) > 1:
            if label in labels:
                problems.append(
                    f"{start}{where}.label: {label!r} is also loader[{labels[label]}]'s "
                    "label; the jobs of one input need different labels"
                )
            labels.setdefault(label, i)
        if trials is None:
            continue
        provided = list(mapping.event_names())  # type: ignore[attr-defined]
        for loc, name in trial_event_names(trials):
            if name in provided:
                continue
            path = "trials" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)
            known = ", ".join(repr(n) for n in provided) or "no events"
            close = difflib.get_close_matches(name, provided, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append(
                f"{start}{path}: unknown event {name!r}{hint} ({where} provides {known})"
            )
    if problems:
        raise ConfigError("\n".join(problems))


def _resolver_name(resolver: Any) -> str:
    if isinstance(resolver, str):
        return repr(resolver)
    module = getattr(resolver, "__module__", None)
    qualname = getattr(resolver, "__qualname__", None)
    return f"{module}:{qualname}" if module and qualname else repr(resolver)


def _resolve(resolver: Callable[[str], Any], name: str, url: str) -> Any:
    try:
        result = resolver(url)
    except Exception as e:
        raise ConfigError(f"{url}: loader resolver {name} failed: {type(e).__name__}: {e}") from e
    if not isinstance(result, Mapping | BaseModel | list | tuple):
        raise ConfigError(
            f"{url}: loader resolver {name} returned {type(result).__name__!r}; "
            "expected a mapping with a 'format' key or a list of such mappings"
        )
    return list(result) if isinstance(result, tuple) else result


def discover(
    input: InputConfig | Mapping[str, Any],
    loader: Any,
    *,
    storage_options: Mapping[str, Any] | None = None,
    trials: TrialsConfig | None = None,
) -> pd.DataFrame:
    """Glob the inputs and build the manifest: one row per job, sorted by URL.

    Parameters
    ----------
    input : InputConfig or Mapping
        Where to look: ``url`` (any fsspec URL or a local path; a single file is one input),
        ``pattern`` (a glob relative to the URL; ``None`` takes every entry whose name does
        not start with ``.``), ``recursive`` (match at any depth) and ``target`` (``file``
        or ``folder`` inputs). Local symbolic links are followed, loops cut, and folders
        holding a neurobatch output left out (:mod:`neurobatch.io.listing`).
    loader : Mapping, list of Mapping, str or callable
        The loader: a mapping with ``format`` (one job per input), a list of them (several
        jobs per input), or a resolver called with each input's URL and returning a mapping
        or a list of mappings. A resolver may be a callable or a ``"module:function"`` /
        ``"path/to/file.py:function"`` string, imported only now. Validated mappings
        (``PipelineConfig.loader``) are accepted as they are.
    storage_options : Mapping, optional
        fsspec options, merged over ``input.storage_options``.
    trials : TrialsConfig, optional
        The trials section: every event name it uses must be one that each job's loader
        provides.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`MANIFEST_COLUMNS`:

        - ``item_id``: the input's path relative to ``input.url`` with ``/`` -> ``__``,
          made safe by :func:`safe_id`, plus ``-<label>`` (or ``-<n>``, 1-based) when the
          input has several jobs; ids that collide get a short stable hash suffix. Unique,
          and the same on every run for the same inputs.
        - ``url``: the input's URL (an absolute path for local inputs).
        - ``fingerprint``: from the size plus the ETag or modification time (for a
          folder, of every file inside).
        - ``size``: bytes (for a folder, the sum over its files).
        - ``format``, ``loader_arguments``: the job's loader format and its validated,
          JSON-safe arguments (``LOADERS[format].arguments.model_validate(...)`` takes
          them back).

    Raises
    ------
    InputNotFoundError
        If ``input.url`` does not exist (on an object store, saying when its bucket does
        not) or nothing matches (the message names the URL, the pattern and the target).
    InputError
        If ``input.url`` cannot be listed: access denied (wrong credentials) or a store
        that cannot be reached, in one line naming the URL.
    ConfigError
        If a loader mapping is invalid (an unknown format, key or event name, a target
        the format cannot read), naming the input for a resolver's mappings, or if a
        resolver cannot be imported or fails.

    See Also
    --------
    discover_config : the same from a :class:`~neurobatch.config.PipelineConfig`.

    Examples
    --------
    >>> import fsspec
    >>> fs = fsspec.filesystem("memory")
    >>> for name in ["b.csv", "a.csv", "sub/c.csv", "notes.txt"]:
    ...     fs.pipe(f"/doc-discover/{name}", b"time,signal\\n0,1\\n")
    >>> manifest = discover(
    ...     {"url": "memory://doc-discover", "pattern": "*.csv", "recursive": True},
    ...     [{"format": "photometry-csv", "label": "left"},
    ...      {"format": "photometry-csv", "label": "right"}])
    >>> for row in manifest.itertuples():
    ...     print(row.item_id, row.url, row.format)
    a-left memory://doc-discover/a.csv photometry-csv
    a-right memory://doc-discover/a.csv photometry-csv
    b-left memory://doc-discover/b.csv photometry-csv
    b-right memory://doc-discover/b.csv photometry-csv
    sub__c-left memory://doc-discover/sub/c.csv photometry-csv
    sub__c-right memory://doc-discover/sub/c.csv photometry-csv
    """
    if not isinstance(input, InputConfig):
        input = InputConfig.model_validate(dict(input))
    options = {**input.storage_options, **dict(storage_options or {})}

    resolver: Callable[[str], Any] | None = None
    resolver_name = ""
    static: list[BaseModel] = []
    fanned = False
    if callable(loader) and not isinstance(loader, BaseModel | type):
        resolver, resolver_name = loader, _resolver_name(loader)
    else:
        validated = validate_loader(loader, source="loader")
        if isinstance(validated, str):
            obj = import_object(validated)
            if not callable(obj):
                raise ConfigError(
                    f"loader: {validated!r} names a {type(obj).__name__!r}, not a function"
                )
            resolver, resolver_name = obj, repr(validated)
        else:
            static = _as_list(validated)
            fanned = isinstance(validated, list)
            _check_mappings(static, source=None, input=input, trials=trials, fanned=fanned)

    fs, root = fsspec.core.url_to_fs(input.url, **options)
    inputs = _list_inputs(fs, root, input)

    jobs: list[_Job] = []
    for item in inputs:
        if resolver is None:
            mappings = static
        else:
            result = _resolve(resolver, resolver_name, item.url)
            validated = validate_loader(result, source=item.url)
            mappings = _as_list(validated)
            _check_mappings(
                mappings,
                source=item.url,
                input=input,
                trials=trials,
                fanned=isinstance(validated, list),
            )
            if not mappings:
                logger.info("loader resolver returned no jobs for %s: skipped", item.url)
        several = len(mappings) > 1
        for n, mapping in enumerate(mappings, start=1):
            label = getattr(mapping, "label", None)
            own = (str(label) if label is not None else str(n)) if several else ""
            for part, job_mapping in _enumerated(mapping, item.url, options):
                suffix = "-".join(p for p in (own, part) if p)
                jobs.append(_Job(item, suffix or None, job_mapping))
    if not jobs:
        raise InputError(
            f"no jobs: the loader resolver {resolver_name} returned no mappings for any of "
            f"the {len(inputs)} inputs of {_describe_search(input)}"
        )

    stamps: dict[str, tuple[str, int]] = {}
    for item in inputs:
        if input.target == "folder":
            stamps[item.path] = _folder_fingerprint(fs, item.path)
        else:
            stamps[item.path] = (fingerprint(item.info), int(item.info.get("size") or 0))

    name = input.name if isinstance(input, SourceConfig) else ""
    rows = [
        {
            "item_id": f"{name}__{item_id}" if name else item_id,
            "url": job.input.url,
            "fingerprint": stamps[job.input.path][0],
            "size": stamps[job.input.path][1],
            "format": str(job.mapping.format),  # type: ignore[attr-defined]
            "loader_arguments": loader_arguments(job.mapping),
            "source": name,
        }
        for item_id, job in zip(_item_ids(jobs), jobs, strict=True)
    ]
    manifest = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    manifest["size"] = manifest["size"].astype("int64")
    logger.info("discovered %d inputs, %d jobs under %s", len(inputs), len(manifest), input.url)
    return manifest


def discover_config(
    config: PipelineConfig, *, storage_options: Mapping[str, Any] | None = None
) -> pd.DataFrame:
    """The manifest of a pipeline: :func:`discover` with its input, loader and trials.

    Parameters
    ----------
    config : PipelineConfig
        The pipeline.
    storage_options : Mapping, optional
        fsspec options, merged over ``config.input.storage_options``.

    Returns
    -------
    pandas.DataFrame
        The manifest (see :func:`discover`).

    Examples
    --------
    >>> import fsspec
    >>> fsspec.filesystem("memory").pipe("/doc-config/x.csv", b"time,signal\\n0,1\\n")
    >>> config = PipelineConfig.model_validate({
    ...     "name": "demo", "input": {"url": "memory://doc-config"},
    ...     "loader": {"format": "photometry-csv"}, "output": {"url": "out"}})
    >>> discover_config(config)["item_id"].tolist()
    ['x']
    """
    manifests = [
        discover(source, source.loader, storage_options=storage_options, trials=config.trials)
        for source in config.sources
    ]
    manifest = pd.concat(manifests, ignore_index=True) if len(manifests) > 1 else manifests[0]
    if len(config.sources) > 1:
        logger.info(
            "%d sources: %s",
            len(manifests),
            ", ".join(f"{s.name} {len(m)}" for s, m in zip(config.sources, manifests, strict=True)),
        )
    return manifest
