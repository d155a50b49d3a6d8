"""The fleet's metrics, read at scrape time by `Metrics` (dxproxy/http/metrics.py).

On every DX (a node), per model served by its own engines, under names the Kubernetes Gateway
API Inference Extension's endpoint picker can be pointed at (its flags
`--total-queued-requests-metric=dx_model_requests_waiting`,
`--total-running-requests-metric=dx_model_requests_running`,
`--kv-cache-usage-percentage-metric=dx_model_kv_cache_usage_perc`; its defaults are vLLM's
`vllm:*` names, which DX leaves to the engines' own metrics that it re-exports per replica):
    dx_model_requests_waiting{model_name}     waiting in DX for a slot
    dx_model_requests_running{model_name}     running in the model's engines
    dx_model_kv_cache_usage_perc{model_name}  0..1, the mean over its ready replicas, as the
                                               engines said at this scrape (absent if none does)

On a gateway (a `fleet:` section):
    dx_fleet_upstream_state{node, state}      1 for the node's health: healthy, ejected, probing
    dx_fleet_upstream_ejections_total{node}
    dx_fleet_upstream_in_flight{node, model}  this gateway's requests running on the node
    dx_fleet_requests_total{node, model, outcome}   ok, failed (connect, stall), http_NNN
    dx_fleet_retries_total{model}             requests sent to a next node
    dx_fleet_affinity_total{model, kind}      home, spill (home over the load bound), moved
                                               (home ejected or gone), none (no conversation)
    dx_fleet_fallbacks_total{model, fallback} requests that went on to a fallback model
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dxproxy.config import Config
from dxproxy.routing.gateway import Gateway
from supervisors import Replica

# KV-cache use in the engines' own /metrics: llama-server's ratio, vLLM's (v1, then v0) perc.
_KV = re.compile(
    rb"^(?:llamacpp:kv_cache_usage_ratio|vllm:kv_cache_usage_perc|vllm:gpu_cache_usage_perc)"
    rb"(?:\{[^}]*\})? ([0-9.eE+-]+)",
    re.MULTILINE,
)


def kv_usage(text: str) -> float | None:
    """The KV-cache use an engine's /metrics text reports (0..1), or None."""
    found = _KV.search(text.encode())
    if found is None:
        return None
    try:
        return float(found.group(1))
    except ValueError:
        return None


class FleetCollector(Collector):
    def __init__(self) -> None:
        self.config: Config | None = None
        self.supervisor: Any = None
        self.router: Any = None
        self.gateway: Gateway | None = None
        # The last KV-cache use per model, as its engines said at a scrape (/fleet/state
        # shows it too: that answer never asks the engines itself).
        self.kv: dict[str, float] = {}

    def engines_said(self, replicas: list[Replica], texts: list[str | None]) -> None:
        per_model: dict[str, list[float]] = {}
        for replica, text in zip(replicas, texts, strict=False):
            usage = kv_usage(text) if text else None
            if usage is not None:
                per_model.setdefault(replica.name, []).append(usage)
        self.kv = {m: sum(v) / len(v) for m, v in per_model.items()}

    def collect(self) -> Iterable[Metric]:
        yield from self._node()
        yield from self._gateway()

    def _node(self) -> Iterator[Metric]:
        labels = ["model_name"]
        waiting = GaugeMetricFamily(
            "dx_model_requests_waiting", "Requests waiting in DX for a slot.", labels=labels
        )
        running = GaugeMetricFamily(
            "dx_model_requests_running", "Requests running in the model's engines.", labels=labels
        )
        kv = GaugeMetricFamily(
            "dx_model_kv_cache_usage_perc",
            "KV-cache use of the model's engines, 0..1 (the mean over its ready replicas).",
            labels=labels,
        )
        if self.config is not None and self.supervisor is not None:
            for m in self.config.models:
                if m.remote:
                    continue
                if self.router is not None:
                    waiting.add_metric([m.name], self.router.waiting(m.name))
                running.add_metric(
                    [m.name], sum(r.in_flight for r in self.supervisor.replicas(m.name))
                )
                if m.name in self.kv:
                    kv.add_metric([m.name], self.kv[m.name])
        yield from (waiting, running, kv)

    def _gateway(self) -> Iterator[Metric]:
        gateway = self.gateway
        if gateway is None or gateway.membership is None:
            return
        membership = gateway.membership
        state = GaugeMetricFamily(
            "dx_fleet_upstream_state",
            "A node's health as this gateway sees it: 1 for the current state.",
            labels=["node", "state"],
        )
        ejections = CounterMetricFamily(
            "dx_fleet_upstream_ejections", "Times a node was ejected.", labels=["node"]
        )
        for info in membership.members():
            for s in ("healthy", "ejected", "probing"):
                state.add_metric([info.id, s], 1 if info.health == s else 0)
            ejections.add_metric([info.id], info.ejections)
        in_flight = GaugeMetricFamily(
            "dx_fleet_upstream_in_flight",
            "This gateway's requests running on a node.",
            labels=["node", "model"],
        )
        for model in membership.all_models():
            for view in membership.nodes_for(model):
                in_flight.add_metric([view.id, model], view.gateway_in_flight)
        outcomes = CounterMetricFamily(
            "dx_fleet_requests",
            "Requests sent to nodes, by outcome: ok, failed (no answer), http_NNN.",
            labels=["node", "model", "outcome"],
        )
        for (node, model, outcome), n in gateway.outcomes.items():
            outcomes.add_metric([node, model, outcome], n)
        retries = CounterMetricFamily(
            "dx_fleet_retries", "Requests sent on to a next node.", labels=["model"]
        )
        for model, n in gateway.retries.items():
            retries.add_metric([model], n)
        affinity = CounterMetricFamily(
            "dx_fleet_affinity",
            "How the first node was chosen: home, spill, moved, none (no conversation).",
            labels=["model", "kind"],
        )
        for (model, kind), n in gateway.affinity.items():
            affinity.add_metric([model, kind], n)
        fallbacks = CounterMetricFamily(
            "dx_fleet_fallbacks",
            "Requests that went on to a fallback model.",
            labels=["model", "fallback"],
        )
        for (model, fallback), n in gateway.fallbacks.items():
            fallbacks.add_metric([model, fallback], n)
        yield from (state, ejections, in_flight, outcomes, retries, affinity, fallbacks)
