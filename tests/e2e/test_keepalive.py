"""No request lost to a connection the engine closed: llama-server closes its side after a
streamed reply (without `Connection: close`), and any engine closes idle keep-alive
connections. A request written into such a connection never reached the engine; DX must send
it again on a connection that is certainly new, and never send one twice that the engine may
have started. The fake engine makes the close deterministic (tests/fakes/fake_engine.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import httpx
import pytest

from tests.conftest import DxProcess, fake_model, start_dx

STREAM = {"model": "fake", "stream": True, "messages": [{"role": "user", "content": "PAUSE hi"}]}
PLAIN = {"model": "fake", "messages": [{"role": "user", "content": "PAUSE hi"}]}


def engine_stats(dx: DxProcess) -> dict[str, int]:
    return httpx.get(f"http://127.0.0.1:{dx.engine_port()}/stats").json()


async def burst(dx: DxProcess, bodies: list[dict[str, object]]) -> list[tuple[int, bytes]]:
    """Every body at once, on connections of their own; each answer's status and body."""
    async with aiohttp.ClientSession(headers=dx.auth) as s:

        async def one(body: dict[str, object]) -> tuple[int, bytes]:
            async with s.post(dx.url + "/v1/chat/completions", json=body) as r:
                return r.status, await r.read()

        return await asyncio.gather(*(one(b) for b in bodies))


def complete(status: int, body: bytes, stream: bool) -> bool:
    if status != 200:
        return False
    return body.rstrip().endswith(b"data: [DONE]") if stream else b'"choices"' in body


@pytest.fixture
def after_stream(tmp_path: Path) -> Iterator[DxProcess]:
    dx = start_dx(tmp_path, {"fake": fake_model(engine_args=["--close-after-stream"])})
    yield dx
    dx.stop()


@pytest.fixture
def drops_reused(tmp_path: Path) -> Iterator[DxProcess]:
    dx = start_dx(tmp_path, {"fake": fake_model(engine_args=["--drop-reused"])})
    yield dx
    dx.stop()


def test_connections_closed_after_streams_are_never_reused(after_stream: DxProcess) -> None:
    dx = after_stream
    for _ in range(3):  # streams end together, then requests come: each must be served
        answers = asyncio.run(burst(dx, [STREAM] * 4 + [PLAIN] * 4))
        assert all(complete(s, b, i < 4) for i, (s, b) in enumerate(answers)), answers
        answers = asyncio.run(burst(dx, [PLAIN] * 4 + [STREAM] * 4))
        assert all(complete(s, b, i >= 4) for i, (s, b) in enumerate(answers)), answers
    stats = engine_stats(dx)
    # DX asked for every streamed connection to be closed: none was handed out again.
    assert stats["dropped"] == 0, stats
    assert stats["requests"] == stats["completed"] == 48, stats


def test_a_request_the_engine_never_read_is_sent_again_on_a_new_connection(
    drops_reused: DxProcess,
) -> None:
    dx = drops_reused
    for _ in range(3):  # several idle pooled connections, each closed by the engine
        answers = asyncio.run(burst(dx, [PLAIN] * 6))
        assert all(complete(s, b, False) for s, b in answers), answers
    stats = engine_stats(dx)
    assert stats["dropped"] > 0, stats  # the fault happened, and no client saw it
    # Every request was generated exactly once: a dropped one never reached the handler.
    assert stats["requests"] == stats["completed"] == 18, stats
