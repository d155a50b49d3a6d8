"""/health and /ready on a real `dx serve` with the fake engine: starting, ready, a failing
engine, and an engine DX gave up on. Both answer without a key."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import DX, fake_model, free_port, start_dx


def get_ready(url: str) -> tuple[int, dict[str, Any]]:
    r = httpx.get(url + "/ready", timeout=5)
    assert r.headers["content-type"] == "application/json"
    assert r.headers["cache-control"] == "no-store"
    return r.status_code, r.json()


def poll(url: str, want: str, timeout: float) -> tuple[int, dict[str, Any]]:
    """Poll /ready until its status is `want`; every answer on the way must be well formed."""
    deadline = time.monotonic() + timeout
    seen: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        code, body = get_ready(url)
        seen.append(body)
        assert code == (200 if body["status"] == "ready" else 503), (code, body)
        if body["status"] == want:
            return code, body
        time.sleep(0.2)
    raise AssertionError(f"/ready never said {want!r}; it said: {seen[-3:]}")


@pytest.fixture
def slow_dx(tmp_path: Path) -> Iterator[str]:
    """dx whose engine takes 2 s to start, launched without waiting for its banner."""
    port = free_port()
    config = {
        "server": {"port": port, "state_dir": str(tmp_path / "state"), "shutdown_timeout": 5},
        "models": {"slow": fake_model(engine_args=["--startup-delay", "2"])},
    }
    path = tmp_path / "dx.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.Popen(
        [*DX, "serve", "--config", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:  # until the port is bound
            try:
                httpx.get(url + "/health", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, "dx did not start"
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(20)


def test_ready_says_starting_then_ready_without_a_key(slow_dx: str) -> None:
    health = httpx.get(slow_dx + "/health", timeout=5)
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    code, body = get_ready(slow_dx)
    assert code == 503, body
    assert body["status"] == "starting"
    assert body["models"]["slow"]["state"] == "starting"
    assert body["models"]["slow"]["replicas_ready"] == 0
    _, body = poll(slow_dx, "ready", 30)
    assert body == {
        "status": "ready",
        "models": {"slow": {"state": "ready", "replicas_ready": 1, "replicas": 1}},
    }
    # Probes need no key; everything else still does (auth is on in this config).
    assert httpx.head(slow_dx + "/ready", timeout=5).status_code == 200
    assert httpx.get(slow_dx + "/api/tags", timeout=5).status_code == 401


def test_a_failed_engine_makes_dx_unavailable_with_the_reason(tmp_path: Path) -> None:
    missing = tmp_path / "secret-user" / "engines" / "no-such-engine"
    models = {
        "good": fake_model(),
        "broken": fake_model(engine_args=["--exit-at-start", "3"]),
        "missing": {**fake_model(), "command": [str(missing), "--port", "{port}"]},
    }
    dx = start_dx(tmp_path, models)
    try:
        code, body = get_ready(dx.url)
        assert code == 503 and body["status"] == "unavailable"
        assert body["models"]["good"] == {"state": "ready", "replicas_ready": 1, "replicas": 1}
        broken = body["models"]["broken"]
        assert broken["state"] == "failed" and broken["replicas_ready"] == 0
        assert "broken#0 exited with code 3 before it was ready" in broken["reason"]
        assert broken["reason"].endswith("(restarting)")
        # The engine's own output is not shown to callers without a key, nor server paths.
        assert "cannot load model" not in str(body)
        reason = body["models"]["missing"]["reason"]
        assert "cannot run …/no-such-engine" in reason and "secret-user" not in reason
        # Five failures in a row (backoff 1+2+4+8 s): DX gives up, and /ready says so.
        deadline = time.monotonic() + 45
        while "gave up" not in get_ready(dx.url)[1]["models"]["broken"]["reason"]:
            assert time.monotonic() < deadline, get_ready(dx.url)
            time.sleep(0.5)
        code, body = get_ready(dx.url)
        assert code == 503 and body["status"] == "unavailable"
        assert "DX gave up restarting it" in body["models"]["broken"]["reason"]
    finally:
        dx.stop()


def test_no_models_is_ready(tmp_path: Path) -> None:
    dx = start_dx(tmp_path, {})
    try:
        assert get_ready(dx.url) == (200, {"status": "ready", "models": {}})
    finally:
        dx.stop()
