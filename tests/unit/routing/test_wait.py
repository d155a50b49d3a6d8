"""The one wait with notices: a model loading, a queue for a replica."""

from __future__ import annotations

import asyncio

import pytest

from dxproxy.routing import wait
from dxproxy.routing.wait import wait_with_notices


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wait, "NOTICE_AFTER", 0.02)
    monkeypatch.setattr(wait, "NOTICE_EVERY", 0.03)


async def test_a_quick_answer_sends_no_notice() -> None:
    future = asyncio.get_running_loop().create_future()
    future.set_result(1)
    heard: list[float] = []

    async def notify(seconds: float) -> None:
        heard.append(seconds)

    assert await wait_with_notices(future, 1.0, notify)
    assert heard == []


async def test_notices_while_waiting_then_done() -> None:
    loop = asyncio.get_running_loop()
    future = loop.create_future()
    loop.call_later(0.12, future.set_result, None)
    heard: list[float] = []

    async def notify(seconds: float) -> None:
        heard.append(seconds)

    assert await wait_with_notices(future, None, notify)  # no limit: until it is done
    # After NOTICE_AFTER, then every NOTICE_EVERY, each saying how long it has waited.
    assert 3 <= len(heard) <= 5, heard
    assert heard == sorted(heard) and heard[0] >= 0.02


async def test_the_limit_ends_the_wait_without_cancelling_the_future() -> None:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    assert not await wait_with_notices(future, 0.05, None)
    assert not future.cancelled()  # the caller decides what to do with it
    future.cancel()
