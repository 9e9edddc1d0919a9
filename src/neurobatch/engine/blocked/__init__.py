"""Dask wrappers of the kernels: overlaps, tree reductions and blocked gathers.

Each wrapper is thin: it validates, then hands the kernel to ``map_overlap``,
``map_blocks`` or ``reduction`` with its depth, boundary, dtype and output chunks declared,
so that running chunk by chunk gives the whole-array answer. The modules mirror
:mod:`neurobatch.kernels`: :mod:`~neurobatch.engine.blocked.filters`,
:mod:`~neurobatch.engine.blocked.fitting`, :mod:`~neurobatch.engine.blocked.bleaching`,
:mod:`~neurobatch.engine.blocked.windows`, :mod:`~neurobatch.engine.blocked.sta` and
:mod:`~neurobatch.engine.blocked.eta`.
"""

from neurobatch.engine.blocked._reduce import validate_split_every
from neurobatch.engine.blocked.bleaching import (
    fit_bleaching,
    fit_detrend,
    fitted_reference,
    strided_median,
)
from neurobatch.engine.blocked.eta import BlockedEta, EtaEdges, event_triggered_average
from neurobatch.engine.blocked.filters import normalize, zero_phase_filter
from neurobatch.engine.blocked.fitting import fit_irls, fit_ols
from neurobatch.engine.blocked.sta import BlockedSta, blocked_sta
from neurobatch.engine.blocked.windows import extract_trials, gather_windows, interpolate_windows

__all__ = [
    "BlockedEta",
    "BlockedSta",
    "EtaEdges",
    "blocked_sta",
    "event_triggered_average",
    "extract_trials",
    "fit_bleaching",
    "fit_detrend",
    "fit_irls",
    "fit_ols",
    "fitted_reference",
    "gather_windows",
    "interpolate_windows",
    "normalize",
    "strided_median",
    "validate_split_every",
    "zero_phase_filter",
]
