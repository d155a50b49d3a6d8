"""Anthropic's Messages API (POST /v1/messages, what Claude Code speaks), translated to the
engine's chat completions and back, streamed (Anthropic's SSE events) or not.

Text, system prompts, images, tools (tool_use / tool_result blocks) and usage are mapped;
anything else is refused with a 400 in Anthropic's error shape.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web

from dxproxy.api import chatcall
from dxproxy.api.ollama.request import check_vision, jsonable, tools_payload
from dxproxy.api.request import resolve_model
from dxproxy.api.schemas import AnthropicRequest, Tool, ToolFunction, decode
from dxproxy.api.sse import EngineStreamError
from dxproxy.config import ModelConfig
from dxproxy.http.errors import ApiError, error_body, json_response
from dxproxy.http.state import LIVE
from dxproxy.models.catalog import display_name

routes = web.RouteTableDef()

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


@routes.post("/v1/messages")
async def messages(request: web.Request) -> web.StreamResponse:
    started = time.monotonic_ns()
    req = decode(await request.read(), AnthropicRequest)
    model = resolve_model(request, req.model)
    if not req.messages:
        raise ApiError(400, "messages: expected a non-empty array", param="messages")
    payload = _payload(req, model, request)
    if req.stream:
        return await _stream(request, model, payload, started)
    result = await chatcall.complete(request, model, payload, started)
    content: list[dict[str, Any]] = []
    if result.text:
        content.append({"type": "text", "text": result.text})
    for call in result.tool_calls:
        content.append(
            {
                "type": "tool_use",
                "id": call["id"],
                "name": call["name"],
                "input": _arguments(call["arguments"]),
            }
        )
    return json_response(
        {
            "id": chatcall.new_id("msg_"),
            "type": "message",
            "role": "assistant",
            "model": req.model,
            "content": content,
            "stop_reason": STOP_REASONS.get(result.finish, "end_turn"),
            "stop_sequence": None,
            "usage": {
                "input_tokens": result.prompt_tokens,
                "output_tokens": result.completion_tokens,
            },
        }
    )


def _payload(req: AnthropicRequest, model: ModelConfig, request: web.Request) -> dict[str, Any]:
    out: list[dict[str, Any]] = []
    if req.system:
        system = req.system if isinstance(req.system, str) else _text(req.system, "system")
        out.append({"role": "system", "content": system})
    for i, m in enumerate(req.messages):
        out.extend(_message(m.role, m.content, i, model))
    payload: dict[str, Any] = {"model": model.name, "messages": out}
    if req.max_tokens is not None:
        payload["max_tokens"] = req.max_tokens
    for key in ("temperature", "top_p", "top_k"):
        if getattr(req, key) is not None:
            payload[key] = getattr(req, key)
    if req.stop_sequences:
        payload["stop"] = req.stop_sequences
    info = request.app[LIVE].catalog.get(model.name)
    if req.tools:
        tools = [Tool(ToolFunction(t.name, t.description, t.input_schema)) for t in req.tools]
        payload["tools"] = tools_payload(tools, model, info)
    if req.tool_choice:
        payload["tool_choice"] = _tool_choice(req.tool_choice)
    if req.thinking and req.thinking.get("type") == "enabled":
        if info is None or "thinking" not in info.capabilities:
            raise ApiError(400, f'"{display_name(model.name)}" does not support thinking')
        payload["chat_template_kwargs"] = {"enable_thinking": True}
    return payload


def _message(role: str, content: Any, i: int, model: ModelConfig) -> list[dict[str, Any]]:
    """One Anthropic message as OpenAI messages: tool results become `tool` messages."""
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for n, block in enumerate(content):
        where = f"messages[{i}].content[{n}]"
        kind = block.get("type")
        if kind == "text":
            parts.append({"type": "text", "text": str(block.get("text", ""))})
        elif kind == "image":
            check_vision(model)
            source = block.get("source") or {}
            if source.get("type") != "base64":
                raise ApiError(400, f"{where}: only base64 image sources are supported")
            url = f"data:{source.get('media_type', 'image/jpeg')};base64,{source.get('data', '')}"
            parts.append({"type": "image_url", "image_url": {"url": url}})
        elif kind == "tool_use" and role == "assistant":
            calls.append(
                {
                    "id": str(block.get("id") or f"call_{i}_{n}"),
                    "type": "function",
                    "function": {
                        "name": str(block.get("name", "")),
                        "arguments": orjson.dumps(jsonable(block.get("input") or {})).decode(),
                    },
                }
            )
        elif kind == "tool_result" and role == "user":
            inner = block.get("content", "")
            text = inner if isinstance(inner, str) else _text(inner, where)
            results.append(
                {"role": "tool", "tool_call_id": str(block.get("tool_use_id", "")), "content": text}
            )
        elif kind in ("thinking", "redacted_thinking") and role == "assistant":
            continue  # earlier reasoning: the engines take only the answer back
        else:
            raise ApiError(
                400, f"{where}: content type {kind!r} is not supported on the {role} turn"
            )
    out: list[dict[str, Any]] = list(results)
    if parts or calls:
        text_only = all(p["type"] == "text" for p in parts)
        msg: dict[str, Any] = {
            "role": role,
            "content": "".join(p["text"] for p in parts) if text_only else parts,
        }
        if calls:
            msg["tool_calls"] = calls
        out.append(msg)
    return out


def _text(blocks: list[dict[str, Any]], where: str) -> str:
    texts = []
    for block in blocks:
        if block.get("type") != "text":
            raise ApiError(400, f"{where}: expected text blocks, got {block.get('type')!r}")
        texts.append(str(block.get("text", "")))
    return "\n".join(texts)


def _tool_choice(choice: dict[str, Any]) -> Any:
    kind = choice.get("type")
    if kind == "tool":
        return {"type": "function", "function": {"name": str(choice.get("name", ""))}}
    mapped = {"auto": "auto", "any": "required", "none": "none"}.get(str(kind))
    if mapped is None:
        raise ApiError(400, f"tool_choice: unknown type {kind!r}", param="tool_choice")
    return mapped


def _arguments(raw: str) -> Any:
    try:
        return orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        return {"_raw": raw}  # the model wrote invalid JSON; keep it visible


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


async def _stream(
    request: web.Request, model: ModelConfig, payload: dict[str, Any], started: int
) -> web.StreamResponse:
    result = chatcall.Completion()
    pieces = chatcall.stream(request, model, payload, started, result)
    out: web.StreamResponse | None = None
    block = -1  # index of the open content block
    open_kind = ""  # "text" or "tool_use"
    tools: dict[int, int] = {}  # engine tool index -> content block index
    message: dict[str, Any] = {
        "id": chatcall.new_id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": model.name,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 0, "output_tokens": 0},
    }
    try:
        async for piece in pieces:
            if out is None:  # the engine answered: now the stream starts
                out = await _open(request, message)
            if piece.text:
                if open_kind != "text":
                    block = await _switch(out, block, open_kind)
                    open_kind = "text"
                    await out.write(
                        _event(
                            "content_block_start",
                            {
                                "type": "content_block_start",
                                "index": block,
                                "content_block": {"type": "text", "text": ""},
                            },
                        )
                    )
                await out.write(
                    _event(
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": block,
                            "delta": {"type": "text_delta", "text": piece.text},
                        },
                    )
                )
            elif piece.tool_index is not None:
                if piece.tool_index not in tools:
                    block = await _switch(out, block, open_kind)
                    open_kind = "tool_use"
                    tools[piece.tool_index] = block
                    start = {
                        "type": "tool_use",
                        "id": piece.tool_id or f"call_{block}",
                        "name": piece.tool_name,
                        "input": {},
                    }
                    await out.write(
                        _event(
                            "content_block_start",
                            {"type": "content_block_start", "index": block, "content_block": start},
                        )
                    )
                if piece.tool_arguments:
                    await out.write(
                        _event(
                            "content_block_delta",
                            {
                                "type": "content_block_delta",
                                "index": tools[piece.tool_index],
                                "delta": {
                                    "type": "input_json_delta",
                                    "partial_json": piece.tool_arguments,
                                },
                            },
                        )
                    )
    except EngineStreamError as exc:
        if out is None:
            raise ApiError(502, str(exc)) from None
        await out.write(b"event: error\ndata: " + error_body("anthropic", 502, str(exc)) + b"\n\n")
        return out
    if out is None:
        out = await _open(request, message)
    if block >= 0:
        await out.write(
            _event("content_block_stop", {"type": "content_block_stop", "index": block})
        )
    await out.write(
        _event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {
                    "stop_reason": STOP_REASONS.get(result.finish, "end_turn"),
                    "stop_sequence": None,
                },
                "usage": {
                    "input_tokens": result.prompt_tokens,
                    "output_tokens": result.completion_tokens,
                },
            },
        )
    )
    await out.write(_event("message_stop", {"type": "message_stop"}))
    return out


async def _open(request: web.Request, message: dict[str, Any]) -> web.StreamResponse:
    out = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await out.prepare(request)
    await out.write(_event("message_start", {"type": "message_start", "message": message}))
    await out.write(_event("ping", {"type": "ping"}))
    return out


async def _switch(out: web.StreamResponse, block: int, open_kind: str) -> int:
    """Close the open content block (if any); the next one's index."""
    if open_kind:
        await out.write(
            _event("content_block_stop", {"type": "content_block_stop", "index": block})
        )
    return block + 1
