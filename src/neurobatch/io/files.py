"""Whole files and folders written so that a reader never sees half of one, and storage
faults turned into one line for people.

- :func:`write_bytes` / :func:`write_text`: on a local disk written aside and moved into
  place with ``os.replace`` (the aside file removed if anything fails); on an object store
  one PUT, which is atomic.
- :func:`replace_folder`: a folder built beside its old version (a Zarr store, say) takes
  its place. On Linux the two are exchanged in one ``renameat2(RENAME_EXCHANGE)`` call, so
  the path always holds a complete version; where the filesystem cannot exchange (NFS, other
  systems) the old version is moved aside first and moved back if the new one cannot be put
  in place. On an object store, which has no renames, the old objects are removed and the
  new ones copied: readers may find the store missing while that runs.
- :func:`retried` and :func:`translated`: a transient error (an endpoint that refuses or
  drops connections, a timeout, a 5xx answer) is retried with backoff for up to
  :data:`RETRY_SECONDS`; what still fails, and any other fault of the storage (a full disk,
  a quota, a read-only or forbidden folder, a device error), is raised as
  :class:`~neurobatch.errors.StorageError` naming the path, the cause and the fix.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Literal, TypeVar

import fsspec
from fsspec.implementations.local import LocalFileSystem

from neurobatch.errors import NeurobatchError, StorageError

__all__ = [
    "RETRY_SECONDS",
    "is_transient",
    "replace_file",
    "replace_folder",
    "reserve",
    "retried",
    "storage_error",
    "translated",
    "write_bytes",
    "write_text",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: What a storage call was doing when it failed, as its one line says it.
Action = Literal["reading", "writing", "listing", "removing", "replacing"]

RETRY_SECONDS = 60.0
"""How long a transient storage error is retried (waits of 0.5 s doubling up to 8 s) before
it is raised: a minute-long outage of the output's endpoint fails nothing already done."""

_FIRST_WAIT, _LONGEST_WAIT = 0.5, 8.0

#: When the outermost :func:`retried` call of this thread gives up: the calls retried
#: inside it share its time, so that nesting them never multiplies the wait.
_deadline: ContextVar[float | None] = ContextVar("neurobatch_retry_deadline", default=None)

#: Errors of the network or of a busy service, worth asking again (s3fs raises EBUSY for
#: 503 SlowDown and EREMOTEIO for 500 InternalError).
_TRANSIENT_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "EAGAIN",
        "EBUSY",
        "ECONNABORTED",
        "ECONNREFUSED",
        "ECONNRESET",
        "EHOSTUNREACH",
        "ENETDOWN",
        "ENETUNREACH",
        "EPIPE",
        "EREMOTEIO",
        "ETIMEDOUT",
    )
    if hasattr(errno, name)
)

#: What to do about a fault of the output folder, by errno.
_FIXES = {
    errno.ENOSPC: "free space or choose another output.url",
    errno.EDQUOT: "free space within the quota or choose another output.url",
    errno.EROFS: "choose a writable output.url",
    errno.EACCES: "give this user access to it or choose another output.url",
    errno.EPERM: "give this user access to it or choose another output.url",
    errno.EIO: "check the device (the kernel log names it) or choose another output.url",
}

#: Protocols of object stores: keys, no folders.
_OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "memory"})

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_FALLOC_FL_KEEP_SIZE = 1


# --- storage faults ---------------------------------------------------------------------------


@functools.cache
def _transient_types() -> tuple[type[BaseException], ...]:
    """Exception types of the network (the builtins', and botocore's and aiohttp's when the
    ``io`` extra installed them): a connection refused, reset or timed out."""
    found: list[type[BaseException]] = [ConnectionError, TimeoutError]
    try:
        import botocore.exceptions as botocore_errors  # type: ignore[import-untyped]

        found += [botocore_errors.ConnectionError, botocore_errors.HTTPClientError]
    except ImportError:  # pragma: no cover - botocore comes with s3fs
        pass
    try:
        from aiohttp import ClientConnectionError, ClientPayloadError

        found += [ClientConnectionError, ClientPayloadError]
    except ImportError:  # pragma: no cover - aiohttp comes with s3fs and gcsfs
        pass
    return tuple(found)


def is_transient(error: BaseException) -> bool:
    """Whether a storage call's error may pass if the call is made again.

    Parameters
    ----------
    error : BaseException
        What the call raised.

    Returns
    -------
    bool
        True for a connection refused, reset or timed out (the builtins', botocore's and
        aiohttp's errors), for an ``OSError`` whose errno says the same or that the
        service is busy, and for a :class:`~neurobatch.errors.StorageError` caused by one;
        False for anything else, neurobatch's other errors included.

    Examples
    --------
    >>> is_transient(ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"))
    True
    >>> is_transient(OSError(errno.ENOSPC, "No space left on device"))
    False
    >>> is_transient(FileNotFoundError("absent"))
    False
    """
    if isinstance(error, StorageError):  # raised before it was retried (:func:`translated`)
        return error.__cause__ is not None and is_transient(error.__cause__)
    if isinstance(error, NeurobatchError) or not isinstance(error, Exception):
        return False
    if isinstance(error, _transient_types()):
        return True
    return isinstance(error, OSError) and error.errno in _TRANSIENT_ERRNOS


def _cause(error: BaseException) -> str:
    """The cause as people say it: ``no space left on device``, or the error in one line."""
    code = getattr(error, "errno", None)
    if isinstance(error, OSError) and code in _FIXES:
        return os.strerror(code).lower()
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def storage_error(
    error: BaseException, url: str, *, action: Action, attempts: int = 1, seconds: float = 0.0
) -> StorageError:
    """The :class:`~neurobatch.errors.StorageError` that says, in one line, what ``error``
    did to ``url``.

    Parameters
    ----------
    error : BaseException
        The storage call's error.
    url : str
        The path or URL it was working on.
    action : {"reading", "writing", "listing", "removing", "replacing"}
        What it was doing.
    attempts : int, default 1
        How many times the call was made.
    seconds : float, default 0.0
        Over how long.

    Returns
    -------
    neurobatch.errors.StorageError
        Its ``errno`` is the cause's.

    Examples
    --------
    >>> full = OSError(errno.ENOSPC, "No space left on device")
    >>> str(storage_error(full, "out/trials_obs.parquet", action="writing"))
    'no space left on device writing out/trials_obs.parquet; free space or choose another output.url'
    >>> down = ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
    >>> print(storage_error(down, "s3://lab/out/run.json", action="writing", attempts=9,
    ...                     seconds=61.4))  # doctest: +NORMALIZE_WHITESPACE
    cannot reach the storage writing s3://lab/out/run.json (ConnectionRefusedError: [Errno
    111] Connection refused; 9 attempts over 61 s); re-run once it is reachable: items
    already done are kept
    """
    if is_transient(error):
        message = (
            f"cannot reach the storage {action} {url} ({_cause(error)}; {attempts} attempt"
            f"{'s' if attempts != 1 else ''} over {seconds:.0f} s); re-run once it is "
            "reachable: items already done are kept"
        )
    else:
        code = getattr(error, "errno", None)
        fix = _FIXES.get(code) if isinstance(code, int) else None
        message = f"{_cause(error)} {action} {url}" + (f"; {fix}" if fix else "")
    failure = StorageError(message)
    failure.errno = getattr(error, "errno", None)
    return failure


@contextmanager
def translated(url: str, *, action: Action) -> Iterator[None]:
    """Raise a fault of the storage met inside the block as a
    :class:`~neurobatch.errors.StorageError` naming ``url``.

    neurobatch's own errors (a :class:`~neurobatch.errors.StoreDamagedError`, say) pass
    unchanged, and so does ``FileNotFoundError`` except while writing (where it means
    the folder vanished).

    Parameters
    ----------
    url : str
        What the block works on.
    action : {"reading", "writing", "listing", "removing", "replacing"}
        What it does.

    Examples
    --------
    >>> with translated("/data/out/run.json", action="writing"):
    ...     raise OSError(errno.EROFS, "Read-only file system")
    Traceback (most recent call last):
    ...
    neurobatch.errors.StorageError: read-only file system writing /data/out/run.json; \
choose a writable output.url
    """
    try:
        yield
    except NeurobatchError:
        raise
    except FileNotFoundError as error:
        if action != "writing":
            raise
        raise storage_error(error, url, action=action) from error
    except Exception as error:
        if isinstance(error, OSError) or is_transient(error):
            raise storage_error(error, url, action=action) from error
        raise


def retried(call: Callable[[], T], *, url: str, action: Action) -> T:
    """Call ``call()``, and again after a transient error, for up to :data:`RETRY_SECONDS`.

    Only for calls that may be repeated: reads, and writes of whole objects. Calls retried
    inside ``call`` share its time.

    Parameters
    ----------
    call : callable
        The storage call, without arguments.
    url : str
        What it works on (named in the log and in the error).
    action : {"reading", "writing", "listing", "removing", "replacing"}
        What it does.

    Returns
    -------
    object
        What ``call`` returned.

    Raises
    ------
    neurobatch.errors.StorageError
        If a transient error lasted longer than :data:`RETRY_SECONDS`.

    Examples
    --------
    >>> answers = iter([ConnectionResetError(errno.ECONNRESET, "reset"), b"ok"])
    >>> def flaky():
    ...     answer = next(answers)
    ...     if isinstance(answer, Exception):
    ...         raise answer
    ...     return answer
    >>> retried(flaky, url="s3://lab/out/a.json", action="reading")
    b'ok'
    """
    start = time.monotonic()
    outer = _deadline.get()
    deadline = start + RETRY_SECONDS if outer is None else outer
    token = _deadline.set(deadline)
    try:
        return _retrying(call, url, action, start, deadline)
    finally:
        _deadline.reset(token)


def _retrying(call: Callable[[], T], url: str, action: Action, start: float, deadline: float) -> T:
    wait, attempts = _FIRST_WAIT, 0
    while True:
        attempts += 1
        try:
            result = call()
        except Exception as error:
            if not is_transient(error):
                raise
            now = time.monotonic()
            if now + wait > deadline:
                cause = (error.__cause__ if isinstance(error, StorageError) else None) or error
                failure = storage_error(
                    cause, url, action=action, attempts=attempts, seconds=now - start
                )
                raise failure from cause
            log = logger.warning if attempts == 1 else logger.debug
            log("%s %s: %s; trying again in %.1f s", action, url, _cause(error), wait)
            time.sleep(wait)
            wait = min(2 * wait, _LONGEST_WAIT)
            continue
        if attempts > 1:
            logger.info(
                "%s %s: done at attempt %d, after %.1f s",
                action,
                url,
                attempts,
                time.monotonic() - start,
            )
        return result


def _object_store(fs: Any) -> bool:
    protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
    return bool(protocols & _OBJECT_STORES)


def _fs(url: str, storage_options: Mapping[str, Any] | None) -> tuple[Any, str]:
    fs, path = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    return fs, str(path)


# --- whole files --------------------------------------------------------------------------------


def _write_aside(path: str, data: bytes) -> None:
    """Write a local file aside, fsynced, then move it into place; no aside file is left."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
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


def write_bytes(url: str, data: bytes, *, storage_options: Mapping[str, Any] | None = None) -> None:
    """Write ``data`` to ``url`` whole: a reader sees the old file or the new one.

    Transient errors are retried (:func:`retried`).

    Parameters
    ----------
    url : str
        Local path or fsspec URL; missing parent folders are made.
    data : bytes
        The content.
    storage_options : mapping, optional
        Options for the fsspec filesystem.

    Raises
    ------
    neurobatch.errors.StorageError
        If it cannot be written (a full disk, say); the old file, if any, is unchanged and
        nothing else is left.

    Examples
    --------
    >>> write_bytes("memory://files-doc/a/b.txt", b"hello")
    >>> fsspec.open("memory://files-doc/a/b.txt").open().read()
    b'hello'
    """
    fs, path = _fs(url, storage_options)

    def write() -> None:
        if isinstance(fs, LocalFileSystem):
            _write_aside(path, data)
            return
        if not _object_store(fs):  # an object store has no folders (s3fs would make a bucket)
            fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        fs.pipe_file(path, data)

    with translated(url, action="writing"):
        retried(write, url=url, action="writing")


def write_text(url: str, text: str, *, storage_options: Mapping[str, Any] | None = None) -> None:
    """Write ``text`` (UTF-8) to ``url`` whole (see :func:`write_bytes`)."""
    write_bytes(url, text.encode(), storage_options=storage_options)


# --- folders ----------------------------------------------------------------------------------


@functools.cache
def _libc() -> Any:
    return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


@functools.cache
def _renameat2() -> Any:
    function = getattr(_libc(), "renameat2", None)
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
    server-side copy on an object store (each atomic; transient errors retried).

    Raises
    ------
    neurobatch.errors.StorageError
        If it cannot be put in place; ``final`` is then unchanged.

    Examples
    --------
    >>> write_bytes("memory://files-doc/new.txt", b"new")
    >>> replace_file("memory://files-doc/new.txt", "memory://files-doc/old.txt")
    >>> fsspec.open("memory://files-doc/old.txt").open().read()
    b'new'
    """
    fs, staged_path = _fs(staged, storage_options)
    final_path = fs._strip_protocol(final)
    with translated(final, action="replacing"):
        if isinstance(fs, LocalFileSystem):
            os.replace(staged_path, final_path)
            return
        retried(lambda: fs.copy(staged_path, final_path), url=final, action="replacing")
        retried(lambda: fs.rm(staged_path), url=staged, action="removing")


def replace_folder(
    staged: str, final: str, *, storage_options: Mapping[str, Any] | None = None
) -> None:
    """Put the folder ``staged`` in the place of ``final`` (which may not exist yet).

    On an object store each step (remove the old objects, copy the new ones, remove the
    staged ones) is retried on its own after a transient error, so that a retry never
    copies a half-removed staged folder.

    Parameters
    ----------
    staged : str
        The new version, complete (a local path or fsspec URL on the same filesystem).
    final : str
        Where it goes; its old version is deleted.
    storage_options : mapping, optional
        Options for the fsspec filesystem.

    Raises
    ------
    neurobatch.errors.StorageError
        If it cannot be put in place.

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
    with translated(final, action="replacing"):
        if isinstance(fs, LocalFileSystem):
            os.makedirs(os.path.dirname(final_path), exist_ok=True)
            _replace_local(staged_path, final_path)
            return

        def remove_old() -> None:
            if fs.exists(final_path):
                fs.rm(final_path, recursive=True)

        retried(remove_old, url=final, action="removing")
        retried(
            lambda: fs.copy(staged_path, final_path, recursive=True), url=final, action="replacing"
        )
        retried(lambda: fs.rm(staged_path, recursive=True), url=staged, action="removing")


def reserve(fd: int, offset: int, length: int) -> bool:
    """Reserve disk space for a local file's next ``length`` bytes from ``offset``, without
    changing its size (``fallocate(FALLOC_FL_KEEP_SIZE)``), so that writes into it succeed
    even once the disk is full. Truncating the file to its size gives the space back.

    Parameters
    ----------
    fd : int
        An open file descriptor.
    offset, length : int
        The byte range.

    Returns
    -------
    bool
        False where it could not (no space left, a filesystem or system without it).

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryFile() as f:
    ...     _ = reserve(f.fileno(), 0, 65536)
    ...     os.fstat(f.fileno()).st_size  # the size is unchanged
    0
    """
    function = getattr(_libc(), "fallocate", None)
    if function is None:
        return False
    function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
    return bool(function(fd, _FALLOC_FL_KEEP_SIZE, offset, length) == 0)
