"""The console (`/ui`) against real llama.cpp serving SmolLM2, in Debian's headless Chromium:
the model shows ready with its cores, the replica's log is llama-server's own output, the
playground streams a real reply, and Unload / Load change the state."""

from __future__ import annotations

import pytest

from tests.browser import browser, console_errors
from tests.conftest import DxProcess

pytestmark = pytest.mark.integration


def test_console_real_engine(dx_real: DxProcess) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    dx = dx_real
    driver = browser(1280, 900)
    try:
        wait = WebDriverWait(driver, 60, ignored_exceptions=[StaleElementReferenceException])

        def click(css: str) -> None:
            """Clicks, again if the poll re-drew the row between finding and clicking."""
            wait.until(lambda _: driver.find_element(By.CSS_SELECTOR, css).click() or True)

        def state() -> str:
            cells = driver.find_elements(By.CSS_SELECTOR, "#models td[data-label=state]")
            return (cells[0].get_attribute("data-state") or "") if cells else ""

        driver.get(dx.url + "/ui")
        driver.find_element(By.ID, "key").send_keys(dx.key)
        driver.find_element(By.ID, "connect").click()
        wait.until(lambda _: state() == "ready")
        wait.until(lambda _: "cpus=" in driver.find_element(By.CSS_SELECTOR, "#models tr.replica")
                   .text)
        assert "smollm2#0" in driver.find_element(By.CSS_SELECTOR, "#models tr.replica").text

        click("#models tr.replica")  # llama-server's own output, not DX's
        wait.until(ec.text_to_be_present_in_element((By.ID, "log"), "llama"))

        driver.find_element(By.ID, "play-max").clear()
        driver.find_element(By.ID, "play-max").send_keys("24")
        driver.find_element(By.ID, "play-prompt").send_keys("What is the capital of France?")
        driver.find_element(By.ID, "play-send").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "play-stats"), "done"))
        assert driver.find_element(By.ID, "play-out").text.strip()
        chunks = int(driver.find_element(By.ID, "play-stats").text.split(" · ")[1].split()[0])
        assert 1 < chunks <= 24

        click("button[data-action=unload]")
        wait.until(lambda _: state() == "not loaded")
        click("button[data-action=load]")
        wait.until(lambda _: state() == "ready")

        severe = console_errors(driver)
        assert not severe, severe
    finally:
        driver.quit()
