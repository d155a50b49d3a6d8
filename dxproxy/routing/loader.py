"""Which models run now: those loaded at start, and on-demand ones (`load: on_demand`) from
their first request until they have been idle for their keep-alive.

- Every request takes a `Ticket` for its model (`hold`) and waits its turn (`wait`). A model
  that serves admits it at once. Otherwise the request waits in line and the loader's one
  task (`run`) loads the model of the longest-waiting request, one model at a time, then
  admits all of that model's waiting requests in one step (bounded by the model's
  `startup_timeout`; the router then queues them for a replica).
- Loading needs room: at most `limits.max_loaded_models` models, and the estimated memory of
  the models loaded on a device (dxproxy/models/memory.py, or a model's `memory:`) within that
  device's budget (`limits.memory_budget`; default 80 % of the RAM, 90 % of a GPU). Idle
  on-demand models on that device are unloaded first, least recently used first, never one
  with requests admitted. A busy one gives way after its batch: the requests it admitted
  finish, later ones for it wait in line behind the load (so two models that cannot coexist
  are served in batches, not swapped to and fro, and neither starves). When unloading every
  candidate would not be enough, or the wait passes the start timeout, a 503 says the need
  and the budget.
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
import itertools
import logging
import math
import time
from collections.abc import AsyncIterator

import psutil

from dxproxy.config import Config, ModelConfig
from dxproxy.models.memory import Estimate, estimate, gib
from dxproxy.routing.eviction import Loaded, shortfall, victims
from dxproxy.routing.live import Live
from dxproxy.routing.router import RETRY_BUSY, RETRY_GAVE_UP, Router, Unavailable
from supervisors import EngineSpec, EngineState, Supervisor

log = logging.getLogger("dx.loader")

CPU_SHARE = 0.8  # of the RAM, the default budget for models on the CPU
GPU_SHARE = 0.9  # of a GPU's memory
EXPIRY_CHECK = 1.0  # seconds between looks for idle models to unload


class Ticket:
    """One request's claim on its model: it waits for its turn (the model loaded and not
    giving way to another), then keeps the model loaded until the request ends."""

    __slots__ = ("admitted", "future", "model", "seq")
    _next = itertools.count()

    def __init__(self, model: ModelConfig) -> None:
        self.model = model
        self.admitted = False
        self.future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.seq = next(Ticket._next)  # first come, first loaded


class Loader:
    def __init__(self, supervisor: Supervisor, router: Router, live: Live) -> None:
        self.supervisor = supervisor
        self.router = router
        self.live = live  # the running config: reloads swap it
        # Loads, unloads, evictions, sleeps and wakes, by (model, event): /metrics reads it.
        self.swaps: collections.Counter[tuple[str, str]] = collections.Counter()
        self._on: dict[str, float] = {}  # on-demand models loaded -> last used (monotonic)
        self._off: set[str] = set()  # models loaded at start, unloaded by a request
        self._keep: dict[str, float] = {}  # the last request's keep_alive, seconds
        self._users: collections.Counter[str] = collections.Counter()  # admitted requests
        self._waiting: dict[str, list[Ticket]] = {}  # requests for models not serving now
        self._yielding: set[str] = set()  # models that finish their batch, then give way
        self._estimates: dict[ModelConfig, int] = {}
        self._lock = asyncio.Lock()  # one load or unload at a time
        self._wanted = asyncio.Event()  # a request waits for a load

    # -- what runs -------------------------------------------------------------------------

    def running(self, model: ModelConfig) -> bool:
        if model.load == "start":
            return model.name not in self._off
        return model.name in self._on

    def serving(self, model: ModelConfig) -> bool:
        """Running and awake (vLLM sleep mode: a sleeping engine must get no request)."""
        return self.running(model) and not self.supervisor.asleep(model.name)

    def desired(self, config: Config) -> list[EngineSpec]:
        """The engines that should run: what `Supervisor.apply` is given."""
        names = {m.name for m in config.models}
        for gone in [n for n in self._on if n not in names]:  # removed from the config
            del self._on[gone]
        self._off &= names
        # A model with `upstream:` is served elsewhere: no engine here.
        return [m.spec() for m in config.models if not m.remote and self.running(m)]

    def expires_at(self, model: ModelConfig) -> float | None:
        """Unix time the model unloads if it stays idle; None: it stays loaded."""
        keep = self._keep.get(model.name, model.keep_alive if model.load == "on_demand" else -1)
        if keep < 0 or not self.serving(model):
            return None
        last = self._on.get(model.name, time.monotonic())
        return time.time() + (last + keep - time.monotonic())

    # -- requests ----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def hold(
        self, model: ModelConfig, keep_alive: float | None = None
    ) -> AsyncIterator[Ticket]:
        """For one request's whole life. `await loader.wait(ticket)` inside the block waits
        for the model's turn (loading it on demand); from then until the block ends the model
        is not unloaded to make room for another. `keep_alive`: the request's own (Ollama's
        `keep_alive`, seconds), which counts from the request's end."""
        ticket = Ticket(model)
        try:
            yield ticket
        finally:
            if ticket.admitted:
                self._users[model.name] -= 1
                if not self._users[model.name]:
                    del self._users[model.name]
                self.used(model, keep_alive)
            elif not ticket.future.done():
                ticket.future.cancel()  # the loader skips it

    async def wait(self, ticket: Ticket) -> None:
        """Until the ticket's model serves and it is the model's turn. Requests for a model
        that is not loaded, or that gives way to another, wait in line (first come, first
        loaded); a 503 (`Unavailable`) when it cannot be loaded."""
        model = ticket.model
        if self.serving(model) and model.name not in self._yielding:
            self._admit(ticket)  # the fast path: no await, so nothing can change in between
            return
        self._waiting.setdefault(model.name, []).append(ticket)
        self._wanted.set()
        try:
            async with asyncio.timeout(model.startup_timeout):
                await ticket.future
        except TimeoutError:
            raise Unavailable(
                f"model '{model.name}' waited {model.startup_timeout:.0f} s for its turn to "
                "load (other models held the memory it needs); try again",
                retry_after=RETRY_BUSY,
            ) from None

    def used(self, model: ModelConfig, keep: float | None = None) -> None:
        """A request ended: the keep-alive counts from now (and from its keep_alive)."""
        if keep is not None:
            self._keep[model.name] = keep
            if keep == 0:
                asyncio.get_running_loop().create_task(self.unload(model))
        if model.name in self._on:
            self._on[model.name] = time.monotonic()

    async def load(self, model: ModelConfig, keep_alive: float | None = None) -> None:
        """Load now and wait until a replica serves (an empty Ollama prompt)."""
        async with self.hold(model, keep_alive) as ticket:
            await self.wait(ticket)
            deadline = time.monotonic() + model.startup_timeout
            supervisor = self.supervisor
            while time.monotonic() < deadline:
                replicas = supervisor.replicas(model.name)
                if any(r.state is EngineState.READY for r in replicas):
                    return
                if replicas and not any(r.may_become_ready for r in replicas):
                    break
                await asyncio.sleep(0.05)
        raise Unavailable(
            f"model '{model.name}' did not load; GET /admin/models says why",
            retry_after=RETRY_GAVE_UP,
        )

    async def unload(self, model: ModelConfig) -> None:
        async with self._lock:
            if not self.running(model):
                return
            log.info("%s: unloading", model.name)
            self._count(model.name, "unload")
            self._on.pop(model.name, None)
            if model.load == "start":
                self._off.add(model.name)
            await self._apply()

    async def sleep(self, model: ModelConfig) -> bool:
        """Sleep now, as an expired keep-alive would (the console's Sleep button): False when
        it cannot (no vLLM sleep mode, not serving, or requests on it). A request wakes it."""
        if not self._can_sleep(model):
            return False
        async with self._lock:
            return self._idle(model) and self.serving(model) and await self._sleep(model)

    async def run(self) -> None:
        """The loader's one task (runs until cancelled): loads what requests wait for, one
        model at a time, and unloads on-demand models idle past their keep-alive."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(EXPIRY_CHECK):
                    await self._wanted.wait()
            self._wanted.clear()
            try:
                while (model := self._next_wanted()) is not None:
                    await self._bring(model)
                for model in self.live.config.models:
                    expires = self.expires_at(model)
                    if expires is not None and expires <= time.time() and self._idle(model):
                        await self._retire(model)
            except Exception:  # a bug here must not stop every later load and unload
                log.exception("loader: unexpected error; carrying on")

    def _count(self, model: str, event: str) -> None:
        self.swaps[(model, event)] += 1

    # -- turns -------------------------------------------------------------------------------

    def _admit(self, ticket: Ticket) -> None:
        name = ticket.model.name
        ticket.admitted = True
        self._users[name] += 1
        if name in self._on:
            self._on[name] = time.monotonic()

    def _next_wanted(self) -> ModelConfig | None:
        """The model of the longest-waiting request; models that serve now take their
        waiters at once."""
        first: Ticket | None = None
        for name in list(self._waiting):
            tickets = [t for t in self._waiting[name] if not t.future.done()]
            if not tickets:
                del self._waiting[name]
                continue
            self._waiting[name] = tickets
            if self.serving(tickets[0].model) and name not in self._yielding:
                self._settle(name)
            elif first is None or tickets[0].seq < first.seq:
                first = tickets[0]
        return first.model if first else None

    def _settle(self, name: str, error: Exception | None = None) -> None:
        """Every request waiting for the model is admitted (in the same step, so the model
        cannot be taken away before they are counted), or refused with `error`."""
        for ticket in self._waiting.pop(name, []):
            if ticket.future.done():
                continue
            if error is None:
                self._admit(ticket)
                ticket.future.set_result(None)
            else:
                ticket.future.set_exception(error)

    async def _bring(self, model: ModelConfig) -> None:
        try:
            async with self._lock:
                if not self.running(model):
                    await self._make_room(model)
                    log.info("%s: loading (requested)", model.name)
                    self._count(model.name, "load")
                    self._off.discard(model.name)
                    if model.load == "on_demand":
                        self._on[model.name] = time.monotonic()
                    await self._apply()
                elif not self.serving(model):
                    await self._make_room(model)
                    await self._wake(model)
        except Unavailable as exc:
            self._settle(model.name, exc)
        except Exception as exc:  # a bug must not leave requests waiting forever
            log.exception("%s: loading failed", model.name)
            failed = f"model '{model.name}' failed to load: {exc}"
            self._settle(model.name, Unavailable(failed, retry_after=RETRY_GAVE_UP))
        else:
            self._settle(model.name)
        finally:
            self._yielding.clear()

    # -- vLLM sleep mode ---------------------------------------------------------------------

    def _can_sleep(self, model: ModelConfig) -> bool:
        return model.sleep_mode and self.supervisor.can_sleep(model.name)

    async def _retire(self, model: ModelConfig) -> None:
        """An idle model past its keep-alive sleeps if it can (level 1: its weights go to CPU
        RAM, its engine stays up, and it wakes in about a second), or else unloads."""
        if self._can_sleep(model):
            async with self._lock:
                if self._idle(model) and self.serving(model):
                    await self._sleep(model)
                    return
        await self.unload(model)

    async def _sleep(self, model: ModelConfig) -> bool:
        # Supervisor.sleep refuses (False) if a request reached a replica first; the loader's
        # own checks (`_idle`) cover the requests still waiting for their turn or a replica.
        t0 = time.monotonic()
        if not await self.supervisor.sleep(model.name):
            return False
        log.info("%s: asleep (%.2f s)", model.name, time.monotonic() - t0)
        self._count(model.name, "sleep")
        return True

    async def _wake(self, model: ModelConfig) -> None:
        t0 = time.monotonic()
        problems = await self.supervisor.wake(model.name)
        self._count(model.name, "wake")
        if model.name in self._on:
            self._on[model.name] = time.monotonic()
        if problems:  # those replicas restart (awake); the requests wait for them in the queue
            log.warning("%s: %s", model.name, "; ".join(problems))
        else:
            log.info("%s: awake (%.2f s)", model.name, time.monotonic() - t0)

    # -- room --------------------------------------------------------------------------------

    async def _apply(self) -> None:
        await self.supervisor.apply(self.desired(self.live.config), wait=True)

    def _resident(self, model: ModelConfig) -> bool:
        """Holds its memory on its device: running, and not asleep on a GPU (a sleeping vLLM
        keeps its weights in CPU RAM, so on the CPU it still counts)."""
        if not self.running(model):
            return False
        return model.device == "cpu" or not self.supervisor.asleep(model.name)

    def _idle(self, model: ModelConfig) -> bool:
        # Asked only by the loader's own task (expiry, making room), which finishes a load
        # before it asks again: a load in progress needs no mark of its own.
        if model.name in self._users:
            return False
        if self.router.waiting(model.name):
            return False
        return all(r.in_flight == 0 for r in self.supervisor.replicas(model.name))

    async def _need(self, model: ModelConfig) -> int:
        if model not in self._estimates:
            est = await asyncio.to_thread(estimate, model, bool(model.gpus or model.gpu_auto))
            self._estimates[model] = est.total(model.replicas) if isinstance(est, Estimate) else 0
        return self._estimates[model]

    async def _budget(self, device: str) -> float:
        limits = self.live.config.limits
        if limits.memory_budget:
            return limits.memory_budget
        if device == "cpu":
            return int(psutil.virtual_memory().total * CPU_SHARE)
        inventory = await self.supervisor.inventory()
        sizes = [g.total for g in inventory.gpus]
        return int(min(sizes) * GPU_SHARE) if sizes else math.inf

    async def _make_room(self, model: ModelConfig) -> None:
        """Unload least-recently-used on-demand models until `model` fits (the rules are
        dxproxy/routing/eviction.py). Busy ones give way after their batch: requests already
        admitted finish, later ones wait their turn."""
        limits = self.live.config.limits
        need = await self._need(model)
        deadline = time.monotonic() + model.startup_timeout
        while True:
            models = {m.name: m for m in self.live.config.models}
            loaded = [
                Loaded(m.name, await self._need(m), m.load == "on_demand", self._on.get(m.name, 0))
                for m in models.values()
                if m is not model and self._resident(m)
            ]
            same_device = [x for x in loaded if models[x.name].device == model.device]
            used = sum(x.need for x in same_device)
            budget = await self._budget(model.device)
            short = shortfall(need, used, budget, len(loaded), limits.max_loaded_models)
            if short is None:
                return
            pool = loaded if short.too_many else same_device
            chosen = [models[x.name] for x in victims(model.name, pool, short)]
            idle = [m for m in chosen if self._idle(m)]
            if idle:
                victim = idle[0]
                self._yielding.discard(victim.name)
                # On a GPU, a model that can sleep frees the GPU by sleeping: the fast way back.
                if victim.device != "cpu" and self._can_sleep(victim) and await self._sleep(victim):
                    continue
                log.info("%s: unloading %s (idle) to make room", model.name, victim.name)
                self._count(victim.name, "evict")
                self._on.pop(victim.name, None)
                await self._apply()  # waits until it is stopped and its memory is back
                continue
            if chosen and time.monotonic() < deadline:
                self._yielding.update(m.name for m in chosen)
                await asyncio.sleep(0.1)  # their admitted requests finish first
                continue
            loaded_text = ", ".join(f"{x.name} {gib(x.need)}" for x in pool)
            why = (
                f"{limits.max_loaded_models} model(s) may be loaded at once"
                if short.too_many
                else f"it needs about {gib(need)} on {model.device}, where the budget is "
                f"{gib(int(budget))} and {gib(used)} is taken"
            )
            raise Unavailable(
                f"model '{model.name}' cannot be loaded: {why} (loaded: {loaded_text or 'none'}"
                "). Unload one (keep_alive: 0), or raise limits.memory_budget / "
                "limits.max_loaded_models",
                retry_after=RETRY_GAVE_UP,
            )
