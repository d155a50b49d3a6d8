"""A request for a model served elsewhere, or one with `fallbacks:`: the gateway's request path.

`call_engine` (dxproxy/api/engine.py) hands a model here only when it has `upstream:` or
`fallbacks:`, so a model served by this DX's own engines alone pays nothing for any of it.

Which upstream, in which order:
- `upstream: fleet`: the healthy, not draining nodes whose /fleet/state lists the model
  (dxproxy/fleet/members.py). A conversation (DX's conversation key, the same one its local
  replica affinity uses, mixed with the API key's name) goes to its home node by rendezvous
  hashing and spills to the next in rank only when the home node is over the load bound;
  a request without one goes to the less loaded of two nodes (dxproxy/fleet/pick.py). Every
  gateway computes the same order from the same view, with nothing shared between them.
- `upstream: {url, api_key}`: that one OpenAI-compatible endpoint (the same relay, minus the
  fleet's headers, probes and load reports).
- then each of `fallbacks`, in order, the same way (a local model through its engines).

What is sent: the request as the engines get it (OpenAI's API, already translated from the
caller's dialect), with the node key as Bearer, `Via: 1.1 dx-gateway`, and
`endpoint-load-metrics-format: text`; the load the node answers with is folded into the
gateway's view at once. `X-DX-Upstream` on the answer names the node, and the node's replica.

Retries, only while nothing has reached the client: a connect error, a node that stops
answering, a 5xx, a 503 (busy, draining), a 429 or a 404 (the node no longer serves it) sends
the request to the next node, then to the next fallback. Once the headers are in, the request
is never sent again, so no generation runs twice. Connect errors, stalls and 5xx (not 503,
429 or 404: a busy node is a healthy one) count against the node; enough in a row eject it.

A node that dies mid-reply ends the client's stream with the dialect's error event: a reset
connection at once, a node that stops answering (SIGSTOP, a partition) within 2 s: a reply
silent for `SILENCE` makes the gateway ask the node's /health, and no answer within
`PROBE_TIMEOUT` ends it. A client that leaves closes the node connection, which cancels the
request on the node and its engine.

The `Via` guard: a request that already came through a DX gateway is never sent on to a
remote upstream: two gateways naming each other as nodes would otherwise pass a request back
and forth. A node serves such a request only from its own engines (a local model's fallbacks
to remote upstreams are skipped, and said so in the 503); for a model served only elsewhere
the answer is 508 (Loop Detected), saying to give the node its own engine for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, cast

import aiohttp
import orjson
from aiohttp import web

from dxproxy.api.engine import EngineDown, GuardedReader, conversation_key, engine_error
from dxproxy.config import FleetConfig, ModelConfig, RemoteUpstream
from dxproxy.fleet.members import Membership
from dxproxy.fleet.orca import FORMAT_HEADER
from dxproxy.fleet.orca import HEADER as LOAD_HEADER
from dxproxy.fleet.pick import Choice
from dxproxy.fleet.pick import conversation_key as fleet_key
from dxproxy.http.early import EarlyStream
from dxproxy.http.errors import ApiError
from dxproxy.http.state import API_KEY, GATEWAY, LIVE, QUEUE_WAIT, REPLICA, ROUTER
from dxproxy.routing.gateway import Gateway
from dxproxy.routing.router import DRAINING

if TYPE_CHECKING:
    from dxproxy.api.engine import EngineCall

    Local = Callable[
        [web.Request, ModelConfig, str, dict[str, Any], int, EarlyStream | None],
        AbstractAsyncContextManager[EngineCall],
    ]

VIA = "1.1 dx-gateway"
UPSTREAM_HEADER = "X-DX-Upstream"
# Generation may pause long (a long prompt before the first token); the silence watch below
# tells a paused node from a dead one, so only a hung *connection* needs this bound.
NODE_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=2, sock_read=600)
SILENCE = 0.5  # seconds a node may send nothing before the gateway asks if it lives
PROBE_TIMEOUT = 1.0  # seconds its /health has to answer
RETRY_AFTER = 2.0
# Answers that send the request to the next node: the node is busy, draining, rate-limited
# or no longer serves the model. Not the node's fault: they do not count toward ejection.
NEXT_NODE = frozenset({404, 429, 503})
LOOP = 508  # Loop Detected


class NodeDown(EngineDown):
    """The node under a reply died or stopped answering (told as the dialect's error)."""


@asynccontextmanager
async def routed(
    request: web.Request,
    model: ModelConfig,
    path: str,
    payload: dict[str, Any],
    started_ns: int,
    early: EarlyStream | None,
    local: Local,
) -> AsyncIterator[EngineCall]:
    """The first upstream of `model` (then of its fallbacks) that answers; see the module's
    docstring. `local` is call_engine, for a local model among the fallbacks."""
    from dxproxy.api.engine import EngineCall  # engine.py imports this module on first use

    router = request.app.get(ROUTER)
    if router is not None and router.draining:  # this DX is shutting down: not a new relay
        raise ApiError(503, DRAINING, retry_after=RETRY_AFTER)
    config = request.app[LIVE].config
    targets = [model]
    for name in model.fallbacks:
        fallback = config.model(name)
        if fallback is not None and fallback not in targets:
            targets.append(fallback)
    failures: list[str] = []
    yielded = False
    # Came through a DX gateway: never sent on to a remote upstream (local engines may serve).
    looped = came_through_gateway(request)
    for i, target in enumerate(targets):
        if i:
            gateway = request.app.get(GATEWAY)
            if gateway is not None:
                gateway.fallbacks[(model.name, target.name)] += 1
        if target.upstream is None:
            plain = dataclasses.replace(target, fallbacks=()) if target.fallbacks else target
            try:
                async with local(request, plain, path, payload, started_ns, early) as call:
                    yielded = True
                    yield call
                    return
            except ApiError as exc:
                if yielded or exc.status not in (*NEXT_NODE, 502) or _started(early):
                    raise
                failures.append(f"{target.name}: {exc.message}")
                continue
        if looped:
            failures.append(f"{target.name}: not sent on (it came through a DX gateway)")
            continue
        # Closed on leaving, so the node's in-flight count (its load) drops right then.
        async with contextlib.aclosing(_attempts(request, target, path, payload, failures)) as it:
            async for response, label, watch, sent_ns in it:
                request[REPLICA] = label
                request[QUEUE_WAIT] = (sent_ns - started_ns) / 1e9
                gateway = _gateway(request)
                gateway.in_flight += 1
                try:
                    yielded = True
                    yield EngineCall(None, response, sent_ns - started_ns, sent_ns)
                    return
                finally:
                    gateway.in_flight -= 1
                    if watch is not None:
                        watch.cancel()
                    if payload.get("stream"):
                        response.close()  # a stream the client left stops on the node too
                    else:
                        response.release()
    if looped and all(t.upstream is not None for t in targets):
        guard_loop(request, model)
    names = " -> ".join(t.name for t in targets)
    detail = "; ".join(failures[-4:]) or "no upstream serves it now"
    raise ApiError(
        503,
        f"no upstream could serve '{model.name}' (tried {names}): {detail}; retry in a few seconds",
        retry_after=RETRY_AFTER,
    )


def _started(early: EarlyStream | None) -> bool:
    return early is not None and early.started


def came_through_gateway(request: web.Request) -> bool:
    via = request.headers.get("Via")
    return via is not None and "dx-gateway" in via


SHOW_TIMEOUT = aiohttp.ClientTimeout(total=5)


def _node_headers(fleet: FleetConfig | None) -> dict[str, str]:
    """What every request from this gateway to a node carries: JSON, the `Via` loop guard's
    mark, and the fleet's node key."""
    headers = {"Content-Type": "application/json", "Via": VIA}
    if fleet is not None and fleet.node_key:
        headers["Authorization"] = f"Bearer {fleet.node_key}"
    return headers


async def node_show(request: web.Request, model: ModelConfig) -> bytes | None:
    """A fleet model's Ollama /api/show, as a node that serves it answers (the node has its
    file: family, context, template, capabilities); None for a model not served by the fleet,
    or when no node answered (the caller says so). Nodes are asked in the catalog's order;
    a node's refusal or silence moves on to the next, and counts against no node."""
    gateway = request.app.get(GATEWAY)
    if model.upstream != "fleet" or gateway is None or gateway.membership is None:
        return None
    if came_through_gateway(request):
        return None  # the Via guard: a node answers from its own config only
    headers = _node_headers(request.app[LIVE].config.fleet)
    body = orjson.dumps({"model": model.name})
    for node in gateway.membership.all_models().get(model.name, []):
        try:
            async with gateway.session.post(
                node + "/api/show", data=body, headers=headers, timeout=SHOW_TIMEOUT
            ) as resp:
                if resp.status == 200:
                    return await resp.read()
        except (aiohttp.ClientError, TimeoutError):
            continue
    return None


def guard_loop(request: web.Request, model: ModelConfig) -> None:
    """508 for a request that already came through a DX gateway (the `Via` guard)."""
    if came_through_gateway(request):
        via = request.headers.get("Via")
        raise ApiError(
            LOOP,
            f"loop refused: this request already came through a DX gateway (Via: {via}), and "
            f"'{model.name}' is served elsewhere from here (upstream:). A fleet node must serve "
            "the model with its own engine: remove `upstream:` for it in the node's config",
        )


# The answer, who gave it, the watch on its body, when the request was sent (monotonic ns).
Attempt = tuple[aiohttp.ClientResponse, str, "_Watch | None", int]


async def _attempts(
    request: web.Request,
    model: ModelConfig,
    path: str,
    payload: dict[str, Any],
    failures: list[str],
) -> AsyncGenerator[Attempt, None]:
    """Each upstream's 2xx answer, in the order to try them; a failure is noted and the next
    one tried. The caller stops at the first it yields (nothing is sent after that)."""
    upstream = model.upstream
    if isinstance(upstream, RemoteUpstream):
        body = orjson.dumps({**payload, "model": upstream.model or model.name})
        headers = {"Content-Type": "application/json"}
        if upstream.api_key:
            headers["Authorization"] = f"Bearer {upstream.api_key}"
        url = upstream.url + path.removeprefix("/v1")
        sent_ns = time.monotonic_ns()
        try:
            resp = await _gateway(request).session.post(
                url, data=body, headers=headers, timeout=NODE_TIMEOUT
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            failures.append(f"{upstream.url}: {_why(exc)}")
            return
        if await _usable(resp, model, upstream.url, failures):
            yield resp, upstream.url, None, sent_ns
        return

    gateway = _gateway(request)
    membership = gateway.membership
    if membership is None:
        failures.append(f"{model.name}: this DX has no fleet: section")
        return
    record = request.get(API_KEY)
    conversation = conversation_key(payload) if model.affinity else None
    key = fleet_key(record.name if record else "", conversation) if conversation else None
    fleet = request.app[LIVE].config.fleet
    choice = membership.choose(model.name, key, slack=fleet.slack if fleet else 0.25)
    gateway.affinity[(model.name, _affinity(choice))] += 1
    if not choice.order:
        failures.append(f"{model.name}: no healthy node serves it now")
        return
    body = orjson.dumps({**payload, "model": model.name})
    headers = {**_node_headers(fleet), FORMAT_HEADER: "text"}
    for n, candidate in enumerate(choice.order):
        node = candidate.id
        if n:
            gateway.retries[model.name] += 1
        with membership.in_flight(node, model.name):
            sent_ns = time.monotonic_ns()
            try:
                resp = await _post_watched(gateway.session, node, path, body, headers)
            except (aiohttp.ClientError, TimeoutError) as exc:
                membership.report(node, False)
                gateway.outcomes[(node, model.name, "failed")] += 1
                failures.append(f"{node}: {_why(exc)}")
                continue
            report = resp.headers.get(LOAD_HEADER)
            # A report equal to the last one folded in is skipped (parsing it is a few per cent
            # of the hop's CPU): at worst a poll's count stands until the report changes or
            # the next poll, within one `fleet.refresh`.
            if report is not None and gateway.last_load.get((node, model.name)) != report:
                gateway.last_load[(node, model.name)] = report
                membership.update_load(node, report, model=model.name)
            if not await _usable(resp, model, node, failures, membership):
                gateway.outcomes[(node, model.name, f"http_{resp.status}")] += 1
                continue
            membership.report(node, True)
            gateway.outcomes[(node, model.name, "ok")] += 1
            served_by = resp.headers.get(UPSTREAM_HEADER)
            label = f"{node} {served_by}" if served_by else node
            reply = _NodeReply(resp.content, node, membership)
            resp.content = cast(aiohttp.StreamReader, reply)
            watch = _watch_reply(gateway.session, node, reply, membership)
            yield resp, label, watch, sent_ns
            return


def _affinity(choice: Choice) -> str:
    """How the first node was chosen: home (the conversation's node), spill (home over the
    load bound), moved (home ejected or gone), none (no conversation: two random choices)."""
    if choice.home is None:
        return "none"
    return "moved" if choice.moved else "spill" if choice.spilled else "home"


def _gateway(request: web.Request) -> Gateway:
    gateway = request.app.get(GATEWAY)
    if gateway is None:  # built with every app (server/app.py): a bug if missing
        raise ApiError(503, "this DX has no gateway set up")
    return gateway


async def _usable(
    resp: aiohttp.ClientResponse,
    model: ModelConfig,
    where: str,
    failures: list[str],
    membership: Membership | None = None,
) -> bool:
    """True for a 2xx answer. A refusal that another upstream may not share is noted (and
    the answer released): False. One the client caused (4xx) is raised in its dialect."""
    if resp.status < 400:
        return True
    try:
        body = await resp.read()
    except (aiohttp.ClientError, TimeoutError):
        body = b""
    finally:
        resp.release()
    if resp.status in NEXT_NODE or (resp.status >= 500 and resp.status != LOOP):
        if membership is not None and resp.status not in NEXT_NODE:
            membership.report(where, False)
        message = engine_error(model.name, resp.status, body).message
        failures.append(f"{where}: HTTP {resp.status} ({message})")
        return False
    raise engine_error(model.name, resp.status, body)


async def _post_watched(
    session: aiohttp.ClientSession,
    node: str,
    path: str,
    body: bytes,
    headers: dict[str, str],
) -> aiohttp.ClientResponse:
    """POST to a node; while its headers take longer than SILENCE, its /health must answer,
    or the request is abandoned as a connect error (the node stopped: nothing came back)."""
    task = asyncio.current_task()
    assert task is not None
    stalled = False

    def dead() -> None:
        nonlocal stalled
        stalled = True
        task.cancel()

    watch = _Watch(session, node, progress=lambda: 0, done=lambda: False, dead=dead)
    try:
        return await session.post(node + path, data=body, headers=headers, timeout=NODE_TIMEOUT)
    except asyncio.CancelledError:
        if stalled and task.uncancel() == 0:  # our own cancel, not the client leaving
            raise aiohttp.ServerTimeoutError(
                "the node stopped answering (its /health too)"
            ) from None
        raise
    finally:
        watch.cancel()


async def _alive(session: aiohttp.ClientSession, node: str) -> bool:
    try:
        async with session.get(
            node + "/health", timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT)
        ) as resp:
            return resp.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


class _Watch:
    """Tells a silent node from a dead one: when `progress()` has not moved for SILENCE
    (and the reply is not `done()`), the node's /health is asked; no answer within
    PROBE_TIMEOUT calls `dead()`. A timer, not a task, while the node is heard: a reply that
    flows costs one timer per SILENCE."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        node: str,
        *,
        progress: Callable[[], int],
        done: Callable[[], bool],
        dead: Callable[[], None],
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._session, self._node = session, node
        self._progress, self._done, self._dead = progress, done, dead
        self._seen = progress()
        self._probe: asyncio.Task[None] | None = None
        self._timer = self._loop.call_later(SILENCE, self._tick)

    def _tick(self) -> None:
        if self._done():
            return
        now = self._progress()
        if now != self._seen:
            self._seen = now
            self._timer = self._loop.call_later(SILENCE, self._tick)
            return
        self._probe = self._loop.create_task(self._check())

    async def _check(self) -> None:
        if await _alive(self._session, self._node):
            self._seen = self._progress()
            self._timer = self._loop.call_later(SILENCE, self._tick)
        else:
            self._dead()

    def cancel(self) -> None:
        self._timer.cancel()
        if self._probe is not None and self._probe is not asyncio.current_task():
            self._probe.cancel()


def _watch_reply(
    session: aiohttp.ClientSession, node: str, reply: _NodeReply, membership: Membership
) -> _Watch:
    """A node's reply ends with NodeDown (the client sees the dialect's error event) when
    the node falls silent and its /health does not answer."""
    stream = reply.stream

    def dead() -> None:
        membership.report(node, False)
        stream.set_exception(_down(node, "stopped answering"))

    return _Watch(session, node, progress=lambda: stream.total_bytes, done=stream.is_eof, dead=dead)


def _down(node: str, what: str) -> NodeDown:
    return NodeDown(
        f"the fleet node {node} {what} in the middle of this reply; retry: the gateway "
        "sends it to another node",
        RETRY_AFTER,
    )


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return str(exc) or "no answer in time"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect ({exc.os_error.strerror or exc.os_error})"
    return str(exc) or type(exc).__name__


class _NodeReply(GuardedReader):
    """A node's reply body: a connection the node broke becomes NodeDown (counted against
    the node), told to the client in plain words."""

    def __init__(self, content: aiohttp.StreamReader, node: str, membership: Membership) -> None:
        super().__init__(content)
        self._node = node
        self._membership = membership

    @property
    def stream(self) -> aiohttp.StreamReader:
        return self._content

    async def _guard(self, read: Awaitable[bytes]) -> bytes:
        try:
            return await read
        except NodeDown:
            raise
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
            raise self._broke() from exc

    def _broke(self) -> NodeDown:
        self._membership.report(self._node, False)
        return _down(self._node, "broke the connection")
