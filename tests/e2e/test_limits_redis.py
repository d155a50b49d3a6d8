"""Limits shared by two DX instances through a real redis-server: one limit, held exactly;
revocations seen by both; Redis going away (fail open or closed) and coming back."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dxproxy.keys.store import create_key
from tests.conftest import DX, DxProcess, fake_model, free_port, start_dx
from tests.e2e.test_limits import burst


class RedisServer:
    def __init__(self, tmp: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is missing: run scripts/setup (apt-get install redis-server)")
        self.binary = binary
        self.port = free_port()
        self.dir = tmp
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                import socket

                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        pytest.fail("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


def two_instances(tmp: Path, redis_url: str, **limits: object) -> tuple[DxProcess, DxProcess]:
    extra = {"server": {"max_connections_per_client": 1000},
             "limits": {"redis_url": redis_url, **limits}}
    a = start_dx(tmp / "a", {"fake": fake_model()}, extra=extra)
    b = start_dx(tmp / "b", {"fake": fake_model()}, extra=extra)
    return a, b


def share_key(a: DxProcess, b: DxProcess, name: str, **limits: int) -> dict[str, str]:
    """One key known to both instances (as an operator would copy keys.json to each host)."""
    key, _ = create_key(a.state_dir, name, **limits)  # type: ignore[arg-type]
    shutil.copy(a.state_dir / "keys.json", b.state_dir / "keys.json")
    time.sleep(1.0)  # both re-read their store within a second
    return {"Authorization": f"Bearer {key}"}


def test_two_instances_hold_one_limit_exactly(tmp_path: Path, redis_server: RedisServer) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = two_instances(tmp_path, redis_server.url)
    try:
        headers = share_key(a, b, "shared", rpm=10)

        async def both() -> list[httpx.Response]:
            ra, rb = await asyncio.gather(burst(a.url, headers, 100), burst(b.url, headers, 100))
            return [*ra, *rb]

        results = asyncio.run(both())
        passed = [r for r in results if r.status_code == 200]
        assert len(passed) == 10, sorted(r.status_code for r in results)
        assert sum(r.status_code == 429 for r in results) == 190
        # The 429s count the requests of both instances.
        refused = next(r for r in results if r.status_code == 429)
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
        assert int(refused.headers["Retry-After"]) >= 55

        # tokens/minute, charged on one instance, stops the key on the other.
        tok = share_key(a, b, "tokens", tpm=20)
        body = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "stream": False}
        for _ in range(3):  # 7 tokens each: 21 >= 20
            assert httpx.post(a.url + "/api/chat", headers=tok, json=body).status_code == 200
        time.sleep(0.2)  # charges are written in the background
        over = httpx.post(b.url + "/api/chat", headers=tok, json=body)
        assert over.status_code == 429 and over.headers["x-ratelimit-limit-tokens"] == "20"

        # A key revoked on one host is refused by the other within a second, though the
        # other's store still holds it.
        gone = subprocess.run([*DX, "keys", "revoke", "shared", "--config", str(tmp_path / "a"
                               / "dx.yaml")], capture_output=True, text=True, timeout=60)
        assert "in Redis, for every instance" in gone.stdout, gone.stderr
        t0 = time.monotonic()
        while httpx.get(b.url + "/api/tags", headers=headers).status_code != 401:
            assert time.monotonic() - t0 < 1.0
            time.sleep(0.05)
        refused_b = httpx.get(b.url + "/api/tags", headers=headers)
        assert "revoked" in refused_b.json()["error"]
    finally:
        a.stop()
        b.stop()


def test_redis_going_away_fails_open_or_closed(tmp_path: Path,
                                               redis_server: RedisServer) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    url = redis_server.url
    extra_open = {"limits": {"redis_url": url, "per_key": {"rpm": 1000}}}
    extra_closed = {"limits": {"redis_url": url, "per_key": {"rpm": 1000},
                               "redis_failure": "closed"}}
    fail_open = start_dx(tmp_path / "a", {"fake": fake_model()}, extra=extra_open)
    fail_closed = start_dx(tmp_path / "b", {"fake": fake_model()}, extra=extra_closed)
    try:
        for dx in (fail_open, fail_closed):
            assert httpx.get(dx.url + "/api/tags", headers=dx.auth).status_code == 200
        redis_server.stop()
        t0 = time.monotonic()
        ok = httpx.get(fail_open.url + "/api/tags", headers=fail_open.auth)
        assert ok.status_code == 200 and time.monotonic() - t0 < 2
        assert "x-ratelimit-limit-requests" not in ok.headers  # nothing was counted
        closed = httpx.get(fail_closed.url + "/api/tags", headers=fail_closed.auth)
        assert closed.status_code == 503 and "Redis" in closed.json()["error"]
        for _ in range(20):  # one log line, not one per request
            httpx.get(fail_open.url + "/api/tags", headers=fail_open.auth)
        down = [line for line in fail_open.lines if "is unreachable" in line]
        assert len(down) == 1 and "WITHOUT rate limits" in down[0]
        assert any("refusing requests with 503" in line for line in fail_closed.lines)
        assert not any("127.0.0.1:" + str(redis_server.port) + "/0" in line and "@" in line
                       for line in fail_open.lines)
        redis_server.start()
        time.sleep(1.2)  # past the back-off
        back = httpx.get(fail_closed.url + "/api/tags", headers=fail_closed.auth)
        assert back.status_code == 200 and back.headers["x-ratelimit-limit-requests"] == "1000"
        assert any("is back" in line for line in fail_closed.lines)
    finally:
        fail_open.stop()
        fail_closed.stop()
