"""What Ollama clients probe first: `/` (the health check), /api/version, /api/status."""

from __future__ import annotations

from aiohttp import web

from dxproxy import OLLAMA_API_VERSION, __version__
from dxproxy.http.errors import json_response

routes = web.RouteTableDef()


@routes.get("/")
async def root(request: web.Request) -> web.Response:
    return web.Response(text="Ollama is running")  # what Ollama clients probe for


@routes.get("/api/version")
async def version(request: web.Request) -> web.Response:
    # A plain X.Y.Z: Open WebUI parses it as integers and fails on anything else.
    return json_response({"version": OLLAMA_API_VERSION, "dx_version": __version__})


@routes.get("/api/status")
async def status(request: web.Request) -> web.Response:
    # Ollama's cloud feature flag: DX has no cloud models, by its config.
    return json_response({"cloud": {"disabled": True, "source": "config"}})
