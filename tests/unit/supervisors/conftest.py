"""Helpers for driving replicas directly: the fake engine as an EngineSpec, a client session,
and a recorder of state changes."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import aiohttp
import pytest

from supervisors.gpus import Inventory
from supervisors.process import Replica
from supervisors.spec import EngineSpec
from supervisors.states import EngineState, StateChange
from supervisors.supervisor import Supervisor
from tests.conftest import FAKE_ENGINE

S = EngineState


def fake(*args: str, startup_timeout: float = 20) -> EngineSpec:
    return EngineSpec(name="fake", kind="llama-server", model=FAKE_ENGINE,
                      command=(sys.executable, FAKE_ENGINE, "--port", "{port}", *args),
                      startup_timeout=startup_timeout)


def sleepy(*args: str, startup_timeout: float = 20, parallel: int | None = None) -> EngineSpec:
    """The fake engine as a vLLM with sleep mode on (the fake has vLLM's dev-mode endpoints)."""
    return EngineSpec(name="fake", kind="vllm", model=FAKE_ENGINE,
                      command=(sys.executable, FAKE_ENGINE, "--port", "{port}", *args),
                      startup_timeout=startup_timeout, sleep_mode=True, parallel=parallel)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def sup(session: aiohttp.ClientSession) -> AsyncIterator[Supervisor]:
    """A supervisor with no GPUs, a 2 s stop grace and a 5 s drain."""
    s = Supervisor(session, grace=2, inventory=Inventory(), drain_timeout=5)
    yield s
    await s.close()


class Recorder:
    def __init__(self) -> None:
        self.changes: list[StateChange] = []
        self.changed = asyncio.Event()

    def __call__(self, replica: Replica, change: StateChange) -> None:
        self.changes.append(change)
        self.changed.set()

    def path(self) -> list[tuple[S, S]]:
        return [(c.old, c.new) for c in self.changes if c.old is not c.new]

    async def wait_for(self, state: S, count: int = 1, within: float = 20) -> None:
        async with asyncio.timeout(within):
            while sum(1 for c in self.changes if c.new is state) < count:
                self.changed.clear()
                await self.changed.wait()


