"""The router on its own, with stand-in replicas: fair turns between keys, FIFO within a key,
conversation affinity, a full queue, and a client that leaves while it waits."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from dxproxy.config import LimitsConfig
from dxproxy.routing.router import Router, Unavailable
from supervisors.states import EngineState


@dataclass(eq=False)
class Replica:
    id: str
    capacity: int = 1
    in_flight: int = 0
    state: EngineState = EngineState.READY
    name: str = "m"
    error: str = ""
    gave_up: bool = False
    may_become_ready: bool = True
    ended: str = ""  # "hung" or "exited": being restarted after it served
    restarts: int = 0
    due: float = 0.0  # back_in() while it may become ready

    def failure(self, lines: int) -> tuple[str, list[str]]:
        return self.error, []

    def back_in(self) -> float | None:
        return self.due if self.may_become_ready else None


@dataclass
class Supervisor:
    group: list[Replica] = field(default_factory=list)

    def subscribe(self, listener: Any) -> None:
        pass

    def replicas(self, model: str) -> list[Replica]:
        return self.group

    def spec(self, model: str) -> None:
        return None


def router(*replicas: Replica, queue_size: int = 64) -> Router:
    limits = LimitsConfig(queue_size=queue_size, queue_timeout=5)
    return Router(Supervisor(list(replicas)), limits)  # type: ignore[arg-type]


async def test_keys_take_turns_and_each_key_keeps_its_order() -> None:
    r = router(Replica("m#0"))
    served: list[str] = []
    gate = asyncio.Event()

    async def request(key: str, n: int) -> None:
        async with r.acquire("m", key=key):
            served.append(f"{key}{n}")
            await gate.wait()
            gate.clear()

    first = asyncio.create_task(request("flood", 0))  # takes the only slot
    await asyncio.sleep(0)
    tasks = [asyncio.create_task(request("flood", i)) for i in range(1, 6)]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(request("light", 1)))  # arrives after five others
    await asyncio.sleep(0)
    assert r.waiting("m") == 6
    for _ in range(7):
        gate.set()
        await asyncio.sleep(0.01)
    await asyncio.gather(first, *tasks)
    # The light key waited for one flood request, not five.
    assert served == ["flood0", "flood1", "light1", "flood2", "flood3", "flood4", "flood5"]


async def test_a_conversation_returns_to_its_replica_unless_it_is_clearly_busier() -> None:
    a, b = Replica("m#0", capacity=8), Replica("m#1", capacity=8)
    r = router(a, b)
    async with r.acquire("m", affinity="chat-1") as first:
        pass
    other = b if first is a else a
    other.in_flight = 1  # the other replica is now less busy
    first.in_flight = 2  # within the slack (a quarter of 8 slots)
    async with r.acquire("m", affinity="chat-1") as again:
        assert again is first
    first.in_flight = 5  # clearly busier: the free replica wins over the warm cache
    async with r.acquire("m", affinity="chat-1") as moved:
        assert moved is other


async def test_a_full_queue_answers_at_once() -> None:
    r = router(Replica("m#0", in_flight=1), queue_size=1)
    waiting = asyncio.create_task(r._wait_for_replica("m", None, "k"))
    await asyncio.sleep(0)
    with pytest.raises(Unavailable, match="maximum pending requests exceeded") as refused:
        await r._wait_for_replica("m", None, "k")
    assert refused.value.retry_after == 1
    waiting.cancel()


async def test_requests_wait_for_an_engine_being_restarted_after_a_hang() -> None:
    hung = Replica("m#0", state=EngineState.FAILED, ended="hung", restarts=1, due=3.0)
    r = router(hung)
    waiter = asyncio.create_task(r._wait_for_replica("m", None, "k"))
    await asyncio.sleep(0.01)
    assert r.waiting("m") == 1 and not waiter.done()
    hung.state = EngineState.READY  # restarted
    r._on_change(hung, None)  # type: ignore[arg-type]
    assert await waiter is hung


async def test_a_restart_longer_than_the_queue_timeout_is_a_503_saying_when() -> None:
    hung = Replica("m#0", state=EngineState.FAILED, ended="hung", restarts=1, due=7.4)
    r = router(hung)
    r.limits = LimitsConfig(queue_size=64, queue_timeout=0.1)
    with pytest.raises(Unavailable, match="to start again; DX is restarting it") as late:
        await r._wait_for_replica("m", None, "k")
    assert late.value.retry_after == 7.4


async def test_a_client_that_leaves_leaves_the_queue() -> None:
    replica = Replica("m#0", in_flight=1)
    r = router(replica)
    waiter = asyncio.create_task(r._wait_for_replica("m", None, "k"))
    await asyncio.sleep(0)
    assert r.waiting("m") == 1
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert r.waiting("m") == 0
    replica.in_flight = 0
    async with r.acquire("m") as got:  # nothing leaked: the slot is free
        assert got is replica and replica.in_flight == 1
    assert replica.in_flight == 0


async def test_no_replica_that_can_serve_fails_waiters_at_once() -> None:
    broken = Replica("m#0", state=EngineState.FAILED, may_become_ready=False,
                     error="engine m#0 exited", gave_up=True)
    r = router(broken)
    with pytest.raises(Unavailable, match="model 'm' is unavailable: engine m#0 exited") as down:
        await r._wait_for_replica("m", None, "k")
    assert down.value.retry_after == 60  # given up: not by waiting
