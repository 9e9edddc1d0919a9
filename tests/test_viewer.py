"""``neurobatch view``: a real server process, its token, and headless Chromium driving it.

The viewer runs as ``python -m neurobatch view OUT`` in its own process; requests without
the token are refused with 403 (page, scripts, websocket); Chromium loads the page with no
console error, and picking an item, a grouping, a unit or a lag changes what is drawn, as
checked against the stores the run wrote. Screenshots go to ``tests/artifacts/``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from distributed import Client

import browser
from browser import console_errors, screenshot
from neurobatch.engine.viewer import VIEW_POINTS
from neurobatch.io.trials_store import open_trials
from neurobatch.io.zarr import open_dataset
from runs import run_filter_demo, run_sta_demo


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[Any]:
    yield from browser.chromium(tmp_path)


def _serve(out: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """``neurobatch view OUT`` in its own process; its URL once it listens."""
    process = subprocess.Popen(
        [sys.executable, "-m", "neurobatch", "view", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("neurobatch view: open http://127.0.0.1:"), line + (
            process.stderr.read() if process.stderr and process.poll() else ""
        )
        yield line.split()[3], process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="module")
def viewer(photometry_reference: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    yield from _serve(photometry_reference)


@pytest.fixture(scope="module")
def sta_output(local_client: Client, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run_sta_demo(tmp_path_factory.mktemp("sta-view"), local_client)


def _status(url: str, headers: dict[str, str] | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {})) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def _model(chromium: Any, name: str, expression: str) -> Any:
    """``expression`` of the Bokeh model called ``name`` (``m``) in the page's document."""
    return chromium.execute_script(
        "const d = window.Bokeh && Bokeh.documents[0];"
        f"const m = d && d.get_model_by_name({json.dumps(name)});"
        f"return m ? {expression} : null;"
    )


def _until(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _points(chromium: Any) -> Any:
    return _model(chromium, "trace-source", "Array.from(m.data.t).length")


def test_every_request_needs_the_token(viewer: tuple[str, subprocess.Popen[str]]) -> None:
    url, _ = viewer
    base, token = url.split("/?token=")
    assert base.startswith("http://127.0.0.1:")
    assert _status(url) == 200
    assert _status(f"{base}/") == 403
    assert _status(f"{base}/?token=not-{token}") == 403
    assert _status(f"{base}/static/js/bokeh.min.js") == 403
    assert _status(f"{base}/ws", {"Upgrade": "websocket", "Connection": "Upgrade"}) == 403
    # the page's own requests carry the cookie its answer set
    with urllib.request.urlopen(url) as answer:
        cookie = answer.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert _status(f"{base}/static/js/bokeh.min.js", {"Cookie": cookie.split(";")[0]}) == 200


def test_viewer_shows_an_item_and_follows_the_picks(
    viewer: tuple[str, subprocess.Popen[str]], photometry_reference: Path, chromium: Any
) -> None:
    url, _ = viewer
    chromium.get(url)
    _until(lambda: _points(chromium), "the first item's trace")
    assert _model(chromium, "trace", "m.title.text") == "experiment_001: dff (18,000 samples)"
    # reduced on the server: about VIEW_POINTS points, spanning the trace's extremes
    stored = open_dataset(str(photometry_reference / "items/experiment_001/preprocess"))
    dff = stored["dff"].values
    lo = np.asarray(_model(chromium, "trace-source", "Array.from(m.data.lo)"))
    hi = np.asarray(_model(chromium, "trace-source", "Array.from(m.data.hi)"))
    assert lo.size <= VIEW_POINTS // 2 < dff.size
    assert np.all(lo <= hi)
    assert lo.min() == pytest.approx(dff.min()) and hi.max() == pytest.approx(dff.max())
    assert console_errors(chromium) == []
    screenshot(chromium, "viewer")

    # another item: its title, its trace and its trials
    _model(chromium, "item", "(m.value = 'experiment_002', true)")
    _until(
        lambda: _model(chromium, "trace", "m.title.text").startswith("experiment_002"),
        "the second item",
    )
    trials = open_trials(str(photometry_reference / "items/experiment_002/trials"))
    _until(
        lambda: _model(chromium, "heat", "m.data.dh[0]") == trials.sizes["trial"],
        "the second item's trials",
    )
    # group the trial means by an obs column: one line per value, with its count
    _model(chromium, "group", "(m.value = 'lever1', true)")
    labels = _until(
        lambda: _model(
            chromium,
            "means-source",
            "m.data.label.length && "
            "m.data.label.join('|').includes('(n=') && "
            "!m.data.label.join('|').includes('trial_cue') && m.data.label",
        ),
        "means grouped by lever1",
    )
    offsets = trials["lever1"].values.astype(str)
    expected = sorted(f"{v} (n={int((offsets == v).sum())})" for v in set(offsets.tolist()))
    assert sorted(labels) == expected

    # zooming in asks the server for a finer envelope of the window
    _model(chromium, "trace", "(m.x_range.start = 10.0, m.x_range.end = 15.0, true)")
    t = _until(
        lambda: (
            (v := _model(chromium, "trace-source", "Array.from(m.data.t)")) and v[0] >= 9.9 and v
        ),
        "the zoomed window",
    )
    # 5 s at 100 Hz and a sample either side, whole: fewer than VIEW_POINTS // 2 bins
    time_s = stored["time"].values
    inside = np.flatnonzero((time_s >= 10.0) & (time_s <= 15.0))
    np.testing.assert_array_equal(t, time_s[inside[0] - 1 : inside[-1] + 2])
    assert console_errors(chromium) == []
    screenshot(chromium, "viewer-item")


def test_viewer_scrubs_a_units_sta_over_the_lags(sta_output: Path, chromium: Any) -> None:
    sta = open_dataset(str(sta_output / "items" / "movie" / "sta"))
    for url, process in _serve(sta_output):
        chromium.get(url)
        _until(lambda: _model(chromium, "sta-source", "m.data.image.length"), "the STA")
        units = [str(u) for u in sta["unit"].values]
        assert _model(chromium, "unit", "m.options") == units
        assert _model(chromium, "lag", "m.end") == sta.sizes["lag"] - 1

        def shown() -> np.ndarray:
            rows = _model(chromium, "sta-source", "Array.from(m.data.image[0]).map(Number)")
            ny, nx = sta.sizes["y"], sta.sizes["x"]
            return np.asarray(rows, dtype=np.float64).reshape(ny, nx)[::-1]

        np.testing.assert_allclose(shown(), sta["sta"].isel(unit=0, lag=0).values, rtol=1e-6)
        _model(chromium, "unit", f"(m.value = {json.dumps(units[2])}, true)")
        _model(chromium, "lag", "(m.value = 3, true)")
        expected = sta["sta"].isel(unit=2, lag=3).values
        _until(lambda e=expected: np.allclose(shown(), e, rtol=1e-6), "unit 2 at lag 3")
        assert _model(chromium, "sta", "m.title.text").startswith(f"unit {units[2]}, lag 3")
        assert console_errors(chromium) == []
        screenshot(chromium, "viewer-sta")
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0


def test_viewer_shows_a_filtered_channel(
    local_client: Client, tmp_path_factory: pytest.TempPathFactory, chromium: Any
) -> None:
    out = run_filter_demo(tmp_path_factory.mktemp("filter-view"), local_client)
    filtered = open_dataset(str(out / "items" / "recording_001" / "filter"))
    labels = [str(c) for c in filtered["channel"].values]
    for url, _ in _serve(out):
        chromium.get(url)
        _until(lambda: _points(chromium), "the first channel")
        assert _model(chromium, "channel", "m.options") == labels
        _model(chromium, "channel", f"(m.value = {json.dumps(labels[5])}, true)")
        _until(
            lambda: _model(chromium, "trace", "m.title.text").endswith(
                f"channel {labels[5]} (60,000 samples)"
            ),
            "channel 5",
        )
        values = filtered["traces"].isel(channel=5).values
        lo = np.asarray(_model(chromium, "trace-source", "Array.from(m.data.lo)"))
        hi = np.asarray(_model(chromium, "trace-source", "Array.from(m.data.hi)"))
        assert lo.size == VIEW_POINTS // 2
        assert lo.min() == pytest.approx(values.min()) and hi.max() == pytest.approx(values.max())
        assert console_errors(chromium) == []
        screenshot(chromium, "viewer-filter")
