"""Window grids and snapping to samples."""

from __future__ import annotations

import numpy as np

from neurobatch.kernels import grids as gk


def test_nearest_grid_is_the_documented_one() -> None:
    first, rel_time = gk.nearest_grid((-8.0, 8.0), 20.0)
    assert first == -160
    assert rel_time.size == 320
    assert rel_time[0] == -8.0
    assert rel_time[-1] == 7.95


def test_interp_grid_excludes_the_right_end() -> None:
    np.testing.assert_array_equal(gk.interp_grid((-1.0, 1.0), 2.0), [-1.0, -0.5, 0.0, 0.5])


def test_snapping_ties_go_to_the_earlier_sample() -> None:
    time = np.array([0.0, 1.0, 2.0, 3.0])
    np.testing.assert_array_equal(gk.snap_to_samples([0.5, 1.5, 2.5, 2.51], time), [0, 1, 2, 3])
