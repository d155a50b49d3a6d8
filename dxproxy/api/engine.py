"""One engine call for every handler: wait for the model's turn and a replica, POST the
request to it, and hand back its answer (or an error in the caller's dialect).

An engine that hangs or dies under a request is told to its client in plain words, in the
client's dialect (`engine_down`): "the engine serving 'm' stopped responding; DX is restarting
it — retry in a few seconds", never the HTTP library's view of a broken connection. A request
the engine died under before answering at all is sent once more, to another ready replica or
to the restarted engine (within `limits.queue_timeout`): for its client it never started.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, cast

import aiohttp
import orjson
from aiohttp import web

from dxproxy.api.fit import fit_chat, might_overflow
from dxproxy.api.scrub import scrub_paths
from dxproxy.config import ModelConfig
from dxproxy.http.early import EarlyStream
from dxproxy.http.errors import ApiError
from dxproxy.http.state import (
    API_KEY,
    KEEP_ALIVE,
    LOADER,
    QUEUE_WAIT,
    REPLICA,
    ROUTER,
    UNTRIMMED,
    UPSTREAM,
)
from dxproxy.routing.router import EngineDropped, Unavailable, retry_after
from dxproxy.routing.upstream import ENGINE_READ_TIMEOUT
from dxproxy.routing.wait import wait_with_notices
from supervisors import Replica

# How long a broken engine connection waits for the supervisor to see the engine's process
# gone (it sees the exit a moment after the connection breaks), before the error is told.
FATE_WAIT = 1.0


@dataclass(slots=True)
class EngineCall:
    replica: Replica | None  # None: a remote upstream served it (dxproxy/api/fleet_call.py)
    response: aiohttp.ClientResponse
    queued_ns: int  # time spent waiting for a replica (Ollama's load_duration)
    sent_ns: int  # monotonic time the request went to the engine


@asynccontextmanager
async def call_engine(
    request: web.Request,
    model: ModelConfig,
    path: str,
    payload: dict[str, Any],
    started_ns: int,
    early: EarlyStream | None = None,
) -> AsyncIterator[EngineCall]:
    """Acquire a replica, POST `payload` to it, yield the engine's 2xx response.

    Engine refusals become ApiErrors in the caller's dialect. Leaving the block early (the
    client went away) closes the engine connection, which cancels the generation. With
    `early`, a wait of more than a moment (the model loads) starts the streamed reply and
    keeps it alive.
    """
    if model.upstream is not None or model.fallbacks:  # served elsewhere, or with fallbacks
        from dxproxy.api.fleet_call import routed  # (imports this module: on first use)

        async with routed(request, model, path, payload, started_ns, early, call_engine) as call:
            yield call
        return
    stream = bool(payload.get("stream"))
    try:
        affinity = conversation_key(payload) if model.affinity and model.replicas > 1 else None
        loader = request.app[LOADER]
        router = request.app[ROUTER]
        key = request.get(API_KEY)  # the unit of fairness in the queue

        # The model stays loaded (not evicted for another) until this request ends.
        async with loader.hold(model, request.get(KEEP_ALIVE)) as ticket:
            await _with_notices(loader.wait(ticket), early)  # on demand: it loads now
            body = orjson.dumps(payload)
            # A chat that might outgrow the context is counted (and trimmed) on the replica
            # it is sent to, once: a second attempt sends what the first counted.
            fit = (
                path == "/v1/chat/completions"
                and not request.get(UNTRIMMED)
                and might_overflow(model, payload)
            )
            for attempt in (1, 2):
                async with router.acquire(
                    model.name,
                    affinity,
                    key.name if key else "",
                    notify=early.waiting if early else None,
                ) as replica:
                    if fit:
                        fit = False
                        payload = await fit_chat(request, model, replica, payload)
                        body = orjson.dumps(payload)
                    sent_ns = time.monotonic_ns()
                    request[REPLICA] = replica.id
                    request[QUEUE_WAIT] = (sent_ns - started_ns) / 1e9
                    generation = replica.generation
                    try:
                        resp = await request.app[UPSTREAM].post(
                            replica, model.name, path, body, stream=stream
                        )
                    except EngineDropped as exc:
                        fate = await replica.fate(generation, FATE_WAIT)
                        if not fate:
                            raise
                        if attempt == 1:
                            continue  # it died under the request before answering: again
                        raise Unavailable(
                            engine_down(model.name, fate, gave_up=replica.gave_up),
                            retry_after=retry_after([replica]),
                        ) from exc
                    replica.heard()
                    reply = _Reply(resp.content, replica, model.name, generation)
                    resp.content = cast(aiohttp.StreamReader, reply)
                    try:
                        if resp.status >= 400:
                            raise engine_error(model.name, resp.status, await resp.read())
                        yield EngineCall(replica, resp, sent_ns - started_ns, sent_ns)
                        return
                    except EngineDown as exc:  # a read in the block (not a stream's)
                        raise ApiError(503, exc.message, retry_after=exc.retry_after) from None
                    except aiohttp.ClientError:  # the same, the engine alive
                        raise ApiError(502, stream_cut(model, "it broke the connection")) from None
                    except ApiError as exc:
                        if reply.down is not None:  # a handler's words for a dead engine
                            exc.status, exc.retry_after = 503, reply.down.retry_after
                        raise
                    finally:
                        if stream:
                            # Asked with `Connection: close` (dxproxy/routing/upstream.py):
                            # never pooled. Closed now, a stream the client left stops the
                            # engine.
                            resp.close()
                        else:
                            # Fully read: the connection goes back to the pool. Not fully
                            # read (the client left, or an error): closed, and the engine
                            # stops.
                            resp.release()
    except Unavailable as exc:
        raise ApiError(exc.status, exc.message, retry_after=exc.retry_after) from None


async def _with_notices(work: Awaitable[None], early: EarlyStream | None) -> None:
    if early is None:
        await work
        return
    task = asyncio.ensure_future(work)
    try:
        await wait_with_notices(task, None, early.waiting)
    finally:
        if not task.done():
            task.cancel()
    task.result()


def conversation_key(payload: dict[str, Any]) -> str | None:
    """What identifies a conversation across its turns: its leading messages (the system
    prompt and the first user message), which every later turn repeats. Hashed, never kept."""
    messages = payload.get("messages")
    if isinstance(messages, list):
        lead = []
        for m in messages:
            lead.append(m)
            if isinstance(m, dict) and m.get("role") == "user":
                break
        if not lead:
            return None
        return hashlib.blake2b(orjson.dumps(lead), digest_size=12).hexdigest()
    prompt = payload.get("prompt")
    if isinstance(prompt, str) and len(prompt) > 256:  # a raw prompt: its head
        return hashlib.blake2b(prompt[:256].encode(), digest_size=12).hexdigest()
    return None


def stream_cut(model: ModelConfig, reason: object) -> str:
    """Why a stream ended early, for the client. An engine that hung or died says so
    (`EngineDown`); otherwise the engine's own reason is only in its log: llama-cpp-python,
    for one, ends a stream when the prompt does not fit the context."""
    if isinstance(reason, EngineDown):
        return reason.message
    if isinstance(reason, TimeoutError):
        what = f"it sent nothing for {ENGINE_READ_TIMEOUT.sock_read:.0f} s"
    elif isinstance(reason, aiohttp.ClientError):
        what = "it broke the connection"  # the library's words name its internals
    else:
        what = scrub_paths(str(reason))
    return (
        f"the engine of '{model.name}' failed mid-stream: {what} (a prompt longer than the "
        f"context, {model.context} tokens, is a common cause; `dx logs {model.name}` on the "
        "server shows the engine's own reason)"
    )


def engine_down(model: str, fate: str, *, gave_up: bool = False) -> str:
    """What happened to the engine serving `model`, and what to do, for its clients. `fate`
    is `Replica.fate`'s word: "hung", "exited" or "stopped"."""
    if fate == "stopped":
        return (
            f"the engine serving '{model}' was stopped by DX (the model was reloaded, removed "
            "or DX is shutting down) — retry in a few seconds"
        )
    what = "stopped responding" if fate == "hung" else "stopped unexpectedly (it exited)"
    if gave_up:
        return (
            f"the engine serving '{model}' {what}; DX gave up restarting it after repeated "
            f"failures — an operator must look (`dx logs {model}` on the server)"
        )
    return f"the engine serving '{model}' {what}; DX is restarting it — retry in a few seconds"


class EngineDown(aiohttp.ClientError):
    """The engine under a request hung or died: `message` says so in plain words."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class GuardedReader:
    """A reply body read as aiohttp's StreamReader (what handlers call: `readany`,
    `read_nowait`, `read`...), each awaited read passed through `_guard`, which a subclass
    gives its words for a broken connection; `_heard` is told when data came."""

    def __init__(self, content: aiohttp.StreamReader) -> None:
        self._content = content

    def __getattr__(self, name: str) -> Any:  # the rest of StreamReader, as it is
        return getattr(self._content, name)

    def __aiter__(self) -> aiohttp.streams.AsyncStreamIterator[bytes]:
        return aiohttp.streams.AsyncStreamIterator(self.readline)

    def iter_any(self) -> aiohttp.streams.AsyncStreamIterator[bytes]:
        return aiohttp.streams.AsyncStreamIterator(self.readany)

    async def readany(self) -> bytes:
        return await self._guard(self._content.readany())

    async def read(self, n: int = -1) -> bytes:
        return await self._guard(self._content.read(n))

    async def readline(self) -> bytes:
        return await self._guard(self._content.readline())

    def read_nowait(self, n: int = -1) -> bytes:
        if self._content.exception() is not None:
            return b""  # the next awaited read raises it, told in plain words
        data = self._content.read_nowait(n)
        if data:
            self._heard()
        return data

    def _heard(self) -> None:
        pass

    async def _guard(self, read: Awaitable[bytes]) -> bytes:
        return await read


class _Reply(GuardedReader):
    """The engine's reply body. It tells the replica what it hears (the hang detector's "the
    engine sends nothing"), and turns a connection the engine broke into `EngineDown` once the
    supervisor says the engine hung or died."""

    def __init__(
        self, content: aiohttp.StreamReader, replica: Replica, model: str, generation: int
    ) -> None:
        super().__init__(content)
        self._replica = replica
        self._model = model
        self._generation = generation
        self.down: EngineDown | None = None

    def _heard(self) -> None:
        self._replica.heard()

    async def _guard(self, read: Awaitable[bytes]) -> bytes:
        try:
            data = await read
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
            fate = await self._replica.fate(self._generation, FATE_WAIT)
            if not fate:
                raise
            message = engine_down(self._model, fate, gave_up=self._replica.gave_up)
            self.down = EngineDown(message, retry_after([self._replica]))
            raise self.down from exc
        if data:
            self._replica.heard()
        return data


def engine_error(model: str, status: int, body: bytes) -> ApiError:
    message = body.decode(errors="replace")[:2000]
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        err = data.get("error", data.get("detail"))
        if isinstance(err, dict):
            err = err.get("message", err)
        message = err if isinstance(err, str) else orjson.dumps(err).decode()
    # Engine tracebacks name server files; the client needs the message, not the layout.
    message = scrub_paths(message)
    if status in (401, 403):  # the engine refused DX's own key: DX's problem, not the caller's
        return ApiError(502, f"the engine of '{model}' refused DX's request (HTTP {status})")
    if 400 <= status < 500:
        return ApiError(
            400 if status == 422 else status,
            f"the engine of '{model}' rejected the request: {message}",
        )
    return ApiError(502, f"the engine of '{model}' failed (HTTP {status}): {message}")
