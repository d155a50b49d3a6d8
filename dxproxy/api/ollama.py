"""The Ollama API, translated to the engines' OpenAI API and back.

Requests become `/v1/chat/completions` (or `/v1/completions` for raw generate) calls. A
streamed reply is the engine's SSE stream turned into Ollama's NDJSON, chunk by chunk, with
Ollama's final statistics measured by DX (time to first token = prompt evaluation); a
non-streamed one is the engine's one-body reply, with the engine's exact token counts, except
on engines that notice a client leaving only while streaming (llama-cpp-python): there the
stream is collected into one reply, so a client that gives up still frees the engine.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from dxproxy import OLLAMA_API_VERSION, __version__
from dxproxy.api.common import (
    EngineStreamError,
    call_engine,
    field,
    read_json,
    resolve_model,
    sse_events,
    stream_cut,
)
from dxproxy.catalog import display_name
from dxproxy.config import ModelConfig, parse_duration
from dxproxy.errors import ApiError, json_response
from dxproxy.keys import CATALOG
from supervisors.adapters import ADAPTERS

routes = web.RouteTableDef()

NDJSON = "application/x-ndjson"
ROLES = frozenset({"system", "user", "assistant", "tool"})

# Ollama option -> the engine's (OpenAI + llama.cpp) request field, and the type it must have.
SAMPLING_OPTIONS: dict[str, tuple[str, type | tuple[type, ...]]] = {
    "temperature": ("temperature", (int, float)),
    "top_p": ("top_p", (int, float)),
    "top_k": ("top_k", int),
    "min_p": ("min_p", (int, float)),
    "typical_p": ("typical_p", (int, float)),
    "repeat_penalty": ("repeat_penalty", (int, float)),
    "presence_penalty": ("presence_penalty", (int, float)),
    "frequency_penalty": ("frequency_penalty", (int, float)),
    "seed": ("seed", int),
}


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


@routes.get("/")
async def root(request: web.Request) -> web.Response:
    return web.Response(text="Ollama is running")  # what Ollama clients probe for


@routes.get("/api/version")
async def version(request: web.Request) -> web.Response:
    return json_response({"version": OLLAMA_API_VERSION, "dx_version": __version__})


@routes.get("/api/tags")
async def tags(request: web.Request) -> web.Response:
    models = [m.tags_entry() for m in request.app[CATALOG].models]
    return json_response({"models": models})


@routes.post("/api/chat")
async def chat(request: web.Request) -> web.StreamResponse:
    started = time.monotonic_ns()
    body = await read_json(request)
    model = resolve_model(request, body.get("model"))
    raw_messages = field(body, "messages", list, [])
    messages = [_message(m, i) for i, m in enumerate(raw_messages)]
    stream = field(body, "stream", bool, True)
    tools = field(body, "tools", list, None)
    payload = _sampling(body, model)
    _check_common(body)
    if not messages:
        return _load_reply(body, model, chat=True)
    if any(isinstance(m, dict) and m.get("images") for m in raw_messages):
        _check_vision(model)
    payload["messages"] = messages
    if tools:
        payload["tools"] = tools
    return await _reply(request, model, "/v1/chat/completions", payload, started, stream, chat=True)


@routes.post("/api/generate")
async def generate(request: web.Request) -> web.StreamResponse:
    started = time.monotonic_ns()
    body = await read_json(request)
    model = resolve_model(request, body.get("model"))
    prompt = field(body, "prompt", str, "")
    system = field(body, "system", str, "")
    raw = field(body, "raw", bool, False)
    stream = field(body, "stream", bool, True)
    images = field(body, "images", list, [])
    payload = _sampling(body, model)
    _check_common(body)
    if field(body, "suffix", str, ""):
        raise ApiError(400, f"{display_name(model.name)} does not support insert")
    if field(body, "template", str, ""):
        raise ApiError(
            400,
            "template overrides are not supported: the engine applies the "
            "model's own chat template (use raw: true to send a prompt as is)",
        )
    if not prompt and not images:
        return _load_reply(body, model, chat=False)
    if images:
        _check_vision(model)
    if raw:
        if system or images:
            raise ApiError(400, "raw mode does not support template, system, or context")
        payload["prompt"] = prompt
        path = "/v1/completions"
    else:
        user = _message({"role": "user", "content": prompt, "images": images}, 0)
        payload["messages"] = ([{"role": "system", "content": system}] if system else []) + [user]
        path = "/v1/chat/completions"
    return await _reply(request, model, path, payload, started, stream, chat=False)


def _check_common(body: dict[str, Any]) -> None:
    keep_alive = body.get("keep_alive")
    if keep_alive is not None and parse_duration(keep_alive) is None:
        raise ApiError(
            400, f"keep_alive: expected seconds or a duration like '5m', got {keep_alive!r}"
        )
    if body.get("think") not in (None, False):
        raise ApiError(
            400, "think: DX does not support thinking models yet; send think: false or leave it out"
        )


def _check_vision(model: ModelConfig) -> None:
    # llama-cpp-python as DX starts it has no vision projector: images would reach the engine
    # only to fail with an internal error. An operator's own `command` may add one.
    if model.engine == "llamacpp" and model.command is None:
        raise ApiError(
            400,
            f"{display_name(model.name)} does not support images: DX starts llama.cpp models "
            "without a vision projector",
        )


def _message(m: Any, i: int) -> dict[str, Any]:
    where = f"messages[{i}]."
    if not isinstance(m, dict):
        raise ApiError(400, f"messages[{i}]: expected an object with role and content")
    role = field(m, "role", str, "", where=where).lower()
    if role not in ROLES:
        raise ApiError(
            400, f"messages[{i}].role: expected one of assistant, system, tool, user; got {role!r}"
        )
    content = field(m, "content", str, "", where=where)
    out: dict[str, Any] = {"role": role, "content": content}
    images = field(m, "images", list, [], where=where)
    if images:
        if not all(isinstance(img, str) for img in images):
            raise ApiError(400, f"{where}images: expected an array of base64 strings")
        out["content"] = [{"type": "text", "text": content}] + [
            {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{img}"}}
            for img in images
        ]
    calls = field(m, "tool_calls", list, [], where=where)
    if calls:
        out["tool_calls"] = [_tool_call_to_openai(c, i, n) for n, c in enumerate(calls)]
    if role == "tool":
        call_id = field(m, "tool_call_id", str, "", where=where)
        if call_id:
            out["tool_call_id"] = call_id
    return out


def _tool_call_to_openai(call: Any, i: int, n: int) -> dict[str, Any]:
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise ApiError(
            400,
            f"messages[{i}].tool_calls[{n}]: expected "
            '{"function": {"name": ..., "arguments": {...}}}',
        )
    args = fn.get("arguments", {})
    return {
        "id": call.get("id") or f"call_{i}_{n}",
        "type": "function",
        "function": {
            "name": fn["name"],
            "arguments": args if isinstance(args, str) else orjson.dumps(args).decode(),
        },
    }


def _sampling(body: dict[str, Any], model: ModelConfig) -> dict[str, Any]:
    """The engine request's sampling fields, from Ollama's `options` and `format`."""
    payload: dict[str, Any] = {"model": model.name, "stream": True}
    options = field(body, "options", dict, {})
    for key, (target, kind) in SAMPLING_OPTIONS.items():
        value = field(options, key, kind, where="options.")
        if value is not None:
            payload[target] = value
    num_predict = field(options, "num_predict", (int, float), where="options.")
    if num_predict is not None and num_predict >= 0:  # -1 (no limit) and -2 (fill context)
        payload["max_tokens"] = int(num_predict)
    stop = options.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise ApiError(400, "options.stop: expected a string or an array of strings")
        payload["stop"] = stops
    # Other options (num_ctx, num_gpu, ...) are load-time settings that DX takes from its
    # config, not per request; unknown ones are ignored, as Ollama does.
    fmt = body.get("format")
    if fmt == "json":
        payload["response_format"] = {"type": "json_object"}
    elif isinstance(fmt, dict):
        payload["response_format"] = {"type": "json_object", "schema": fmt}
    elif fmt not in (None, ""):
        raise ApiError(
            400,
            f'invalid format: {orjson.dumps(fmt).decode()}; expected "json" or '
            "a valid JSON Schema object",
        )
    return payload


def _load_reply(body: dict[str, Any], model: ModelConfig, *, chat: bool) -> web.Response:
    """An empty prompt asks to load (or, with keep_alive 0, unload) the model. DX models are
    loaded when dx starts and stay loaded, so both are acknowledged as Ollama does."""
    unload = parse_duration(body.get("keep_alive")) == 0
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
    if stream or ADAPTERS[model.engine].cancels_only_streams(model):
        # A client that leaves must free the engine at once, which some engines notice only
        # while they stream: for those, `stream: false` is streamed too, and collected here.
        return await _relay_stream(
            request, model, path, payload, started, chat=chat, collect=not stream
        )
    return await _reply_once(request, model, path, payload, started, chat=chat)


async def _relay_stream(
    request: web.Request,
    model: ModelConfig,
    path: str,
    payload: dict[str, Any],
    started: int,
    *,
    chat: bool,
    collect: bool = False,
) -> web.StreamResponse:
    """The engine's SSE stream as Ollama NDJSON, one line per token, as tokens arrive.

    With `collect`, the same stream is gathered into one reply instead (for `stream: false`
    on engines that only notice a client leaving while they stream).
    """
    name = display_name(model.name)
    payload["stream"] = True
    payload["stream_options"] = {"include_usage": True}  # token counts, where engines give them
    async with call_engine(request, model, path, payload, started) as call:
        out: web.StreamResponse | None = None
        if not collect:
            out = web.StreamResponse(headers={"Content-Type": NDJSON})
            await out.prepare(request)
        parts: list[str] = []
        tool_calls: dict[int, dict[str, Any]] = {}
        finish = "stop"
        usage: dict[str, Any] = {}
        first_ns = last_ns = 0
        events = sse_events(call.response)
        while True:
            try:
                event = await anext(events)
            except StopAsyncIteration:
                break
            except (EngineStreamError, aiohttp.ClientError, TimeoutError) as exc:
                if out is None:
                    raise ApiError(502, stream_cut(model, exc)) from None
                # Headers are sent: Ollama's way is one last line with the error, no done.
                await out.write(orjson.dumps({"error": stream_cut(model, exc)}) + b"\n")
                return out
            if event.get("usage"):
                usage = event["usage"]
            for choice in event.get("choices") or ():
                # Chat completions stream `delta`s; raw completions stream `text`.
                delta = choice.get("delta") or {}
                text = delta.get("content") if "delta" in choice else choice.get("text")
                for tc in delta.get("tool_calls") or ():
                    _merge_tool_call(tool_calls, tc)
                if choice.get("finish_reason"):
                    finish = choice["finish_reason"]
                if not text:
                    continue
                last_ns = time.monotonic_ns()
                first_ns = first_ns or last_ns
                parts.append(text)
                if out is not None:
                    await out.write(orjson.dumps(_chunk(name, chat, text, done=False)) + b"\n")

        calls = [_tool_call_to_ollama(tool_calls[k], k) for k in sorted(tool_calls)]
        if calls and out is not None:
            tool_chunk = _chunk(name, chat, "", done=False)
            tool_chunk["message"]["tool_calls"] = calls
            await out.write(orjson.dumps(tool_chunk) + b"\n")
        end = time.monotonic_ns()
        first_ns, last_ns = first_ns or end, last_ns or end
        final = _chunk(name, chat, "" if out is not None else "".join(parts), done=True)
        if calls and out is None and chat:
            final["message"]["tool_calls"] = calls
        final.update(
            _stats(
                finish,
                total=end - started,
                queued=call.queued_ns,
                # Engines that report usage in streams (llama-server, vLLM) give the prompt's
                # token count; llama-cpp-python does not, and an unknown count is left out.
                prompt_tokens=usage.get("prompt_tokens"),
                prompt_ns=first_ns - call.sent_ns,  # time to first token
                eval_tokens=usage.get("completion_tokens") or len(parts),
                eval_ns=last_ns - first_ns,
            )
        )
        if out is None:
            return json_response(final)
        await out.write(orjson.dumps(final) + b"\n")
        return out


async def _reply_once(
    request: web.Request,
    model: ModelConfig,
    path: str,
    payload: dict[str, Any],
    started: int,
    *,
    chat: bool,
) -> web.Response:
    """One engine reply as one Ollama object, from one engine body: no per-token streaming
    cost (about 1 ms a token on llama-cpp-python), and the engine's exact token counts."""
    payload["stream"] = False
    async with call_engine(request, model, path, payload, started) as call:
        try:
            data = orjson.loads(await call.response.read())
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as exc:
            raise ApiError(502, f"the engine of '{model.name}' failed: {exc}") from None
    end = time.monotonic_ns()
    choices = data.get("choices") if isinstance(data, dict) else None
    if not choices or not isinstance(choices[0], dict):
        raise ApiError(502, f"the engine of '{model.name}' sent a reply without choices")
    choice = choices[0]
    message = choice.get("message") or {}
    text = (message.get("content") if chat or "message" in choice else choice.get("text")) or ""
    final = _chunk(display_name(model.name), chat, text, done=True)
    calls = [
        _tool_call_to_ollama({"id": tc.get("id", ""), **(tc.get("function") or {})}, i)
        for i, tc in enumerate(message.get("tool_calls") or ())
    ]
    if calls and chat:
        final["message"]["tool_calls"] = calls
    usage = data.get("usage") or {}
    timings = data.get("timings") or {}  # llama-server's own split of the engine's time
    engine_ns = end - call.sent_ns
    final.update(
        _stats(
            choice.get("finish_reason") or "stop",
            total=end - started,
            queued=call.queued_ns,
            prompt_tokens=usage.get("prompt_tokens"),
            prompt_ns=int(timings["prompt_ms"] * 1e6) if "prompt_ms" in timings else None,
            eval_tokens=usage.get("completion_tokens") or 0,
            # Without the engine's timings, eval_duration is the engine's whole time (prompt
            # included): tokens per second come out slightly low, never high.
            eval_ns=int(timings["predicted_ms"] * 1e6) if "predicted_ms" in timings else engine_ns,
        )
    )
    return json_response(final)


def _chunk(name: str, chat: bool, text: str, *, done: bool) -> dict[str, Any]:
    chunk: dict[str, Any] = {"model": name, "created_at": now_rfc3339()}
    if chat:
        chunk["message"] = {"role": "assistant", "content": text}
    else:
        chunk["response"] = text
    chunk["done"] = done
    return chunk


def _stats(
    finish: str,
    *,
    total: int,
    queued: int,
    prompt_tokens: int | None,
    prompt_ns: int | None,
    eval_tokens: int,
    eval_ns: int,
) -> dict[str, Any]:
    """Ollama's closing statistics, in nanoseconds; unknown values are left out."""
    stats: dict[str, Any] = {
        "done_reason": "length" if finish == "length" else "stop",
        "total_duration": total,
        "load_duration": queued,  # waiting for a free replica; models are preloaded
    }
    if prompt_tokens is not None:
        stats["prompt_eval_count"] = int(prompt_tokens)
    if prompt_ns is not None:
        stats["prompt_eval_duration"] = prompt_ns
    stats["eval_count"] = int(eval_tokens)
    stats["eval_duration"] = max(eval_ns, 0)
    return stats


def _merge_tool_call(calls: dict[int, dict[str, Any]], delta: dict[str, Any]) -> None:
    """OpenAI streams a tool call in pieces (name first, arguments in fragments)."""
    slot = calls.setdefault(int(delta.get("index", 0)), {"id": "", "name": "", "arguments": ""})
    slot["id"] = delta.get("id") or slot["id"]
    fn = delta.get("function") or {}
    slot["name"] += fn.get("name") or ""
    slot["arguments"] += fn.get("arguments") or ""


def _tool_call_to_ollama(call: dict[str, Any], index: int) -> dict[str, Any]:
    try:
        args = orjson.loads(call["arguments"]) if call["arguments"] else {}
    except orjson.JSONDecodeError:
        args = {"_raw": call["arguments"]}  # the model wrote invalid JSON; keep it visible
    return {"id": call["id"], "function": {"index": index, "name": call["name"], "arguments": args}}
