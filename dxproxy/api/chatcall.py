"""One chat completion on the engine, for the dialects DX translates rather than relays
(Anthropic's /v1/messages, OpenAI's /v1/responses): the whole reply, or its pieces as they
stream, with the engine's token counts."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from dxproxy.api.engine import call_engine, stream_cut
from dxproxy.api.sse import EngineStreamError, sse_events
from dxproxy.config import ModelConfig
from dxproxy.http.errors import ApiError
from dxproxy.http.usage import report_usage


@dataclass(slots=True)
class Completion:
    text: str = ""
    finish: str = "stop"  # stop, length, tool_calls
    # OpenAI tool calls, arguments as JSON strings: {"id", "name", "arguments"}
    tool_calls: list[dict[str, str]] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(slots=True)
class Piece:
    """A streamed piece: text, or a tool call's start (id and name) or argument fragment."""

    text: str = ""
    tool_index: int | None = None
    tool_id: str = ""
    tool_name: str = ""
    tool_arguments: str = ""


async def complete(
    request: web.Request, model: ModelConfig, payload: dict[str, Any], started: int
) -> Completion:
    payload = {**payload, "stream": False}
    async with call_engine(request, model, "/v1/chat/completions", payload, started) as call:
        try:
            data = orjson.loads(await call.response.read())
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as exc:
            raise ApiError(502, f"the engine of '{model.name}' failed: {exc}") from None
    choices = data.get("choices") if isinstance(data, dict) else None
    if not choices or not isinstance(choices[0], dict):
        raise ApiError(502, f"the engine of '{model.name}' sent a reply without choices")
    message = choices[0].get("message") or {}
    out = Completion(
        text=message.get("content") or "", finish=choices[0].get("finish_reason") or "stop"
    )
    for tc in message.get("tool_calls") or ():
        fn = tc.get("function") or {}
        out.tool_calls.append(
            {
                "id": tc.get("id") or f"call_{len(out.tool_calls)}",
                "name": fn.get("name") or "",
                "arguments": fn.get("arguments") or "{}",
            }
        )
    usage = data.get("usage") or {}
    out.prompt_tokens = int(usage.get("prompt_tokens") or 0)
    out.completion_tokens = int(usage.get("completion_tokens") or 0)
    report_usage(request, out.prompt_tokens, out.completion_tokens)
    return out


async def stream(
    request: web.Request,
    model: ModelConfig,
    payload: dict[str, Any],
    started: int,
    result: Completion,
) -> AsyncIterator[Piece]:
    """The reply's pieces as the engine streams them; `result` holds the finish reason and
    the token counts once the stream has ended. An engine failure raises EngineStreamError
    (after the first piece, the caller reports it in its own dialect)."""
    payload = {**payload, "stream": True, "stream_options": {"include_usage": True}}
    pieces = 0
    async with call_engine(request, model, "/v1/chat/completions", payload, started) as call:
        events = sse_events(call.response)
        while True:
            try:
                event = await anext(events)
            except StopAsyncIteration:
                break
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise EngineStreamError(stream_cut(model, exc)) from None
            usage = event.get("usage")
            if usage:
                result.prompt_tokens = int(usage.get("prompt_tokens") or 0)
                result.completion_tokens = int(usage.get("completion_tokens") or 0)
            for choice in event.get("choices") or ():
                delta = choice.get("delta") or {}
                if choice.get("finish_reason"):
                    result.finish = choice["finish_reason"]
                if delta.get("content"):
                    pieces += 1
                    result.text += delta["content"]
                    yield Piece(text=delta["content"])
                for tc in delta.get("tool_calls") or ():
                    fn = tc.get("function") or {}
                    yield Piece(
                        tool_index=int(tc.get("index", 0)),
                        tool_id=tc.get("id") or "",
                        tool_name=fn.get("name") or "",
                        tool_arguments=fn.get("arguments") or "",
                    )
    result.completion_tokens = result.completion_tokens or pieces
    report_usage(request, result.prompt_tokens, result.completion_tokens)


def new_id(prefix: str) -> str:
    return f"{prefix}{time.time_ns():x}"


def fit_template(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages as every chat template takes them: one system prompt, first (system and
    developer messages later on are appended to it: Claude Code and Codex send them
    mid-conversation, and Qwen's or Gemma's templates refuse a system message there), and
    adjacent user (or assistant) messages as one, as Anthropic's API does (Gemma's and
    Mistral's templates insist that user and assistant alternate)."""
    system = [m["content"] for m in messages if m["role"] == "system"]
    out: list[dict[str, Any]] = []
    if system:
        texts = [c if isinstance(c, str) else _parts_text(c) for c in system]
        out.append({"role": "system", "content": "\n\n".join(t for t in texts if t)})
    for m in messages:
        if m["role"] == "system":
            continue
        prev = out[-1] if out else None
        if (
            prev is not None
            and prev["role"] == m["role"]
            and m["role"] in ("user", "assistant")
            and "tool_calls" not in prev
        ):
            merged = dict(prev)
            a, b = prev["content"], m["content"]
            if isinstance(a, str) and isinstance(b, str):
                merged["content"] = f"{a}\n\n{b}" if a and b else a or b
            else:
                merged["content"] = _as_parts(a) + _as_parts(b)
            if "tool_calls" in m:
                merged["tool_calls"] = m["tool_calls"]
            out[-1] = merged
        else:
            out.append(m)
    return out


def _parts_text(content: list[dict[str, Any]]) -> str:
    return "\n".join(str(p.get("text", "")) for p in content if p.get("type") == "text")


def _as_parts(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, list):
        return content
    return [{"type": "text", "text": content}] if content else []
