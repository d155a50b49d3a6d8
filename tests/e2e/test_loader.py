"""Turns between on-demand models that cannot be loaded together (fake engines, so many
swaps take seconds): alternating clients are all served, and a model kept busy by a steady
stream of requests gives way after its batch instead of starving the other one."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import DxProcess, fake_model, start_dx

TIMEOUT = 30  # each model's startup_timeout: a starved request would fail after this


@pytest.fixture
def dx(tmp_path: Path) -> Iterator[DxProcess]:
    common = {"load": "on_demand", "startup_timeout": f"{TIMEOUT}s", "parallel": 2}
    models = {  # a budget of 1 GiB holds one of them, never both
        "alpha": fake_model(memory="600MiB", **common),
        "beta": fake_model(memory="700MiB", **common),
    }
    dx = start_dx(tmp_path, models, extra={"limits": {"memory_budget": "1GiB"}})
    yield dx
    dx.stop()


def chat(dx: DxProcess, model: str) -> str:
    """One streamed chat that lasts about 0.3 s (PAUSE: six chunks, 50 ms apart)."""
    body = {"model": model, "messages": [{"role": "user", "content": "PAUSE"}]}
    resp = httpx.post(dx.url + "/v1/chat/completions", headers=dx.auth, json=body,
                      timeout=TIMEOUT * 3)
    assert resp.status_code == 200, resp.text
    return str(resp.json()["choices"][0]["message"]["content"])


def swaps(dx: DxProcess, event: str) -> float:
    text = httpx.get(dx.url + "/metrics", headers=dx.auth).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("dx_model_swaps_total{") and f'event="{event}"' in line)


def test_alternating_clients_are_all_served_in_batches(dx: DxProcess) -> None:
    failures: list[str] = []
    served: list[str] = []

    def client(n: int) -> None:
        for i in range(4):
            model = ["alpha", "beta"][(n + i) % 2]
            try:
                assert chat(dx, model) == "Hello from the fake engine."
                served.append(model)
            except Exception as exc:  # recorded and asserted below
                failures.append(f"{model}: {exc!r}")

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT * 4)
    assert failures == []
    assert len(served) == 32
    loads = swaps(dx, "load")
    assert 2 <= loads < 32  # requests were served in batches, not one swap each
    assert swaps(dx, "evict") == loads - 1  # every load but the first made room


def test_a_busy_model_gives_way_after_its_batch(dx: DxProcess) -> None:
    chat(dx, "alpha")
    stop = threading.Event()
    alpha_served: list[float] = []

    def hammer() -> None:  # alpha is never idle: a new request as soon as one ends
        while not stop.is_set():
            chat(dx, "alpha")
            alpha_served.append(time.monotonic())

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(1)
        t0 = time.monotonic()
        assert chat(dx, "beta") == "Hello from the fake engine."
        waited = time.monotonic() - t0
        # alpha's batch (at most 3 admitted requests of 0.3 s), the swap, beta's reply.
        assert waited < 10, f"beta waited {waited:.1f} s behind a busy alpha"
    finally:
        stop.set()
        for t in threads:
            t.join(TIMEOUT * 3)
    assert alpha_served  # and the hammering clients were all served (chat asserts 200)
