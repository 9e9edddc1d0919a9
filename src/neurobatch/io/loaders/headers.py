"""The columns a loader's arguments name, checked against an input's header.

The column formats (``photometry-csv``, ``photometry-parquet``, and a lab's own through a
plugin) check their header with :func:`check_columns` twice: when an item loads, and before
anything runs, when ``neurobatch validate`` opens every input's header (the formats'
``check`` functions, called by :func:`neurobatch.io.loaders.check_inputs`). Either way a
misspelled column is one line naming the input, the argument, the column and the closest
real one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from neurobatch.config.arguments import ColumnArguments
from neurobatch.errors import InputError
from neurobatch.io.loaders._common import closest
from neurobatch.io.loaders._photometry import INDEX_NAMES

logger = logging.getLogger(__name__)

__all__ = ["HEADER_BLOCK_BYTES", "MAX_LISTED_COLUMNS", "check_columns", "named_columns"]

#: The block size a header is read with (fsspec's ``block_size``): an object store's
#: default (MiBs of read-ahead) would fetch far more than a header for each input.
HEADER_BLOCK_BYTES = 1 << 16

#: The most columns a message lists (the rest are counted).
MAX_LISTED_COLUMNS = 30

#: What a message adds when the isosbestic column is missing.
_SINGLE_CHANNEL = "set {role}: null to read a single-channel recording"


def named_columns(arguments: ColumnArguments) -> dict[str, str | list[str] | None]:
    """The columns a column format's arguments name, by argument.

    Parameters
    ----------
    arguments : ColumnArguments
        The arguments of ``photometry-csv`` or ``photometry-parquet``.

    Returns
    -------
    dict
        ``time_col``, ``signal_col``, ``isosbestic_col`` (None: not read) and
        ``event_cols`` (a list), as :func:`check_columns` takes them.

    Examples
    --------
    >>> named_columns(ColumnArguments(isosbestic_col=None, event_cols=["cue"]))
    {'time_col': 'time', 'signal_col': 'signal', 'isosbestic_col': None, 'event_cols': ['cue']}
    """
    return {
        "time_col": arguments.time_col,
        "signal_col": arguments.signal_col,
        "isosbestic_col": arguments.isosbestic_col,
        "event_cols": list(arguments.event_cols),
    }


def _listing(columns: Sequence[str]) -> str:
    if not columns:
        return "none"
    shown = ", ".join(repr(c) for c in columns[:MAX_LISTED_COLUMNS])
    more = len(columns) - MAX_LISTED_COLUMNS
    return shown + (f" and {more} more" if more > 0 else "")


def check_columns(
    header: Sequence[str],
    named: Mapping[str, str | Sequence[str] | None],
    *,
    source: str,
    isosbestic: str | None = "isosbestic_col",
) -> None:
    """Check that every column the arguments name is in the header, once.

    A named isosbestic column that is absent is an error like any other (a misspelling
    would otherwise load a two-channel recording as single-channel): ``isosbestic_col:
    null`` is how a single-channel recording is read. A leading index column (unnamed, as
    pandas writes it) is left out of the columns listed.

    Parameters
    ----------
    header : sequence of str
        The input's column names, in order.
    named : mapping
        Each argument's name with the column it names, a list of columns, or None (none
        read): :func:`named_columns` for the column formats.
    source : str
        The input URL, for messages.
    isosbestic : str or None, default "isosbestic_col"
        The argument naming the isosbestic column: when its column is missing, the message
        says that null reads a single-channel recording.

    Raises
    ------
    neurobatch.errors.InputError
        One line naming the input, each missing column with its argument and the closest
        column the header has, and the header's columns (the first
        :data:`MAX_LISTED_COLUMNS`); or a column that appears twice.

    Examples
    --------
    >>> header = ["", "time", "raw_signal", "raw_isosbestic"]
    >>> named = {"time_col": "time", "signal_col": "raw_signal",
    ...          "isosbestic_col": "raw_isosbestic"}
    >>> check_columns(header, named, source="m1.csv")
    >>> check_columns(header, {**named, "signal_col": "raw_signl"}, source="m1.csv")
    Traceback (most recent call last):
    ...
    neurobatch.errors.InputError: 'm1.csv' has no column 'raw_signl' (signal_col; did you mean 'raw_signal'?); its columns: 'time', 'raw_signal', 'raw_isosbestic'
    >>> check_columns(header, {**named, "isosbestic_col": "raw_isosbestc"}, source="m1.csv")
    Traceback (most recent call last):
    ...
    neurobatch.errors.InputError: 'm1.csv' has no column 'raw_isosbestc' (isosbestic_col; did you mean 'raw_isosbestic'?); its columns: 'time', 'raw_signal', 'raw_isosbestic'; set isosbestic_col: null to read a single-channel recording
    """
    header = list(header)
    indexed = bool(header) and header[0] in INDEX_NAMES
    if indexed:
        logger.debug("%s: leading index column %r (not read)", source, header[0])
    listed = header[1:] if indexed else header
    roles: list[tuple[str, str]] = []
    for role, columns in named.items():
        if isinstance(columns, str):
            roles.append((role, columns))
        elif columns is not None:
            roles.extend((role, column) for column in columns)
    problems = []
    single = False
    for role, name in roles:
        if name not in header:
            guess = closest(name, listed)
            hint = f"; did you mean {guess!r}?" if guess else ""
            problems.append(f"no column {name!r} ({role}{hint})")
            single = single or role == isosbestic
    if problems:
        raise InputError(
            f"{source!r} has "
            + ", ".join(problems)
            + f"; its columns: {_listing(listed)}"
            + (f"; {_SINGLE_CHANNEL.format(role=isosbestic)}" if single else "")
        )
    for _, name in roles:
        if header.count(name) > 1:
            raise InputError(f"{source!r}: column {name!r} appears {header.count(name)} times")
