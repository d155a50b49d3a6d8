"""An engine that stops answering (hung, or SIGSTOPped) is killed and restarted, like one that
crashed; the time from the hang to serving again is what an operator waits. One that does not
answer for a while but computes (a long prompt on a saturated CPU) is left alone."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import aiohttp
import psutil

from supervisors.adapters import ADAPTERS
from supervisors.process import HANG_AFTER, LIVENESS_INTERVAL, Replica
from supervisors.states import EngineState
from tests.unit.supervisors.conftest import Recorder, fake

S = EngineState
# From the hang to the verdict: the next probe, then HANG_AFTER seconds unanswered, looked
# at every quarter second; a second of slack for a busy test machine.
DETECT = LIVENESS_INTERVAL + HANG_AFTER + 0.25 + 1.0


async def chat(session: aiohttp.ClientSession, replica: Replica, text: str) -> bytes:
    body = {"model": "fake", "stream": True, "messages": [{"role": "user", "content": text}]}
    out = b""
    try:
        async with session.post(replica.base_url + "/v1/chat/completions", json=body,
                                headers=replica.headers) as resp:
            async for chunk in resp.content.iter_any():
                replica.heard()  # as the front does for every chunk
                out += chunk
    except aiohttp.ClientError:
        pass
    return out


async def test_a_sigstopped_engine_is_killed_and_restarted(
    session: aiohttp.ClientSession,
) -> None:
    rec = Recorder()
    replica = Replica(fake(), 0, ADAPTERS["llama-server"], session, rec, grace=2)
    replica.start()
    await rec.wait_for(S.READY)
    hung = replica.pid
    assert hung is not None
    os.kill(hung, signal.SIGSTOP)  # alive, but answers nothing
    t0 = time.monotonic()
    await rec.wait_for(S.FAILED, within=DETECT)
    print(f"SIGSTOP to killed: {time.monotonic() - t0:.1f} s")
    assert "stopped responding" in replica.error and "SIGSTOP" in replica.error
    assert replica.ended == "hung"
    await rec.wait_for(S.READY, count=2, within=20)
    print(f"SIGSTOP to serving again: {time.monotonic() - t0:.1f} s")
    assert replica.pid != hung
    assert not psutil.pid_exists(hung)  # killed and reaped, not left stopped
    async with session.get(replica.base_url + "/v1/models", headers=replica.headers) as resp:
        assert resp.status == 200
    assert replica.restarts == 1
    await replica.stop()


async def test_a_deadlocked_engine_mid_reply_is_killed_in_seconds(
    session: aiohttp.ClientSession,
) -> None:
    rec = Recorder()
    replica = Replica(fake(), 0, ADAPTERS["llama-server"], session, rec, grace=2)
    replica.start()
    await rec.wait_for(S.READY)
    generation = replica.generation
    replica.in_flight = 1  # as the router counts it
    t0 = time.monotonic()
    reply = asyncio.create_task(chat(session, replica, "HANG"))  # 3 chunks, then frozen
    await rec.wait_for(S.FAILED, within=DETECT + 0.5)
    took = time.monotonic() - t0
    print(f"hang mid-reply to killed: {took:.1f} s")
    assert "stopped responding" in replica.error and "SIGSTOP" not in replica.error
    assert await replica.fate(generation) == "hung"
    assert b"Hello" in await asyncio.wait_for(reply, 5)  # the reply ends: the kill broke it
    replica.in_flight = 0
    await rec.wait_for(S.READY, count=2, within=20)
    assert await replica.fate(generation) == "hung" and await replica.fate(replica.generation) == ""
    await replica.stop()


async def test_an_engine_that_computes_without_answering_is_left_alone(
    session: aiohttp.ClientSession,
) -> None:
    """BUSY: the fake engine spins on the CPU for 4 s, answering nothing (not its health
    check) and sending nothing: what llama-server on a saturated CPU can look like."""
    rec = Recorder()
    replica = Replica(fake(), 0, ADAPTERS["llama-server"], session, rec, grace=2)
    replica.start()
    await rec.wait_for(S.READY)
    pid = replica.pid
    replica.in_flight = 1
    out = await asyncio.wait_for(chat(session, replica, "BUSY"), 20)
    replica.in_flight = 0
    assert out.rstrip().endswith(b"data: [DONE]")  # the reply finished
    assert replica.state is S.READY and replica.pid == pid and replica.restarts == 0
    assert [c.new for c in rec.changes] == [S.STARTING, S.READY]  # no restart
    await replica.stop()


async def test_output_is_kept_across_restarts_and_logged_to_files(
    session: aiohttp.ClientSession, tmp_path: object
) -> None:
    from pathlib import Path

    from supervisors.logs import LogFiles

    folder = Path(str(tmp_path)) / "logs"
    logs = LogFiles(folder)
    rec = Recorder()
    replica = Replica(fake("--exit-at-start", "3"), 0, ADAPTERS["llama-server"], session, rec,
                      logs=logs)
    replica.start()
    await rec.wait_for(S.FAILED, count=2, within=20)
    await replica.stop()
    logs.close()
    text = (folder / "fake#0.log").read_text()
    assert text.count("cannot load model (as asked)") >= 2  # both starts, in one file
    assert text.count("--- dx: starting fake#0") >= 2
    assert any("cannot load model" in line for line in replica.output(10))
