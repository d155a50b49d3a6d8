"""The OpenAI API: checked against its schema, routed, and relayed to the engine as it is.

Streams are relayed chunk by chunk without parsing them. DX always asks the engine for the
usage chunk (`stream_options.include_usage`), to count tokens for rate limits; only complete
lines that mention usage are decoded, and the usage chunk is removed again when the client
did not ask for it (OpenAI's semantics).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from dxproxy.api import fleet_catalog
from dxproxy.api.embeddings import embed, to_base64
from dxproxy.api.engine import call_engine, stream_cut
from dxproxy.api.request import read_json, resolve_model
from dxproxy.api.schemas import (
    OpenAIChatRequest,
    OpenAICompletionRequest,
    OpenAIEmbeddingRequest,
    check,
)
from dxproxy.config import ModelConfig
from dxproxy.http.early import EarlyStream
from dxproxy.http.errors import ApiError, error_body, json_response
from dxproxy.http.state import LIVE
from dxproxy.http.usage import report_usage, usage_of

routes = web.RouteTableDef()


@routes.get("/v1/models")
async def models(request: web.Request) -> web.Response:
    data = [
        {"id": m.name, "object": "model", "created": m.modified_unix, "owned_by": "dx"}
        for m in request.app[LIVE].catalog.models
    ]
    data += fleet_catalog.openai_entries(request)  # a gateway: the fleet's models too
    return json_response({"object": "list", "data": data})


@routes.get("/v1/models/{model:.+}")
async def model(request: web.Request) -> web.Response:
    name = request.match_info["model"]
    info = request.app[LIVE].catalog.get(resolve_model(request, name).name)
    created = info.modified_unix if info else 0
    return json_response({"id": name, "object": "model", "created": created, "owned_by": "dx"})


@routes.post("/v1/chat/completions")
async def chat_completions(request: web.Request) -> web.StreamResponse:
    started = time.monotonic_ns()
    body = await read_json(request)
    req = check(body, OpenAIChatRequest)
    model = resolve_model(request, req.model)
    if not req.messages:
        raise ApiError(400, "messages: expected a non-empty array of messages", param="messages")
    wants_usage = bool(req.stream_options and req.stream_options.include_usage)
    return await _relay(request, body, model, "/v1/chat/completions", started,
                        stream=bool(req.stream), wants_usage=wants_usage)  # fmt: skip


@routes.post("/v1/completions")
async def completions(request: web.Request) -> web.StreamResponse:
    started = time.monotonic_ns()
    body = await read_json(request)
    req = check(body, OpenAICompletionRequest)
    model = resolve_model(request, req.model)
    wants_usage = bool(req.stream_options and req.stream_options.include_usage)
    return await _relay(request, body, model, "/v1/completions", started,
                        stream=bool(req.stream), wants_usage=wants_usage)  # fmt: skip


@routes.post("/v1/embeddings")
async def embeddings(request: web.Request) -> web.Response:
    started = time.monotonic_ns()
    req = check(await read_json(request), OpenAIEmbeddingRequest)
    model = resolve_model(request, req.model)
    inputs = [req.input] if isinstance(req.input, str) else req.input
    if not inputs:
        raise ApiError(400, "invalid input: expected a string or a non-empty array", param="input")
    result = await embed(request, model, inputs, started, normalize=True,
                         dimensions=req.dimensions)  # fmt: skip
    b64 = req.encoding_format == "base64"
    data = [
        {"object": "embedding", "embedding": to_base64(v) if b64 else v, "index": i}
        for i, v in enumerate(result.vectors)
    ]
    tokens = result.prompt_tokens or 0
    return json_response(
        {
            "object": "list",
            "data": data,
            "model": model.name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


async def _relay(
    request: web.Request,
    body: dict[str, Any],
    model: ModelConfig,
    path: str,
    started: int,
    *,
    stream: bool,
    wants_usage: bool,
) -> web.StreamResponse:
    body["model"] = model.name  # aliases and ":latest" spellings reach the engine by one name
    if stream:
        body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    early = loading_stream(request, model) if stream else None
    async with call_engine(request, model, path, body, started, early) as call:
        if not stream:
            payload = await call.response.read()
            # Relayed as the engine sent it, even when it is not JSON: the client sees that.
            with contextlib.suppress(orjson.JSONDecodeError, AttributeError):
                report_usage(request, *usage_of(orjson.loads(payload).get("usage")))
            return web.Response(body=payload, content_type="application/json")
        assert early is not None
        out = await early.response()
        relay = _UsageRelay(strip=not wants_usage)
        pending = b""
        while True:
            try:
                chunk = await call.response.content.readany()
            except (aiohttp.ClientError, TimeoutError) as exc:
                await out.write(pending + _sse_error(stream_cut(model, exc)))
                return out
            if not chunk:
                break
            data = pending + chunk if pending else chunk
            # Whole lines only: a `data:` line is one event, so a usage event is never cut.
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                pending = data
                continue
            data, pending = (data, b"") if cut == len(data) else (data[:cut], data[cut:])
            if b'"usage"' in data:  # the last event or two: the rest pass untouched
                data = relay.take(data)
            relay.tail = (relay.tail + data)[-32:]
            await out.write(data)  # relayed as it arrives
        if pending:
            await out.write(pending)
            relay.tail = (relay.tail + pending)[-32:]
        report_usage(request, *usage_of(relay.usage))
        if b"[DONE]" not in relay.tail:
            cut_reason = "the engine closed the stream before it finished"
            await out.write(_sse_error(stream_cut(model, cut_reason)))
        return out


class _UsageRelay:
    """Finds the engine's usage in a relayed stream, and removes it when not asked for."""

    __slots__ = ("strip", "tail", "usage")

    def __init__(self, *, strip: bool) -> None:
        self.strip = strip
        self.usage: Any = None
        self.tail = b""

    def take(self, data: bytes) -> bytes:
        lines = data.split(b"\n")
        for i, line in enumerate(lines):
            if not line.startswith(b"data:") or b'"usage"' not in line:
                continue
            try:
                event = orjson.loads(line[5:])
            except orjson.JSONDecodeError:
                continue
            if not isinstance(event, dict):
                continue
            if event.get("usage"):
                self.usage = event["usage"]
            if not self.strip:
                continue
            if not event.get("choices"):
                lines[i] = b""  # the usage-only event, which the client did not ask for
            else:
                event.pop("usage", None)
                event.pop("timings", None)
                lines[i] = b"data: " + orjson.dumps(event)
        return b"\n".join(lines)


def loading_stream(request: web.Request, model: ModelConfig) -> EarlyStream:
    """The SSE reply, started early while the model loads (dxproxy/http/early.py): comment lines,
    which SSE clients skip, until the engine answers."""

    def notice(seconds: float) -> bytes:
        return f": loading model {model.name} ({seconds:.0f} s)\n\n".encode()

    def error(status: int, message: str) -> bytes:
        return _sse_error(message, status)

    return EarlyStream(request, "text/event-stream", notice, error)


def _sse_error(message: str, status: int = 502) -> bytes:
    return b"data: " + error_body("openai", status, message) + b"\n\n"
