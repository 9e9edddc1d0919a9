"""Keep credentials out of everything neurobatch writes: provenance, logs, manifests.

Credentials reach a run through ``storage_options`` (``key``, ``secret``, ``token``,
``client_kwargs.aws_secret_access_key`` ...) or a URL's user part
(``https://user:password@host/...``). :func:`redact` replaces them in a structure before it
is written; :func:`secrets_in` lists their values so that :func:`scrub` can remove them from
free text such as a log or an error message that happens to quote one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["REDACTED", "redact", "scrub", "secrets_in"]

#: What a credential is replaced with.
REDACTED = "***"

#: Names of settings that hold credentials. Inside ``storage_options`` any name containing
#: ``key`` is one too (``key``, ``aws_access_key_id``), besides these.
_SECRET_NAME = re.compile(r"secret|token|passw|credential|auth|private|api_?key", re.IGNORECASE)
_OPTIONS_SECRET_NAME = re.compile(_SECRET_NAME.pattern + r"|key", re.IGNORECASE)
_URL_USERINFO = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<userinfo>[^/@\s]+)@", re.IGNORECASE
)


def _is_secret(name: Any, in_options: bool) -> bool:
    pattern = _OPTIONS_SECRET_NAME if in_options else _SECRET_NAME
    return isinstance(name, str) and bool(pattern.search(name))


def redact(value: Any, *, in_options: bool = False) -> Any:
    """A copy of a JSON-like structure with its credentials replaced by ``***``.

    Parameters
    ----------
    value : object
        Mappings, lists and scalars (a validated pipeline file's ``model_dump()``).
    in_options : bool, default False
        Whether ``value`` is itself a ``storage_options`` mapping. Below a
        ``storage_options`` key this is set for you.

    Returns
    -------
    object
        The same shape; secret-named settings (the whole value, even a mapping) hold
        ``***`` and URLs lose their user part.

    Examples
    --------
    >>> redact({"url": "s3://lab/data", "storage_options": {"key": "AKIA", "secret": "s3cr3t",
    ...         "client_kwargs": {"endpoint_url": "http://minio:9000"}}})
    {'url': 's3://lab/data', 'storage_options': {'key': '***', 'secret': '***', \
'client_kwargs': {'endpoint_url': 'http://minio:9000'}}}
    >>> redact("https://ann:pw@example.org/x.csv")
    'https://***@example.org/x.csv'
    """
    if isinstance(value, Mapping):
        return {
            name: (
                REDACTED
                if item is not None and _is_secret(name, in_options)
                else redact(item, in_options=in_options or name == "storage_options")
            )
            for name, item in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(redact(item, in_options=in_options) for item in value)
    if isinstance(value, str):
        return _URL_USERINFO.sub(rf"\g<scheme>{REDACTED}@", value)
    return value


def secrets_in(value: Any, *, in_options: bool = False) -> set[str]:
    """The credential values in a structure: what :func:`redact` hides.

    Parameters
    ----------
    value : object
        As for :func:`redact`.
    in_options : bool, default False
        Whether ``value`` is itself a ``storage_options`` mapping.

    Returns
    -------
    set of str
        The secret values and URL user parts found, those of at least 4 characters (so
        that scrubbing free text does not mangle it).

    Examples
    --------
    >>> sorted(secrets_in({"storage_options": {"key": "AKIA1234", "anon": False}}))
    ['AKIA1234']
    """
    found: set[str] = set()
    if isinstance(value, Mapping):
        for name, item in value.items():
            if item is not None and _is_secret(name, in_options):
                found |= _leaves(item)
            else:
                found |= secrets_in(item, in_options=in_options or name == "storage_options")
    elif isinstance(value, list | tuple):
        for item in value:
            found |= secrets_in(item, in_options=in_options)
    elif isinstance(value, str):
        found |= {m["userinfo"] for m in _URL_USERINFO.finditer(value)}
    return {secret for secret in found if len(secret) >= 4}


def _leaves(value: Any) -> set[str]:
    if isinstance(value, Mapping):
        return set().union(*(_leaves(item) for item in value.values()))
    if isinstance(value, list | tuple):
        return set().union(*(_leaves(item) for item in value))
    return set() if isinstance(value, bool) or value is None else {str(value)}


def scrub(text: str, secrets: Iterable[str]) -> str:
    """Free text with every occurrence of the given secrets (and URL user parts) hidden.

    Parameters
    ----------
    text : str
        A log, an error message, a serialised record.
    secrets : iterable of str
        From :func:`secrets_in`.

    Returns
    -------
    str

    Examples
    --------
    >>> scrub("denied for key AKIA1234 at s3://u:p@lab/x", {"AKIA1234"})
    'denied for key *** at s3://***@lab/x'
    """
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return str(redact(text))
