"""The exact median of blocked values, by chunk / combine passes.

Exact-median partials (:class:`MedianSearch`): counts of the values' float64 bit patterns
in bins of their leading bits, then the values of the one bin that holds the middle order
statistic(s) once it is small (or, given a guess, the values in a window around it and the
count below it), so that the median is exact, as ``numpy.median`` gives it.
:func:`exact_median` runs the search over a :class:`~neurobatch.kernels.reduction.Reducer`;
the robust fit of :mod:`neurobatch.kernels.fitting` uses it for its MAD scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from neurobatch.kernels.reduction import _TILE, Reducer, _as_block

__all__ = [
    "MedianCell",
    "MedianPartial",
    "MedianPlan",
    "MedianSearch",
    "exact_median",
    "median_chunk",
    "median_combine",
]

Float64Array = NDArray[np.float64]
KeyArray = NDArray[np.uint64]

#: Bins per counting pass of the exact median (16 bits of the key at a time).
_BIN_BITS = 16
#: A median bin with at most this many values is collected (8 bytes each) and selected.
_COLLECT_MAX = 1 << 18
_KEY_MAX = (1 << 64) - 1
_SIGN = np.uint64(1 << 63)
_LOW63 = np.uint64((1 << 63) - 1)


# --- exact median in blocks -----------------------------------------------------------------
#
# Values are mapped to uint64 keys that order as the floats do (flip every bit of a
# negative float, set the sign bit of a non-negative one). A counting pass counts the keys
# of an interval in 2**16 bins of equal key width (the first: the leading 16 bits, i.e.
# sign, exponent and 4 mantissa bits, so no [min, max] pass is needed); the bin holding
# each middle order statistic becomes the next interval. Once an interval holds few keys, a
# pass collects them and ``np.partition`` selects; an interval of a single key is a tie,
# resolved without collecting. Each counting pass divides the key width by 2**16, so at
# most four are ever needed (all-equal data), typically one count and one collect.
#
# When the count is known and the median roughly (the previous IRLS iteration's), a single
# pass can instead collect a window of keys around the guess and count the keys below it:
# if the middle ranks fall inside, the search is done in one pass; otherwise it goes on in
# the part below or above the window, whose counts are then known.


@dataclass(frozen=True)
class MedianCell:
    """What one pass gathers about the keys in ``[lo, hi]``.

    Attributes
    ----------
    lo, hi : int
        Inclusive key interval (keys are the values' order-preserving uint64 images).
    shift : int
        Counting cells: keys are counted in bins ``(key - lo) >> shift``.
    collect : bool
        True: gather the keys themselves instead of counting them.
    count_below : bool
        Also count the keys below ``lo`` (a speculative window).
    """

    lo: int
    hi: int
    shift: int = 0
    collect: bool = False
    count_below: bool = False

    @property
    def n_bins(self) -> int:
        """Number of counting bins."""
        return ((self.hi - self.lo) >> self.shift) + 1

    @property
    def full(self) -> bool:
        """Whether the cell covers every key (no selection needed)."""
        return self.lo == 0 and self.hi == _KEY_MAX


#: The cells one pass of the exact median gathers.
MedianPlan = tuple[MedianCell, ...]


#: Per cell: int64 bin counts or the collected uint64 keys, and the count of keys below
#: ``lo`` (0 unless ``count_below``).
MedianPartial = tuple[tuple[NDArray[Any], int], ...]


def _float_keys(values: Float64Array) -> KeyArray:
    """Order-preserving uint64 keys of float64 values (-0.0 sorts just below +0.0)."""
    u = values.view(np.uint64)
    return u ^ (((u >> np.uint64(63)) * _LOW63) | _SIGN)


def _key_value(key: int) -> float:
    """The float64 whose key is ``key``."""
    bits = key ^ (1 << 63) if key >> 63 else ~key & _KEY_MAX
    return float(np.array(bits, dtype=np.uint64).view(np.float64))


def _value_window(center: float, rel: float) -> tuple[int, int]:
    """Keys of ``[center - rel |center|, center + rel |center|]``."""
    half = abs(center) * rel
    lo, hi = _float_keys(np.array([center - half, center + half], dtype=np.float64))
    return int(lo), int(hi)


class _Gatherer:
    """Accumulates one block's :data:`MedianPartial`, tile by tile."""

    def __init__(self, plan: MedianPlan, size: int) -> None:
        self.plan = plan
        self.pieces: list[list[NDArray[Any]]] = [[] for _ in plan]
        self.below = [0] * len(plan)
        counting_all = any(c.full and not c.collect for c in plan)
        self.full_bins = np.empty(size, dtype=np.uint64) if counting_all else None
        self.pos = 0
        m = min(size, _TILE)
        self.offset = np.empty(m, dtype=np.uint64)
        self.mask = np.empty(m, dtype=bool)

    def add(self, keys: KeyArray) -> None:
        m = keys.size
        offset, mask = self.offset[:m], self.mask[:m]
        for i, cell in enumerate(self.plan):
            if cell.full and not cell.collect and self.full_bins is not None:
                shift = np.uint64(cell.shift)
                np.right_shift(keys, shift, out=self.full_bins[self.pos : self.pos + m])
                continue
            lo = np.uint64(cell.lo)
            np.subtract(keys, lo, out=offset)
            np.less_equal(offset, np.uint64(cell.hi - cell.lo), out=mask)
            if cell.collect:
                self.pieces[i].append(keys[mask])
            else:
                self.pieces[i].append(offset[mask] >> np.uint64(cell.shift))
            if cell.count_below:
                np.less(keys, lo, out=mask)
                self.below[i] += int(np.count_nonzero(mask))
        self.pos += m

    def partial(self) -> MedianPartial:
        out: list[tuple[NDArray[Any], int]] = []
        for cell, pieces, below in zip(self.plan, self.pieces, self.below, strict=True):
            if cell.full and not cell.collect and self.full_bins is not None:
                bins = self.full_bins[: self.pos]
            else:
                bins = np.concatenate(pieces) if pieces else np.empty(0, np.uint64)
            if cell.collect:
                out.append((bins, below))
            else:
                out.append((np.bincount(bins.view(np.int64), minlength=cell.n_bins), below))
        return tuple(out)


def median_chunk(values: ArrayLike, plan: MedianPlan) -> MedianPartial:
    """Chunk function of the exact median: gather one block's counts or keys for ``plan``.

    Parameters
    ----------
    values : array_like
        One block of values (any shape; cast to float64). Must not hold NaN.
    plan : MedianPlan
        :attr:`MedianSearch.plan` of the search in progress.

    Returns
    -------
    MedianPartial
        One ``(array, count below)`` pair per cell of ``plan``.

    Raises
    ------
    ValueError
        If the block holds NaN.

    See Also
    --------
    exact_median : the whole search over a reducer.

    Examples
    --------
    >>> search = MedianSearch()
    >>> counts, _ = median_chunk([1.0, 2.0, 3.0], search.plan)[0]
    >>> int(counts.sum())
    3
    """
    v = _as_block(values)
    n_nan = int(np.isnan(v).sum())
    if n_nan:
        raise ValueError(f"values must not hold NaN, got {n_nan} in a block of {v.size}.")
    gatherer = _Gatherer(plan, v.size)
    for start in range(0, v.size, _TILE):
        gatherer.add(_float_keys(v[start : start + _TILE]))
    return gatherer.partial()


def median_combine(parts: Sequence[MedianPartial]) -> MedianPartial:
    """Combine function of the exact median: add counts, concatenate collected keys.

    Parameters
    ----------
    parts : sequence of MedianPartial
        Partials of disjoint blocks for the same plan (at least one).

    Returns
    -------
    MedianPartial
        The partial of the union of the blocks.

    Examples
    --------
    >>> plan = MedianSearch().plan
    >>> a, b = median_chunk([1.0, 2.0], plan), median_chunk([3.0], plan)
    >>> counts, _ = median_combine([a, b])[0]
    >>> int(counts.sum())
    3
    """
    merged: list[tuple[NDArray[Any], int]] = []
    for cells in zip(*parts, strict=True):
        arrays = [a for a, _ in cells]
        below = sum(b for _, b in cells)
        if arrays[0].dtype == np.uint64:
            merged.append((np.concatenate(arrays), below))
        else:
            merged.append((np.sum(arrays, axis=0), below))
    return tuple(merged)


@dataclass(frozen=True)
class _Interval:
    """Keys in ``[lo, hi]`` (``count`` of them, -1 if unknown) hold order statistics
    ``ranks`` (None: the middle ones, once the total is known); ``below`` keys are < lo."""

    lo: int
    hi: int
    below: int
    ranks: tuple[int, ...] | None
    count: int


def _middle_ranks(n: int) -> tuple[int, ...]:
    return tuple(sorted({(n - 1) // 2, n // 2}))


class MedianSearch:
    """State of an exact median search: what the next pass gathers, and what is found.

    Drive it with ``search.advance(reduce(partial(median_chunk, plan=search.plan),
    median_combine))`` until ``search.done``; :func:`exact_median` does exactly that.

    Parameters
    ----------
    n : int, optional
        The number of values, when known in advance.
    window : tuple of int, optional
        Keys ``(lo, hi)`` where the median probably lies (needs ``n``): the first pass
        collects them and counts the keys below, so that a good guess ends the search in
        one pass.

    Examples
    --------
    >>> from neurobatch.kernels.reduction import local_reducer
    >>> from functools import partial
    >>> reduce = local_reducer([np.array([5.0, 1.0]), np.array([4.0, 2.0])])
    >>> search = MedianSearch()
    >>> while not search.done:
    ...     search.advance(reduce(partial(median_chunk, plan=search.plan), median_combine))
    >>> search.n, search.passes, search.order_statistics(), search.median()
    (4, 2, (2.0, 4.0), 3.0)
    """

    def __init__(self, *, n: int | None = None, window: tuple[int, int] | None = None) -> None:
        if window is not None and n is None:
            raise ValueError("a median search with a window needs the number of values n.")
        if n is not None and n < 1:
            raise ValueError(f"n must be >= 1 (the number of values), got {n}.")
        self.n = n
        self.passes = 0
        ranks = None if n is None else _middle_ranks(n)
        self._pending = [_Interval(0, _KEY_MAX, 0, ranks, -1 if n is None else n)]
        self._window = window
        self._found: dict[int, int] = {}
        self._plan: MedianPlan | None = None

    @property
    def done(self) -> bool:
        """Whether the middle order statistics are known."""
        return not self._pending

    @property
    def plan(self) -> MedianPlan:
        """The cells the next pass must gather."""
        if self._plan is None:
            if self.passes == 0 and self._window is not None:
                lo, hi = self._window
                self._plan = (MedianCell(lo, hi, collect=True, count_below=True),)
            else:
                self._plan = tuple(self._cell(iv) for iv in self._pending)
        return self._plan

    @staticmethod
    def _cell(iv: _Interval) -> MedianCell:
        if 0 <= iv.count <= _COLLECT_MAX:
            return MedianCell(iv.lo, iv.hi, collect=True)
        return MedianCell(iv.lo, iv.hi, shift=max((iv.hi - iv.lo).bit_length() - _BIN_BITS, 0))

    def advance(self, partial: MedianPartial) -> None:
        """Take in the combined partial of the pass gathered for :attr:`plan`.

        Parameters
        ----------
        partial : MedianPartial
            ``median_combine`` of every block's ``median_chunk(values, self.plan)``.

        Raises
        ------
        ValueError
            If there are no values at all.
        """
        pending: list[_Interval] = []
        for iv, cell, (data, below) in zip(self._pending, self.plan, partial, strict=True):
            if cell.count_below:
                self._split_at_window(iv, cell, data, below, pending)
            elif cell.collect:
                self._select(data, iv)
            else:
                self._narrow(iv, cell, data, pending)
        self._pending = pending
        self._plan = None
        self.passes += 1

    def _split_at_window(
        self, iv: _Interval, cell: MedianCell, keys: KeyArray, below: int, pending: list[_Interval]
    ) -> None:
        inside = keys.size
        ranks = iv.ranks or ()
        low = tuple(k for k in ranks if k < below)
        mid = tuple(k for k in ranks if below <= k < below + inside)
        high = tuple(k for k in ranks if k >= below + inside)
        if mid:
            self._select(keys, _Interval(cell.lo, cell.hi, below, mid, inside))
        if low:
            pending.append(_Interval(iv.lo, cell.lo - 1, iv.below, low, below - iv.below))
        if high:
            rest = iv.below + iv.count - below - inside
            pending.append(_Interval(cell.hi + 1, iv.hi, below + inside, high, rest))

    def _narrow(
        self, iv: _Interval, cell: MedianCell, counts: NDArray[Any], pending: list[_Interval]
    ) -> None:
        ranks = iv.ranks
        if ranks is None:
            n = int(counts.sum())
            if n == 0:
                raise ValueError("values must hold at least one value, got 0.")
            self.n = n
            ranks = _middle_ranks(n)
        cum = np.cumsum(counts)
        groups: dict[int, list[int]] = {}
        for k in ranks:
            groups.setdefault(int(np.searchsorted(cum, k - iv.below, side="right")), []).append(k)
        for j, ks in groups.items():
            lo = iv.lo + (j << cell.shift)
            hi = min(lo + (1 << cell.shift) - 1, iv.hi)
            if lo == hi:  # a single key: every one of these order statistics is it
                self._found.update(dict.fromkeys(ks, lo))
                continue
            below = iv.below + (int(cum[j - 1]) if j else 0)
            pending.append(_Interval(lo, hi, below, tuple(ks), int(counts[j])))

    def _select(self, keys: KeyArray, iv: _Interval) -> None:
        ranks = iv.ranks or ()
        kth = [k - iv.below for k in ranks]
        chosen = np.partition(keys, kth)
        for k, i in zip(ranks, kth, strict=True):
            self._found[k] = int(chosen[i])

    def order_statistics(self) -> tuple[float, float]:
        """The lower and upper middle order statistics (equal for an odd count).

        Returns
        -------
        tuple of float
            ``(sorted[(n - 1) // 2], sorted[n // 2])``.

        Raises
        ------
        ValueError
            If the search is not done.
        """
        if not self.done or self.n is None:
            raise ValueError("the median search is not done: advance it until search.done.")
        n = self.n
        return _key_value(self._found[(n - 1) // 2]), _key_value(self._found[n // 2])

    def median(self) -> float:
        """The median, as ``numpy.median`` computes it (mean of the two middle values).

        Returns
        -------
        float
            The median.
        """
        lo, hi = self.order_statistics()
        return lo if self.n is not None and self.n % 2 else (lo + hi) / 2.0


def exact_median(reduce: Reducer) -> float:
    """The exact median of values spread over blocks, as ``numpy.median`` gives it.

    Typically two passes (count the values' leading bits, then collect the middle bin);
    at most five.

    Parameters
    ----------
    reduce : Reducer
        Runs chunk functions over the blocks of a single array of values.

    Returns
    -------
    float
        The median (the mean of the two middle values for an even count).

    Raises
    ------
    ValueError
        If there are no values, or some are NaN.

    Examples
    --------
    >>> from neurobatch.kernels.reduction import local_reducer
    >>> exact_median(local_reducer([np.array([1.0, 7.0]), np.array([3.0, 3.0])]))
    3.0
    """
    search = MedianSearch()
    while not search.done:
        search.advance(reduce(partial(median_chunk, plan=search.plan), median_combine))
    return search.median()
