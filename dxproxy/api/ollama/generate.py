"""POST /api/chat and /api/generate: decode, map to the engine's request, relay the reply.

Chat and non-raw generate become `/v1/chat/completions` (the engine applies the model's own
chat template); raw generate becomes `/v1/completions`.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from dxproxy.api.ollama.reply import now_rfc3339, relay_stream, reply_once
from dxproxy.api.ollama.request import (
    chat_messages,
    check_vision,
    sampling,
    tools_payload,
)
from dxproxy.api.request import resolve_model
from dxproxy.api.schemas import ChatRequest, GenerateRequest, KeepAlive, Message, decode
from dxproxy.config import ModelConfig, parse_duration
from dxproxy.http.errors import ApiError, json_response
from dxproxy.http.state import KEEP_ALIVE, LIVE, LOADER, SUPERVISOR, UNTRIMMED
from dxproxy.models.catalog import display_name
from dxproxy.routing.router import Unavailable

routes = web.RouteTableDef()


@routes.post("/api/chat")
async def chat(request: web.Request) -> web.StreamResponse:
    started = time.monotonic_ns()
    req = decode(await request.read(), ChatRequest)
    model = resolve_model(request, req.model)
    info = request.app[LIVE].catalog.get(model.name)
    payload = sampling(req, model, info)
    note_keep_alive(request, req.keep_alive)
    if req.truncate is False:  # whole or refused: never trimmed (dxproxy/api/fit.py)
        request[UNTRIMMED] = True
    messages = chat_messages(req.messages or [], model)
    if not messages:
        return await _load_reply(request, req.keep_alive, model, chat=True)
    payload["messages"] = messages
    if req.tools:
        payload["tools"] = tools_payload(req.tools, model, info)
    return await _reply(request, model, "/v1/chat/completions", payload, started, req.stream,
                        chat=True)  # fmt: skip


@routes.post("/api/generate")
async def generate(request: web.Request) -> web.StreamResponse:
    started = time.monotonic_ns()
    req = decode(await request.read(), GenerateRequest)
    model = resolve_model(request, req.model)
    payload = sampling(req, model, request.app[LIVE].catalog.get(model.name))
    note_keep_alive(request, req.keep_alive)
    prompt, system, images = req.prompt or "", req.system or "", req.images or []
    if req.suffix:
        raise ApiError(400, f"{display_name(model.name)} does not support insert")
    if req.template:
        raise ApiError(
            400,
            "template overrides are not supported: the engine applies the "
            "model's own chat template (use raw: true to send a prompt as is)",
        )
    if req.context:
        # Ollama's own docs call `context` deprecated; DX never returns one (see
        # docs/COMPATIBILITY.md), so only a client that made one up sends it.
        raise ApiError(
            400,
            "context is not supported (Ollama deprecated it): send the conversation as "
            "/api/chat messages instead",
        )
    if not prompt and not images:
        return await _load_reply(request, req.keep_alive, model, chat=False)
    if req.raw:
        if system or images:
            raise ApiError(400, "raw mode does not support template, system, or context")
        if "logprobs" in payload:
            raise ApiError(400, "logprobs with raw: true is not supported; leave raw out")
        payload["prompt"] = prompt
        path = "/v1/completions"
    else:
        if images:
            check_vision(model)
        turns = [Message("system", system)] if system else []
        turns.append(Message("user", prompt, images=images or None))
        payload["messages"] = chat_messages(turns, model)
        path = "/v1/chat/completions"
    return await _reply(request, model, path, payload, started, req.stream, chat=False)


async def _load_reply(
    request: web.Request, keep_alive: KeepAlive | None, model: ModelConfig, *, chat: bool
) -> web.Response:
    """An empty prompt loads the model (answering once it serves), or with keep_alive 0
    unloads it (answering once its engines are stopped), as Ollama does."""
    unload = parse_duration(keep_alive) == 0
    loader = request.app[LOADER]
    try:
        if unload:
            await loader.unload(model)
        else:
            await loader.load(model, request.get(KEEP_ALIVE))
    except Unavailable as exc:
        raise ApiError(exc.status, exc.message) from None
    reply: dict[str, Any] = {"model": display_name(model.name), "created_at": now_rfc3339()}
    if chat:
        reply["message"] = {"role": "assistant", "content": ""}
    else:
        reply["response"] = ""
    reply.update(done=True, done_reason="unload" if unload else "load")
    return json_response(reply)


async def _reply(
    request: web.Request,
    model: ModelConfig,
    path: str,
    payload: dict[str, Any],
    started: int,
    stream: bool,
    *,
    chat: bool,
) -> web.StreamResponse:
    if stream or _cancels_only_streams(request, model):
        # A client that leaves must free the engine at once, which some engines notice only
        # while they stream: for those, `stream: false` is streamed too, and collected here.
        return await relay_stream(
            request, model, path, payload, started, chat=chat, collect=not stream
        )
    return await reply_once(request, model, path, payload, started, chat=chat)


def _cancels_only_streams(request: web.Request, model: ModelConfig) -> bool:
    replicas = request.app[SUPERVISOR].replicas(model.name)
    return bool(replicas) and replicas[0].adapter.cancels_only_streams(replicas[0].spec)


def note_keep_alive(request: web.Request, value: Any) -> None:
    """Remember an Ollama request's keep_alive (seconds; negative: forever): the loader
    counts the model's idle time from the request's end with it."""
    seconds = parse_duration(value) if value is not None else None
    if seconds is not None:
        request[KEEP_ALIVE] = seconds
