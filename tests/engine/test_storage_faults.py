"""Storage faults do no lasting damage: an S3 outage, and a full disk.

The outages are real: the pipeline reaches the local S3 server through a relay
(``tests/endpoint.py``) that stops listening and cuts its connections for a while, at a
chosen request. Each S3 request is tried once by the client, so that the engine's own
retries (``neurobatch.io.files.retried``) are what rides the outage out. The full disk is
real too: a tmpfs of a few MB (``tests/disks.py``; skipped where it cannot be mounted).
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import xarray as xr
import yaml
from distributed import Client

from disks import resize, small_disk, used_bytes
from endpoint import Endpoint
from neurobatch.cli import main
from neurobatch.config import PipelineConfig, load_config
from neurobatch.engine.combine import Combiner
from neurobatch.engine.item import ItemOutcome
from neurobatch.engine.layout import OutputLayout
from neurobatch.engine.ledger import item_states, read_records
from neurobatch.engine.run import Pipeline
from neurobatch.errors import StorageError
from neurobatch.io import files, trials_store
from runs import assert_same_results

OUT = "s3://lab/storage-faults/out"
#: The first read of a stage's commit record: where a worker decides whether it is done.
COMMIT_READ = rb"GET \S*/items/[^/]+/[^/]+/\.neurobatch-commit\.json"


def _config(demo: Path, url: str, storage_options: dict[str, Any] | None = None) -> PipelineConfig:
    config = load_config(demo)
    output = config.output.model_copy(
        update={"url": url, "dashboards": None, "storage_options": storage_options or {}}
    )
    return config.model_copy(update={"output": output})


@pytest.fixture(scope="module")
def relay(s3_options: dict[str, Any]) -> Any:
    with Endpoint(s3_options["client_kwargs"]["endpoint_url"]) as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def s3_batch(
    photometry_demo: Path, local_client: Client, relay: Endpoint, s3_options: dict[str, Any]
) -> PipelineConfig:
    """The photometry demo run once into S3, through the relay: every item done."""
    config = _config(photometry_demo, OUT, relay.options(s3_options))
    summary = Pipeline(config).run(client=local_client)
    assert summary.n_done == 3
    return config


def _items_table(storage_options: dict[str, Any]) -> pd.DataFrame:
    """The items table the last run wrote (a combiner writes the one it is given)."""
    with fsspec.open(f"{OUT}/items.parquet", "rb", **storage_options) as f:
        return pd.read_parquet(f)


def _item_logs(storage_options: dict[str, Any]) -> str:
    fs, path = fsspec.core.url_to_fs(f"{OUT}/logs", **storage_options)
    return "".join(fs.cat_file(name).decode() for name in fs.find(path) if name.endswith(".log"))


def test_an_outage_fails_no_item_already_done(
    s3_batch: PipelineConfig,
    relay: Endpoint,
    photometry_reference: Path,
    local_client: Client,
    s3_options: dict[str, Any],
) -> None:
    # the endpoint goes away as the first worker asks whether its item is done, for longer
    # than the client's own attempts last
    outages = relay.outages
    relay.down_at(COMMIT_READ, seconds=3.0)
    summary = Pipeline(s3_batch).run(client=local_client)
    assert relay.outages == outages + 1

    assert summary.items.set_index("item_id")["status"].to_dict() == {
        f"experiment_00{i}": "skipped" for i in (1, 2, 3)
    }
    assert_same_results(OUT, photometry_reference, rerun=True, **s3_options)
    assert "trying again" in _item_logs(s3_options)  # the engine's retries rode it out
    states = item_states(OUT, storage_options=s3_options)
    assert (states["status"] == "done").all(), states


def test_combined_outputs_are_never_built_without_an_item_that_cannot_be_read(
    s3_batch: PipelineConfig,
    relay: Endpoint,
    photometry_reference: Path,
    local_client: Client,
    s3_options: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    layout = OutputLayout(OUT, s3_batch.output.storage_options)
    items = ["experiment_001", "experiment_002", "experiment_003"]
    records = read_records(layout, items, ["trials"])
    outcomes = [
        ItemOutcome(item, item, status="skipped", records={"trials": records[(item, "trials")]})
        for item in items
    ]
    table = _items_table(s3_options)
    monkeypatch.setattr(files, "RETRY_SECONDS", 1.0)

    # the endpoint goes away as the driver reads the trials of an item done earlier, for
    # longer than the retries last: the combined outputs fail, loudly, as a whole
    relay.down_at(rb"GET \S*/items/experiment_002/trials/")
    combiner = Combiner(layout, items, "run-during-outage", "trials")
    with pytest.raises(StorageError) as caught:
        for outcome in outcomes:
            combiner.add(outcome)
        combiner.finish(table, s3_batch.output.formats)
    message = str(caught.value)
    assert message.startswith(f"cannot reach the storage reading {OUT}/items/experiment_002/")
    assert "\n" not in message

    # the outputs in place are the last complete run's: every item's rows are there
    relay.up()
    assert_same_results(OUT, photometry_reference, rerun=True, **s3_options)

    # once the storage is back, a re-run finishes with nothing lost and nothing staged left
    summary = Pipeline(s3_batch).run(client=local_client)
    assert summary.n_skipped == 3
    assert_same_results(OUT, photometry_reference, rerun=True, **s3_options)
    fs, staging = fsspec.core.url_to_fs(layout.staging(), **s3_options)
    assert not fs.find(staging)


def _leftovers(out: Path) -> list[str]:
    """Files a write left behind: temporaries, partial chunks, staged outputs."""
    found = []
    for folder, _, names in os.walk(out):
        for name in names:
            path = Path(folder) / name
            if name.endswith((".tmp", ".partial", ".old")) or ".staging" in path.parts:
                found.append(str(path.relative_to(out)))
    return sorted(found)


def test_a_full_disk_is_one_line_leaves_nothing_partial_and_loses_nothing(
    photometry_demo: Path,
    photometry_reference: Path,
    local_client: Client,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with small_disk(tmp_path / "disk", "4m") as disk:
        out = disk / "out"
        config = _config(photometry_demo, str(out))
        Pipeline(config).run(client=local_client)

        # the disk keeps 128 KiB free: the items are done, the combined outputs do not fit
        resize(disk, f"{(used_bytes(disk) + 2**17) // 2**10}k")
        document = yaml.safe_load(photometry_demo.read_text())
        document["input"]["url"] = str(photometry_demo.parent / "data")
        document["output"] |= {"url": str(out), "dashboards": None}
        path = tmp_path / "pipeline.yaml"
        path.write_text(yaml.safe_dump(document))
        assert main(["run", str(path)]) == 4  # the storage's own exit status
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 1, lines
        message = lines[0].removeprefix("neurobatch run: error: ")
        assert message.startswith(f"no space left on device writing {out}/")
        assert message.endswith("; free space or choose another output.url")

        assert _leftovers(out) == []
        for table in out.rglob("*.parquet"):
            pq.read_table(table)  # whole, never truncated
        assert (out / "logs" / "run.log").stat().st_size > 0
        # the combined outputs in place are the last complete run's
        assert_same_results(out, photometry_reference)

        resize(disk, "64m")  # more room: the re-run finishes with nothing lost
        summary = Pipeline(config).run(client=local_client)
        assert summary.n_failed == 0
        assert_same_results(out, photometry_reference, rerun=True)
        assert _leftovers(out) == []


def _trials(item: str, n: int, k: int) -> xr.Dataset:
    """An item's trials; ``k`` in the attributes makes each item a batch (an append) of its own."""
    return xr.Dataset(
        {"dff": (("trial", "rel_time"), np.full((n, 3), float(k)))},
        coords={"rel_time": [-0.1, 0.0, 0.1], "item_id": ("trial", [item] * n)},
        attrs={"processed_variable": "dff", "k": k},
    )


def test_an_append_whose_answer_was_lost_is_not_made_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = OutputLayout(str(tmp_path / "out"))
    items = ["a", "b", "c"]
    real, appends = trials_store.append_trials, 0

    def answer_lost_once(*args: Any, **kwargs: Any) -> int:
        nonlocal appends
        appends += 1
        stored = real(*args, **kwargs)
        if appends == 2:  # the second append landed, but its answer never came back
            raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
        return stored

    monkeypatch.setattr(trials_store, "append_trials", answer_lost_once)
    combiner = Combiner(layout, items, "run", "trials")
    for k, item in enumerate(items):
        outcome = ItemOutcome(item, item, status="done", records={"trials": {"n_trials": k + 2}})
        outcome.trials = _trials(item, k + 2, k)
        combiner.add(outcome)
    combiner.finish(pd.DataFrame({"item_id": items}), ["zarr"])
    assert appends == 3  # the retry found the second append there
    back = trials_store.open_trials(layout.combined("trials.zarr"))
    assert back["item_id"].values.tolist() == ["a"] * 2 + ["b"] * 3 + ["c"] * 4


def test_committed_trials_that_vanished_fail_the_combined_outputs(
    photometry_reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    shutil.copytree(photometry_reference, out)
    before = trials_store.open_trials(str(out / "trials.zarr")).load()
    layout = OutputLayout(str(out))
    items = ["experiment_001", "experiment_002", "experiment_003"]
    records = read_records(layout, items, ["trials"])
    shutil.rmtree(out / "items" / "experiment_002" / "trials")  # after its commit was read
    combiner = Combiner(layout, items, "run", "trials")
    with pytest.raises(StorageError) as caught:
        for item in items:
            records_of = {"trials": records[(item, "trials")]}
            combiner.add(ItemOutcome(item, item, status="skipped", records=records_of))
    assert str(caught.value).startswith(
        f"the committed trials of experiment_002 are gone from {out}/items/experiment_002/trials"
    )
    assert not (out / ".staging" / "run").exists()  # what it staged is discarded
    xr.testing.assert_identical(trials_store.open_trials(str(out / "trials.zarr")), before)
