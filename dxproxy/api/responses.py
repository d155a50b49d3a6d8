"""OpenAI's Responses API (POST /v1/responses, what Codex CLI speaks), stateless as in
Ollama, translated to the engine's chat completions and back, streamed or not.

Text and image input, instructions, function tools (calls and their outputs), structured
output (`text.format`) and usage are mapped; anything else is refused with a clear 400.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web

from dxproxy.api import chatcall
from dxproxy.api.ollama.request import check_vision, jsonable, tools_payload
from dxproxy.api.request import resolve_model
from dxproxy.api.schemas import ResponsesRequest, Tool, ToolFunction, decode
from dxproxy.api.sse import EngineStreamError
from dxproxy.config import ModelConfig
from dxproxy.http.errors import ApiError, json_response
from dxproxy.http.state import LIVE
from dxproxy.models.catalog import display_name

routes = web.RouteTableDef()

ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
TEXT_PARTS = frozenset({"input_text", "output_text", "text"})


@routes.post("/v1/responses")
async def responses(request: web.Request) -> web.StreamResponse:
    started = time.monotonic_ns()
    req = decode(await request.read(), ResponsesRequest)
    model = resolve_model(request, req.model)
    payload = _payload(req, model, request)
    base = {
        "id": chatcall.new_id("resp_"),
        "object": "response",
        "created_at": int(time.time()),
        "model": req.model,
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "tools": req.tools or [],
        "tool_choice": req.tool_choice or "auto",
        "parallel_tool_calls": True,
        "error": None,
        "metadata": {},
    }
    if req.stream:
        return await _stream(request, model, payload, started, base)
    result = await chatcall.complete(request, model, payload, started)
    output: list[dict[str, Any]] = [_call_item(c) for c in result.tool_calls]
    if result.text or not output:
        output.append(_message_item(chatcall.new_id("msg_"), result.text))
    return json_response(_finished(base, output, result))


def _payload(req: ResponsesRequest, model: ModelConfig, request: web.Request) -> dict[str, Any]:
    if req.previous_response_id:
        raise ApiError(
            400,
            "previous_response_id is not supported: DX's Responses API is stateless; send "
            "the whole conversation in `input`",
            param="previous_response_id",
        )
    messages: list[dict[str, Any]] = []
    if req.instructions:
        messages.append({"role": "system", "content": req.instructions})
    if isinstance(req.input, str):
        messages.append({"role": "user", "content": req.input})
    else:
        for i, item in enumerate(req.input):
            _item(item, i, messages, model)
    if not messages:
        raise ApiError(400, "input: expected text or a non-empty array of items", param="input")
    payload: dict[str, Any] = {"model": model.name, "messages": messages}
    if req.max_output_tokens is not None:
        payload["max_tokens"] = req.max_output_tokens
    for key in ("temperature", "top_p"):
        if getattr(req, key) is not None:
            payload[key] = getattr(req, key)
    info = request.app[LIVE].catalog.get(model.name)
    if req.tools:
        tools = []
        for n, t in enumerate(req.tools):
            if t.get("type") != "function" or not isinstance(t.get("name"), str):
                raise ApiError(
                    400,
                    f"tools[{n}]: only function tools are supported (type {t.get('type')!r})",
                    param="tools",
                )
            params = t.get("parameters")
            tools.append(
                Tool(
                    ToolFunction(
                        t["name"],
                        t.get("description"),
                        params if isinstance(params, dict) else None,
                    )
                )
            )
        payload["tools"] = tools_payload(tools, model, info)
    if isinstance(req.tool_choice, str):
        payload["tool_choice"] = req.tool_choice
    elif isinstance(req.tool_choice, dict) and req.tool_choice.get("type") == "function":
        payload["tool_choice"] = {
            "type": "function",
            "function": {"name": str(req.tool_choice.get("name", ""))},
        }
    fmt = (req.text or {}).get("format") or {}
    if fmt.get("type") == "json_object":
        payload["response_format"] = {"type": "json_object"}
    elif fmt.get("type") == "json_schema":
        payload["response_format"] = {
            "type": "json_schema",
            "json_schema": {
                "name": str(fmt.get("name", "response")),
                "schema": jsonable(fmt.get("schema") or {}),
                "strict": bool(fmt.get("strict", True)),
            },
        }
    elif fmt.get("type") not in (None, "text"):
        raise ApiError(400, f"text.format: unknown type {fmt.get('type')!r}", param="text")
    effort = (req.reasoning or {}).get("effort")
    if effort not in (None, "none", "minimal"):
        if info is None or "thinking" not in info.capabilities:
            raise ApiError(
                400,
                f'"{display_name(model.name)}" does not support thinking; leave reasoning.effort '
                "out (or none)",
                param="reasoning",
            )
        payload["chat_template_kwargs"] = {"enable_thinking": True, "reasoning_effort": effort}
    return payload


def _item(item: dict[str, Any], i: int, out: list[dict[str, Any]], model: ModelConfig) -> None:
    kind = item.get("type", "message")
    where = f"input[{i}]"
    if kind == "message":
        role = ROLES.get(str(item.get("role")))
        if role is None:
            raise ApiError(400, f"{where}.role: expected user, assistant, system or developer")
        content = item.get("content", "")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
            return
        if not isinstance(content, list):
            raise ApiError(400, f"{where}.content: expected a string or an array of parts")
        parts: list[dict[str, Any]] = []
        for n, part in enumerate(content):
            ptype = part.get("type") if isinstance(part, dict) else None
            if ptype in TEXT_PARTS:
                parts.append({"type": "text", "text": str(part.get("text", ""))})
            elif ptype == "input_image":
                check_vision(model)
                url = part.get("image_url")
                if not isinstance(url, str) or not url.startswith("data:"):
                    raise ApiError(
                        400, f"{where}.content[{n}]: only data: image URLs are supported"
                    )
                parts.append({"type": "image_url", "image_url": {"url": url}})
            else:
                raise ApiError(400, f"{where}.content[{n}]: unsupported part type {ptype!r}")
        text_only = all(p["type"] == "text" for p in parts)
        out.append(
            {"role": role, "content": "".join(p["text"] for p in parts) if text_only else parts}
        )
    elif kind == "function_call":
        call = {
            "id": str(item.get("call_id") or f"call_{i}"),
            "type": "function",
            "function": {
                "name": str(item.get("name", "")),
                "arguments": str(item.get("arguments") or "{}"),
            },
        }
        last = out[-1] if out else None
        if last and last["role"] == "assistant" and "tool_calls" in last:
            last["tool_calls"].append(call)  # parallel calls: one assistant turn
        else:
            out.append({"role": "assistant", "content": "", "tool_calls": [call]})
    elif kind == "function_call_output":
        output = item.get("output", "")
        out.append(
            {
                "role": "tool",
                "tool_call_id": str(item.get("call_id", "")),
                "content": output if isinstance(output, str) else orjson.dumps(output).decode(),
            }
        )
    elif kind == "reasoning":
        return  # earlier reasoning: the engines take only the answer back
    else:
        raise ApiError(400, f"{where}: unsupported item type {kind!r}", param="input")


def _message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {
        "type": "message",
        "id": item_id,
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }


def _call_item(call: dict[str, str], status: str = "completed") -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": "fc_" + call["id"],
        "call_id": call["id"],
        "name": call["name"],
        "arguments": call["arguments"],
        "status": status,
    }


def _finished(
    base: dict[str, Any], output: list[dict[str, Any]], result: chatcall.Completion
) -> dict[str, Any]:
    cut = result.finish == "length"
    return {
        **base,
        "status": "incomplete" if cut else "completed",
        "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
        "output": output,
        "usage": {
            "input_tokens": result.prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": result.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": result.prompt_tokens + result.completion_tokens,
        },
    }


class _Events:
    """Responses streaming events, numbered."""

    def __init__(self, out: web.StreamResponse) -> None:
        self.out = out
        self.seq = 0

    async def send(self, kind: str, **data: Any) -> None:
        event = {"type": kind, "sequence_number": self.seq, **data}
        self.seq += 1
        await self.out.write(
            b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"
        )


async def _stream(
    request: web.Request,
    model: ModelConfig,
    payload: dict[str, Any],
    started: int,
    base: dict[str, Any],
) -> web.StreamResponse:
    result = chatcall.Completion()
    events: _Events | None = None
    output: list[dict[str, Any]] = []
    text_at = -1  # output index of the message item, once text arrives
    msg_id = chatcall.new_id("msg_")
    calls: dict[int, int] = {}  # engine tool index -> output index
    try:
        async for piece in chatcall.stream(request, model, payload, started, result):
            if events is None:
                events = await _open(request, base)
            if piece.text:
                if text_at < 0:
                    text_at = len(output)
                    output.append(_message_item(msg_id, "", "in_progress"))
                    await events.send(
                        "response.output_item.added",
                        output_index=text_at,
                        item={**output[text_at], "content": []},
                    )
                    await events.send(
                        "response.content_part.added",
                        item_id=msg_id,
                        output_index=text_at,
                        content_index=0,
                        part={"type": "output_text", "text": "", "annotations": []},
                    )
                output[text_at]["content"][0]["text"] += piece.text
                await events.send(
                    "response.output_text.delta",
                    item_id=msg_id,
                    output_index=text_at,
                    content_index=0,
                    delta=piece.text,
                )
            elif piece.tool_index is not None:
                if piece.tool_index not in calls:
                    calls[piece.tool_index] = len(output)
                    call = {
                        "id": piece.tool_id or f"call_{len(output)}",
                        "name": piece.tool_name,
                        "arguments": "",
                    }
                    output.append(_call_item(call, "in_progress"))
                    await events.send(
                        "response.output_item.added",
                        output_index=calls[piece.tool_index],
                        item=output[calls[piece.tool_index]],
                    )
                at = calls[piece.tool_index]
                if piece.tool_arguments:
                    output[at]["arguments"] += piece.tool_arguments
                    await events.send(
                        "response.function_call_arguments.delta",
                        item_id=output[at]["id"],
                        output_index=at,
                        delta=piece.tool_arguments,
                    )
    except EngineStreamError as exc:
        if events is None:
            raise ApiError(502, str(exc)) from None
        failed = {
            **base,
            "status": "failed",
            "output": output,
            "error": {"code": "server_error", "message": str(exc)},
        }
        await events.send("response.failed", response=failed)
        return events.out
    if events is None:
        events = await _open(request, base)
    for at, item in enumerate(output):
        item["status"] = "completed"
        if at == text_at:
            text = item["content"][0]["text"]
            await events.send(
                "response.output_text.done",
                item_id=msg_id,
                output_index=at,
                content_index=0,
                text=text,
            )
            await events.send(
                "response.content_part.done",
                item_id=msg_id,
                output_index=at,
                content_index=0,
                part=item["content"][0],
            )
        else:
            await events.send(
                "response.function_call_arguments.done",
                item_id=item["id"],
                output_index=at,
                arguments=item["arguments"],
            )
        await events.send("response.output_item.done", output_index=at, item=item)
    await events.send("response.completed", response=_finished(base, output, result))
    return events.out


async def _open(request: web.Request, base: dict[str, Any]) -> _Events:
    out = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await out.prepare(request)
    events = _Events(out)
    started = {**base, "status": "in_progress", "output": [], "usage": None}
    await events.send("response.created", response=started)
    await events.send("response.in_progress", response=started)
    return events
