"""The node side of the fleet: what a DX tells the gateways in front of it.

- `GET /fleet/state` (admin keys: the key a gateway sends as `fleet.node_key` is listed in the
  node's `auth.keys`, which are admin keys): the node's name, its config generation, whether
  it drains, and per model served by its own engines its state, ready replicas, requests in
  flight, capacity, requests queued and KV-cache use, in the shape dxproxy/fleet/state.py
  fixes. Built from the router's and supervisor's counters in memory: it never asks an engine
  (KV-cache use is what the engines said at the last /metrics scrape, else null).
- the `endpoint-load-metrics` header (ORCA text, as vLLM sends it) on a request that asked
  with `endpoint-load-metrics-format: text`: dxproxy/http/loadreport.py.

A model served elsewhere (`upstream:`) is never listed: a node answers only for its engines,
and a gateway never sends a request on a second remote hop (the `Via` guard in
dxproxy/api/fleet_call.py).
"""

from __future__ import annotations

import socket

from aiohttp import web

from dxproxy.config import ModelConfig
from dxproxy.fleet.state import ModelState, NodeState
from dxproxy.http.errors import json_response
from dxproxy.http.state import LIVE, LOADER, METRICS, RELOADER, ROUTER, SUPERVISOR
from dxproxy.routing.loader import Loader
from dxproxy.routing.router import Router
from supervisors import ASLEEP, EngineState, Supervisor

routes = web.RouteTableDef()

NO_STORE = {"Cache-Control": "no-store"}


@routes.get("/fleet/state")
async def fleet_state(request: web.Request) -> web.Response:
    app = request.app
    config = app[LIVE].config
    router, supervisor, loader = app[ROUTER], app[SUPERVISOR], app[LOADER]
    kv = app[METRICS].fleet.kv if METRICS in app else {}
    models = {
        m.name: model_state(m, router, supervisor, loader, kv.get(m.name))
        for m in config.models
        if not m.remote
    }
    reloader = app.get(RELOADER)
    state = NodeState(
        node=f"{socket.gethostname()}:{config.server.port}",
        generation=reloader.status.ok if reloader is not None else 0,
        draining=router.draining,
        models=models,
    )
    resp = json_response(state.to_json())
    resp.headers.update(NO_STORE)
    return resp


def model_state(
    model: ModelConfig,
    router: Router,
    supervisor: Supervisor,
    loader: Loader,
    kv_cache: float | None = None,
) -> ModelState:
    replicas = supervisor.replicas(model.name)
    ready = [r for r in replicas if r.state is EngineState.READY]
    if router.draining:
        state = "draining"
    elif ready:
        state = "ready"
    elif replicas and all(r.state in ASLEEP for r in replicas):
        state = "sleeping"
    elif any(r.state is EngineState.STARTING for r in replicas):
        state = "loading"
    elif not replicas and model.load == "on_demand" and not loader.running(model):
        state = "idle"  # loads at its first request
    elif any(r.gave_up or r.state is EngineState.FAILED for r in replicas):
        state = "failed"
    else:
        state = "stopped"
    return ModelState(
        state=state,
        ready=len(ready),
        in_flight=sum(r.in_flight for r in replicas),
        capacity=sum(r.capacity for r in ready),
        queued=router.waiting(model.name),
        # Only the engines know it, and this answer never asks them: as they said at the last
        # /metrics scrape (dxproxy/http/fleet_metrics.py), or null.
        kv_cache=kv_cache,
    )
