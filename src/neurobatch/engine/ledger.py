"""Which stages of an item are done: parameter hashes chained through the stages.

An item's stage is done when its output's commit marker carries the stage's *key*: a hash
of the input's fingerprint, the stage's parameters, the key of the stage before it and the
neurobatch version. Changing trial settings changes only the trials key, so the
preprocessed signal is reused; changing the filter changes the preprocess key and with it
the trials key.

What an output folder holds, for ``neurobatch status``: the run writes its manifest to
``OUT/manifest.parquet`` before it submits anything; each item stage's output under
``OUT/items/<item>/`` is done once its commit marker exists, and an item whose last run
failed has ``OUT/items/<item>/.neurobatch-failed.json`` naming the stage and the error.
"""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from collections.abc import Mapping, Sequence
from importlib.metadata import version
from typing import Any

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from neurobatch.errors import InputError, InputNotFoundError
from neurobatch.io.store import COMMIT_MARKER

__all__ = [
    "FAILURE_MARKER",
    "ITEM_OUTPUTS",
    "KIND_STAGES",
    "MANIFEST",
    "STATES",
    "counts",
    "item_states",
    "read_manifest",
    "stage_key",
    "write_manifest",
]

#: Where each item stage's output lies, relative to the item's folder ``OUT/items/<item>``.
ITEM_OUTPUTS = {
    "ingest": "recording.zarr",
    "preprocess": "preprocessed.zarr",
    "trials": "trials.zarr",
    "filter": "filtered.zarr",
    "sta": "sta.zarr",
}

#: The stages of an item, in order, for each kind of pipeline (photometry without a
#: ``trials`` section stops after preprocess).
KIND_STAGES = {
    "photometry": ("ingest", "preprocess", "trials"),
    "filter": ("ingest", "filter"),
    "sta": ("ingest", "sta"),
}

#: The run's manifest, relative to the output folder.
MANIFEST = "manifest.parquet"

#: Beside an item's outputs while its last run failed: ``{"stage", "error", "run", "time"}``.
FAILURE_MARKER = ".neurobatch-failed.json"

#: The states of an item stage (and of an item).
STATES = ("done", "failed", "pending")

_MANIFEST_COLUMNS = ("item_id", "url", "fingerprint", "format")
_METADATA_KEY = b"neurobatch"


def stage_key(stage: str, parameters: Mapping[str, Any], *, upstream: str) -> str:
    """The key a stage's committed output must carry to count as done.

    Parameters
    ----------
    stage : str
        The stage's name.
    parameters : mapping
        Everything the stage's result depends on besides its input (JSON-serialisable).
    upstream : str
        The key of the stage's input: the input's fingerprint for the first stage, the
        previous stage's key after that.

    Returns
    -------
    str
        A 16-hex-digit hash.

    Examples
    --------
    >>> a = stage_key("trials", {"bounds_s": [-8, 8]}, upstream="abc")
    >>> a == stage_key("trials", {"bounds_s": [-8, 8]}, upstream="abc")
    True
    >>> a == stage_key("trials", {"bounds_s": [-5, 5]}, upstream="abc")
    False
    """
    payload = json.dumps(
        {
            "stage": stage,
            "parameters": parameters,
            "upstream": upstream,
            "neurobatch": version("neurobatch"),
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


# --- the manifest and the state of each item -------------------------------------------------


def _manifest_url(out_url: str) -> str:
    return f"{out_url.rstrip('/')}/{MANIFEST}"


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
        The stages of each item, in order (keys of :data:`ITEM_OUTPUTS`).
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
    ...                stages=KIND_STAGES["filter"])
    'memory://doc-manifest/out/manifest.parquet'
    >>> read_manifest("memory://doc-manifest/out").attrs
    {'kind': 'filter', 'stages': ['ingest', 'filter']}
    """
    unknown = sorted(set(stages) - set(ITEM_OUTPUTS))
    if unknown:
        raise ValueError(
            f"stages: unknown {', '.join(unknown)}; expected some of {', '.join(ITEM_OUTPUTS)}"
        )
    table = pa.Table.from_pandas(
        manifest[list(_MANIFEST_COLUMNS)].astype(str), preserve_index=False
    )
    ours = json.dumps({"kind": kind, "stages": list(stages)}).encode()
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), _METADATA_KEY: ours})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    url = _manifest_url(out_url)
    fs, path = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    if isinstance(fs, LocalFileSystem):
        aside = f"{path}.{uuid.uuid4().hex}.tmp"
        fs.pipe_file(aside, buffer.getvalue())
        fs.mv(aside, path)
    else:
        fs.pipe_file(path, buffer.getvalue())
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
        with fs.open(path, "rb") as f:
            table = pq.read_table(f)
    except FileNotFoundError:
        raise InputNotFoundError(
            f"{out_url} is not a neurobatch output folder: no {MANIFEST}; "
            "expected the output.url of a run"
        ) from None
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


def _read_all(fs: Any, paths: list[str]) -> dict[str, dict[str, Any]]:
    """The JSON objects at ``paths`` that exist, read in one batch.

    A byte-range read from 0 is one GET per path, concurrent on object stores; a plain
    ``cat`` would first ask each object's size (a HEAD, and a listing when it is missing).
    """
    if not paths:
        return {}
    found: dict[str, dict[str, Any]] = {}
    contents = fs.cat_ranges(paths, 0, None, on_error="return")
    for path, content in zip(paths, contents, strict=True):
        if isinstance(content, FileNotFoundError):
            continue
        if isinstance(content, BaseException):
            raise OSError(f"cannot read {path}: {' '.join(str(content).split())}") from content
        try:
            value = json.loads(content)
        except (ValueError, UnicodeDecodeError):
            continue  # a marker that is not JSON counts as absent, as in read_commit
        if isinstance(value, dict):
            found[path] = value
    return found


def item_states(out_url: str, storage_options: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """The state of every stage of every item of an output folder: done, failed or pending.

    A stage is ``done`` when its output under ``OUT/items/<item>/`` carries a commit marker,
    ``failed`` when the item's failure marker names it (unless a later run committed it),
    and ``pending`` otherwise. Whether a done stage is stale (committed with other settings
    than the pipeline file's now) is not judged: the next run decides that from the keys.

    Reading is cheap for thousands of items: one listing of ``OUT/items`` (items without a
    folder are pending without further requests), then one GET per marker of the others,
    all in one batch (concurrent on object stores). The stores' own keys are never listed:
    a recursive listing would grow with the data (every chunk of every store), this grows
    only with the number of items and stages.

    Parameters
    ----------
    out_url : str
        The output folder of a run (any fsspec URL).
    storage_options : mapping, optional
        Options for the fsspec filesystem.

    Returns
    -------
    pandas.DataFrame
        One row per item of ``OUT/manifest.parquet``, in its order: ``item_id``, one
        column per stage (``attrs["stages"]``) holding ``done``, ``failed`` or
        ``pending``, ``status`` (the item's: ``failed`` if its last run failed, ``done``
        if every stage is, else ``pending``), ``error`` (the one-line reason of a failure,
        else None) and ``url``.

    Raises
    ------
    neurobatch.errors.InputNotFoundError
        If the folder has no ``manifest.parquet``.

    See Also
    --------
    counts : How many items are in each state.

    Examples
    --------
    >>> from neurobatch.io import store
    >>> out = "memory://doc-states/out"
    >>> items = pd.DataFrame({"item_id": ["a", "b", "c"], "url": ["a.bin", "b.bin", "c.bin"],
    ...                       "fingerprint": ["1", "2", "3"], "format": ["spikeglx"] * 3})
    >>> _ = write_manifest(items, out, kind="filter", stages=KIND_STAGES["filter"])
    >>> for stage in ("ingest", "filter"):
    ...     store.commit(f"{out}/items/a/{ITEM_OUTPUTS[stage]}", {"key": "k", "run": "1"})
    >>> store.commit(f"{out}/items/b/recording.zarr", {"key": "k", "run": "1"})
    >>> with fsspec.open(f"{out}/items/b/{FAILURE_MARKER}", "w") as f:
    ...     _ = f.write('{"stage": "filter", "error": "out of memory", "run": "2"}')
    >>> states = item_states(out)
    >>> states[["item_id", "ingest", "filter", "status", "error"]]
      item_id   ingest   filter   status          error
    0       a     done     done     done           None
    1       b     done   failed   failed  out of memory
    2       c  pending  pending  pending           None
    >>> counts(states)
    {'done': 1, 'failed': 1, 'pending': 1}
    """
    manifest = read_manifest(out_url, storage_options=storage_options)
    stages = list(manifest.attrs["stages"])
    fs, root = fsspec.core.url_to_fs(out_url, **dict(storage_options or {}))
    items_root = f"{root.rstrip('/')}/items"
    fs.invalidate_cache(items_root)
    try:
        listed = fs.ls(items_root, detail=False)
    except FileNotFoundError:
        listed = []
    present = {str(p).rstrip("/").rsplit("/", 1)[-1] for p in listed}

    def marker(item: str, name: str) -> str:
        return str(fs._strip_protocol(f"{items_root}/{item}/{name}"))

    paths = [
        marker(item, name)
        for item in manifest["item_id"]
        if item in present
        for name in (*(f"{ITEM_OUTPUTS[s]}/{COMMIT_MARKER}" for s in stages), FAILURE_MARKER)
    ]
    found = _read_all(fs, paths)
    rows = []
    for item, url in zip(manifest["item_id"], manifest["url"], strict=True):
        commits = {s: found.get(marker(item, f"{ITEM_OUTPUTS[s]}/{COMMIT_MARKER}")) for s in stages}
        row: dict[str, Any] = {"item_id": item}
        row |= {s: "pending" if commits[s] is None else "done" for s in stages}
        failure = found.get(marker(item, FAILURE_MARKER))
        error = None
        if failure is not None:
            error = " ".join(str(failure.get("error") or "").split()) or "failed (no reason given)"
            stage = str(failure.get("stage"))
            if stage in commits and not _committed_since(commits[stage], failure):
                row[stage] = "failed"
            status = "failed"
        else:
            status = "done" if all(row[s] == "done" for s in stages) else "pending"
        row |= {"status": status, "error": error, "url": url}
        rows.append(row)
    states_table = pd.DataFrame(rows, columns=["item_id", *stages, "status", "error", "url"])
    states_table.attrs = dict(manifest.attrs)
    return states_table


def counts(states: pd.DataFrame) -> dict[str, int]:
    """How many items are done, failed and pending.

    Parameters
    ----------
    states : pandas.DataFrame
        From :func:`item_states`.

    Returns
    -------
    dict of str to int
        ``{"done": ..., "failed": ..., "pending": ...}``.

    Examples
    --------
    >>> counts(pd.DataFrame({"status": ["done", "done", "pending"]}))
    {'done': 2, 'failed': 0, 'pending': 1}
    """
    return {state: int((states["status"] == state).sum()) for state in STATES}
