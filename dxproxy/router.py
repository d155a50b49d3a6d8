"""Picks the replica that serves a request, or makes the request wait its turn.

`acquire(model)` takes the ready replica with the fewest requests in flight that still has
room; when none has, the request waits in a bounded per-model queue, with a timeout. The
engines never see more than a replica's `capacity` requests at once, which matters for
llama-cpp-python: it serves one request at a time and must not be handed a second.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from dxproxy.config import LimitsConfig
from supervisors.process import Replica
from supervisors.states import EngineState, StateChange
from supervisors.supervisor import Supervisor


class Unavailable(Exception):
    """No replica can serve the model now; the message says why and what to do."""

    def __init__(self, message: str, status: int = 503) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class Router:
    def __init__(self, supervisor: Supervisor, limits: LimitsConfig) -> None:
        self._supervisor = supervisor
        self.limits = limits
        self._changed: dict[str, asyncio.Condition] = {}
        self._waiting: dict[str, int] = {}
        supervisor.subscribe(self._on_change)

    def _condition(self, model: str) -> asyncio.Condition:
        cond = self._changed.get(model)
        if cond is None:
            cond = self._changed[model] = asyncio.Condition()
        return cond

    def _on_change(self, replica: Replica, change: StateChange) -> None:
        self._notify(replica.model.name)

    def _notify(self, model: str) -> None:
        cond = self._condition(model)

        async def wake() -> None:
            async with cond:
                cond.notify_all()

        asyncio.get_running_loop().create_task(wake())

    def waiting(self, model: str) -> int:
        return self._waiting.get(model, 0)

    def _pick(self, model: str) -> Replica | None:
        best: Replica | None = None
        for r in self._supervisor.replicas(model):
            if (
                r.state is EngineState.READY
                and r.in_flight < r.capacity
                and (best is None or r.in_flight < best.in_flight)
            ):
                best = r
        return best

    @asynccontextmanager
    async def acquire(self, model: str) -> AsyncIterator[Replica]:
        replica = await self._wait_for_replica(model)
        try:
            yield replica
        finally:
            replica.in_flight -= 1
            if self._waiting.get(model):  # wake a waiter only if there is one
                self._notify(model)

    async def _wait_for_replica(self, model: str) -> Replica:
        replica = self._pick(model)  # the fast path: no lock, no waiting
        if replica is not None:
            replica.in_flight += 1
            return replica
        if self._waiting.get(model, 0) >= self.limits.queue_size:
            raise Unavailable(
                "server busy, please try again.  maximum pending requests exceeded "
                f"({self.limits.queue_size} waiting for '{model}'; raise limits.queue_size)"
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.queue_timeout
        cond = self._condition(model)
        self._waiting[model] = self._waiting.get(model, 0) + 1
        try:
            async with cond:
                while (replica := self._pick(model)) is None:
                    replicas = self._supervisor.replicas(model)
                    if not any(r.may_become_ready for r in replicas):
                        raise Unavailable(self._why_down(model, replicas))
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        raise Unavailable(
                            f"timed out after {self.limits.queue_timeout:.0f} s waiting for a "
                            f"free replica of '{model}' (raise limits.queue_timeout, or add "
                            "replicas)"
                        )
                    # Re-check at least every second: a state may move without a notification.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(cond.wait(), min(remaining, 1.0))
                replica.in_flight += 1
                return replica
        finally:
            self._waiting[model] -= 1

    @staticmethod
    def _why_down(model: str, replicas: list[Replica]) -> str:
        if not replicas:
            return f"model '{model}' has no engine running"
        failed = next((r for r in replicas if r.error), None)
        if failed is None:
            detail = "it is stopped"
        else:
            head, output = failed.failure(4)
            detail = " | ".join([head, *output])  # on one line: the reason is usually in there
        retry = "" if any(r.gave_up for r in replicas) else " DX is restarting it; retry soon."
        return f"model '{model}' is unavailable: {detail}.{retry} The dx log has more."
