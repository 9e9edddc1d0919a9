"""Whole files and folders written so that a reader never sees half of one.

- :func:`write_bytes` / :func:`write_text`: on a local disk written aside and moved into
  place with ``os.replace``; on an object store one PUT, which is atomic.
- :func:`replace_folder`: a folder built beside its old version (a Zarr store, say) takes
  its place. On Linux the two are exchanged in one ``renameat2(RENAME_EXCHANGE)`` call, so
  the path always holds a complete version; where the filesystem cannot exchange (NFS, other
  systems) the old version is moved aside first and moved back if the new one cannot be put
  in place. On an object store, which has no renames, the old objects are removed and the
  new ones copied: readers may find the store missing while that runs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import logging
import os
import shutil
import uuid
from collections.abc import Mapping
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

__all__ = ["replace_file", "replace_folder", "write_bytes", "write_text"]

logger = logging.getLogger(__name__)

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _fs(url: str, storage_options: Mapping[str, Any] | None) -> tuple[Any, str]:
    fs, path = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    return fs, str(path)


def write_bytes(url: str, data: bytes, *, storage_options: Mapping[str, Any] | None = None) -> None:
    """Write ``data`` to ``url`` whole: a reader sees the old file or the new one.

    Parameters
    ----------
    url : str
        Local path or fsspec URL; missing parent folders are made.
    data : bytes
        The content.
    storage_options : mapping, optional
        Options for the fsspec filesystem.

    Examples
    --------
    >>> write_bytes("memory://files-doc/a/b.txt", b"hello")
    >>> fsspec.open("memory://files-doc/a/b.txt").open().read()
    b'hello'
    """
    fs, path = _fs(url, storage_options)
    folder = path.rsplit("/", 1)[0]
    fs.makedirs(folder, exist_ok=True)
    if not isinstance(fs, LocalFileSystem):
        fs.pipe_file(path, data)
        return
    aside = f"{path}.{uuid.uuid4().hex}.tmp"
    try:
        with open(aside, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(aside, path)
    finally:
        if os.path.exists(aside):
            os.remove(aside)


def write_text(url: str, text: str, *, storage_options: Mapping[str, Any] | None = None) -> None:
    """Write ``text`` (UTF-8) to ``url`` whole (see :func:`write_bytes`)."""
    write_bytes(url, text.encode(), storage_options=storage_options)


@functools.cache
def _renameat2() -> Any:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    function = getattr(libc, "renameat2", None)
    if function is not None:
        function.argtypes = [ctypes.c_int, ctypes.c_char_p] * 2 + [ctypes.c_uint]
    return function


def _exchange(a: str, b: str) -> bool:
    """Swap two local paths in one step; False where the system or filesystem cannot."""
    function = _renameat2()
    if function is None:
        return False
    status = function(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if status == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EXDEV):
        return False
    raise OSError(code, f"cannot exchange {a} and {b}: {os.strerror(code)}")


def _replace_local(staged: str, final: str) -> None:
    if not os.path.exists(final):
        os.rename(staged, final)
        return
    if _exchange(staged, final):
        logger.debug("exchanged %s and %s", staged, final)
        _remove_local(staged)  # now the old version
        return
    aside = f"{final}.{uuid.uuid4().hex}.old"
    os.rename(final, aside)
    try:
        os.rename(staged, final)
    except OSError:
        os.rename(aside, final)
        raise
    _remove_local(aside)


def _remove_local(path: str) -> None:
    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def replace_file(
    staged: str, final: str, *, storage_options: Mapping[str, Any] | None = None
) -> None:
    """Put the file ``staged`` in the place of ``final``: ``os.replace`` on a local disk, one
    server-side copy on an object store (each atomic).

    Examples
    --------
    >>> write_bytes("memory://files-doc/new.txt", b"new")
    >>> replace_file("memory://files-doc/new.txt", "memory://files-doc/old.txt")
    >>> fsspec.open("memory://files-doc/old.txt").open().read()
    b'new'
    """
    fs, staged_path = _fs(staged, storage_options)
    final_path = fs._strip_protocol(final)
    if isinstance(fs, LocalFileSystem):
        os.replace(staged_path, final_path)
    else:
        fs.mv(staged_path, final_path)


def replace_folder(
    staged: str, final: str, *, storage_options: Mapping[str, Any] | None = None
) -> None:
    """Put the folder ``staged`` in the place of ``final`` (which may not exist yet).

    Parameters
    ----------
    staged : str
        The new version, complete (a local path or fsspec URL on the same filesystem).
    final : str
        Where it goes; its old version is deleted.
    storage_options : mapping, optional
        Options for the fsspec filesystem.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> for version in ("old", "new"):
    ...     (root / version).mkdir()
    ...     _ = (root / version / "v.txt").write_text(version)
    >>> replace_folder(str(root / "new"), str(root / "old"))
    >>> (root / "old" / "v.txt").read_text(), (root / "new").exists()
    ('new', False)
    """
    fs, staged_path = _fs(staged, storage_options)
    final_path = fs._strip_protocol(final)
    if isinstance(fs, LocalFileSystem):
        os.makedirs(os.path.dirname(final_path), exist_ok=True)
        _replace_local(staged_path, final_path)
        return
    if fs.exists(final_path):
        fs.rm(final_path, recursive=True)
    fs.copy(staged_path, final_path, recursive=True)
    fs.rm(staged_path, recursive=True)
