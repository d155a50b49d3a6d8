"""Which nodes make up the fleet and what each last said: the gateway's only view of it.

The fleet is the union of fixed URLs and DNS names (every A/AAAA record of a name is a node:
a Kubernetes headless Service is one such name). Every `refresh` seconds the names are
resolved again and every node is polled at GET /fleet/state (dxproxy/fleet/state.py); a
node's poll failures and the gateway's request outcomes (`report`) feed its Ejector. There is
no registry, gossip or consensus: each gateway replica builds the same view from DNS and the
nodes themselves, and pick.order gives the same answer from the same view.

A node's id is its base URL (`http://10.0.0.7:11434`): stable while it lives, the same on
every gateway, and what X-DX-Upstream shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import random
import socket
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field

import aiohttp

from dxproxy.fleet.ejection import Ejector
from dxproxy.fleet.ejection import State as HealthState
from dxproxy.fleet.orca import KV_CACHE, RUNNING, WAITING, parse_orca
from dxproxy.fleet.pick import DEFAULT_SLACK, Candidate, Choice, order, rendezvous_rank
from dxproxy.fleet.state import ModelState, NodeState, parse_state

log = logging.getLogger("dx.fleet")

STATE_PATH = "/fleet/state"
# A poll's time limit: `refresh`, but at least POLL_TIMEOUT_MIN and at most POLL_TIMEOUT_MAX
# seconds. A node slower than that to say how it is counts as failing. Not less than a second:
# a busy node (a GC pause, an engine starting beside it) can take a few hundred ms, and a
# tighter limit with a short `refresh` (it was refresh/2) could eject a healthy node.
POLL_TIMEOUT_MIN = 1.0
POLL_TIMEOUT_MAX = 2.0
MIN_WAIT = 0.01  # seconds between two wake-ups of the polling task, at least

# (name, port) -> the addresses it resolves to. The default asks the system resolver
# (/etc/resolv.conf, /etc/hosts, nsswitch) through the event loop's getaddrinfo, which runs
# in its executor and so never blocks the loop.
Resolver = Callable[[str, int], Awaitable[list[str]]]


async def system_resolve(name: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(
        name, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return sorted({str(info[4][0]) for info in infos})


def node_url(address: str, port: int) -> str:
    """The node id of an address from DNS: http://A:PORT, or http://[AAAA]:PORT."""
    if isinstance(ipaddress.ip_address(address), ipaddress.IPv6Address):
        return f"http://[{address}]:{port}"
    return f"http://{address}:{port}"


@dataclass(frozen=True, slots=True)
class NodeView:
    """One node that can serve one model, as the request path needs it."""

    id: str  # base URL
    model: str
    state: ModelState  # as last polled, with any newer in-band load folded in
    gateway_in_flight: int  # this gateway's requests to it for this model, now

    @property
    def load(self) -> float:
        return self.state.load + self.gateway_in_flight

    def candidate(self) -> Candidate:
        return Candidate(id=self.id, load=self.load)


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """One member, whatever its health: for /api/ps, metrics and logs."""

    id: str
    health: HealthState
    ejections: int
    state: NodeState | None  # None until it has answered once
    error: str | None  # why its last poll failed; None when it succeeded


@dataclass(slots=True)
class _Node:
    id: str
    ejector: Ejector
    state: NodeState | None = None
    models: dict[str, ModelState] = field(default_factory=dict)
    in_flight: dict[str, int] = field(default_factory=dict)
    error: str | None = None


class Membership:
    """The fleet as this gateway sees it. `start()` resolves and polls once (so the first
    request already has a view), then keeps doing so every `refresh` seconds until
    `close()`. Everything else is synchronous and cheap: the request path calls `choose`,
    `in_flight`, `report` and `update_load` on every request."""

    def __init__(
        self,
        *,
        urls: Sequence[str],
        dns: Sequence[tuple[str, int]],
        refresh: float,
        node_key: str | None,
        session: aiohttp.ClientSession,
        resolve: Resolver = system_resolve,
        threshold: int = 3,
        backoff_base: float = 1.0,
        backoff_max: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if refresh <= 0:
            raise ValueError("refresh must be positive")
        self._urls = [u.rstrip("/") for u in urls]
        self._dns = list(dns)
        self.refresh = refresh
        self._headers = {"Authorization": f"Bearer {node_key}"} if node_key else {}
        self._session = session
        self._resolve = resolve
        self._clock = clock
        self._threshold, self._backoff = threshold, (backoff_base, backoff_max)
        self._timeout = aiohttp.ClientTimeout(
            total=min(max(refresh, POLL_TIMEOUT_MIN), POLL_TIMEOUT_MAX)
        )
        self._resolved: dict[tuple[str, int], list[str]] = {}  # last good answer per name
        self._dns_failing: set[tuple[str, int]] = set()  # warned once, until it resolves
        self._nodes: dict[str, _Node] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()  # set when a node is ejected: the poller times its probe
        self._sync_members()

    # --- life cycle -------------------------------------------------------------------

    async def start(self) -> None:
        await self.refresh_now()
        self._task = asyncio.create_task(self._run(), name="dx-fleet-membership")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        next_round = self._clock() + self.refresh
        while True:
            # Wake for the next round, or sooner when an ejection ends: its probe is due then,
            # not up to a whole `refresh` later (ejections start at 1 s, refresh is often 5 s).
            now = self._clock()
            ends = [
                now + n.ejector.remaining(now)
                for n in self._nodes.values()
                if n.ejector.state == "ejected"
            ]
            self._wake.clear()
            with contextlib.suppress(TimeoutError):  # woken early by a new ejection
                await asyncio.wait_for(
                    self._wake.wait(), max(min([next_round, *ends]) - now, MIN_WAIT)
                )
            try:
                if self._clock() >= next_round:
                    await self.refresh_now()
                    next_round = self._clock() + self.refresh
                else:
                    await self._probe_due()
            except Exception:  # one bad round must not end the polling for good
                log.exception("fleet: refreshing the membership failed")

    async def _probe_due(self) -> None:
        """Poll only the ejected nodes whose ejection is over (their one probe)."""
        now = self._clock()
        due = [
            n
            for n in self._nodes.values()
            if n.ejector.state == "ejected" and n.ejector.available(now)
        ]
        await asyncio.gather(*(self._poll(n) for n in due))

    async def refresh_now(self) -> None:
        """One round: resolve every name, then poll every node that may be polled."""
        if self._dns:
            await asyncio.gather(*(self._resolve_one(n, p) for n, p in self._dns))
        self._sync_members()
        now = self._clock()
        due = [n for n in self._nodes.values() if n.ejector.available(now)]
        await asyncio.gather(*(self._poll(n) for n in due))

    # --- membership -------------------------------------------------------------------

    async def _resolve_one(self, name: str, port: int) -> None:
        try:
            async with asyncio.timeout(max(self.refresh, POLL_TIMEOUT_MAX)):
                addresses = await self._resolve(name, port)
            if not addresses:
                raise OSError("no A or AAAA record")
        except (OSError, TimeoutError) as e:
            # Keep the last good set: a resolver hiccup must not empty the fleet.
            if (name, port) not in self._dns_failing:
                self._dns_failing.add((name, port))
                kept = len(self._resolved.get((name, port), []))
                log.warning(
                    "fleet: cannot resolve %s (%s); keeping its last %d node(s) until it "
                    "resolves again (check the name and the DNS server in /etc/resolv.conf)",
                    name,
                    e or type(e).__name__,
                    kept,
                )
            return
        if (name, port) in self._dns_failing:
            self._dns_failing.discard((name, port))
            log.info("fleet: %s resolves again", name)
        self._resolved[(name, port)] = addresses

    def _sync_members(self) -> None:
        wanted = list(dict.fromkeys(self._urls))
        for (_, port), addresses in self._resolved.items():
            wanted.extend(node_url(a, port) for a in addresses)
        ids = set(wanted)
        for gone in [i for i in self._nodes if i not in ids]:
            del self._nodes[gone]
            log.info("fleet: node %s left (no longer in DNS)", gone)
        for new in dict.fromkeys(wanted):
            if new not in self._nodes:
                self._nodes[new] = _Node(new, self._new_ejector())
                log.info("fleet: node %s joined", new)

    def _new_ejector(self) -> Ejector:
        base, most = self._backoff
        return Ejector(threshold=self._threshold, base=base, max=most, clock=self._clock)

    async def _poll(self, node: _Node) -> None:
        try:
            async with self._session.get(
                node.id + STATE_PATH, headers=self._headers, timeout=self._timeout
            ) as resp:
                if resp.status in (401, 403):
                    raise _PollError(
                        f"it refused the fleet key ({resp.status}): set fleet.node_key to a "
                        "key listed in the node's auth.keys"
                    )
                if resp.status != 200:
                    raise _PollError(f"{STATE_PATH} answered {resp.status}")
                state = parse_state(await resp.json(content_type=None))
        except asyncio.CancelledError:
            raise
        except (_PollError, ValueError) as e:
            self._poll_failed(node, str(e))
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            what = "no answer in time" if isinstance(e, TimeoutError) else str(e)
            self._poll_failed(node, what or type(e).__name__)
        else:
            if node.id not in self._nodes:
                return  # it left while we asked
            if node.error is not None:
                log.info("fleet: node %s answers again", node.id)
            node.error = None
            node.state = state
            node.models = dict(state.models)
            self._outcome(node, ok=True)

    def _poll_failed(self, node: _Node, why: str) -> None:
        if node.error != why:  # once per new reason, not once per refresh
            log.warning("fleet: node %s: %s", node.id, why)
        node.error = why
        self._outcome(node, ok=False)

    def _outcome(self, node: _Node, *, ok: bool) -> None:
        before = node.ejector.state
        if ok:
            node.ejector.success()
        else:
            node.ejector.failure()
        after = node.ejector.state
        if after == before or after == "probing":
            return
        if after == "ejected":
            self._wake.set()
            log.warning(
                "fleet: node %s ejected for %.0f s (%s); a probe will decide when it is back",
                node.id,
                node.ejector.ejected_for,
                node.error or "requests failing",
            )
        elif after == "healthy":
            log.info("fleet: node %s is back", node.id)

    # --- what the request path reads ----------------------------------------------------

    def nodes_for(self, model: str) -> list[NodeView]:
        """Healthy, not draining nodes whose last state lists `model` as servable."""
        views = []
        for node in self._nodes.values():
            if node.ejector.state != "healthy" or node.state is None or node.state.draining:
                continue
            m = node.models.get(model)
            if m is not None and m.servable:
                views.append(NodeView(node.id, model, m, node.in_flight.get(model, 0)))
        return views

    def candidates(self, model: str) -> list[Candidate]:
        return [v.candidate() for v in self.nodes_for(model)]

    def choose(
        self,
        model: str,
        key: str | None,
        *,
        slack: float = DEFAULT_SLACK,
        rng: random.Random | None = None,
    ) -> Choice:
        """pick.order over nodes_for(model); with a key, `moved` says the conversation's home
        over every node whose last state lists the model, whatever its health and state
        (ejected, draining, its engine failed), is not among the candidates."""
        choice = order(self.candidates(model), key, slack=slack, rng=rng)
        if key is None:
            return choice
        listing = [n.id for n in self._nodes.values() if model in n.models]
        moved = bool(listing) and rendezvous_rank(key, listing)[0] != choice.home
        return dataclasses.replace(choice, moved=moved)

    def all_models(self) -> dict[str, list[str]]:
        """Every model some healthy node can serve -> those nodes' ids (the catalog union)."""
        out: dict[str, list[str]] = {}
        for node in self._nodes.values():
            if node.ejector.state != "healthy" or node.state is None or node.state.draining:
                continue
            for name, m in node.models.items():
                if m.servable:
                    out.setdefault(name, []).append(node.id)
        return dict(sorted(out.items()))

    def members(self) -> list[NodeInfo]:
        return [
            NodeInfo(n.id, n.ejector.state, n.ejector.ejections, n.state, n.error)
            for n in self._nodes.values()
        ]

    # --- what the request path tells ---------------------------------------------------

    @contextlib.contextmanager
    def in_flight(self, node_id: str, model: str) -> Iterator[None]:
        """Count a request of this gateway's to the node while it runs (part of its load)."""
        node = self._nodes.get(node_id)
        if node is None:
            yield
            return
        node.in_flight[model] = node.in_flight.get(model, 0) + 1
        try:
            yield
        finally:
            left = node.in_flight.get(model, 1) - 1
            if left > 0:
                node.in_flight[model] = left
            else:
                node.in_flight.pop(model, None)

    def report(self, node_id: str, ok: bool) -> None:
        """A request's outcome: ok=False for a connect error, a timeout or a node-side 5xx
        (not for a 4xx, which is the client's doing, nor for the client going away)."""
        node = self._nodes.get(node_id)
        if node is not None:
            if not ok and node.error is None:
                node.error = "requests failing"
            self._outcome(node, ok=ok)

    def update_load(
        self, node_id: str, orca_header_value: str, *, model: str | None = None
    ) -> None:
        """Fold in a reply's `endpoint-load-metrics` header: newer than the last poll, so it
        replaces the model's running/waiting counts and KV-cache use until the next poll.
        Without `model`, every model of the node (a node serving one model). A malformed
        header is ignored: it is advisory."""
        node = self._nodes.get(node_id)
        if node is None:
            return
        try:
            metrics = parse_orca(orca_header_value)
        except ValueError:
            return
        names = [model] if model is not None else list(node.models)
        for name in names:
            m = node.models.get(name)
            if m is None:
                continue
            node.models[name] = dataclasses.replace(
                m,
                in_flight=int(metrics.get(RUNNING, m.in_flight)),
                queued=int(metrics.get(WAITING, m.queued)),
                kv_cache=metrics.get(KV_CACHE, m.kv_cache),
            )


class _PollError(Exception):
    pass
