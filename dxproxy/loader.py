"""Which models run now: those loaded at start, and on-demand ones (`load: on_demand`) from
their first request until they have been idle for their keep-alive.

- A request for a model that is not running loads it (`ensure`) and waits for it, bounded by
  the model's `startup_timeout` (the router's queue).
- Loading needs room: at most `limits.max_loaded_models` models, and the estimated memory of
  the models loaded on a device (dxproxy/memory.py, or a model's `memory:`) within that
  device's budget (`limits.memory_budget`; default 80 % of the RAM, 90 % of a GPU). Idle
  on-demand models on that device are unloaded first, least recently used first, never one
  with requests in flight or waiting. When the others are busy, the load waits for them to
  finish their queue (requests are served in batches per model, not swapped to and fro) until
  its start timeout; then, and when nothing can ever make room, a 503 says the need and the
  budget.
- Keep-alive: `models.NAME.keep_alive` (default 5m; negative: forever), or the last request's
  Ollama `keep_alive`. `/api/generate` with an empty prompt loads a model; with
  `keep_alive: 0` it unloads it (any model: one loaded at start comes back at its next
  request).

The loader decides; the supervisor runs: every change goes through `Supervisor.apply` with the
list of models that should run.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import psutil
from aiohttp import web

from dxproxy.config import Config, ModelConfig, parse_duration
from dxproxy.keys import CONFIG, ROUTER, SUPERVISOR
from dxproxy.memory import Estimate, estimate, gib
from dxproxy.metrics import count_swap
from dxproxy.router import Unavailable
from supervisors.spec import EngineSpec
from supervisors.states import EngineState

log = logging.getLogger("dx.loader")

KEEP_ALIVE = web.RequestKey("dx.keep_alive", float)  # an Ollama request's keep_alive, seconds
CPU_SHARE = 0.8  # of the RAM, the default budget for models on the CPU
GPU_SHARE = 0.9  # of a GPU's memory
EXPIRY_CHECK = 1.0  # seconds between looks for idle models to unload


class Loader:
    def __init__(self, app: web.Application) -> None:
        self.app = app
        self._on: dict[str, float] = {}  # on-demand models loaded -> last used (monotonic)
        self._off: set[str] = set()  # models loaded at start, unloaded by a request
        self._keep: dict[str, float] = {}  # the last request's keep_alive, seconds
        self._loading: set[str] = set()
        self._users: collections.Counter[str] = collections.Counter()  # requests holding it
        self._estimates: dict[ModelConfig, int] = {}
        self._lock = asyncio.Lock()

    # -- what runs -------------------------------------------------------------------------

    def running(self, model: ModelConfig) -> bool:
        if model.load == "start":
            return model.name not in self._off
        return model.name in self._on

    def desired(self, config: Config) -> list[EngineSpec]:
        """The engines that should run: what `Supervisor.apply` is given."""
        names = {m.name for m in config.models}
        for gone in [n for n in self._on if n not in names]:  # removed from the config
            del self._on[gone]
        self._off &= names
        return [m.spec() for m in config.models if self.running(m)]

    def expires_at(self, model: ModelConfig) -> float | None:
        """Unix time the model unloads if it stays idle; None: it stays loaded."""
        keep = self._keep.get(model.name, model.keep_alive if model.load == "on_demand" else -1)
        if keep < 0 or not self.running(model):
            return None
        last = self._on.get(model.name, time.monotonic())
        return time.time() + (last + keep - time.monotonic())

    # -- requests ----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def hold(self, model: ModelConfig, request: web.Request) -> AsyncIterator[None]:
        """For one request's whole life: the model is loaded (`ensure`) and is not unloaded to
        make room for another until the request ends (even before it reaches the queue)."""
        self._users[model.name] += 1
        try:
            yield
        finally:
            self._users[model.name] -= 1
            if not self._users[model.name]:
                del self._users[model.name]
            self.used(model, request)

    async def ensure(self, model: ModelConfig) -> None:
        """Make sure the model's engines run or are starting (the request then waits in the
        router's queue for a ready replica)."""
        if self.running(model):
            if model.name in self._on:
                self._on[model.name] = time.monotonic()
            return
        async with self._lock:
            if self.running(model):
                return
            self._loading.add(model.name)
            try:
                await self._make_room(model)
                log.info("%s: loading (requested)", model.name)
                count_swap(model.name, "load")
                self._off.discard(model.name)
                if model.load == "on_demand":
                    self._on[model.name] = time.monotonic()
                await self._apply()
            finally:
                self._loading.discard(model.name)

    def used(self, model: ModelConfig, request: web.Request) -> None:
        """A request ended: the keep-alive counts from now (and from its keep_alive)."""
        keep = request.get(KEEP_ALIVE)
        if keep is not None:
            self._keep[model.name] = keep
            if keep == 0:
                asyncio.get_running_loop().create_task(self.unload(model))
        if model.name in self._on:
            self._on[model.name] = time.monotonic()

    async def load(self, model: ModelConfig, request: web.Request) -> None:
        """Load now and wait until a replica serves (an empty Ollama prompt)."""
        await self.ensure(model)
        deadline = time.monotonic() + model.startup_timeout
        supervisor = self.app[SUPERVISOR]
        while time.monotonic() < deadline:
            replicas = supervisor.replicas(model.name)
            if any(r.state is EngineState.READY for r in replicas):
                self.used(model, request)
                return
            if replicas and not any(r.may_become_ready for r in replicas):
                break
            await asyncio.sleep(0.05)
        raise Unavailable(f"model '{model.name}' did not load; GET /admin/models says why")

    async def unload(self, model: ModelConfig) -> None:
        async with self._lock:
            if not self.running(model):
                return
            log.info("%s: unloading", model.name)
            count_swap(model.name, "unload")
            self._on.pop(model.name, None)
            if model.load == "start":
                self._off.add(model.name)
            await self._apply()

    async def run(self) -> None:
        """Unload on-demand models idle past their keep-alive (runs until cancelled)."""
        while True:
            await asyncio.sleep(EXPIRY_CHECK)
            for model in self.app[CONFIG].models:
                expires = self.expires_at(model)
                if expires is not None and expires <= time.time() and self._idle(model):
                    await self.unload(model)

    # -- room --------------------------------------------------------------------------------

    async def _apply(self) -> None:
        await self.app[SUPERVISOR].apply(self.desired(self.app[CONFIG]), wait=True)

    def _idle(self, model: ModelConfig) -> bool:
        if model.name in self._loading or model.name in self._users:
            return False
        if self.app[ROUTER].waiting(model.name):
            return False
        return all(r.in_flight == 0 for r in self.app[SUPERVISOR].replicas(model.name))

    async def _need(self, model: ModelConfig) -> int:
        if model not in self._estimates:
            est = await asyncio.to_thread(estimate, model, bool(model.gpus or model.gpu_auto))
            self._estimates[model] = est.total(model.replicas) if isinstance(est, Estimate) else 0
        return self._estimates[model]

    async def _budget(self, device: str) -> int:
        limits = self.app[CONFIG].limits
        if limits.memory_budget:
            return limits.memory_budget
        if device == "cpu":
            return int(psutil.virtual_memory().total * CPU_SHARE)
        inventory = await self.app[SUPERVISOR].inventory()
        sizes = [g.total for g in inventory.gpus]
        return int(min(sizes) * GPU_SHARE) if sizes else math.inf  # type: ignore[return-value]

    async def _make_room(self, model: ModelConfig) -> None:
        limits = self.app[CONFIG].limits
        need = await self._need(model)
        deadline = time.monotonic() + model.startup_timeout
        while True:
            loaded = [m for m in self.app[CONFIG].models if self.running(m)]
            same_device = [m for m in loaded if m.device == model.device]
            used = sum([await self._need(m) for m in same_device])
            budget = await self._budget(model.device)
            too_many = bool(limits.max_loaded_models) and len(loaded) >= limits.max_loaded_models
            if not too_many and used + need <= budget:
                return
            pool = loaded if too_many else same_device
            evictable = [m for m in pool if m.load == "on_demand" and m is not model]
            idle = sorted((m for m in evictable if self._idle(m)), key=lambda m: self._on[m.name])
            if idle:
                victim = idle[0]
                log.info("%s: unloading %s (idle) to make room", model.name, victim.name)
                count_swap(victim.name, "evict")
                self._on.pop(victim.name, None)
                await self._apply()  # waits until it is stopped and its memory is back
                continue
            if evictable and time.monotonic() < deadline:
                await asyncio.sleep(0.1)  # the others finish their queue first
                continue
            loaded_text = ", ".join([f"{m.name} {gib(await self._need(m))}" for m in pool])
            why = (
                f"{limits.max_loaded_models} model(s) may be loaded at once"
                if too_many
                else f"it needs about {gib(need)} on {model.device}, where the budget is "
                f"{gib(budget)} and {gib(used)} is taken"
            )
            raise Unavailable(
                f"model '{model.name}' cannot be loaded: {why} (loaded: {loaded_text or 'none'}"
                "). Unload one (keep_alive: 0), or raise limits.memory_budget / "
                "limits.max_loaded_models"
            )


def note_keep_alive(request: web.Request, value: Any) -> None:
    """Remember an Ollama request's keep_alive (seconds; negative: forever)."""
    seconds = parse_duration(value) if value is not None else None
    if seconds is not None:
        request[KEEP_ALIVE] = seconds


LOADER = web.AppKey("dx.loader", Loader)
