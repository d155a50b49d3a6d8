"""On-demand models with the real llama-server: SmolLM2-135M and Gemma 3 270M under a memory
budget that holds one of them, swapped as requests alternate; keep-alive expiry; Ollama's
load and unload requests."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import psutil
import pytest

from tests.conftest import DxProcess, gemma_path, smollm2_path, start_dx

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def dx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DxProcess]:
    common = {"engine": "llamacpp", "context": 1024, "parallel": 2, "load": "on_demand"}
    models = {
        # The explicit sizes make the budget exact: 1 GiB holds one of them, not both.
        "smollm2": {**common, "model": str(smollm2_path()), "memory": "600MiB"},
        "gemma3": {**common, "model": str(gemma_path()), "memory": "700MiB"},
        "brief": {**common, "model": str(smollm2_path()), "memory": "100MiB",
                  "keep_alive": "2s"},
    }
    dx = start_dx(tmp_path_factory.mktemp("on-demand"), models, wait=60,
                  extra={"limits": {"memory_budget": "1GiB"}})
    yield dx
    dx.stop()


def running(dx: DxProcess) -> dict[str, list[int]]:
    models = httpx.get(dx.url + "/admin/models", headers=dx.auth, timeout=30).json()["models"]
    return {m["name"].split(":")[0]: [r["pid"] for r in m["replicas"]] for m in models
            if m["replicas"]}


def first_token(dx: DxProcess, model: str) -> tuple[float, str]:
    """Seconds to the first content of a streamed Ollama chat, and the whole text."""
    t0 = time.monotonic()
    first, text = None, []
    body = {"model": model, "messages": [{"role": "user", "content": "Say hello."}],
            "options": {"num_predict": 8, "temperature": 0}}
    with httpx.stream("POST", dx.url + "/api/chat", headers=dx.auth, json=body,
                      timeout=120) as resp:
        assert resp.status_code == 200, resp.read()
        for line in resp.iter_lines():
            if not line:
                continue
            part = json.loads(line)
            assert "error" not in part, part
            if part["message"]["content"] and first is None:
                first = time.monotonic() - t0
            text.append(part["message"]["content"])
    assert first is not None
    return first, "".join(text)


def test_nothing_runs_before_its_first_request(dx: DxProcess) -> None:
    assert running(dx) == {}
    ready = httpx.get(dx.url + "/ready")
    assert ready.status_code == 200  # on-demand models are not waited for
    assert "smollm2:latest" in [m["name"] for m in
                                httpx.get(dx.url + "/api/tags", headers=dx.auth).json()["models"]]
    swaps = httpx.get(dx.url + "/metrics", headers=dx.auth).text
    assert "dx_model_swaps_total" not in swaps or 'event="evict"' not in swaps


def test_alternating_models_swap_within_the_budget_and_every_request_succeeds(
    dx: DxProcess,
) -> None:
    swaps: dict[str, list[float]] = {"smollm2": [], "gemma3": []}
    for model in ["smollm2", "gemma3", "smollm2", "gemma3"]:
        seconds, text = first_token(dx, model)
        swaps[model].append(seconds)
        assert text
        assert list(running(dx)) == [model]  # the other was unloaded to make room
    print("cold swap to first token:",
          {m: [f"{s:.2f} s" for s in v] for m, v in swaps.items()})
    # Now 4 clients at once, alternating: each request waits for its model's turn.
    failures: list[str] = []
    done = []

    def client(n: int) -> None:
        for i in range(3):
            model = ["smollm2", "gemma3"][(n + i) % 2]
            try:
                first_token(dx, model)
                done.append(model)
            except Exception as exc:  # recorded and asserted below
                failures.append(f"{model}: {exc}")

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert failures == [] and len(done) == 12


def test_keep_alive_expiry_stops_the_engine_and_frees_its_memory(dx: DxProcess) -> None:
    first_token(dx, "brief")
    pid = running(dx)["brief"][0]
    rss = psutil.Process(pid).memory_info().rss
    assert rss > 50 * 2**20  # the model is in memory
    ps = httpx.get(dx.url + "/api/ps", headers=dx.auth).json()["models"]
    entry = next(m for m in ps if m["name"] == "brief:latest")
    assert entry["expires_at"] < "2100"  # a real expiry, seconds away, not "forever"
    admin = httpx.get(dx.url + "/admin/models", headers=dx.auth).json()["models"]
    brief = next(m for m in admin if m["name"] == "brief:latest")
    assert brief["load"] == "on_demand" and 0 < brief["expires_at"] - time.time() <= 2.5
    metrics = httpx.get(dx.url + "/metrics", headers=dx.auth).text
    assert 'dx_model_swaps_total{event="load",model="brief"}' in metrics
    deadline = time.monotonic() + 15
    while "brief" in running(dx) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "brief" not in running(dx)
    assert not psutil.pid_exists(pid)  # the process, and so its memory, is gone
    ps = httpx.get(dx.url + "/api/ps", headers=dx.auth).json()["models"]
    assert "brief:latest" not in [m["name"] for m in ps]


def test_empty_prompt_loads_and_keep_alive_zero_unloads(dx: DxProcess) -> None:
    def generate(**body: Any) -> dict[str, Any]:
        resp = httpx.post(dx.url + "/api/generate", headers=dx.auth, timeout=120,
                          json={"model": "brief", **body})
        assert resp.status_code == 200, resp.text
        return resp.json()  # type: ignore[no-any-return]

    assert generate()["done_reason"] == "load"
    assert "brief" in running(dx)  # loaded and serving when the reply came
    assert generate(keep_alive=0)["done_reason"] == "unload"
    assert "brief" not in running(dx)
