"""The ``neurobatch`` commands of the catalog: ``catalog`` (rebuild it) and ``query`` (SQL).

The catalog is ``OUT/catalog.duckdb`` (:mod:`neurobatch.engine.catalog`), which every run
rebuilds at its end; ``--storage-options`` reaches an object store, as for ``status``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from neurobatch.cli_inspect import _storage_options, _storage_options_argument

__all__ = ["add_catalog", "add_query"]


def add_catalog(commands: Any) -> None:
    """The ``catalog`` command."""
    catalog = commands.add_parser(
        "catalog",
        help="rebuild OUT/catalog.duckdb, the SQL tables of an output folder",
        description=(
            "Build OUT/catalog.duckdb from what is committed under OUT (the manifest, the "
            "items table, each stage's commit record, the obs table with per-trial peak and "
            "mean of each signal, each unit's STA strength) and print its tables and row "
            "counts. Every run rebuilds it at its end; this rebuilds it by hand."
        ),
    )
    catalog.add_argument("out", metavar="OUT", help="the output folder (any fsspec URL)")
    _storage_options_argument(catalog)
    catalog.set_defaults(run=_catalog)


def add_query(commands: Any) -> None:
    """The ``query`` command."""
    query = commands.add_parser(
        "query",
        help="run a read-only SQL query on OUT/catalog.duckdb and print the result",
        description=(
            "Run one SQL query (DuckDB's dialect) on the catalog's tables subject, session, "
            "item, stage_run, trial and unit, read-only, and print the result: a table on a "
            "terminal, or CSV or JSON (one object per row) for scripts."
        ),
    )
    query.add_argument("out", metavar="OUT", help="the output folder (any fsspec URL)")
    query.add_argument("sql", metavar="SQL", help='the query, e.g. "SELECT * FROM item"')
    query.add_argument(
        "--format",
        choices=("table", "csv", "json"),
        default="table",
        help="how to print the result (default: table)",
    )
    _storage_options_argument(query)
    query.set_defaults(run=_query)


def _layout(args: argparse.Namespace) -> Any:
    from neurobatch.engine.layout import OutputLayout

    return OutputLayout(str(args.out).rstrip("/"), _storage_options(args.storage_options))


def _catalog(args: argparse.Namespace) -> int:
    from neurobatch.engine.catalog import build_catalog

    layout = _layout(args)
    counts = build_catalog(layout)
    print(f"{layout.catalog}: " + ", ".join(f"{table} {n}" for table, n in counts.items()))
    return 0


def _query(args: argparse.Namespace) -> int:
    from neurobatch.engine.catalog_query import query

    result = query(_layout(args), args.sql)
    if args.format == "csv":
        result.to_csv(sys.stdout, index=False)
    elif args.format == "json":
        print(result.to_json(orient="records", date_format="iso"))
    else:
        _print_table(result)
    return 0


def _print_table(result: Any) -> None:
    import pandas as pd
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    view = Table()
    for name in result.columns:
        numeric = pd.api.types.is_numeric_dtype(result[name])
        view.add_column(str(name), justify="right" if numeric else "left")
    for row in result.itertuples(index=False):
        # Text: a value's brackets are not rich markup
        view.add_row(*(Text("NULL" if _null(v) else _cell(v)) for v in row))
    console = Console()
    if not console.is_terminal:  # piped or captured: do not squeeze the table into 80 columns
        console = Console(width=max(console.width, 160))
    console.print(view)
    print(f"{len(result)} row(s)")


def _null(value: Any) -> bool:
    import pandas as pd

    return bool(pd.api.types.is_scalar(value) and pd.isna(value))


def _cell(value: Any) -> str:
    return format(value, ".6g") if isinstance(value, float) else str(value)
