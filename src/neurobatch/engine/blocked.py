"""Dask wrappers of the kernels: overlaps, tree reductions and blocked gathers.

Each wrapper is thin: it validates, then hands the kernel to ``map_overlap``,
``map_blocks`` or ``reduction`` with its depth, boundary, dtype and output chunks declared,
so that running chunk by chunk gives the whole-array answer.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

# --- zero-phase filtering -------------------------------------------------------------------

# --- isosbestic fits ------------------------------------------------------------------------

# --- trial windows --------------------------------------------------------------------------

# --- spike-triggered averages ---------------------------------------------------------------
