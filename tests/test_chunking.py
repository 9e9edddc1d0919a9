"""Memory budgets: chunk lengths from a budget."""

from __future__ import annotations

from typing import Any

import pytest

from neurobatch.chunking import chunk_length

# --- chunk_length -----------------------------------------------------------------------------


def test_chunk_length_fits_the_budget() -> None:
    assert chunk_length(64 * 2**20, bytes_per_sample=16) == 4 * 2**20
    assert chunk_length(100, bytes_per_sample=8) == 4096
    assert chunk_length(100, bytes_per_sample=8, minimum=1) == 12
    assert chunk_length(7, bytes_per_sample=8, minimum=1) == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"chunk_memory": 0, "bytes_per_sample": 8}, "chunk_memory must be a positive integer"),
        ({"chunk_memory": 2.5, "bytes_per_sample": 8}, "chunk_memory must be a positive integer"),
        ({"chunk_memory": 10, "bytes_per_sample": -8}, "bytes_per_sample must be a positive"),
        ({"chunk_memory": 10, "bytes_per_sample": 8, "minimum": 0}, "minimum must be a positive"),
    ],
)
def test_chunk_length_rejects_bad_values(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        chunk_length(**kwargs)
