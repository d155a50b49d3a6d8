"""Reconciles the desired engines (from a Config) with the running ones.

One code path serves first start, reload and shutdown: `apply(config)` starts what is new and
stops what is gone or changed; `apply(None)` stops everything.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import aiohttp

from dxproxy.config import Config, ModelConfig
from supervisors.adapters import ADAPTERS
from supervisors.process import Replica
from supervisors.states import StateChange

log = logging.getLogger("dx.supervisor")

Listener = Callable[[Replica, StateChange], None]


class Supervisor:
    def __init__(self, session: aiohttp.ClientSession, grace: float = 10.0) -> None:
        self._session = session
        self._grace = grace
        self._replicas: dict[str, list[Replica]] = {}
        self._listeners: list[Listener] = []
        self._lock = asyncio.Lock()

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def replicas(self, model: str) -> list[Replica]:
        return self._replicas.get(model, [])

    def all_replicas(self) -> list[Replica]:
        return [r for group in self._replicas.values() for r in group]

    def _emit(self, replica: Replica, change: StateChange) -> None:
        level = logging.WARNING if change.new == "failed" else logging.INFO
        log.log(level, "%s: %s -> %s %s", change.replica, change.old, change.new, change.reason)
        for listener in self._listeners:
            listener(replica, change)

    async def apply(self, config: Config | None) -> None:
        """Make the running engines match `config` (None: stop them all)."""
        async with self._lock:
            desired: dict[str, ModelConfig] = {m.name: m for m in config.models} if config else {}
            stale = [
                name
                for name, group in self._replicas.items()
                if name not in desired or group[0].model != desired[name]
            ]
            if stale:
                await asyncio.gather(*(self._stop_model(name) for name in stale))
            for name, model in desired.items():
                if name not in self._replicas:
                    self._start_model(model)

    def _start_model(self, model: ModelConfig) -> None:
        adapter = ADAPTERS[model.engine]
        group = [
            Replica(model, i, adapter, self._session, self._emit, self._grace)
            for i in range(model.replicas)
        ]
        self._replicas[model.name] = group
        for replica in group:
            replica.start()

    async def _stop_model(self, name: str) -> None:
        group = self._replicas.pop(name)
        await asyncio.gather(*(r.stop() for r in group))

    async def wait_settled(self) -> None:
        """Wait until every replica is ready or has given up."""
        await asyncio.gather(*(r.wait_settled() for r in self.all_replicas()))
