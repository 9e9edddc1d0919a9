"""``neurobatch run FILE --download-only``: every input fetched into ``input.cache``, verified,
and nothing processed.

The inputs are discovered as for a run, then fetched by a few threads (downloading waits on
the network, not on the CPU) with :func:`neurobatch.io.cache.fetch_input`: a copy already
current reads nothing, a download killed earlier resumes, a copy that does not verify fails
its input and the others go on. Nothing is written under the output folder: the cache has
its own per-file locks, so a run or another download may use it at the same time.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import pandas as pd
from dask.utils import format_bytes

from neurobatch.config import PipelineConfig
from neurobatch.engine.logs import one_line
from neurobatch.errors import ConfigError, NeurobatchError
from neurobatch.io.cache import fetch_input, is_remote
from neurobatch.io.discover import discover_config
from neurobatch.redact import scrub, secrets_in

__all__ = ["DOWNLOAD_THREADS", "Download", "DownloadSummary", "download_inputs"]

logger = logging.getLogger(__name__)

DOWNLOAD_THREADS = 4
"""Inputs fetched at the same time."""


@dataclass(frozen=True)
class Download:
    """What happened to one input.

    Attributes
    ----------
    url : str
        The remote input.
    status : {"fetched", "cached", "failed"}
        Downloaded now (wholly or the rest of a killed download), already current, or not.
    bytes : int
        Bytes downloaded now.
    error : str or None
        The failure, in one line.
    """

    url: str
    status: Literal["fetched", "cached", "failed"]
    bytes: int = 0
    error: str | None = None

    def line(self) -> str:
        """One line for the terminal.

        Examples
        --------
        >>> Download("s3://lab/a.csv", "fetched", 3 * 2**20).line()
        'fetched  s3://lab/a.csv (3.00 MiB)'
        """
        if self.status == "failed":
            return f"failed   {self.url}: {self.error}"
        size = f" ({format_bytes(self.bytes)})" if self.status == "fetched" else ""
        return f"{self.status:<8} {self.url}{size}"


@dataclass
class DownloadSummary:
    """Every input's :class:`Download`, and the cache they went to."""

    cache: str
    inputs: list[Download] = field(default_factory=list)
    local: bool = False
    """Whether the inputs are local, read in place: nothing to download."""

    def count(self, status: str) -> int:
        """Inputs with this status."""
        return sum(d.status == status for d in self.inputs)

    @property
    def n_failed(self) -> int:
        """Inputs that could not be fetched or did not verify."""
        return self.count("failed")

    def __str__(self) -> str:
        if self.local:
            return (
                f"the inputs are local: they are read in place; nothing to download to {self.cache}"
            )
        fetched = sum(d.bytes for d in self.inputs)
        return (
            f"{len(self.inputs)} input(s) in {self.cache}: {self.count('fetched')} fetched "
            f"({format_bytes(fetched)}), {self.count('cached')} already cached, "
            f"{self.n_failed} failed"
        )


def _fetch_one(url: str, rows: list[dict[Any, Any]], config: PipelineConfig) -> Download:
    """An input with every distinct loader arguments of its items (their sidecars)."""
    source = config.source(str(rows[0].get("source") or ""))
    assert source.cache is not None
    fetched = 0
    try:
        for row in rows:
            copy = fetch_input(
                url,
                source.cache,
                fingerprint=str(row["fingerprint"]),
                target=source.target,
                loader_arguments=row["loader_arguments"],
                storage_options=source.storage_options,
            )
            fetched += 0 if copy is None else copy.bytes
    except (NeurobatchError, OSError) as error:  # one input's failure never stops the others
        logger.debug("fetching %s failed", url, exc_info=True)
        return Download(url, "failed", fetched, one_line(error))
    return Download(url, "fetched" if fetched else "cached", fetched)


def download_inputs(
    config: PipelineConfig,
    *,
    manifest: pd.DataFrame | None = None,
    threads: int = DOWNLOAD_THREADS,
    echo: Callable[[str], None] | None = None,
) -> DownloadSummary:
    """Fetch and verify every input of a pipeline into its ``input.cache``; process nothing.

    Parameters
    ----------
    config : PipelineConfig
        The pipeline; ``input.cache`` must be set (of one source at least: the inputs of
        the others are read where they are).
    manifest : pandas.DataFrame, optional
        Its manifest; discovered when not given.
    threads : int, default :data:`DOWNLOAD_THREADS`
        Inputs fetched at the same time.
    echo : callable, optional
        Called with each input's line (:meth:`Download.line`) as it finishes.

    Returns
    -------
    DownloadSummary
        One :class:`Download` per input, in the manifest's order.

    Raises
    ------
    neurobatch.errors.ConfigError
        If no source has an ``input.cache``.
    neurobatch.errors.InputError
        If discovery fails (see :func:`neurobatch.io.discover.discover`).

    Examples
    --------
    >>> import fsspec, tempfile
    >>> fsspec.filesystem("memory").pipe("/download-doc/a.csv", b"time,signal\\n0,1\\n")
    >>> config = PipelineConfig.model_validate({
    ...     "name": "demo", "input": {"url": "memory://download-doc", "cache": tempfile.mkdtemp()},
    ...     "loader": {"format": "photometry-csv"}, "output": {"url": "out"}})
    >>> summary = download_inputs(config, echo=print)  # doctest: +ELLIPSIS
    fetched  memory://download-doc/a.csv (16 B)
    >>> print(summary)  # doctest: +ELLIPSIS
    1 input(s) in ...: 1 fetched (16 B), 0 already cached, 0 failed
    """
    caches = [s for s in config.sources if s.cache is not None]
    if not caches:
        raise ConfigError(
            "--download-only needs input.cache: set it to a local folder in the pipeline "
            "file's input section"
        )
    summary = DownloadSummary(", ".join(dict.fromkeys(str(s.cache) for s in caches)))
    remote = {s.name for s in caches if is_remote(s.url)}
    if not remote:
        summary.local = True
        return summary
    if manifest is None:
        manifest = discover_config(config)
    secrets = secrets_in(config.model_dump())
    by_url: dict[str, list[dict[Any, Any]]] = {}
    for row in manifest.to_dict("records"):
        if str(row.get("source") or "") not in remote:
            continue  # a source without a cache, or local: read where it is
        rows = by_url.setdefault(str(row["url"]), [])
        arguments = json.dumps(row["loader_arguments"], sort_keys=True, default=str)
        known = (json.dumps(r["loader_arguments"], sort_keys=True, default=str) for r in rows)
        if arguments not in known:
            rows.append(row)

    def one(url: str) -> Download:
        done = _fetch_one(url, by_url[url], config)
        done = Download(
            scrub(done.url, secrets),
            done.status,
            done.bytes,
            done.error and scrub(done.error, secrets),
        )
        if echo is not None:
            echo(done.line())
        return done

    with ThreadPoolExecutor(max(1, min(threads, len(by_url))), "neurobatch-download") as pool:
        summary.inputs = list(pool.map(one, by_url))
    return summary
