"""The raw cache: remote inputs copied to a local folder, verified, resumed after a kill.

An input on any fsspec store (``s3://lab/raw/x.csv``) is copied to
``DIR/<protocol>/<bucket>/<key>`` (``DIR/s3/lab/raw/x.csv``): a folder input (a TDT block)
with every file inside it, and with the files that travel with it, which its loader reads
from the cached copy too (:func:`companion_urls`):

- the sidecars the loader arguments name (``annotation``, ``events_file``), resolved as the
  loader resolves them (:func:`~neurobatch.io.loaders.sidecar.resolve_sidecar`) when they
  are relative to the input;
- for a file input, the files beside it that share its stem (``x.json`` beside ``x.csv``,
  SpikeGLX's ``x.ap.meta`` beside ``x.ap.bin``).

A file is downloaded in blocks of :data:`BLOCK_SIZE` (ranged reads) into ``<name>.part``,
beside which ``<name>.part.json`` records the remote's size and fingerprint (size plus ETag
or modification time, :func:`~neurobatch.io.discover.fingerprint`) when the download began.
A fetch that finds a ``.part`` of the same remote resumes from the part's size (the part is
hashed again); of a remote that changed since, it starts over. When the last block is in,
the copy is verified -- its size, and its MD5 against the ETag where that is one (S3's
single-part ETag, GCS's ``md5Hash``; a multipart ETag ``<hex>-<n>`` hashes the parts'
MD5s with a part size nobody records, so there only the size is checked) -- then moved into
place atomically. A copy that does not verify is removed and the fetch fails with one line
naming the URL, what was expected and what was found.

Each cached file has a record in ``DIR/.neurobatch-cache/files/<protocol>/<path>.json``: its
URL, size, ETag, fingerprint, MD5 and SHA-256 (so the copy can be checked again later) and
when it was fetched; each input has one in ``DIR/.neurobatch-cache/inputs/...``: the
manifest's fingerprint, its files and its companions. A later fetch compares the input's record with the
manifest's fingerprint, which discovery already read, and reads nothing of the input when
they match (a companion is asked for its ``info``, as the ingest stage's key does anyway);
a remote that changed is fetched again, file by file. The records and
the per-file locks (:mod:`filelock`: two items of one input, or two runs, fetch it once) are
kept apart from the mirrored files, so that ``DIR/<protocol>/...`` holds only the remote's
files.

Local inputs are never copied: they are read in place.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any, Literal

import filelock
import fsspec

from neurobatch.errors import InputError, InputNotFoundError, StorageError
from neurobatch.io import files
from neurobatch.io.discover import fingerprint
from neurobatch.io.loaders.sidecar import resolve_sidecar

__all__ = [
    "BLOCK_SIZE",
    "RECORDS",
    "TEMPLATE_ARGUMENTS",
    "Fetched",
    "cache_path",
    "companion_urls",
    "fetch_file",
    "fetch_input",
    "is_remote",
]

logger = logging.getLogger(__name__)

BLOCK_SIZE = 16 * 2**20
"""Bytes of one ranged read while downloading (16 MiB)."""

RECORDS = ".neurobatch-cache"
"""The folder inside the cache that holds the records and locks."""

TEMPLATE_ARGUMENTS: tuple[str, ...] = ("annotation", "events_file")
"""Loader arguments that name a file relative to the input: fetched with it."""


@dataclass(frozen=True)
class Fetched:
    """A cached input: where its copy is, and how it got there.

    Attributes
    ----------
    url : str
        The remote input.
    path : str
        Its local copy (a file, or a folder for a folder input).
    status : {"fetched", "cached"}
        Whether anything was downloaded now, or every file was already current.
    bytes : int
        Bytes downloaded now (0 when cached).
    files : dict of str to str
        Every cached file of the input (inside a folder, and its companions): local path
        -> remote URL.
    """

    url: str
    path: str
    status: Literal["fetched", "cached"]
    bytes: int = 0
    files: dict[str, str] = field(default_factory=dict)

    def remote(self, path: str) -> str:
        """The remote URL of a cached file (``path`` itself when it is not one of them).

        Examples
        --------
        >>> copy = Fetched("s3://lab/a.csv", "/c/s3/lab/a.csv", "cached",
        ...                files={"/c/s3/lab/a.json": "s3://lab/a.json"})
        >>> copy.remote("/c/s3/lab/a.json"), copy.remote("/elsewhere.json")
        ('s3://lab/a.json', '/elsewhere.json')
        """
        return self.files.get(path, path)


def is_remote(url: str) -> bool:
    """Whether ``url`` names a remote store (anything but a local path or ``file://``).

    Examples
    --------
    >>> is_remote("s3://lab/x.csv"), is_remote("/data/x.csv"), is_remote("file:///data/x.csv")
    (True, False, False)
    """
    protocol = fsspec.core.split_protocol(url)[0]
    return protocol not in (None, "file", "local")


def _split(fs: Any, path: str) -> tuple[str, list[str]]:
    """A remote path's protocol and its parts, refused when a part would leave the cache."""
    full = str(fs.unstrip_protocol(path))
    protocol, _, rest = full.partition("://")
    parts = [part for part in rest.split("/") if part]
    if not parts or any(part in (".", "..") for part in parts):
        raise InputError(
            f"{full}: cannot be cached: its path has an empty, '.' or '..' part; expected a "
            "plain key"
        )
    return protocol, parts


def _mirror(
    cache: str, fs: Any, path: str, records: Literal["files", "inputs"] = "files"
) -> tuple[str, str]:
    """The cached copy of ``path`` and its record (without a suffix)."""
    protocol, parts = _split(fs, path)
    cache = os.path.abspath(cache)
    return (
        os.path.join(cache, protocol, *parts),
        os.path.join(cache, RECORDS, records, protocol, *parts),
    )


def cache_path(cache: str, url: str, *, storage_options: Mapping[str, Any] | None = None) -> str:
    """Where the cached copy of ``url`` is: ``cache/<protocol>/<path>``.

    Parameters
    ----------
    cache : str
        The cache folder (``input.cache``).
    url : str
        A remote file or folder.
    storage_options : mapping, optional
        Options for the fsspec filesystem.

    Returns
    -------
    str
        A local path.

    Raises
    ------
    neurobatch.errors.InputError
        If the URL's path has a ``..`` part (it would leave the cache).

    Examples
    --------
    >>> cache_path("/cache", "s3://lab/raw/x.csv")
    '/cache/s3/lab/raw/x.csv'
    >>> cache_path("/cache", "memory://lab/../x.csv")
    Traceback (most recent call last):
    ...
    neurobatch.errors.InputError: memory:///lab/../x.csv: cannot be cached: its path has an empty, '.' or '..' part; expected a plain key
    """
    fs, path = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    return _mirror(cache, fs, str(path))[0]


# --- records ----------------------------------------------------------------------------------


def _read_json(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            found = json.load(f)
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def _write_json(path: str, value: Mapping[str, Any]) -> None:
    files.write_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def _remove(*paths: str) -> None:
    for path in paths:
        if os.path.lexists(path):
            os.remove(path)


def _expected_md5(info: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The MD5 a store's listing gives for the content (hex), and the ETag as it is."""
    etag = info.get("ETag") or info.get("etag")
    etag = None if etag is None else str(etag).strip('"')
    if etag is not None and len(etag) == 32 and all(c in "0123456789abcdef" for c in etag):
        return etag, etag
    md5 = info.get("md5Hash")  # GCS: base64 of the digest
    if md5:
        try:
            return base64.b64decode(str(md5)).hex(), etag
        except (ValueError, binascii.Error):
            pass
    return None, etag


def _current(record: Mapping[str, Any] | None, local: str, stamp: str) -> bool:
    """Whether the record says the local copy is the remote with fingerprint ``stamp``."""
    if record is None or record.get("fingerprint") != stamp:
        return False
    try:
        return os.path.getsize(local) == record.get("size")
    except OSError:
        return False


# --- one file ---------------------------------------------------------------------------------


def _read_block(fs: Any, path: str, url: str, start: int, end: int) -> bytes:
    """Bytes ``[start, end)`` of the remote, a transient error retried."""
    try:
        data: bytes = files.retried(
            lambda: fs.cat_file(path, start=start, end=end), url=url, action="reading"
        )
    except StorageError as e:  # still unreachable: the input's fault, not the output's
        raise InputError(f"{e}; the partial download is kept: fetch again to resume") from e
    except FileNotFoundError as e:
        raise InputNotFoundError(f"{url}: vanished while it was downloaded") from e
    except OSError as e:
        raise InputError(f"cannot download: {files.storage_error(e, url, action='reading')}") from e
    return data


def _download(
    fs: Any, path: str, url: str, part: str, info: Mapping[str, Any], block_size: int
) -> tuple[int, Any, Any]:
    """Fill ``part`` up to the remote's size; the bytes read now and the content's hashes."""
    size = int(info.get("size") or 0)
    stamp = fingerprint(info)
    md5, sha256 = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    progress = _read_json(part + ".json")
    have = os.path.getsize(part) if os.path.exists(part) else 0
    if progress is None or progress.get("fingerprint") != stamp or have > size:
        if have:
            logger.info("%s changed since its partial download: starting over", url)
        have = 0
        _write_json(part + ".json", {"url": url, "size": size, "fingerprint": stamp})
    with open(part, "r+b" if os.path.exists(part) else "w+b") as f:
        f.truncate(have)
        while block := f.read(block_size):  # the part already there is hashed again
            md5.update(block)
            sha256.update(block)
        if have:
            logger.info("%s: resuming at byte %d of %d", url, have, size)
        offset = have
        while offset < size:
            data = _read_block(fs, path, url, offset, min(offset + block_size, size))
            if not data:
                raise InputError(
                    f"{url}: the store returned no bytes at offset {offset}, expected "
                    f"{size} bytes (its listed size); has it been truncated?"
                )
            f.write(data)
            md5.update(data)
            sha256.update(data)
            offset += len(data)
        f.flush()
        os.fsync(f.fileno())
    return size - have, md5, sha256


def _verify(url: str, part: str, info: Mapping[str, Any], md5: Any) -> str:
    """The check the part passed (``md5`` or ``size``); raise when it fails (part removed)."""
    size = int(info.get("size") or 0)
    found = os.path.getsize(part)
    expected_md5, etag = _expected_md5(info)
    problem = None
    if found != size:
        problem = f"its size is {found} bytes, expected {size} (the remote's)"
    elif expected_md5 is not None and md5.hexdigest() != expected_md5:
        problem = f"its MD5 is {md5.hexdigest()}, expected {expected_md5} (the remote's ETag)"
    if problem is not None:
        _remove(part, part + ".json")
        raise InputError(f"{url}: the downloaded copy is corrupt: {problem}; it was removed")
    if expected_md5 is None and etag is not None and "-" in etag:
        logger.debug("%s: multipart ETag %s: size verified, the ETag recorded", url, etag)
    return "md5" if expected_md5 is not None else "size"


def fetch_file(
    url: str,
    cache: str,
    *,
    info: Mapping[str, Any] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    block_size: int = BLOCK_SIZE,
) -> tuple[str, int]:
    """Copy one remote file into the cache, verified; resume a download that was killed.

    Parameters
    ----------
    url : str
        The remote file.
    cache : str
        The cache folder.
    info : mapping, optional
        The file's fsspec ``info`` as listed (size, ETag or modification time); read from
        the store when not given.
    storage_options : mapping, optional
        Options for the fsspec filesystem.
    block_size : int, default :data:`BLOCK_SIZE`
        Bytes of one ranged read.

    Returns
    -------
    path : str
        The cached copy.
    downloaded : int
        Bytes read from the store now (0 when the copy was current).

    Raises
    ------
    neurobatch.errors.InputError
        If the downloaded copy does not verify (its size, or its MD5 against the ETag): it
        is removed. If the store cannot be read (unreachable after retries, access denied):
        the partial download is kept for the next fetch to resume. If the store does not
        give the file's size.
    neurobatch.errors.InputNotFoundError
        If the file does not exist.
    neurobatch.errors.StorageError
        If the cache folder cannot be written (a full disk, say).

    Examples
    --------
    >>> import tempfile
    >>> fsspec.filesystem("memory").pipe("/cache-doc/a.csv", b"time,signal\\n0,1\\n")
    >>> cache = tempfile.mkdtemp()
    >>> path, downloaded = fetch_file("memory://cache-doc/a.csv", cache)
    >>> open(path, "rb").read(), downloaded
    (b'time,signal\\n0,1\\n', 16)
    >>> fetch_file("memory://cache-doc/a.csv", cache)[1]  # current: nothing read
    0
    """
    fs, path = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    path = str(path)
    local, record_path = _mirror(cache, fs, path)
    if info is None:
        try:
            info = fs.info(path)
        except FileNotFoundError:
            raise InputNotFoundError(f"{url}: does not exist; expected a file to cache") from None
    if info.get("size") is None:
        raise InputError(
            f"{url}: the store does not give its size, so a copy cannot be verified; expected "
            "a store that does (S3, GCS, Azure, an HTTP server sending Content-Length)"
        )
    stamp = fingerprint(info)
    os.makedirs(os.path.dirname(record_path), exist_ok=True)
    with (
        files.translated(local, action="writing"),
        filelock.FileLock(record_path + ".lock"),
    ):
        if _current(_read_json(record_path + ".json"), local, stamp):
            return local, 0
        os.makedirs(os.path.dirname(local), exist_ok=True)
        part = local + ".part"
        downloaded, md5, sha256 = _download(fs, path, url, part, info, block_size)
        verified = _verify(url, part, info, md5)
        os.replace(part, local)
        _remove(part + ".json")
        _write_json(
            record_path + ".json",
            {
                "url": url,
                "size": int(info.get("size") or 0),
                "etag": _expected_md5(info)[1],
                "fingerprint": stamp,
                "md5": md5.hexdigest(),
                "sha256": sha256.hexdigest(),
                "verified": verified,
                "fetched_at": datetime.now(UTC).isoformat(),
            },
        )
    logger.info("%s: %d bytes fetched into %s (%s verified)", url, downloaded, local, verified)
    return local, downloaded


# --- one input --------------------------------------------------------------------------------


def companion_urls(
    url: str,
    loader_arguments: Mapping[str, Any],
    *,
    target: Literal["file", "folder"] = "file",
    storage_options: Mapping[str, Any] | None = None,
    siblings: bool = True,
) -> list[str]:
    """The files that travel with an input, which its loader reads beside it.

    The sidecars the loader arguments name (:data:`TEMPLATE_ARGUMENTS`) when they lie
    relative to the input (an absolute path or a URL is read where it is), outside a
    folder input; and, for a file input, the files in its folder sharing its stem. The
    folder is listed only for those: a cached input whose record is current is not.

    Parameters
    ----------
    url : str
        The remote input.
    loader_arguments : mapping
        The item's loader arguments.
    target : {"file", "folder"}, default "file"
        Whether the input is a file or a folder.
    storage_options : mapping, optional
        Options for the fsspec filesystem.
    siblings : bool, default True
        Also list the input's folder for the files sharing its stem (else only the
        sidecars, found without a read of the store).

    Returns
    -------
    list of str
        Remote URLs, sorted, without the input itself.

    Examples
    --------
    >>> fs = fsspec.filesystem("memory")
    >>> for name in ["x.ap.bin", "x.ap.meta", "x.lf.bin", "notes.txt"]:
    ...     fs.pipe(f"/companions-doc/{name}", b"")
    >>> companion_urls("memory://companions-doc/x.ap.bin", {"annotation": "{stem}.json"})
    ['memory:///companions-doc/x.ap.json', 'memory:///companions-doc/x.ap.meta']
    """
    so = dict(storage_options or {})
    fs, path = fsspec.core.url_to_fs(url, **so)
    path = str(path).rstrip("/")
    found: set[str] = set()
    for name in TEMPLATE_ARGUMENTS:
        template = loader_arguments.get(name)
        if not isinstance(template, str) or "://" in template or template.startswith("/"):
            continue
        resolved = resolve_sidecar(url, template, target=target, storage_options=so)
        _, sidecar = fsspec.core.url_to_fs(resolved, **so)
        if target == "folder" and str(sidecar).startswith(path + "/"):
            continue  # inside the folder: fetched with it
        found.add(str(fs.unstrip_protocol(str(sidecar))))
    if siblings and target == "file":
        stem = PurePosixPath(path).stem
        for entry in fs.ls(posixpath.dirname(path), detail=True):
            name = str(entry["name"]).rstrip("/")
            if entry.get("type") == "file" and name != path and PurePosixPath(name).stem == stem:
                found.add(str(fs.unstrip_protocol(name)))
    return sorted(found)


def _fetch_folder(
    fs: Any, path: str, cache: str, so: Mapping[str, Any], block_size: int
) -> tuple[int, dict[str, str]]:
    """Every file of a folder input (bytes read, cached path -> URL); the cached files no
    longer in the remote folder are removed."""
    local, _ = _mirror(cache, fs, path)
    prefix = path + "/"
    downloaded, cached = 0, {}
    for name, info in sorted(fs.find(path, detail=True).items()):
        if info.get("type", "file") != "file":
            continue
        remote = str(fs.unstrip_protocol(prefix + str(name).removeprefix(prefix)))
        copy, n = fetch_file(remote, cache, info=info, storage_options=so, block_size=block_size)
        downloaded += n
        cached[copy] = remote
    for root, _, names in os.walk(local):
        for name in names:
            stale = os.path.join(root, name)
            if stale not in cached and not name.endswith((".part", ".part.json")):
                logger.info("%s is no longer in the remote folder: removed", stale)
                os.remove(stale)
    return downloaded, cached


def _recorded(
    cache: str, record: Mapping[str, Any] | None, fingerprint: str | None
) -> dict[str, str] | None:
    """The input's files (cached path -> URL) when its record says they are current."""
    if record is None or fingerprint is None or record.get("fingerprint") != fingerprint:
        return None
    cached, sizes = {}, record.get("sizes", {})
    for name, url in record.get("files", {}).items():
        copy = os.path.join(cache, name)
        try:
            if os.path.getsize(copy) != sizes.get(name):
                return None
        except OSError:
            return None
        cached[copy] = str(url)
    return cached


def fetch_input(
    url: str,
    cache: str,
    *,
    fingerprint: str | None = None,
    target: Literal["file", "folder"] = "file",
    loader_arguments: Mapping[str, Any] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    block_size: int = BLOCK_SIZE,
) -> Fetched | None:
    """Make the cached copy of one input current: the file or folder and its companions.

    Parameters
    ----------
    url : str
        The input (a manifest's ``url``).
    cache : str
        The cache folder (``input.cache``).
    fingerprint : str, optional
        The input's fingerprint as discovery listed it (the manifest's): when its record
        has the same and its files are there, the input itself is not read again (its
        companions are asked for their ``info`` only). Without it every file is checked
        against the store.
    target : {"file", "folder"}, default "file"
        Whether the input is a file or a folder.
    loader_arguments : mapping, optional
        The item's loader arguments: the sidecars they name are fetched too
        (:func:`companion_urls`).
    storage_options : mapping, optional
        Options for the fsspec filesystem.
    block_size : int, default :data:`BLOCK_SIZE`
        Bytes of one ranged read.

    Returns
    -------
    Fetched or None
        The cached copy; None for a local input, which is read in place.

    Raises
    ------
    neurobatch.errors.InputError
        If a file does not verify, or the store cannot be read (see :func:`fetch_file`).
    neurobatch.errors.StorageError
        If the cache folder cannot be written.

    Examples
    --------
    >>> import tempfile
    >>> fs = fsspec.filesystem("memory")
    >>> fs.pipe("/fetch-doc/block-1/data.tev", b"\\x00" * 64)
    >>> fs.pipe("/fetch-doc/block-1/data.tsq", b"\\x01" * 16)
    >>> cache = tempfile.mkdtemp()
    >>> copy = fetch_input("memory://fetch-doc/block-1", cache, target="folder")
    >>> copy.status, copy.bytes, sorted(os.listdir(copy.path))
    ('fetched', 80, ['data.tev', 'data.tsq'])
    >>> fetch_input("memory://fetch-doc/block-1", cache, target="folder").bytes
    0
    >>> fetch_input("/data/x.csv", cache) is None  # local: read in place
    True
    """
    if not is_remote(url):
        logger.info("%s is local: read in place, not copied to input.cache", url)
        return None
    so = dict(storage_options or {})
    fs, path = fsspec.core.url_to_fs(url, **so)
    path = str(path).rstrip("/")
    cache = os.path.abspath(cache)
    local, record_path = _mirror(cache, fs, path, "inputs")
    record = _read_json(record_path + ".json")
    cached = _recorded(cache, record, fingerprint)
    downloaded, current = 0, cached is not None
    if cached is not None and record is not None:  # this item's sidecars too (no listing)
        named = companion_urls(
            url, loader_arguments or {}, target=target, storage_options=so, siblings=False
        )
        companions = sorted({str(c) for c in record.get("companions", [])} | set(named))
    else:
        if target == "folder":
            downloaded, cached = _fetch_folder(fs, path, cache, so, block_size)
        else:
            _, downloaded = fetch_file(url, cache, storage_options=so, block_size=block_size)
            cached = {local: url}
        companions = companion_urls(url, loader_arguments or {}, target=target, storage_options=so)
    found = dict(cached)
    for companion in companions:
        try:
            copy, n = fetch_file(companion, cache, storage_options=so, block_size=block_size)
        except InputNotFoundError:  # the loader says whether it needs it
            logger.debug("%s: companion %s does not exist", url, companion)
            continue
        downloaded += n
        found[copy] = companion
    if fingerprint is not None and not current:
        _write_json(
            record_path + ".json",
            {
                "url": url,
                "fingerprint": fingerprint,
                "files": {os.path.relpath(c, cache): u for c, u in cached.items()},
                "sizes": {os.path.relpath(c, cache): os.path.getsize(c) for c in cached},
                "companions": companions,
            },
        )
    status: Literal["fetched", "cached"] = "fetched" if downloaded else "cached"
    return Fetched(url, local, status, downloaded, found)
