"""The driver: discover -> plan -> submit -> collect -> combine, under the output folder's lock.

One future per item on a Dask cluster, a bounded number in flight; inside its task an item
runs its stages (:mod:`neurobatch.engine.item`). The driver appends the items' trials to
the combined outputs in manifest order as they finish (:mod:`neurobatch.engine.combine`),
so memory stays flat in the number of items and the combined order does not depend on
which worker was faster, and records what ran in ``processing.json``
(:mod:`neurobatch.engine.run_records`).
"""

from __future__ import annotations

import itertools
import json
import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import dask
import pandas as pd
from distributed import Client

from neurobatch import __version__
from neurobatch.config import PipelineConfig, load_config, validate_config
from neurobatch.engine.catalog import refresh_catalog
from neurobatch.engine.cluster import check_cluster, connect, planned_threads
from neurobatch.engine.combine import Combiner
from neurobatch.engine.display import progress_default
from neurobatch.engine.hooks import resolve_hooks
from neurobatch.engine.item import ItemJob, ItemOutcome, process_item, write_failure
from neurobatch.engine.layout import ITEMS_TABLE, OutputLayout
from neurobatch.engine.ledger import read_records, write_manifest
from neurobatch.engine.logs import run_log
from neurobatch.engine.monitor import Recorder
from neurobatch.engine.placement import resolve_auto
from neurobatch.engine.rates import rate_outliers
from neurobatch.engine.report import report_after_run
from neurobatch.engine.results import TrialsOutputs
from neurobatch.engine.run_records import RunProvenance
from neurobatch.engine.stages import KINDS, Stage, pipeline_stages
from neurobatch.engine.statuses import TaskStatuses
from neurobatch.engine.tasks import ItemTasks, storage_timeouts_on_workers, task_groups
from neurobatch.errors import ConfigError, NeurobatchError
from neurobatch.io import files, storage
from neurobatch.io.discover import discover_config
from neurobatch.io.lock import OutputLock
from neurobatch.redact import scrub, secrets_in

logger = logging.getLogger(__name__)

__all__ = ["Pipeline", "RunError", "RunResult", "RunSummary"]


class RunError(NeurobatchError, RuntimeError):
    """Every item of a run failed; :attr:`summary` says how."""

    def __init__(self, message: str, summary: RunSummary) -> None:
        super().__init__(message)
        self.summary = summary


@dataclass
class RunSummary:
    """The result of :meth:`Pipeline.run`."""

    output_url: str
    items: pd.DataFrame
    n_trials: int
    seconds: float

    @property
    def n_done(self) -> int:
        """Items processed in this run."""
        return int((self.items["status"] == "done").sum())

    @property
    def n_skipped(self) -> int:
        """Items already done with the same inputs and settings."""
        return int((self.items["status"] == "skipped").sum())

    @property
    def n_failed(self) -> int:
        """Items that failed."""
        return int((self.items["status"] == "failed").sum())

    @property
    def failures(self) -> pd.DataFrame:
        """The failed items with their one-line errors."""
        return self.items.loc[self.items["status"] == "failed", ["item_id", "url", "error"]]

    @property
    def storage_failures(self) -> pd.DataFrame:
        """The items that failed because the output's storage did (not their input)."""
        failed = (self.items["status"] == "failed") & self.items["storage_fault"].fillna(False)
        return self.items.loc[failed, ["item_id", "url", "error"]]

    def __str__(self) -> str:
        lines = [
            (
                f"{len(self.items)} item(s): {self.n_done} done, {self.n_skipped} skipped "
                f"(unchanged), {self.n_failed} failed; {self.n_trials} trials; "
                f"{self.seconds:.1f} s"
            ),
            (
                f"outputs in {self.output_url}; what ran and what it used: "
                f"neurobatch provenance {self.output_url}"
            ),
        ]
        lines += [f"  FAILED {row.item_id}: {row.error}" for row in self.failures.itertuples()]
        return "\n".join(lines)


@dataclass
class RunResult(RunSummary, TrialsOutputs):
    """What :meth:`Pipeline.run` returns: its summary, and its outputs opened.

    ``.trials`` (the combined trials, lazy xarray), ``.to_anndata()``, ``.to_phopro()``
    (:class:`~neurobatch.engine.results.TrialsOutputs`), ``.items`` (this run's items).
    """

    storage_options: Mapping[str, Any] = field(default_factory=dict, repr=False)  # secrets


def _with_chunk_budget(jobs: list[ItemJob], client: Client) -> list[ItemJob]:
    """The jobs with ``engine.chunk_memory`` derived from the workers' memory, unless set.

    The budget follows the smallest memory limit per thread among the workers connected
    now (:meth:`neurobatch.config.EngineConfig.chunk_budget`).
    """
    if not jobs:
        return jobs
    engine = jobs[0].config.engine
    workers = client.scheduler_info()["workers"].values()
    shares = [w["memory_limit"] // max(1, w["nthreads"]) for w in workers if w.get("memory_limit")]
    budget = engine.chunk_budget(min(shares) if shares else None)
    if budget == engine.chunk_memory:
        return jobs
    logger.info("chunk memory %d bytes, from the workers' memory limits", budget)
    config = jobs[0].config.model_copy(
        update={"engine": engine.model_copy(update={"chunk_memory": budget})}
    )
    return [replace(job, config=config) for job in jobs]


class Pipeline:
    """A batch pipeline: one pipeline file (and stages of the user's own), run on a cluster.

    Parameters
    ----------
    config : neurobatch.config.PipelineConfig or mapping
        The validated pipeline file, or a mapping validated into one (a ConfigError of one
        line per problem, as for a file). Where a file takes ``module:function``, a
        mapping may hold the function itself.
    stages : iterable of Stage, optional
        Stages of the user's own (:func:`neurobatch.stage`), after the file's.

    Examples
    --------
    >>> import tempfile
    >>> from neurobatch import synthetic
    >>> tmp = tempfile.mkdtemp()
    >>> _ = synthetic.write_photometry_batch(f"{tmp}/data", n_items=2, duration_s=120.0, fs=50.0)
    >>> pipeline = Pipeline({
    ...     "name": "doc",
    ...     "input": {"url": f"{tmp}/data", "pattern": "*.csv"},
    ...     "loader": {"format": "photometry-csv", "event_cols": list(synthetic.EVENT_NAMES),
    ...                "annotation": "{stem}.json"},
    ...     "preprocess": {"fit": "ols"},
    ...     "trials": {"align_to": "trial_cue", "bounds_s": [-2, 4]},
    ...     "output": {"url": f"{tmp}/out"},
    ... })
    >>> pipeline.discover()["item_id"].tolist()
    ['experiment_001', 'experiment_002']
    >>> [stage.name for stage in pipeline.stages]
    ['ingest', 'preprocess', 'trials']
    """

    def __init__(
        self, config: PipelineConfig | Mapping[str, Any], *, stages: Iterable[Stage] = ()
    ) -> None:
        self.config = config if isinstance(config, PipelineConfig) else validate_config(config)
        self.extra_stages = list(stages)
        self.stages = pipeline_stages(self.config, self.extra_stages)

    @classmethod
    def from_file(cls, path: str | Path, *, stages: Iterable[Stage] = ()) -> Pipeline:
        """Read and validate a pipeline file (YAML or TOML).

        Parameters
        ----------
        path : str or pathlib.Path
            The pipeline file.
        stages : iterable of Stage, optional
            Stages of the user's own, after the file's.

        Returns
        -------
        Pipeline
        """
        return cls(load_config(path), stages=stages)

    @property
    def layout(self) -> OutputLayout:
        """The output folder's paths."""
        return OutputLayout(self.config.output.url, self.config.output.storage_options)

    def discover(self) -> pd.DataFrame:
        """The manifest: one row per item (input and loader arguments), sorted.

        Returns
        -------
        pandas.DataFrame
            See :func:`neurobatch.io.discover.discover`.
        """
        return discover_config(self.config)

    def jobs(
        self,
        manifest: pd.DataFrame,
        *,
        hooks: Mapping[str, Callable[..., Any] | None] | None = None,
        reprocess: bool = False,
        run_id: str = "",
    ) -> list[ItemJob]:
        """One job per row of the manifest, with the run's stages and hooks.

        Parameters
        ----------
        manifest : pandas.DataFrame
            From :meth:`discover`.
        hooks : mapping, optional
            Overrides of the file's hooks (see :meth:`run`).
        reprocess : bool, default False
            Redo every stage.
        run_id : str, optional
            Stamped on every commit.

        Returns
        -------
        list of neurobatch.engine.item.ItemJob
        """
        resolved = resolve_hooks(self.config, hooks)
        return [
            ItemJob(
                item_id=str(row["item_id"]),
                url=str(row["url"]),
                fingerprint=str(row["fingerprint"]),
                format=str(row["format"]),
                loader_arguments=dict(row["loader_arguments"]),
                config=self.config,
                stages=self.stages,
                hooks=resolved,
                reprocess=reprocess,
                run_id=run_id,
                size=int(row.get("size") or 0),
                source=str(row.get("source") or ""),
            )
            for row in manifest.to_dict("records")
        ]

    def run(
        self,
        *,
        client: Client | None = None,
        hooks: Mapping[str, Callable[..., Any] | None] | None = None,
        reprocess: bool = False,
        only: Sequence[str] | None = None,
        progress: bool | None = None,
        wait: bool = False,
        force: bool = False,
    ) -> RunResult:
        """Process every item and combine their trials.

        The run holds the output folder's lock (``OUT/.neurobatch-lock.json``) from start to
        end: a second run on the same folder fails at once, naming the holder, or waits.

        Parameters
        ----------
        client : distributed.Client, optional
            The cluster to run on; by default one is started from the ``cluster`` section.
        hooks : mapping of str to callable, optional
            ``post_load``, ``id_builder``, ``post_preprocess``, ``post_trials``; each takes
            the item's dataset (``id_builder`` returns the experiment id, the others a
            dataset or None). They override the pipeline file's hooks of the same name.
        reprocess : bool, default False
            Redo every stage of every item, even those already done.
        only : sequence of str, optional
            Process only these item ids; the combined outputs still cover every
            committed item.
        progress : bool, optional
            Show a progress bar; by default on a terminal, and in a notebook (Jupyter)
            where ``ipywidgets`` is installed.
        wait : bool, default False
            Wait for another run holding the output folder to end, instead of failing.
        force : bool, default False
            Start a cluster larger than the machine (``local``) or of more than 10,000
            workers (:func:`neurobatch.engine.cluster.check_cluster_size`).

        Returns
        -------
        RunResult
            The summary (items, counts, time) with the outputs opened: ``.trials``,
            ``.to_anndata()``, ``.to_phopro()``.

        Raises
        ------
        neurobatch.errors.ConfigError
            If the manifest is empty, ``only`` names an unknown item, or the cluster section
            is refused (its size without ``force``, or who could reach it).
        neurobatch.errors.OutputLockedError
            If another run holds the output folder (without ``wait``).
        RunError
            If every item failed (after writing the logs and the items table).
        """
        config, layout = self.config, self.layout
        secrets = secrets_in(config.model_dump())
        start = time.perf_counter()
        run_id = f"{time.time_ns():x}"
        if client is None:  # before anything is written: a refused cluster leaves OUT alone
            check_cluster(config.cluster, force=force)
        storage.configure(config.engine.storage_timeouts)  # workers': in _run
        command = scrub(" ".join(sys.argv), secrets)
        with (
            OutputLock(
                layout.url, storage_options=layout.storage_options, wait=wait, command=command
            ),
            run_log(
                layout.run_log,
                storage_options=layout.storage_options,
                scrub=lambda text: scrub(text, secrets),
            ),
        ):
            discovered = self.discover()
            manifest = self._select(discovered, only)
            write_manifest(
                discovered.assign(url=[scrub(url, secrets) for url in discovered["url"]]),
                layout.url,
                kind=config.kind,
                stages=[stage.name for stage in self.stages],
                storage_options=layout.storage_options,
            )
            jobs = self.jobs(manifest, hooks=hooks, reprocess=reprocess, run_id=run_id)
            with TaskStatuses(
                layout,
                run_id,
                items=[job.item_id for job in jobs],
                stages=[stage.name for stage in self.stages],
                name=config.name,
                command=command,
                scrub=lambda text: scrub(text, secrets),
            ) as statuses:
                summary = self._run(jobs, discovered, client, progress, statuses, start, force)
        if summary.n_failed == len(summary.items):
            raise RunError(
                f"every item failed ({summary.n_failed}); first error: "
                f"{summary.failures.iloc[0]['item_id']}: {summary.failures.iloc[0]['error']}; "
                f"see {layout.path('logs')}",
                summary,
            )
        return summary

    def _run(
        self,
        jobs: list[ItemJob],
        manifest: pd.DataFrame,
        client: Client | None,
        progress: bool | None,
        statuses: TaskStatuses,
        start: float,
        force: bool,
    ) -> RunResult:
        config, layout, run_id = self.config, self.layout, statuses.run_id
        kind = KINDS[config.kind]
        with ExitStack() as stack:
            if client is None:
                sizes = manifest.set_index("item_id").loc[[job.item_id for job in jobs], "size"]
                cluster = resolve_auto(
                    config.cluster, len(jobs), float(sizes.mean() or 0), blocked=kind.on_cluster
                )
                client = stack.enter_context(connect(cluster, force=force))
            jobs = _with_chunk_budget(jobs, client)
            storage_timeouts_on_workers(client, config.engine.storage_timeouts)
            # the driver's own reads and appends (the combined outputs) compute locally, not
            # as tasks queued behind the items; set after the client, which makes itself the
            # default scheduler when it is created
            stack.enter_context(dask.config.set(scheduler="threads"))
            provenance = RunProvenance(config, self.stages, stack.enter_context(Recorder(client)))
            combiner = Combiner(
                layout,
                list(manifest["item_id"]),
                run_id,
                kind.trials,
                zarr_format=config.output.zarr_format,
            )
            selected = {job.item_id for job in jobs}
            carried = self._carried(manifest[~manifest["item_id"].isin(selected)], kind.trials)
            for outcome in carried:
                combiner.add(outcome)
            try:
                self._submit(client, jobs, combiner, provenance, progress, statuses)
                combiner = self._refuse_rate_outliers(combiner, run_id)
                outcomes = [combiner.outcomes[job.item_id] for job in jobs]
                summary = self._finish(
                    outcomes, carried, combiner, time.perf_counter() - start, statuses
                )
            except BaseException as error:
                combiner.discard(error)  # the outputs in place stay: the last complete run's
                try:
                    provenance.write(
                        combiner if kind.trials else None,
                        notes=(
                            f"run interrupted ({type(error).__name__}: {error}) after "
                            f"{len(provenance.outcomes)} of {len(jobs)} item(s)"
                        ),
                    )
                except Exception as failure:  # noqa: BLE001 - keep the first error
                    logger.error("could not write the run's provenance: %s", failure)
                raise
            provenance.write(combiner if kind.trials else None)
        if config.output.report:
            report_after_run(layout)
        return summary

    def _carried(self, rows: pd.DataFrame, trials_stage: str | None) -> list[ItemOutcome]:
        """Items this run does not touch (``--only``): what the combined outputs keep of them."""
        if rows.empty:
            return []
        records = read_records(
            self.layout, list(rows["item_id"]), [trials_stage] if trials_stage else []
        )
        return [
            ItemOutcome(
                item_id=item,
                url=url,
                status="carried",
                records={}
                if trials_stage is None
                else {"trials": records.get((item, trials_stage)) or {}},
            )
            for item, url in zip(rows["item_id"], rows["url"], strict=True)
        ]

    @staticmethod
    def _select(manifest: pd.DataFrame, only: Sequence[str] | None) -> pd.DataFrame:
        if only is None:
            return manifest
        unknown = sorted(set(only) - set(manifest["item_id"]))
        if unknown:
            raise ConfigError(
                f"--only: no item {', '.join(map(repr, unknown))} in the manifest; "
                f"expected one of {', '.join(manifest['item_id'][:10])}"
                + (" ..." if len(manifest) > 10 else "")
            )
        return manifest[manifest["item_id"].isin(only)].reset_index(drop=True)

    def _submit(
        self,
        client: Client,
        jobs: list[ItemJob],
        combiner: Combiner,
        provenance: RunProvenance,
        progress: bool | None,
        statuses: TaskStatuses,
    ) -> None:
        """Run every job, handing each outcome to the combiner, provenance and the
        statuses as it comes."""
        # a task whose workers keep dying is rerun this many times, then fails (KilledWorker)
        retries = self.config.engine.retries
        client.run_on_scheduler(
            lambda dask_scheduler: setattr(dask_scheduler, "allowed_failures", retries)
        )
        with _progress(len(jobs), progress) as advance:

            def finished(outcome: ItemOutcome, job: ItemJob, key: str | None) -> None:
                if outcome.status == "failed":
                    logger.error("%s failed: %s", outcome.item_id, outcome.error)
                combiner.add(outcome)
                provenance.item_finished(outcome, job, key)
                statuses.finished(outcome)
                advance(outcome)

            if KINDS[self.config.kind].on_cluster:
                self._one_at_a_time(client, jobs, finished)
            else:
                self._in_flight(client, jobs, finished, statuses.reported)

    def _one_at_a_time(
        self, client: Client, jobs: list[ItemJob], finished: Callable[..., None]
    ) -> None:
        """Items larger than a worker: one at a time, each item's graphs on every worker."""
        logger.info(
            "%s: %d item(s), one at a time, each on all %d worker thread(s); dashboard %s",
            self.config.name,
            len(jobs),
            sum(client.nthreads().values()) or 1,
            client.dashboard_link,
        )
        with dask.config.set(scheduler=client.get):
            for job in jobs:
                finished(process_item(job), job, None)

    def _in_flight(
        self,
        client: Client,
        jobs: list[ItemJob],
        finished: Callable[..., None],
        reported: Callable[[dict[str, Any]], None],
    ) -> None:
        """Items in tasks (several small ones to a task), a bounded number of tasks in
        flight, each item handed back as its task completes; ``reported`` hears the items'
        reports that come through the scheduler."""
        engine = self.config.engine
        planned = planned_threads(self.config.cluster)
        threads = sum(client.nthreads().values()) or 1

        def in_flight_limit() -> int:
            # jobs and pods join while the run goes on: keep twice the threads busy,
            # counting the planned ones so that adaptive clusters see the work to scale to
            now = sum(client.nthreads().values())
            return engine.max_in_flight or 2 * max(now, planned or 0, 1)

        groups = task_groups(jobs, max(threads, planned or 0))
        logger.info(
            "%s: %d item(s) in %d task(s) on %d worker thread(s)%s, at most %d in flight; "
            "dashboard %s",
            self.config.name,
            len(jobs),
            len(groups),
            threads,
            f" ({planned} planned)" if planned and planned != threads else "",
            in_flight_limit(),
            client.dashboard_link,
        )
        pending = iter(groups)
        with ItemTasks(client, engine, on_progress=reported) as tasks:
            for group in itertools.islice(pending, in_flight_limit()):
                tasks.submit(group)
            for group, outcomes, key in tasks.finished():
                for job, outcome in zip(group, outcomes, strict=True):
                    finished(outcome, job, key)
                while len(tasks) < in_flight_limit():
                    following = next(pending, None)
                    if following is None:
                        break
                    tasks.submit(following)

    def _refuse_rate_outliers(self, combiner: Combiner, run_id: str) -> Combiner:
        """Fail the items whose sampling rate is orders of magnitude off most of the batch's
        (:func:`neurobatch.engine.rates.rate_outliers`: a time column in another unit), and
        leave their trials out of the combined outputs (rebuilt: rare)."""
        outcomes = combiner.outcomes
        rates = {i: o.sampling_rate for i, o in outcomes.items() if o.status != "failed"}
        flagged = rate_outliers(rates)
        if not flagged:
            return combiner
        for item_id, reason in flagged.items():
            outcome = outcomes[item_id]
            outcome.status, outcome.error = "failed", f"{outcome.url!r}: {reason}"
            logger.error("%s failed: %s", item_id, outcome.error)
            write_failure(self.layout, item_id, self.stages[0].name, outcome.error, run_id)
        return combiner.rebuilt()

    def _finish(
        self,
        outcomes: list[ItemOutcome],
        carried: list[ItemOutcome],
        combiner: Combiner,
        seconds: float,
        statuses: TaskStatuses,
    ) -> RunResult:
        config, layout, run_id = self.config, self.layout, statuses.run_id
        so = layout.storage_options
        items = pd.DataFrame([outcome.row() for outcome in outcomes])
        table = pd.concat([items, self._earlier_rows(carried)], ignore_index=True)
        order = {item: i for i, item in enumerate(combiner.order)}
        table = table.sort_values("item_id", key=lambda ids: ids.map(order), kind="stable")
        combiner.finish(table.reset_index(drop=True), config.output.formats)
        refresh_catalog(layout)  # a failure is a warning: neurobatch catalog rebuilds it
        run = {
            "name": config.name,
            "neurobatch": __version__,
            "run": run_id,
            "n_items": len(items),
            "n_trials": combiner.n_trials,
            "seconds": round(seconds, 3),
            "items": [o.summary() for o in outcomes],
        }
        text = scrub(json.dumps(run, indent=2, default=str), secrets_in(config.model_dump()))
        files.write_text(layout.run_record, text, storage_options=so)
        statuses.ended(outcomes, run)
        summary = RunResult(
            output_url=layout.url,
            items=items,
            n_trials=combiner.n_trials,
            seconds=seconds,
            storage_options=layout.storage_options,
        )
        logger.info("%s", summary)
        return summary

    def _earlier_rows(self, carried: list[ItemOutcome]) -> pd.DataFrame:
        """The rows of the items this run did not touch, from the items table before it."""
        if not carried:
            return pd.DataFrame()
        try:
            earlier = pd.read_parquet(
                self.layout.combined(ITEMS_TABLE),
                storage_options=dict(self.layout.storage_options),
            )
        except FileNotFoundError:
            earlier = pd.DataFrame(columns=["item_id"])
        ids = [outcome.item_id for outcome in carried]
        known = earlier[earlier["item_id"].isin(ids)]
        missing = [o.row() for o in carried if o.item_id not in set(known["item_id"])]
        return pd.concat([known, pd.DataFrame(missing)], ignore_index=True)


@contextmanager
def _progress(total: int, enabled: bool | None) -> Iterator[Callable[[ItemOutcome], None]]:
    """A progress bar over items (rich): on a terminal, or a notebook's widget."""
    if enabled is None:
        enabled = progress_default()
    if not enabled:
        yield lambda outcome: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        transient=False,
    ) as bar:
        task = bar.add_task("items", total=total)

        def advance(outcome: ItemOutcome) -> None:
            bar.update(task, advance=1, description=f"{outcome.item_id} {outcome.status}")

        yield advance
