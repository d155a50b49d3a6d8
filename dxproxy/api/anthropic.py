"""Anthropic's Messages API (POST /v1/messages, what Claude Code speaks), translated to the
engine's chat completions and back, streamed (Anthropic's SSE events) or not.

Text, system prompts (the `system` field and system-role messages, as Claude Code sends
them), images, documents with text, tools (tool_use / tool_result blocks) and usage are
mapped. What an engine cannot do (Anthropic's server tools, PDFs, thinking on a model without
it, images for a model without vision, fields such as cache_control, metadata,
context_management) is dropped and noted in the log (dxproxy/api/notes.py), never refused:
a request the real API serves is served. `?beta=true` and `anthropic-beta` change nothing.
"""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from dxproxy.api import chatcall
from dxproxy.api.engine import call_engine
from dxproxy.api.notes import note
from dxproxy.api.ollama.request import jsonable, tools_payload
from dxproxy.api.request import resolve_model
from dxproxy.api.schemas import AnthropicRequest, Tool, ToolFunction, decode
from dxproxy.api.sse import EngineStreamError
from dxproxy.config import ModelConfig
from dxproxy.http.errors import ApiError, error_body, json_response
from dxproxy.http.state import LIVE
from dxproxy.models.catalog import display_name, has_vision, no_tools_advice

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


@routes.post("/v1/messages/count_tokens")
async def count_tokens(request: web.Request) -> web.Response:
    """The prompt's size in the engine's own tokens: its chat template applied, then its
    tokenizer (llama-server, vLLM); an estimate (4 bytes a token) where the engine has
    neither."""
    started = time.monotonic_ns()
    req = decode(await request.read(), AnthropicRequest)
    model = resolve_model(request, req.model)
    payload = _payload(req, model, request)
    return json_response({"input_tokens": await prompt_tokens(request, model, payload, started)})


async def prompt_tokens(
    request: web.Request, model: ModelConfig, payload: dict[str, Any], started: int
) -> int:
    body: dict[str, Any] = {k: payload[k] for k in ("model", "messages", "tools") if k in payload}
    try:
        if model.kind == "llama-server":
            async with call_engine(request, model, "/apply-template", body, started) as call:
                prompt = (orjson.loads(await call.response.read()) or {}).get("prompt")
            if isinstance(prompt, str):
                tok = {"content": prompt, "add_special": True}
                async with call_engine(request, model, "/tokenize", tok, started) as call:
                    tokens = (orjson.loads(await call.response.read()) or {}).get("tokens")
                if isinstance(tokens, list):
                    return len(tokens)
        elif model.kind == "vllm":
            async with call_engine(request, model, "/tokenize", body, started) as call:
                count = (orjson.loads(await call.response.read()) or {}).get("count")
            if isinstance(count, int):
                return count
    except (ApiError, aiohttp.ClientError, orjson.JSONDecodeError, AttributeError) as exc:
        note("anthropic", f"count_tokens: the engine of {model.name} could not count ({exc})")
    return max(1, len(orjson.dumps(body)) // 4)


def _payload(req: AnthropicRequest, model: ModelConfig, request: web.Request) -> dict[str, Any]:
    info = request.app[LIVE].catalog.get(model.name)
    # A model whose chat template has no tool syntax cannot be given tools: they are dropped
    # (the model answers in text) and earlier tool turns are shown to it as text.
    tools = _tools(req.tools or [], model)
    tools_ok = info is None or "tools" in info.capabilities
    if tools and not tools_ok:
        note(
            "anthropic",
            f"{display_name(model.name)}: the request's {len(tools)} tools are dropped and the "
            f"model answers in text: {no_tools_advice(model)}",
        )
        tools = []
    system: list[str] = []
    if req.system:
        system.append(req.system if isinstance(req.system, str) else _text(req.system, "system"))
    out: list[dict[str, Any]] = []
    for i, m in enumerate(req.messages):
        role = m.role
        if role == "system":
            # Claude Code sends system-role messages inside `messages`. Chat templates take one
            # system prompt, at the start: it is appended there.
            if m.content:
                content = m.content
                system.append(
                    content if isinstance(content, str) else _text(content, f"messages[{i}]")
                )
            continue
        if role not in ("user", "assistant"):
            raise ApiError(
                400,
                f"messages[{i}].role: expected user or assistant, got {role!r}",
                param="messages",
            )
        out.extend(_message(role, m.content, i, model, tools_ok))
    if system:
        out.insert(0, {"role": "system", "content": "\n\n".join(s for s in system if s)})
    payload: dict[str, Any] = {"model": model.name, "messages": chatcall.fit_template(out)}
    if req.max_tokens is not None:
        payload["max_tokens"] = req.max_tokens
    for key in ("temperature", "top_p", "top_k"):
        if getattr(req, key) is not None:
            payload[key] = getattr(req, key)
    if req.stop_sequences:
        payload["stop"] = req.stop_sequences
    if tools:
        payload["tools"] = tools_payload(tools, model, info)
        if req.tool_choice:
            choice = _tool_choice(req.tool_choice)
            if choice is not None:
                payload["tool_choice"] = choice
    thinking = (req.thinking or {}).get("type")  # enabled, adaptive, disabled
    if thinking == "enabled":
        if info is not None and "thinking" in info.capabilities:
            payload["chat_template_kwargs"] = {"enable_thinking": True}
        else:
            note("anthropic", f"{display_name(model.name)} does not think: `thinking` ignored")
    fmt = (req.output_config or {}).get("format") or req.output_format
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        payload["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": jsonable(fmt.get("schema") or {})},
        }
    return payload


# Anthropic's own tools (run by its servers, or by the client in a shape only Claude knows):
# an engine cannot run them, so they are dropped.
def _tools(tools: list[dict[str, Any]], model: ModelConfig) -> list[Tool]:
    out: list[Tool] = []
    for t in tools:
        kind = t.get("type")
        name = t.get("name")
        if kind not in (None, "custom") or not isinstance(name, str) or not name:
            note("anthropic", f"tool type {kind!r} ({name}) cannot run on an engine: dropped")
            continue
        if t.get("defer_loading"):
            # Loaded on demand by Anthropic's tool search, which an engine does not have.
            note("anthropic", f"tool {name} has defer_loading: dropped")
            continue
        schema = t.get("input_schema")
        desc = t.get("description")
        out.append(
            Tool(
                ToolFunction(
                    name,
                    desc if isinstance(desc, str) else None,
                    schema if isinstance(schema, dict) else None,
                )
            )
        )
    return out


def _message(
    role: str, content: Any, i: int, model: ModelConfig, tools_ok: bool = True
) -> list[dict[str, Any]]:
    """One Anthropic message as OpenAI messages: tool results become `tool` messages (or
    text, for a model without tools). Blocks the engine cannot take are dropped, logged."""
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for n, block in enumerate(content):
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            parts.append({"type": "text", "text": str(block.get("text", ""))})
        elif kind == "image":
            image = _image(block, model)
            if image:
                parts.append(image)
        elif kind == "document":
            text = _document(block)
            if text:
                parts.append({"type": "text", "text": text})
        elif kind == "search_result":
            parts.append({"type": "text", "text": _blocks_text(block.get("content"))})
        elif kind == "tool_use" and role == "assistant":
            name = str(block.get("name", ""))
            args = orjson.dumps(jsonable(block.get("input") or {})).decode()
            if not tools_ok:
                parts.append({"type": "text", "text": f"[called tool {name} with {args}]"})
                continue
            calls.append(
                {
                    "id": str(block.get("id") or f"call_{i}_{n}"),
                    "type": "function",
                    "function": {"name": name, "arguments": args},
                }
            )
        elif kind == "tool_result" and role == "user":
            text = _blocks_text(block.get("content", ""))
            if block.get("is_error"):
                text = "Error: " + text
            if not tools_ok:
                parts.append({"type": "text", "text": f"[tool result]\n{text}"})
                continue
            results.append(
                {"role": "tool", "tool_call_id": str(block.get("tool_use_id", "")), "content": text}
            )
        elif kind in ("thinking", "redacted_thinking"):
            continue  # earlier reasoning: the engines take only the answer back
        else:
            note("anthropic", f"content block {kind!r} on the {role} turn: dropped")
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


def _image(block: dict[str, Any], model: ModelConfig) -> dict[str, Any] | None:
    if not has_vision(model):
        note("anthropic", f"{display_name(model.name)} does not read images: image dropped")
        return None
    source = _dict(block.get("source"))
    if source.get("type") == "base64":
        url = f"data:{source.get('media_type', 'image/jpeg')};base64,{source.get('data', '')}"
    elif source.get("type") == "url" and isinstance(source.get("url"), str):
        url = source["url"]
    else:
        note("anthropic", f"image source {source.get('type')!r}: dropped")
        return None
    return {"type": "image_url", "image_url": {"url": url}}


def _document(block: dict[str, Any]) -> str:
    """A document block as text where it has text (plain text, content blocks); a PDF or a
    file id cannot be read by an engine and is dropped."""
    source = _dict(block.get("source"))
    title = block.get("title")
    if source.get("type") == "text":
        text = str(source.get("data", ""))
    elif source.get("type") == "content":
        text = _blocks_text(source.get("content"))
    else:
        note("anthropic", f"document source {source.get('type')!r}: dropped")
        return ""
    return f"{title}\n\n{text}" if isinstance(title, str) and title else text


def _blocks_text(content: Any) -> str:
    """The text of a string or of content blocks (tool results, search results); images
    and other blocks inside them are dropped."""
    if isinstance(content, str):
        return content
    texts = []
    for block in content if isinstance(content, list) else ():
        if isinstance(block, dict) and block.get("type") == "text":
            texts.append(str(block.get("text", "")))
        elif isinstance(block, dict):
            note("anthropic", f"{block.get('type')!r} inside a tool result: dropped")
    return "\n".join(texts)


def _text(blocks: list[dict[str, Any]], where: str) -> str:
    texts = []
    for block in blocks:
        if not isinstance(block, dict) or block.get("type") != "text":
            note("anthropic", f"{where}: only text blocks are read; a {block!r:.40} is dropped")
            continue
        texts.append(str(block.get("text", "")))
    return "\n".join(texts)


def _tool_choice(choice: dict[str, Any]) -> Any:  # None: leave it to the model
    kind = choice.get("type")
    if kind == "tool":
        return {"type": "function", "function": {"name": str(choice.get("name", ""))}}
    mapped = {"auto": "auto", "any": "required", "none": "none"}.get(str(kind))
    if mapped is None:
        note("anthropic", f"tool_choice type {kind!r} is unknown: the model chooses (auto)")
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


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
