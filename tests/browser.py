"""A real headless Chromium for the dashboard's tests and its README screenshot: Debian's
`chromium` driven by `chromium-driver` through selenium, with a fresh profile in a temp
folder and nothing that reaches the network on its own. A missing program fails with the
command that installs it (never a skip)."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Iterator

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage")


def _program(*names: str) -> str:
    for name in names:
        path = shutil.which(name) or shutil.which(name, path="/usr/bin:/usr/lib/chromium")
        if path:
            return path
    raise AssertionError(f"{names[0]} is not installed: run scripts/test-deps (it installs Debian's "
                         f"chromium and chromium-driver)")


@contextlib.contextmanager
def chromium(profile: Path, width: int = 1400, height: int = 900) -> Iterator["object"]:
    """A selenium WebDriver on a headless Chromium whose profile lives in `profile`."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        raise AssertionError("selenium is not installed: pip install -e '.[test]'") from None
    options = webdriver.ChromeOptions()
    options.binary_location = _program("chromium", "chromium-browser")
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    service = Service(executable_path=_program("chromedriver"), log_output=str(profile) + ".driver.log")
    driver = webdriver.Chrome(options=options, service=service)
    try:
        driver.set_page_load_timeout(20)
        yield driver
    finally:
        driver.quit()
