"""Tree-reduction bookkeeping shared by the blocked fits and the blocked STA.

The fits hand their partials to ``dask.array.reduction``; the STA builds its tree by hand
(:func:`tree_levels`). Both take a ``split_every`` validated by :func:`validate_split_every`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def validate_split_every(split_every: int | None) -> int | None:
    """Return ``split_every`` if it is None (dask's default) or an integer >= 2, else raise.

    Parameters
    ----------
    split_every : int or None
        How many partials each combine step of a tree reduction merges.

    Returns
    -------
    int or None
        ``split_every``.

    Raises
    ------
    ValueError
        If ``split_every`` is not None and not an integer >= 2.

    Examples
    --------
    >>> validate_split_every(1)
    Traceback (most recent call last):
    ...
    ValueError: split_every must be an integer >= 2 (how many partials each combine step merges) or None for dask's default, got 1.
    """
    if split_every is not None and (
        isinstance(split_every, bool)
        or not isinstance(split_every, int | np.integer)
        or split_every < 2
    ):
        raise ValueError(
            "split_every must be an integer >= 2 (how many partials each combine step "
            f"merges) or None for dask's default, got {split_every!r}."
        )
    return split_every


def tree_levels(
    dsk: dict[Any, Any],
    prefix: str,
    leaves: list[int],
    tiles: Sequence[tuple[int, ...]],
    fan_in: int,
    combine: Callable[..., Any],
) -> tuple[list[tuple[Any, ...]], int]:
    """Add the combine levels of a hand-built tree reduction to a graph.

    Leaf ``b`` of tile ``t`` is the key ``(prefix, 0, b, *t)``. Each level combines the keys
    ``fan_in`` at a time with ``combine``, as ``(prefix, level, g, *t)``, until at most
    ``fan_in`` are left; a group of one moves up a level as it is.

    Parameters
    ----------
    dsk : dict
        The graph, updated in place.
    prefix : str
        The name of the partials' keys.
    leaves : list of int
        The leaves' indices, in order.
    tiles : list of tuple of int
        The tiles each leaf has a partial for (each reduced on its own).
    fan_in : int
        How many partials each combine step merges (>= 2).
    combine : callable
        ``combine(*partials)``, returning a partial.

    Returns
    -------
    keys : list of tuple
        The keys the root step merges, without their tile.
    level : int
        The number of combine levels added.

    Examples
    --------
    >>> from operator import add
    >>> dsk = {}
    >>> keys, level = tree_levels(dsk, "p", [0, 1, 2], [(0,)], 2, add)
    >>> keys, level
    ([('p', 1, 0), ('p', 0, 2)], 1)
    >>> dsk
    {('p', 1, 0, 0): (<built-in function add>, ('p', 0, 0, 0), ('p', 0, 1, 0))}
    """
    level = 0
    keys: list[tuple[Any, ...]] = [(prefix, 0, b) for b in leaves]
    while len(keys) > fan_in:
        level += 1
        groups = [keys[g : g + fan_in] for g in range(0, len(keys), fan_in)]
        for tile in tiles:
            for g, group in enumerate(groups):
                if len(group) > 1:
                    dsk[(prefix, level, g, *tile)] = (combine, *((*key, *tile) for key in group))
        # A group of one moves up a level as it is.
        keys = [
            group[0] if len(group) == 1 else (prefix, level, g) for g, group in enumerate(groups)
        ]
    return keys, level
