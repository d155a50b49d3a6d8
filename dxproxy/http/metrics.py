"""Prometheus metrics at `GET /metrics` (admin keys only, unless `server.metrics_open`).

Per request (counted by `dxproxy.http.access` as each request ends; a few label lookups and
histogram updates, nothing per streamed chunk):
    dx_requests_total{route, model, status, key}
    dx_request_duration_seconds{route, model}      whole request, a stream to its end
    dx_time_to_first_token_seconds{route, model}   to the first body byte of an engine stream
    dx_queue_wait_seconds{model}                   waiting for a free replica
    dx_prompt_tokens_total / dx_completion_tokens_total{model, key}   as the engine counted
    dx_rate_limited_total{key}                     429 answers

Read at scrape time (nothing runs between scrapes):
    dx_queue_waiting{model}, dx_replica_in_flight / dx_replica_capacity{model, replica},
    dx_replica_state{model, replica, state} (1 for the current state), dx_replica_restarts_total,
    dx_config_reloads_total{result}, dx_gpu_* per device (NVML, when there is a GPU), and each
    ready engine's own metrics (`llamacpp:*`, `vllm:*`) with `model` and `replica` labels
    added; `dx_engine_metrics_up{model, replica}` says whether that scrape worked.

The fleet's (per-model gauges for the Gateway API Inference Extension, a gateway's nodes):
dxproxy/http/fleet_metrics.py.

Label values are bounded: `model` is a configured model name (or empty when a request never
reached one), `key` a key's name (requests without auth are "anonymous"), `route` the
matched route's pattern ("other" for unknown paths).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterable, Iterator
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from dxproxy import __version__
from dxproxy.config import Config
from dxproxy.http.fleet_metrics import FleetCollector
from dxproxy.http.state import (
    GATEWAY,
    LIVE,
    LOADER,
    METRICS,
    RELOADER,
    ROUTER,
    SESSION,
    SUPERVISOR,
)
from supervisors import EngineState, Gpu, Replica, read_gpus

log = logging.getLogger("dx.metrics")

INF = math.inf
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, INF)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, INF)
QUEUE_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, INF)
# An engine that does not answer its /metrics within this is reported down for this scrape,
# so one hung engine never makes Prometheus's own scrape time out.
ENGINE_SCRAPE_TIMEOUT = aiohttp.ClientTimeout(total=2.0)


class Metrics:
    """Every metric of one app, in its own registry (several apps may live in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "dx_requests",
            "Requests answered, by route, model, HTTP status and API key name.",
            ["route", "model", "status", "key"],
            registry=r,
        )
        self.latency = Histogram(
            "dx_request_duration_seconds",
            "Time from the request's arrival to the end of its response (a stream's last byte).",
            ["route", "model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "dx_time_to_first_token_seconds",
            "Time from a streamed request's arrival to the first body byte sent back.",
            ["route", "model"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "dx_queue_wait_seconds",
            "Time a request waited for a replica with a free slot.",
            ["model"],
            buckets=QUEUE_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "dx_prompt_tokens",
            "Prompt tokens, as the engines counted them.",
            ["model", "key"],
            registry=r,
        )
        self.completion_tokens = Counter(
            "dx_completion_tokens",
            "Completion tokens, as the engines counted them.",
            ["model", "key"],
            registry=r,
        )
        self.rate_limited = Counter(
            "dx_rate_limited", "Requests refused with 429, by API key name.", ["key"], registry=r
        )
        ProcessCollector(registry=r)  # process_* of the dx process itself (not its engines)
        PlatformCollector(registry=r)
        self.live = _Live()
        r.register(self.live)
        self.fleet = FleetCollector()  # nodes' per-model gauges, a gateway's fleet
        r.register(self.fleet)

    async def exposition(self, app: web.Application) -> bytes:
        """The scrape: DX's own metrics, then the engines' (namespaced, so never clashing)."""
        supervisor = app.get(SUPERVISOR)
        live = self.live
        live.config = app[LIVE].config  # the running one: reloads replace it
        live.supervisor = supervisor
        live.router = app.get(ROUTER)
        # Counted by their owners, read now: nothing process-global.
        loader, reloader = app.get(LOADER), app.get(RELOADER)
        live.swaps = dict(loader.swaps) if loader is not None else {}
        if reloader is not None:
            live.reloads = {"ok": reloader.status.ok, "failed": reloader.status.failed}
        replicas = supervisor.all_replicas() if supervisor is not None else []
        ready = [r for r in replicas if r.state is EngineState.READY]
        session = app.get(SESSION)
        texts: list[str | None] = []
        gpus = asyncio.to_thread(read_gpus)
        if session is not None and ready:
            texts, inventory = await asyncio.gather(
                asyncio.gather(*(_engine_text(session, r) for r in ready)), gpus
            )
        else:
            inventory = await gpus
        self.live.gpus = inventory.gpus
        # Parsing and re-rendering the engines' text is the bulk of a scrape's CPU (vLLM sends
        # hundreds of lines per replica): a worker thread, so requests are not held up.
        engines, up = await asyncio.to_thread(_relabel, ready, texts)
        self.live.engines_up = up
        fleet = self.fleet
        fleet.config, fleet.supervisor, fleet.router = live.config, supervisor, live.router
        fleet.gateway = app.get(GATEWAY)
        fleet.engines_said(ready, texts)
        # Synchronous from here: the live collector reads the state set just above.
        return generate_latest(self.registry) + engines


class _Live(Collector):
    """Metrics read from the supervisor, the router and the last GPU read at scrape time."""

    def __init__(self) -> None:
        self.config: Config | None = None
        self.supervisor: Any = None
        self.router: Any = None
        self.gpus: tuple[Gpu, ...] = ()
        self.engines_up: dict[str, bool] = {}
        self.reloads = {"ok": 0, "failed": 0}
        self.swaps: dict[tuple[str, str], int] = {}

    def collect(self) -> Iterable[Metric]:
        build = GaugeMetricFamily("dx_build_info", "The running DX version.", labels=["version"])
        build.add_metric([__version__], 1)
        yield build
        reloads = CounterMetricFamily(
            "dx_config_reloads",
            "Config reloads, applied (ok) or refused (failed).",
            labels=["result"],
        )
        for result, n in self.reloads.items():
            reloads.add_metric([result], n)
        yield reloads
        swaps = CounterMetricFamily(
            "dx_model_swaps",
            "Models loaded on demand, unloaded when idle or asked, or evicted to make room.",
            labels=["model", "event"],
        )
        for (model, event), n in self.swaps.items():
            swaps.add_metric([model, event], n)
        yield swaps
        yield from self._models()
        yield from self._gpus()

    def _models(self) -> Iterator[Metric]:
        waiting = GaugeMetricFamily(
            "dx_queue_waiting", "Requests waiting for a free replica.", labels=["model"]
        )
        labels = ["model", "replica"]
        in_flight = GaugeMetricFamily(
            "dx_replica_in_flight", "Requests a replica is serving now.", labels=labels
        )
        capacity = GaugeMetricFamily(
            "dx_replica_capacity", "Requests a replica serves at once (its slots).", labels=labels
        )
        state = GaugeMetricFamily(
            "dx_replica_state",
            "The replica's engine state: 1 for the current one.",
            labels=[*labels, "state"],
        )
        restarts = CounterMetricFamily(
            "dx_replica_restarts", "Engine restarts after the first start.", labels=labels
        )
        up = GaugeMetricFamily(
            "dx_engine_metrics_up",
            "1 when the engine's own /metrics answered at this scrape.",
            labels=labels,
        )
        for m in self.config.models if self.config else ():
            if self.router is not None:
                waiting.add_metric([m.name], self.router.waiting(m.name))
            if self.supervisor is None:
                continue
            for r in self.supervisor.replicas(m.name):
                ids = [m.name, r.id]
                in_flight.add_metric(ids, r.in_flight)
                capacity.add_metric(ids, r.capacity)
                for s in EngineState:
                    state.add_metric([*ids, str(s)], 1 if r.state is s else 0)
                restarts.add_metric(ids, r.restarts)
                if r.id in self.engines_up:
                    up.add_metric(ids, 1 if self.engines_up[r.id] else 0)
        yield from (waiting, in_flight, capacity, state, restarts, up)

    def _gpus(self) -> Iterator[Metric]:
        if not self.gpus:
            return
        labels = ["gpu", "name"]
        used = GaugeMetricFamily("dx_gpu_memory_used_bytes", "GPU memory in use.", labels=labels)
        total = GaugeMetricFamily("dx_gpu_memory_total_bytes", "GPU memory.", labels=labels)
        util = GaugeMetricFamily(
            "dx_gpu_utilization_ratio",
            "Fraction of the last sample period the GPU was busy (NVML).",
            labels=labels,
        )
        for g in self.gpus:
            ids = [str(g.index), g.name]
            used.add_metric(ids, g.used)
            total.add_metric(ids, g.total)
            util.add_metric(ids, g.utilization)
        yield from (used, total, util)


async def _engine_text(session: aiohttp.ClientSession, replica: Replica) -> str | None:
    # The engine's own key; no compression (the pooled session does not decompress).
    headers = {**replica.headers, "Accept-Encoding": "identity"}
    try:
        async with session.get(
            replica.base_url + "/metrics", headers=headers, timeout=ENGINE_SCRAPE_TIMEOUT
        ) as resp:
            if resp.status != 200:
                return None
            return await resp.text(errors="replace")
    except (aiohttp.ClientError, TimeoutError, UnicodeError) as exc:
        log.debug("%s: /metrics failed: %s", replica.id, exc)
        return None


def _relabel(replicas: list[Replica], texts: list[str | None]) -> tuple[bytes, dict[str, bool]]:
    """The engines' metric families, merged across replicas (one family per name), each
    sample labelled with DX's model and replica. Only namespaced families (`llamacpp:`,
    `vllm:`) are kept: an engine's generic process_* and python_* would clash with DX's."""
    families: dict[str, Metric] = {}
    up: dict[str, bool] = {}
    for replica, text in zip(replicas, texts, strict=False):
        up[replica.id] = False
        if text is None:
            continue
        extra = {"model": replica.name, "replica": replica.id}
        try:
            parsed = list(text_string_to_metric_families(text))
        except ValueError as exc:
            log.warning("%s: unreadable /metrics: %s", replica.id, exc)
            continue
        up[replica.id] = True
        for fam in parsed:
            if ":" not in fam.name:
                continue
            out = families.get(fam.name)
            if out is None:
                out = families[fam.name] = Metric(fam.name, fam.documentation, fam.type)
            for s in fam.samples:
                out.add_sample(s.name, {**s.labels, **extra}, s.value, s.timestamp)
    if not families:
        return b"", up
    registry = CollectorRegistry()
    registry.register(_Fixed(list(families.values())))
    return generate_latest(registry), up


class _Fixed(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


routes = web.RouteTableDef()


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    body = await request.app[METRICS].exposition(request.app)
    return web.Response(
        body=body, headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"}
    )
