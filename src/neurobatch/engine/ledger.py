"""What an output folder holds: its manifest, and the state of each stage of each item.

A run writes its manifest to ``OUT/manifest.parquet`` (with its kind and the names of its
stages) before it submits anything. Each stage's output under ``OUT/items/<item>/<stage>``
is done once its commit record exists (:mod:`neurobatch.engine.layout`); an item whose
last run failed has ``OUT/items/<item>/.neurobatch-failed.json`` naming the stage and the
error. Given the keys a pipeline file expects now (:func:`neurobatch.engine.item.expected_keys`),
a done stage whose key differs is ``stale``, with the reason.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from neurobatch.engine.layout import FAILURE_MARKER, MANIFEST, OutputLayout
from neurobatch.engine.stages import stale_reason
from neurobatch.errors import InputError, InputNotFoundError
from neurobatch.io import files
from neurobatch.io.commit import COMMIT_MARKER

__all__ = [
    "STATES",
    "counts",
    "item_states",
    "read_manifest",
    "read_records",
    "write_manifest",
]

#: The states of an item stage (and of an item).
STATES = ("done", "stale", "failed", "pending")

_MANIFEST_COLUMNS = ("item_id", "url", "fingerprint", "format")
_METADATA_KEY = b"neurobatch"


# --- the manifest and the state of each item -------------------------------------------------


def _manifest_url(out_url: str) -> str:
    return OutputLayout(out_url).manifest


def write_manifest(
    manifest: pd.DataFrame,
    out_url: str,
    *,
    kind: str,
    stages: Sequence[str],
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """Write a run's manifest to ``OUT/manifest.parquet``, with its pipeline kind and stages.

    The file is replaced whole: on a local disk written aside and moved into place, on an
    object store by one PUT, so a reader never sees half of it.

    Parameters
    ----------
    manifest : pandas.DataFrame
        The discovered items; the columns ``item_id``, ``url``, ``fingerprint`` and
        ``format`` are kept.
    out_url : str
        The output folder (any fsspec URL).
    kind : str
        The pipeline's kind (``photometry``, ``filter``, ``sta``).
    stages : sequence of str
        The names of each item's stages, in order.
    storage_options : mapping, optional
        Options for the fsspec filesystem.

    Returns
    -------
    str
        The manifest's URL.

    Examples
    --------
    >>> items = pd.DataFrame({"item_id": ["a"], "url": ["/data/a.bin"],
    ...                       "fingerprint": ["f1"], "format": ["spikeglx"]})
    >>> write_manifest(items, "memory://doc-manifest/out", kind="filter",
    ...                stages=["ingest", "filter"])
    'memory://doc-manifest/out/manifest.parquet'
    >>> read_manifest("memory://doc-manifest/out").attrs
    {'kind': 'filter', 'stages': ['ingest', 'filter']}
    """
    table = pa.Table.from_pandas(
        manifest[list(_MANIFEST_COLUMNS)].astype(str), preserve_index=False
    )
    ours = json.dumps({"kind": kind, "stages": list(stages)}).encode()
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), _METADATA_KEY: ours})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    url = _manifest_url(out_url)
    files.write_bytes(url, buffer.getvalue(), storage_options=storage_options)
    return url


def read_manifest(
    out_url: str, *, storage_options: Mapping[str, Any] | None = None
) -> pd.DataFrame:
    """The manifest of the last run that wrote to an output folder.

    Parameters
    ----------
    out_url : str
        The output folder (any fsspec URL).
    storage_options : mapping, optional
        Options for the fsspec filesystem.

    Returns
    -------
    pandas.DataFrame
        Columns ``item_id``, ``url``, ``fingerprint``, ``format``; ``attrs`` holds the
        pipeline's ``kind`` and its item ``stages``.

    Raises
    ------
    neurobatch.errors.InputNotFoundError
        If the folder has no ``manifest.parquet``.
    neurobatch.errors.InputError
        If it is not a manifest written by :func:`write_manifest`.
    neurobatch.errors.StorageError
        If it cannot be read (transient errors are retried first).

    Examples
    --------
    >>> read_manifest("memory://doc-manifest/nowhere")
    Traceback (most recent call last):
    ...
    neurobatch.errors.InputNotFoundError: memory://doc-manifest/nowhere is not a neurobatch \
output folder: no manifest.parquet; expected the output.url of a run
    """
    url = _manifest_url(out_url)
    fs, path = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    try:
        with files.translated(url, action="reading"):
            content = files.retried(lambda: fs.cat_file(path), url=url, action="reading")
    except FileNotFoundError:
        raise InputNotFoundError(
            f"{out_url} is not a neurobatch output folder: no {MANIFEST}; "
            "expected the output.url of a run"
        ) from None
    try:
        table = pq.read_table(pa.BufferReader(content))
    except (pa.ArrowInvalid, OSError) as error:
        raise InputError(
            f"{url}: not readable as Parquet ({' '.join(str(error).split())}); "
            "expected the manifest written by a neurobatch run"
        ) from None
    ours = (table.schema.metadata or {}).get(_METADATA_KEY)
    missing = sorted(set(_MANIFEST_COLUMNS) - set(table.column_names))
    if ours is None or missing:
        raise InputError(
            f"{url}: no neurobatch metadata or missing column(s) {', '.join(missing) or '-'}; "
            f"expected the manifest written by a neurobatch run"
        )
    manifest = table.to_pandas()[list(_MANIFEST_COLUMNS)]
    manifest.attrs = json.loads(ours)
    return manifest


def _run_order(run: Any) -> int:
    """A run id (hex nanoseconds) as a number that grows with time; -1 when unknown."""
    try:
        return int(str(run), 16)
    except ValueError:
        return -1


def _committed_since(commit: dict[str, Any] | None, failure: Mapping[str, Any]) -> bool:
    """Whether a stage's commit was written by the failing run or a later one."""
    if commit is None:
        return False
    failed_in = _run_order(failure.get("run"))
    return failed_in >= 0 and _run_order(commit.get("run")) >= failed_in


def _read_all(fs: Any, paths: list[str], where: str) -> dict[str, dict[str, Any]]:
    """The JSON objects at ``paths`` that exist, read in one batch.

    A byte-range read from 0 is one GET per path, concurrent on object stores; a plain
    ``cat`` would first ask each object's size (a HEAD, and a listing when it is missing).
    Paths whose read met a transient error are read again (:func:`~neurobatch.io.files.retried`);
    a read that keeps failing raises :class:`~neurobatch.errors.StorageError` (naming
    ``where``, or the path), never "absent".
    """
    found: dict[str, dict[str, Any]] = {}
    pending = list(paths)

    def read_pending() -> None:
        contents = fs.cat_ranges(pending, 0, None, on_error="return") if pending else []
        failed: list[tuple[str, BaseException]] = []
        for path, content in zip(pending, contents, strict=True):
            if isinstance(content, FileNotFoundError):
                continue
            if isinstance(content, BaseException):
                if not files.is_transient(content):
                    raise files.storage_error(content, path, action="reading") from content
                failed.append((path, content))
                continue
            try:
                value = json.loads(content)
            except (ValueError, UnicodeDecodeError):
                continue  # a marker that is not JSON counts as absent, as in read_commit
            if isinstance(value, dict):
                found[path] = value
        pending[:] = [path for path, _ in failed]
        if failed:
            raise failed[0][1]

    with files.translated(where, action="reading"):
        files.retried(read_pending, url=where, action="reading")
    return found


def read_records(
    layout: OutputLayout,
    items: Sequence[str],
    stages: Sequence[str],
    *,
    failures: bool = False,
) -> dict[tuple[str, str], dict[str, Any]]:
    """The commit records of the given stages of the given items, read in one batch.

    Cheap for thousands of items: one listing of ``OUT/items`` (items without a folder
    have no record, and cost nothing more), then one GET per record of the others, all in
    one batch (concurrent on object stores). The stores' own keys are never listed. A
    transient error of the storage is retried: a record that cannot be read is never taken
    for one that does not exist.

    Parameters
    ----------
    layout : OutputLayout
        The output folder.
    items, stages : sequence of str
        Which records to read.
    failures : bool, default False
        Read each item's failure marker too, as the stage ``"failure"``.

    Returns
    -------
    dict of (item, stage) to dict
        The records that exist.

    Raises
    ------
    neurobatch.errors.StorageError
        If the folder or a record cannot be read (after the retries).
    """
    where = layout.path("items")
    fs, root = fsspec.core.url_to_fs(where, **dict(layout.storage_options))

    def listing() -> list[str]:
        fs.invalidate_cache(root)
        return list(fs.ls(root, detail=False))

    try:
        with files.translated(where, action="listing"):
            listed = files.retried(listing, url=where, action="listing")
    except FileNotFoundError:
        listed = []
    present = {str(p).rstrip("/").rsplit("/", 1)[-1] for p in listed}
    names = {stage: f"{stage}/{COMMIT_MARKER}" for stage in stages}
    if failures:
        names["failure"] = FAILURE_MARKER
    wanted = {
        str(fs._strip_protocol(f"{root}/{item}/{name}")): (item, stage)
        for item in items
        if item in present
        for stage, name in names.items()
    }
    found = _read_all(fs, list(wanted), where)
    return {wanted[path]: record for path, record in found.items()}


def item_states(
    out_url: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    expected: Mapping[str, Mapping[str, Mapping[str, str]]] | None = None,
) -> pd.DataFrame:
    """The state of every stage of every item of an output folder.

    A stage is ``done`` when its output under ``OUT/items/<item>/<stage>`` carries a commit
    record, ``stale`` when it does but ``expected`` gives it another key (the reason says
    what changed), ``failed`` when the item's failure marker names it (unless a later run
    committed it), and ``pending`` otherwise. Reading costs one listing and one batch of
    GETs (:func:`read_records`).

    Parameters
    ----------
    out_url : str
        The output folder of a run (any fsspec URL).
    storage_options : mapping, optional
        Options for the fsspec filesystem.
    expected : mapping, optional
        Item -> stage -> the key parts a pipeline file expects now
        (:func:`neurobatch.engine.item.expected_keys`); without it no stage is stale.

    Returns
    -------
    pandas.DataFrame
        One row per item of ``OUT/manifest.parquet``, in its order: ``item_id``, one
        column per stage (``attrs["stages"]``) holding its state, ``status`` (the item's:
        ``failed`` if its last run failed, ``done`` if every stage is, ``stale`` if every
        stage is done or stale, else ``pending``), ``error`` (the reason of a failure or of
        staleness, else None) and ``url``.

    Raises
    ------
    neurobatch.errors.InputNotFoundError
        If the folder has no ``manifest.parquet``.
    neurobatch.errors.StorageError
        If the manifest or a record cannot be read (after retrying transient errors): a
        state is never guessed from a failed read.

    See Also
    --------
    counts : How many items are in each state.

    Examples
    --------
    >>> from neurobatch.io.commit import commit
    >>> out = "memory://doc-states/out"
    >>> items = pd.DataFrame({"item_id": ["a", "b", "c"], "url": ["a.bin", "b.bin", "c.bin"],
    ...                       "fingerprint": ["1", "2", "3"], "format": ["spikeglx"] * 3})
    >>> _ = write_manifest(items, out, kind="filter", stages=["ingest", "filter"])
    >>> for stage in ("ingest", "filter"):
    ...     commit(f"{out}/items/a/{stage}", {"key": "k", "run": "1"})
    >>> commit(f"{out}/items/b/ingest", {"key": "k", "run": "1"})
    >>> with fsspec.open(f"{out}/items/b/{FAILURE_MARKER}", "w") as f:
    ...     _ = f.write('{"stage": "filter", "error": "out of memory", "run": "2"}')
    >>> states = item_states(out)
    >>> states[["item_id", "ingest", "filter", "status", "error"]]
      item_id   ingest   filter   status          error
    0       a     done     done     done           None
    1       b     done   failed   failed  out of memory
    2       c  pending  pending  pending           None
    >>> counts(states)
    {'done': 1, 'stale': 0, 'failed': 1, 'pending': 1}
    """
    manifest = read_manifest(out_url, storage_options=storage_options)
    stages = list(manifest.attrs["stages"])
    layout = OutputLayout(out_url, dict(storage_options or {}))
    found = read_records(layout, list(manifest["item_id"]), stages, failures=True)
    rows = []
    for item, url in zip(manifest["item_id"], manifest["url"], strict=True):
        commits = {s: found.get((item, s)) for s in stages}
        row: dict[str, Any] = {"item_id": item}
        row |= {s: "pending" if commits[s] is None else "done" for s in stages}
        reasons = []
        for stage, commit in commits.items():
            keys = (expected or {}).get(item, {}).get(stage)
            reason = None if commit is None or keys is None else stale_reason(commit, keys)
            if reason is not None:
                row[stage] = "stale"
                reasons.append(f"{stage}: {reason}")
        failure = found.get((item, "failure"))
        error = "; ".join(reasons) or None
        if failure is not None:
            error = " ".join(str(failure.get("error") or "").split()) or "failed (no reason given)"
            stage = str(failure.get("stage"))
            if stage in commits and not _committed_since(commits[stage], failure):
                row[stage] = "failed"
            status = "failed"
        elif all(row[s] == "done" for s in stages):
            status = "done"
        else:
            status = "stale" if all(row[s] in ("done", "stale") for s in stages) else "pending"
        row |= {"status": status, "error": error, "url": url}
        rows.append(row)
    states_table = pd.DataFrame(rows, columns=["item_id", *stages, "status", "error", "url"])
    states_table.attrs = dict(manifest.attrs)
    return states_table


def counts(states: pd.DataFrame) -> dict[str, int]:
    """How many items are done, stale, failed and pending.

    Parameters
    ----------
    states : pandas.DataFrame
        From :func:`item_states`.

    Returns
    -------
    dict of str to int
        ``{"done": ..., "stale": ..., "failed": ..., "pending": ...}``.

    Examples
    --------
    >>> counts(pd.DataFrame({"status": ["done", "done", "pending"]}))
    {'done': 2, 'stale': 0, 'failed': 0, 'pending': 1}
    """
    return {state: int((states["status"] == state).sum()) for state in STATES}
