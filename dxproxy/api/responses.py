"""OpenAI's Responses API (POST /v1/responses, what Codex CLI speaks), translated to the
engine's chat completions and back, streamed or not, and stateful: responses are stored
(unless `store: false`) so that `previous_response_id` continues a conversation, and GET /
DELETE /v1/responses/{id} and .../input_items work (dxproxy/api/response_store.py).

Text and image input, instructions and developer messages, function tools, a namespace's
functions (flattened; their calls come back with the namespace), custom (freeform) tools (as
a function of one string), their calls and outputs, structured output (`text.format`) and
usage are mapped. What an engine cannot do (hosted tools such as web_search or local_shell,
reasoning on a model without it, file inputs, `include`) is dropped and noted in the log
(dxproxy/api/notes.py), never refused: a request OpenAI serves is served.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from dxproxy.api import chatcall
from dxproxy.api.notes import note
from dxproxy.api.ollama.request import jsonable, tools_payload
from dxproxy.api.request import resolve_model
from dxproxy.api.response_store import RESPONSES, ResponseStore, Stored
from dxproxy.api.schemas import ResponsesRequest, Tool, ToolFunction, decode
from dxproxy.api.sse import EngineStreamError
from dxproxy.config import ModelConfig
from dxproxy.http.errors import ApiError, json_response
from dxproxy.http.state import LIVE
from dxproxy.models.catalog import display_name, has_vision, no_tools_advice

routes = web.RouteTableDef()

ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
TEXT_PARTS = frozenset({"input_text", "output_text", "text"})


@routes.post("/v1/responses")
async def responses(request: web.Request) -> web.StreamResponse:
    started = time.monotonic_ns()
    req = decode(await request.read(), ResponsesRequest)
    model = resolve_model(request, req.model)
    store = _store(request)
    items: list[dict[str, Any]] = []
    if req.previous_response_id:
        prev = await store.get(req.previous_response_id)
        if prev is None:
            raise ApiError(
                400,
                f"Previous response with id '{req.previous_response_id}' not found (responses "
                "are kept for a day, or fewer when many are stored; `store: false` keeps none)",
                param="previous_response_id",
            )
        items = prev.items + [i for i in prev.response.get("output") or () if isinstance(i, dict)]
    if isinstance(req.input, str):
        text = [{"type": "input_text", "text": req.input}]
        items.append({"type": "message", "role": "user", "content": text})
    else:
        items.extend(i for i in req.input if isinstance(i, dict))
    payload, kinds = _payload(req, model, request, items)
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
        "parallel_tool_calls": req.parallel_tool_calls is not False,
        "previous_response_id": req.previous_response_id,
        "store": req.store is not False,
        "text": req.text or {"format": {"type": "text"}},
        "reasoning": req.reasoning or {},
        "error": None,
        "metadata": req.metadata or {},
    }

    async def keep(response: dict[str, Any]) -> None:
        if req.store is not False:  # OpenAI stores by default
            await store.put(response["id"], Stored(response, items))

    if req.stream:
        return await _stream(request, model, payload, started, base, kinds, keep)
    result = await chatcall.complete(request, model, payload, started)
    output: list[dict[str, Any]] = [_call_item(c, kinds) for c in result.tool_calls]
    if result.text or not output:
        output.insert(0, _message_item(chatcall.new_id("msg_"), result.text))
    response = _finished(base, output, result)
    await keep(response)
    return json_response(response)


@routes.get("/v1/responses/{response_id}")
async def get_response(request: web.Request) -> web.Response:
    stored = await _stored(request)
    return json_response(stored.response)


@routes.delete("/v1/responses/{response_id}")
async def delete_response(request: web.Request) -> web.Response:
    response_id = request.match_info["response_id"]
    if not await _store(request).delete(response_id):
        raise _not_found(response_id)
    return json_response({"id": response_id, "object": "response", "deleted": True})


@routes.get("/v1/responses/{response_id}/input_items")
async def input_items(request: web.Request) -> web.Response:
    """The items the response was made from, newest first unless `order=asc`, as a page
    (`limit`, default 20, at most 100; `after`: the id of the item before the page)."""
    stored = await _stored(request)
    data = [
        {"id": item.get("id") or f"item_{n}", **item}
        for n, item in enumerate(stored.items)
        if isinstance(item, dict)
    ]
    if request.query.get("order", "desc") != "asc":
        data.reverse()
    after = request.query.get("after")
    if after:
        ids = [d["id"] for d in data]
        data = data[ids.index(after) + 1 :] if after in ids else []
    try:
        limit = min(max(int(request.query.get("limit", "20")), 1), 100)
    except ValueError:
        raise ApiError(400, "limit: expected an integer from 1 to 100", param="limit") from None
    page = data[:limit]
    return json_response(
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(data) > limit,
        }
    )


def _store(request: web.Request) -> ResponseStore:
    return request.app[RESPONSES]


async def _stored(request: web.Request) -> Stored:
    response_id = request.match_info["response_id"]
    stored = await _store(request).get(response_id)
    if stored is None:
        raise _not_found(response_id)
    return stored


def _not_found(response_id: str) -> ApiError:
    return ApiError(404, f"Response with id '{response_id}' not found.", code="not_found")


# How each tool the client gave reaches the engine, by the function name the engine sees:
# ("function", namespace or None) or ("custom", None), to shape the calls that come back.
Kinds = dict[str, tuple[str, str | None]]
_CUSTOM_PARAMS = {
    "type": "object",
    "properties": {"input": {"type": "string", "description": "the tool's input, verbatim"}},
    "required": ["input"],
}


def _payload(
    req: ResponsesRequest, model: ModelConfig, request: web.Request, items: list[dict[str, Any]]
) -> tuple[dict[str, Any], Kinds]:
    info = request.app[LIVE].catalog.get(model.name)
    tools, kinds = _tools(req.tools or [])
    tools_ok = info is None or "tools" in info.capabilities
    if tools and not tools_ok:
        note(
            "responses",
            f"{display_name(model.name)}: the request's {len(tools)} tools are dropped and the "
            f"model answers in text: {no_tools_advice(model)}",
        )
        tools, kinds = [], {}
    messages: list[dict[str, Any]] = []
    if req.instructions:
        messages.append({"role": "system", "content": req.instructions})
    for i, item in enumerate(items):
        _item(item, i, messages, model, tools_ok)
    if not messages:
        raise ApiError(400, "input: expected text or a non-empty array of items", param="input")
    payload: dict[str, Any] = {"model": model.name, "messages": chatcall.fit_template(messages)}
    if req.max_output_tokens is not None:
        payload["max_tokens"] = req.max_output_tokens
    for key in ("temperature", "top_p"):
        if getattr(req, key) is not None:
            payload[key] = getattr(req, key)
    if tools:
        payload["tools"] = tools_payload(tools, model, info)
        choice = _tool_choice(req.tool_choice)
        if choice is not None:
            payload["tool_choice"] = choice
        if req.parallel_tool_calls is False:
            payload["parallel_tool_calls"] = False
    fmt = (req.text or {}).get("format") or {}
    fmt = fmt if isinstance(fmt, dict) else {}
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
        note("responses", f"text.format type {fmt.get('type')!r} is unknown: plain text")
    effort = (req.reasoning or {}).get("effort") if isinstance(req.reasoning, dict) else None
    if effort not in (None, "none", "minimal"):
        if info is not None and "thinking" in info.capabilities:
            payload["chat_template_kwargs"] = {"enable_thinking": True, "reasoning_effort": effort}
        else:
            note("responses", f"{display_name(model.name)} does not think: reasoning ignored")
    return payload, kinds


def _tools(raw: list[dict[str, Any]]) -> tuple[list[Tool], Kinds]:
    """Function tools as they are; a namespace's functions flattened; custom (freeform)
    tools as a function of one string, `input`. Hosted tools (web_search, file_search,
    local_shell, code_interpreter, ...) run on OpenAI's side, not on an engine: dropped."""
    tools: list[Tool] = []
    kinds: Kinds = {}

    def add(t: dict[str, Any], kind: str, namespace: str | None) -> None:
        name = t.get("name")
        if not isinstance(name, str) or not name or name in kinds:
            return
        desc = t.get("description")
        desc = desc if isinstance(desc, str) else None
        if kind == "custom":
            fmt = t["format"] if isinstance(t.get("format"), dict) else {}
            if fmt.get("type") == "grammar" and isinstance(fmt.get("definition"), str):
                rule = f"The input follows this {fmt.get('syntax', '')} grammar:\n"
                desc = f"{desc or ''}\n\n{rule}{fmt['definition']}".strip()
            params: dict[str, Any] | None = _CUSTOM_PARAMS
        else:
            p = t.get("parameters")
            params = p if isinstance(p, dict) else None
        tools.append(Tool(ToolFunction(name, desc, params)))
        kinds[name] = (kind, namespace)

    for t in raw:
        kind = t.get("type")
        if kind == "function":
            add(t, "function", None)
        elif kind == "custom":
            add(t, "custom", None)
        elif kind == "namespace":
            ns = t.get("name") if isinstance(t.get("name"), str) else None
            for inner in t.get("tools") or ():
                if isinstance(inner, dict) and inner.get("type", "function") == "function":
                    add(inner, "function", ns)
                elif isinstance(inner, dict) and inner.get("type") == "custom":
                    add(inner, "custom", None)
        else:
            note("responses", f"tool type {kind!r} runs on OpenAI's side, not an engine: dropped")
    return tools, kinds


def _tool_choice(choice: str | dict[str, Any] | None) -> Any:
    if isinstance(choice, str):
        return choice if choice in ("auto", "none", "required") else None
    if isinstance(choice, dict) and choice.get("type") in ("function", "custom"):
        return {"type": "function", "function": {"name": str(choice.get("name", ""))}}
    if choice is not None:
        note("responses", f"tool_choice {choice!r:.60} is not mapped: the model chooses (auto)")
    return None


def _item(
    item: dict[str, Any],
    i: int,
    out: list[dict[str, Any]],
    model: ModelConfig,
    tools_ok: bool = True,
) -> None:
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
        for part in content:
            ptype = part.get("type") if isinstance(part, dict) else None
            if ptype in TEXT_PARTS:
                parts.append({"type": "text", "text": str(part.get("text", ""))})
            elif ptype == "refusal":
                parts.append({"type": "text", "text": str(part.get("refusal", ""))})
            elif ptype == "input_image":
                url = part.get("image_url")
                if not has_vision(model):
                    note("responses", f"{display_name(model.name)} does not read images: dropped")
                elif isinstance(url, str) and url.startswith(("data:", "http:", "https:")):
                    parts.append({"type": "image_url", "image_url": {"url": url}})
                else:
                    note("responses", "an input_image without an image_url: dropped")
            else:
                note("responses", f"content part {ptype!r}: dropped")
        text_only = all(p["type"] == "text" for p in parts)
        out.append(
            {"role": role, "content": "".join(p["text"] for p in parts) if text_only else parts}
        )
    elif kind in ("function_call", "custom_tool_call"):
        name = str(item.get("name", ""))
        if kind == "function_call":
            args = str(item.get("arguments") or "{}")
        else:
            args = orjson.dumps({"input": str(item.get("input", ""))}).decode()
        if not tools_ok:
            out.append({"role": "assistant", "content": f"[called tool {name} with {args}]"})
            return
        call = {
            "id": str(item.get("call_id") or f"call_{i}"),
            "type": "function",
            "function": {"name": name, "arguments": args},
        }
        last = out[-1] if out else None
        if last and last["role"] == "assistant" and "tool_calls" in last:
            last["tool_calls"].append(call)  # parallel calls: one assistant turn
        else:
            out.append({"role": "assistant", "content": "", "tool_calls": [call]})
    elif kind in ("function_call_output", "custom_tool_call_output"):
        output = item.get("output", "")
        if isinstance(output, list):  # content parts: their text
            text = "\n".join(
                str(p.get("text", "")) for p in output if isinstance(p, dict) and "text" in p
            )
        else:
            text = output if isinstance(output, str) else orjson.dumps(output).decode()
        if not tools_ok:
            out.append({"role": "user", "content": f"[tool result]\n{text}"})
            return
        out.append({"role": "tool", "tool_call_id": str(item.get("call_id", "")), "content": text})
    elif kind == "reasoning":
        return  # earlier reasoning: the engines take only the answer back
    else:
        note("responses", f"input item type {kind!r}: dropped")


def _message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {
        "type": "message",
        "id": item_id,
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }


def _call_item(call: dict[str, str], kinds: Kinds, status: str = "completed") -> dict[str, Any]:
    kind, namespace = kinds.get(call["name"], ("function", None))
    if kind == "custom":
        return {
            "type": "custom_tool_call",
            "id": "ctc_" + call["id"],
            "call_id": call["id"],
            "name": call["name"],
            "input": _custom_input(call["arguments"]),
            "status": status,
        }
    item = {
        "type": "function_call",
        "id": "fc_" + call["id"],
        "call_id": call["id"],
        "name": call["name"],
        "arguments": call["arguments"],
        "status": status,
    }
    if namespace:
        item["namespace"] = namespace
    return item


def _custom_input(arguments: str) -> str:
    try:
        args = orjson.loads(arguments) if arguments else {}
    except orjson.JSONDecodeError:
        return arguments
    value = args.get("input") if isinstance(args, dict) else None
    return value if isinstance(value, str) else arguments


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
    kinds: Kinds,
    keep: Callable[[dict[str, Any]], Awaitable[None]],
) -> web.StreamResponse:
    result = chatcall.Completion()
    events: _Events | None = None
    output: list[dict[str, Any]] = []
    text_at = -1  # output index of the message item, once text arrives
    msg_id = chatcall.new_id("msg_")
    calls: dict[int, int] = {}  # engine tool index -> output index
    raw_args: dict[int, str] = {}  # output index -> the engine's arguments so far
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
                    at = calls[piece.tool_index] = len(output)
                    call = {
                        "id": piece.tool_id or f"call_{len(output)}",
                        "name": piece.tool_name,
                        "arguments": "",
                    }
                    output.append(_call_item(call, kinds, "in_progress"))
                    raw_args[at] = ""
                    await events.send("response.output_item.added", output_index=at,
                                      item=output[at])  # fmt: skip
                at = calls[piece.tool_index]
                if piece.tool_arguments:
                    raw_args[at] += piece.tool_arguments
                    if output[at]["type"] == "function_call":
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
        elif item["type"] == "custom_tool_call":
            # The engine streams the JSON of {"input": ...}; the input itself, once whole.
            item["input"] = _custom_input(raw_args[at])
            for kind, field in (("delta", "delta"), ("done", "input")):
                await events.send(
                    f"response.custom_tool_call_input.{kind}",
                    item_id=item["id"],
                    output_index=at,
                    **{field: item["input"]},
                )
        else:
            await events.send(
                "response.function_call_arguments.done",
                item_id=item["id"],
                output_index=at,
                arguments=item["arguments"],
            )
        await events.send("response.output_item.done", output_index=at, item=item)
    response = _finished(base, output, result)
    await keep(response)
    await events.send("response.completed", response=response)
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
