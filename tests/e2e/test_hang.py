"""A hung or dead engine as DX's clients hear it, with the fake engine (fault injection): a
stream ends within seconds with one plain sentence in the client's dialect, a request that had
not started is served by the restarted engine, a 503 says when to retry (Retry-After), and an
engine that is only busy is left alone."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx

from tests.conftest import DxProcess, fake_model, start_dx

TEXT = "Hello from the fake engine."
HUNG = "the engine serving 'fake' stopped responding; DX is restarting it — retry in a few seconds"
DIED = (
    "the engine serving 'fake' stopped unexpectedly (it exited); DX is restarting it — retry in "
    "a few seconds"
)
LIBRARY_WORDS = ("TransferEncodingError", "ClientPayloadError", "payload is not completed")


def replica(dx: DxProcess) -> dict[str, object]:
    models = httpx.get(dx.url + "/admin/models", headers=dx.auth, timeout=10).json()["models"]
    return dict(models[0]["replicas"][0])


def chat(dx: DxProcess, text: str, *, stream: bool, path: str = "/api/chat") -> httpx.Response:
    body = {"model": "fake", "stream": stream, "messages": [{"role": "user", "content": text}]}
    return httpx.post(dx.url + path, headers=dx.auth, json=body, timeout=60)


def test_a_hang_mid_stream_ends_the_stream_in_seconds_in_plain_words(dx_fake: DxProcess) -> None:
    t0 = time.monotonic()
    resp = chat(dx_fake, "HANG", stream=True)  # 3 chunks, then the engine freezes
    took = time.monotonic() - t0
    lines = [json.loads(line) for line in resp.text.splitlines() if line.strip()]
    print(f"hang mid-stream to the client's last line: {took:.1f} s")
    assert resp.status_code == 200 and lines[-1] == {"error": HUNG}, resp.text
    assert not any(word in resp.text for word in LIBRARY_WORDS)
    assert took < 5
    # The next request waits for the restarted engine instead of failing.
    again = chat(dx_fake, "x", stream=False)
    assert again.status_code == 200 and again.json()["message"]["content"] == TEXT
    assert replica(dx_fake)["restarts"] == 1


def test_sigstop_mid_stream_openai(dx_fake: DxProcess) -> None:
    [pid] = dx_fake.engine_pids()
    body = {"model": "fake", "stream": True, "messages": [{"role": "user", "content": "SLOW"}]}
    events: list[str] = []
    stopped_at = 0.0
    with httpx.stream("POST", dx_fake.url + "/v1/chat/completions", headers=dx_fake.auth,
                      json=body, timeout=30) as resp:
        for line in resp.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
            if len(events) == 5 and not stopped_at:
                os.kill(pid, signal.SIGSTOP)
                stopped_at = time.monotonic()
    took = time.monotonic() - stopped_at
    print(f"SIGSTOP mid-stream to the end of the client's stream: {took:.1f} s")
    error = json.loads(events[-1])["error"]
    assert error["message"] == HUNG and "[DONE]" not in events
    assert took < 5
    t0 = time.monotonic()
    while replica(dx_fake)["pid"] in (None, pid) or replica(dx_fake)["state"] != "ready":
        assert time.monotonic() - t0 < 10, replica(dx_fake)
        time.sleep(0.1)
    print(f"SIGSTOP to serving again: {time.monotonic() - stopped_at:.1f} s")


def test_a_crash_mid_stream_is_told_plainly(dx_fake: DxProcess) -> None:
    resp = chat(dx_fake, "DIE", stream=True, path="/v1/chat/completions")
    events = [line[6:] for line in resp.text.splitlines() if line.startswith("data: ")]
    assert json.loads(events[-1])["error"]["message"] == DIED
    assert not any(word in resp.text for word in LIBRARY_WORDS)


def test_a_request_the_engine_hung_under_before_answering_is_served_after_the_restart(
    dx_fake: DxProcess,
) -> None:
    [pid] = dx_fake.engine_pids()
    os.kill(pid, signal.SIGSTOP)  # idle, and hung: the request reaches a frozen engine
    t0 = time.monotonic()
    resp = chat(dx_fake, "x", stream=False, path="/v1/chat/completions")
    print(f"a request to a hung engine, served by the restarted one: {time.monotonic() - t0:.1f} s")
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"]["content"] == TEXT
    assert replica(dx_fake)["restarts"] == 1


def test_a_503_while_the_engine_restarts_says_when_to_retry(tmp_path: Path) -> None:
    # Restarting takes 3 s (its start), more than the 1 s a request may wait.
    model = fake_model(engine_args=["--startup-delay", "3"])
    dx = start_dx(tmp_path, {"fake": model}, extra={"limits": {"queue_timeout": "1s"}})
    try:
        [pid] = dx.engine_pids()
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
        refused = chat(dx, "x", stream=False)
        assert refused.status_code == 503, refused.text
        assert "DX is restarting it" in refused.json()["error"]
        assert 1 <= int(refused.headers["Retry-After"]) <= 10
        openai_style = chat(dx, "x", stream=False, path="/v1/chat/completions")
        assert openai_style.status_code == 503 and "Retry-After" in openai_style.headers
        assert "DX is restarting it" in openai_style.json()["error"]["message"]
    finally:
        dx.stop()


def test_an_engine_busy_computing_is_not_restarted(dx_fake: DxProcess) -> None:
    """BUSY: the engine answers nothing for 4 s (its health check included) but computes."""
    resp = chat(dx_fake, "BUSY", stream=True)
    lines = [json.loads(line) for line in resp.text.splitlines() if line.strip()]
    assert lines[-1]["done"] is True, resp.text
    assert replica(dx_fake)["restarts"] == 0


def test_requests_to_a_hung_replica_go_to_the_other_one(tmp_path: Path) -> None:
    dx = start_dx(tmp_path, {"fake": fake_model(replicas=2)})
    try:
        models = httpx.get(dx.url + "/admin/models", headers=dx.auth, timeout=10).json()["models"]
        first = models[0]["replicas"][0]
        os.kill(int(first["pid"]), signal.SIGSTOP)  # the replica DX picks first when both idle
        t0 = time.monotonic()
        answers = [chat(dx, f"x{i}", stream=False, path="/v1/chat/completions") for i in range(4)]
        took = time.monotonic() - t0
        print(f"4 requests, one replica hung: all answered in {took:.1f} s")
        assert [r.status_code for r in answers] == [200] * 4, [r.text for r in answers]
        assert took < 8  # the first waits for the hang to be noticed (~2 s), then none do
    finally:
        dx.stop()
