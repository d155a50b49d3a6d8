"""The engine's reply as Ollama's: its SSE stream turned into NDJSON, chunk by chunk, or its
one-body reply turned into one object.

Ollama's closing statistics come from the engine's own counts where it gives them: `usage`
(prompt and completion tokens; asked for in streams with `stream_options.include_usage`) and
llama-server's `timings` (prompt_ms, predicted_ms). What an engine does not report is
measured by DX: the time to the first token stands for prompt evaluation, and the tokens
streamed are counted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from dxproxy.api.engine import call_engine, stream_cut
from dxproxy.api.sse import EngineStreamError, sse_batches
from dxproxy.config import ModelConfig
from dxproxy.http.early import EarlyStream
from dxproxy.http.errors import ApiError, json_response
from dxproxy.http.usage import report_usage
from dxproxy.models.catalog import display_name

NDJSON = "application/x-ndjson"


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


@dataclass(slots=True)
class Reply:
    """What one generation produced, gathered as it streams (or from one body)."""

    chat: bool
    name: str  # the model as Ollama clients see it (with a tag)
    parts: list[str] = field(default_factory=list)
    thinking: list[str] = field(default_factory=list)
    calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    finish: str = "stop"
    usage: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, Any] = field(default_factory=dict)
    chunks: int = 0  # content chunks streamed (one token each on llama.cpp)
    first_ns: int = 0
    last_ns: int = 0

    def chunk(self, text: str, *, done: bool, thinking: str = "", at: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.name, "created_at": at or now_rfc3339()}
        if self.chat:
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if thinking:
                message["thinking"] = thinking
            out["message"] = message
        else:
            out["response"] = text
            if thinking:
                out["thinking"] = thinking
        out["done"] = done
        return out

    def tool_calls(self) -> list[dict[str, Any]]:
        return [_tool_call_to_ollama(self.calls[k], k) for k in sorted(self.calls)]

    def stats(self, *, total: int, queued: int, sent_ns: int, end: int) -> dict[str, Any]:
        """Ollama's closing statistics, in nanoseconds; unknown values are left out."""
        t = self.timings
        prompt_tokens = self.usage.get("prompt_tokens")
        if prompt_tokens is None and "prompt_n" in t:
            prompt_tokens = t["prompt_n"] + t.get("cache_n", 0)
        eval_tokens = self.usage.get("completion_tokens", t.get("predicted_n", self.chunks))
        first = self.first_ns or end
        last = self.last_ns or end
        stats: dict[str, Any] = {
            "done_reason": "length" if self.finish == "length" else "stop",
            "total_duration": total,
            "load_duration": queued,  # waiting for a free replica; models are preloaded
        }
        if prompt_tokens is not None:
            stats["prompt_eval_count"] = int(prompt_tokens)
        if "prompt_ms" in t:
            stats["prompt_eval_duration"] = int(t["prompt_ms"] * 1e6)
        elif sent_ns:
            stats["prompt_eval_duration"] = max(first - sent_ns, 0)  # time to first token
        stats["eval_count"] = int(eval_tokens or 0)
        if "predicted_ms" in t:
            stats["eval_duration"] = int(t["predicted_ms"] * 1e6)
        else:
            stats["eval_duration"] = max(last - first, 0)
        return stats

    def take(self, event: dict[str, Any]) -> tuple[str, str, list[dict[str, Any]] | None]:
        """One SSE event: (content, thinking, logprobs) to stream now; the rest is kept."""
        if event.get("usage"):
            self.usage = event["usage"]
        if event.get("timings"):
            self.timings = event["timings"]
        text = thinking = ""
        logprobs = None
        for choice in event.get("choices") or ():
            delta = choice.get("delta")
            if delta is not None:  # chat completions stream deltas
                text = delta.get("content") or ""
                thinking = delta.get("reasoning_content") or delta.get("reasoning") or ""
                for tc in delta.get("tool_calls") or ():
                    _merge_tool_call(self.calls, tc)
            else:  # raw completions stream text
                text = choice.get("text") or ""
            if choice.get("logprobs"):
                logprobs = _logprobs(choice["logprobs"])
                self.logprobs += logprobs
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        if text or thinking:
            self.last_ns = time.monotonic_ns()
            self.first_ns = self.first_ns or self.last_ns
            if text:
                self.parts.append(text)
                self.chunks += 1
            if thinking:
                self.thinking.append(thinking)
        return text, thinking, logprobs


async def relay_stream(
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
    reply = Reply(chat, display_name(model.name))
    payload["stream"] = True
    payload["stream_options"] = {"include_usage": True}  # the engine's token counts
    early = None if collect else loading_stream(request, reply)
    async with call_engine(request, model, path, payload, started, early) as call:
        out = None if early is None else await early.response()
        batches = sse_batches(call.response)
        while True:
            try:
                batch = await anext(batches)
            except StopAsyncIteration:
                break
            except (EngineStreamError, aiohttp.ClientError, TimeoutError) as exc:
                if out is None:
                    raise ApiError(502, stream_cut(model, exc)) from None
                # Headers are sent: Ollama's way is one last line with the error, no done.
                await out.write(orjson.dumps({"error": stream_cut(model, exc)}) + b"\n")
                return out
            # One line per token, and one write per batch of tokens that arrived together.
            lines = []
            at = now_rfc3339()
            for event in batch:
                text, thinking, logprobs = reply.take(event)
                if out is not None and (text or thinking):
                    chunk = reply.chunk(text, done=False, thinking=thinking, at=at)
                    if logprobs:
                        chunk["logprobs"] = logprobs
                    lines.append(orjson.dumps(chunk))
            if lines and out is not None:
                lines.append(b"")
                await out.write(b"\n".join(lines))

        calls = reply.tool_calls()
        if calls and out is not None:
            tool_chunk = reply.chunk("", done=False)
            if chat:
                tool_chunk["message"]["tool_calls"] = calls
            else:
                tool_chunk["tool_calls"] = calls
            await out.write(orjson.dumps(tool_chunk) + b"\n")
        end = time.monotonic_ns()
        if out is None:
            final = reply.chunk("".join(reply.parts), done=True, thinking="".join(reply.thinking))
            _attach(final, reply, calls, chat)
        else:
            final = reply.chunk("", done=True)
        final.update(reply.stats(total=end - started, queued=call.queued_ns,
                                 sent_ns=call.sent_ns, end=end))  # fmt: skip
        report_usage(request, final.get("prompt_eval_count"), final["eval_count"])
        if out is None:
            return json_response(final)
        await out.write(orjson.dumps(final) + b"\n")
        return out


def loading_stream(request: web.Request, reply: Reply) -> EarlyStream:
    """The NDJSON reply, started early while the model loads (dxproxy/http/early.py)."""

    def notice(seconds: float) -> bytes:
        chunk = reply.chunk("", done=False)
        chunk["status"] = f"loading model ({seconds:.0f} s)"  # clients ignore what they do not know
        return orjson.dumps(chunk) + b"\n"

    def error(status: int, message: str) -> bytes:
        return orjson.dumps({"error": message}) + b"\n"

    return EarlyStream(request, NDJSON, notice, error)


async def reply_once(
    request: web.Request,
    model: ModelConfig,
    path: str,
    payload: dict[str, Any],
    started: int,
    *,
    chat: bool,
) -> web.Response:
    """One engine reply as one Ollama object, from one engine body: no per-token streaming
    cost, and the engine's exact token counts."""
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
    reply = Reply(chat, display_name(model.name))
    message = choice.get("message")
    if message is not None:
        text = message.get("content") or ""
        thinking = message.get("reasoning_content") or message.get("reasoning") or ""
        for i, tc in enumerate(message.get("tool_calls") or ()):
            fn = tc.get("function") or {}
            reply.calls[i] = {"id": tc.get("id") or "", "name": fn.get("name") or "",
                              "arguments": fn.get("arguments") or ""}  # fmt: skip
    else:
        text, thinking = choice.get("text") or "", ""
    if choice.get("logprobs"):
        reply.logprobs = _logprobs(choice["logprobs"])
    reply.finish = choice.get("finish_reason") or "stop"
    reply.usage = data.get("usage") or {}
    reply.timings = data.get("timings") or {}  # llama-server's own split of its time
    final = reply.chunk(text, done=True, thinking=thinking)
    _attach(final, reply, reply.tool_calls(), chat)
    # Without the engine's timings, eval_duration is the engine's whole time (prompt
    # included): tokens per second come out slightly low, never high.
    reply.first_ns, reply.last_ns = call.sent_ns, end
    final.update(reply.stats(total=end - started, queued=call.queued_ns, sent_ns=0, end=end))
    report_usage(request, final.get("prompt_eval_count"), final["eval_count"])
    return json_response(final)


def _attach(final: dict[str, Any], reply: Reply, calls: list[dict[str, Any]], chat: bool) -> None:
    if calls:
        if chat:
            final["message"]["tool_calls"] = calls
        else:
            final["tool_calls"] = calls
    if reply.logprobs:
        final["logprobs"] = reply.logprobs


def _merge_tool_call(calls: dict[int, dict[str, Any]], delta: dict[str, Any]) -> None:
    """OpenAI streams a tool call in pieces (name first, arguments in fragments)."""
    slot = calls.setdefault(int(delta.get("index", 0)), {"id": "", "name": "", "arguments": ""})
    slot["id"] = delta.get("id") or slot["id"]
    fn = delta.get("function") or {}
    slot["name"] += fn.get("name") or ""
    slot["arguments"] += fn.get("arguments") or ""


def _tool_call_to_ollama(call: dict[str, Any], index: int) -> dict[str, Any]:
    raw = call["arguments"]
    try:
        args = orjson.loads(raw) if isinstance(raw, str) and raw else raw or {}
    except orjson.JSONDecodeError:
        args = {"_raw": raw}  # the model wrote invalid JSON; keep it visible
    return {
        "id": call["id"] or f"call_{index}",
        "function": {"index": index, "name": call["name"], "arguments": args},
    }


def _logprobs(data: Any) -> list[dict[str, Any]]:
    """OpenAI's chat logprobs (`content: [{token, logprob, bytes, top_logprobs}]`) in
    Ollama's shape, which is the same list."""
    if not isinstance(data, dict) or not isinstance(data.get("content"), list):
        return []
    out = []
    for item in data["content"]:
        if not isinstance(item, dict):
            continue
        entry = {k: item[k] for k in ("token", "logprob", "bytes") if k in item}
        tops = item.get("top_logprobs")
        if isinstance(tops, list):
            entry["top_logprobs"] = [
                {k: t[k] for k in ("token", "logprob", "bytes") if k in t}
                for t in tops
                if isinstance(t, dict)
            ]
        out.append(entry)
    return out
