"""Keep credentials out of everything neurobatch writes: provenance, logs, manifests.

Credentials reach a run through ``storage_options`` (``key``, ``secret``, ``token``,
``client_kwargs.aws_secret_access_key``, an Azure ``connection_string`` ...), a URL's user
part (``https://user:password@host/...``) or its signed query (``?X-Amz-Signature=...``),
shell lines of the pipeline file (``export AWS_SECRET_ACCESS_KEY=...`` in a job prologue),
connection strings (``...;AccountKey=...;``) and the environment the run was started in
(``AWS_SECRET_ACCESS_KEY``, ``AZURE_STORAGE_KEY`` ...). Each is hidden by name where it
has one and by value everywhere else: :func:`redact` replaces them in a structure before it
is written; :func:`secrets_in` lists their values so that :func:`scrub` can remove them from
free text such as a log or an error message that happens to quote one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["REDACTED", "environment_secrets", "redact", "scrub", "secrets_in"]

#: What a credential is replaced with.
REDACTED = "***"

#: Names of settings that hold credentials. Inside ``storage_options`` any name containing
#: ``key`` is one too (``key``, ``aws_access_key_id``), besides these.
_SECRET_NAME = re.compile(
    r"secret|token|passw|credential|auth|private|api_?key|connection_?string|conn_?str",
    re.IGNORECASE,
)
_OPTIONS_SECRET_NAME = re.compile(_SECRET_NAME.pattern + r"|key", re.IGNORECASE)
#: Names of environment variables and of ``NAME=value`` assignments in text (shell lines,
#: connection strings) whose values are credentials; a name that ends in a kind of place
#: (``AWS_SHARED_CREDENTIALS_FILE``) holds where a credential is, not the credential.
_ENVIRONMENT_SECRET_NAME = re.compile(
    _SECRET_NAME.pattern + r"|access_?key|account_?key|shared_?access_?signature",
    re.IGNORECASE,
)
#: ``Pwd=`` of an ODBC connection string too (in the environment, ``PWD`` is the folder).
_ASSIGNED_SECRET_NAME = re.compile(_ENVIRONMENT_SECRET_NAME.pattern + r"|^pwd$", re.IGNORECASE)
_PLACE_NAME = re.compile(r"_(FILE|PATH|DIR|SOCK|URL|ENDPOINT|REGION|PROFILE)$", re.IGNORECASE)
_URL_USERINFO = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<userinfo>[^/@\s]+)@", re.IGNORECASE
)
#: ``NAME=value`` in free text: a shell assignment (``export`` optional, the value maybe
#: quoted) or a part of a ``;``-separated connection string.
_ASSIGNMENT = re.compile(
    r"(?P<head>(?:^|(?<=[\s;'\"]))(?:export\s+)?(?P<name>[A-Za-z_][A-Za-z0-9_]*)=)"
    r"(?P<value>\"[^\"]*\"|'[^']*'|[^\s;'\"]+)"
)
#: A signed URL's credentials in its query: ``sig=`` (Azure SAS), ``X-Amz-Signature=``,
#: ``X-Amz-Credential=``, ``X-Amz-Security-Token=``, ``token=``.
_QUERY_SECRET = re.compile(
    r"(?P<head>[?&](?:sig|signature|token|access_token|x-amz-signature|x-amz-credential"
    r"|x-amz-security-token|x-goog-signature|x-goog-credential)=)(?P<value>[^&#\s]+)",
    re.IGNORECASE,
)
#: Values shorter than this are not scrubbed from text (they would mangle it).
_MIN_SECRET_LENGTH = 4


def _is_secret(name: Any, in_options: bool) -> bool:
    pattern = _OPTIONS_SECRET_NAME if in_options else _SECRET_NAME
    return isinstance(name, str) and bool(pattern.search(name))


def _is_secret_assignment(name: str, pattern: re.Pattern[str] = _ASSIGNED_SECRET_NAME) -> bool:
    return bool(pattern.search(name)) and not _PLACE_NAME.search(name)


def environment_secrets(environ: Mapping[str, str] | None = None) -> set[str]:
    """The credentials in the environment: values of variables named like one.

    Parameters
    ----------
    environ : mapping, optional
        The environment (``os.environ`` when omitted).

    Returns
    -------
    set of str
        The values of variables such as ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
        ``AZURE_STORAGE_KEY``, ``AZURE_STORAGE_CONNECTION_STRING`` or ``DB_PASSWORD``, of at
        least 4 characters; not of those that name a place (``..._FILE``, ``..._PATH``).

    Examples
    --------
    >>> sorted(environment_secrets({"AWS_SECRET_ACCESS_KEY": "wJalrXUt", "PWD": "/root",
    ...                             "AWS_SHARED_CREDENTIALS_FILE": "/root/.aws/credentials"}))
    ['wJalrXUt']
    """
    environ = os.environ if environ is None else environ
    return {
        value
        for name, value in environ.items()
        if _is_secret_assignment(name, _ENVIRONMENT_SECRET_NAME)
        and len(value) >= _MIN_SECRET_LENGTH
    }


def _text_secrets(text: str) -> set[str]:
    """The credential values a string carries by its form: URL user part, signed query,
    secret-named assignments (whose quoted values count without their quotes)."""
    found = {m["userinfo"] for m in _URL_USERINFO.finditer(text)}
    found |= {m["value"] for m in _QUERY_SECRET.finditer(text)}
    found |= {
        m["value"].strip("'\"")
        for m in _ASSIGNMENT.finditer(text)
        if _is_secret_assignment(m["name"])
    }
    return found


def _redact_text(text: str) -> str:
    """A string with the credentials its form shows (see :func:`_text_secrets`) hidden."""
    text = _URL_USERINFO.sub(rf"\g<scheme>{REDACTED}@", text)
    text = _QUERY_SECRET.sub(rf"\g<head>{REDACTED}", text)
    return _ASSIGNMENT.sub(
        lambda m: f"{m['head']}{REDACTED}" if _is_secret_assignment(m["name"]) else m[0], text
    )


def redact(value: Any, *, in_options: bool = False, secrets: Iterable[str] | None = None) -> Any:
    """A copy of a JSON-like structure with its credentials replaced by ``***``.

    Credentials are found by name (a secret-named setting: its whole value, even a mapping),
    by form (a URL's user part or signed query, ``NAME=value`` of a secret-named variable
    in a shell line or connection string) and by value: every string loses each of
    ``secrets``, which by default are those the structure itself holds
    (:func:`secrets_in`) and the environment's (:func:`environment_secrets`), so a key
    quoted again elsewhere in the record is hidden there too.

    Parameters
    ----------
    value : object
        Mappings, lists and scalars (a validated pipeline file's ``model_dump()``).
    in_options : bool, default False
        Whether ``value`` is itself a ``storage_options`` mapping. Below a
        ``storage_options`` key this is set for you.
    secrets : iterable of str, optional
        The values to hide wherever they appear; those of a whole run (the pipeline file's
        and the environment's) when a part of its record is redacted on its own.

    Returns
    -------
    object
        The same shape, credentials replaced by ``***``.

    Examples
    --------
    >>> redact({"url": "s3://lab/data", "storage_options": {"key": "AKIA", "secret": "s3cr3t",
    ...         "client_kwargs": {"endpoint_url": "http://minio:9000"}}})
    {'url': 's3://lab/data', 'storage_options': {'key': '***', 'secret': '***', \
'client_kwargs': {'endpoint_url': 'http://minio:9000'}}}
    >>> redact("https://ann:pw@example.org/x.csv")
    'https://***@example.org/x.csv'
    >>> redact({"job_script_prologue": ["module load python",
    ...                                 "export AWS_SECRET_ACCESS_KEY=wJalrXUt"]})
    {'job_script_prologue': ['module load python', 'export AWS_SECRET_ACCESS_KEY=***']}
    """
    hidden = (
        secrets_in(value, in_options=in_options) | environment_secrets()
        if secrets is None
        else {secret for secret in secrets if len(secret) >= _MIN_SECRET_LENGTH}
    )
    return _redact(value, in_options, sorted(hidden, key=len, reverse=True))


def _redact(value: Any, in_options: bool, secrets: list[str]) -> Any:
    if isinstance(value, Mapping):
        return {
            name: (
                REDACTED
                if item is not None and _is_secret(name, in_options)
                else _redact(item, in_options or name == "storage_options", secrets)
            )
            for name, item in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(_redact(item, in_options, secrets) for item in value)
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, REDACTED)
        return _redact_text(value)
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
        The values of secret-named settings, URL user parts and signed queries, and
        secret-named assignments in strings (shell lines, connection strings), those of at
        least 4 characters (so that scrubbing free text does not mangle it).

    Examples
    --------
    >>> sorted(secrets_in({"storage_options": {"key": "AKIA1234", "anon": False}}))
    ['AKIA1234']
    >>> sorted(secrets_in({"connection": "AccountName=lab;AccountKey=c2VjcmV0PQ==;"}))
    ['c2VjcmV0PQ==']
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
        found |= _text_secrets(value)
    return {secret for secret in found if len(secret) >= _MIN_SECRET_LENGTH}


def _leaves(value: Any) -> set[str]:
    if isinstance(value, Mapping):
        return set().union(*(_leaves(item) for item in value.values()))
    if isinstance(value, list | tuple):
        return set().union(*(_leaves(item) for item in value))
    if isinstance(value, bool) or value is None:
        return set()
    # a connection string's parts may be quoted again on their own
    return {str(value)} | (_text_secrets(value) if isinstance(value, str) else set())


def scrub(text: str, secrets: Iterable[str]) -> str:
    """Free text with every occurrence of the given secrets, and of the environment's, hidden.

    Parameters
    ----------
    text : str
        A log, an error message, a serialised record.
    secrets : iterable of str
        From :func:`secrets_in`. The environment's credentials
        (:func:`environment_secrets`), URL user parts and signed queries, and secret-named
        assignments in the text are hidden too.

    Returns
    -------
    str

    Examples
    --------
    >>> scrub("denied for key AKIA1234 at s3://u:p@lab/x", {"AKIA1234"})
    'denied for key *** at s3://***@lab/x'
    """
    return str(redact(text, secrets=set(secrets) | environment_secrets()))
