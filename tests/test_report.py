"""``report.html``: written by a real run and by ``neurobatch report``, read in Chromium.

The page is checked against what the run wrote (items.parquet, trials.zarr, the pipeline
file in processing.json), parsed as HTML for anything it would fetch, and loaded in a
headless Chromium: no console error, every image decoded, the group-by menu switches the
figure shown. Screenshots go to ``tests/artifacts/``.
"""

from __future__ import annotations

import base64
import html
import html.parser
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from distributed import Client

import browser
from browser import console_errors, screenshot
from neurobatch import Pipeline
from neurobatch.config import load_config
from neurobatch.engine import report
from neurobatch.engine.report import _group_stats, write_report
from neurobatch.io.trials_store import open_trials
from runs import run_sta_demo


class _Page(html.parser.HTMLParser):
    """Every tag with its attributes, and the text of the tags."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def _external(page: _Page) -> list[str]:
    """Every reference the page would fetch: anything but inline data and in-page anchors."""
    refs = []
    for tag, attrs in page.tags:
        for key in ("src", "href", "srcset", "poster", "data", "action"):
            value = attrs.get(key)
            if value and not value.startswith(("data:", "#")):
                refs.append(f"<{tag} {key}={value!r}>")
        if tag == "link" or (tag == "script" and attrs.get("src")):
            refs.append(f"<{tag} {attrs}>")
    return refs


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[Any]:
    yield from browser.chromium(tmp_path)


@pytest.fixture(scope="module")
def drawn_run(photometry_demo: Path, local_client: Client, tmp_path_factory: Any) -> Path:
    """The photometry demo run with PNG dashboards and one item that fails."""
    folder = tmp_path_factory.mktemp("report-run")
    data = folder / "data"
    shutil.copytree(photometry_demo.parent / "data", data)
    (data / "experiment_009.csv").write_text("time,signal\n0.0,1.0\n")  # a broken input
    config = load_config(photometry_demo)
    config = config.model_copy(
        update={
            "input": config.input.model_copy(update={"url": str(data)}),
            "output": config.output.model_copy(
                update={"url": str(folder / "out"), "dashboards": "png"}
            ),
        }
    )
    Pipeline(config).run(client=local_client)
    return folder / "out"


def test_a_run_writes_its_report_and_it_holds_the_run(drawn_run: Path) -> None:
    report = drawn_run / "report.html"
    assert report.is_file()
    page = _parse(report)
    assert _external(page) == []
    items = pd.read_parquet(drawn_run / "items.parquet")
    rows = [attrs for tag, attrs in page.tags if tag == "tr"]
    assert len(rows) == len(items) + 1  # a header and a row per item
    text = "".join(page.text)
    failed = items[items["status"] == "failed"]
    assert list(failed["item_id"]) == ["experiment_009"]
    assert failed["error"].iloc[0].splitlines()[0][:80] in text
    for row in items[items["status"] == "done"].itertuples():
        assert f"{row.fit_r_squared:.3f}" in text and str(row.item_id) in text
    # every drawn dashboard is embedded byte for byte
    images = [attrs["src"] for tag, attrs in page.tags if tag == "img"]
    embedded = {base64.b64decode(src.split(",", 1)[1]) for src in images if src}
    for png in (drawn_run / "dashboards").glob("*.png"):
        assert png.read_bytes() in embedded, png.name
    # the pipeline file, as the run recorded it
    block = re.search(r'<pre id="pipeline">(.*?)</pre>', report.read_text(), re.DOTALL)
    assert block is not None
    pipeline = yaml.safe_load(html.unescape(block.group(1)))
    assert pipeline["trials"]["center_on"] == ["lever1", "lever2"]
    # the group-by menu: trial type first, then obs columns
    options = [attrs["value"] for tag, attrs in page.tags if tag == "option"]
    assert options[0] == "trial type" and "item_id" in options
    assert "subject" not in options or "age" not in options  # one partition drawn once


@pytest.mark.parametrize(("rows", "chunk"), [(1, 7), (7, 5), (3, 1000), (10_000, 7)])
def test_group_means_are_computed_block_by_block(
    drawn_run: Path, rows: int, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    trials = open_trials(str(drawn_run / "trials.zarr"))
    data = trials["dff"].transpose("trial", "rel_time").data.rechunk({0: chunk})
    # blocks of ``rows`` trials, across the stored chunks: uneven, tiny, whole
    monkeypatch.setattr(report, "TRIALS_BATCH_MEMORY", rows * 8 * data.shape[1])
    labels = np.asarray(trials["item_id"].values).astype(str)
    stats = _group_stats(data, {"item": labels})["item"]
    whole = trials["dff"].values.astype(np.float64)
    for label, (mean, sem, n) in stats.items():
        rows = whole[labels == label]
        assert n == rows.shape[0]
        np.testing.assert_allclose(mean, np.nanmean(rows, axis=0), rtol=1e-9, atol=1e-12)
        reference = np.nanstd(rows, axis=0, ddof=1) / np.sqrt(np.isfinite(rows).sum(axis=0))
        np.testing.assert_allclose(sem, reference, rtol=1e-6, atol=1e-12)


def test_report_command_draws_what_the_run_did_not(
    photometry_reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    shutil.copytree(photometry_reference, out)
    assert not (out / "dashboards").exists()
    before = _parse(out / "report.html")  # the run's own, not drawn
    assert not [a for t, a in before.tags if t == "img" and " of experiment_" in a["alt"]]
    done = subprocess.run(
        [sys.executable, "-m", "neurobatch", "report", str(out), "--items", "2"],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"report written to {out}/report.html"
    page = _parse(out / "report.html")
    alts = [a.get("alt") for t, a in page.tags if t == "img"]
    assert [alt for alt in alts if alt and " of experiment_" in alt] == [
        "experiment_001.png of experiment_001",
        "experiment_002.png of experiment_002",
    ]
    assert "Figures of the first 2 of 3 items" in "".join(page.text)
    assert _external(page) == []


def test_report_of_a_folder_that_is_no_output(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "neurobatch", "report", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 1
    assert "no items.parquet in" in done.stderr and "Traceback" not in done.stderr
    with pytest.raises(ValueError, match="max_items must be 0 or more"):
        write_report(str(tmp_path), max_items=-1)


def test_report_off_and_a_failing_report_does_not_fail_the_run(
    photometry_demo: Path, local_client: Client, tmp_path: Path, caplog: Any
) -> None:
    config = load_config(photometry_demo)
    off = config.output.model_copy(update={"url": str(tmp_path / "off"), "report": False})
    Pipeline(config.model_copy(update={"output": off})).run(client=local_client)
    assert (tmp_path / "off" / "items.parquet").is_file()
    assert not (tmp_path / "off" / "report.html").exists()
    # a report.html that cannot be written (a folder in its place): a warning, the run is done
    blocked = tmp_path / "blocked"
    (blocked / "report.html" / "x").mkdir(parents=True)
    on = config.output.model_copy(update={"url": str(blocked)})
    summary = Pipeline(config.model_copy(update={"output": on})).run(client=local_client)
    assert (summary.items["status"] == "done").all()
    assert any("could not write the report" in r.getMessage() for r in caplog.records)


def test_report_in_chromium(drawn_run: Path, chromium: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    chromium.get((drawn_run / "report.html").as_uri())
    assert chromium.title == "neurobatch report: neurobatch-demo"
    assert console_errors(chromium) == []
    images = chromium.find_elements(By.TAG_NAME, "img")
    assert images
    decoded = chromium.execute_script(
        "return Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)"
    )
    assert all(decoded), decoded
    rows = chromium.find_elements(By.CSS_SELECTOR, "#items tbody tr")
    assert len(rows) == len(pd.read_parquet(drawn_run / "items.parquet"))
    screenshot(chromium, "report")
    # the menu shows one grouping at a time
    visible = chromium.execute_script(
        "return Array.from(document.querySelectorAll('.grouping'))"
        ".filter(d => !d.hidden).map(d => d.dataset.group)"
    )
    assert visible == ["trial type"]
    Select(chromium.find_element(By.ID, "group-by")).select_by_value("item_id")
    visible = chromium.execute_script(
        "return Array.from(document.querySelectorAll('.grouping'))"
        ".filter(d => !d.hidden).map(d => d.dataset.group)"
    )
    assert visible == ["item_id"]
    # an item's section opens from its link in the table
    chromium.find_element(By.CSS_SELECTOR, "#items a[href='#item-experiment_002']").click()
    section = chromium.find_element(By.ID, "item-experiment_002")
    section.find_element(By.TAG_NAME, "summary").click()
    assert section.get_attribute("open") is not None
    assert section.find_element(By.TAG_NAME, "img").is_displayed()
    screenshot(chromium, "report-item")
    assert console_errors(chromium) == []


def test_report_command_draws_sta_grids_and_strfs(
    local_client: Client, tmp_path_factory: pytest.TempPathFactory
) -> None:
    out = run_sta_demo(tmp_path_factory.mktemp("sta-report"), local_client)
    write_report(str(out))
    page = _parse(out / "report.html")
    alts = [a.get("alt") for t, a in page.tags if t == "img"]
    assert "movie.sta.png of movie" in alts and "movie.strf.png of movie" in alts
    assert "No combined trials in this output." in "".join(page.text)
    assert _external(page) == []


def test_thousands_of_items_get_a_row_each_and_a_bounded_number_of_sections(
    tmp_path: Path,
) -> None:
    n = 3000
    items = pd.DataFrame(
        {
            "item_id": [f"item_{i:05d}" for i in range(n)],
            "status": ["done"] * (n - 1) + ["failed"],
            "error": [None] * (n - 1) + ["InputError: '<script>' is no column"],
            "n_trials": np.arange(n),
            "fit_r_squared": np.linspace(0.5, 1.0, n),
        }
    )
    items.to_parquet(tmp_path / "items.parquet")
    write_report(str(tmp_path), max_items=7, draw=False)
    page = _parse(tmp_path / "report.html")
    assert sum(1 for tag, _ in page.tags if tag == "tr") == n + 1
    assert sum(1 for tag, _ in page.tags if tag == "details") == 7
    links = [a["href"] for t, a in page.tags if t == "a"]
    assert links == [f"#item-item_{i:05d}" for i in range(7)]
    assert "Figures of the first 7 of 3000 items" in "".join(page.text)
    # text from the outputs is escaped: no script but the page's own
    assert sum(1 for tag, _ in page.tags if tag == "script") == 1
    assert (tmp_path / "report.html").stat().st_size < 2_000_000
