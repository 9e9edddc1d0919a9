"""The Acme lab's rig CSV as a neurobatch loader format, ``acme-csv``: a worked example.

The lab's rig writes one semicolon-separated file per session, with a preamble of
``# key: value`` lines, times in milliseconds and one TTL column of integer codes::

    # rig: acme-fp2
    # subject: m17
    timestamp_ms;F470;F405;TTL
    0;1.021;0.512;0
    10;1.034;0.509;3
    ...

This module is all the lab writes. Its ``pyproject.toml`` declares the format::

    [project.entry-points."neurobatch.loaders"]
    acme-csv = "acme_photometry:loader"

and once the package is installed (``pip install ./acme-photometry``, beside neurobatch, on
every machine that runs workers), a pipeline file reads the rig's files with::

    loader:
      format: acme-csv
      ttl_codes: {trial_cue: 1, lever: 2}
      annotation: "{stem}.json"       # every argument of LoaderArguments works

``neurobatch validate`` checks the arguments (an unknown one names the closest), the events
the trials section uses, and every input's header (:func:`check`); ``neurobatch run`` loads
each input with :func:`load` on the workers. The Recording is built by
:func:`neurobatch.io.loaders.build_recording`, as the built-in photometry loaders build
theirs: checks (NaN, time not increasing, gaps), downsampling, sidecar metadata and events.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import IO, Any

import fsspec
import numpy as np
import pandas as pd
import xarray as xr
from pydantic import Field

from neurobatch.errors import InputError
from neurobatch.io.loaders import (
    HEADER_BLOCK_BYTES,
    LoaderArguments,
    LoaderPlugin,
    build_recording,
    check_columns,
    load_annotation,
)

FORMAT = "acme-csv"


class AcmeArguments(LoaderArguments):
    """Arguments of ``acme-csv``: the rig's column names and its TTL codes."""

    time_col: str = Field("timestamp_ms", description="Column of sample times, in ms.")
    signal_col: str = Field("F470", description="Column of the 470 nm channel.")
    isosbestic_col: str | None = Field(
        "F405", description="Column of the 405 nm channel; null = single-channel."
    )
    ttl_col: str = Field("TTL", description="Column of the TTL codes.")
    ttl_codes: dict[str, int] = Field(
        default_factory=dict,
        description="Event name -> TTL code: an event wherever the TTL column turns to it.",
    )

    def event_names(self) -> list[str]:
        """The events this loader provides: the keys of ``ttl_codes``."""
        return list(self.ttl_codes)

    def named_columns(self) -> dict[str, str | None]:
        """The column each argument names (None: not read)."""
        return {
            "time_col": self.time_col,
            "signal_col": self.signal_col,
            "isosbestic_col": self.isosbestic_col,
            "ttl_col": self.ttl_col,
        }


def _header(f: IO[bytes], url: str) -> tuple[dict[str, str], list[str]]:
    """The preamble's ``key: value`` pairs and the column names; ``f`` is left at the data."""
    preamble: dict[str, str] = {}
    for raw in iter(f.readline, b""):
        line = raw.decode("utf-8").strip()
        if line.startswith("#"):
            key, _, value = line[1:].partition(":")
            preamble[key.strip()] = value.strip()
        elif line:
            return preamble, line.split(";")
    raise InputError(f"{url!r} has no header line; expected an Acme rig CSV")


def check(
    url: str, arguments: AcmeArguments, *, storage_options: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Check the columns the arguments name against the file's header (validate's check).

    Only the preamble and the header line are read: in blocks of 64 KiB, not an object
    store's default read-ahead of MiBs.
    """
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    with fs.open(path, "rb", block_size=HEADER_BLOCK_BYTES) as f:
        _, columns = _header(f, url)
    check_columns(columns, arguments.named_columns(), source=url)
    return {"format": FORMAT, "columns": columns}


def load(
    url: str, arguments: AcmeArguments, *, storage_options: Mapping[str, Any] | None = None
) -> xr.Dataset:
    """Load one Acme rig CSV into a Recording Dataset."""
    named = arguments.named_columns()
    wanted = [column for column in named.values() if column is not None]
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    with fs.open(path, "rb") as f:
        preamble, columns = _header(f, url)
        check_columns(columns, named, source=url)  # a misspelled column: one line
        table = pd.read_csv(f, sep=";", names=columns, usecols=wanted, float_precision="round_trip")
    time = table[arguments.time_col].to_numpy(np.float64) / 1000.0
    ttl = table[arguments.ttl_col].to_numpy()
    before = np.concatenate([[ttl[0] - 1], ttl[:-1]])
    events = {
        name: time[(ttl == code) & (before != code)] for name, code in arguments.ttl_codes.items()
    }
    isosbestic = None
    if arguments.isosbestic_col is not None:
        isosbestic = table[arguments.isosbestic_col].to_numpy(np.float64)
    metadata, sidecar_url = load_annotation(
        url,
        arguments,
        target="file",
        key=arguments.annotation_key,
        storage_options=storage_options,
    )
    return build_recording(
        source=url,
        time=time,
        signal=table[arguments.signal_col].to_numpy(np.float64),
        isosbestic=isosbestic,
        events=events,
        arguments=arguments,
        names={
            "time": f"column {arguments.time_col!r}",
            "signal": f"column {arguments.signal_col!r}",
            "isosbestic": f"column {arguments.isosbestic_col!r}",
        },
        attrs=preamble,
        sidecar=metadata,
        sidecar_source=sidecar_url,
        locate=lambda i: f"data row {i + 1}",
    )


#: What the entry point names.
loader = LoaderPlugin(arguments=AcmeArguments, load=load, check=check)
