"""The console: one static page at `/ui` (HTML, one script, one stylesheet, from package
data) and the few admin endpoints it needs beyond dxproxy/api/admin.py.

The page holds no data and no secret, so it is served to anyone (its paths are open in
dxproxy/http/auth.py); everything it shows comes from /admin/* with the admin key the operator
types in, kept in the browser's sessionStorage. A strict Content-Security-Policy allows only
DX's own script, stylesheet and API (no inline script or style, no other origin, no framing).

Admin endpoints (admin keys only, like all of /admin):
- `POST /admin/models/{name}/load`: load now; answers once a replica serves.
- `POST /admin/models/{name}/unload`: stop its engines; answers once they are stopped.
- `POST /admin/models/{name}/sleep`: vLLM sleep mode now (409 if it cannot); load wakes it.
- `GET /admin/replicas/{id}/log?lines=N`: one replica's last N engine output lines (200).
- `GET /admin/keys`: the stored keys (names, scopes, expiry; never a key or its digest).
- `POST /admin/keys/{name}/revoke`: as `dx keys revoke NAME` (and in Redis, where shared).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from aiohttp import web

from dxproxy.config import ModelConfig
from dxproxy.http.errors import ApiError, json_response
from dxproxy.http.state import API_KEY, LIVE, LOADER, SUPERVISOR
from dxproxy.keys.limits import revoke_everywhere
from dxproxy.keys.store import KeyRecord, KeyStoreError, read_store, revoke_key
from dxproxy.models.catalog import display_name
from dxproxy.routing.router import Unavailable

log = logging.getLogger("dx.console")
routes = web.RouteTableDef()

STATIC = Path(__file__).with_name("console_static")
# The page's files, by URL path: (file, content type). Also the open paths of auth.py.
FILES = {
    "/ui": ("index.html", "text/html"),
    "/ui/console.js": ("console.js", "text/javascript"),
    "/ui/console.css": ("console.css", "text/css"),
}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
LOG_LINES = 200
MAX_LOG_LINES = 2000


async def _file(request: web.Request) -> web.Response:
    name, kind = FILES[request.path]
    body = (STATIC / name).read_bytes()  # a few KB, read per request: edits show at once
    return web.Response(body=body, content_type=kind, charset="utf-8", headers=HEADERS)


for _path in FILES:
    routes.get(_path)(_file)


def _model(request: web.Request) -> ModelConfig:
    name = request.match_info["name"]
    for m in request.app[LIVE].config.models:
        if name in (m.name, display_name(m.name)):
            return m
    raise ApiError(404, f"model '{name}' is not in the config")


@routes.post("/admin/models/{name:.+}/load")
async def load(request: web.Request) -> web.Response:
    model = _model(request)
    try:
        await request.app[LOADER].load(model)
    except Unavailable as exc:
        raise ApiError(exc.status, exc.message) from None
    return json_response({"model": display_name(model.name), "loaded": True})


@routes.post("/admin/models/{name:.+}/unload")
async def unload(request: web.Request) -> web.Response:
    model = _model(request)
    await request.app[LOADER].unload(model)
    return json_response({"model": display_name(model.name), "loaded": False})


@routes.post("/admin/models/{name:.+}/sleep")
async def sleep(request: web.Request) -> web.Response:
    model = _model(request)
    if not await request.app[LOADER].sleep(model):
        raise ApiError(
            409,
            f"model '{display_name(model.name)}' cannot sleep now: it needs engine vllm with "
            "sleep_mode: true, a serving replica, and no request on it",
        )
    return json_response({"model": display_name(model.name), "asleep": True})


@routes.get("/admin/replicas/{id:.+}/log")
async def replica_log(request: web.Request) -> web.Response:
    try:
        lines = int(request.query.get("lines", LOG_LINES))
    except ValueError:
        raise ApiError(400, "lines: expected a whole number of output lines") from None
    wanted = request.match_info["id"]
    supervisor = request.app[SUPERVISOR]
    for m in request.app[LIVE].config.models:
        for r in supervisor.replicas(m.name):
            if r.id == wanted:
                out = r.output(max(0, min(lines, MAX_LOG_LINES)))
                return json_response({"replica": r.id, "state": str(r.state), "output": out})
    raise ApiError(404, f"no replica '{wanted}'")


def _key(r: KeyRecord) -> dict[str, Any]:
    return {
        "name": r.name,
        "prefix": r.prefix,
        "admin": r.admin,
        "models": list(r.models) if r.models is not None else None,
        "rpm": r.rpm,
        "tpm": r.tpm,
        "concurrency": r.concurrency,
        "created": r.created,
        "expires": r.expires,
    }


@routes.get("/admin/keys")
async def keys(request: web.Request) -> web.Response:
    state_dir = request.app[LIVE].config.server.state_dir
    try:
        records = await asyncio.to_thread(read_store, state_dir)
    except (KeyStoreError, OSError) as exc:
        raise ApiError(500, f"cannot read the key store: {exc}") from None
    return json_response({"keys": [_key(r) for r in records]})


@routes.post("/admin/keys/{name}/revoke")
async def revoke(request: web.Request) -> web.Response:
    config = request.app[LIVE].config
    name = request.match_info["name"]
    try:
        gone = await asyncio.to_thread(revoke_key, config.server.state_dir, name)
    except KeyStoreError as exc:
        raise ApiError(404, str(exc)) from None
    except OSError as exc:
        raise ApiError(500, f"cannot write the key store: {exc}") from None
    by = request.get(API_KEY)
    log.info("key '%s' revoked through the admin API by '%s'", name, by.name if by else "?")
    shared = False
    if config.limits.redis_url:
        try:
            await revoke_everywhere(config.limits.redis_url, gone.digest)
            shared = True
        except Exception as exc:  # the local revocation stands; say what did not happen
            log.warning("key '%s': could not record the revocation in Redis: %s", name, exc)
    return json_response({"revoked": gone.name, "shared": shared})
