"""The `endpoint-load-metrics` response header: this node's load, in ORCA's text form.

Added by the access hook (dxproxy/http/access.py) to a response whose request asked for it
with `endpoint-load-metrics-format: text` (a DX gateway always does; so may an Envoy): the
model's requests waiting in DX for a slot and running in its engines, under vLLM's names
(dxproxy/fleet/orca.py), so a gateway's view of the node is fresh between its polls of
/fleet/state. A request without that header pays one dict lookup.
"""

from __future__ import annotations

from aiohttp import web

from dxproxy.fleet.orca import RUNNING, WAITING, format_orca
from dxproxy.http.state import MODEL, ROUTER, SUPERVISOR


def load_report(request: web.Request) -> str | None:
    """The `endpoint-load-metrics` value for the model this request used (None: it used
    none of this node's engines)."""
    name = request.get(MODEL)
    app = request.app
    if name is None or ROUTER not in app:
        return None
    replicas = app[SUPERVISOR].replicas(name)
    if not replicas:
        return None
    # KV-cache use is left out: only the engine knows it, and this never asks the engine.
    metrics: dict[str, float] = {
        WAITING: app[ROUTER].waiting(name),
        RUNNING: sum(r.in_flight for r in replicas),
    }
    return format_orca(metrics)
