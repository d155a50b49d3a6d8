"""Picks the replica that serves a request, or makes the request wait its turn.

`acquire(model, affinity)` takes a ready replica with room (never more requests in flight than
its `capacity`, which matters for llama-cpp-python: one at a time):

- the replica that served the same conversation before, when `affinity` names one and that
  replica is not clearly busier than the least busy one: its engine still holds the
  conversation's earlier turns in its prompt cache, so the follow-up skips re-reading them;
- otherwise the one with the fewest requests in flight.

When no replica has room, the request waits in a per-model queue, bounded in length (full:
503 at once) and in time (`limits.queue_timeout`; for a model that is loading, its
`startup_timeout`). A model whose engine hung or crashed while serving is being restarted:
its requests wait for the restart too, within `queue_timeout` (a failed start, or a model DX
gave up on, is a 503 at once, with the reason). Every 503 says when to retry (`retry_after`,
the Retry-After header). A freed slot is handed to a waiter directly. The queue is fair between API
keys: keys take turns, each key's own requests in arrival order, so a key that sends 32
requests at once cannot make another key's single request wait behind all of them. A request
whose client leaves while it waits leaves the queue.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from dxproxy.config import LimitsConfig
from dxproxy.routing.wait import Notify, wait_with_notices
from supervisors import EngineState, Replica, StateChange, Supervisor

AFFINITY_ENTRIES = 10_000  # conversations remembered per DX process (least recent dropped)


class Unavailable(Exception):
    """No replica can serve the model now; the message says why and what to do, and
    `retry_after` in how many seconds a retry may succeed (None: not by waiting)."""

    def __init__(self, message: str, status: int = 503, *, retry_after: float | None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retry_after = retry_after


class EngineDropped(Unavailable):
    """The engine closed the connection before it answered (dxproxy/routing/upstream.py)."""


RETRY_BUSY = 1.0  # seconds: Retry-After when the queue is full or the wait timed out
RETRY_GAVE_UP = 60.0  # DX gave up restarting: nothing changes until the config does
DRAINING = (
    "this DX is shutting down (draining): it finishes the requests it has and takes no new "
    "ones; send this one to another DX"
)


def retry_after(replicas: list[Replica]) -> float:
    """When the first replica that may serve again is expected to."""
    soon = [t for r in replicas if (t := r.back_in()) is not None]
    if soon:
        return max(1.0, min(soon))
    return RETRY_GAVE_UP


@dataclass(eq=False, slots=True)
class _Waiter:
    affinity: str | None
    key: str  # the API key's name: the unit of fairness
    future: asyncio.Future[Replica] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class FairQueue:
    """One model's waiters: a FIFO queue per key, the keys served in turn (round robin)."""

    def __init__(self) -> None:
        self._keys: collections.OrderedDict[str, collections.deque[_Waiter]] = (
            collections.OrderedDict()
        )
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def append(self, waiter: _Waiter) -> None:
        self._keys.setdefault(waiter.key, collections.deque()).append(waiter)
        self._size += 1

    def first(self) -> _Waiter:
        """The next to serve: the oldest waiter of the key whose turn it is."""
        return next(iter(self._keys.values()))[0]

    def pop(self) -> _Waiter:
        """Take `first()`; that key's turn is over (it goes to the back of the line)."""
        key, waiters = next(iter(self._keys.items()))
        waiter = waiters.popleft()
        self._size -= 1
        if waiters:
            self._keys.move_to_end(key)
        else:
            del self._keys[key]
        return waiter

    def remove(self, waiter: _Waiter) -> None:
        waiters = self._keys.get(waiter.key)
        if waiters is not None and waiter in waiters:
            waiters.remove(waiter)
            self._size -= 1
            if not waiters:
                del self._keys[waiter.key]


class Router:
    def __init__(self, supervisor: Supervisor, limits: LimitsConfig) -> None:
        self._supervisor = supervisor
        self.limits = limits
        self._queues: dict[str, FairQueue] = {}
        # (model, conversation) -> the replica id that served it last.
        self._affinity: collections.OrderedDict[tuple[str, str], str] = collections.OrderedDict()
        # Set by drain() (SIGTERM): no new work; requests holding a replica finish.
        self.draining = False
        supervisor.subscribe(self._on_change)

    def drain(self) -> None:
        """Take no new work from now on: new requests and waiting ones get a 503 (a gateway
        sends them to another node); those holding a replica finish."""
        self.draining = True
        why = Unavailable(DRAINING, retry_after=RETRY_BUSY)
        for queue in self._queues.values():
            while queue:
                waiter = queue.pop()
                if not waiter.future.done():
                    waiter.future.set_exception(why)

    def busy(self) -> int:
        """Requests holding a replica now (what a drain waits for)."""
        return sum(r.in_flight for r in self._supervisor.all_replicas())

    def waiting(self, model: str) -> int:
        queue = self._queues.get(model)
        return len(queue) if queue else 0

    def _on_change(self, replica: Replica, change: StateChange) -> None:
        self._dispatch(replica.name)

    # -- choosing ----------------------------------------------------------------------

    def _pick(self, model: str, affinity: str | None) -> Replica | None:
        best: Replica | None = None
        preferred: Replica | None = None
        wanted = self._affinity.get((model, affinity)) if affinity else None
        for r in self._supervisor.replicas(model):
            if r.state is not EngineState.READY or r.in_flight >= r.capacity:
                continue
            if best is None or r.in_flight < best.in_flight:
                best = r
            if r.id == wanted:
                preferred = r
        if preferred is not None and best is not None:
            # "Clearly busier": more than a quarter of its slots (at least one request) above
            # the least busy replica. Then a free replica beats a warm cache.
            slack = max(1, preferred.capacity // 4)
            if preferred.in_flight <= best.in_flight + slack:
                return preferred
        return best

    def _take(self, replica: Replica, model: str, affinity: str | None) -> Replica:
        replica.in_flight += 1
        if affinity:
            key = (model, affinity)
            self._affinity[key] = replica.id
            self._affinity.move_to_end(key)
            if len(self._affinity) > AFFINITY_ENTRIES:
                self._affinity.popitem(last=False)
        return replica

    def _dispatch(self, model: str) -> None:
        """Hand free replicas to the waiters in arrival order; fail them all at once if no
        replica can become ready any more."""
        queue = self._queues.get(model)
        if not queue:
            return
        while queue:
            waiter = queue.first()
            if waiter.future.done():  # timed out or its client left
                queue.pop()
                continue
            replica = self._pick(model, waiter.affinity)
            if replica is None:
                break
            queue.pop()
            waiter.future.set_result(self._take(replica, model, waiter.affinity))
        replicas = self._supervisor.replicas(model)
        if queue and not any(r.may_become_ready for r in replicas):
            why = Unavailable(self._why_down(model, replicas), retry_after=retry_after(replicas))
            while queue:
                waiter = queue.pop()
                if not waiter.future.done():
                    waiter.future.set_exception(why)

    # -- acquiring ---------------------------------------------------------------------

    @asynccontextmanager
    async def acquire(
        self,
        model: str,
        affinity: str | None = None,
        key: str = "",
        notify: Notify | None = None,
    ) -> AsyncIterator[Replica]:
        """A replica for one request. `notify(seconds)` is awaited now and then while the
        request waits more than a moment (to keep a streaming client's reply alive)."""
        replica = await self._wait_for_replica(model, affinity, key, notify)
        try:
            yield replica
        finally:
            replica.in_flight -= 1
            self._dispatch(model)

    async def _wait_for_replica(
        self, model: str, affinity: str | None, key: str, notify: Notify | None = None
    ) -> Replica:
        if self.draining:
            raise Unavailable(DRAINING, retry_after=RETRY_BUSY)
        queue = self._queues.setdefault(model, FairQueue())
        if not queue:  # the fast path: no one waits before us
            replica = self._pick(model, affinity)
            if replica is not None:
                return self._take(replica, model, affinity)
        replicas = self._supervisor.replicas(model)
        if not any(r.may_become_ready for r in replicas):
            raise Unavailable(self._why_down(model, replicas), retry_after=retry_after(replicas))
        if len(queue) >= self.limits.queue_size:
            raise Unavailable(
                "server busy, please try again.  maximum pending requests exceeded "
                f"({self.limits.queue_size} waiting for '{model}'; raise limits.queue_size)",
                retry_after=RETRY_BUSY,
            )
        waiter = _Waiter(affinity, key)
        queue.append(waiter)
        timeout = self.limits.queue_timeout
        spec = self._supervisor.spec(model)
        if (
            spec is not None
            and not any(r.state is EngineState.READY for r in replicas)
            and not any(r.ended or r.restarts for r in replicas)
        ):
            timeout = max(timeout, spec.startup_timeout)  # the model is loading: its start
        try:
            done = await wait_with_notices(waiter.future, timeout, notify)
        except asyncio.CancelledError:  # the client left while waiting
            self._abandon(model, waiter)
            raise
        if not done:
            self._abandon(model, waiter)
            replicas = self._supervisor.replicas(model)
            if any(r.state is EngineState.READY for r in replicas):
                raise Unavailable(
                    f"timed out after {timeout:.0f} s waiting for a free "
                    f"replica of '{model}' (raise limits.queue_timeout, or add replicas)",
                    retry_after=RETRY_BUSY,
                )
            raise Unavailable(
                f"timed out after {timeout:.0f} s waiting for the engine serving '{model}' to "
                "start again; DX is restarting it — retry in a few seconds",
                retry_after=retry_after(replicas),
            )
        return waiter.future.result()  # or the Unavailable that _dispatch set

    def _abandon(self, model: str, waiter: _Waiter) -> None:
        future = waiter.future
        if not future.done():
            future.cancel()
            self._queues[model].remove(waiter)
        elif not future.cancelled() and future.exception() is None:
            future.result().in_flight -= 1  # handed a replica at the last moment: give it back
            self._dispatch(model)

    @staticmethod
    def _why_down(model: str, replicas: list[Replica]) -> str:
        if not replicas:
            return f"model '{model}' has no engine running"
        worker = next((r for r in replicas if r.state is EngineState.WORKER), None)
        if worker is not None and worker.spec.group is not None:
            return (
                f"model '{model}' is served by its group's leader, not by this node "
                f"(this DX runs {worker.spec.group.label}, headless): send requests to the "
                "leader's DX"
            )
        failed = next((r for r in replicas if r.error), None)
        if failed is None:
            detail = "it is stopped"
        else:
            head, output = failed.failure(4)
            detail = " | ".join([head, *output])  # on one line: the reason is usually in there
        retry = "" if any(r.gave_up for r in replicas) else " DX is restarting it; retry soon."
        return f"model '{model}' is unavailable: {detail}.{retry} The dx log has more."
