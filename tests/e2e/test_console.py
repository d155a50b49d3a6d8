"""The console (`/ui`) in a real browser: Debian's headless Chromium, driven by Selenium through
Debian's chromedriver, against a real `dx serve` in front of the fake engine. It enters the
admin key, sees the model ready, follows the engine's log, unloads and loads the model,
reloads the config, and keeps screenshots at a desktop and a phone width. Without Chromium the
test fails (scripts/setup installs it); it never skips.

Plus, over plain HTTP: the page's headers (a strict CSP), and a non-admin key refused."""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dxproxy.keys.store import create_key
from tests.browser import browser, console_errors
from tests.conftest import DxProcess, fake_model, start_dx

# Screenshots go here (CI keeps them as artifacts); by default under pytest's tmp_path.
ARTIFACTS = os.environ.get("DX_TEST_ARTIFACTS")


@pytest.fixture
def dx(tmp_path: Path) -> Iterator[DxProcess]:
    dx = start_dx(tmp_path, {"fake": fake_model()})
    yield dx
    dx.stop()


def user_key(dx: DxProcess) -> str:
    """A non-admin key, once the running server has read it."""
    key, _ = create_key(dx.state_dir, "alice")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        r = httpx.get(dx.url + "/api/tags", headers={"Authorization": f"Bearer {key}"})
        if r.status_code == 200:
            return key
        time.sleep(0.2)
    pytest.fail("the server did not read the new key within 15 s")


def test_page_headers_and_admin_only(dx: DxProcess) -> None:
    # The page and its two files are open (they hold no data), with a strict CSP.
    page = httpx.get(dx.url + "/ui")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    # No inline script or style: every script has a src, no on* handler, no style attribute.
    assert re.findall(r"<script[^>]*>", page.text) == ['<script src="/ui/console.js" defer>']
    assert not re.search(r"\son[a-z]+=|<style|\sstyle=", page.text)
    assert dx.key not in page.text
    for name, kind in (("console.js", "text/javascript"), ("console.css", "text/css")):
        r = httpx.get(f"{dx.url}/ui/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind)
        assert r.headers["content-security-policy"] == csp
    # The door's guards apply to the page as to any path: a DNS-rebinding Host, a foreign Origin.
    assert httpx.get(dx.url + "/ui", headers={"Host": "evil.example"}).status_code == 403
    foreign = httpx.post(dx.url + "/admin/reload",
                         headers={**dx.auth, "Origin": "https://evil.example"})
    assert foreign.status_code == 403 and "origin is not allowed" in foreign.text
    # What the page reads and does: admin keys only.
    user = {"Authorization": f"Bearer {user_key(dx)}"}
    admin = dx.auth
    calls = [("GET", "/admin/models?lines=0"), ("GET", "/admin/reload"),
             ("GET", "/admin/replicas/fake%230/log"), ("POST", "/admin/models/fake/unload"),
             ("POST", "/admin/models/fake/load"), ("POST", "/admin/reload"), ("GET", "/metrics"),
             ("GET", "/admin/keys"), ("POST", "/admin/keys/alice/revoke")]
    for method, path in calls:
        assert httpx.request(method, dx.url + path).status_code == 401, path
        refused = httpx.request(method, dx.url + path, headers=user)
        assert refused.status_code == 403, path
        assert "not an admin key" in refused.text
    listed = httpx.get(dx.url + "/admin/keys", headers=admin).json()["keys"]
    assert [k["name"] for k in listed] == ["alice"] and "digest" not in listed[0]
    assert user["Authorization"].split()[1] not in str(listed)
    log = httpx.get(dx.url + "/admin/replicas/fake%230/log", headers=admin).json()
    assert log["replica"] == "fake#0" and any("fake engine" in line for line in log["output"])
    assert httpx.get(dx.url + "/admin/replicas/nope%230/log", headers=admin).status_code == 404
    missing = httpx.post(dx.url + "/admin/models/nope/load", headers=admin)
    assert missing.status_code == 404


def test_console_in_chromium(dx: DxProcess, tmp_path: Path) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    shots = Path(ARTIFACTS) if ARTIFACTS else tmp_path / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    alice = user_key(dx)
    driver = browser(1280, 900)
    try:
        wait = WebDriverWait(driver, 30, ignored_exceptions=[StaleElementReferenceException])

        def click(css: str) -> None:
            """Clicks, again if the poll re-drew the row between finding and clicking."""
            wait.until(lambda _: driver.find_element(By.CSS_SELECTOR, css).click() or True)

        def state() -> str:
            cells = driver.find_elements(By.CSS_SELECTOR, "#models td[data-label=state]")
            return cells[0].get_attribute("data-state") or "" if cells else ""

        def events() -> str:
            return str(driver.find_element(By.ID, "events").text)

        driver.get(dx.url + "/ui")
        # A wrong key is refused and the login stays.
        driver.find_element(By.ID, "key").send_keys("not-a-key")
        driver.find_element(By.ID, "connect").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "login-error"), "401"))
        # So is a valid key that is not an admin key.
        driver.find_element(By.ID, "key").clear()
        driver.find_element(By.ID, "key").send_keys(alice)
        driver.find_element(By.ID, "connect").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "login-error"), "403"))
        assert "not an admin key" in driver.find_element(By.ID, "login-error").text
        assert driver.find_element(By.ID, "console").get_attribute("hidden") is not None
        driver.get_log("browser")  # the refused keys' 401 and 403 are expected: drop them
        assert driver.execute_script("return sessionStorage.getItem('dx-console-key')") is None

        driver.find_element(By.ID, "key").clear()
        driver.find_element(By.ID, "key").send_keys(dx.key)
        driver.find_element(By.ID, "connect").click()
        wait.until(lambda _: state() == "ready")
        assert dx.key not in driver.current_url
        stored = driver.execute_script("return sessionStorage.getItem('dx-console-key')")
        assert stored == dx.key
        wait.until(lambda _: "0/1" in driver.find_element(By.CSS_SELECTOR, "#models tr.replica")
                   .text)  # slots in use / capacity
        assert "fake#0" in driver.find_element(By.CSS_SELECTOR, "#models tr.replica").text

        # The engine's log, followed.
        click("#models tr.replica")
        wait.until(ec.text_to_be_present_in_element((By.ID, "log"), "fake engine starting"))
        assert driver.find_element(By.ID, "log-title").text == "fake#0"
        # A line the engine prints now shows up live, and its request fills the slot.
        body = {"model": "fake", "messages": [{"role": "user", "content": "BUSY please"}],
                "stream": True}  # the fake engine stalls a stream 4 s, saying so
        busy = threading.Thread(target=httpx.post, args=(dx.url + "/api/chat",),
                                kwargs={"json": body, "headers": dx.auth, "timeout": 30})
        busy.start()
        wait.until(ec.text_to_be_present_in_element((By.ID, "log"), "busy for 4 s (as asked)"))
        wait.until(ec.text_to_be_present_in_element(
            (By.CSS_SELECTOR, "#models td[data-label=slots]"), "1/1"))
        busy.join()

        # The playground streams a reply from the model, with the admin key.
        driver.find_element(By.ID, "play-prompt").send_keys("SLOW hello")
        driver.find_element(By.ID, "play-send").click()
        wait.until(lambda _: driver.find_element(By.ID, "play-out").text.startswith("Hello from"))
        wait.until(ec.text_to_be_present_in_element((By.ID, "play-stats"), "done"))
        streamed = driver.find_element(By.ID, "play-out").text
        assert streamed == "Hello from the fake engine." * 34
        chunks = int(driver.find_element(By.ID, "play-stats").text.split(" · ")[1].split()[0])
        assert chunks == 6 * 34  # one per token
        # It streamed: the first token came long before the end (the engine takes about 4 s).
        stats = driver.find_element(By.ID, "play-stats").text
        first, total = re.findall(r"([\d.]+) s", stats)
        assert float(first) < float(total) - 2, stats

        # Unload: the state changes, the event is listed; Load brings it back.
        assert not driver.find_elements(By.CSS_SELECTOR, "button[data-action=sleep]")  # llamacpp
        click("button[data-action=unload]")
        wait.until(lambda _: state() == "not loaded")
        # The event is listed when the action's answer comes, which may be after a poll has
        # already shown the new state.
        wait.until(lambda _: "fake:latest: unload done" in events())
        click("button[data-action=load]")
        wait.until(lambda _: state() == "ready")
        wait.until(lambda _: "fake:latest: load done" in events())

        # Reload the config: the result shows.
        driver.find_element(By.ID, "reload").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "reload-status"), "1 applied"))
        wait.until(lambda _: "config reloaded" in events())
        driver.save_screenshot(str(shots / "console-desktop.png"))

        # Revoke a key: two clicks; the server refuses it at once.
        revoke = "#keys tr[data-key=alice] button[data-action=revoke]"
        click(revoke)
        assert driver.find_element(By.CSS_SELECTOR, revoke).text == "Really revoke?"
        click(revoke)
        wait.until(lambda _: not driver.find_elements(By.CSS_SELECTOR, "#keys tr[data-key=alice]"))
        wait.until(lambda _: "key alice: revoked" in events())
        deadline = time.monotonic() + 10
        while httpx.get(dx.url + "/api/tags", headers={"Authorization": f"Bearer {alice}"}
                        ).status_code != 401:
            assert time.monotonic() < deadline, "the revoked key still works after 10 s"
            time.sleep(0.2)

        # A phone's width: the table folds into labelled rows; nothing overflows sideways.
        driver.set_window_size(390, 844)
        time.sleep(0.5)
        overflow = driver.execute_script(
            "return document.documentElement.scrollWidth > window.innerWidth + 1")
        assert not overflow
        driver.execute_script("window.scrollTo(0, 0)")
        driver.save_screenshot(str(shots / "console-phone.png"))

        # Every poll went through (an error there shows in the status line instead).
        assert driver.find_element(By.ID, "status").text.startswith("live")
        # No CSP violation or script error in the browser's console.
        severe = console_errors(driver)
        assert not severe, severe
    finally:
        driver.quit()


def test_console_sleep_and_wake(tmp_path: Path) -> None:
    """vLLM sleep mode (the fake engine speaks its dev API): Sleep, then Wake, from the page."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    model = fake_model(engine="vllm", sleep_mode=True, engine_args=["--wake-delay", "0.5"])
    dx = start_dx(tmp_path, {"sleepy": model})
    driver = browser(1280, 900)
    try:
        wait = WebDriverWait(driver, 30, ignored_exceptions=[StaleElementReferenceException])

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
        click("button[data-action=sleep]")
        wait.until(lambda _: state() == "sleeping")
        # The events come with the action's answer and the next poll, maybe after the state.
        wait.until(lambda _: all(e in driver.find_element(By.ID, "events").text
                                 for e in ("sleepy:latest: sleep done", "ready → sleeping")))
        wait.until(lambda _: driver.find_element(By.CSS_SELECTOR, "button[data-action=load]")
                   .text == "Wake")
        click("button[data-action=load]")
        wait.until(lambda _: state() == "ready")
        # Through the API: it sleeps again; asleep already, a second Sleep is refused, saying why.
        r = httpx.post(dx.url + "/admin/models/sleepy/sleep", headers=dx.auth)
        assert r.status_code == 200
        r = httpx.post(dx.url + "/admin/models/sleepy/sleep", headers=dx.auth)
        assert r.status_code == 409 and "cannot sleep now" in r.text
        severe = console_errors(driver)
        assert not severe, severe
    finally:
        driver.quit()
        dx.stop()
