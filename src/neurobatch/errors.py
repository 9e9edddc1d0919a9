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
    "NonUniformSamplingWarning",
]


class NeurobatchError(Exception):
    """Base class of every error raised by neurobatch."""


class ConfigError(NeurobatchError, ValueError):
    """A pipeline file or parameter model is invalid: what was wrong and what was expected."""


class InputError(NeurobatchError, ValueError):
    """An input recording cannot be processed: which input, what was wrong, what was expected."""


class InputNotFoundError(InputError, FileNotFoundError):
    """An input URL does not exist, or its pattern matches nothing: which URL, which pattern."""


class EmptyUnitWarning(UserWarning):
    """A unit has no usable spikes, so its spike-triggered average is NaN."""


class NonUniformSamplingWarning(UserWarning):
    """Sample times are not uniformly spaced within the tolerance."""
