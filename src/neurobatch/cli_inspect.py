"""The ``neurobatch`` commands that look at an output folder: ``provenance`` and ``status``.

Each reads what earlier runs wrote, on any fsspec URL (``--storage-options`` reaches an
object store), and prints a table; imported lazily, as every command's work is.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["add_provenance", "add_status"]


def add_provenance(commands: Any) -> None:
    """The ``provenance`` command."""
    provenance = commands.add_parser(
        "provenance",
        help="summarise the processing record of an output folder",
        description=(
            "Read OUT/processing.json (every run's stages: when they ran, items done, failed "
            "and skipped, workers, sampled CPU and RAM) and print one row per stage; with "
            "--plot, also draw CPU and RAM usage over time."
        ),
    )
    provenance.add_argument("out", metavar="OUT", help="the output folder (any fsspec URL)")
    _storage_options_argument(provenance)
    provenance.add_argument(
        "--plot",
        nargs="?",
        const="",
        metavar="PATH",
        help="draw resource usage as PNG or SVG (default OUT/processing.png)",
    )
    provenance.set_defaults(run=_provenance)


def add_status(commands: Any) -> None:
    """The ``status`` command."""
    status = commands.add_parser(
        "status",
        help="list the items of an output folder with the state of each stage",
        description=(
            "Read OUT/manifest.parquet (the items of the last run) and each item's commit "
            "records and failure marker, and print one row per item: each stage done, failed "
            "(with the one-line reason) or pending, then how many items are in each state. "
            "Given the pipeline file instead of OUT, a done stage whose key no longer matches "
            "the file (its settings, code, input or sidecar changed) shows as stale, with why. "
            "While a run writes to OUT, print its live statuses instead: each stage of each "
            "item waiting, started, done, skipped, errored or abandoned, with its host, "
            "worker, start, duration and reason (see also: neurobatch history OUT)."
        ),
    )
    status.add_argument(
        "out",
        metavar="OUT|FILE",
        help="the output folder (any fsspec URL), or the pipeline file that writes to it",
    )
    _storage_options_argument(status)
    status.set_defaults(run=_status)


def _storage_options_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--storage-options",
        metavar="FILE|JSON",
        help=(
            "fsspec options to reach OUT: a YAML or JSON file, or inline JSON such as "
            "'{\"anon\": true}' (credentials are better left to the environment: "
            "AWS_ACCESS_KEY_ID, AWS_PROFILE, ...); a pipeline file given instead of OUT "
            "brings its own"
        ),
    )


def _storage_options(spec: str | None) -> dict[str, Any]:
    """``--storage-options``: inline JSON, or the path of a YAML or JSON file."""
    if spec is None:
        return {}
    import yaml

    from neurobatch.errors import ConfigError

    source = "--storage-options"
    if not spec.lstrip().startswith("{"):
        try:
            with open(spec, encoding="utf-8") as file:
                spec, source = file.read(), spec
        except OSError as error:
            raise ConfigError(
                f"--storage-options: cannot read {spec} ({error.strerror}); expected inline "
                "JSON or a YAML/JSON file"
            ) from error
    try:
        options = yaml.safe_load(spec)
    except yaml.YAMLError as error:
        raise ConfigError(f"{source}: not YAML or JSON ({' '.join(str(error).split())})") from error
    if not isinstance(options, dict):
        raise ConfigError(f"{source}: expected a mapping of fsspec options, got {spec!r}")
    return options


def _provenance(args: argparse.Namespace) -> int:
    import math

    import pandas as pd
    from rich.console import Console
    from rich.table import Table

    from neurobatch.engine.layout import OutputLayout
    from neurobatch.engine.provenance_summary import read_records, summary
    from neurobatch.errors import InputNotFoundError

    layout = OutputLayout(str(args.out).rstrip("/"))
    url = layout.processing
    records, problems = read_records(url, storage_options=_storage_options(args.storage_options))
    for problem in problems:
        print(f"neurobatch provenance: warning: {problem}", file=sys.stderr)
    if not records:
        raise InputNotFoundError(
            f"no {'readable ' if problems else ''}processing record at {url}: expected the "
            "output folder of a neurobatch run"
        )
    table = pd.concat([summary(record) for record in records], ignore_index=True)
    processing = records[-1]

    def number(value: float, spec: str) -> str:
        return "-" if math.isnan(value) else format(value, spec)

    def duration(seconds: float) -> str:
        if math.isnan(seconds):
            return "-"
        minutes, rest = divmod(seconds, 60.0)
        return f"{int(minutes)}:{rest:04.1f}" if minutes else f"{rest:.1f} s"

    view = Table(title=f"{url}: {len(table)} data process(es)", title_justify="left")
    view.add_column("process", no_wrap=True)
    view.add_column("start", no_wrap=True)
    numeric = ("duration", "done", "failed", "skipped", "trials", "workers")
    for column in (*numeric, "CPU mean %", "CPU max %", "RAM max %", "samples"):
        view.add_column(column, justify="right", no_wrap=True)
    for row in table.to_dict("records"):
        view.add_row(
            str(row["name"]),
            row["start"].to_pydatetime().astimezone().strftime("%H:%M:%S"),
            duration(row["seconds"]),
            *(str(row[key]) for key in ("items_done", "items_failed", "items_skipped")),
            "-" if pd.isna(row["n_trials"]) else str(row["n_trials"]),
            str(row["workers"]),
            *(number(row[key], ".1f") for key in ("cpu_mean", "cpu_max", "ram_max")),
            str(row["samples"]),
        )
    console = Console()
    if not console.is_terminal:  # piped or captured: do not squeeze the table into 80 columns
        console = Console(width=max(console.width, 160))
    console.print(view)
    if args.plot is not None:
        from neurobatch.plots import resource_usage

        path = args.plot or layout.path("processing.png")
        resource_usage(processing, path)
        print(f"resource usage plot: {path}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from neurobatch.cli_history import print_last_run, print_live_run
    from neurobatch.engine.layout import OutputLayout
    from neurobatch.engine.ledger import counts, item_states

    out, options, expected = _status_target(str(args.out), _storage_options(args.storage_options))
    states = item_states(out, options, expected=expected)
    if print_live_run(OutputLayout(out, options)):  # a run is going: its statuses, live
        return 0
    stages = list(states.attrs["stages"])
    styles = {"done": "green", "stale": "magenta", "failed": "bold red", "pending": "yellow"}
    print(f"{out}: {states.attrs['kind']} pipeline, stages {', '.join(stages)}")
    print_last_run(OutputLayout(out, options))
    view = Table()
    view.add_column("item", no_wrap=True)
    for stage in stages:
        view.add_column(stage, no_wrap=True)
    view.add_column("reason")
    for row in states.to_dict("records"):
        view.add_row(
            Text(str(row["item_id"])),
            *(Text(row[stage], style=styles[row[stage]]) for stage in stages),
            Text(row["error"] or ""),  # Text: a message's brackets are not rich markup
        )
    console = Console()
    if not console.is_terminal:  # piped or captured: do not squeeze the table into 80 columns
        console = Console(width=max(console.width, 160))
    console.print(view)
    n = counts(states)
    print(f"{len(states)} items: " + ", ".join(f"{n[state]} {state}" for state in n))
    return 0


def _status_target(target: str, options: dict[str, Any]) -> tuple[str, dict[str, Any], Any]:
    """The output folder, its storage options (``options`` over the pipeline file's), and
    the keys its pipeline file expects when given the file."""
    if not target.endswith((".yaml", ".yml", ".toml")):
        return target.rstrip("/"), options, None
    from neurobatch.engine.item import expected_keys
    from neurobatch.engine.ledger import read_records
    from neurobatch.engine.run import Pipeline

    pipeline = Pipeline.from_file(target)
    jobs = pipeline.jobs(pipeline.discover())
    names = [stage.name for stage in pipeline.stages]
    records = read_records(pipeline.layout, [job.item_id for job in jobs], names)
    expected = {
        job.item_id: expected_keys(
            job,
            {
                name: records[(job.item_id, name)]
                for name in names
                if (job.item_id, name) in records
            },
        )
        for job in jobs
    }
    return pipeline.layout.url, {**pipeline.layout.storage_options, **options}, expected
