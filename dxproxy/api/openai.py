"""The OpenAI API: validated, routed, and relayed to the engine byte for byte."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
from aiohttp import web

from dxproxy.api.common import (
    call_engine,
    field,
    read_json,
    resolve_model,
    stream_cut,
)
from dxproxy.config import ModelConfig
from dxproxy.errors import ApiError, error_body, json_response
from dxproxy.keys import CATALOG

routes = web.RouteTableDef()


@routes.get("/v1/models")
async def models(request: web.Request) -> web.Response:
    data = [
        {"id": m.name, "object": "model", "created": m.modified_unix, "owned_by": "dx"}
        for m in request.app[CATALOG].models
    ]
    return json_response({"object": "list", "data": data})


@routes.post("/v1/chat/completions")
async def chat_completions(request: web.Request) -> web.StreamResponse:
    started = time.monotonic_ns()
    body = await read_json(request)
    model = resolve_model(request, body.get("model"))
    messages = field(body, "messages", list, [])
    if not messages:
        raise ApiError(400, "messages: expected a non-empty array of messages", param="messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ApiError(
                400, f"messages[{i}]: expected an object with a string 'role'", param="messages"
            )
    return await _relay(request, body, model, "/v1/chat/completions", started)


@routes.post("/v1/completions")
async def completions(request: web.Request) -> web.StreamResponse:
    started = time.monotonic_ns()
    body = await read_json(request)
    model = resolve_model(request, body.get("model"))
    field(body, "prompt", (str, list), "")
    return await _relay(request, body, model, "/v1/completions", started)


async def _relay(
    request: web.Request, body: dict[str, Any], model: ModelConfig, path: str, started: int
) -> web.StreamResponse:
    # Check the common fields here: engines answer some type errors with a 500 and a trace.
    stream = field(body, "stream", bool, False)
    for key in ("max_tokens", "n", "seed"):
        field(body, key, int)
    for key in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        field(body, key, (int, float))
    body["model"] = model.name  # aliases and ":latest" spellings reach the engine by one name
    async with call_engine(request, model, path, body, started) as call:
        if not stream:
            payload = await call.response.read()
            return web.Response(body=payload, content_type="application/json")
        out = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await out.prepare(request)
        tail = b""
        while True:
            try:
                chunk = await call.response.content.readany()
            except (aiohttp.ClientError, TimeoutError) as exc:
                await out.write(_sse_error(stream_cut(model, exc)))
                return out
            if not chunk:
                break
            await out.write(chunk)  # relayed as it arrives: no parsing on the hot path
            tail = (tail + chunk)[-32:]
        if b"[DONE]" not in tail:
            cut = "the engine closed the stream before it finished"
            await out.write(_sse_error(stream_cut(model, cut)))
        return out


def _sse_error(message: str) -> bytes:
    return b"data: " + error_body("openai", 502, message) + b"\n\n"
