"""A chat request made to fit its model's context before it goes to the engine: every chat
path (Ollama /api/chat and /api/generate, OpenAI /v1/chat/completions, Anthropic
/v1/messages, Responses) reaches the engine through `call_engine`, which calls `fit_chat`
on the replica it holds.

Counting costs engine round trips (llama-server: /apply-template then /tokenize; vLLM: its
/tokenize of the messages), so it happens only when the request might not fit. The cheap
test is sound for llama.cpp's and vLLM's tokenizers: each token stands for at least one
byte of the rendered prompt (byte-level BPE and SentencePiece with byte fallback alike), so
a prompt is at most as many tokens as the template's output has bytes, and that is at most
the messages' and tools' JSON plus what the template adds around them (`TEMPLATE_SLACK`).
A chat under that bound is sent as it is, without a count.

The reply keeps room: the request's own max_tokens when it sets one, else an eighth of the
context (1024 tokens of the embedded default's 8192), never more than half of it. Ollama
keeps none (its runner then shifts the context); llama-server shifts nothing by default, so
a prompt that filled the context would leave the reply no token at all.
"""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from dxproxy.api.trim import TooLong, Trimmed, trim
from dxproxy.config import ModelConfig
from dxproxy.http.errors import ApiError
from dxproxy.http.state import TOOLS_DROPPED, TRIMMED, UPSTREAM
from dxproxy.models.catalog import display_name
from dxproxy.routing.router import Unavailable
from supervisors import Replica

log = logging.getLogger("dx.api")

# Bytes a chat template adds beyond the JSON of the messages and tools: role markers (the
# JSON's own keys and quotes already outweigh them) and a preamble, e.g. a default system
# prompt or the instructions that introduce the tools (a few hundred bytes in the templates
# DX ships and those of Qwen, Llama 3 and SmolLM2).
TEMPLATE_SLACK = 1024
REPLY_SHARE = 8  # without max_tokens, 1/8 of the context is kept for the reply
# What of a request the template sees (the rest changes no prompt).
_TEMPLATE_KEYS = ("messages", "tools", "chat_template_kwargs")
# What goes with the tools when they do not fit (a tool_choice without tools is refused).
_TOOL_KEYS = ("tools", "tool_choice", "parallel_tool_calls")


def reply_room(model: ModelConfig, payload: dict[str, Any]) -> int:
    asked = payload.get("max_completion_tokens") or payload.get("max_tokens")
    room = asked if isinstance(asked, int) and asked > 0 else model.context // REPLY_SHARE
    return min(room, model.context // 2)


def might_overflow(model: ModelConfig, payload: dict[str, Any]) -> bool:
    """False when the chat surely fits (no count needed); True when it might not, on an
    engine that can count it."""
    if model.kind not in ("llama-server", "vllm"):
        return False  # llama-cpp-python has no template endpoint: the engine says
    messages = payload.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        return False  # the engine refuses it in its words
    size = len(orjson.dumps(messages)) + len(orjson.dumps(payload.get("tools") or []))
    return size + TEMPLATE_SLACK > model.context - reply_room(model, payload)


async def fit_chat(
    request: web.Request, model: ModelConfig, replica: Replica, payload: dict[str, Any]
) -> dict[str, Any]:
    """`payload`, its oldest turns dropped when they do not fit the context (the request
    notes how many, for the X-DX-Trimmed-* headers and the log). Raises a 400 giving the
    sizes when the latest message does not fit by itself. A chat the engine cannot count
    (an image, an engine without the endpoints) is returned as it is."""
    if any(_has_image(m) for m in payload["messages"]):
        return payload  # its tokens are the projector's, not the tokenizer's
    room = reply_room(model, payload)
    budget = model.context - room
    tools = payload.get("tools")
    try:
        try:
            fitted: Trimmed = await trim(
                payload["messages"], _Counter(request, model, replica, payload).count, budget
            )
        except TooLong:
            if not tools:
                raise
            # A client's tool list can fill a small model's context by itself (Open WebUI's
            # 36 built-in tools take about 7,000 of SmolLM2's 8192 tokens): rather than refuse
            # the chat, it is served without them, and the model answers in text.
            payload = {k: v for k, v in payload.items() if k not in _TOOL_KEYS}
            fitted = await trim(
                payload["messages"], _Counter(request, model, replica, payload).count, budget
            )
            request[TOOLS_DROPPED] = len(tools) if isinstance(tools, list) else 1
            log.info(
                "%s: the request's %d tools do not fit the context of %d tokens with the "
                "latest message: sent without them (X-DX-Dropped-Tools)",
                model.name, request[TOOLS_DROPPED], model.context,
            )  # fmt: skip
    except TooLong as exc:
        raise ApiError(
            400,
            f"the latest message is too long for {display_name(model.name)}: with the system "
            f"prompt{' (and without the tools)' if tools else ''} it takes {exc.needed} "
            f"tokens, and the model's context of {model.context} tokens holds {budget} "
            f"besides the {room} kept for the reply. Shorten the message (or lower "
            f"max_tokens), or serve the model with a larger context "
            f"(models.{model.name}.context in the DX config)",
            param="messages",
        ) from None
    except _CannotCount as exc:
        log.info("%s: chat not trimmed: the engine could not count it (%s)", model.name, exc)
        return payload
    if not fitted.dropped_messages:
        return payload  # (without its tools, when they did not fit)
    request[TRIMMED] = (fitted.dropped_tokens, fitted.dropped_messages)
    log.info(
        "%s: chat trimmed to fit the context: dropped the %d oldest messages (%d tokens), "
        "kept %d messages (%d tokens) of a %d-token context with %d for the reply",
        model.name, fitted.dropped_messages, fitted.dropped_tokens, len(fitted.messages),
        fitted.prompt_tokens, model.context, room,
    )  # fmt: skip
    return {**payload, "messages": fitted.messages}


class _CannotCount(Exception):
    pass


class _Counter:
    """The engine's own count of a chat's prompt tokens, on the replica the request holds
    (a count needs no slot of its own, and waits in no queue)."""

    def __init__(
        self, request: web.Request, model: ModelConfig, replica: Replica, payload: dict[str, Any]
    ) -> None:
        self.upstream = request.app[UPSTREAM]
        self.model = model
        self.replica = replica
        self.base = {k: payload[k] for k in _TEMPLATE_KEYS if k in payload}
        self.base["model"] = model.name

    async def count(self, messages: list[dict[str, Any]]) -> int:
        body = {**self.base, "messages": messages}
        if self.model.kind == "vllm":
            count = (await self._post("/tokenize", body)).get("count")
            if not isinstance(count, int):
                raise _CannotCount("vLLM's /tokenize sent no count")
            return count
        prompt = (await self._post("/apply-template", body)).get("prompt")
        if not isinstance(prompt, str):
            raise _CannotCount("llama-server's /apply-template sent no prompt")
        tokens = (await self._post("/tokenize", {"content": prompt, "add_special": True})).get(
            "tokens"
        )
        if not isinstance(tokens, list):
            raise _CannotCount("llama-server's /tokenize sent no tokens")
        return len(tokens)

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            resp = await self.upstream.post(
                self.replica, self.model.name, path, orjson.dumps(body), stream=False
            )
            try:
                data = await resp.read()
            finally:
                resp.release()
        except (Unavailable, aiohttp.ClientError, TimeoutError) as exc:
            raise _CannotCount(f"{path}: {exc}") from None
        if resp.status != 200:
            raise _CannotCount(f"{path}: HTTP {resp.status} {data[:200].decode(errors='replace')}")
        try:
            out = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise _CannotCount(f"{path}: not JSON") from None
        if not isinstance(out, dict):
            raise _CannotCount(f"{path}: not a JSON object")
        return out


def _has_image(message: dict[str, Any]) -> bool:
    content = message.get("content")
    return isinstance(content, list) and any(
        isinstance(p, dict) and p.get("type") not in ("text", None) for p in content
    )
