"""Reconciles the desired engines (a list of `EngineSpec`) with the running ones.

One code path serves first start, reload and shutdown: `apply(specs)`; `apply(None)` stops
everything. Per model:

- new: its replicas start at once;
- gone: its replicas stop taking requests, finish those in flight (at most `drain_timeout`),
  then stop;
- changed (engine, file, args, GPUs...): blue/green. A new group of replicas starts beside
  the old one; only when every new replica is ready does the model switch to it, and the old
  group drains. If the new group fails, the old one keeps serving and the failure is
  reported;
- only `replicas` changed (and the existing replicas keep their GPUs): replicas are added,
  or the highest-numbered ones drained, and the others are not touched;
- unchanged: not touched (same processes), asleep or awake.

A sleeping model (vLLM sleep mode, `sleep`/`wake`) is stopped directly when removed or changed:
nothing is in flight on it. Its replacement starts awake.

Changes run as one task per model, so a model's slow start (vLLM: minutes) delays no other
model. Placement (which GPUs each replica gets) is decided when replicas are created.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import subprocess
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import aiohttp

from supervisors.adapters import ADAPTERS
from supervisors.cpus import cgroup_quota, plan, usable_cpus
from supervisors.gpus import Inventory, read_gpus
from supervisors.logs import LogFiles
from supervisors.placement import PlacementError, place
from supervisors.process import Replica
from supervisors.spec import EngineSpec
from supervisors.states import ASLEEP, EngineState, StateChange

log = logging.getLogger("dx.supervisor")

Listener = Callable[[Replica, StateChange], None]


class Reaper:
    """The DX side of `supervisors.reaper`: a pipe to a process that kills every engine
    process group it was told about if DX dies, however it dies."""

    def __init__(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("reaper.py"))],
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
        drain_timeout: float = 60.0,
        cpus: Sequence[int] | None = None,
    ) -> None:
        self._session = session
        # The cores CPU engines may use (`server.cpus` within DX's own affinity) and the
        # cgroup's CPU quota: divided among the CPU replicas that run (`_replan`).
        self._cpus = usable_cpus(cpus)
        self._quota = cgroup_quota()
        self._grace = grace
        self.drain_timeout = drain_timeout
        self._replicas: dict[str, list[Replica]] = {}  # the groups serving each model
        self._specs: dict[str, EngineSpec] = {}  # what each group runs (or is becoming)
        self._retiring: set[Replica] = set()  # draining or stopping, no longer serving
        self._changes: dict[str, asyncio.Task[str]] = {}  # a model's change in progress
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

    def spec(self, model: str) -> EngineSpec | None:
        return self._specs.get(model)

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

    async def apply(self, specs: Sequence[EngineSpec] | None, *, wait: bool = False) -> list[str]:
        """Make the running engines match `specs` (None: stop them all). Returns at once, the
        changes going on in the background, unless `wait`: then it returns when every change
        is done, with one line per model that could not be changed (its old engines still
        serve)."""
        async with self._lock:
            desired = {s.name: s for s in specs or ()}
            inventory = await self.inventory() if desired else Inventory()
            started: list[asyncio.Task[str]] = []
            for name in list(self._specs):
                if name not in desired:
                    started.append(self._change(name, self._remove(name)))
            for name, spec in desired.items():
                current = self._specs.get(name)
                if current == spec:
                    continue
                if current is None:
                    self._start_group(spec, inventory)
                elif self._rescalable(current, spec, inventory):
                    started.append(self._change(name, self._rescale(spec, inventory)))
                else:
                    started.append(self._change(name, self._replace(spec, inventory)))
        if not wait:
            return []
        results = await asyncio.gather(*started, return_exceptions=True)
        return [str(r) for r in results if r]

    async def settle(self) -> None:
        """Wait for the changes in progress."""
        await asyncio.gather(*self._changes.values(), return_exceptions=True)

    async def close(self) -> None:
        """Stop every engine, then the reaper and the log writer."""
        await self.apply(None, wait=True)
        await asyncio.gather(*(r.stop() for r in list(self._retiring)))
        self._reaper.close()
        if self._logs is not None:
            await asyncio.to_thread(self._logs.close)

    # -- one model's change --------------------------------------------------------------

    def _change(self, name: str, work: Awaitable[str]) -> asyncio.Task[str]:
        """Run `work` as the model's one change in progress; a newer change of the same model
        replaces an unfinished one (whose half-started replicas it stops)."""
        previous = self._changes.get(name)
        if previous is not None and not previous.done():
            previous.cancel()

        async def run() -> str:
            if previous is not None:
                await asyncio.gather(previous, return_exceptions=True)
            return await work

        task = asyncio.create_task(run(), name=f"change {name}")
        self._changes[name] = task
        task.add_done_callback(lambda t: self._forget(name, t))
        return task

    def _forget(self, name: str, task: asyncio.Task[str]) -> None:
        if self._changes.get(name) is task:
            del self._changes[name]

    def _new_replicas(
        self, spec: EngineSpec, inventory: Inventory, indexes: range
    ) -> list[Replica]:
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
        adapter = ADAPTERS[spec.kind]
        return [
            Replica(
                spec,
                i,
                adapter,
                self._session,
                self._emit,
                self._grace,
                gpus=placements[i],
                logs=self._logs,
                groups=self._reaper,
                unplaceable=unplaceable,
            )
            for i in indexes
        ]

    def _replan(self, incoming: Sequence[Replica] = ()) -> None:
        """Divide the cores among the CPU replicas that serve, and `incoming` ones about to
        start (supervisors/cpus.py). Shares go by replica id, so a blue/green replacement
        starts with the share of the replica it replaces; running engines move at once."""
        serving = [r for r in self.all_replicas() if not r.gpus]
        ids = list(dict.fromkeys(r.id for r in (*serving, *incoming) if not r.gpus))
        shares = plan(ids, self._cpus, self._quota)
        for replica in (*serving, *self._retiring, *incoming):
            if not replica.gpus and replica.id in shares:
                replica.set_cpu(shares[replica.id])

    def _start_group(self, spec: EngineSpec, inventory: Inventory) -> None:
        group = self._new_replicas(spec, inventory, range(spec.replicas))
        self._replicas[spec.name] = group
        self._specs[spec.name] = spec
        self._replan()
        for replica in group:
            replica.start()

    def _rescalable(self, old: EngineSpec, new: EngineSpec, inventory: Inventory) -> bool:
        """Only the replica count differs, and the replicas that stay keep their GPUs."""
        if dataclasses.replace(old, replicas=new.replicas) != new:
            return False
        try:
            before, after = place(old, inventory), place(new, inventory)
        except PlacementError:
            return False
        keep = min(old.replicas, new.replicas)
        return before[:keep] == after[:keep]

    async def _rescale(self, spec: EngineSpec, inventory: Inventory) -> str:
        group = self._replicas[spec.name]
        self._specs[spec.name] = spec
        if spec.replicas > len(group):
            added = self._new_replicas(spec, inventory, range(len(group), spec.replicas))
            self._replicas[spec.name] = group + added
            self._replan()
            for replica in added:
                replica.start()
            log.info("%s: %d replica(s) added", spec.name, len(added))
        else:
            gone = group[spec.replicas :]
            self._replicas[spec.name] = group[: spec.replicas]
            log.info("%s: draining %d replica(s)", spec.name, len(gone))
            await self._retire(gone)
            self._replan()
        return ""

    async def _replace(self, spec: EngineSpec, inventory: Inventory) -> str:
        """Blue/green: the new group serves only once all of it is ready."""
        old = self._replicas.get(spec.name, [])
        before = self._specs.get(spec.name)
        grouped = spec.group is not None or (before is not None and before.group is not None)
        if grouped or not any(r.state is EngineState.READY for r in old):
            # Nothing serves now (failed, or still starting): no reason to keep it. A
            # multi-node group cannot have a second one beside it (its members, its ports).
            await self._retire(old, drain=False)
            self._start_group(spec, inventory)
            return ""
        new = self._new_replicas(spec, inventory, range(spec.replicas))
        self._replan(incoming=new)
        self._retiring.update(new)  # not serving yet; stopped with the rest if DX stops
        log.info("%s: starting %d new replica(s) beside the old ones", spec.name, len(new))
        try:
            for replica in new:
                replica.start()
            await asyncio.gather(*(r.wait_settled() for r in new))
        except asyncio.CancelledError:
            await asyncio.gather(*(r.stop() for r in new))
            self._retiring.difference_update(new)
            raise
        if any(r.state is not EngineState.READY for r in new):
            failed = next(r for r in new if r.state is not EngineState.READY)
            head, output = failed.failure(3)
            await asyncio.gather(*(r.stop() for r in new))
            self._retiring.difference_update(new)
            why = " | ".join([head, *output])
            log.error(
                "%s: the new engines did not start; the old ones keep serving: %s", spec.name, why
            )
            return f"models.{spec.name}: not changed, the new engine failed: {why}"
        self._retiring.difference_update(new)
        self._replicas[spec.name] = new
        self._specs[spec.name] = spec
        log.info("%s: the new replicas serve; draining the old ones", spec.name)
        await self._retire(old)
        self._replan()
        return ""

    async def _remove(self, name: str) -> str:
        group = self._replicas.pop(name, [])
        self._specs.pop(name, None)
        self.placement_notes.pop(name, None)
        await self._retire(group)
        self._replan()
        return ""

    async def _retire(self, group: list[Replica], drain: bool = True) -> None:
        self._retiring.update(group)
        try:
            if drain:
                await asyncio.gather(*(r.drain(self.drain_timeout) for r in group))
            else:
                await asyncio.gather(*(r.stop() for r in group))
        finally:
            self._retiring.difference_update(group)

    # -- sleep mode (vLLM) ---------------------------------------------------------------

    def can_sleep(self, model: str) -> bool:
        """True when the model's engines can sleep instead of stopping (vLLM, `sleep_mode`)."""
        group = self.replicas(model)
        return bool(group) and all(r.can_sleep for r in group)

    def asleep(self, model: str) -> bool:
        """True when a replica of the model sleeps or is waking: a request for it waits
        until `wake(model)` is done (the router picks only ready replicas)."""
        return any(r.state in ASLEEP for r in self.replicas(model))

    async def sleep(self, model: str, level: int = 1) -> bool:
        """Put every replica of the model to sleep (level 1, the only one that can be woken
        to serve: the weights move to CPU memory, the GPU is freed), all or none: only when
        each is ready (or already asleep) with nothing in flight, and no change of the model
        is under way. Every replica leaves READY before this first waits, so no request can
        reach a sleeping engine. True when all of them sleep; False when the model was not
        put to sleep (a request came first, sleep mode is off, or an engine refused: such a
        replica serves on, or is restarted)."""
        group = self.replicas(model)
        if not self.can_sleep(model) or model in self._changes:
            return False
        idle = (EngineState.READY, EngineState.SLEEPING)
        if not all(r.state in idle and not r.in_flight for r in group):
            return False
        asleep = await asyncio.gather(*[r.sleep(level) for r in group])  # each starts at once
        return all(asleep)

    async def wake(self, model: str) -> list[str]:
        """Wake every sleeping replica of the model; return when each is ready or its wake
        failed. Returns one line per replica that did not wake (it is killed and restarted,
        awake; the line says why); [] when all are awake."""
        group = [r for r in self.replicas(model) if r.state in ASLEEP]
        woken = await asyncio.gather(*(r.wake() for r in group))
        return [
            f"{r.id} did not wake up: {r.wake_error or 'it was stopped'}"
            for r, ok in zip(group, woken, strict=True)
            if not ok
        ]

    async def wait_settled(self) -> None:
        """Wait until every replica is ready, asleep or has given up."""
        await asyncio.gather(*(r.wait_settled() for r in self.all_replicas()))

    def ready(self, model: str) -> list[Replica]:
        return [r for r in self.replicas(model) if r.state is EngineState.READY]
