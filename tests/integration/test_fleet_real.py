"""The fleet with real engines: 2 DX nodes, each running native llama-server with SmolLM2,
behind a DX gateway. The engines are started once for the module (about 10 s).

Proves with a real model what tests/e2e/test_fleet.py proves with the fake engine: the
gateway's answer is the node's own (greedy decoding, byte for byte), named by X-DX-Upstream;
follow-ups stay home; the Ollama dialect is translated once, at the gateway, with the
engine's token counts; a node answers a gateway's request with its load (ORCA) and reports
llama-server's KV-cache use in /fleet/state once its metrics were read; a node killed
mid-generation ends the client's stream with an error event within 2 s.

Measured: 4 passed in 225 s at load average 19 (the machine shared with other engineers'
builds; engines start in seconds on a quiet one).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import DxProcess, smollm2_path, start_dx

pytestmark = pytest.mark.integration

NODE_KEY = "fleet-node-key-0123456789"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DxProcess, list[DxProcess]]]:
    tmp: Path = tmp_path_factory.mktemp("fleet-real")
    model = {"engine": "llamacpp", "model": str(smollm2_path()), "context": 2048,
             "parallel": 2, "embeddings": False}
    nodes: list[DxProcess] = []
    gateway: DxProcess | None = None
    try:
        for i in range(2):
            (tmp / f"n{i}").mkdir()
            nodes.append(start_dx(tmp / f"n{i}", {"smollm2": model}, wait=120,
                                  extra={"auth": {"keys": [NODE_KEY]}}))
        (tmp / "g").mkdir()
        gateway = start_dx(tmp / "g", {"smollm2": {"upstream": "fleet"}}, extra={
            "fleet": {"nodes": [{"url": n.url} for n in nodes], "refresh": "0.5s",
                      "node_key": NODE_KEY}})
        yield gateway, nodes
    finally:
        for p in [*([gateway] if gateway else []), *nodes]:
            p.stop()


def ask(text: str, **extra: object) -> dict[str, object]:
    return {"model": "smollm2", "messages": [{"role": "user", "content": text}],
            "temperature": 0, "max_tokens": 16, **extra}


def test_the_gateway_answers_what_the_node_answers(
    fleet: tuple[DxProcess, list[DxProcess]],
) -> None:
    gateway, nodes = fleet
    body = ask("What is the capital of France?")
    via = httpx.post(gateway.url + "/v1/chat/completions", headers=gateway.auth, json=body,
                     timeout=60)
    assert via.status_code == 200
    node_url, replica = via.headers["x-dx-upstream"].split(" ")
    assert node_url in {n.url for n in nodes} and replica.startswith("smollm2")
    direct = httpx.post(node_url + "/v1/chat/completions",
                        headers={"Authorization": f"Bearer {NODE_KEY}"}, json=body, timeout=60)
    text = via.json()["choices"][0]["message"]["content"]
    assert text and text == direct.json()["choices"][0]["message"]["content"]


def test_follow_ups_home_and_the_ollama_dialect(fleet: tuple[DxProcess, list[DxProcess]]) -> None:
    gateway, _ = fleet
    homes = {}
    # At least 6 conversations, until both nodes took one: a node's id is its URL, whose port
    # is new each run, so 6 conversations all hash to one of 2 nodes in 1 run of 32 (CI saw
    # it); 20 do in 1 of 2^19.
    for c in range(20):
        if c >= 6 and len(set(homes.values())) == 2:
            break
        r = httpx.post(gateway.url + "/api/chat", headers=gateway.auth, timeout=60, json={
            "model": "smollm2", "messages": [{"role": "user", "content": f"Say the number {c}"}],
            "options": {"temperature": 0, "num_predict": 8}})
        assert r.status_code == 200
        lines = [json.loads(x) for x in r.text.splitlines()]
        assert lines[-1]["done"] and lines[-1]["prompt_eval_count"] > 0
        homes[c] = r.headers["x-dx-upstream"].split(" ")[0]
        follow = httpx.post(gateway.url + "/v1/chat/completions", headers=gateway.auth,
                            timeout=60, json={**ask(f"Say the number {c}"), "messages": [
                                {"role": "user", "content": f"Say the number {c}"},
                                {"role": "assistant", "content": "".join(
                                    x["message"]["content"] for x in lines)},
                                {"role": "user", "content": "Again."}]})
        assert follow.headers["x-dx-upstream"].split(" ")[0] == homes[c]
    assert len(set(homes.values())) == 2  # both nodes took conversations


def test_load_header_and_kv_cache(fleet: tuple[DxProcess, list[DxProcess]]) -> None:
    _, nodes = fleet
    key = {"Authorization": f"Bearer {NODE_KEY}"}
    r = httpx.post(nodes[0].url + "/v1/chat/completions", timeout=60, json=ask("Hi"),
                   headers={**key, "endpoint-load-metrics-format": "text"})
    assert r.headers["endpoint-load-metrics"].startswith(
        "TEXT named_metrics.num_requests_waiting=0.0, named_metrics.num_requests_running=")
    assert "endpoint-load-metrics" not in httpx.post(
        nodes[0].url + "/v1/chat/completions", headers=key, json=ask("Hi"), timeout=60).headers
    metrics = httpx.get(nodes[0].url + "/metrics", headers=key).text
    assert 'dx_model_requests_running{model_name="smollm2"}' in metrics
    state = httpx.get(nodes[0].url + "/fleet/state", headers=key).json()["models"]["smollm2"]
    assert state["state"] == "ready" and state["capacity"] == 2
    if "llamacpp:kv_cache_usage_ratio" in metrics:  # llama-server says it: DX passes it on
        assert isinstance(state["kv_cache"], float)
        assert 'dx_model_kv_cache_usage_perc{model_name="smollm2"}' in metrics
    else:  # current llama-server builds export no KV gauge: DX says null, invents nothing
        assert state["kv_cache"] is None
        assert "dx_model_kv_cache_usage_perc{" not in metrics


def test_a_node_killed_mid_generation(fleet: tuple[DxProcess, list[DxProcess]]) -> None:
    gateway, nodes = fleet
    body = ask("Write a long story about a cat.", max_tokens=1500, stream=True)
    events: list[tuple[float, str]] = []
    killed: list[float] = []

    with httpx.stream("POST", gateway.url + "/v1/chat/completions", headers=gateway.auth,
                      json=body, timeout=60) as resp:
        node = next(n for n in nodes if n.url == resp.headers["x-dx-upstream"].split(" ")[0])

        def kill() -> None:
            time.sleep(1.0)
            os.kill(node.proc.pid, signal.SIGKILL)
            killed.append(time.monotonic())

        threading.Thread(target=kill).start()
        for line in resp.iter_lines():
            events.append((time.monotonic(), line))
    errors = [(t, line) for t, line in events if '"error"' in line]
    assert errors and "fleet node" in errors[0][1]
    assert errors[0][0] - killed[0] < 2.0
    node.proc.wait(10)
