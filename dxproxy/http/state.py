"""Every typed key for shared state: on the app (long-lived services) and on a request.

One module, so a reader finds in one place everything a handler may look up. Types of this
same layer are imported for the type checker only: the modules that define them read their
own keys from here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
from aiohttp import web

from dxproxy.keys.limits import Decision, Limiter
from dxproxy.keys.store import KeyRecord
from dxproxy.routing.gateway import Gateway
from dxproxy.routing.live import Live
from dxproxy.routing.loader import Loader
from dxproxy.routing.router import Router
from dxproxy.routing.upstream import Upstream
from supervisors import Supervisor

if TYPE_CHECKING:
    from dxproxy.http.early import EarlyStream
    from dxproxy.http.metrics import Metrics
    from dxproxy.http.usage import Usage


class ReloadOutcome(Protocol):
    """What a reload reports (dxproxy.server.reload.ReloadStatus)."""

    ok: int
    failed: int
    last_error: str

    def as_dict(self) -> dict[str, Any]: ...


class Reloads(Protocol):
    """The reloader, as the admin API and /metrics see it (dxproxy.server.reload.Reloader)."""

    @property
    def status(self) -> ReloadOutcome: ...

    async def reload(self, trigger: str) -> ReloadOutcome: ...

    async def watch(self) -> None: ...


# -- on the app: set while it is built (dxproxy.server.app), never replaced --------------------
LIVE = web.AppKey("dx.live", Live)  # the config and catalog now; a reload swaps both inside
UPSTREAM = web.AppKey("dx.upstream", Upstream)  # every engine call (dxproxy/routing/upstream.py)
SESSION = web.AppKey("dx.session", aiohttp.ClientSession)  # its pool, for probes and scrapes
SUPERVISOR = web.AppKey("dx.supervisor", Supervisor)
ROUTER = web.AppKey("dx.router", Router)
LOADER = web.AppKey("dx.loader", Loader)
RELOADER: web.AppKey[Reloads] = web.AppKey("dx.reloader")
LIMITER = web.AppKey("dx.limiter", Limiter)
METRICS: web.AppKey[Metrics] = web.AppKey("dx.metrics")
GATEWAY = web.AppKey("dx.gateway", Gateway)  # the fleet, with `fleet:` (dxproxy/routing/gateway.py)

# -- on a request ------------------------------------------------------------------------------
REQUEST_ID = web.RequestKey("dx.request_id", str)
CLIENT = web.RequestKey("dx.client", str)  # the client's address (X-Forwarded-For if trusted)
CORS = web.RequestKey("dx.cors", dict[str, str])  # CORS headers for the answer
API_KEY = web.RequestKey("dx.key", KeyRecord)  # the key a request was made with
DECISION = web.RequestKey("dx.ratelimit", Decision)  # the rate limiter's verdict
# The configured model a request resolved to (its name, not the caller's spelling).
MODEL = web.RequestKey("dx.model", str)
KEEP_ALIVE = web.RequestKey("dx.keep_alive", float)  # an Ollama request's keep_alive, seconds
# Set when an engine replica is chosen (for the access log and metrics).
REPLICA = web.RequestKey("dx.replica", str)
QUEUE_WAIT = web.RequestKey("dx.queue_wait", float)  # seconds spent waiting for a replica
FIRST_BYTE: web.RequestKey[float] = web.RequestKey("dx.first_byte")  # monotonic, first body byte
USAGE: web.RequestKey[Usage] = web.RequestKey("dx.usage")  # tokens, as the engine counted
EARLY: web.RequestKey[EarlyStream] = web.RequestKey("dx.early_stream")
# A chat trimmed to fit its context (dxproxy/api/fit.py): (tokens, messages) dropped.
TRIMMED = web.RequestKey("dx.trimmed", tuple[int, int])
# How many tools a chat was sent without, when they did not fit its context (api/fit.py).
TOOLS_DROPPED = web.RequestKey("dx.tools_dropped", int)
# The client asked for its chat whole or refused (Ollama's `truncate: false`): never trimmed.
UNTRIMMED = web.RequestKey("dx.untrimmed", bool)
