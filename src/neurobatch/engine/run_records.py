"""What a run records in provenance: each item's stages, then the run's, in AIND's schema.

As each item finishes, the stages it ran are appended to ``items/<item>/processing.json``;
at the end of the run, its stages aggregated over its items (and the driver's combine) are
appended to ``OUT/processing.json``. Every stage, built-in or a user's, is recorded the
same way, from its :class:`~neurobatch.engine.stages.Stage`.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from neurobatch.config import PipelineConfig, dump_config
from neurobatch.engine.item import CLUSTER, ItemJob, ItemOutcome
from neurobatch.engine.layout import TRIALS, OutputLayout
from neurobatch.engine.logs import one_line
from neurobatch.engine.monitor import DRIVER, Recorder
from neurobatch.engine.provenance import StageRecord, append_processing, build_processing, machine
from neurobatch.engine.stages import KINDS, Stage

if TYPE_CHECKING:
    from neurobatch.engine.combine import Combiner

logger = logging.getLogger(__name__)

__all__ = ["RunProvenance"]

#: The driver's own stage: the combined outputs.
COMBINE = "combine"


class RunProvenance:
    """Appends each finished item's record, and the run's at the end, to processing.json."""

    def __init__(self, config: PipelineConfig, stages: list[Stage], recorder: Recorder) -> None:
        self.config = config
        self.stages = {stage.name: stage for stage in stages}
        self.recorder = recorder
        self.layout = OutputLayout(config.output.url, config.output.storage_options)
        self.outcomes: list[ItemOutcome] = []
        self.hosts: dict[str, dict[str, Any]] = {DRIVER: machine()}
        self.started = time.time()
        self.upstream = {name: list(stage.needs) for name, stage in self.stages.items()}
        trials = KINDS[config.kind].trials
        self.upstream[COMBINE] = [trials] if trials else []

    def _parameters(self, stage: str, job: ItemJob | None = None) -> dict[str, Any]:
        config = self.config
        if stage == COMBINE:
            return config.output.model_dump(mode="json")
        parameters = self.stages[stage].parameters(config)
        if self.stages[stage].needs:
            return parameters
        if job is not None:  # the stage that reads the input: the item's loader
            return {"loader": {"format": job.format, **job.loader_arguments}}
        return {key: dump_config(config)[key] for key in ("input", "loader")}

    def _record(
        self,
        stage: str,
        start: float,
        end: float,
        workers: list[str],
        outputs: dict[str, Any],
        *,
        job: ItemJob | None = None,
        inputs: list[str] | None = None,
        output_path: str = "items",
    ) -> StageRecord:
        definition = self.stages.get(stage)
        return StageRecord(
            stage,
            start,
            end,
            workers,
            self._parameters(stage, job),
            output_path,
            outputs,
            inputs=inputs or [],
            process=definition.process if definition else "Analysis",
            processing_stage=definition.processing_stage if definition else "Analysis",
            upstream=self.upstream.get(stage, []),
            version=(definition.version or None) if definition else None,
        )

    def _build(
        self, records: list[StageRecord], notes: str | None = None, *, item: bool = False
    ) -> Any:
        """The records as AIND's Processing. For one item's stages the samples fetched in
        the monitor's last interval do, and only those from shortly before its first stage
        are looked at (that item's cost stays the same however long the run)."""
        interval = self.recorder.interval
        samples, _ = self.recorder.poll(reuse_within=interval if item else 0.0)
        if item and len(samples):
            first = min(record.start for record in records)
            samples = samples[samples["time"].to_numpy() >= first - 10 * interval]
        for record in records:
            if CLUSTER in record.workers:  # every worker that was sampled while it ran
                during = samples[
                    (samples["time"] >= record.start) & (samples["time"] <= record.end)
                ]
                record.workers = sorted(set(during["worker"]) - {DRIVER}) or [DRIVER]
                record.outputs["workers"] = record.workers
        return build_processing(
            records,
            pipeline_name=self.config.name,
            pipeline_parameters=self.config.model_dump(mode="json"),
            samples=samples,
            hosts=self.hosts,
            experimenters=self.config.experimenters,
            notes=notes,
        )

    def item_finished(self, outcome: ItemOutcome, job: ItemJob, key: str | None) -> None:
        """Append the stages this item ran to ``items/<item>/processing.json``."""
        self.outcomes.append(outcome)
        if outcome.host:
            self.hosts[outcome.worker] = outcome.host
        if not outcome.spans:
            return
        records = []
        for span in outcome.spans:
            stage, failed = span["stage"], span["status"] == "failed"
            outputs: dict[str, Any] = {
                "items": {"done": int(not failed), "failed": int(failed), "skipped": 0},
                "workers": [span["worker"]],
                "failures": {outcome.item_id: outcome.error} if failed else {},
            }
            if key is not None:
                outputs["task"] = key
            if not failed:
                outputs |= outcome.records.get(stage, {})
            records.append(
                self._record(
                    stage,
                    span["start"],
                    span["end"],
                    [span["worker"]],
                    outputs,
                    job=job,
                    inputs=[] if self.stages[stage].needs else [job.url],
                    output_path=stage,
                )
            )
        url = self.layout.item_processing(job.item_id)
        try:
            append_processing(
                url,
                self._build(records, item=True),
                upstream=self.upstream,
                storage_options=self.layout.storage_options,
            )
        except Exception as error:  # noqa: BLE001 - one item's record never stops the run
            logger.error("%s: could not write %s: %s", job.item_id, url, one_line(error))

    def write(self, combiner: Combiner | None, notes: str | None = None) -> None:
        """Append the run's stages, aggregated over its items, to ``OUT/processing.json``."""
        records = []
        for stage in self.stages:
            spans = [(o, span) for o in self.outcomes for span in o.spans if span["stage"] == stage]
            if not spans:
                continue
            failures = {o.item_id: o.error for o, span in spans if span["status"] == "failed"}
            outputs: dict[str, Any] = {
                "items": {
                    "done": len(spans) - len(failures),
                    "failed": len(failures),
                    "skipped": sum(stage in o.stages_skipped for o in self.outcomes),
                },
                "workers": sorted({span["worker"] for _, span in spans}),
                "failures": failures,
            }
            if stage == "trials":
                outputs["n_trials"] = sum(o.n_trials for o, s in spans if s["status"] == "done")
            records.append(
                self._record(
                    stage,
                    min(span["start"] for _, span in spans),
                    max(span["end"] for _, span in spans),
                    outputs["workers"],
                    outputs,
                    inputs=[] if self.stages[stage].needs else [o.url for o, _ in spans],
                )
            )
        if combiner is not None:
            failed = sum(o.status == "failed" for o in self.outcomes)
            outputs = {
                "items": {"done": combiner.n_items, "failed": failed, "skipped": 0},
                "workers": [DRIVER],
                "failures": {},
                "n_trials": combiner.n_trials,
            }
            start = combiner.started or (records[-1].end if records else self.started)
            records.append(
                self._record(COMBINE, start, time.time(), [DRIVER], outputs, output_path=TRIALS)
            )
        if records:
            url = self.layout.processing
            append_processing(
                url,
                self._build(records, notes),
                upstream=self.upstream,
                storage_options=self.layout.storage_options,
            )
            logger.info("provenance appended to %s", url)
