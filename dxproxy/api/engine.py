"""One engine call for every handler: wait for the model's turn and a replica, POST the
request to it, and hand back its answer (or an error in the caller's dialect)."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from dxproxy.api.scrub import scrub_paths
from dxproxy.config import ModelConfig
from dxproxy.http.early import EarlyStream
from dxproxy.http.errors import ApiError
from dxproxy.http.state import API_KEY, KEEP_ALIVE, LOADER, QUEUE_WAIT, REPLICA, ROUTER, UPSTREAM
from dxproxy.routing.router import Unavailable
from dxproxy.routing.wait import wait_with_notices
from supervisors import Replica


@dataclass(slots=True)
class EngineCall:
    replica: Replica
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
    try:
        affinity = conversation_key(payload) if model.affinity and model.replicas > 1 else None
        loader = request.app[LOADER]
        router = request.app[ROUTER]
        key = request.get(API_KEY)  # the unit of fairness in the queue

        # The model stays loaded (not evicted for another) until this request ends.
        async with loader.hold(model, request.get(KEEP_ALIVE)) as ticket:
            await _with_notices(loader.wait(ticket), early)  # on demand: it loads now
            async with router.acquire(
                model.name,
                affinity,
                key.name if key else "",
                notify=early.waiting if early else None,
            ) as replica:
                sent_ns = time.monotonic_ns()
                request[REPLICA] = replica.id
                request[QUEUE_WAIT] = (sent_ns - started_ns) / 1e9
                body = orjson.dumps(payload)
                resp = await request.app[UPSTREAM].post(
                    replica, model.name, path, body, stream=bool(payload.get("stream"))
                )
                try:
                    if resp.status >= 400:
                        raise engine_error(model.name, resp.status, await resp.read())
                    yield EngineCall(replica, resp, sent_ns - started_ns, sent_ns)
                finally:
                    if payload.get("stream"):
                        # Asked with `Connection: close` (dxproxy/routing/upstream.py): never
                        # pooled. Closed now, a stream the client left stops the engine.
                        resp.close()
                    else:
                        # Fully read: the connection goes back to the pool. Not fully read
                        # (the client left, or an error): closed, and the engine stops.
                        resp.release()
    except Unavailable as exc:
        raise ApiError(exc.status, exc.message) from None


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
    """Why a stream ended early, for the client. The engine's own reason is only in its log:
    llama-cpp-python, for one, ends a stream when the prompt does not fit the context."""
    return (
        f"the engine of '{model.name}' failed mid-stream: {scrub_paths(str(reason))} (a prompt "
        f"longer than the context, {model.context} tokens, is a common cause; `dx logs "
        f"{model.name}` on the server shows the engine's own reason)"
    )


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
