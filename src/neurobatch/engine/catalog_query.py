"""Reading the catalog of an output folder (``OUT/catalog.duckdb``): read-only SQL.

Kept apart from :mod:`neurobatch.engine.catalog`, which builds it, so that a query imports
DuckDB and pandas only, not the engine: ``neurobatch query`` starts in a fraction of a
second. An object store's catalog is read from a local copy, downloaded whole.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import uuid
from collections.abc import Iterator

import fsspec
import pandas as pd
from fsspec.implementations.local import LocalFileSystem

from neurobatch.engine.layout import OutputLayout
from neurobatch.errors import InputError, InputNotFoundError

__all__ = ["TABLES", "query"]

#: The catalog's tables, in the order they are built (each refers only to those before it).
TABLES = ("subject", "session", "item", "stage_run", "trial", "unit")


@contextlib.contextmanager
def _local_copy(layout: OutputLayout) -> Iterator[str]:
    """The catalog as a local file: itself on a local disk, else a downloaded copy."""
    fs, path = fsspec.core.url_to_fs(layout.catalog, **dict(layout.storage_options))
    missing = InputNotFoundError(
        f"{layout.url} has no catalog ({layout.catalog}); build it with: "
        f"neurobatch catalog {layout.url}"
    )
    if isinstance(fs, LocalFileSystem):
        if not os.path.exists(path):
            raise missing
        yield path
        return
    from neurobatch.io import files  # the storage's retries: only for an object store

    copy = os.path.join(tempfile.gettempdir(), f"neurobatch-catalog-{uuid.uuid4().hex}.duckdb")
    try:
        with files.translated(layout.catalog, action="reading"):
            files.retried(lambda: fs.get_file(path, copy), url=layout.catalog, action="reading")
    except FileNotFoundError:
        raise missing from None
    try:
        yield copy
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(copy)


def query(layout: OutputLayout, sql: str) -> pd.DataFrame:
    """Run a read-only SQL query on the catalog of an output folder.

    Parameters
    ----------
    layout : OutputLayout
        The output folder; an object store's catalog is read from a local copy.
    sql : str
        One SQL query (DuckDB's dialect) over :data:`TABLES`.

    Returns
    -------
    pandas.DataFrame
        The result; SQL NULL as NaN (numbers) or None.

    Raises
    ------
    neurobatch.errors.InputNotFoundError
        If OUT has no catalog (build it with ``neurobatch catalog OUT``).
    neurobatch.errors.InputError
        If the query is not valid SQL, names an unknown table or column, or would write:
        DuckDB's message and the catalog's tables, on one line.

    Examples
    --------
    >>> query(OutputLayout(tempfile.mkdtemp()), "SELECT 1")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    neurobatch.errors.InputNotFoundError: ... has no catalog (...); build it with: ...
    """
    import duckdb

    with _local_copy(layout) as path, duckdb.connect(path, read_only=True) as con:
        try:
            return con.execute(sql).df()
        except duckdb.Error as error:
            message = " ".join(re.split(r"\sLINE \d+:", str(error))[0].split())  # no caret
            raise InputError(
                f"the SQL query failed: {message}; the catalog's tables are {', '.join(TABLES)}"
            ) from None
