"""Builds the aiohttp application: middlewares, routes, and the long-lived resources."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Middleware

from dxproxy import health, metrics
from dxproxy.access import Access
from dxproxy.api import admin, anthropic, ollama, openai, responses
from dxproxy.auth import Gate
from dxproxy.catalog import build_catalog
from dxproxy.config import Config
from dxproxy.errors import error_middleware
from dxproxy.keys import CATALOG, CONFIG, ROUTER, SESSION, SUPERVISOR
from dxproxy.loader import LOADER, Loader
from dxproxy.reload import CONFIG_HOOKS
from dxproxy.router import Router
from supervisors.supervisor import Supervisor

ENGINE_KEEPALIVE = 4.0  # seconds an idle pooled engine connection is kept


def make_app(
    config: Config, *, api_keys: tuple[str, ...], key_file: Path | None
) -> web.Application:
    # Keys, limits and the door (dxproxy/auth.py, door.py); with auth off, only the door and
    # the default per-key limits (applied per client address).
    gate = Gate(config, api_keys=api_keys)
    # Outermost: request ids, metrics and the access log see every answer, errors included.
    access = Access(metrics.Metrics(config))
    middlewares: list[Middleware] = [access.middleware, error_middleware, *gate.middlewares]
    app = web.Application(middlewares=middlewares, client_max_size=config.server.max_body_bytes)
    gate.install(app)
    access.install(app)
    app[CONFIG] = config
    app[CONFIG_HOOKS] = [gate.update]  # a reloaded config's keys and limits apply at once
    app[LOADER] = Loader(app)  # which models run: at start, on demand, until idle
    app.add_routes(health.routes)  # /health, /ready
    app.add_routes(ollama.routes)
    app.add_routes(openai.routes)
    app.add_routes(responses.routes)  # OpenAI Responses (Codex), translated
    app.add_routes(anthropic.routes)  # Anthropic Messages (Claude Code), translated
    app.add_routes(admin.routes)  # /admin/*: admin keys only
    app.add_routes(metrics.routes)  # /metrics: admin keys only, unless server.metrics_open
    app.cleanup_ctx.append(_engines)
    return app


async def _engines(app: web.Application) -> AsyncIterator[None]:
    """The engine side: one pooled client session, the supervisor, the router.

    Engines are started by `Server` once the port is bound (so a busy port costs no engine
    start); they are stopped here, after the HTTP side has drained.
    """
    config = app[CONFIG]
    # One session for every engine call: pooled keep-alive connections, no per-request setup.
    # Idle connections are dropped before the engines drop them (llama-server's HTTP library
    # and vLLM's uvicorn both close after 5 s): a request must never be written into a
    # connection the engine has just closed.
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=ENGINE_KEEPALIVE)
    session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
    supervisor = Supervisor(
        session,
        grace=config.server.shutdown_timeout,
        log_dir=config.server.state_dir / "logs",  # per-engine files, for `dx logs`
    )
    app[SESSION] = session
    app[SUPERVISOR] = supervisor
    app[ROUTER] = Router(supervisor, config.limits)
    app[CATALOG] = await asyncio.to_thread(build_catalog, config)
    expiry = asyncio.create_task(app[LOADER].run())  # unloads idle on-demand models
    try:
        yield
    finally:
        expiry.cancel()
        await supervisor.close()
        await session.close()
