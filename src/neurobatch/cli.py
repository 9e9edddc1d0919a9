"""The ``neurobatch`` command line: parse, build the cluster, call the engine.

Commands import what they need lazily, so ``neurobatch --help`` is instant. User errors go
to stderr with exit status 1 and no traceback.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any, NoReturn

from neurobatch import __version__
from neurobatch.cli_catalog import add_catalog, add_query
from neurobatch.cli_history import add_history
from neurobatch.cli_inspect import add_provenance, add_status
from neurobatch.cli_report import add_report, add_view
from neurobatch.errors import NeurobatchError, StorageError

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
        The exit status: 0 when everything succeeded, 1 for unusable configuration or
        arguments (or a failed check), 2 when some items failed, 3 when every item failed,
        4 when reading or writing the output failed (a full disk, a read-only folder, an
        object store still unreachable after retries: the line names the path), 143 when
        stopped by SIGTERM (a batch system's time limit, ``scancel``): the run's
        logs and provenance are written, marked interrupted, before it exits.

    Examples
    --------
    >>> main(["--version"])  # doctest: +ELLIPSIS
    neurobatch ...
    0
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if args.version:
        print(f"neurobatch {__version__}")
        return 0
    if args.command is None:
        parser.print_help()
        return 1
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminated) if in_main_thread else None
    try:
        status: int = args.run(args)
    except BrokenPipeError:
        # the reader went away (`neurobatch status OUT | head`): stop quietly, as Unix tools
        # do; stdout goes to devnull so that the interpreter's final flush does not fail too
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except StorageError as error:
        # the storage failed, not the pipeline file: a re-run once it is fixed finishes
        print(f"neurobatch {args.command}: error: {error}", file=sys.stderr)
        return EXIT_STORAGE
    except (NeurobatchError, ValueError, TypeError, OSError) as error:
        # a busy output folder (OutputLockedError) among them: one line, exit 1
        print(f"neurobatch {args.command}: error: {error}", file=sys.stderr)
        return 1
    except Exception as error:
        if not _from_storage_library(error):
            raise
        # an object store's client refused before any I/O (no credentials, a bad region)
        where = getattr(args, "out", None) or getattr(args, "file", None) or "the storage"
        print(
            f"neurobatch {args.command}: error: cannot reach {where}: {error} "
            f"({type(error).__name__}); expected credentials in the environment or "
            "--storage-options",
            file=sys.stderr,
        )
        return 1
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
        _stop_resource_tracker()
    return status


#: Client libraries of object stores whose errors are not OSErrors (botocore's
#: NoCredentialsError, azure-core's ClientAuthenticationError, google-auth's errors).
_STORAGE_LIBRARIES = ("botocore", "aiobotocore", "s3fs", "gcsfs", "google.auth", "adlfs", "azure")


def _from_storage_library(error: BaseException) -> bool:
    module = type(error).__module__
    return any(module == name or module.startswith(f"{name}.") for name in _STORAGE_LIBRARIES)


def _stop_resource_tracker() -> None:
    """Wait for multiprocessing's resource tracker, which worker processes start, to exit:
    it would otherwise outlive the command by a moment. Only once no child process is
    left (a caller's own cluster keeps it)."""
    import multiprocessing
    from multiprocessing import resource_tracker

    stop = getattr(resource_tracker._resource_tracker, "_stop", None)
    if stop is not None and not multiprocessing.active_children():
        stop()


def _terminated(signum: int, frame: object) -> None:
    """SIGTERM ends the command like Ctrl-C: through its cleanups, not in the middle."""
    raise SystemExit(128 + signum)


#: Exit status when some items failed (the others are done and combined).
EXIT_SOME_FAILED = 2
#: Exit status when every item failed.
EXIT_ALL_FAILED = 3
#: Exit status when the output's storage failed (:class:`neurobatch.errors.StorageError`).
EXIT_STORAGE = 4


class _Parser(argparse.ArgumentParser):
    """argparse's parser, but a usage error exits 1, the status of unusable arguments (2 is
    "some items failed")."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(1, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="neurobatch",
        description="Dask-parallel batch processing of neuroscience recordings.",
        epilog=(
            "Exit status: 0 everything done; 1 unusable configuration or arguments; "
            f"{EXIT_SOME_FAILED} some items failed (the others are done); "
            f"{EXIT_ALL_FAILED} every item failed; {EXIT_STORAGE} the output's storage failed "
            "(full, read-only, unreachable)."
        ),
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    add_run(commands)
    add_discover(commands)
    add_validate(commands)
    add_demo(commands)
    add_check(commands)
    add_cluster(commands)
    add_provenance(commands)
    add_status(commands)
    add_history(commands)
    add_catalog(commands)
    add_query(commands)
    add_watch(commands)
    add_report(commands)
    add_view(commands)
    return parser


def add_run(commands: Any) -> None:
    """The ``run`` command."""
    run = commands.add_parser(
        "run",
        help="run a pipeline file on its cluster",
        description="Discover the inputs, process every item on the cluster and combine.",
    )
    run.add_argument("file", help="the pipeline file (YAML or TOML)")
    run.add_argument(
        "--reprocess", action="store_true", help="redo every stage, even those already done"
    )
    run.add_argument(
        "--only",
        action="append",
        metavar="ITEM",
        help="process only this item (repeatable); the combined outputs keep the others",
    )
    run.add_argument(
        "--wait",
        action="store_true",
        help="wait for another run on the same output folder to end, instead of failing",
    )
    run.add_argument(
        "--download-only",
        action="store_true",
        help="fetch and verify every input into input.cache, and process nothing",
    )
    _cluster_arguments(run, workers_default=None)
    _force_argument(run)
    run.set_defaults(run=_run)


def add_watch(commands: Any) -> None:
    """The ``watch`` command (:mod:`neurobatch.engine.watch`)."""
    watch = commands.add_parser(
        "watch",
        help="poll the inputs and run every new or changed item as it appears",
        description=(
            "Every interval: discover the inputs (with input.ready_flag, only complete ones), "
            "run the new or changed items on the watch's cluster, log one line per cycle to "
            "stderr and OUT/logs/watch.log. A failed cycle is logged and retried at the next "
            "interval; a failed item waits for its input to change (or a restart). SIGTERM "
            "or SIGINT between cycles exits 0; during one, it is interrupted as a run is "
            "(exit 128 + the signal). With --once: one cycle, and run's exit status."
        ),
    )
    watch.add_argument("file", help="the pipeline file (YAML or TOML)")
    watch.add_argument(
        "--interval", type=_positive_float, default=60.0, metavar="S", help="seconds (60)"
    )
    watch.add_argument("--once", action="store_true", help="one cycle, then exit")
    _cluster_arguments(watch, workers_default=None)
    _force_argument(watch)
    watch.set_defaults(run=_watch)


def add_discover(commands: Any) -> None:
    """The ``discover`` command."""
    discover = commands.add_parser(
        "discover", help="print the manifest of a pipeline file", description="List the items."
    )
    discover.add_argument("file", help="the pipeline file (YAML or TOML)")
    discover.set_defaults(run=_discover)


def add_validate(commands: Any) -> None:
    """The ``validate`` command."""
    validate = commands.add_parser(
        "validate",
        help="check a pipeline file and its inputs without running anything",
        description="Validate the pipeline file and every item's loader arguments.",
    )
    validate.add_argument("file", help="the pipeline file (YAML or TOML)")
    _force_argument(validate)
    validate.set_defaults(run=_validate)


def add_demo(commands: Any) -> None:
    """The ``demo`` command."""
    demo = commands.add_parser(
        "demo",
        help="generate synthetic inputs and run a pipeline on them",
        description=(
            "Write realistic synthetic inputs, a pipeline file for them, and run it on a "
            "LocalCluster. photometry (default): a batch in PhoPro's CSV layout with JSON "
            "sidecars (photobleaching, shared motion artefacts, event-locked transients, a "
            "few awkward trials). filter: SpikeGLX recordings with spikes, LFP and line "
            "noise, band-pass filtered. sta: a white-noise movie and units with planted "
            "spatio-temporal receptive fields, recovered by spike-triggered averages."
        ),
    )
    demo.add_argument(
        "--kind",
        choices=("photometry", "filter", "sta"),
        default="photometry",
        help="which pipeline (photometry)",
    )
    demo.add_argument(
        "--out", default="neurobatch-demo", help="folder for the batch and the results"
    )
    demo.add_argument(
        "--items", type=_positive_int, default=None, help="recordings (photometry 8, else 1)"
    )
    demo.add_argument(
        "--duration-s",
        type=_positive_float,
        default=None,
        help="length of each (photometry 600 s, filter 60 s, sta 300 s of movie)",
    )
    demo.add_argument(
        "--rate-hz",
        type=_positive_float,
        default=None,
        help="sampling rate (photometry 1000 Hz, filter 30000 Hz, sta 60 frames/s)",
    )
    demo.add_argument(
        "--channels", type=_positive_int, default=64, help="channels of a filter demo (64)"
    )
    _cluster_arguments(demo, workers_default=2)
    _force_argument(demo)
    demo.add_argument("--seed", type=int, default=0, help="seed of the simulation (0)")
    demo.set_defaults(run=_run_demo)


def add_check(commands: Any) -> None:
    """The ``check`` command."""
    check = commands.add_parser(
        "check",
        help="run every blocked operator on a local cluster against its whole-array kernel",
        description=(
            "Simulate photometry recordings and a stimulus movie with planted receptive "
            "fields, run the blocked operators on a LocalCluster and compare each with its "
            "whole-array kernel. Exits 1 if any deviation exceeds its tolerance."
        ),
    )
    check.add_argument("--workers", type=_positive_int, default=2, help="worker processes (2)")
    check.add_argument(
        "--threads-per-worker", type=_positive_int, default=1, help="threads per worker (1)"
    )
    check.add_argument("--memory-limit", default="2GiB", help="memory limit per worker (2GiB)")
    check.add_argument(
        "--recordings", type=_positive_int, default=2, help="simulated recordings (2)"
    )
    check.add_argument(
        "--minutes", type=_positive_float, default=10.0, help="length of each recording (10)"
    )
    check.add_argument("--seed", type=int, default=0, help="seed of the simulation (0)")
    _force_argument(check)
    check.set_defaults(run=_run_check)


def add_cluster(commands: Any) -> None:
    """The ``cluster`` command."""
    cluster = commands.add_parser(
        "cluster",
        help="print what a pipeline file would submit: a job script or a DaskCluster manifest",
        description=(
            "Render, without submitting anything, the batch script of each worker job "
            "(slurm, pbs) or the DaskCluster manifest (kubernetes) of the pipeline file's "
            "cluster section; for local and address clusters, print the section itself."
        ),
    )
    cluster.add_argument("file", help="the pipeline file (YAML or TOML)")
    _cluster_arguments(cluster, workers_default=None)
    cluster.set_defaults(run=_cluster)


def _cluster_arguments(parser: argparse.ArgumentParser, workers_default: int | None) -> None:
    parser.add_argument(
        "--cluster",
        metavar="KIND",
        help=(
            "run on this cluster instead of the file's: local, slurm, pbs, kubernetes, or a "
            "scheduler address such as tcp://HOST:8786 (the file's settings are kept when "
            "it names the same kind)"
        ),
    )
    parser.add_argument(
        "--workers",
        type=_positive_int,
        default=workers_default,
        help="worker processes (for an address: how many to wait for)"
        + (f" ({workers_default})" if workers_default else ""),
    )


def _force_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--force",
        action="store_true",
        help="accept a cluster larger than the machine (local) or than 10,000 workers",
    )


def _cluster_config(config: Any, args: argparse.Namespace) -> Any:
    """The pipeline config with ``--cluster`` and ``--workers`` applied."""
    from neurobatch.engine.cluster import override

    cluster = config.cluster
    if args.cluster:
        cluster = override(cluster, args.cluster)
    if args.workers:
        cluster = cluster.model_copy(update={"n_workers": args.workers})
    return config.model_copy(update={"cluster": cluster})


def _cluster(args: argparse.Namespace) -> int:
    import yaml

    from neurobatch.config import JobqueueClusterConfig, KubernetesClusterConfig, load_config
    from neurobatch.engine.cluster import job_script, kubernetes_spec

    cluster = _cluster_config(load_config(args.file), args).cluster
    if isinstance(cluster, JobqueueClusterConfig):
        print(job_script(cluster), end="")
    elif isinstance(cluster, KubernetesClusterConfig):
        print(yaml.safe_dump(kubernetes_spec(cluster), sort_keys=False), end="")
    else:
        print(yaml.safe_dump({"cluster": cluster.model_dump(mode="json")}, sort_keys=False), end="")
    return 0


def _run_pipeline(pipeline: Any, args: argparse.Namespace) -> int:
    import logging

    from neurobatch.engine.run import RunError

    # the cluster's one line (workers, memory, dashboard link) goes to the terminal too,
    # for this command only (a caller's process may run several)
    cluster_log = logging.getLogger("neurobatch.engine.cluster")
    cluster_log.setLevel(logging.INFO)
    to_terminal = logging.StreamHandler(sys.stdout)
    cluster_log.addHandler(to_terminal)
    pipeline.config = _cluster_config(pipeline.config, args)
    try:
        summary = pipeline.run(
            reprocess=getattr(args, "reprocess", False),
            only=getattr(args, "only", None),
            wait=getattr(args, "wait", False),
            force=args.force,
        )
    except RunError as error:
        print(error.summary, file=sys.stderr)
        print(f"neurobatch {args.command}: error: {error}", file=sys.stderr)
        return _storage_status(error.summary) or EXIT_ALL_FAILED
    finally:
        cluster_log.removeHandler(to_terminal)
    print(summary)
    return _storage_status(summary) or (EXIT_SOME_FAILED if summary.n_failed else 0)


def _storage_status(summary: Any) -> int:
    """:data:`EXIT_STORAGE` when items failed because the output's storage did (with the
    first one's line), else 0: a re-run once it is fixed finishes them."""
    failures = summary.storage_failures
    if failures.empty:
        return 0
    first = failures.iloc[0]
    print(
        f"neurobatch: error: {len(failures)} item(s) failed on the output's storage; first: "
        f"{first['item_id']}: {first['error']}",
        file=sys.stderr,
    )
    return EXIT_STORAGE


def _run(args: argparse.Namespace) -> int:
    from neurobatch.engine.run import Pipeline

    if args.download_only:
        from neurobatch.engine.download import download_inputs

        summary = download_inputs(Pipeline.from_file(args.file).config, echo=print)
        print(summary)
        if not summary.n_failed:
            return 0
        return EXIT_ALL_FAILED if summary.n_failed == len(summary.inputs) else EXIT_SOME_FAILED
    return _run_pipeline(Pipeline.from_file(args.file), args)


def _watch(args: argparse.Namespace) -> int:
    import logging

    from neurobatch.engine.run import Pipeline, RunError
    from neurobatch.engine.watch import watch

    pipeline = Pipeline.from_file(args.file)
    pipeline.config = _cluster_config(pipeline.config, args)
    cycles = logging.getLogger("neurobatch.engine.watch")
    cycles.setLevel(logging.INFO)
    to_terminal = logging.StreamHandler(sys.stderr)
    cycles.addHandler(to_terminal)
    try:
        last = watch(pipeline, interval_s=args.interval, once=args.once, force=args.force)
    finally:
        cycles.removeHandler(to_terminal)
    if isinstance(last.error, RunError) and args.once:
        return _storage_status(last.error.summary) or EXIT_ALL_FAILED
    if last.error is not None and args.once:
        raise last.error  # one line and the status run would give (storage: 4, else 1)
    if last.summary is None or not args.once:
        return 0
    return _storage_status(last.summary) or (EXIT_SOME_FAILED if last.summary.n_failed else 0)


def _discover(args: argparse.Namespace) -> int:
    import pandas as pd

    from neurobatch.engine.run import Pipeline

    manifest = Pipeline.from_file(args.file).discover()
    with pd.option_context("display.max_rows", None, "display.max_colwidth", 80):
        print(manifest[["item_id", "url", "fingerprint", "format"]].to_string(index=False))
    return 0


def _validate(args: argparse.Namespace) -> int:
    from neurobatch.config import import_object
    from neurobatch.engine.cluster import check_cluster
    from neurobatch.engine.hooks import HOOK_NAMES
    from neurobatch.engine.run import Pipeline
    from neurobatch.engine.stages.photometry_reference import function_hashes
    from neurobatch.errors import InputError
    from neurobatch.io.loaders import check_inputs

    pipeline = Pipeline.from_file(args.file)  # imports the file's own stages
    for warning in check_cluster(pipeline.config.cluster, force=args.force):
        print(f"neurobatch validate: warning: {warning}", file=sys.stderr)
    manifest = pipeline.discover()
    # the hooks and the fit and correction functions the file names are imported, so that
    # a typo shows before a run
    hooks = {name: getattr(pipeline.config.hooks, name) for name in HOOK_NAMES}
    named = {name: target for name, target in hooks.items() if target is not None}
    for target in named.values():
        import_object(target)
    functions = function_hashes(pipeline.config.preprocess)
    # every input's header (a CSV's first line, a Parquet footer, an NWB file's structure)
    problems = [
        line
        for source in pipeline.config.sources
        for line in check_inputs(
            manifest[manifest["source"] == source.name], storage_options=source.storage_options
        )
    ]
    if problems:
        shown = 20  # inputs named; the others are counted
        more = len(problems) - shown
        raise InputError(
            "\n".join(problems[:shown])
            + (f"\n... and {more} more input(s) like these" if more > 0 else "")
        )
    print(
        f"{args.file}: valid; {len(manifest)} item(s); stages "
        + " -> ".join(stage.name for stage in pipeline.stages)
        + (f"; hooks {', '.join(named)} found" if named else "")
        + (f"; preprocess {' and '.join(functions)} found" if functions else "")
    )
    return 0


#: The demos' defaults: items, duration (s) and rate (Hz, or frames per second).
_DEMO_DEFAULTS = {
    "photometry": (8, 600.0, 1000.0),
    "filter": (1, 60.0, 30_000.0),
    "sta": (1, 300.0, 60.0),
}


def _run_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from neurobatch import synthetic
    from neurobatch.engine.run import Pipeline

    out = Path(args.out).resolve()
    data = out / "data"
    items, duration_s, rate = _DEMO_DEFAULTS[args.kind]
    items = args.items or items
    duration_s = args.duration_s or duration_s
    rate = args.rate_hz or rate
    if args.kind == "photometry":
        print(
            f"writing {items} synthetic recording(s) of {duration_s:g} s at {rate:g} Hz to {data}",
            flush=True,
        )
        synthetic.write_photometry_batch(
            data, n_items=items, duration_s=duration_s, fs=rate, seed=args.seed
        )
    elif args.kind == "filter":
        print(
            f"writing {items} SpikeGLX recording(s) of {args.channels} channels x "
            f"{duration_s:g} s at {rate:g} Hz (spikes, LFP, line noise) to {data}",
            flush=True,
        )
        for i in range(items):
            recording = synthetic.ephys_recording(
                n_channels=args.channels, duration_s=duration_s, fs=rate, seed=args.seed + i
            ).recording
            synthetic.write_spikeglx(recording, str(data / f"recording_{i + 1:03d}.bin"))
    else:
        n_frames = round(duration_s * rate)
        print(
            f"writing {items} white-noise movie(s) of {n_frames} frames at {rate:g} frames/s "
            f"with 16 units and planted receptive fields to {data}",
            flush=True,
        )
        for i in range(items):
            movie = synthetic.receptive_field_movie(
                n_frames=n_frames, fps=rate, n_units=16, seed=args.seed + i, outside_s=2.0
            ).movie
            synthetic.write_movie(movie, str(data / f"movie_{i + 1:03d}.zarr"))
    path = synthetic.demo_pipeline_file(out, args.kind)
    print(f"pipeline file {path}; running it (neurobatch run {path})", flush=True)
    return _run_pipeline(Pipeline.from_file(path), args)


def _run_check(args: argparse.Namespace) -> int:
    import tempfile

    from neurobatch.config import LocalClusterConfig
    from neurobatch.engine.cluster import connect
    from neurobatch.selfcheck import Check, run_check

    def show(check: Check) -> None:
        mark = "ok  " if check.ok else "FAIL"
        print(
            f"{mark} {check.step:<28} {check.seconds:7.2f} s   deviation {check.deviation:8.1e}"
            f" (<= {check.tolerance:.0e})   {check.detail}",
            flush=True,
        )

    config = LocalClusterConfig(
        kind="local",
        n_workers=args.workers,
        threads_per_worker=args.threads_per_worker,
        memory_limit=args.memory_limit,
    )
    # the pipelines' own local cluster: worker processes over TLS, on loopback
    with (
        tempfile.TemporaryDirectory(prefix="neurobatch-check-") as scratch,
        connect(config, force=args.force) as client,
    ):
        print(
            f"neurobatch check on a LocalCluster of {args.workers} worker(s) x "
            f"{args.threads_per_worker} thread(s), dashboard {client.dashboard_link}",
            flush=True,
        )
        checks = run_check(
            client,
            scratch,
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
