"""Figures of the `sta` pipeline: the STA grid and the collapsed STRF.

The input is real: STAs computed by the kernel from a synthetic movie with planted
receptive fields (one unit silent, so its STA is NaN). Each figure is read back as an image
and checked for what it must show.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import dask.array as da
import fsspec
import matplotlib.image
import numpy as np
import pytest
import xarray as xr
from matplotlib.backends.backend_agg import FigureCanvasAgg

from neurobatch.errors import EmptyUnitWarning, InputError
from neurobatch.kernels.sta import spike_triggered_average
from neurobatch.plots import sta_grid, strf
from neurobatch.plots.sta import _strf
from neurobatch.synthetic import receptive_field_movie

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
N_LAGS = 4


@pytest.fixture(scope="module")
def sta() -> xr.Dataset:
    """The STA Dataset of 4 units: ON, OFF, ON and a silent one (NaN)."""
    movie, fields = receptive_field_movie(
        n_frames=3000, height=8, width=8, n_lags=N_LAGS, n_units=4, n_silent=1, seed=1
    )
    peaks = [f.ravel()[np.argmax(np.abs(f.ravel()))] for f in fields.values]
    assert np.sign(peaks).tolist() == [1, -1, 1, 1]
    fps = movie.attrs["fps"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmptyUnitWarning)
        result = spike_triggered_average(
            movie.spike_time.values,
            movie.unit.values,
            movie.frames.values,
            fps=fps,
            n_lags=N_LAGS,
            onset=movie.attrs["stimulus_onset"],
            unit_ids=movie.unit_ids.values,
        )
    ds = xr.Dataset(
        {
            "sta": (("unit", "lag", "y", "x"), result.sta),
            "n_spikes": ("unit", result.bins.n_used),
        },
        coords={
            "unit": result.bins.unit_ids,
            "lag": np.arange(N_LAGS),
            "lag_time": ("lag", np.arange(N_LAGS) / fps),
        },
    )
    ds["strf"] = ds.sta.isel(lag=slice(0, 3)).mean("lag")
    return ds


def _png(path: Path) -> np.ndarray:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    image = np.asarray(matplotlib.image.imread(io.BytesIO(data)))
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    return image[..., :3]


def _coloured(image: np.ndarray) -> tuple[int, int]:
    """Pixels clearly red and clearly blue: the diverging colormap's two ends."""
    r, b = image[..., 0], image[..., 2]
    return int(np.sum(r - b > 0.25)), int(np.sum(b - r > 0.25))


# --------------------------------------------------------------------------------------------
# sta_grid
# --------------------------------------------------------------------------------------------


def test_sta_grid_draws_a_png_of_every_unit_and_lag(sta: xr.Dataset, tmp_path: Path) -> None:
    path = tmp_path / "figures" / "sta.png"  # the parent folder is created
    sta_grid(sta, str(path))
    image = _png(path)
    height, width = image.shape[:2]
    assert height > 300 and width > 400
    assert image.std() > 0.05  # not a blank canvas
    red, blue = _coloured(image)
    assert red > 100 and blue > 100  # ON and OFF units on symmetric scales


def test_sta_grid_leaves_a_nan_unit_blank(sta: xr.Dataset, tmp_path: Path) -> None:
    assert np.isnan(sta.sta.sel(unit=3)).all()
    sta_grid(sta, str(tmp_path / "silent.png"), units=[3])
    silent = _png(tmp_path / "silent.png")
    assert _coloured(silent) == (0, 0)  # no image drawn for it
    sta_grid(sta, str(tmp_path / "spiking.png"), units=[1])
    red, blue = _coloured(_png(tmp_path / "spiking.png"))
    assert blue > 50 and blue > 5 * red  # an OFF unit


def test_sta_grid_selects_and_limits_units(sta: xr.Dataset, tmp_path: Path) -> None:
    sta_grid(sta, str(tmp_path / "two.png"), max_units=2)
    sta_grid(sta, str(tmp_path / "four.png"))
    sta_grid(sta.sta, str(tmp_path / "array.png"), units=[2, 0, 1])  # a DataArray, reordered
    two, four, three = (_png(tmp_path / f"{n}.png") for n in ("two", "four", "array"))
    assert two.shape[0] < three.shape[0] < four.shape[0]
    with pytest.raises(InputError, match=r"sta_grid: units \[9\] are not in the data"):
        sta_grid(sta, str(tmp_path / "bad.png"), units=[0, 9])
    with pytest.raises(ValueError, match="max_units must be at least 1, got 0"):
        sta_grid(sta, str(tmp_path / "bad.png"), max_units=0)


def test_sta_grid_writes_svg_to_fsspec_and_reads_lazily(sta: xr.Dataset) -> None:
    chunked = da.from_array(sta.sta.values, chunks=(1, 2, 8, 8))  # type: ignore[no-untyped-call]
    lazy = sta.assign(sta=sta.sta.copy(data=chunked))
    sta_grid(lazy, "memory://tests/plots-sta/grid.svg")
    memory = fsspec.filesystem("memory")
    svg = memory.cat_file("/tests/plots-sta/grid.svg")
    assert svg.startswith(b"<?xml") and b"lag 3" in svg
    memory.rm("/tests/plots-sta", recursive=True)


def test_sta_grid_refuses_bad_inputs(sta: xr.Dataset, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"expected a path ending in \.png or \.svg"):
        sta_grid(sta, str(tmp_path / "sta.jpg"))
    with pytest.raises(InputError, match=r"sta_grid: the dataset has no variable 'sta'"):
        sta_grid(sta.drop_vars("sta"), str(tmp_path / "sta.png"))
    with pytest.raises(InputError, match=r"has dimensions \('unit', 'y', 'x'\); expected sta"):
        sta_grid(sta.strf.rename("sta"), str(tmp_path / "sta.png"))


# --------------------------------------------------------------------------------------------
# strf
# --------------------------------------------------------------------------------------------


def test_strf_draws_each_unit_and_blanks_the_nan_one(sta: xr.Dataset, tmp_path: Path) -> None:
    strf(sta, str(tmp_path / "strf.png"))
    image = _png(tmp_path / "strf.png")
    assert image.std() > 0.05
    assert sum(_coloured(image)) > 50
    strf(sta, str(tmp_path / "silent.png"), units=[3])
    assert _coloured(_png(tmp_path / "silent.png")) == (0, 0)
    strf(sta.strf, str(tmp_path / "wide.png"), n_cols=4)  # the array itself, one row
    wide = _png(tmp_path / "wide.png")
    assert wide.shape[1] > wide.shape[0]
    with pytest.raises(InputError, match=r"strf: the dataset has no variable 'strf'"):
        strf(sta.drop_vars("strf"), str(tmp_path / "strf.png"))
    with pytest.raises(ValueError, match="n_cols must be at least 1, got 0"):
        strf(sta, str(tmp_path / "strf.png"), n_cols=0)


@pytest.mark.parametrize("n_units", [1, 2, 4, 12])
def test_strf_title_does_not_overlap_the_panel_titles(sta: xr.Dataset, n_units: int) -> None:
    many = xr.concat([sta["strf"]] * 3, dim="unit").assign_coords(unit=np.arange(12))
    figure = _strf(many.isel(unit=slice(0, n_units)))
    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw(renderer)
    title = figure._suptitle.get_window_extent(renderer)
    assert figure.bbox.contains(title.x0, title.y0) and figure.bbox.contains(title.x1, title.y1)
    heads = [ax.title.get_window_extent(renderer) for ax in figure.axes if ax.get_title()]
    assert len(heads) == n_units
    for head in heads:
        assert not title.overlaps(head), (title, head)
        assert head.y1 < title.y0
