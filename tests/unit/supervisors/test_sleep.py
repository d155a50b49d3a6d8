"""vLLM sleep mode, driven through the supervisor against the fake engine, which has vLLM's
dev-mode endpoints (/sleep?level=N, /wake_up, /is_sleeping) and crashes, as vLLM may, if a
request reaches it while it is not awake: every test that ends with the same live process
proves that no request was sent to a sleeping engine. vLLM's CPU build has no sleep mode, so
a real vLLM is not used here; the calls are the ones vLLM's server answers."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import signal
import time
from typing import Any

import aiohttp
import psutil
import pytest

from dxproxy.config import LimitsConfig
from dxproxy.routing.router import Router
from supervisors.adapters import ADAPTERS
from supervisors.process import HANG_AFTER, LIVENESS_INTERVAL, Replica
from supervisors.spec import EngineSpec
from supervisors.states import EngineState
from supervisors.supervisor import Supervisor
from tests.unit.supervisors.conftest import Recorder, fake, sleepy

S = EngineState


async def started(s: Supervisor, spec: EngineSpec) -> Replica:
    await s.apply([spec], wait=True)
    await s.wait_settled()
    replica = s.replicas(spec.name)[0]
    assert replica.state is S.READY
    return replica


async def chat(session: aiohttp.ClientSession, replica: Replica, text: str = "hi") -> int:
    body = {"model": "fake", "messages": [{"role": "user", "content": text}]}
    async with session.post(
        replica.base_url + "/v1/chat/completions", json=body, headers=replica.headers
    ) as resp:
        await resp.read()
        return resp.status


async def engine_get(session: aiohttp.ClientSession, replica: Replica, path: str) -> Any:
    async with session.get(replica.base_url + path, headers=replica.headers) as resp:
        assert resp.status == 200
        return await resp.json()


def no_crash(replica: Replica) -> None:
    assert not any("CRASH" in line for line in replica.output()), replica.output(5)


def test_only_vllm_with_sleep_mode_can_sleep() -> None:
    vllm = EngineSpec(name="m", kind="vllm", model="org/m", sleep_mode=True)
    assert ADAPTERS["vllm"].can_sleep(vllm)
    assert not ADAPTERS["vllm"].can_sleep(dataclasses.replace(vllm, sleep_mode=False))
    gguf = EngineSpec(name="m", kind="llama-server", model="/m.gguf", sleep_mode=True)
    assert not ADAPTERS["llama-server"].can_sleep(gguf)


async def test_sleep_and_wake_keep_the_process_and_serve_after(
    sup: Supervisor, session: aiohttp.ClientSession
) -> None:
    rec = Recorder()
    sup.subscribe(rec)
    replica = await started(sup, sleepy("--sleep-delay", "0.2", "--wake-delay", "0.3"))
    pid = replica.pid
    assert sup.can_sleep("fake") and not sup.asleep("fake")
    with pytest.raises(ValueError, match="only sleep level 1"):
        replica.sleep(2)  # level 2 drops the weights: a wake would serve garbage
    assert replica.state is S.READY

    assert await sup.sleep("fake") is True
    assert replica.state is S.SLEEPING and sup.asleep("fake") and sup.ready("fake") == []
    assert replica.sleep_level == 1 and replica.asleep_since > 0
    assert 0.2 <= replica.last_sleep_s < 2
    assert (await engine_get(session, replica, "/is_sleeping")) == {"is_sleeping": True}
    assert await sup.sleep("fake") is True  # already asleep: nothing sent again

    # Asleep longer than liveness needs to kill a silent engine: /health still answers
    # (as vLLM's does), so it is left alone.
    await asyncio.sleep(LIVENESS_INTERVAL + HANG_AFTER + 1)
    assert replica.state is S.SLEEPING and replica.pid == pid and replica.restarts == 0

    t0 = time.monotonic()
    assert await sup.wake("fake") == []
    print(f"wake: {time.monotonic() - t0:.2f} s (the fake engine takes 0.3 s)")
    assert replica.state is S.READY and not sup.asleep("fake")
    assert 0.3 <= replica.last_wake_s < 2 and replica.sleep_level == 0
    assert replica.sleeps == 1 and replica.wakes == 1
    assert await chat(session, replica) == 200
    assert replica.pid == pid and replica.restarts == 0
    assert await sup.wake("fake") == []  # awake already: nothing to do

    assert [p for p in rec.path() if p[0] is not S.STOPPED] == [
        (S.STARTING, S.READY),
        (S.READY, S.SLEEPING),
        (S.SLEEPING, S.WAKING),
        (S.WAKING, S.READY),
    ]
    # What went to the engine: the level in the query string, and the engine's key on each.
    calls = await engine_get(session, replica, "/dev_calls")
    assert [(c["method"], c["path"], c["query"]) for c in calls] == [
        ("POST", "/sleep", "level=1"),
        ("GET", "/is_sleeping", ""),  # DX confirms
        ("GET", "/is_sleeping", ""),  # the test's own
        ("POST", "/wake_up", ""),
        ("GET", "/is_sleeping", ""),  # DX confirms
    ]
    assert calls[0] == {
        "method": "POST",
        "path": "/sleep",
        "query": "level=1",
        "key_ok": True,
        "state": "awake",
    }
    assert all(c["key_ok"] for c in calls)
    no_crash(replica)


async def test_the_router_never_picks_a_sleeping_replica_and_serves_once_woken(
    sup: Supervisor, session: aiohttp.ClientSession
) -> None:
    replica = await started(sup, sleepy())
    router = Router(sup, LimitsConfig(queue_timeout=10))
    assert await sup.sleep("fake")

    async def one_request() -> int:
        async with router.acquire("fake") as r:
            assert r.state is S.READY
            return await chat(session, r)

    waiting = asyncio.create_task(one_request())
    await asyncio.sleep(0.5)
    # Not refused (a sleeping replica may become ready), not served: queued.
    assert not waiting.done() and router.waiting("fake") == 1
    assert await sup.wake("fake") == []
    assert await asyncio.wait_for(waiting, 5) == 200
    stats = await engine_get(session, replica, "/stats")
    assert stats["requests"] == stats["completed"] == 1
    no_crash(replica)


async def test_requests_racing_sleeps_never_reach_a_sleeping_engine(
    sup: Supervisor, session: aiohttp.ClientSession
) -> None:
    """Clients loop on requests through the router while a sleeper puts the model to sleep as
    often as it can and a waker (the loader's part) wakes it whenever a request waits."""
    replica = await started(
        sup, sleepy("--sleep-delay", "0.02", "--wake-delay", "0.02", parallel=4)
    )
    pid = replica.pid
    router = Router(sup, LimitsConfig(queue_timeout=20))
    statuses: list[int] = []
    slept = refused = woken = 0
    done = asyncio.Event()

    async def client(seed: int) -> None:
        rnd = random.Random(seed)
        while not done.is_set():
            async with router.acquire("fake") as r:
                assert r.state is S.READY
                statuses.append(await chat(session, r, "PAUSE" if rnd.random() < 0.2 else "hi"))
            await asyncio.sleep(rnd.uniform(0, 0.08))

    async def sleeper() -> None:
        nonlocal slept, refused
        while not done.is_set():
            if await sup.sleep("fake"):
                slept += 1
            else:
                refused += 1
            await asyncio.sleep(0.005)

    async def waker() -> None:
        nonlocal woken
        while not done.is_set():
            if router.waiting("fake") and sup.asleep("fake"):
                assert await sup.wake("fake") == []
                woken += 1
            await asyncio.sleep(0.005)

    tasks = [asyncio.create_task(c) for c in (client(1), client(2), client(3), sleeper(), waker())]
    await asyncio.sleep(5)
    done.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 10)
    print(f"{len(statuses)} requests, {slept} sleeps, {refused} refused, {woken} wakes")
    print(f"engine: {replica.sleeps} sleeps, {replica.wakes} wakes")
    assert len(statuses) >= 30 and set(statuses) == {200}
    # `slept` counts "already asleep" too; the replica counts what reached the engine.
    assert replica.sleeps >= 3 and replica.wakes >= 3 and refused >= 1
    # The engine never crashed: same process, every request it saw completed.
    assert replica.pid == pid and replica.restarts == 0 and psutil.pid_exists(pid or -1)
    await sup.wake("fake")
    stats = await engine_get(session, replica, "/stats")
    assert stats["requests"] == stats["completed"] == len(statuses)
    calls = await engine_get(session, replica, "/dev_calls")
    sleeps = [c for c in calls if c["path"] == "/sleep"]
    assert len(sleeps) == replica.sleeps
    assert all(c["query"] == "level=1" and c["key_ok"] and c["state"] == "awake" for c in sleeps)
    no_crash(replica)


async def test_sleep_is_refused_while_a_request_is_in_flight(
    sup: Supervisor, session: aiohttp.ClientSession
) -> None:
    replica = await started(sup, sleepy())
    router = Router(sup, LimitsConfig())

    async def slow() -> int:
        async with router.acquire("fake") as r:
            return await chat(session, r, "SLOW")  # 200 chunks, 20 ms apart

    request = asyncio.create_task(slow())
    await asyncio.sleep(0.3)
    assert replica.in_flight == 1
    assert await sup.sleep("fake") is False
    assert await replica.sleep() is False
    assert replica.state is S.READY
    assert await request == 200
    assert await sup.sleep("fake") is True  # idle now
    calls = await engine_get(session, replica, "/dev_calls")
    assert sum(c["path"] == "/sleep" for c in calls) == 1  # none sent while busy
    await sup.wake("fake")
    no_crash(replica)


async def test_a_crash_while_asleep_is_restarted_awake(
    sup: Supervisor, session: aiohttp.ClientSession
) -> None:
    rec = Recorder()
    sup.subscribe(rec)
    replica = await started(sup, sleepy())
    assert await sup.sleep("fake")
    first = replica.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    await rec.wait_for(S.FAILED)
    assert "exited unexpectedly with code -9" in replica.error
    assert (S.SLEEPING, S.FAILED) in rec.path()
    await rec.wait_for(S.READY, count=2)
    assert replica.pid != first and not sup.asleep("fake") and replica.sleep_level == 0
    assert await chat(session, replica) == 200


async def test_a_refused_sleep_leaves_the_engine_serving(
    sup: Supervisor, session: aiohttp.ClientSession
) -> None:
    replica = await started(sup, sleepy("--sleep-fails"))
    pid = replica.pid
    assert await sup.sleep("fake") is False
    assert replica.state is S.READY and replica.pid == pid and replica.restarts == 0
    assert await chat(session, replica) == 200
    no_crash(replica)


async def test_an_engine_without_dev_mode_is_not_asked_again(
    sup: Supervisor, session: aiohttp.ClientSession
) -> None:
    replica = await started(sup, sleepy("--no-dev-mode"))
    assert sup.can_sleep("fake")
    assert await sup.sleep("fake") is False
    assert replica.state is S.READY and not sup.can_sleep("fake")  # the loader stops it instead
    assert await chat(session, replica) == 200


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (("--wake-fails",), "/wake_up answered 500"),
        (("--wake-delay", "30"), "not awake after 3 s"),
    ],
)
async def test_a_failed_wake_restarts_the_engine(
    sup: Supervisor, session: aiohttp.ClientSession, args: tuple[str, ...], why: str
) -> None:
    rec = Recorder()
    sup.subscribe(rec)
    replica = await started(sup, sleepy(*args, startup_timeout=3))
    assert await sup.sleep("fake")
    first = replica.pid
    problems = await sup.wake("fake")
    assert len(problems) == 1 and "fake#0 did not wake up" in problems[0] and why in problems[0]
    await rec.wait_for(S.FAILED)
    assert (S.WAKING, S.FAILED) in rec.path()
    assert f"did not wake up ({why}" in replica.error and "killed it" in replica.error
    await rec.wait_for(S.READY, count=2)  # restarted, awake
    assert replica.pid != first and not psutil.pid_exists(first or -1)
    assert await chat(session, replica) == 200


async def test_reconciling_a_sleeping_model(sup: Supervisor) -> None:
    spec = sleepy()
    replica = await started(sup, spec)
    assert await sup.sleep("fake")
    pid = replica.pid
    # Unchanged: untouched, still asleep.
    assert await sup.apply([dataclasses.replace(spec)], wait=True) == []
    assert sup.replicas("fake") == [replica] and replica.pid == pid
    assert replica.state is S.SLEEPING
    # Changed: the sleeping engine is stopped (nothing in flight), the new one starts awake.
    assert await sup.apply([sleepy("--wake-delay", "0.1")], wait=True) == []
    await sup.wait_settled()
    new = sup.replicas("fake")[0]
    assert new is not replica and replica.state is S.STOPPED and new.state is S.READY
    assert not psutil.pid_exists(pid or -1)
    # Removed while asleep: stopped at once, not after the drain timeout.
    assert await sup.sleep("fake")
    t0 = time.monotonic()
    assert await sup.apply([], wait=True) == []
    assert new.state is S.STOPPED and time.monotonic() - t0 < 4


async def test_a_model_without_sleep_mode_is_never_put_to_sleep(
    sup: Supervisor, session: aiohttp.ClientSession
) -> None:
    replica = await started(sup, fake())
    assert not sup.can_sleep("fake")
    assert await sup.sleep("fake") is False and replica.state is S.READY
    assert await engine_get(session, replica, "/dev_calls") == []


async def test_a_wake_asked_while_falling_asleep_follows_the_sleep(
    sup: Supervisor, session: aiohttp.ClientSession
) -> None:
    rec = Recorder()
    sup.subscribe(rec)
    replica = await started(sup, sleepy("--sleep-delay", "0.5", "--wake-delay", "0.5"))
    falling = replica.sleep()
    assert replica.state is S.SLEEPING  # at once, before the engine is even asked
    waking = replica.wake()
    assert await falling is True
    await asyncio.sleep(0.1)
    assert replica.state is S.WAKING
    assert await replica.sleep() is False  # waking: a request wants it, no sleep now
    assert await sup.sleep("fake") is False
    assert await waking is True and replica.state is S.READY
    calls = await engine_get(session, replica, "/dev_calls")
    assert [c["path"] for c in calls if c["method"] == "POST"] == ["/sleep", "/wake_up"]
    assert rec.path()[-3:] == [(S.READY, S.SLEEPING), (S.SLEEPING, S.WAKING), (S.WAKING, S.READY)]
    assert await chat(session, replica) == 200
    no_crash(replica)


async def test_stopping_a_waking_engine_cancels_the_wake(sup: Supervisor) -> None:
    replica = await started(sup, sleepy("--wake-delay", "30"))
    assert await sup.sleep("fake")
    waking = replica.wake()
    await asyncio.sleep(0.3)
    assert replica.state is S.WAKING
    t0 = time.monotonic()
    assert await sup.apply([], wait=True) == []
    assert replica.state is S.STOPPED and time.monotonic() - t0 < 4
    assert await waking is False  # not a cancellation the caller did not ask for
