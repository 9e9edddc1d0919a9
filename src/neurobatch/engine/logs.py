"""Logs of a run and of each item: the package's records, captured per thread.

neurobatch logs to its own logger (``neurobatch``) and never configures the root logger.
While an item runs, the records its thread emits are captured into that item's log
(``OUT/logs/<item>.log``); the driver's into ``OUT/logs/run.log`` (:func:`run_log`), which
on a local disk grows as the run goes, so that a run that fails, even on a full disk,
leaves what happened up to its failure, and the failure's one line.
"""

from __future__ import annotations

import io
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from neurobatch.errors import StorageError
from neurobatch.io import files

__all__ = ["RunLog", "ThreadLog", "captured_log", "one_line", "run_log"]

logger = logging.getLogger(__name__)

_PACKAGE_LOGGER = logging.getLogger("neurobatch")
_LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

_RESERVED = 64 * 2**10
"""Disk space kept reserved past the end of a streamed run log, so that its last lines (the
failure's among them) are written even once the disk is full..."""
_TOPPED_UP_BELOW = 16 * 2**10
"""...topped up when less than this is left of it."""


class ThreadLog(logging.Handler):
    """Collects the package's log records emitted by one thread (one item, or the driver)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.thread = threading.get_ident()
        self.buffer = io.StringIO()
        self.setFormatter(logging.Formatter(_LOG_FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.buffer.write(self.format(record) + "\n")

    @property
    def text(self) -> str:
        """Everything captured so far."""
        return self.buffer.getvalue()


@contextmanager
def _attached(handler: logging.Handler) -> Iterator[None]:
    if _PACKAGE_LOGGER.level == logging.NOTSET or _PACKAGE_LOGGER.level > logging.INFO:
        _PACKAGE_LOGGER.setLevel(logging.INFO)
    _PACKAGE_LOGGER.addHandler(handler)
    try:
        yield
    finally:
        _PACKAGE_LOGGER.removeHandler(handler)


@contextmanager
def captured_log() -> Iterator[ThreadLog]:
    """Capture the package's INFO and higher records of the calling thread.

    Examples
    --------
    >>> with captured_log() as log:
    ...     logging.getLogger("neurobatch.doc").info("hello %s", "there")
    >>> log.text.rstrip().endswith("neurobatch.doc: hello there")
    True
    """
    handler = ThreadLog()
    with _attached(handler):
        yield handler


class _Stream:
    """A local file written as it grows, with disk space reserved ahead of its end."""

    def __init__(self, path: str) -> None:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        self.size = self.reserved = 0
        self._top_up()

    def _top_up(self) -> None:
        if self.reserved - self.size < _TOPPED_UP_BELOW and files.reserve(
            self.fd, self.size, _RESERVED
        ):
            self.reserved = self.size + _RESERVED

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            view, self.size = view[written:], self.size + written
        self._top_up()

    def close(self) -> None:
        try:
            os.ftruncate(self.fd, self.size)  # gives back the space reserved past the end
        finally:
            os.close(self.fd)


class RunLog(ThreadLog):
    """The driver's records (see :func:`run_log`): kept, and on a local disk also streamed
    to the file as they come.

    Parameters
    ----------
    url : str
        The log file (``OUT/logs/run.log``).
    storage_options : mapping, optional
        Options for its filesystem.
    scrub : callable, optional
        Applied to each record's text before it is kept or written (masks secrets).
    """

    def __init__(
        self,
        url: str,
        *,
        storage_options: Mapping[str, Any] | None = None,
        scrub: Callable[[str], str] = str,
    ) -> None:
        super().__init__()
        self.url = url
        self.storage_options = dict(storage_options or {})
        self.scrub = scrub
        self.stream: _Stream | None = None
        fs, path = fsspec.core.url_to_fs(url, **self.storage_options)
        if isinstance(fs, LocalFileSystem):
            try:
                self.stream = _Stream(str(path))
            except OSError as error:  # written whole at the end instead
                logger.debug("cannot stream the run log to %s: %s", url, error)

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread != self.thread:
            return
        text = self.scrub(self.format(record)) + "\n"
        self.buffer.write(text)
        if self.stream is not None:
            try:
                self.stream.write(text.encode())
            except OSError:  # the disk is full past the reserve: written whole at the end
                self._close_stream(complete=False)

    def _close_stream(self, *, complete: bool) -> bool:
        stream, self.stream = self.stream, None
        if stream is None:
            return False
        try:
            stream.close()
        except OSError:
            return False
        return complete

    def save(self) -> None:
        """Close the streamed file, or write the whole log where it could not be streamed.

        Raises
        ------
        neurobatch.errors.StorageError
            If the log cannot be written.
        """
        if not self._close_stream(complete=True):
            files.write_text(self.url, self.text, storage_options=self.storage_options)


@contextmanager
def run_log(
    url: str,
    *,
    storage_options: Mapping[str, Any] | None = None,
    scrub: Callable[[str], str] = str,
) -> Iterator[RunLog]:
    """Capture the calling thread's records into the run's log at ``url``, even if it fails.

    On a local disk the file is written as records come, with 64 KiB of disk space kept
    reserved past its end, so that its last lines are written even once the disk is full;
    elsewhere (an object store) it is written whole at the end. If the block raises, its
    error is logged, as one line, before the log is closed; an error writing the log then
    does not hide the block's.

    Parameters
    ----------
    url : str
        The log file (``OUT/logs/run.log``); its previous content is replaced.
    storage_options : mapping, optional
        Options for its filesystem.
    scrub : callable, optional
        Applied to each record's text before it is kept or written (masks secrets).

    Yields
    ------
    RunLog
        Its ``text`` is everything captured so far.

    Raises
    ------
    neurobatch.errors.StorageError
        If the block succeeded but the log cannot be written.

    Examples
    --------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "logs", "run.log")
    >>> try:
    ...     with run_log(path, scrub=lambda text: text.replace("s3cr3t", "***")):
    ...         logging.getLogger("neurobatch.doc").info("key s3cr3t")
    ...         raise OSError(28, "No space left on device")
    ... except OSError:
    ...     pass
    >>> for line in open(path):
    ...     print(line.split(None, 3)[-1].rstrip())  # after the time and the level
    neurobatch.doc: key ***
    neurobatch.engine.logs: the run stopped: [Errno 28] No space left on device
    """
    handler = RunLog(url, storage_options=storage_options, scrub=scrub)
    failed = False
    try:
        with _attached(handler):
            try:
                yield handler
            except BaseException as error:
                failed = True
                logger.error("the run stopped: %s", one_line(error))
                raise
    finally:
        try:
            handler.save()
        except StorageError as failure:
            if not failed:
                raise
            logger.warning("could not write the run's log: %s", failure)


def one_line(error: BaseException) -> str:
    """An error as one line for people: the message, with the type unless it says enough.

    Examples
    --------
    >>> one_line(ValueError("bad\\n  value"))
    'bad value'
    >>> one_line(ZeroDivisionError("division by zero"))
    'ZeroDivisionError: division by zero'
    """
    text = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, ValueError | OSError | KeyError):
        return text
    return f"{type(error).__name__}: {text}"
