"""The console: one static page at `/ui` (HTML, one script, one stylesheet, from package
data) and the few admin endpoints it needs beyond dxproxy/api/admin.py.

The page holds no data and no secret, so it is served to anyone (its paths are open in
dxproxy/http/auth.py); everything it shows comes from /admin/* with the admin key the operator
types in, kept in the browser's sessionStorage. A strict Content-Security-Policy allows only
DX's own script, stylesheet and API (no inline script or style, no other origin, no framing).

Admin endpoints (admin keys only, like all of /admin):
- `POST /admin/models/{name}/load`: load now; answers once a replica serves.
- `POST /admin/models/{name}/unload`: stop its engines; answers once they are stopped.
- `GET /admin/replicas/{id}/log?lines=N`: one replica's last N engine output lines (200).
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from dxproxy.config import ModelConfig
from dxproxy.http.errors import ApiError, json_response
from dxproxy.http.state import LIVE, LOADER, SUPERVISOR
from dxproxy.models.catalog import display_name
from dxproxy.routing.router import Unavailable

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
