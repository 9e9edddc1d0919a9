"""The ``neurobatch history`` command, and the live part of ``neurobatch status``.

Both read what :mod:`neurobatch.engine.statuses` writes under ``OUT/runs/``: each run's
record and its table of item-stage statuses, on any fsspec URL (``--storage-options``);
imported lazily, as every command's work is.
"""

from __future__ import annotations

import argparse
import math
import time
from datetime import UTC, datetime
from typing import Any

__all__ = ["add_history", "print_last_run", "print_live_run"]

#: How each status shows.
_STYLES = {
    "waiting": "dim",
    "started": "bold cyan",
    "done": "green",
    "skipped": "blue",
    "errored": "bold red",
    "abandoned": "bold magenta",
    "running": "bold cyan",
    "finished": "green",
    "interrupted": "bold yellow",
    "killed": "bold red",
}


def add_history(commands: Any) -> None:
    """The ``history`` command."""
    from neurobatch.cli_inspect import _storage_options_argument

    history = commands.add_parser(
        "history",
        help="list the runs of an output folder, or one run's statuses",
        description=(
            "Read OUT/runs/ (each run's record and table of statuses) and print one row per "
            "run, newest first: its id, start (UTC), duration, command, items done, skipped, "
            "failed and abandoned, and its state: running, finished, interrupted (SIGTERM, "
            "Ctrl-C, an error) or killed (its process ended without recording an end). "
            "Given a RUN_ID, print that run's status of each stage of each item."
        ),
    )
    history.add_argument("out", metavar="OUT", help="the output folder (any fsspec URL)")
    history.add_argument("run_id", metavar="RUN_ID", nargs="?", help="one run's statuses")
    history.add_argument(
        "--limit", type=_positive, metavar="N", help="only the newest N runs (default all)"
    )
    _storage_options_argument(history)
    history.set_defaults(run=_history)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def _history(args: argparse.Namespace) -> int:
    from rich.table import Table
    from rich.text import Text

    from neurobatch.cli_inspect import _storage_options
    from neurobatch.engine.layout import OutputLayout
    from neurobatch.engine.ledger import read_manifest
    from neurobatch.engine.statuses import read_record, read_runs

    layout = OutputLayout(str(args.out).rstrip("/"), _storage_options(args.storage_options))
    if args.run_id is not None:
        record = read_record(layout, args.run_id)
        _print_tasks(layout, record)
        return 0
    runs = read_runs(layout, limit=args.limit)
    if runs.empty:
        read_manifest(layout.url, storage_options=layout.storage_options)  # a neurobatch OUT?
        print(f"{layout.url}: no run recorded in {layout.runs()}")
        return 0
    view = Table(title=f"{layout.url}: {len(runs)} run(s), newest first", title_justify="left")
    view.add_column("run", no_wrap=True)
    view.add_column("started (UTC)", no_wrap=True)
    view.add_column("duration", justify="right", no_wrap=True)
    view.add_column("command")
    for column in ("done", "skipped", "failed", "abandoned"):
        view.add_column(column, justify="right", no_wrap=True)
    view.add_column("state", no_wrap=True)
    view.add_column("reason")
    for row in runs.to_dict("records"):
        view.add_row(
            str(row["run"]),
            _clock(row["started"], date=True),
            _duration(row["seconds"]),
            Text(_command(row["command"])),
            *(str(row[key]) for key in ("done", "skipped", "failed", "abandoned")),
            Text(str(row["state"]), style=_STYLES.get(str(row["state"]), "")),
            Text(str(row["reason"] or "")),
        )
    _console().print(view)
    return 0


def print_live_run(layout: Any) -> bool:
    """Print the statuses of the run writing to ``layout`` now; False when none is.

    Parameters
    ----------
    layout : neurobatch.engine.layout.OutputLayout
        The output folder.

    Returns
    -------
    bool
    """
    from neurobatch.engine.statuses import live_run

    record = live_run(layout)
    if record is None:
        return False
    _print_tasks(layout, record)
    return True


def print_last_run(layout: Any) -> None:
    """Print one line on the last recorded run of ``layout``, if any."""
    from neurobatch.engine.statuses import read_runs

    runs = read_runs(layout, limit=1)
    if runs.empty:
        return
    row = runs.iloc[0]
    counts = ", ".join(f"{row[k]} {k}" for k in ("done", "skipped", "failed", "abandoned"))
    print(
        f"last run {row['run']}: {row['state']}, started {_clock(row['started'], date=True)} "
        f"UTC, {_duration(row['seconds'])}: {counts} (neurobatch history {layout.url})"
    )


def _print_tasks(layout: Any, record: dict[str, Any]) -> None:
    """A run's header line, its table of statuses and their counts."""
    from rich.table import Table
    from rich.text import Text

    from neurobatch.engine.statuses import STATUSES, read_tasks

    tasks = read_tasks(layout, str(record["run"]))
    state = str(record.get("state"))
    now = time.time()
    seconds = record.get("seconds")
    if state == "running":
        started = datetime.fromisoformat(str(record["started"])).timestamp()
        seconds = now - started
    print(
        f"{layout.url}: run {record['run']} {state}"
        + (f" ({record['reason']})" if record.get("reason") else "")
        + f", started {_clock(record.get('started'), date=True)} UTC, {_duration(seconds)}, "
        f"on {record.get('host')} (pid {record.get('pid')}): {_command(record.get('command'))}"
    )
    view = Table()
    for column in ("item", "stage", "status", "host", "worker", "start (UTC)", "duration"):
        view.add_column(column, no_wrap=True, justify="right" if column == "duration" else "left")
    view.add_column("reason")
    for row in tasks.to_dict("records"):
        status = str(row["status"])
        duration = row["seconds"]
        if status == "started" and state == "running" and not math.isnan(row["start"]):
            duration = now - row["start"]  # so far
        view.add_row(
            Text(str(row["item_id"])),
            Text(str(row["stage"])),
            Text(status, style=_STYLES.get(status, "")),
            Text(str(row["host"] or "")),
            Text(str(row["worker"] or "")),
            _clock(row["start"]),
            _duration(duration),
            Text(str(row["reason"] or "")),  # Text: a message's brackets are not rich markup
        )
    _console().print(view)
    n = tasks["status"].value_counts()
    by_status = ", ".join(f"{int(n.get(s, 0))} {s}" for s in STATUSES)
    print(f"{tasks['item_id'].nunique()} items, {len(tasks)} stages: {by_status}")


def _command(command: Any) -> str:
    """A recorded command line with the program as ``neurobatch``, not its full path."""
    program, _, rest = str(command or "").partition(" ")
    name = program.rsplit("/", 1)[-1]
    return f"{'neurobatch' if name in ('neurobatch', 'cli.py', '__main__.py') else program} {rest}"


def _clock(value: Any, *, date: bool = False) -> str:
    """An epoch time or ISO 8601 string as UTC ``HH:MM:SS`` (with the date), or ``-``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    moment = (
        datetime.fromisoformat(value)
        if isinstance(value, str)
        else datetime.fromtimestamp(float(value), UTC)
    )
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S" if date else "%H:%M:%S")


def _duration(seconds: Any) -> str:
    if seconds is None or math.isnan(float(seconds)):
        return "-"
    minutes, rest = divmod(float(seconds), 60.0)
    hours, minutes = divmod(int(minutes), 60)
    if hours:
        return f"{hours}:{minutes:02d}:{rest:04.1f}"
    return (
        f"{minutes}:{rest:04.1f}" if minutes else f"{rest:.2f} s" if rest < 10 else f"{rest:.1f} s"
    )


def _console() -> Any:
    from rich.console import Console

    console = Console()
    if not console.is_terminal:  # piped or captured: do not squeeze the table into 80 columns
        console = Console(width=max(console.width, 160))
    return console
