"""Logs of a run and of each item: the package's records, captured per thread.

neurobatch logs to its own logger (``neurobatch``) and never configures the root logger.
While an item runs, the records its thread emits are captured into that item's log
(``OUT/logs/<item>.log``); the driver's into ``OUT/logs/run.log``.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["ThreadLog", "captured_log", "one_line"]

_PACKAGE_LOGGER = logging.getLogger("neurobatch")
_LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


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
    if _PACKAGE_LOGGER.level == logging.NOTSET or _PACKAGE_LOGGER.level > logging.INFO:
        _PACKAGE_LOGGER.setLevel(logging.INFO)
    _PACKAGE_LOGGER.addHandler(handler)
    try:
        yield handler
    finally:
        _PACKAGE_LOGGER.removeHandler(handler)


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
