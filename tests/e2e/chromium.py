"""Debian's Chromium, headless, driven through chromedriver by Selenium: the browser the e2e
tests use. Nothing is downloaded: the browser and its driver are ``/usr/bin/chromium`` and
``/usr/bin/chromedriver`` (``.ci/run`` installs the packages), and Selenium Manager is kept
offline. Without them the tests that need a browser are skipped, saying so.

Screenshots go under the test's tmp dir, and also into the directory named by
``$BOOKINFO_SCREENSHOTS`` (``make screenshots`` refreshes ``docs/images/``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOTS_ENV = "BOOKINFO_SCREENSHOTS"
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
    "--hide-scrollbars",
    "--window-size=1100,820",
)


def chromium(profile: Path) -> Iterator[Any]:
    """A headless Chromium with a profile in ``profile``, quit at the end; skips the test when
    the browser or its driver is not installed."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(p)]
    if missing:
        pytest.skip(
            f"{' and '.join(missing)} not installed: apt-get install chromium chromium-driver "
            "(.ci/run installs them)"
        )
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never fetch a browser or driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


class Shots:
    """Screenshots, numbered in the order taken: ``<prefix>-NN-<name>.png``."""

    def __init__(self, folder: Path, prefix: str = "bookinfo") -> None:
        self.folder = folder
        self.prefix = prefix
        self.extra = os.environ.get(SCREENSHOTS_ENV)
        self.taken: list[Path] = []

    def take(self, driver: Any, name: str) -> Path:
        path = self.folder / f"{self.prefix}-{len(self.taken) + 1:02d}-{name}.png"
        assert driver.save_screenshot(str(path)), f"no screenshot {path}"
        self.taken.append(path)
        if self.extra:
            os.makedirs(self.extra, exist_ok=True)
            shutil.copyfile(path, Path(self.extra) / path.name)
        return path
