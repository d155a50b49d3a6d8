"""vLLM sleep mode through DX: an idle model with `sleep_mode: true` sleeps after its
keep-alive instead of stopping, and its next requests wake it. The engine is the fake engine
speaking vLLM's dev-mode API (/sleep?level=1, /wake_up, /is_sleeping), which exits with a
crash if a request ever reaches it while it is not fully awake: every assertion that its pid
is unchanged also proves that no request was sent to a sleeping engine."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.conftest import DxProcess, fake_model, start_dx


@pytest.fixture
def dx(tmp_path: Path) -> Iterator[DxProcess]:
    models = {
        "sleepy": fake_model(engine="vllm", sleep_mode=True, load="on_demand", keep_alive="1s",
                             parallel=4, engine_args=["--wake-delay", "0.5"]),
    }
    dx = start_dx(tmp_path, models)
    yield dx
    dx.stop()


def replicas(dx: DxProcess) -> list[dict[str, Any]]:
    models = httpx.get(dx.url + "/admin/models", headers=dx.auth, timeout=30).json()["models"]
    return list(models[0]["replicas"])


def wait_for_state(dx: DxProcess, state: str, within: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        found = replicas(dx)
        if found and found[0]["state"] == state:
            return found[0]
        time.sleep(0.1)
    raise AssertionError(f"not {state} after {within} s: {replicas(dx)}")


def chat(dx: DxProcess) -> str:
    body = {"model": "sleepy", "messages": [{"role": "user", "content": "hi"}]}
    resp = httpx.post(dx.url + "/v1/chat/completions", headers=dx.auth, json=body, timeout=60)
    assert resp.status_code == 200, resp.text
    return str(resp.json()["choices"][0]["message"]["content"])


def swaps(dx: DxProcess) -> dict[str, float]:
    text = httpx.get(dx.url + "/metrics", headers=dx.auth).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith('dx_model_swaps_total{') and 'model="sleepy"' in line:
            event = line.split('event="')[1].split('"')[0]
            out[event] = float(line.rsplit(" ", 1)[1])
    return out


def test_idle_model_sleeps_and_its_next_requests_wake_it(dx: DxProcess) -> None:
    assert chat(dx) == "Hello from the fake engine."
    pid = replicas(dx)[0]["pid"]
    asleep = wait_for_state(dx, "sleeping")  # after keep_alive (1 s) idle
    assert asleep["pid"] == pid  # the engine stays up, its weights in CPU RAM
    ps = httpx.get(dx.url + "/api/ps", headers=dx.auth).json()["models"]
    assert ps == []  # nothing is loaded on a device while it sleeps
    assert swaps(dx).get("sleep") == 1 and "evict" not in swaps(dx)

    # Six clients at once while it sleeps: all wait for one wake, none reaches the engine
    # before it is awake (the fake engine would crash), all are answered.
    answers: list[str] = []
    failures: list[str] = []

    def client() -> None:
        try:
            answers.append(chat(dx))
        except Exception as exc:  # recorded and asserted below
            failures.append(repr(exc))

    t0 = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    woke_in = time.monotonic() - t0
    assert failures == [] and answers == ["Hello from the fake engine."] * 6
    assert 0.5 <= woke_in < 10  # the fake engine takes 0.5 s to wake
    awake = replicas(dx)[0]
    assert awake["pid"] == pid and awake["state"] == "ready" and psutil.pid_exists(pid)
    assert swaps(dx).get("wake") == 1
    assert swaps(dx).get("load") == 1  # one cold load in all: the wake was not a reload


def test_keep_alive_zero_stops_a_sleeping_model(dx: DxProcess) -> None:
    chat(dx)
    pid = replicas(dx)[0]["pid"]
    wait_for_state(dx, "sleeping")
    resp = httpx.post(dx.url + "/api/generate", headers=dx.auth, timeout=60,
                      json={"model": "sleepy", "keep_alive": 0})
    assert resp.status_code == 200 and resp.json()["done_reason"] == "unload"
    assert replicas(dx) == []
    deadline = time.monotonic() + 10
    while psutil.pid_exists(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not psutil.pid_exists(pid)
    assert chat(dx) == "Hello from the fake engine."  # and it loads again on demand
