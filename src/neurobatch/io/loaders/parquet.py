"""Photometry Parquet (format ``photometry-parquet``): PhoPro's CSV columns, in Parquet.

The same columns as :mod:`neurobatch.io.loaders.csv` (time, signal, optional isosbestic,
per-sample event flags as booleans or 0/1 numbers), read with ``pyarrow.parquet`` (only the
named columns) and turned into the Recording Dataset by the same code as the CSV loader.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import xarray as xr
from fsspec.implementations.local import LocalFileSystem

from neurobatch.config.arguments import PhotometryParquetArguments
from neurobatch.errors import InputError, InputNotFoundError
from neurobatch.io.loaders._common import coerce_arguments
from neurobatch.io.loaders._photometry import recording_from_table
from neurobatch.io.loaders._sniff import describe_bytes
from neurobatch.io.loaders.headers import HEADER_BLOCK_BYTES, check_columns, named_columns
from neurobatch.io.loaders.sidecar import load_annotation

logger = logging.getLogger(__name__)

__all__ = ["FORMAT", "check_photometry_parquet", "load_photometry_parquet"]

FORMAT = "photometry-parquet"

_MAGIC = b"PAR1"
_SNIFF_BYTES = 1 << 12


def _not_parquet(fs: Any, path: str, url: str, error: Exception) -> InputError:
    """A file pyarrow cannot open as Parquet, as one line: what it is instead."""
    try:
        size = int(fs.size(path))
        with fs.open(path, "rb") as f:
            head = f.read(_SNIFF_BYTES)
            f.seek(max(size - len(_MAGIC), 0))
            tail = f.read()
    except (OSError, ValueError) as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        return InputError(f"{url!r} cannot be read: {reason}; expected a readable Parquet file")
    if head.startswith(_MAGIC):
        found = "has no Parquet footer" if not tail.endswith(_MAGIC) else "cannot be read"
        reason = " ".join(str(error).split()) or type(error).__name__
        return InputError(
            f"{url!r} is truncated or damaged: it starts as Parquet but {found} ({reason}); "
            "expected a complete Parquet file"
        )
    found = describe_bytes(head)
    hint = "; for a CSV, use format photometry-csv" if found.startswith("UTF-8 text") else ""
    return InputError(
        f"{url!r} is not a Parquet file: it is {found}; expected Parquet with PhoPro's "
        f"columns (its first and last bytes 'PAR1'){hint}"
    )


@contextlib.contextmanager
def _parquet_file(fs: Any, path: str, url: str, **options: Any) -> Iterator[pq.ParquetFile]:
    """The input as a ``pyarrow.parquet.ParquetFile`` (its footer read), closed on exit."""
    local = isinstance(fs, LocalFileSystem)
    try:
        opened: Any = path if local else fs.open(path, "rb", **options)
    except FileNotFoundError:
        raise InputNotFoundError(f"input {url!r} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"input {url!r} is a folder; format {FORMAT!r} reads files") from None
    with contextlib.ExitStack() as stack:
        if not local:
            stack.callback(opened.close)
        try:
            parquet = stack.enter_context(pq.ParquetFile(opened))
        except FileNotFoundError:
            raise InputNotFoundError(f"input {url!r} does not exist") from None
        except (pa.ArrowInvalid, OSError) as e:
            raise _not_parquet(fs, path, url, e) from e
        yield parquet


def check_photometry_parquet(
    url: str,
    arguments: PhotometryParquetArguments | Mapping[str, Any],
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Check the columns the arguments name against a Parquet file's schema, reading no rows.

    Only the footer is read (through fsspec in blocks of
    :data:`~neurobatch.io.loaders.headers.HEADER_BLOCK_BYTES`); ``neurobatch validate``
    calls this on every input.

    Parameters
    ----------
    url : str
        The Parquet file: a local path or any fsspec URL.
    arguments : PhotometryParquetArguments or mapping
        The loader's arguments (a mapping is validated; it may carry ``format``).
    storage_options : mapping, optional
        Passed to fsspec.

    Returns
    -------
    dict
        What the load would read: ``format`` and ``columns``.

    Raises
    ------
    neurobatch.errors.InputNotFoundError
        If the file does not exist.
    neurobatch.errors.InputError
        A file that is not Parquet, or a column it lacks, in the line
        :func:`load_photometry_parquet` would fail with.

    Examples
    --------
    >>> import fsspec, pyarrow as pa, pyarrow.parquet as pq
    >>> with fsspec.open("memory://parquet-check/m1.parquet", "wb") as f:
    ...     pq.write_table(pa.table({"time": [0.0, 0.1], "raw_signal": [1.0, 2.0]}), f)
    >>> check_photometry_parquet("memory://parquet-check/m1.parquet",
    ...                          {"signal_col": "raw_signal", "isosbestic_col": "iso"})
    Traceback (most recent call last):
    ...
    neurobatch.errors.InputError: 'memory://parquet-check/m1.parquet' has no column 'iso' (isosbestic_col); its columns: 'time', 'raw_signal'; set isosbestic_col: null to read a single-channel recording
    """
    args = coerce_arguments(arguments, PhotometryParquetArguments, fmt=FORMAT)
    fs, path = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    with _parquet_file(fs, path, url, block_size=HEADER_BLOCK_BYTES) as parquet:
        check_columns(list(parquet.schema_arrow.names), named_columns(args), source=url)
    return {"format": FORMAT, "columns": args.columns()}


def load_photometry_parquet(
    url: str,
    arguments: PhotometryParquetArguments | Mapping[str, Any],
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """Load one photometry Parquet file (PhoPro's CSV columns) into a Recording Dataset.

    Parameters
    ----------
    url : str
        The Parquet file: a local path or any fsspec URL.
    arguments : PhotometryParquetArguments or mapping
        The loader's arguments (a mapping is validated; it may carry ``format``).
    storage_options : mapping, optional
        Passed to fsspec.

    Returns
    -------
    xarray.Dataset
        The Recording Dataset, as :func:`~neurobatch.io.loaders.csv.load_photometry_csv`
        returns it. Messages count rows from 0.

    Raises
    ------
    neurobatch.errors.InputNotFoundError
        If the file does not exist.
    neurobatch.errors.InputError
        A file that is not Parquet, a missing column (the isosbestic's included: see
        :func:`~neurobatch.io.loaders.headers.check_columns`), a column of the wrong type
        (time and channels must be numbers, flags booleans or 0/1), NaN/inf in time or a
        channel, fewer than two rows, time not strictly increasing, a sampling interval off
        the median by more than ``max_sampling_deviation``, or a bad sidecar.
    neurobatch.errors.ConfigError
        If ``arguments`` is an invalid mapping.

    Warns
    -----
    neurobatch.errors.NonUniformSamplingWarning
        When sampling intervals deviate from their median by more than
        ``sampling_tolerance``.

    Examples
    --------
    >>> import fsspec, pyarrow as pa, pyarrow.parquet as pq
    >>> with fsspec.open("memory://parquet-doc/exp.parquet", "wb") as f:
    ...     pq.write_table(pa.table({"time": [0.0, 0.1, 0.2], "signal": [1.0, 2.0, 3.0],
    ...                              "cue": [0, 1, 0]}), f)
    >>> ds = load_photometry_parquet("memory://parquet-doc/exp.parquet",
    ...                              {"isosbestic_col": None, "event_cols": ["cue"]})
    >>> ds.event_time.values.tolist(), round(ds.attrs["sampling_rate"], 6)
    ([0.1], 10.0)
    """
    args = coerce_arguments(arguments, PhotometryParquetArguments, fmt=FORMAT)
    so = dict(storage_options or {})
    fs, path = fsspec.core.url_to_fs(url, **so)
    with _parquet_file(fs, path, url) as parquet:
        check_columns(list(parquet.schema_arrow.names), named_columns(args), source=url)
        metadata, sidecar_url = load_annotation(
            url, args, target="file", key=args.annotation_key, storage_options=so
        )
        columns = args.columns()

        def read() -> Any:
            logger.debug("reading %s columns %s", url, columns)
            try:
                return parquet.read(columns=columns, use_threads=False)
            except (pa.ArrowInvalid, OSError) as e:
                raise InputError(f"{url!r}: cannot read columns {columns}: {e}") from e

        # the table is read inside and dropped column by column as it is converted
        return recording_from_table(
            read,
            args,
            source=url,
            isosbestic=args.isosbestic_col is not None,
            locate=lambda i: f"row {i}",
            sidecar=metadata,
            sidecar_source=sidecar_url,
        )
