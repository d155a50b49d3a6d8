"""Rate limits per key: requests/minute exactly, tokens/minute from real usage, requests in
flight, the 429 and its headers in both dialects."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dxproxy.keys.store import create_key
from tests.conftest import DxProcess, fake_model, start_dx


def chat_body(text: str = "hi", model: str = "fake") -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": text}], "stream": False}


@pytest.fixture(scope="module")
def dx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DxProcess]:
    extra = {
        # 200 connections at once from this one test client.
        "server": {"max_connections_per_client": 1000},
        "limits": {"per_key": {"rpm": 1000}},
    }
    proc = start_dx(tmp_path_factory.mktemp("limits"), {"fake": fake_model()}, extra=extra)
    yield proc
    proc.stop()


def new_key(dx: DxProcess, name: str, **limits: int) -> dict[str, str]:
    key, _ = create_key(dx.state_dir, name, **limits)  # type: ignore[arg-type]
    return {"Authorization": f"Bearer {key}"}


async def wait_for_key(dx: DxProcess, headers: dict[str, str]) -> None:
    await asyncio.sleep(1.2)  # the server re-reads the store within a second


async def burst(url: str, headers: dict[str, str], n: int, path: str = "/api/tags",
                body: dict[str, object] | None = None) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        start = asyncio.Event()

        async def one() -> httpx.Response:
            await start.wait()
            if body is None:
                return await client.get(url + path, headers=headers)
            return await client.post(url + path, headers=headers, json=body)

        tasks = [asyncio.create_task(one()) for _ in range(n)]
        await asyncio.sleep(0.1)
        start.set()
        return await asyncio.gather(*tasks)


async def test_200_concurrent_attempts_against_n_per_minute_give_exactly_n(dx: DxProcess) -> None:
    headers = new_key(dx, "rpm10", rpm=10)
    await wait_for_key(dx, headers)
    results = await burst(dx.url, headers, 200)
    passed = [r for r in results if r.status_code == 200]
    refused = [r for r in results if r.status_code == 429]
    assert len(passed) == 10 and len(refused) == 190, sorted({r.status_code for r in results})
    remaining = sorted(int(r.headers["x-ratelimit-remaining-requests"]) for r in passed)
    assert remaining == list(range(10))
    for r in refused:
        assert r.headers["x-ratelimit-limit-requests"] == "10"
        assert r.headers["x-ratelimit-remaining-requests"] == "0"
        assert 55 <= int(r.headers["Retry-After"]) <= 60
        assert r.headers["x-ratelimit-reset-requests"].endswith("s")
        assert "10 requests per minute" in r.json()["error"]  # Ollama's dialect here
    async with httpx.AsyncClient() as client:
        openai = await client.get(dx.url + "/v1/models", headers=headers)
        other = await client.get(dx.url + "/api/tags", headers=dx.auth)
    assert openai.status_code == 429
    assert openai.json()["error"]["type"] == "rate_limit_error"
    assert openai.json()["error"]["code"] == "rate_limit_exceeded"
    # Another key has its own budget; the default (limits.per_key) applies to it.
    assert other.status_code == 200 and other.headers["x-ratelimit-limit-requests"] == "1000"


async def test_tokens_per_minute_stop_a_key_after_its_budget(dx: DxProcess) -> None:
    headers = new_key(dx, "tpm30", tpm=30)
    await wait_for_key(dx, headers)
    used = 0
    statuses = []
    async with httpx.AsyncClient(timeout=30) as client:
        for _ in range(10):
            r = await client.post(dx.url + "/api/chat", headers=headers, json=chat_body())
            statuses.append(r.status_code)
            if r.status_code == 200:
                data = r.json()
                used += data.get("prompt_eval_count", 0) + data["eval_count"]
            else:
                assert r.status_code == 429
                assert "30 tokens per minute" in r.json()["error"]
                assert r.headers["x-ratelimit-limit-tokens"] == "30"
                assert r.headers["x-ratelimit-remaining-tokens"] == "0"
                assert int(r.headers["Retry-After"]) >= 1
                break
    # The fake engine counts 1 prompt word + 6 tokens: 7 a request; the 5th brings 35 >= 30.
    assert statuses == [200, 200, 200, 200, 200, 429], statuses
    assert used == 35


async def test_concurrency_limit(dx: DxProcess) -> None:
    headers = new_key(dx, "conc2", concurrency=2)
    await wait_for_key(dx, headers)
    # PAUSE makes each reply take 0.3 s, so five at once overlap.
    results = await burst(dx.url, headers, 5, "/api/chat", chat_body("PAUSE"))
    codes = sorted(r.status_code for r in results)
    assert codes == [200, 200, 429, 429, 429]
    refused = next(r for r in results if r.status_code == 429)
    assert "too many requests in flight" in refused.json()["error"]
    # Slots come back when requests end.
    again = await burst(dx.url, headers, 2, "/api/chat", chat_body("PAUSE"))
    assert [r.status_code for r in again] == [200, 200]


def test_streams_carry_the_headers_too(dx: DxProcess) -> None:
    body = {**chat_body(), "stream": True}
    with httpx.stream("POST", dx.url + "/api/chat", headers=dx.auth, json=body) as r:
        assert r.status_code == 200 and "x-ratelimit-remaining-requests" in r.headers
        assert b"".join(r.iter_bytes()).count(b"\n") > 3


def test_auth_off_limits_each_client_address(tmp_path: Path) -> None:
    extra = {"server": {"trusted_proxies": ["127.0.0.1"]}, "limits": {"per_key": {"rpm": 3}}}
    proc = start_dx(tmp_path, {"fake": fake_model()}, auth=False, extra=extra)
    try:
        for client in ("198.51.100.1", "198.51.100.2"):
            codes = [httpx.get(proc.url + "/api/tags", headers={"X-Forwarded-For": client})
                     .status_code for _ in range(4)]
            assert codes == [200, 200, 200, 429], client
    finally:
        proc.stop()


# -- the algorithm, on a fake clock ------------------------------------------------------------


