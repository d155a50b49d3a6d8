"""An Ollama chat or generate request, as the engine's OpenAI-style request.

Every field is either mapped to what the engine does with it, or refused with a 400 that says
why: nothing a client sends is silently dropped (issue 7). The exceptions are the ones Ollama
itself serves anyway, logged once (dxproxy/api/notes.py): options it does not know or the
engine cannot apply, and a `num_ctx` above the served context (capped to it, as Ollama caps
it to what it can hold); and defaults that change nothing (`truncate`/`shift` true).
"""

from __future__ import annotations

from typing import Any

import msgspec
import orjson

from dxproxy.api.notes import note
from dxproxy.api.schemas import Generation, Message, Options, Tool
from dxproxy.config import ModelConfig, parse_duration
from dxproxy.http.errors import ApiError
from dxproxy.models.catalog import ModelInfo, display_name, has_vision, no_tools_advice

ROLES = frozenset({"system", "user", "assistant", "tool"})

# Ollama option -> the engine's request field, per engine kind (None: that engine has none).
# Integer options arrive as JSON numbers and are truncated, as Ollama does.
_SAME: dict[str, str | None] = {
    "llama-server": "",
    "llama-cpp-python": "",
    "vllm": "",
}  # same name everywhere
OPTION_FIELDS: dict[str, dict[str, str | None]] = {
    "temperature": _SAME,
    "top_p": _SAME,
    "top_k": _SAME,
    "min_p": _SAME,
    "presence_penalty": _SAME,
    "frequency_penalty": _SAME,
    "seed": _SAME,
    "repeat_penalty": {
        "llama-server": "",
        "llama-cpp-python": "",
        "vllm": "repetition_penalty",
    },
    "typical_p": {"llama-server": "", "llama-cpp-python": None, "vllm": None},
    "repeat_last_n": {"llama-server": "", "llama-cpp-python": None, "vllm": None},
}
_INTEGER_OPTIONS = frozenset({"top_k", "seed", "repeat_last_n"})
# Values that change nothing: accepted even where the engine has no such setting.
_NEUTRAL = {"typical_p": 1.0, "repeat_last_n": 64, "repeat_penalty": 1.0}


def sampling(req: Generation, model: ModelConfig, info: ModelInfo | None) -> dict[str, Any]:
    """The engine request's fields for everything but the prompt: options, format, think,
    logprobs. Checks the fields that have no engine equivalent."""
    kind = model.kind
    name = display_name(model.name)
    payload: dict[str, Any] = {"model": model.name}
    if req.options is not None:
        _options(req.options, payload, model, kind)
    fmt = req.format
    if fmt == "json":
        payload["response_format"] = {"type": "json_object"}
    elif isinstance(fmt, dict):
        fmt = jsonable(fmt)
        # Grammar-constrained output on every engine: llama.cpp turns the schema into a
        # grammar, vLLM into guided decoding. llama-cpp-python knows only its own spelling.
        if kind == "llama-cpp-python":
            payload["response_format"] = {"type": "json_object", "schema": fmt}
        else:
            payload["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "response", "schema": fmt, "strict": True},
            }
    elif fmt not in (None, ""):
        raise ApiError(
            400,
            f'invalid format: {_json(fmt)}; expected "json" or a valid JSON Schema object',
            param="format",
        )
    caps = info.capabilities if info else ()
    if req.think is not None and req.think is not False:
        if "thinking" not in caps:
            raise ApiError(400, f'"{name}" does not support thinking', param="think")
        if kind == "llama-cpp-python":
            raise ApiError(
                400, "think: the llama-cpp-python engine cannot switch thinking; use llamacpp"
            )
        kwargs: dict[str, Any] = {"enable_thinking": True}
        if isinstance(req.think, str):  # a level: gpt-oss style templates read it
            kwargs["reasoning_effort"] = req.think
            if kind == "vllm":
                payload["reasoning_effort"] = "high" if req.think == "max" else req.think
        payload["chat_template_kwargs"] = kwargs
    elif req.think is False and "thinking" in caps and kind != "llama-cpp-python":
        payload["chat_template_kwargs"] = {"enable_thinking": False}
    if req.top_logprobs is not None:
        if not 0 <= req.top_logprobs <= 20:
            raise ApiError(400, "top_logprobs must be between 0 and 20", param="top_logprobs")
        if req.top_logprobs:
            payload["logprobs"] = True
            payload["top_logprobs"] = req.top_logprobs
    if req.logprobs:
        payload["logprobs"] = True
    if req.debug_render_only:
        raise ApiError(
            400,
            "_debug_render_only is not supported: the engine applies the model's chat "
            "template itself (see /api/show's template)",
        )
    # truncate: true (Ollama's default) lets a chat longer than the context lose its oldest
    # turns (dxproxy/api/fit.py); false asks for it whole or refused, as Ollama does (the
    # chat handler notes it). shift: DX's engines never shift the context, which is what
    # `false` asks; true is accepted (a reply stops at the context's end instead).
    keep_alive = req.keep_alive
    if keep_alive is not None and parse_duration(keep_alive) is None:
        raise ApiError(
            400,
            f"keep_alive: expected seconds or a duration like '5m', got {keep_alive!r}",
            param="keep_alive",
        )
    return payload


def _options(opts: Options, payload: dict[str, Any], model: ModelConfig, kind: str) -> None:
    for key, fields in OPTION_FIELDS.items():
        value = getattr(opts, key)
        if value is None:
            continue
        target = fields[kind]
        if target is None:
            if value != _NEUTRAL.get(key):
                # Ollama logs and ignores an option it cannot apply; so does DX.
                note(
                    "ollama",
                    f"options.{key} is not supported by the {kind} engine of "
                    f"'{display_name(model.name)}': ignored (engine llamacpp supports it)",
                )
            continue
        payload[target or key] = int(value) if key in _INTEGER_OPTIONS else value
    if opts.num_predict is not None and opts.num_predict >= 0:  # -1: no limit, -2: fill
        payload["max_tokens"] = int(opts.num_predict)
    if opts.stop is not None:
        payload["stop"] = [opts.stop] if isinstance(opts.stop, str) else opts.stop
    if opts.num_keep is not None and kind == "llama-server":
        payload["n_keep"] = int(opts.num_keep)
    if opts.num_ctx is not None and int(opts.num_ctx) > model.context:
        # Ollama caps num_ctx to what it can hold and serves the request; only a prompt that
        # does not fit the context is refused (by the engine, with both sizes).
        note(
            "ollama",
            f"options.num_ctx {int(opts.num_ctx)} is more than the context DX serves for "
            f"'{display_name(model.name)}': served with {model.context} tokens (raise "
            f"models.{model.name}.context in the DX config for more)",
        )
    # num_batch, num_gpu, main_gpu, num_thread, use_mmap: load-time speed settings of the
    # engine, not of one request; DX sets them per model (models.<name>.args). They change
    # no output, so a request carrying them is served as is.


def chat_messages(messages: list[Message], model: ModelConfig) -> list[dict[str, Any]]:
    """Ollama messages as OpenAI messages: images as content parts, tool-call arguments as
    JSON strings, thinking as reasoning_content, and a tool_call_id on every tool result.

    Ollama's tool results may carry no id (the official Python client drops it, LangChain's
    agent loop sends none), but OpenAI engines require one: it is taken from the preceding
    assistant turn's call of the same name (tool_name), else its first unanswered call.
    """
    out: list[dict[str, Any]] = []
    unanswered: list[tuple[str, str]] = []  # (id, name) of the last assistant turn's calls
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        role = m.role.lower()
        if role not in ROLES:
            raise ApiError(
                400,
                f"{where}.role: expected one of assistant, system, tool, user; got {m.role!r}",
                param="messages",
            )
        content = m.content or ""
        msg: dict[str, Any] = {"role": role, "content": content}
        if m.images:
            check_vision(model)
            msg["content"] = [{"type": "text", "text": content}] + [
                {"type": "image_url", "image_url": {"url": _data_url(img)}} for img in m.images
            ]
        if m.thinking and role == "assistant":
            msg["reasoning_content"] = m.thinking
        if m.tool_calls:
            calls = []
            unanswered = []
            for n, call in enumerate(m.tool_calls):
                fn = call.function
                if not fn.name:
                    raise ApiError(
                        400, f"{where}.tool_calls[{n}].function.name: missing", param="messages"
                    )
                call_id = call.id or f"call_{i}_{n}"
                args = fn.arguments if fn.arguments is not None else {}
                calls.append(
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {
                            "name": fn.name,
                            "arguments": args if isinstance(args, str) else _json(args),
                        },
                    }
                )
                unanswered.append((call_id, fn.name))
            msg["tool_calls"] = calls
        if role == "tool":
            call_id = m.tool_call_id or ""
            if not call_id:
                named = [u for u in unanswered if u[1] == m.tool_name] if m.tool_name else []
                call_id = (named or unanswered or [(f"call_{i}", "")])[0][0]
            unanswered = [u for u in unanswered if u[0] != call_id]
            msg["tool_call_id"] = call_id
            if m.tool_name:
                msg["name"] = m.tool_name
        out.append(msg)
    return out


def tools_payload(
    tools: list[Tool], model: ModelConfig, info: ModelInfo | None
) -> list[dict[str, Any]]:
    if info is not None and "tools" not in info.capabilities:
        # The engine would drop them without a word: say so instead, as Ollama does.
        raise ApiError(
            400,
            f"{display_name(model.name)} does not support tools: {no_tools_advice(model)}",
            param="tools",
        )
    out = []
    for t in tools:
        fn: dict[str, Any] = {"name": t.function.name}
        if t.function.description is not None:
            fn["description"] = t.function.description
        fn["parameters"] = jsonable(t.function.parameters or {"type": "object", "properties": {}})
        out.append({"type": "function", "function": fn})
    return out


def check_vision(model: ModelConfig) -> None:
    # Without a projector the engine would fail on the image with an internal error.
    if not has_vision(model):
        raise ApiError(
            400,
            f"{display_name(model.name)} does not support images: DX starts llama.cpp models "
            "without a vision projector unless the model's config names one",
        )


def _data_url(image: str) -> str:
    if image.startswith("data:"):
        return image
    # Ollama sends plain base64; the engines want a data URL. The type is sniffed from the
    # first bytes (PNG, GIF, WebP), JPEG otherwise: engines decode by content anyway.
    kind = {"iVBOR": "png", "R0lGO": "gif", "UklGR": "webp"}.get(image[:5], "jpeg")
    return f"data:image/{kind};base64,{image}"


def _json(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def jsonable(value: Any) -> Any:
    """`value` as orjson (and so the engine request) can encode it: JSON integers past 64
    bits, which msgspec decodes exactly, become floats as orjson would read them."""
    try:
        orjson.dumps(value)
    except TypeError:
        return orjson.loads(msgspec.json.encode(value))
    return value
