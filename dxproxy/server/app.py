"""Builds the aiohttp application: the edge, the routes, and the long-lived services.

Everything shared is set on the app here, once, under the keys of dxproxy/http/state.py; the
services themselves are given their collaborators and never see the app.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Middleware

from dxproxy.api import (
    admin,
    anthropic,
    console,
    fleet_node,
    health,
    ollama,
    openai,
    responses,
)
from dxproxy.api.ollama import pull as ollama_pull
from dxproxy.api.response_store import stored_responses
from dxproxy.config import Config
from dxproxy.http import metrics
from dxproxy.http.access import Access
from dxproxy.http.auth import Gate
from dxproxy.http.errors import error_middleware
from dxproxy.http.state import (
    GATEWAY,
    LIVE,
    LOADER,
    RELOADER,
    ROUTER,
    SESSION,
    SUPERVISOR,
    UPSTREAM,
)
from dxproxy.models.catalog import Catalog
from dxproxy.routing.gateway import Gateway
from dxproxy.routing.live import Live
from dxproxy.routing.loader import Loader
from dxproxy.routing.router import Router
from dxproxy.routing.upstream import Upstream
from dxproxy.server.reload import Reloader
from supervisors import Supervisor


def make_app(
    config: Config,
    catalog: Catalog,
    *,
    api_keys: tuple[str, ...],
    config_path: Path | None = None,
    on_reloading: Callable[[], object] = lambda: None,
    on_reloaded: Callable[[str], object] = lambda _: None,
) -> web.Application:
    """The app for `config` (and its `catalog`, built off the loop by the caller). The
    reloader applies `config_path` while serving; `on_reloading`/`on_reloaded` are told
    around each reload (systemd's notify protocol)."""
    # Keys, limits and the door (dxproxy/http/auth.py, door.py); with auth off, only the door
    # and the default per-key limits (applied per client address).
    gate = Gate(config, api_keys=api_keys)
    # Outermost: request ids, metrics and the access log see every answer, errors included.
    access = Access(metrics.Metrics())
    middlewares: list[Middleware] = [access.middleware, error_middleware, gate.middleware]
    app = web.Application(middlewares=middlewares, client_max_size=config.server.max_body_bytes)
    gate.install(app)
    access.install(app)
    app[LIVE] = Live(config, catalog)
    app.add_routes(health.routes)  # /health, /ready
    app.add_routes(ollama.routes)
    ollama_pull.install(app)  # /api/pull of hf.co/... models: the pulls in progress
    app.add_routes(openai.routes)
    app.add_routes(responses.routes)  # OpenAI Responses (Codex), translated
    app.cleanup_ctx.append(stored_responses)  # what previous_response_id refers to
    app.add_routes(anthropic.routes)  # Anthropic Messages (Claude Code), translated
    app.add_routes(admin.routes)  # /admin/*: admin keys only
    app.add_routes(console.routes)  # /ui (open, no data) and its /admin/* actions and logs
    app.add_routes(metrics.routes)  # /metrics: admin keys only, unless server.metrics_open
    app.add_routes(fleet_node.routes)  # /fleet/state: what gateways poll (admin keys)

    async def engines(app: web.Application) -> AsyncIterator[None]:
        """The engine side: the connections to the engines (one pooled session), the
        supervisor, the router, the loader and the reloader. Engines are started by `Server`
        once the port is bound (so a busy port costs no engine start); they are stopped here,
        after the HTTP side has drained."""
        # One session for every engine call: pooled keep-alive connections, no per-request
        # setup, and no request lost to a connection the engine closed (upstream.py).
        upstream = Upstream()
        gateway = Gateway()  # the fleet's nodes, with a `fleet:` section
        supervisor = Supervisor(
            upstream.session,
            grace=config.server.shutdown_timeout,
            log_dir=config.server.state_dir / "logs",  # per-engine files, for `dx logs`
            cpus=config.server.cpus,  # divided among the CPU replicas (a restart applies it)
        )
        live = app[LIVE]
        router = Router(supervisor, config.limits)
        loader = Loader(supervisor, router, live)  # which models run: at start, on demand
        app[UPSTREAM] = upstream
        app[SESSION] = upstream.session
        app[SUPERVISOR] = supervisor
        app[ROUTER] = router
        app[LOADER] = loader
        app[GATEWAY] = gateway
        app[RELOADER] = Reloader(
            config_path,
            live=live,
            router=router,
            loader=loader,
            supervisor=supervisor,
            # A reloaded config's keys and limits apply at once; a new fleet: section too.
            hooks=[gate.update, gateway.reapply],
            on_reloading=on_reloading,
            on_reloaded=on_reloaded,
        )
        turns = asyncio.create_task(loader.run())  # loads on demand, unloads idle models
        await gateway.apply(config)  # its nodes polled once before the first request
        try:
            yield
        finally:
            turns.cancel()
            await gateway.close()
            await supervisor.close()
            await upstream.close()

    app.cleanup_ctx.append(engines)
    return app
