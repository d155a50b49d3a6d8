"""A gateway's catalog: its own models and the fleet's, as one list.

/api/tags, /v1/models and /api/ps list, besides the models of the gateway's config, every
model a healthy node of its fleet serves now (as the gateway serves them: `implicit` in
dxproxy/routing/gateway.py). A configured `upstream:` model is listed as running (/api/ps)
while some node serves it. Without a `fleet:` section each of these adds nothing.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from dxproxy.http.state import GATEWAY, LIVE
from dxproxy.models.catalog import display_name

EPOCH = "1970-01-01T00:00:00Z"


def _fleet_names(request: web.Request) -> list[str]:
    gateway = request.app.get(GATEWAY)
    if gateway is None or gateway.membership is None:
        return []
    return gateway.fleet_models(request.app[LIVE].config)


def tags_entries(request: web.Request) -> list[dict[str, Any]]:
    """Ollama /api/tags entries of the fleet's models the config does not name."""
    return [
        {
            "name": display_name(name),
            "model": display_name(name),
            "modified_at": EPOCH,
            "size": 0,  # on the nodes, not here
            "digest": "",
            "details": {"format": "", "family": "", "families": None, "parameter_size": ""},
            "capabilities": ["completion"],
        }
        for name in _fleet_names(request)
    ]


def openai_entries(request: web.Request) -> list[dict[str, Any]]:
    """OpenAI /v1/models entries of the fleet's models the config does not name."""
    return [
        {"id": name, "object": "model", "created": 0, "owned_by": "dx-fleet"}
        for name in _fleet_names(request)
    ]


def ps_entries(request: web.Request, expires: str) -> list[dict[str, Any]]:
    """Ollama /api/ps entries: every fleet model (configured or not) some node serves now."""
    gateway = request.app.get(GATEWAY)
    if gateway is None or gateway.membership is None:
        return []
    config = request.app[LIVE].config
    serving = gateway.membership.all_models()
    names = [m.name for m in config.models if m.upstream == "fleet" and m.name in serving]
    names += gateway.fleet_models(config)
    return [
        {
            "name": display_name(name),
            "model": display_name(name),
            "size": 0,
            "digest": "",
            "details": {},
            "expires_at": expires,
            "size_vram": 0,
            "context_length": 0,
            "nodes": serving[name],  # DX's own field: which nodes serve it
        }
        for name in names
    ]
