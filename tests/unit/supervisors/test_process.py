"""One engine replica's life, driven directly, with the state changes as the record."""

from __future__ import annotations

import asyncio
import os
import signal

import aiohttp
import psutil
import pytest

from supervisors.adapters import ADAPTERS
from supervisors.process import Replica
from supervisors.states import EngineState, InvalidTransition, check_transition
from tests.unit.supervisors.conftest import Recorder, fake

S = EngineState


async def test_start_ready_stop(session: aiohttp.ClientSession) -> None:
    rec = Recorder()
    replica = Replica(fake(), 0, ADAPTERS["llama-server"], session, rec, grace=2)
    replica.start()
    await replica.wait_settled()
    assert replica.state is S.READY and replica.capacity == 1
    async with session.get(replica.base_url + "/v1/models") as resp:
        assert resp.status == 200
    pid = replica.pid
    assert pid is not None and os.getpgid(pid) == pid  # its own process group
    await replica.stop()
    await replica.stop()  # idempotent
    assert rec.path() == [(S.STOPPED, S.STARTING), (S.STARTING, S.READY),
                          (S.READY, S.STOPPING), (S.STOPPING, S.STOPPED)]
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


async def test_crash_is_restarted(session: aiohttp.ClientSession) -> None:
    rec = Recorder()
    replica = Replica(fake(), 0, ADAPTERS["llama-server"], session, rec, grace=2)
    replica.start()
    await rec.wait_for(S.READY)
    first = replica.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    await rec.wait_for(S.FAILED)
    assert "exited unexpectedly with code -9" in replica.error
    await rec.wait_for(S.READY, count=2)  # after a 1 s backoff
    assert replica.pid != first
    await replica.stop()


async def test_failed_start_carries_the_engine_output(session: aiohttp.ClientSession) -> None:
    rec = Recorder()
    replica = Replica(fake("--exit-at-start", "3"), 0, ADAPTERS["llama-server"], session, rec)
    replica.start()
    await replica.wait_settled()
    assert replica.state is S.FAILED
    assert "exited with code 3 before it was ready" in replica.error
    assert "cannot load model (as asked)" in replica.error
    await replica.stop()
    assert replica.state is S.STOPPED


async def test_start_timeout_kills_the_engine(session: aiohttp.ClientSession) -> None:
    rec = Recorder()
    model = fake("--startup-delay", "30", startup_timeout=1)
    replica = Replica(model, 0, ADAPTERS["llama-server"], session, rec, grace=1)
    replica.start()
    await rec.wait_for(S.FAILED, within=10)
    assert "not ready after 1 s" in replica.error
    await replica.stop()


async def test_stop_aborts_a_start(session: aiohttp.ClientSession) -> None:
    rec = Recorder()
    replica = Replica(fake("--startup-delay", "30"), 0, ADAPTERS["llama-server"], session, rec,
                      grace=1)
    replica.start()
    await rec.wait_for(S.STARTING)
    await asyncio.sleep(0.3)
    pid = replica.pid
    await replica.stop()
    assert rec.path()[-2:] == [(S.STARTING, S.STOPPING), (S.STOPPING, S.STOPPED)]
    assert pid is not None and not psutil.pid_exists(pid)


def test_transition_table_refuses_shortcuts() -> None:
    check_transition("x", S.READY, S.DRAINING)
    with pytest.raises(InvalidTransition):
        check_transition("x", S.STOPPED, S.READY)
    with pytest.raises(InvalidTransition):
        check_transition("x", S.STOPPING, S.STARTING)


async def test_gives_up_after_repeated_failures(session: aiohttp.ClientSession,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("supervisors.process.BACKOFF_FIRST", 0.01)
    rec = Recorder()
    replica = Replica(fake("--exit-at-start", "3"), 0, ADAPTERS["llama-server"], session, rec)
    replica.start()
    async with asyncio.timeout(30):
        while not replica.gave_up:
            rec.changed.clear()
            await rec.changed.wait()
    assert sum(1 for c in rec.changes if c.new is S.FAILED and c.old is S.STARTING) == 5
    assert rec.changes[-1].reason == "gave up" and not replica.may_become_ready
    await replica.stop()
