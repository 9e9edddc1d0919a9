"""Dashboards: filtered channels, the processed variable, trial heatmap and mean ± SEM."""

from __future__ import annotations

import struct
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pytest
import scipy.signal
import xarray as xr
from dask.callbacks import Callback

from neurobatch.errors import InputError
from neurobatch.plots import dashboard, trial_labels
from neurobatch.plots.photometry import _dashboard
from neurobatch.synthetic import photometry_recording

FS = 100.0
DURATION_S = 300.0
BOUNDS_S = (-8.0, 8.0)
SVG = "{http://www.w3.org/2000/svg}"


# --------------------------------------------------------------------------------------------
# inputs: a Processed Dataset and a Trials Dataset built by hand with scipy and numpy
# --------------------------------------------------------------------------------------------


def _processed(single_channel: bool = False) -> xr.Dataset:
    rec = photometry_recording(duration_s=DURATION_S, fs=FS, seed=3)
    sos = scipy.signal.butter(4, 3.0, btype="low", fs=FS, output="sos")
    signal = scipy.signal.sosfiltfilt(sos, rec["signal"].values)
    attrs = {k: v for k, v in rec.attrs.items()}
    attrs.update(event_names=["trial_cue", "lever1", "lever2", "shock"], n_samples=signal.size)
    events = {"event_time": rec["event_time"]}
    if single_channel:
        dff = (signal - signal.mean()) / signal.mean()
        variables = {"signal": ("time", signal), "dff": ("time", dff)}
        fit: dict[str, Any] = {}
    else:
        iso = scipy.signal.sosfiltfilt(sos, rec["isosbestic"].values)
        design = np.column_stack([np.ones_like(iso), iso])
        (intercept, slope), *_ = np.linalg.lstsq(design, signal, rcond=None)
        reference = intercept + slope * iso
        residual = signal - reference
        r_squared = 1.0 - residual.var() / signal.var()
        dff = residual / reference
        variables = {
            "signal": ("time", signal),
            "isosbestic": ("time", iso),
            "reference": ("time", reference),
            "dff": ("time", dff),
        }
        fit = {
            "intercept": float(intercept),
            "slope": float(slope),
            "r_squared": float(r_squared),
            "method": "ols",
            "n_samples": int(signal.size),
            "converged": True,
            "n_iter": 1,
        }
    attrs.update(fit=fit, processed_variable="dff")
    return xr.Dataset(
        {**variables, **events},
        coords={"time": rec["time"], "event_name": rec["event_name"]},
        attrs=attrs,
    )


def _trials(processed: xr.Dataset, *, pooled: bool = False) -> xr.Dataset:
    names = processed["event_name"].values
    times = processed["event_time"].values
    align = ["lever1", "lever2"] if pooled else ["trial_cue"]
    keep = np.isin(names, align)
    centres, align_event = times[keep], names[keep]
    t = processed["time"].values
    rel_time = np.arange(round(BOUNDS_S[0] * FS), round(BOUNDS_S[1] * FS) + 1) / FS
    inside = (centres + BOUNDS_S[0] >= t[0]) & (centres + BOUNDS_S[1] <= t[-1])
    centres, align_event = centres[inside], align_event[inside]
    index = np.searchsorted(t, centres)[:, None] + np.round(rel_time * FS).astype(np.int64)
    dff = processed["dff"].values[index]
    n = centres.size
    lever1 = np.full(n, np.nan)
    for i, c in enumerate(centres):
        press = times[(names == "lever1") & (times >= c) & (times <= c + BOUNDS_S[1])]
        if press.size:
            lever1[i] = press[0] - c
    coords: dict[str, Any] = {
        "rel_time": rel_time,
        "item_id": ("trial", np.full(n, "item-003")),
        "experiment_id": ("trial", np.full(n, "exp-003")),
        "trial_num": ("trial", np.arange(n, dtype=np.int64)),
        "start_time": ("trial", centres + BOUNDS_S[0]),
        "stop_time": ("trial", centres + BOUNDS_S[1]),
        "lever1": ("trial", lever1),
    }
    if pooled:
        coords["align_event"] = ("trial", align_event.astype(str))
    return xr.Dataset(
        {"dff": (("trial", "rel_time"), dff)},
        coords=coords,
        attrs={"processed_variable": "dff", "sampling_rate": FS},
    )


@pytest.fixture(scope="module")
def processed() -> xr.Dataset:
    return _processed()


@pytest.fixture(scope="module")
def trials(processed: xr.Dataset) -> xr.Dataset:
    return _trials(processed)


def _svg(path: Path | bytes) -> ET.Element:
    data = path if isinstance(path, bytes) else path.read_bytes()
    return ET.fromstring(data)


def _axes_ids(root: ET.Element) -> list[str]:
    return [
        g.attrib["id"] for g in root.iter(f"{SVG}g") if g.attrib.get("id", "").startswith("axes_")
    ]


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


# --------------------------------------------------------------------------------------------
# dashboard
# --------------------------------------------------------------------------------------------


def test_dashboard_svg_with_trials(
    processed: xr.Dataset, trials: xr.Dataset, tmp_path: Path
) -> None:
    path = tmp_path / "items" / "item-003" / "dashboard.svg"  # parent folders are created
    dashboard(processed, trials, str(path))
    root = _svg(path)
    # raw, processed, heatmap, mean ± SEM and the colorbar
    assert len(_axes_ids(root)) == 5
    # the heatmap is an embedded image in the third axes
    heatmap = next(g for g in root.iter(f"{SVG}g") if g.attrib.get("id") == "axes_3")
    assert len(list(heatmap.iter(f"{SVG}image"))) == 1
    text = path.read_text()
    for word in ("isosbestic", "reference", "trial_cue", "lever1", "exp-003", "ols", "R²"):
        assert word in text, word
    assert f"{trials.sizes['trial']} trials" in text


def test_dashboard_png(processed: xr.Dataset, trials: xr.Dataset, tmp_path: Path) -> None:
    path = tmp_path / "dashboard.png"
    dashboard(processed, trials, str(path), title="custom title")
    data = path.read_bytes()
    assert _png_size(data) == (1200, 1200)
    assert 20_000 < len(data) < 2_000_000


def test_dashboard_single_channel(tmp_path: Path) -> None:
    processed = _processed(single_channel=True)
    trials = _trials(processed)
    path = tmp_path / "single.svg"
    dashboard(processed, trials, str(path))
    root = _svg(path)
    assert len(_axes_ids(root)) == 5
    text = path.read_text()
    assert "isosbestic" not in text and "reference" not in text
    assert "signal" in text and "R²" not in text


def test_dashboard_without_trials(processed: xr.Dataset, tmp_path: Path) -> None:
    path = tmp_path / "no-trials.png"
    dashboard(processed, None, str(path))
    assert _png_size(path.read_bytes()) == (1200, 650)


def test_dashboard_with_no_trial_left(
    processed: xr.Dataset, trials: xr.Dataset, tmp_path: Path
) -> None:
    path = tmp_path / "empty.svg"
    dashboard(processed, trials.isel(trial=slice(0, 0)), str(path))
    assert len(_axes_ids(_svg(path))) == 2  # filtered channels and the processed variable
    assert "0 trials" in path.read_text()


def test_dashboard_groups_by_align_event(processed: xr.Dataset, tmp_path: Path) -> None:
    trials = _trials(processed, pooled=True)
    groups = sorted(set(trials["align_event"].values.tolist()))
    assert groups == ["lever1", "lever2"]
    path = tmp_path / "pooled.svg"
    dashboard(processed, trials, str(path))
    text = path.read_text()
    for group in groups:
        n = int((trials["align_event"].values == group).sum())
        assert f"{group} (n={n})" in text


def test_dashboard_without_events(
    processed: xr.Dataset, trials: xr.Dataset, tmp_path: Path
) -> None:
    bare = processed.drop_vars(["event_time", "event_name"])
    path = tmp_path / "no-events.svg"
    dashboard(bare, trials, str(path))
    assert len(_axes_ids(_svg(path))) == 5


class _ComputeCounter(Callback):
    """Counts dask computations (one ``_start`` per ``compute`` call)."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.count = 0

    def _start(self, dsk: Any) -> None:
        self.count += 1


def test_dashboard_lazy_inputs_compute_once(
    processed: xr.Dataset, trials: xr.Dataset, tmp_path: Path
) -> None:
    lazy = processed.chunk({"time": 7001, "event": 10})
    lazy_trials = trials.chunk({"trial": 4})
    assert lazy["dff"].chunks is not None and lazy_trials["dff"].chunks is not None
    counter = _ComputeCounter()
    with counter:
        dashboard(lazy, lazy_trials, str(tmp_path / "lazy.svg"))
    assert counter.count == 1
    assert len(_axes_ids(_svg(tmp_path / "lazy.svg"))) == 5


def test_dashboards_draw_concurrently_in_threads(
    processed: xr.Dataset, trials: xr.Dataset, tmp_path: Path
) -> None:
    # as on the threads of a Dask worker: no pyplot state is shared between figures
    single = _processed(single_channel=True)
    jobs = [(processed, trials, tmp_path / "a.svg"), (single, None, tmp_path / "b.svg")]
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(lambda job: dashboard(job[0], job[1], str(job[2])), jobs))
    assert len(_axes_ids(_svg(tmp_path / "a.svg"))) == 5
    assert len(_axes_ids(_svg(tmp_path / "b.svg"))) == 2
    assert "isosbestic" not in (tmp_path / "b.svg").read_text()


def test_dashboard_writes_through_fsspec(processed: xr.Dataset, trials: xr.Dataset) -> None:
    url = "memory://plots-test/item-003/dashboard"
    dashboard(processed, trials, url, format="png")
    fs = fsspec.filesystem("memory")
    try:
        _png_size(fs.cat_file("/plots-test/item-003/dashboard"))
    finally:
        fs.rm("/plots-test", recursive=True)


def test_dashboard_rejects_bad_input(processed: xr.Dataset, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"cannot tell the dashboard format from .*\.pdf"):
        dashboard(processed, None, str(tmp_path / "d.pdf"))
    with pytest.raises(ValueError, match=r"format must be 'svg' or 'png', got 'pdf'"):
        dashboard(processed, None, str(tmp_path / "d.svg"), format="pdf")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"max_points must be at least 4, got 2"):
        dashboard(processed, None, str(tmp_path / "d.svg"), max_points=2)
    with pytest.raises(InputError, match=r"processed_variable 'df' is not a variable"):
        dashboard(processed.assign_attrs(processed_variable="df"), None, str(tmp_path / "d.svg"))
    with pytest.raises(InputError, match=r"no 'signal' variable"):
        dashboard(processed.drop_vars("signal"), None, str(tmp_path / "d.svg"))
    bad_trials = xr.Dataset({"x": (("trial", "rel_time"), np.zeros((1, 2)))})
    with pytest.raises(InputError, match=r"trials dataset has no variable 'dff'"):
        dashboard(processed, bad_trials, str(tmp_path / "d.svg"))
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------------------------
# the fixed properties, read off the matplotlib objects
# --------------------------------------------------------------------------------------------


def _panels(figure: Any) -> dict[str, Any]:
    """The dashboard's axes by their left-hand title (the heatmap's colorbar has none)."""
    return {ax.get_title(loc="left"): ax for ax in figure.axes if ax.get_title(loc="left")}


def test_dashboard_top_panel_says_it_shows_filtered_channels(
    processed: xr.Dataset, trials: xr.Dataset
) -> None:
    figure = _dashboard(processed, trials)
    titles = [ax.get_title(loc="left") for ax in figure.axes]
    assert "raw channels" not in titles
    assert titles[0] == "filtered channels and fitted reference"
    single = _dashboard(processed.drop_vars(["isosbestic", "reference"]), trials)
    assert single.axes[0].get_title(loc="left") == "filtered channels"


def test_heatmap_has_integer_trial_ticks_time_labels_and_a_zero_line(
    processed: xr.Dataset, trials: xr.Dataset
) -> None:
    figure = _dashboard(processed, trials)
    figure.canvas.draw()  # tick locations are settled at draw time
    heat = _panels(figure)["trials"]
    n = trials.sizes["trial"]
    ticks = [t for t in heat.get_yticks() if 0.5 <= t <= n + 0.5]
    assert ticks and all(float(t).is_integer() for t in ticks)
    assert min(ticks) >= 1 and max(ticks) <= n  # trials are numbered 1..n
    assert sorted(heat.get_ylim()) == [0.5, n + 0.5]
    assert heat.get_xlabel() == "time from alignment (s)"
    labels = [t.get_text() for t in heat.get_xticklabels() if t.get_visible()]
    assert any(text for text in labels)  # time tick labels are drawn
    zero = [
        line
        for line in heat.get_lines()
        if list(line.get_xdata()) == [0.0, 0.0] and line.get_linestyle() == "--"
    ]
    assert len(zero) == 1


def test_mean_sem_has_one_legend_entry_per_trial_type(
    processed: xr.Dataset, trials: xr.Dataset
) -> None:
    labels = trial_labels(
        {"lever1": trials["lever1"].values}, center_on=["lever1"], align_to="trial_cue"
    )
    # independent count: a trial is centred on lever1 where its offset is exactly 0
    offsets = trials["lever1"].values
    expected = {"lever1": int(np.sum(offsets == 0.0)), "trial_cue": int(np.sum(offsets != 0.0))}
    figure = _dashboard(processed, trials, group_by=labels)
    mean_axes = [ax for ax in figure.axes if ax.get_ylabel() == "dff (mean ± SEM)"]
    legend = mean_axes[0].get_legend()
    texts = sorted(t.get_text() for t in legend.get_texts())
    assert texts == sorted(f"{k} (n={v})" for k, v in expected.items() if v)
    assert legend.get_title().get_text() == "trial type"


def test_mean_sem_groups_by_any_obs_column(processed: xr.Dataset, trials: xr.Dataset) -> None:
    halves = np.where(np.arange(trials.sizes["trial"]) % 2 == 0, "even", "odd")
    with_column = trials.assign_coords(half=("trial", halves))
    figure = _dashboard(processed, with_column, group_by="half")
    legend = next(ax for ax in figure.axes if ax.get_ylabel().endswith("(mean ± SEM)")).get_legend()
    counts = {"even": int(np.sum(halves == "even")), "odd": int(np.sum(halves == "odd"))}
    assert sorted(t.get_text() for t in legend.get_texts()) == [
        f"{k} (n={v})" for k, v in sorted(counts.items())
    ]
    assert legend.get_title().get_text() == "half"
    with pytest.raises(InputError, match="group_by 'subject' is not a per-trial column"):
        _dashboard(processed, trials, group_by="subject")
    with pytest.raises(InputError, match="expected one label per trial"):
        _dashboard(processed, trials, group_by=["a", "b"])


def test_trial_labels_follow_center_on_order_and_pooled_alignments() -> None:
    obs = {
        "a": np.array([0.0, 0.0, np.nan, np.nan]),
        "b": np.array([np.nan, 0.0, 0.0, 1.5]),
        "align_event": np.array(["cue", "cue", "tone", "tone"]),
    }
    # later center_on names win; a trial centred on neither keeps its alignment event
    assert trial_labels(obs, center_on=["a", "b"]).tolist() == ["a", "b", "b", "tone"]
    assert trial_labels({"trial_num": np.arange(3)}, align_to="cue").tolist() == ["cue"] * 3
    with pytest.raises(InputError, match=r"center_on events \['lever9'\] have no column"):
        trial_labels(obs, center_on=["lever9"])
