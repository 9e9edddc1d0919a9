"""Timeouts and bounded retries for every storage call, set once in each process.

Left alone, an S3 endpoint that accepts connections but never answers holds a call for
minutes: s3fs runs each request up to five times, each time with botocore's own five
attempts of 15 s (measured against such an endpoint: 25 attempts in 420 s; 83 s with 1 s
timeouts). :func:`configure` sets, for every filesystem fsspec makes in this process
afterwards (``neurobatch.io`` calls it with the defaults when it is imported, so every
worker has them; a run sets the pipeline's ``engine.storage_timeouts`` in the driver and
on its workers):

- S3 (s3fs and botocore): a connect and a read timeout, as s3fs's ``connect_timeout`` and
  ``read_timeout`` class attributes (set when fsspec first makes an S3 filesystem, if s3fs
  is not imported yet: importing it takes 0.3 s), which s3fs uses where a filesystem's own
  ``config_kwargs`` does not set them; ``attempts`` tries in all in botocore's standard
  retry mode (exponential backoff with jitter), as botocore session defaults (fsspec's
  ``conf["s3"]["session_vars"]``), which botocore uses where neither
  ``config_kwargs["retries"]``, ``AWS_MAX_ATTEMPTS``/``AWS_RETRY_MODE`` nor
  ``~/.aws/config`` says otherwise; and one pass of s3fs's own retry loop (its ``retries``
  class attribute), so that the two do not multiply (an answer cut off mid-body is then not
  read again here; :func:`neurobatch.io.files.retried` retries the output's calls). fsspec
  merges its configuration with a filesystem's options key by key, the options winning, so
  a pipeline's own ``config_kwargs`` (an addressing style, say) keeps these timeouts and
  attempts instead of replacing them.
- HTTP(S) (fsspec's HTTPFileSystem, aiohttp): the connect timeout and a read timeout
  between bytes on every session, unless its ``client_kwargs`` has a ``timeout``; fsspec
  does not retry HTTP requests.

Other protocols (local files, memory, gcsfs, adlfs) keep their own settings.
"""

from __future__ import annotations

import sys
from typing import Any

import fsspec
import fsspec.config

from neurobatch.config.sections import StorageTimeoutsConfig

__all__ = ["configure", "http_client", "is_timeout"]

_current = StorageTimeoutsConfig()
#: The botocore session defaults this module put in fsspec's configuration last.
_session_vars: dict[str, tuple[Any, ...]] | None = None


def configure(timeouts: StorageTimeoutsConfig) -> None:
    """Use ``timeouts`` for every S3 and HTTP(S) filesystem this process makes from now on.

    Parameters
    ----------
    timeouts : neurobatch.config.sections.StorageTimeoutsConfig
        The connect and read timeouts and the attempts (a pipeline's
        ``engine.storage_timeouts``).

    Examples
    --------
    >>> from s3fs import S3FileSystem
    >>> configure(StorageTimeoutsConfig(connect_s=5, read_s=20, attempts=2))
    >>> S3FileSystem.connect_timeout, S3FileSystem.read_timeout, S3FileSystem.retries
    (5.0, 20.0, 1)
    >>> fsspec.config.conf["s3"]["session_vars"]["max_attempts"]
    ('max_attempts', 'AWS_MAX_ATTEMPTS', 2, <class 'int'>)
    >>> configure(StorageTimeoutsConfig())  # the defaults again
    """
    global _current, _session_vars
    _current = timeouts
    s3 = fsspec.config.conf.setdefault("s3", {})
    if s3.get("session_vars") in (None, _session_vars):  # a user's own fsspec setting wins
        # (name in ~/.aws/config, environment variable, default, converter): botocore's form
        _session_vars = {
            "retry_mode": ("retry_mode", "AWS_RETRY_MODE", "standard", None),
            "max_attempts": ("max_attempts", "AWS_MAX_ATTEMPTS", timeouts.attempts, int),
        }
        s3["session_vars"] = _session_vars
    for protocol in ("http", "https"):
        fsspec.config.conf.setdefault(protocol, {}).setdefault("get_client", http_client)
    if "s3fs" in sys.modules:
        _set_s3_timeouts(sys.modules["s3fs"].S3FileSystem)
    else:  # fsspec imports s3fs through this module's S3FileSystem, which sets them then
        for protocol in ("s3", "s3a"):
            fsspec.register_implementation(
                protocol,
                f"{__name__}:S3FileSystem",
                clobber=True,
                errtxt="Install s3fs to access S3",
            )


def _set_s3_timeouts(s3_filesystem: Any) -> Any:
    s3_filesystem.connect_timeout = _current.connect_s
    s3_filesystem.read_timeout = _current.read_s
    s3_filesystem.retries = 1
    return s3_filesystem


def __getattr__(name: str) -> Any:
    if name == "S3FileSystem":  # s3fs's own class, imported on first use
        from s3fs import S3FileSystem  # type: ignore[import-untyped]

        return _set_s3_timeouts(S3FileSystem)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


async def http_client(**client_kwargs: Any) -> Any:
    """fsspec's HTTP session, with the configured timeouts unless ``timeout`` is given.

    fsspec calls it with a filesystem's ``client_kwargs`` (its ``get_client`` option).

    Parameters
    ----------
    **client_kwargs
        Passed to ``aiohttp.ClientSession``.

    Returns
    -------
    aiohttp.ClientSession
    """
    import aiohttp  # only where an HTTP filesystem is made (aiohttp comes with fsspec's)

    # no limit on the whole answer (a large file takes as long as it takes), only between bytes
    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=_current.connect_s, sock_read=_current.read_s
    )
    return aiohttp.ClientSession(**{"timeout": timeout} | client_kwargs)


def is_timeout(error: BaseException) -> bool:
    """Whether a storage call failed because its endpoint did not answer in time.

    Parameters
    ----------
    error : BaseException
        What the call raised; its causes are looked at too.

    Returns
    -------
    bool
        True for Python's, asyncio's and fsspec's timeouts and for botocore's connect and
        read timeouts, raised or as a cause.

    Examples
    --------
    >>> is_timeout(TimeoutError("timed out"))
    True
    >>> try:
    ...     try:
    ...         raise TimeoutError("read")
    ...     except TimeoutError as cause:
    ...         raise OSError("could not read s3://lab/x.csv") from cause
    ... except OSError as error:
    ...     is_timeout(error)
    True
    >>> is_timeout(FileNotFoundError("s3://lab/x.csv"))
    False
    """
    seen: set[int] = set()
    current_error: BaseException | None = error
    while current_error is not None and id(current_error) not in seen:
        seen.add(id(current_error))
        if isinstance(current_error, TimeoutError):  # socket's, asyncio's and fsspec's too
            return True
        # botocore's ConnectTimeoutError and ReadTimeoutError (without importing botocore)
        if type(current_error).__module__.startswith("botocore") and type(
            current_error
        ).__name__ in ("ConnectTimeoutError", "ReadTimeoutError"):
            return True
        current_error = current_error.__cause__ or current_error.__context__
    return False


configure(_current)
