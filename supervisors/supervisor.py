"""Reconciles the desired engines (a list of `EngineSpec`) with the running ones.

One code path serves first start, reload and shutdown: `apply(specs)` starts what is new and
stops what is gone or changed; `apply(None)` stops everything. Placement (which GPUs each
replica gets) is decided when a model's replicas are created.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import aiohttp

from supervisors.adapters import ADAPTERS
from supervisors.logs import LogFiles
from supervisors.placement import Inventory, PlacementError, place, read_gpus
from supervisors.process import Replica
from supervisors.spec import EngineSpec
from supervisors.states import EngineState, StateChange

log = logging.getLogger("dx.supervisor")

Listener = Callable[[Replica, StateChange], None]


class Reaper:
    """The DX side of `supervisors.reaper`: a pipe to a process that kills every engine
    process group it was told about if DX dies, however it dies."""

    def __init__(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "supervisors.reaper"],
            stdin=subprocess.PIPE,
            start_new_session=True,  # terminal signals (Ctrl-C) reach DX, not the reaper
            text=True,
        )

    def _tell(self, line: str) -> None:
        # A few bytes into a pipe the reaper drains at once: this never waits in practice.
        assert self._proc.stdin is not None
        with contextlib.suppress(BrokenPipeError, ValueError):
            self._proc.stdin.write(line + "\n")
            self._proc.stdin.flush()

    def add(self, pgid: int) -> None:
        self._tell(f"+{pgid}")

    def remove(self, pgid: int) -> None:
        self._tell(f"-{pgid}")

    def close(self) -> None:
        """All engines are stopped: let the reaper exit."""
        assert self._proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self._proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=2)


class Supervisor:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        grace: float = 10.0,
        *,
        log_dir: Path | None = None,
        inventory: Inventory | None = None,
    ) -> None:
        self._session = session
        self._grace = grace
        self._replicas: dict[str, list[Replica]] = {}
        self._specs: dict[str, EngineSpec] = {}
        self._listeners: list[Listener] = []
        self._lock = asyncio.Lock()
        self._logs = LogFiles(log_dir) if log_dir is not None else None
        self._reaper = Reaper()
        self._inventory = inventory  # read on first use when not given (tests pass one)
        self.placement_notes: dict[str, str] = {}  # model -> why it is not where it was asked

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def replicas(self, model: str) -> list[Replica]:
        return self._replicas.get(model, [])

    def all_replicas(self) -> list[Replica]:
        return [r for group in self._replicas.values() for r in group]

    async def inventory(self) -> Inventory:
        if self._inventory is None:
            self._inventory = await asyncio.to_thread(read_gpus)
        return self._inventory

    def _emit(self, replica: Replica, change: StateChange) -> None:
        level = logging.WARNING if change.new == "failed" else logging.INFO
        reason = change.reason.splitlines()[0] if change.reason else ""
        log.log(level, "%s: %s -> %s %s", change.replica, change.old, change.new, reason)
        for listener in self._listeners:
            listener(replica, change)

    async def apply(self, specs: Sequence[EngineSpec] | None) -> None:
        """Make the running engines match `specs` (None: stop them all)."""
        async with self._lock:
            desired = {s.name: s for s in specs or ()}
            stale = [
                name
                for name in self._replicas
                if name not in desired or self._specs[name] != desired[name]
            ]
            if stale:
                await asyncio.gather(*(self._stop_model(name) for name in stale))
            inventory = await self.inventory() if desired else Inventory()
            for name, spec in desired.items():
                if name not in self._replicas:
                    self._start_model(spec, inventory)

    async def close(self) -> None:
        """Stop every engine, then the reaper and the log writer."""
        await self.apply(None)
        self._reaper.close()
        if self._logs is not None:
            await asyncio.to_thread(self._logs.close)

    def _start_model(self, spec: EngineSpec, inventory: Inventory) -> None:
        adapter = ADAPTERS[spec.kind]
        unplaceable = ""
        note = ""
        try:
            placements = place(spec, inventory)
            if (spec.gpus or spec.gpu_auto) and not inventory.gpus:
                note = f"asked for {spec.device}, running on the CPU: {inventory.note}"
        except PlacementError as exc:
            # A GPU that is not there is a config mistake, not a reason to run a big model on
            # the CPU: the replicas fail with the reason.
            placements, unplaceable = [() for _ in range(spec.replicas)], str(exc)
        if note:
            log.warning("%s: %s", spec.name, note)
            self.placement_notes[spec.name] = note
        else:
            self.placement_notes.pop(spec.name, None)
        group = [
            Replica(
                spec,
                i,
                adapter,
                self._session,
                self._emit,
                self._grace,
                gpus=gpus,
                logs=self._logs,
                groups=self._reaper,
                unplaceable=unplaceable,
            )
            for i, gpus in enumerate(placements)
        ]
        self._replicas[spec.name] = group
        self._specs[spec.name] = spec
        for replica in group:
            replica.start()

    async def _stop_model(self, name: str) -> None:
        group = self._replicas.pop(name)
        self._specs.pop(name)
        await asyncio.gather(*(r.stop() for r in group))

    async def wait_settled(self) -> None:
        """Wait until every replica is ready or has given up."""
        await asyncio.gather(*(r.wait_settled() for r in self.all_replicas()))

    def ready(self, model: str) -> list[Replica]:
        return [r for r in self.replicas(model) if r.state is EngineState.READY]
