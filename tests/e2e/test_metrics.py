"""/metrics, request ids and the access log on a real `dx serve` with the fake engine: the
exposition parsed with prometheus_client's parser, values moving with real traffic."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import fake_model, start_dx


def scrape(url: str, headers: dict[str, str] | None = None) -> dict[tuple[str, frozenset], float]:
    r = httpx.get(url + "/metrics", headers=headers or {}, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=")
    out = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: dict[tuple[str, frozenset], float], metric: str, /, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == metric and want <= ls)


def test_metrics_move_with_traffic_and_need_an_admin_key(tmp_path: Path) -> None:
    dx = start_dx(tmp_path, {"fake": fake_model()})
    try:
        # No key: 401; a key that is not admin: 403.
        assert httpx.get(dx.url + "/metrics").status_code == 401
        before = scrape(dx.url, dx.auth)
        body = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}
        for stream in (False, True):
            r = httpx.post(
                dx.url + "/v1/chat/completions",
                headers=dx.auth,
                json={**body, "stream": stream},
                timeout=30,
            )
            assert r.status_code == 200
        r = httpx.post(dx.url + "/api/chat", headers=dx.auth, json=body, timeout=30)
        assert r.status_code == 200
        missing = httpx.post(
            dx.url + "/api/chat", headers=dx.auth, json={**body, "model": "nope"}, timeout=30
        )
        assert missing.status_code == 404
        after = scrape(dx.url, dx.auth)

        key = {"key": "api-key"}
        chat = {"route": "/v1/chat/completions", "model": "fake", "status": "200", **key}
        assert (
            value(after, "dx_requests_total", **chat) - value(before, "dx_requests_total", **chat)
            == 2
        )
        assert value(after, "dx_requests_total", route="/api/chat", status="404") == 1
        assert value(after, "dx_request_duration_seconds_count", route="/api/chat") == 2
        # TTFT: streamed engine replies only (the OpenAI stream and Ollama's /api/chat).
        assert value(after, "dx_time_to_first_token_seconds_count", model="fake") == 2
        assert value(after, "dx_queue_wait_seconds_count", model="fake") == 3
        # The fake engine counts 3 prompt tokens and 6 completion tokens a request.
        assert value(after, "dx_completion_tokens_total", model="fake", **key) > 0
        assert value(after, "dx_prompt_tokens_total", model="fake", **key) > 0
        ids = {"model": "fake", "replica": "fake#0"}
        assert value(after, "dx_replica_state", state="ready", **ids) == 1
        assert value(after, "dx_replica_state", state="failed", **ids) == 0
        assert value(after, "dx_replica_capacity", **ids) >= 1
        assert value(after, "dx_replica_in_flight", **ids) == 0
        assert value(after, "dx_replica_restarts_total", **ids) == 0
        assert ("dx_queue_waiting", frozenset({("model", "fake")})) in after
        assert value(after, "dx_config_reloads_total", result="failed") == 0
        # The engine's own metrics, relabelled; its unnamespaced ones are not re-exported.
        assert value(after, "dx_engine_metrics_up", **ids) == 1
        assert value(after, "fake:requests_total", **ids) == 3
        assert value(after, "process_cpu_seconds_total") > 0  # DX's own, once
        # Every DX metric the Grafana dashboard plots exists (GPUs: none on this machine; 429s:
        # none yet, the next test counts them).
        dashboard = (Path(__file__).parents[2] / "config" / "grafana-dashboard.json").read_text()
        names = {n for (n, _) in after}
        plotted = set(re.findall(r"\b(dx_[a-z_]+)", dashboard)) - {
            "dx_gpu_memory_used_bytes",
            "dx_gpu_memory_total_bytes",
            "dx_gpu_utilization_ratio",
            "dx_rate_limited_total",
        }
        assert plotted and plotted <= names, plotted - names
    finally:
        dx.stop()


def test_metrics_open_when_configured_and_rate_limits_counted(tmp_path: Path) -> None:
    dx = start_dx(
        tmp_path,
        {"fake": fake_model()},
        extra={"server": {"metrics_open": True}, "limits": {"per_key": {"rpm": 1}}},
    )
    try:
        body = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}
        codes = [
            httpx.post(
                dx.url + "/v1/chat/completions", headers=dx.auth, json=body, timeout=30
            ).status_code
            for _ in range(3)
        ]
        assert codes == [200, 429, 429]
        samples = scrape(dx.url)  # no key
        assert value(samples, "dx_rate_limited_total", key="api-key") == 2
    finally:
        dx.stop()


def test_request_ids_and_access_log_without_keys_or_prompts(tmp_path: Path) -> None:
    dx = start_dx(tmp_path, {"fake": fake_model()})
    try:
        prompt = "zebra-violet-4471 my secret prompt"
        body = {"model": "fake", "messages": [{"role": "user", "content": prompt}]}
        r = httpx.post(
            dx.url + "/api/chat",
            headers={**dx.auth, "X-Request-ID": "abc-123"},
            json=body,
            timeout=30,
        )
        assert r.status_code == 200 and r.headers["x-request-id"] == "abc-123"
        # Errors carry one too (a new one), streamed replies as well.
        bad = httpx.get(dx.url + "/api/tags", headers={"Authorization": "Bearer dx-wrong"})
        assert bad.status_code == 401 and len(bad.headers["x-request-id"]) == 16
        with httpx.stream(
            "POST",
            dx.url + "/v1/chat/completions",
            headers={**dx.auth, "X-Request-ID": "evil <id>\t" + "x" * 300},
            json={**body, "stream": True},
            timeout=30,
        ) as s:
            assert s.headers["x-request-id"] == ("evilid" + "x" * 300)[:128]
            s.read()
    finally:
        dx.stop()
    # The banner shows a first start's new key once, by design; the log lines never do.
    logs = "\n".join(line for line in dx.lines if line not in dx.banner)
    assert dx.key not in logs and "zebra-violet" not in logs
    access = [
        json.loads(line)
        for line in dx.lines
        if line.startswith("{") and '"logger":"dx.access"' in line
    ]
    chat = next(a for a in access if a["request_id"] == "abc-123")
    assert chat["status"] == 200 and chat["key"] == "api-key" and chat["model"] == "fake"
    assert chat["replica"] == "fake#0" and chat["completion_tokens"] > 0
    assert chat["duration_s"] >= chat["ttft_s"] >= chat["queue_s"] >= 0
    assert any(a["status"] == 401 and a["key"] is None for a in access)


