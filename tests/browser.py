"""A real browser for the console's tests: Debian's headless Chromium through Debian's
chromedriver (scripts/setup installs both), driven by Selenium. Missing ones fail the test;
never a skip."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


def browser(width: int, height: int) -> Any:
    """Headless Debian Chromium through Debian's chromedriver; missing ones fail the test."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.exists():
            pytest.fail(f"{path} is missing: run scripts/setup (apt-get install chromium "
                        "chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def console_errors(driver: Any) -> list[dict[str, Any]]:
    """The browser console's errors (CSP violations, script errors, failed loads), less one
    race the page expects: the followed replica's log answering 404 because the replica went
    away (unloaded) between the page's two requests of one poll."""
    return [
        e
        for e in driver.get_log("browser")
        if e["level"] == "SEVERE"
        and not (e.get("source") == "network" and "/log?lines=" in e["message"]
                 and "status of 404" in e["message"])
    ]
