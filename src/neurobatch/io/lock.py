"""One run per output folder: a lease lock at ``OUT/.neurobatch-lock.json``.

The lock is a small JSON object naming its holder: ``host``, ``pid``, ``user``, ``started``
(ISO 8601, UTC), ``renewed`` (epoch seconds), ``lease_s``, a random ``token`` and the
``command``. While it is held, a daemon thread rewrites ``renewed`` every ``lease_s / 3``.
A lock is *stale*, and the next run takes it over with a warning, when it is not valid JSON,
when its host is this host and its pid is not running, or when its lease has expired
(``now > renewed + lease_s``, on any host). A live lock makes :meth:`OutputLock.acquire`
fail at once with one line naming the holder, or poll until it is free when ``wait=True``.

Of N runs racing for a free or stale lock exactly one wins, because every write is a
compare-and-swap:

* local disk: every change happens under a :class:`filelock.FileLock` on the sibling
  ``.neurobatch-lock.json.guard`` (left in place): creation with ``O_CREAT | O_EXCL``, the
  content written fully and fsynced; take-over, renewal and removal by read, compare and
  ``os.replace`` of a fsynced temporary file;
* S3 (s3fs): creation with a conditional PUT (``If-None-Match: *``), take-over, renewal and
  removal with ``If-Match`` on the ETag that was read;
* other filesystems (``memory://``, ...): best effort, check then write, *not* race-free.

A lease is judged by the reader's clock, so hosts sharing an output keep their clocks in sync.
"""

from __future__ import annotations

import contextlib
import datetime
import getpass
import json
import logging
import math
import os
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self

import filelock
import fsspec
import psutil
from fsspec.asyn import sync
from fsspec.implementations.local import LocalFileSystem

from neurobatch.errors import OutputLockedError

__all__ = ["LOCK_NAME", "OutputLock", "live_holder", "read_lock"]

logger = logging.getLogger(__name__)

LOCK_NAME = ".neurobatch-lock.json"
"""Name of the lock file inside an output URL."""


class _FsspecBackend:
    """Compare-and-swap of the lock file; this base class checks then writes (not race-free).

    ``read`` gives the lock's bytes and version; ``create``, ``replace`` and ``delete``
    return the new version (or True) when they wrote, None (False) when the lock was not in
    the expected state.
    """

    def __init__(self, fs: Any, path: str) -> None:
        self.fs, self.path = fs, path

    def read(self) -> tuple[bytes, object] | None:
        try:
            data: bytes = self.fs.cat_file(self.path)
        except FileNotFoundError:
            return None
        return data, data

    def create(self, data: bytes) -> object | None:
        with self._guard():
            return data if self._create(data) else None

    def replace(self, data: bytes, expected: object) -> object | None:
        with self._guard():
            if (current := self.read()) is None or current[1] != expected:
                return None
            self._write(data)
            return data

    def delete(self, expected: object) -> bool:
        with self._guard():
            if (current := self.read()) is None or current[1] != expected:
                return False
            self.fs.rm_file(self.path)
            return True

    def _guard(self) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def _create(self, data: bytes) -> bool:
        if self.fs.exists(self.path):
            return False
        self._write(data)
        return True

    def _write(self, data: bytes) -> None:
        self.fs.pipe_file(self.path, data)


class _LocalBackend(_FsspecBackend):
    """Exclusive creation with ``O_EXCL``; every change under a file lock on the guard file."""

    def _guard(self) -> contextlib.AbstractContextManager[Any]:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        return filelock.FileLock(f"{self.path}.guard")

    def _create(self, data: bytes) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        _write_fd(fd, data)
        return True

    def _write(self, data: bytes) -> None:
        temporary = f"{self.path}.{uuid.uuid4().hex}.tmp"
        try:
            _write_fd(os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644), data)
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(temporary)
            raise


class _S3Backend(_FsspecBackend):
    """Conditional requests: ``If-None-Match: *`` to create, ``If-Match: <etag>`` to change."""

    def read(self) -> tuple[bytes, object] | None:
        bucket, key, _ = self.fs.split_path(self.path)

        async def get() -> tuple[bytes, object] | None:  # bytes and ETag from one GET
            try:
                response = await self.fs._call_s3("get_object", Bucket=bucket, Key=key)
            except FileNotFoundError:
                return None
            try:
                return await response["Body"].read(), response["ETag"]
            finally:
                response["Body"].close()

        result: tuple[bytes, object] | None = sync(self.fs.loop, get)
        return result

    def create(self, data: bytes) -> object | None:
        return self._call("put_object", Body=data, IfNoneMatch="*")

    def replace(self, data: bytes, expected: object) -> object | None:
        return self._call("put_object", Body=data, IfMatch=expected)

    def delete(self, expected: object) -> bool:
        return self._call("delete_object", IfMatch=expected) is not None

    def _call(self, method: str, **kwargs: Any) -> object | None:
        """The new ETag (True if none) of a conditional request; None if its condition failed."""
        bucket, key, _ = self.fs.split_path(self.path)
        try:
            response = self.fs.call_s3(method, Bucket=bucket, Key=key, **kwargs)
        except OSError as e:
            if _failed_condition(e):
                return None
            raise
        finally:
            self.fs.invalidate_cache(self.path)
        etag: object = response.get("ETag", True)
        return etag


def _failed_condition(error: OSError) -> bool:
    """Whether an s3fs error is a failed precondition (412), a conflict (409) or no object."""
    if isinstance(error, FileExistsError | FileNotFoundError):
        return True
    response = getattr(error.__cause__, "response", None) or {}
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    code = response.get("Error", {}).get("Code")
    return status in (409, 412) or code in ("PreconditionFailed", "ConditionalRequestConflict")


def _write_fd(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd``, fsync and close it."""
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _backend(out_url: str, storage_options: Mapping[str, Any] | None) -> _FsspecBackend:
    fs, path = fsspec.core.url_to_fs(out_url, **dict(storage_options or {}))
    path = f"{path.rstrip('/')}/{LOCK_NAME}"
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    if isinstance(fs, LocalFileSystem):
        return _LocalBackend(fs, path)
    if "s3" in protocols and hasattr(fs, "call_s3"):
        return _S3Backend(fs, path)
    return _FsspecBackend(fs, path)


def _parse(current: tuple[bytes, object] | None) -> dict[str, Any] | None:
    """The lock's JSON object, or None when there is none or it is not a JSON object."""
    try:
        value = json.loads(current[0]) if current is not None else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _ours(holder: Mapping[str, Any] | None, token: str) -> bool:
    return holder is not None and holder.get("token") == token


def _describe(holder: Mapping[str, Any] | None) -> str:
    if holder is None:
        return "an unreadable holder"
    named = ", ".join(f"{key} {holder.get(key, '?')}" for key in ("host", "pid", "user"))
    return f"{named}, since {holder.get('started', '?')}"


def _stale_reason(holder: Mapping[str, Any] | None, now: float) -> str | None:
    """Why the lock of ``holder`` is stale, or None when its holder is alive."""
    if holder is None:
        return "the lock file is not a JSON object"
    try:
        renewed, lease_s, pid = (
            float(holder["renewed"]),
            float(holder["lease_s"]),
            int(holder["pid"]),
        )
    except (KeyError, TypeError, ValueError):
        return "the lock file lacks a valid renewed time, lease or pid"
    if holder.get("host") == socket.gethostname() and not psutil.pid_exists(pid):
        return f"its process {pid} is no longer running on this host"
    if now > renewed + lease_s:
        return f"its lease of {lease_s:g} s expired {now - renewed - lease_s:.1f} s ago"
    return None


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError, ImportError):  # no USER variable and no password entry
        return str(os.getuid()) if hasattr(os, "getuid") else "unknown"


def _dump(record: Mapping[str, Any]) -> bytes:
    return (json.dumps(record, indent=2) + "\n").encode()


def read_lock(
    out_url: str, *, storage_options: Mapping[str, Any] | None = None
) -> dict[str, Any] | None:
    """Read the lock of an output folder.

    Parameters
    ----------
    out_url : str
        The output folder, any fsspec URL.
    storage_options : mapping, optional
        For fsspec.

    Returns
    -------
    dict or None
        The holder's record (``host``, ``pid``, ``user``, ``started``, ``renewed``,
        ``lease_s``, ``token``, ``command``); None when there is no lock, or when the lock
        file is not a JSON object (which :meth:`OutputLock.acquire` takes over as stale).

    See Also
    --------
    OutputLock : Take and hold the lock.

    Examples
    --------
    >>> import tempfile
    >>> out = tempfile.mkdtemp()
    >>> with OutputLock(out, command="neurobatch run demo.yaml"):
    ...     read_lock(out)["command"]
    'neurobatch run demo.yaml'
    >>> print(read_lock(out))
    None
    """
    return _parse(_backend(out_url, storage_options).read())


def live_holder(
    out_url: str, *, storage_options: Mapping[str, Any] | None = None
) -> dict[str, Any] | None:
    """The holder of an output folder's lock, when it is alive.

    Parameters
    ----------
    out_url : str
        The output folder, any fsspec URL.
    storage_options : mapping, optional
        For fsspec.

    Returns
    -------
    dict or None
        As :func:`read_lock`; None also when the lock is stale (its process is gone from
        this host, or its lease expired), which the next run takes over.

    Examples
    --------
    >>> import tempfile
    >>> out = tempfile.mkdtemp()
    >>> with OutputLock(out):
    ...     live_holder(out)["pid"] == os.getpid()
    True
    >>> print(live_holder(out))
    None
    """
    holder = read_lock(out_url, storage_options=storage_options)
    return holder if holder is not None and _stale_reason(holder, time.time()) is None else None


class OutputLock:
    """A lock that allows one neurobatch run per output folder, renewed while it is held.

    Parameters
    ----------
    out_url : str
        The output folder, any fsspec URL (a local path, ``file://``, ``s3://bucket/prefix``,
        ``memory://``); the lock is ``OUT/.neurobatch-lock.json``.
    storage_options : mapping, optional
        For fsspec.
    lease_s : float, default 60.0
        Seconds for which a lock stays valid without renewal; it is renewed every
        ``lease_s / 3``. Another host takes it over only once the lease has expired.
    wait : bool, default False
        When another live run holds the lock, poll until it is released or stale instead of
        raising.
    poll_s : float, default 1.0
        Seconds between two polls when waiting.
    command : str, optional
        The command line of this run, recorded in the lock for whoever finds it.

    Raises
    ------
    ValueError
        If ``lease_s`` or ``poll_s`` is not a positive finite number.

    See Also
    --------
    read_lock : Who holds the lock of a folder.

    Notes
    -----
    On local disk and S3, exactly one of several runs racing for a free or stale lock wins.
    Other filesystems get a best-effort check-then-write. A run whose lock was taken over
    (it stalled past its lease) stops renewing, logs an error and reports :attr:`lost`.

    Examples
    --------
    >>> import tempfile
    >>> out = tempfile.mkdtemp()
    >>> with OutputLock(out, lease_s=30.0) as lock:
    ...     try:
    ...         OutputLock(out).acquire()
    ...     except OutputLockedError as e:
    ...         print(str(e).startswith(f"{out} is in use by another neurobatch run: host "))
    ...     print(lock.lost)
    True
    False
    """

    def __init__(
        self,
        out_url: str,
        *,
        storage_options: Mapping[str, Any] | None = None,
        lease_s: float = 60.0,
        wait: bool = False,
        poll_s: float = 1.0,
        command: str | None = None,
    ) -> None:
        for name, value in (("lease_s", lease_s), ("poll_s", poll_s)):
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        self.out_url, self.lease_s, self.wait, self.poll_s = out_url, lease_s, wait, poll_s
        self.command = command
        self.lock_url = f"{out_url.rstrip('/')}/{LOCK_NAME}"
        self._backend = _backend(out_url, storage_options)
        self._record: dict[str, Any] | None = None
        self._version: object = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost = False

    @property
    def lost(self) -> bool:
        """Whether another run took the lock over while this one held it."""
        return self._lost

    def acquire(self) -> None:
        """Take the lock: create it, or take over a stale one; start renewing it.

        Raises
        ------
        OutputLockedError
            If another live run holds the lock (and ``wait`` is False), or if this object
            already holds it.
        """
        if self._record is not None:
            raise OutputLockedError(f"{self.lock_url} is already held by this OutputLock")
        now = time.time()
        record = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "user": _user(),
            "started": datetime.datetime.fromtimestamp(now, datetime.UTC).isoformat("T", "seconds"),
            "renewed": now,
            "lease_s": self.lease_s,
            "token": secrets.token_hex(16),
            "command": self.command,
        }
        waiting = False
        while (version := self._attempt(record, waiting)) is None:
            waiting = True
            time.sleep(self.poll_s)
        self._record, self._version, self._lost = record, version, False
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._renew_loop, name="neurobatch-lock", daemon=True
        )
        self._thread.start()

    def _attempt(self, record: dict[str, Any], waiting: bool) -> object | None:
        """The version of the lock once ours; None if a live run holds it and we wait."""
        while True:
            record["renewed"] = time.time()
            data = _dump(record)
            version = self._backend.create(data)
            if version is not None:
                return version
            current = self._backend.read()
            if current is None:
                continue  # released in between: create it again
            holder = _parse(current)
            if _ours(holder, record["token"]):
                return current[1]  # a retried request reported our own write as a failure
            reason = _stale_reason(holder, time.time())
            if reason is None:
                message = f"{self.out_url} is in use by another neurobatch run: {_describe(holder)}"
                if not self.wait:
                    raise OutputLockedError(
                        f"{message} (lock {self.lock_url}); wait for it with --wait, "
                        "or remove the lock if that run is gone"
                    )
                if not waiting:
                    logger.info("%s; waiting for it to finish", message)
                return None
            version = self._backend.replace(data, current[1])
            if version is not None:
                logger.warning(
                    "took over the stale lock %s of %s: %s",
                    self.lock_url,
                    _describe(holder),
                    reason,
                )
                return version

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                if not self._renew():
                    return
            except Exception as e:  # noqa: BLE001 (e.g. the network): retry at the next interval
                logger.warning("could not renew the lock %s, will retry: %s", self.lock_url, e)

    def _renew(self) -> bool:
        """Rewrite ``renewed`` if the lock is still ours; False (and log) once it is lost."""
        record = dict(self._record or {}, renewed=time.time())
        version = self._backend.replace(_dump(record), self._version)
        if version is not None:
            self._record, self._version = record, version
            return True
        current = self._backend.read()
        holder = _parse(current)
        if current is not None and _ours(holder, record["token"]):
            self._version = current[1]  # a retried request reported our write as a failure
            return True
        self._lost = True
        logger.error(
            "lost the lock %s: it was taken over by %s; this run no longer owns %s",
            self.lock_url,
            _describe(holder) if current is not None else "nobody (it was removed)",
            self.out_url,
        )
        return False

    def release(self) -> None:
        """Stop renewing and remove the lock, only if it is still ours (its token matches)."""
        if self._record is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        token, self._record, self._thread = self._record["token"], None, None
        current = self._backend.read()
        holder = _parse(current)
        if current is None or not _ours(holder, token):
            if current is not None:
                logger.warning(
                    "left the lock %s: it belongs to %s", self.lock_url, _describe(holder)
                )
            return
        if not self._backend.delete(current[1]):
            logger.warning("left the lock %s: it changed while being removed", self.lock_url)

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc is None:
            self.release()
            return
        try:  # the block's error is the one to report: the lease ends by itself anyway
            self.release()
        except Exception as failure:  # noqa: BLE001 - e.g. the storage is down too
            logger.warning("could not release the lock of %s: %s", self.out_url, failure)
