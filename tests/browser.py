"""Headless Chromium driven by Selenium, for the report and viewer tests.

Debian's ``chromium`` and ``chromium-driver`` (installed by ``.ci/run``). The flags keep a
browser on a closed network quiet: no background fetches, no component updates, no QUIC.
Screenshots are kept under ``tests/artifacts/`` (ignored by git) for a look after the run.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ARTIFACTS = Path(__file__).parent / "artifacts"

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1600",
)


def _binaries() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        message = (
            "Chromium and chromedriver are needed for the browser tests: "
            "apt-get install chromium chromium-driver (.ci/run installs them)"
        )
        if os.environ.get("CI"):
            pytest.fail(message)  # CI must run them: a missing browser is a failure there
        pytest.skip(message)
    return browser, driver


def chromium(tmp_path: Path) -> Iterator[Any]:
    """A headless Chromium with a fresh profile, its console log captured (all levels).

    A generator for a test module's fixture: ``yield from chromium(tmp_path)``.
    """
    selenium = pytest.importorskip("selenium")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert selenium
    browser, driver = _binaries()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in FLAGS:
        options.add_argument(flag)
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chrome = webdriver.Chrome(options=options, service=Service(driver))
    chrome.set_page_load_timeout(30)
    try:
        yield chrome
    finally:
        chrome.quit()


def console_errors(chrome: Any) -> list[dict[str, Any]]:
    """The browser console's entries at level SEVERE since the last call."""
    return [entry for entry in chrome.get_log("browser") if entry["level"] == "SEVERE"]


def screenshot(chrome: Any, name: str) -> Path:
    """Save the page as ``tests/artifacts/<name>.png``; returns the path."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    chrome.save_screenshot(str(path))
    return path
