"""Live config with the real llama-server, each change made while 4 clients loop on requests:
a changed model is replaced without a failed request, an added one serves without a restart,
a removed one finishes what is in flight, and a broken file changes nothing."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import DxProcess, smollm2_path, start_dx

pytestmark = pytest.mark.integration


def smollm2(**extra: object) -> dict[str, object]:
    # Up to two models compute at once here, on 2 cores: DX's CPU plan gives each its own
    # core and thread (supervisors/cpus.py; they used to thrash at 0.3 tokens/s).
    return {"engine": "llamacpp", "model": str(smollm2_path()), "context": 1024, "parallel": 4,
            **extra}


class Load:
    """4 clients looping on streamed chats (Ollama and OpenAI alternately) until stopped;
    every request must end with a complete stream."""

    def __init__(self, dx: DxProcess, model: str, clients: int = 4) -> None:
        self.dx, self.model = dx, model
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(i,)) for i in range(clients)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(120)

    def _loop(self, n: int) -> None:
        with httpx.Client(base_url=self.dx.url, headers=self.dx.auth, timeout=120) as client:
            i = 0
            while not self._stop.is_set():
                i += 1
                try:
                    self._one(client, openai=(i + n) % 2 == 0)
                    self.ok += 1
                except Exception as exc:  # every failure is recorded, none is ignored
                    self.failures.append(f"{type(exc).__name__}: {exc}")

    def _one(self, client: httpx.Client, openai: bool) -> None:
        messages = [{"role": "user", "content": "Name three colours."}]
        if openai:
            body = {"model": self.model, "messages": messages, "max_tokens": 12, "stream": True}
            with client.stream("POST", "/v1/chat/completions", json=body) as resp:
                lines = [line for line in resp.iter_lines() if line]
            assert resp.status_code == 200, lines
            assert lines[-1] == "data: [DONE]", lines[-3:]
        else:
            body = {"model": self.model, "messages": messages, "stream": True,
                    "options": {"num_predict": 12}}
            with client.stream("POST", "/api/chat", json=body) as resp:
                lines = [line for line in resp.iter_lines() if line]
            assert resp.status_code == 200, lines
            assert json.loads(lines[-1])["done"] is True, lines[-1]

    def wait_for(self, count: int, within: float = 60) -> None:
        deadline = time.monotonic() + within
        while self.ok < count and time.monotonic() < deadline:
            time.sleep(0.1)
        assert self.ok >= count, (self.ok, self.failures[:3])


@pytest.fixture(scope="module")
def dx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DxProcess]:
    dx = start_dx(tmp_path_factory.mktemp("reload"), {"smollm2": smollm2()}, wait=120)
    yield dx
    dx.stop()


def config_file(dx: DxProcess) -> Path:
    return dx.state_dir.parent / "dx.yaml"


def write_config(dx: DxProcess, models: dict[str, object]) -> None:
    """As an editor saves: a new file renamed over the old one."""
    path = config_file(dx)
    config = yaml.safe_load(path.read_text())
    config["models"] = models
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(config))
    os.replace(tmp, path)


def admin(dx: DxProcess, path: str) -> Any:
    resp = httpx.get(dx.url + path, headers=dx.auth, timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()


def pids(dx: DxProcess) -> dict[str, list[int]]:
    return {m["name"]: [r["pid"] for r in m["replicas"]]
            for m in admin(dx, "/admin/models")["models"]}


def wait_reloads(dx: DxProcess, ok: int | None = None, failed: int | None = None,
                 within: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        status = admin(dx, "/admin/reload")
        if (ok is None or status["ok"] >= ok) and (failed is None or status["failed"] >= failed) \
                and not status["in_progress"]:
            return status  # type: ignore[no-any-return]
        time.sleep(0.1)
    pytest.fail(f"no reload within {within:.0f} s: {status}")


def test_changed_args_replace_the_engine_without_a_failed_request(dx: DxProcess) -> None:
    before = pids(dx)["smollm2:latest"]
    with Load(dx, "smollm2") as load:
        load.wait_for(8)
        write_config(dx, {"smollm2": smollm2(args=["--temp", "0.5"])})
        status = wait_reloads(dx, ok=1)
        served_before = load.ok
        load.wait_for(served_before + 8)  # the new engine serves
    assert status["last_error"] == "" and status["last_warnings"] == []
    assert load.failures == [], load.failures[:5]
    after = pids(dx)["smollm2:latest"]
    assert after != before and all(after)
    cmdline = Path(f"/proc/{after[0]}/cmdline").read_bytes().split(b"\0")
    assert b"--temp" in cmdline  # the new args reached the new process
    print(f"{load.ok} requests, 0 failed, through a blue/green replacement")


def test_an_added_model_serves_and_nothing_restarts(dx: DxProcess) -> None:
    before = pids(dx)["smollm2:latest"]
    with Load(dx, "smollm2") as load:
        write_config(dx, {"smollm2": smollm2(args=["--temp", "0.5"]),
                          "extra": smollm2(parallel=2)})
        wait_reloads(dx, ok=2)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            tags = httpx.get(dx.url + "/api/tags", headers=dx.auth).json()["models"]
            if "extra:latest" in [m["name"] for m in tags]:
                break
        reply = httpx.post(dx.url + "/api/chat", headers=dx.auth, timeout=120, json={
            "model": "extra", "stream": False, "options": {"num_predict": 8},
            "messages": [{"role": "user", "content": "Hi"}]})
        assert reply.status_code == 200 and reply.json()["message"]["content"]
        load.wait_for(4)
    assert load.failures == []
    assert pids(dx)["smollm2:latest"] == before  # untouched: the same process


def test_a_removed_model_finishes_in_flight_requests_then_404(dx: DxProcess) -> None:
    result: dict[str, Any] = {}

    def long_request() -> None:
        resp = httpx.post(dx.url + "/api/generate", headers=dx.auth, timeout=120, json={
            "model": "extra", "prompt": "Tell a long story.", "stream": False,
            "options": {"num_predict": 64, "temperature": 0.8}})
        result["status"], result["body"] = resp.status_code, resp.json()

    with Load(dx, "smollm2") as load:
        worker = threading.Thread(target=long_request)
        worker.start()
        time.sleep(0.5)  # the long request is being generated
        write_config(dx, {"smollm2": smollm2(args=["--temp", "0.5"])})
        worker.join(120)
        wait_reloads(dx, ok=3)
        load.wait_for(4)
    assert result["status"] == 200 and result["body"]["done"] is True, result
    assert result["body"]["eval_count"] > 20  # it ran on, not cut at the reload
    gone = httpx.post(dx.url + "/api/chat", headers=dx.auth, json={
        "model": "extra", "messages": [{"role": "user", "content": "Hi"}]})
    assert gone.status_code == 404 and "not found" in gone.json()["error"]
    assert load.failures == []


def test_a_broken_or_half_written_file_changes_nothing(dx: DxProcess) -> None:
    before = pids(dx)
    failed = admin(dx, "/admin/reload")["failed"]
    path = config_file(dx)
    good = path.read_text()
    with Load(dx, "smollm2") as load:
        path.write_text(good + "\n  - this: [is not yaml\n")
        status = wait_reloads(dx, failed=failed + 1)
        assert "invalid YAML" in status["last_error"] and str(path) in status["last_error"]
        path.write_text(good[: len(good) // 2])  # an editor's half-written save
        status = wait_reloads(dx, failed=failed + 2)
        assert status["last_error"]
        load.wait_for(6)
    assert load.failures == []
    assert pids(dx) == before
    assert "config not reloaded, the running one stays" in "\n".join(dx.lines)
    # The admin API answers a reload request with the error, in the caller's dialect.
    resp = httpx.post(dx.url + "/admin/reload", headers=dx.auth, timeout=60)
    assert resp.status_code == 400 and resp.json()["error"]
    # SIGHUP, with the good file back: applied.
    path.write_text(good)
    ok = admin(dx, "/admin/reload")["ok"]
    dx.proc.send_signal(signal.SIGHUP)
    status = wait_reloads(dx, ok=ok + 1)
    assert status["last_error"] == ""
    assert pids(dx) == before
