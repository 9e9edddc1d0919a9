"""Movies with planted receptive fields, checked against the STA kernel."""

from __future__ import annotations

import numpy as np
import pytest

from neurobatch.errors import EmptyUnitWarning
from neurobatch.kernels.sta import spike_triggered_average
from neurobatch.synthetic import PlantedMovie, receptive_field_movie

# --------------------------------------------------------------------------------------------
# movies with planted receptive fields
# --------------------------------------------------------------------------------------------

MOVIE = {"n_frames": 4000, "height": 6, "width": 6, "n_lags": 4, "n_units": 4}


@pytest.fixture(scope="module")
def planted() -> PlantedMovie:
    return receptive_field_movie(
        **MOVIE, mean_rate_hz=60.0, n_silent=1, outside_s=0.5, seed=0, chunk_frames=900
    )


def test_sta_recovers_the_planted_receptive_fields(planted: PlantedMovie) -> None:
    movie, fields = planted
    with pytest.warns(EmptyUnitWarning, match=r"1 unit\(s\) have no usable spikes.*: 3\."):
        result = spike_triggered_average(
            movie.spike_time.values,
            movie.unit.values,
            movie.frames.values,
            fps=movie.attrs["fps"],
            n_lags=MOVIE["n_lags"],
            onset=movie.attrs["stimulus_onset"],
            unit_ids=movie.unit_ids.values,
        )
    assert result.bins.unit_ids.tolist() == [0, 1, 2, 3]
    for unit in range(3):
        correlation = np.corrcoef(result.sta[unit].ravel(), fields.values[unit].ravel())[0, 1]
        assert correlation >= 0.9, (unit, correlation)
    # the silent unit is still listed, with a NaN STA
    assert result.bins.n_used[3] == 0
    assert np.isnan(result.sta[3]).all()
    # spikes before and after the movie exist and are excluded, every spike is accounted for
    assert (result.bins.n_before[:3] > 0).all() and (result.bins.n_after[:3] > 0).all()
    counted = result.bins.n_used + result.bins.n_before + result.bins.n_after
    counted += result.bins.n_too_early
    assert counted.sum() == movie.sizes["spike"]


def test_movie_has_the_design_layout(planted: PlantedMovie) -> None:
    movie, fields = planted
    fps, onset = movie.attrs["fps"], movie.attrs["stimulus_onset"]
    assert movie.frames.dims == ("frame", "y", "x")
    assert movie.frames.dtype == np.float32
    assert movie.frames.chunks is not None  # lazy
    assert movie.frames.chunks[0][:2] == (900, 900)
    np.testing.assert_allclose(movie.frame_time.values, onset + np.arange(4000) / fps)
    assert movie.spike_time.dims == ("spike",) and movie.unit.dims == ("spike",)
    assert movie.unit_ids.dims == ("unit",)
    assert np.all(np.diff(movie.spike_time.values) >= 0)
    assert set(movie.unit.values.tolist()) == {0, 1, 2}
    assert set(movie.attrs) >= {"fps", "stimulus_onset", "pixel_size", "source"}
    frames = movie.frames.values
    assert abs(float(frames.mean())) < 0.02 and abs(float(frames.std()) - 1.0) < 0.02
    assert fields.dims == ("unit", "lag", "y", "x")
    assert fields.shape == (4, 4, 6, 6)
    np.testing.assert_allclose(np.abs(fields.values).max(axis=(1, 2, 3)), 1.0)
    np.testing.assert_allclose(fields.lag_time.values, np.arange(4) / fps)


def test_movie_does_not_depend_on_its_chunking(planted: PlantedMovie) -> None:
    movie, fields = planted
    again, fields_again = receptive_field_movie(
        **MOVIE, mean_rate_hz=60.0, n_silent=1, outside_s=0.5, seed=0, chunk_frames=333
    )
    np.testing.assert_array_equal(again.frames.values, movie.frames.values)
    np.testing.assert_array_equal(again.frames[1000:1100].values, movie.frames.values[1000:1100])
    np.testing.assert_array_equal(again.spike_time.values, movie.spike_time.values)
    np.testing.assert_array_equal(again.unit.values, movie.unit.values)
    np.testing.assert_array_equal(fields_again.values, fields.values)
    other, _ = receptive_field_movie(**MOVIE, seed=1)
    assert not np.array_equal(other.frames[:10].values, movie.frames[:10].values)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_frames": 0}, "n_frames must be an integer >= 1, got 0"),
        ({"n_lags": 50, "n_frames": 10}, "n_lags must be <= n_frames=10, got 50"),
        ({"n_silent": 5, "n_units": 4}, r"n_silent must be in \[0, n_units=4\], got 5"),
        ({"fps": -1.0}, "fps must be a finite number > 0, got -1.0"),
    ],
)
def test_receptive_field_movie_rejects_bad_arguments(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        receptive_field_movie(**kwargs)  # type: ignore[arg-type]
