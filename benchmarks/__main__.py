"""neurobatch's benchmarks: ``python -m benchmarks run --suite NAME [--quick] [--scratch DIR]``.

Suites (each a module of this package with ``run_suite(*, quick, scratch) -> dict``):

- ``photometry``: a batch of photometry recordings, neurobatch against PhoPro
  (:mod:`benchmarks.photometry_batch`);
- ``filter``: the blocked zero-phase band-pass of a SpikeGLX recording four times larger
  than a worker's memory, against whole-array SciPy on one core, and ``neurobatch run`` of
  a filter pipeline against spikeinterface in its own environment (:mod:`benchmarks.filter`);
- ``sta``: spike-triggered averages against a per-spike loop and pynapple
  (:mod:`benchmarks.sta`);
- ``scaling``: time and memory against items, recording length and workers
  (:mod:`benchmarks.scaling`);
- ``small``: many recordings the size of PhoPro's tutorial data, neurobatch against PhoPro,
  the engine's CPU per item beyond the item's own computation, and time against items
  (:mod:`benchmarks.small_batch`);
- ``all``: each in turn, then ``all[-quick].md`` with every table.

Each suite generates its inputs deterministically under a temporary folder (inside
``--scratch`` when given), runs its comparisons side by side, and returns

    {"suite": ..., "settings": {...},
     "cases": [{"name", "seconds", "peak_mb", ...}, ...],
     "targets": [{"name", "value", "unit", "target", "met", "why"}, ...],
     "series": [{"name", "x_label", "y_label", "x": [...], "lines": {label: [...]}}, ...]}

to which the runner adds ``machine``, ``command``, ``quick`` and ``wall_s`` before writing
``benchmarks/results/<suite>[-quick].json``, ``.md`` and ``.png`` and printing the Markdown.
Peak memory is always the sum over the driver and every worker process, sampled.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import report

#: Suite name -> module (imported only when the suite runs).
SUITES = {
    "photometry": "benchmarks.photometry_batch",
    "filter": "benchmarks.filter",
    "sta": "benchmarks.sta",
    "scaling": "benchmarks.scaling",
    "small": "benchmarks.small_batch",
}


class SuiteUnavailable(Exception):
    """A suite whose module is missing or has no ``run_suite``."""


def load_suite(name: str) -> Callable[..., dict[str, Any]]:
    """Import a suite's module by name and return its ``run_suite``."""
    module_name = SUITES[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != module_name:
            raise  # the suite exists but one of its imports is missing
        path = Path(__file__).parent / f"{module_name.rsplit('.', 1)[1]}.py"
        raise SuiteUnavailable(f"suite {name!r} is not available: {path} does not exist") from None
    run_suite = getattr(module, "run_suite", None)
    if run_suite is None:
        raise SuiteUnavailable(f"suite {name!r}: {module_name} has no run_suite(*, quick, scratch)")
    return run_suite  # type: ignore[no-any-return]


def run_one(name: str, *, quick: bool, scratch: Path | None, command: str) -> dict[str, Any]:
    """Run one suite in a fresh scratch folder; write and print its results."""
    run_suite = load_suite(name)
    print(f"== suite {name}{' (quick)' if quick else ''} ==", flush=True)
    start = time.perf_counter()
    if scratch is not None:
        scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch, prefix=f"nb-bench-{name}-") as folder:
        result = run_suite(quick=quick, scratch=Path(folder))
    result = {
        "suite": result.get("suite", name),
        "quick": quick,
        "command": command,
        "wall_s": round(time.perf_counter() - start, 1),
        "machine": report.machine(),
        **{k: v for k, v in result.items() if k != "suite"},
    }
    paths = report.write(result)
    print(report.markdown(result), flush=True)
    print("written: " + ", ".join(str(p) for p in paths), flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=(__doc__ or "").splitlines()[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a suite and write benchmarks/results/")
    run.add_argument("--suite", required=True, choices=[*SUITES, "all"])
    run.add_argument("--quick", action="store_true", help="small inputs: about a minute a suite")
    run.add_argument(
        "--scratch",
        type=Path,
        help="folder for the generated inputs (a temporary folder inside it; system temp "
        "by default). The full filter suite writes about 5 GB there.",
    )
    args = parser.parse_args(argv)
    command = report.command_line()
    if args.suite != "all":
        try:
            run_one(args.suite, quick=args.quick, scratch=args.scratch, command=command)
        except SuiteUnavailable as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        return 0

    outcomes: list[dict[str, Any]] = []
    failed = []
    start = time.perf_counter()
    for name in SUITES:
        try:
            outcomes.append(run_one(name, quick=args.quick, scratch=args.scratch, command=command))
        except Exception as error:  # noqa: BLE001 - one failed suite does not stop the others
            traceback.print_exc()
            failed.append(name)
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            outcomes.append({"suite": name, "quick": args.quick, "error": message})
    path = report.write_all(outcomes, quick=args.quick, command=command)
    print(
        f"\nall suites in {time.perf_counter() - start:.0f} s; summary in {path}"
        + (f"; failed: {', '.join(failed)}" if failed else ""),
        flush=True,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
