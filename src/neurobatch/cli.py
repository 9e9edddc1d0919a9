"""The ``neurobatch`` command line: parse, build the cluster, call the engine.

Commands import what they need lazily, so ``neurobatch --help`` is instant. User errors go
to stderr with exit status 1 and no traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import version

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``neurobatch`` command line.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments, without the program name; ``sys.argv[1:]`` when omitted.

    Returns
    -------
    int
        The exit status: 0 when everything succeeded, 1 for a usage error or a failed check.

    Examples
    --------
    >>> main(["--version"])  # doctest: +ELLIPSIS
    neurobatch ...
    0
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if args.version:
        print(f"neurobatch {version('neurobatch')}")
        return 0
    if args.command is None:
        parser.print_help()
        return 1
    try:
        status: int = args.run(args)
    except (ValueError, TypeError, FileNotFoundError) as error:
        print(f"neurobatch {args.command}: error: {error}", file=sys.stderr)
        return 1
    return status


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neurobatch",
        description="Dask-parallel batch processing of neuroscience recordings.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="run every blocked operator on a local cluster and check it against the kernels",
        description=(
            "Simulate photometry recordings and a stimulus movie with planted receptive "
            "fields, run the blocked operators on a LocalCluster and compare each with its "
            "whole-array kernel. Exits 1 if any deviation exceeds its tolerance."
        ),
    )
    demo.add_argument("--workers", type=_positive_int, default=2, help="worker processes (2)")
    demo.add_argument(
        "--threads-per-worker", type=_positive_int, default=1, help="threads per worker (1)"
    )
    demo.add_argument("--memory-limit", default="2GiB", help="memory limit per worker (2GiB)")
    demo.add_argument(
        "--recordings", type=_positive_int, default=2, help="simulated recordings (2)"
    )
    demo.add_argument(
        "--minutes", type=_positive_float, default=10.0, help="length of each recording (10)"
    )
    demo.add_argument("--seed", type=int, default=0, help="seed of the simulation (0)")
    demo.add_argument(
        "--workdir",
        default=None,
        help="folder for the simulated Zarr stores (a temporary folder, removed afterwards)",
    )
    demo.set_defaults(run=_run_demo)
    return parser


def _run_demo(args: argparse.Namespace) -> int:
    import tempfile

    from distributed import Client, LocalCluster

    from neurobatch.engine.demo import Check, run_demo

    def show(check: Check) -> None:
        mark = "ok  " if check.ok else "FAIL"
        print(
            f"{mark} {check.step:<28} {check.seconds:7.2f} s   deviation {check.deviation:8.1e}"
            f" (<= {check.tolerance:.0e})   {check.detail}",
            flush=True,
        )

    with (
        tempfile.TemporaryDirectory(prefix="neurobatch-demo-") as scratch,
        LocalCluster(
            n_workers=args.workers,
            threads_per_worker=args.threads_per_worker,
            memory_limit=args.memory_limit,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
        ) as cluster,
        Client(cluster) as client,
    ):
        print(
            f"neurobatch demo on a LocalCluster of {args.workers} worker(s) x "
            f"{args.threads_per_worker} thread(s), dashboard {client.dashboard_link}",
            flush=True,
        )
        checks = run_demo(
            client,
            args.workdir or scratch,
            n_recordings=args.recordings,
            duration_s=args.minutes * 60.0,
            seed=args.seed,
            progress=show,
        )
    failed = [c for c in checks if not c.ok]
    print(f"{len(checks) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


if __name__ == "__main__":
    sys.exit(main())
