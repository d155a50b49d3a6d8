"""A gateway's view of its fleet, kept for the app's whole life: the `Membership` of the
nodes `fleet:` names (dxproxy/fleet/members.py), rebuilt when a reload changes that section,
and the counters the gateway's metrics show.

Routing reads only this process's memory: the nodes' states polled every `fleet.refresh`, the
load each reply reports, and the rendezvous ranking every gateway computes alike. Nothing here
needs Redis, so a Redis outage (which `limits.redis_url` may suffer) never changes a route.

A model some node serves but the gateway's config does not name is served too, as if it were
written `upstream: fleet` (`implicit`): the gateway's catalog is the union of its own models
and the fleet's.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging

import aiohttp

from dxproxy.config import Config, FleetConfig, ModelConfig
from dxproxy.fleet.members import Membership

log = logging.getLogger("dx.fleet")

# Idle connections to nodes are kept this long: less than a DX node's own keep-alive (75 s),
# so the gateway never reuses a connection the node is closing.
NODE_KEEPALIVE = 30.0


class Gateway:
    """The fleet for the current config (`membership` is None without a `fleet:` section)."""

    def __init__(self) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=NODE_KEEPALIVE),
            auto_decompress=False,
        )
        self.membership: Membership | None = None
        self._fleet: FleetConfig | None = None
        self._implicit: dict[str, ModelConfig] = {}
        self._lock = asyncio.Lock()
        # Counters for /metrics (dxproxy/http/metrics.py reads them at scrape time).
        self.outcomes: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self.retries: collections.Counter[str] = collections.Counter()
        self.affinity: collections.Counter[tuple[str, str]] = collections.Counter()
        self.fallbacks: collections.Counter[tuple[str, str]] = collections.Counter()
        self.in_flight = 0  # requests this gateway relays now (what its own drain waits for)
        # (node, model) -> the last endpoint-load-metrics value folded in (dxproxy/api/fleet_call)
        self.last_load: dict[tuple[str, str], str] = {}

    async def apply(self, config: Config) -> None:
        """Follow the config's `fleet:` section (at start and after each reload): a changed
        one replaces the membership (its nodes are polled once before it serves)."""
        async with self._lock:
            if config.fleet == self._fleet:
                return
            old, self.membership = self.membership, None
            if old is not None:
                await old.close()
            self._fleet = fleet = config.fleet
            self._implicit.clear()
            self.last_load.clear()
            if fleet is None:
                return
            membership = Membership(
                urls=[n.url for n in fleet.nodes if n.url],
                dns=[(n.dns, n.port) for n in fleet.nodes if n.dns],
                refresh=fleet.refresh,
                node_key=fleet.node_key,
                session=self.session,
                threshold=fleet.eject_after,
                backoff_base=fleet.eject_backoff,
                backoff_max=fleet.eject_max,
            )
            await membership.start()
            self.membership = membership
            log.info(
                "fleet: %d node(s) known, serving %s",
                len(membership.members()),
                ", ".join(membership.all_models()) or "no model yet",
            )

    def reapply(self, config: Config) -> None:
        """A reload's hook (synchronous): apply the new config in the background."""
        task = asyncio.get_running_loop().create_task(self.apply(config))
        task.add_done_callback(_log_failure)

    def implicit(self, name: str) -> ModelConfig | None:
        """A model the config does not name that some healthy node serves now, as an
        `upstream: fleet` model (the same object each time, so it is cheap)."""
        if self.membership is None:
            return None
        key = name.lower().removesuffix(":latest")
        found = next((n for n in self.membership.all_models() if n.lower() == key), None)
        if found is None:
            return None
        model = self._implicit.get(found)
        if model is None:
            model = self._implicit[found] = ModelConfig(
                name=found, engine="llamacpp", model="", upstream="fleet"
            )
        return model

    def fleet_models(self, config: Config) -> list[str]:
        """The fleet's models the config does not name (for the catalog union)."""
        if self.membership is None:
            return []
        return [n for n in self.membership.all_models() if config.model(n) is None]

    async def close(self) -> None:
        if self.membership is not None:
            await self.membership.close()
        await self.session.close()


def _log_failure(task: asyncio.Task[None]) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        if task.exception() is not None:
            log.error("fleet: applying the new fleet: section failed", exc_info=task.exception())
