"""Probes for load balancers, systemd and Kubernetes, answered without a key.

- `/health`: DX is alive (the process runs and its event loop answers).
- `/ready`: DX can serve: the config is loaded and every model loaded at start has a ready
  replica. 503 otherwise, saying per model what it waits for or why it failed, so a load
  balancer keeps traffic away and a person sees the reason.

Both only read the supervisor's state; neither starts or stops anything. They say no more
than a model's state and its failure headline: engine output and replica details need an
admin key elsewhere.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from dxproxy.api.scrub import scrub_paths
from dxproxy.config import Config, ModelConfig
from dxproxy.http.errors import json_response
from dxproxy.http.state import LIVE, ROUTER, SUPERVISOR
from supervisors import ASLEEP, EngineState, Replica, Supervisor

routes = web.RouteTableDef()

# Probes poll: no cache (or proxy in front) may answer for DX.
NO_STORE = {"Cache-Control": "no-store"}


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    resp = json_response({"status": "ok"})
    resp.headers.update(NO_STORE)
    return resp


@routes.get("/ready")
async def ready(request: web.Request) -> web.Response:
    supervisor = request.app.get(SUPERVISOR)
    body = readiness(request.app[LIVE].config, supervisor)
    router = request.app.get(ROUTER)
    if router is not None and router.draining:  # SIGTERM: load balancers, look elsewhere
        body["status"] = "draining"
    resp = json_response(body, 200 if body["status"] == "ready" else 503)
    resp.headers.update(NO_STORE)
    return resp


def loads_at_start(model: ModelConfig) -> bool:
    """Models started with DX. A model loaded on its first request is not waited for:
    /ready must not fail for a model that is idle by design."""
    return model.load == "start"


def readiness(config: Config, supervisor: Supervisor | None) -> dict[str, Any]:
    """{"status": "ready"|"starting"|"unavailable", "models": {name: {...}}}.

    "starting": nothing has failed, engines are still coming up. "unavailable": a model has
    no ready replica because its engine failed (it may be restarting, or DX gave up) or is
    being stopped."""
    models: dict[str, dict[str, Any]] = {}
    for m in config.models:
        if loads_at_start(m) and not m.remote:  # a fleet or remote model: not this DX's
            replicas = supervisor.replicas(m.name) if supervisor is not None else []
            models[m.name] = model_state(replicas, m.replicas)
    states = {entry["state"] for entry in models.values()}
    # A group worker does its part while its engine runs; it is never sent requests (the
    # router picks only ready replicas), and its entry says so.
    if states <= {"ready", "worker"}:
        status = "ready"
    elif states <= {"ready", "starting"}:
        status = "starting"
    else:
        status = "unavailable"
    return {"status": status, "models": models}


def model_state(replicas: list[Replica], wanted: int) -> dict[str, Any]:
    ready = sum(1 for r in replicas if r.state is EngineState.READY)
    entry: dict[str, Any] = {"state": "ready", "replicas_ready": ready, "replicas": wanted}
    if ready:
        return entry
    workers = [r for r in replicas if r.state is EngineState.WORKER]
    if workers:
        group = workers[0].spec.group
        label = group.label if group is not None else ""
        entry.update(
            state="worker",
            reason=f"group worker ({label}): the leader serves this model; not for traffic here",
        )
        return entry
    failed = [r for r in replicas if r.state is EngineState.FAILED or r.gave_up]
    if failed:
        r = failed[0]
        # No key is needed here: paths (user names, install layout) are cut to file names.
        headline = scrub_paths(r.failure(0)[0].removesuffix("; its last output:"))
        if r.gave_up:
            after = "DX gave up restarting it; fix the model or its config"
        else:
            after = "restarting"
        entry.update(state="failed", reason=f"{headline} ({after})")
    elif replicas and all(r.state in ASLEEP for r in replicas):
        # vLLM sleep mode: no request reaches it, and the next one wakes it (in about a second)
        entry.update(state="ready", reason="asleep; wakes at its next request")
    elif not replicas:
        entry.update(state="starting", reason="not started yet")
    elif any(r.state is EngineState.STARTING for r in replicas):
        group = replicas[0].spec.group
        if group is not None and group.size > 1:
            why = f"engine starting; ready once all {group.size} group members joined"
            if not group.is_leader:
                why = f"group worker starting ({group.label})"
            entry.update(state="starting", reason=why)
        else:
            entry.update(state="starting", reason="engine starting")
    else:  # draining or stopping: a shutdown, or a model being replaced
        states = ", ".join(sorted({str(r.state) for r in replicas}))
        entry.update(state="stopped", reason=f"engine {states}")
    return entry
