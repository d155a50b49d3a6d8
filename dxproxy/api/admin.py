"""Admin API (admin keys only; the auth middleware guards the /admin prefix).

`GET /admin/models[?lines=N]`: every model and its replicas as the supervisor sees them:
state, engine, device and GPUs, settings, requests in flight and waiting, restarts, and for
a replica that failed, the reason and the engine's last N output lines (50 by default).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from dxproxy.http.errors import ApiError, json_response
from dxproxy.http.state import LIVE, LOADER, RELOADER, ROUTER, SUPERVISOR
from dxproxy.models.catalog import display_name
from supervisors import TAIL_LINES, Replica

routes = web.RouteTableDef()


@routes.get("/admin/models")
async def models(request: web.Request) -> web.Response:
    try:
        lines = int(request.query.get("lines", TAIL_LINES))
    except ValueError:
        raise ApiError(400, "lines: expected a whole number of output lines") from None
    supervisor, router = request.app[SUPERVISOR], request.app[ROUTER]
    out = []
    for m in request.app[LIVE].config.models:
        out.append(
            {
                "name": display_name(m.name),
                "engine": m.kind,
                "device": m.device,
                "placement_note": supervisor.placement_notes.get(m.name, ""),
                "load": m.load,
                # Unix time it unloads if it stays idle; null: it stays loaded.
                "expires_at": request.app[LOADER].expires_at(m),
                "waiting": router.waiting(m.name),
                "replicas": [replica(r, lines) for r in supervisor.replicas(m.name)],
            }
        )
    return json_response({"models": out})


def replica(r: Replica, lines: int) -> dict[str, Any]:
    head, _ = r.failure(0)
    return {
        "id": r.id,
        "state": str(r.state),
        "pid": r.pid,
        "port": r.port,
        "device": r.device,
        "settings": r.settings(),
        "in_flight": r.in_flight,
        "capacity": r.capacity,
        "restarts": r.restarts,
        "gave_up": r.gave_up,
        "ready_in_s": round(r.ready_in, 2),
        "started_at": r.started_at,
        "error": head,
        "output": r.output(max(0, min(lines, 2000))),
    }


@routes.post("/admin/reload")
async def reload(request: web.Request) -> web.Response:
    """Reload the config file now; answers when the engines are reconciled (a model being
    replaced waits for its new engines): 200 applied, 400 invalid (nothing changed)."""
    status = await request.app[RELOADER].reload("admin API")
    body = status.as_dict()
    if status.last_error:
        return json_response({"error": status.last_error, **body}, 400)
    return json_response(body)


@routes.get("/admin/reload")
async def reload_status(request: web.Request) -> web.Response:
    """Counts of reloads applied and refused, and the last error."""
    return json_response(request.app[RELOADER].status.as_dict())
