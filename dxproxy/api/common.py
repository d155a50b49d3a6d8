"""Request parsing and engine calls shared by the Ollama and OpenAI handlers."""

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

from dxproxy.catalog import display_name
from dxproxy.config import ModelConfig
from dxproxy.early import NOTICE_AFTER, NOTICE_EVERY, EarlyStream
from dxproxy.errors import ApiError, dialect_of
from dxproxy.keys import CONFIG, MODEL, QUEUE_WAIT, REPLICA, ROUTER, SESSION
from dxproxy.keystore import API_KEY
from dxproxy.loader import LOADER
from dxproxy.router import Unavailable
from dxproxy.scrub import scrub_paths
from supervisors.process import Replica
from supervisors.states import EngineState

# Generation can pause for a long time (a long prompt before the first token), but an engine
# that sends nothing for this long is hung: give the client an error instead of waiting forever.
ENGINE_READ_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=600)


async def read_json(request: web.Request) -> dict[str, Any]:
    body = await request.read()  # over client_max_size: HTTPRequestEntityTooLarge -> 413
    if not body.strip():
        raise ApiError(400, "missing request body: send a JSON object")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"invalid JSON in request body: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return data


_TYPE_NAMES = {
    str: "a string",
    bool: "true or false",
    int: "an integer",
    float: "a number",
    list: "an array",
    dict: "an object",
}


def field(
    data: dict[str, Any],
    key: str,
    kind: type | tuple[type, ...],
    default: Any = None,
    *,
    where: str = "",
) -> Any:
    """data[key] checked against `kind` (None and absent give `default`), else a 400."""
    value = data.get(key)
    if value is None:
        return default
    kinds = kind if isinstance(kind, tuple) else (kind,)
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if not ok:
        names = [_TYPE_NAMES.get(k, k.__name__) for k in kinds if not (k is int and float in kinds)]
        expected = " or ".join(names)
        got = (
            "true or false"
            if isinstance(value, bool)
            else _TYPE_NAMES.get(type(value), type(value).__name__)
        )
        raise ApiError(400, f"{where}{key}: expected {expected}, got {got}", param=key)
    return value


def resolve_model(request: web.Request, name: Any) -> ModelConfig:
    if name is None or name == "":
        raise ApiError(400, "model is required", param="model")
    if not isinstance(name, str):
        raise ApiError(400, "model: expected a string", param="model")
    config = request.app[CONFIG]
    model = config.model(name)
    if model is None:
        available = ", ".join(display_name(m.name) for m in config.models) or "none"
        if dialect_of(request) == "openai":
            raise ApiError(
                404,
                f"The model '{name}' does not exist; available models: {available}",
                param="model",
                code="model_not_found",
            )
        raise ApiError(404, f"model '{name}' not found; available models: {available}")
    request[MODEL] = model.name  # for the access log and metrics
    return model


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
        async with loader.hold(model, request) as ticket:
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
                resp = await _post(request.app[SESSION], replica, model, path, body)
                try:
                    if resp.status >= 400:
                        raise engine_error(model.name, resp.status, await resp.read())
                    yield EngineCall(replica, resp, sent_ns - started_ns, sent_ns)
                finally:
                    if payload.get("stream"):
                        # llama-server closes its side after every streamed reply, without a
                        # `Connection: close`: a pooled connection would fail the next one.
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
        done, _ = await asyncio.wait({task}, timeout=NOTICE_AFTER)
        waited = NOTICE_AFTER
        while not done:
            await early.waiting(waited)
            done, _ = await asyncio.wait({task}, timeout=NOTICE_EVERY)
            waited += NOTICE_EVERY
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


async def _post(
    session: aiohttp.ClientSession, replica: Replica, model: ModelConfig, path: str, body: bytes
) -> aiohttp.ClientResponse:
    for attempt in (1, 2):
        try:
            return await session.post(
                replica.base_url + path,
                data=body,
                headers=replica.headers,  # JSON, and the engine's own key
                timeout=ENGINE_READ_TIMEOUT,
            )
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
            # A pooled keep-alive connection the engine had already closed (it does after a
            # failed stream): the request never reached it. Once more, on a new connection.
            if attempt == 2 or replica.state is not EngineState.READY:
                raise ApiError(
                    503,
                    f"the engine of '{model.name}' is not answering; it may "
                    "be restarting, try again",
                ) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ApiError(
                503,
                f"the engine of '{model.name}' did not answer ({type(exc).__name__}: {exc}); "
                "it may be restarting, try again",
            ) from None
    raise AssertionError("unreachable")


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


MAX_SSE_LINE = 2**24  # bytes: an engine line longer than this is an error, not a memory leak


async def sse_batches(resp: aiohttp.ClientResponse) -> AsyncIterator[list[dict[str, Any]]]:
    """Decoded `data:` events of an OpenAI-style SSE stream, up to `[DONE]`, in batches: each
    holds every event received so far, one when tokens arrive one by one, hundreds when the
    engine is faster than DX. Nothing waits for a batch to fill; a relay just writes each
    batch with one call instead of one per event.

    Raises EngineStreamError if the stream ends without `[DONE]` (the engine died), or on
    malformed JSON or an error event (after the batch of events before it).
    """
    content = resp.content
    pending = b""
    while True:
        data = await content.readany()
        eof = not data
        if not eof:
            data += content.read_nowait()  # the rest of what has arrived, without waiting
        lines = (pending + data).split(b"\n")
        pending = b"" if eof else lines.pop()
        if len(pending) > MAX_SSE_LINE:
            raise EngineStreamError(f"the engine sent a line of more than {MAX_SSE_LINE} bytes")
        batch: list[dict[str, Any]] = []
        for raw in lines:
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue  # blank separators, comments, `event:` lines
            body = line[5:].strip()
            if body == b"[DONE]":
                if batch:
                    yield batch
                return
            try:
                event = orjson.loads(body)
            except orjson.JSONDecodeError:
                if batch:
                    yield batch
                raise EngineStreamError(f"the engine sent malformed JSON: {body[:200]!r}") from None
            if isinstance(event, dict):
                if "error" in event:
                    if batch:
                        yield batch
                    raise EngineStreamError(f"the engine reported an error: {event['error']}")
                batch.append(event)
        if batch:
            yield batch
        if eof:
            raise EngineStreamError("the engine closed the stream before it finished")


async def sse_events(resp: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    """The events of `sse_batches`, one at a time."""
    async for batch in sse_batches(resp):
        for event in batch:
            yield event


class EngineStreamError(Exception):
    pass
