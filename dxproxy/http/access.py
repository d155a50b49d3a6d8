"""What each request did: its id, metrics and one access-log line, recorded as it ends.

The outermost middleware. It gives every request an id (the caller's `X-Request-ID` when it
is sane, else a new one), returned on every response, errors and streams included (set as the
response is prepared, since a stream's headers leave before its handler returns). When the
request ends it updates the metrics (dxproxy/http/metrics.py) and logs one line on `dx.access`:
request id, key name (never the key), client, model, replica, status, tokens, and the
durations: total, queue wait, time to first token. Never the prompt or the reply.

Cheap by design (issue 13: this was a third of a request's CPU time): per request a few dict
lookups, the metric series found in a cache of this module's (prometheus_client's `labels()`
takes a lock and checks every value each time), and one log record made directly, without
the logging module's search for the calling line; the console handler writes the lines of
one turn of the event loop together (dxproxy/server/logsetup.py). Per streamed chunk nothing
(only a stream's first write passes through a hook, which then removes itself).
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from dxproxy.fleet.orca import FORMAT_HEADER
from dxproxy.fleet.orca import HEADER as LOAD_HEADER
from dxproxy.http.loadreport import load_report
from dxproxy.http.metrics import Metrics
from dxproxy.http.state import (
    API_KEY,
    CLIENT,
    FIRST_BYTE,
    METRICS,
    MODEL,
    QUEUE_WAIT,
    REPLICA,
    REQUEST_ID,
    USAGE,
)

# Names who served a response: a replica id here, or a gateway's node (and its replica).
UPSTREAM_HEADER = "X-DX-Upstream"

log = logging.getLogger("dx.access")


MAX_REQUEST_ID = 128
_SAFE_ID = re.compile(r"[A-Za-z0-9._:/+=@-]+")
_UNSAFE = re.compile(r"[^A-Za-z0-9._:/+=@-]")
# Probes and scrapes come every few seconds: logged at DEBUG while they succeed.
QUIET_PATHS = frozenset({"/", "/health", "/ready", "/metrics"})
CLIENT_LEFT = 499  # nginx's status for a client that went away before the answer


def request_id(given: str | None) -> str:
    """The caller's id when it is printable and short (cleaned and cut otherwise: it goes into
    logs and headers), or a new random one."""
    if given:
        if len(given) <= MAX_REQUEST_ID and _SAFE_ID.fullmatch(given):
            return given
        cleaned = _UNSAFE.sub("", given)[:MAX_REQUEST_ID]
        if cleaned:
            return cleaned
    # Unique enough to find a request in the logs, and no system call (secrets.token_hex is
    # one os.urandom per request); a request id is not a secret.
    return f"{random.getrandbits(64):016x}"


@dataclass(slots=True)
class _Series:
    """The metric series of one (route, model, status, key), made on first use."""

    requests: Any
    latency: Any
    ttft: Any = None
    queue_wait: Any = None
    prompt_tokens: Any = None
    completion_tokens: Any = None


class Access:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        # Grows as the registry's own series do (one entry per label set, never removed).
        self._series: dict[tuple[str, str, int, str], _Series] = {}

    def install(self, app: web.Application) -> None:
        app[METRICS] = self.metrics
        app.on_response_prepare.append(_on_prepare)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        request[REQUEST_ID] = request_id(request.headers.get("X-Request-ID"))
        status = 500  # unless something below says otherwise
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:  # redirects: the error middleware passes them on
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = CLIENT_LEFT
            raise
        finally:
            self._done(request, status, started)

    def _done(self, request: web.Request, status: int, started: float) -> None:
        now = time.perf_counter()
        total = now - started
        m = self.metrics
        record = request.get(API_KEY)
        if record is None:
            key = ""
        elif record.source == "anonymous":  # auth off: one per client address, unbounded
            key = "anonymous"
        else:
            key = record.name
        replica = request.get(REPLICA)
        model = request.get(MODEL) or (replica.rpartition("#")[0] if replica else "")
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "other"
        series = self._series.get((route, model, status, key))
        if series is None:
            series = self._series[(route, model, status, key)] = _Series(
                m.requests.labels(route, model, str(status), key), m.latency.labels(route, model)
            )
        series.requests.inc()
        series.latency.observe(total)
        first = request.get(FIRST_BYTE)
        ttft = first - started if first is not None else None
        if ttft is not None:
            if series.ttft is None:
                series.ttft = m.ttft.labels(route, model)
            series.ttft.observe(ttft)
        queue = request.get(QUEUE_WAIT)
        if queue is not None:
            if series.queue_wait is None:
                series.queue_wait = m.queue_wait.labels(model)
            series.queue_wait.observe(queue)
        usage = request.get(USAGE)
        if usage is not None:
            if usage.prompt:
                if series.prompt_tokens is None:
                    series.prompt_tokens = m.prompt_tokens.labels(model, key)
                series.prompt_tokens.inc(usage.prompt)
            if usage.completion:
                if series.completion_tokens is None:
                    series.completion_tokens = m.completion_tokens.labels(model, key)
                series.completion_tokens.inc(usage.completion)
        if status == 429:
            m.rate_limited.labels(key).inc()

        quiet = status < 400 and request.path in QUIET_PATHS
        level = logging.DEBUG if quiet else logging.INFO
        if not log.isEnabledFor(level):
            return
        fields = {
            "request_id": request[REQUEST_ID],
            "method": request.method,
            "path": request.path,  # never the query string
            "status": status,
            "key": record.name if record is not None else None,
            "client": request.get(CLIENT) or request.remote,
            "model": model or None,
            "replica": replica,
            "prompt_tokens": usage.prompt if usage is not None else None,
            "completion_tokens": usage.completion if usage is not None else None,
            "duration_s": round(total, 6),
            "queue_s": round(queue, 6) if queue is not None else None,
            "ttft_s": round(ttft, 6) if ttft is not None else None,
        }
        tokens = f" tokens {usage.prompt}+{usage.completion}" if usage is not None else ""
        timing = f"{total * 1000:.1f} ms"
        if queue is not None:
            timing += f", queue {queue * 1000:.1f} ms"
        if ttft is not None:
            timing += f", first token {ttft * 1000:.1f} ms"
        # makeRecord + handle: what log.log() does, less its search for the calling line.
        record_ = log.makeRecord(
            log.name,
            level,
            __file__,
            0,
            "%s %s %s key=%s model=%s replica=%s%s (%s) id=%s",
            (
                status,
                request.method,
                request.path,
                fields["key"] or "-",
                model or "-",
                replica or "-",
                tokens,
                timing,
                fields["request_id"],
            ),
            None,
            extra={"access": fields},
        )
        log.handle(record_)


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    rid = request.get(REQUEST_ID)
    if rid is not None:
        response.headers["X-Request-ID"] = rid
    # Who served it: the local replica, or (on a gateway) the node and its replica.
    replica = request.get(REPLICA)
    if replica is not None:
        response.headers[UPSTREAM_HEADER] = replica
    if FORMAT_HEADER in request.headers:  # a gateway (or Envoy) asks for this node's load
        report = load_report(request)
        if report is not None:
            response.headers[LOAD_HEADER] = report
    # An engine's reply streamed as it is generated: its first write carries the first token.
    # The hook times that write, then deletes itself, so later chunks cost nothing.
    if type(response) is web.StreamResponse and replica is not None:
        write = response.write

        async def first_write(data: bytes | bytearray | memoryview) -> None:
            request[FIRST_BYTE] = time.perf_counter()
            del response.write  # back to the class's method
            await write(data)

        response.write = first_write  # type: ignore[method-assign]
