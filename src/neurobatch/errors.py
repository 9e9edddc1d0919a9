"""Domain errors and warnings of neurobatch.

Each error subclasses the builtin a caller would catch anyway (``ValueError`` for a bad
value, ``TypeError`` for a bad type, ``FileNotFoundError`` for a missing input), so code that
does not know neurobatch still handles it, while code that does can tell ours apart.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "EmptyUnitWarning",
    "InputError",
    "InputNotFoundError",
    "NeurobatchError",
    "NoInputsError",
    "NonUniformSamplingWarning",
    "OutputLockedError",
    "StorageError",
    "StoreDamagedError",
]


class NeurobatchError(Exception):
    """Base class of every error raised by neurobatch."""


class ConfigError(NeurobatchError, ValueError):
    """A pipeline file or parameter model is invalid: what was wrong and what was expected."""


class InputError(NeurobatchError, ValueError):
    """An input recording cannot be processed: which input, what was wrong, what was expected."""


class InputNotFoundError(InputError, FileNotFoundError):
    """An input URL does not exist, or its pattern matches nothing: which URL, which pattern."""


class NoInputsError(InputNotFoundError):
    """An input URL exists, but nothing in it is an input (yet): which URL, which pattern,
    and how many entries still lack their ready flag."""


class OutputLockedError(NeurobatchError, RuntimeError):
    """An output folder is locked by another live run: which folder, which run holds it."""


class StoreDamagedError(NeurobatchError, OSError):
    """A stored chunk failed its checksum or could not be decompressed.

    The message names the store, the array (and the chunk when known) and the fix: the
    store's bytes changed after it was written, so it must be rewritten, not read again.
    """


class StorageError(NeurobatchError, OSError):
    """Reading or writing the output folder failed: which path, why, and what to do.

    Raised for a fault of the storage rather than of an item: a full disk or quota
    (``ENOSPC``, ``EDQUOT``), a read-only or forbidden output (``EROFS``, ``EACCES``), a
    device error (``EIO``), or an endpoint still unreachable after the transient errors
    were retried. The message is one line, e.g. ``no space left on device writing
    OUT/trials_obs.parquet; free space or choose another output.url``; ``errno`` is the
    cause's when it had one. Nothing is left half-written: a re-run once the fault is fixed
    finishes the batch.
    """


class EmptyUnitWarning(UserWarning):
    """A unit has no usable spikes, so its spike-triggered average is NaN."""


class NonUniformSamplingWarning(UserWarning):
    """Sample times are not uniformly spaced within the tolerance."""
