"""Hypothesis strategies shared by the chunked-equals-whole tests."""

from __future__ import annotations

import itertools

from hypothesis import strategies as st


@st.composite
def chunkings(draw: st.DrawFn, length: int, *, max_chunks: int = 12) -> tuple[int, ...]:
    """Split ``length`` into uneven chunks; shrinks towards a single chunk.

    Draws cut points in ``(0, length)``, so chunks can be as small as one element, uneven,
    or the whole array.
    """
    n_cuts = draw(st.integers(min_value=0, max_value=min(max_chunks - 1, length - 1)))
    if n_cuts == 0:
        return (length,)
    cuts = draw(
        st.lists(
            st.integers(min_value=1, max_value=length - 1),
            min_size=n_cuts,
            max_size=n_cuts,
            unique=True,
        )
    )
    edges = [0, *sorted(cuts), length]
    return tuple(b - a for a, b in itertools.pairwise(edges))


def split_everies() -> st.SearchStrategy[int | None]:
    """``split_every`` values for reductions: None (dask's default) or 2 (a deep tree)."""
    return st.sampled_from([None, 2, 3])
