"""The ``neurobatch`` commands that show an output folder: ``report`` and ``view``.

``report`` writes ``OUT/report.html`` (:mod:`neurobatch.engine.report`); ``view`` serves
the interactive viewer on 127.0.0.1 (:mod:`neurobatch.engine.viewer`). Both import their
work lazily, as every command does.
"""

from __future__ import annotations

import argparse
from typing import Any

from neurobatch.cli_inspect import _storage_options, _storage_options_argument

__all__ = ["add_report", "add_view"]


def add_report(commands: Any) -> None:
    """The ``report`` command."""
    report = commands.add_parser(
        "report",
        help="write OUT/report.html, one self-contained page of a batch",
        description=(
            "Write OUT/report.html: the items (status, reason, fit R², trials), the trials' "
            "mean ± SEM by trial type or obs column, the resources per stage, the pipeline "
            "file and each item's figures (those the run drew, else drawn from its stores). "
            "A run writes it at its end too, unless output.report is false."
        ),
    )
    report.add_argument("out", metavar="OUT", help="the output folder (any fsspec URL)")
    _storage_options_argument(report)
    report.add_argument(
        "--items",
        type=int,
        default=50,
        metavar="N",
        help="items that get a section with figures (50); every item gets a row",
    )
    report.set_defaults(run=_report)


def add_view(commands: Any) -> None:
    """The ``view`` command."""
    view = commands.add_parser(
        "view",
        help="serve an interactive viewer of an output folder on 127.0.0.1",
        description=(
            "Serve a viewer of OUT on 127.0.0.1 only, behind a random token printed in its "
            "URL: pick an item to see its trace with events and its trials, group the trial "
            "means by any obs column, pick a channel of a filtered recording, or pick a unit "
            "and scrub its STA over the lags. Stop it with Ctrl-C."
        ),
    )
    view.add_argument("out", metavar="OUT", help="the output folder (any fsspec URL)")
    _storage_options_argument(view)
    view.add_argument("--port", type=int, default=0, help="the port (default: a free one, printed)")
    view.set_defaults(run=_view)


def _report(args: argparse.Namespace) -> int:
    from neurobatch.engine.report import write_report

    path = write_report(
        str(args.out), storage_options=_storage_options(args.storage_options), max_items=args.items
    )
    print(f"report written to {path}")
    return 0


def _view(args: argparse.Namespace) -> int:
    from neurobatch.engine.viewer import serve

    serve(str(args.out), storage_options=_storage_options(args.storage_options), port=args.port)
    return 0
