"""The fleet's node-side and gateway pieces that need no network: a model's state as
/fleet/state says it, the ORCA load header, the KV-cache reading, the Via guard, and how a
gateway names its choice for the affinity metric."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from dxproxy.api.fleet_call import LOOP, _affinity, guard_loop
from dxproxy.api.fleet_node import model_state
from dxproxy.config import ModelConfig
from dxproxy.fleet.orca import parse_orca
from dxproxy.fleet.pick import Candidate, Choice
from dxproxy.fleet.state import parse_state
from dxproxy.http.errors import ApiError
from dxproxy.http.fleet_metrics import kv_usage
from dxproxy.http.loadreport import load_report
from dxproxy.http.state import MODEL, ROUTER, SUPERVISOR
from supervisors import EngineState

MODEL_CFG = ModelConfig(name="qwen", engine="llamacpp", model="/m.gguf")


def replica(state: EngineState, in_flight: int = 0, capacity: int = 4, **kw: Any) -> Any:
    return SimpleNamespace(state=state, in_flight=in_flight, capacity=capacity, gave_up=False,
                           **kw)


class Router:
    def __init__(self, waiting: int = 0, draining: bool = False) -> None:
        self.draining = draining
        self._waiting = waiting

    def waiting(self, model: str) -> int:
        return self._waiting


class Supervisor:
    def __init__(self, *replicas: Any) -> None:
        self._replicas = list(replicas)

    def replicas(self, model: str) -> list[Any]:
        return self._replicas


class Loader:
    def __init__(self, running: bool = True) -> None:
        self._running = running

    def running(self, model: ModelConfig) -> bool:
        return self._running


def state(sup: Supervisor, router: Router | None = None, loader: Loader | None = None,
          model: ModelConfig = MODEL_CFG, kv: float | None = None) -> dict[str, Any]:
    s = model_state(model, router or Router(), sup, loader or Loader(), kv)  # type: ignore[arg-type]
    # What a gateway reads must parse (the shape dxproxy/fleet/state.py fixes).
    parsed = parse_state({"node": "n", "generation": 0, "draining": False,
                          "models": {"qwen": {"state": s.state, "ready": s.ready,
                                              "in_flight": s.in_flight, "capacity": s.capacity,
                                              "queued": s.queued, "kv_cache": s.kv_cache}}})
    assert parsed.models["qwen"] == s
    return {"state": s.state, "ready": s.ready, "in_flight": s.in_flight,
            "capacity": s.capacity, "queued": s.queued, "kv_cache": s.kv_cache}


def test_a_ready_model_counts_its_replicas() -> None:
    sup = Supervisor(replica(EngineState.READY, 2), replica(EngineState.READY, 1),
                     replica(EngineState.STARTING))
    assert state(sup, Router(waiting=3), kv=0.25) == {
        "state": "ready", "ready": 2, "in_flight": 3, "capacity": 8, "queued": 3,
        "kv_cache": 0.25}


@pytest.mark.parametrize(("replicas", "router", "loader", "model", "expected"), [
    ([replica(EngineState.STARTING)], Router(), Loader(), MODEL_CFG, "loading"),
    ([], Router(), Loader(running=False),
     ModelConfig(name="qwen", engine="llamacpp", model="/m", load="on_demand"), "idle"),
    ([replica(EngineState.FAILED)], Router(), Loader(), MODEL_CFG, "failed"),
    ([replica(EngineState.READY)], Router(draining=True), Loader(), MODEL_CFG, "draining"),
    ([], Router(), Loader(), MODEL_CFG, "stopped"),
])
def test_model_states(replicas: list[Any], router: Router, loader: Loader,
                      model: ModelConfig, expected: str) -> None:
    assert state(Supervisor(*replicas), router, loader, model)["state"] == expected


def test_the_load_header_names_waiting_and_running() -> None:
    app = web.Application()
    app[ROUTER] = Router(waiting=2)  # type: ignore[assignment]
    app[SUPERVISOR] = Supervisor(replica(EngineState.READY, 3))  # type: ignore[assignment]
    request = make_mocked_request("POST", "/v1/chat/completions", app=app)
    assert load_report(request) is None  # no model resolved: nothing to report
    request[MODEL] = "qwen"
    report = load_report(request)
    assert report == "TEXT named_metrics.num_requests_waiting=2.0, " \
                     "named_metrics.num_requests_running=3.0"
    assert parse_orca(report) == {"num_requests_waiting": 2.0, "num_requests_running": 3.0}


def test_kv_cache_use_from_the_engines_metrics() -> None:
    assert kv_usage("# HELP x\nllamacpp:kv_cache_usage_ratio 0.125\n") == 0.125
    assert kv_usage('vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.5\n') == 0.5
    assert kv_usage('vllm:gpu_cache_usage_perc{model_name="m"} 1.0\n') == 1.0
    assert kv_usage("llamacpp:prompt_tokens_total 12\n") is None


def test_via_guard() -> None:
    remote = ModelConfig(name="q", engine="llamacpp", model="", upstream="fleet")
    guard_loop(make_mocked_request("POST", "/v1/chat/completions"), remote)
    guard_loop(make_mocked_request("POST", "/x", headers={"Via": "1.1 caddy"}), remote)
    with pytest.raises(ApiError) as err:
        guard_loop(make_mocked_request("POST", "/x", headers={"Via": "1.1 dx-gateway"}), remote)
    assert err.value.status == LOOP == 508 and "loop refused" in err.value.message


def test_affinity_kinds() -> None:
    a, b = Candidate("a", 0), Candidate("b", 0)
    assert _affinity(Choice([a, b], home=None, spilled=False)) == "none"
    assert _affinity(Choice([a, b], home="a", spilled=False)) == "home"
    assert _affinity(Choice([b, a], home="a", spilled=True)) == "spill"
    assert _affinity(Choice([b], home="b", spilled=False, moved=True)) == "moved"
