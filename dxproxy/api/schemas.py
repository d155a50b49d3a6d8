"""Every request body DX accepts, described once as typed msgspec schemas.

msgspec, not pydantic: decoding and validating a typical chat body costs 1.3 us with msgspec
against 6.4 us with pydantic (strict), and msgspec is faster than orjson.loads alone
(bench/schema_decode.py). Fields are typed as loosely as the dialect allows (Ollama accepts a
float for an integer option and truncates it), unknown fields are ignored as both Ollama and
OpenAI servers do, and a wrong type becomes a 400 that names the field:
``options.top_k: expected a number, got a string``.

Ollama bodies are decoded from bytes straight into these structs. OpenAI bodies are relayed to
the engine as they came, so they are decoded to a dict and only *checked* against a schema.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, TypeVar

import msgspec

from dxproxy.http.errors import ApiError

T = TypeVar("T")

# msgspec decodes integers of any size, the engines (and orjson) only 64-bit ones.
Int = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
# Ollama decodes JSON numbers into Go ints by truncation, so integer options accept floats.
Number = Int | float
Think = bool | Literal["low", "medium", "high", "max"]
KeepAlive = int | float | str


# -- Ollama --------------------------------------------------------------------------------


class Function(msgspec.Struct):
    name: str = ""
    arguments: dict[str, Any] | str | None = None  # an object in Ollama; OpenAI's string too
    index: Int | None = None
    description: str | None = None


class ToolCall(msgspec.Struct):
    function: Function
    id: str | None = None
    type: str | None = None


class Message(msgspec.Struct):
    role: str
    content: str | None = None
    thinking: str | None = None
    images: list[str] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None


class ToolFunction(msgspec.Struct):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(msgspec.Struct):
    function: ToolFunction
    type: str = "function"


class Options(msgspec.Struct):
    """Ollama's `options`. Unknown keys (and the ones Ollama itself dropped: mirostat,
    penalize_newline, ...) are ignored, as Ollama does."""

    num_predict: Number | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: Number | None = None
    min_p: float | None = None
    typical_p: float | None = None
    repeat_penalty: float | None = None
    repeat_last_n: Number | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: Number | None = None
    stop: str | list[str] | None = None
    num_keep: Number | None = None
    # Load-time settings: num_ctx is checked against the context DX serves; the others tune
    # speed, not output, and are DX config (models.<name>.args), not per request.
    num_ctx: Number | None = None
    num_batch: Number | None = None
    num_gpu: Number | None = None
    main_gpu: Number | None = None
    num_thread: Number | None = None
    use_mmap: bool | None = None


class Generation(msgspec.Struct):
    model: str = ""
    stream: bool = True
    format: Any = None  # "json" or a JSON schema object; checked with Ollama's own message
    options: Options | None = None
    keep_alive: KeepAlive | None = None
    think: Think | None = None
    truncate: bool | None = None
    shift: bool | None = None
    logprobs: bool = False
    top_logprobs: Int | None = None
    debug_render_only: bool = msgspec.field(default=False, name="_debug_render_only")


class ChatRequest(Generation):
    messages: list[Message] | None = None
    tools: list[Tool] | None = None


class GenerateRequest(Generation):
    prompt: str | None = None
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[Int] | None = None
    raw: bool = False
    images: list[str] | None = None


class EmbedRequest(msgspec.Struct):
    model: str = ""
    input: str | list[str] | None = None
    truncate: bool | None = None
    dimensions: Int | None = None
    keep_alive: KeepAlive | None = None
    options: Options | None = None


class EmbeddingsRequest(msgspec.Struct):
    model: str = ""
    prompt: str | None = None
    keep_alive: KeepAlive | None = None
    options: Options | None = None


class ModelRequest(msgspec.Struct):
    """/api/show, /api/pull, /api/push, /api/delete, /api/create: `name` is the old spelling."""

    model: str = ""
    name: str = ""
    verbose: bool = False
    stream: bool = True

    @property
    def which(self) -> str:
        return self.model or self.name


class CopyRequest(msgspec.Struct):
    source: str = ""
    destination: str = ""


# -- OpenAI (checked, then relayed as sent) ---------------------------------------------------


class StreamOptions(msgspec.Struct):
    include_usage: bool | None = None


class OpenAIMessage(msgspec.Struct):
    role: str
    content: Any = None


class _OpenAIGeneration(msgspec.Struct):
    model: str = ""
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: Int | None = None
    max_completion_tokens: Int | None = None
    n: Int | None = None
    seed: Int | None = None
    temperature: float | None = None
    top_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    stop: str | list[str] | None = None


class OpenAIChatRequest(_OpenAIGeneration):
    messages: list[OpenAIMessage] = []


class OpenAICompletionRequest(_OpenAIGeneration):
    prompt: str | list[Any] = ""


class OpenAIEmbeddingRequest(msgspec.Struct):
    model: str = ""
    input: str | list[Any] | None = None
    dimensions: Int | None = None
    encoding_format: Literal["float", "base64"] | None = None


# -- decoding with errors that name the field ------------------------------------------------


def decode(body: bytes, schema: type[T]) -> T:
    """A request body as `schema`, or a 400 that says what is wrong and where."""
    if not body.strip():
        raise ApiError(400, "missing request body: send a JSON object")
    try:
        return msgspec.json.decode(body, type=schema)
    except msgspec.ValidationError as exc:
        raise _invalid(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise ApiError(400, f"invalid JSON in request body: {exc}") from None


def check(data: dict[str, Any], schema: type[T]) -> T:
    """An already decoded body checked against `schema` (the body itself is kept to relay)."""
    try:
        return msgspec.convert(data, schema)
    except msgspec.ValidationError as exc:
        raise _invalid(str(exc)) from None


_TYPE_WORDS = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "array": "an array",
    "object": "an object",
    "null": "null",
}
_EXPECTED = re.compile(r"Expected `(?P<want>[^`]+)`, got `(?P<got>[^`]+)`")
_AT = re.compile(r" - at `\$(?P<path>[^`]*)`$")


def _words(types: str) -> str:
    names = [t.strip() for t in types.split("|") if t.strip() != "null"]
    if "int" in names and "float" in names:
        names.remove("int")  # "int | float" is just a number
    return " or ".join(_TYPE_WORDS.get(n, n) for n in names) or "null"


def _invalid(message: str) -> ApiError:
    at = _AT.search(message)
    path = at.group("path").lstrip(".") if at else ""
    what = message[: at.start()] if at else message
    if not path and what.startswith("Expected `object`"):
        return ApiError(400, "the request body must be a JSON object")
    expected = _EXPECTED.match(what)
    if expected:
        what = f"expected {_words(expected['want'])}, got {_words(expected['got'])}"
    elif what.startswith("Object missing required field"):
        what = what.replace("Object missing required field", "missing required field")
    elif what.startswith("Invalid enum value"):
        what = what.replace("Invalid enum value", "invalid value")
        if path == "think":
            what += ' (expected true, false, "low", "medium", "high" or "max")'
    else:
        what = what[:1].lower() + what[1:].replace("`int`", "an integer")
    param = path.split(".")[0].split("[")[0] or None
    return ApiError(400, f"{path}: {what}" if path else what, param=param)


# -- Anthropic Messages (/v1/messages) and OpenAI Responses (/v1/responses) ------------------


class AnthropicMessage(msgspec.Struct):
    role: str  # user, assistant; and system, which Claude Code sends inside `messages`
    content: str | list[dict[str, Any]]


class AnthropicRequest(msgspec.Struct):
    """Anthropic's Messages body. Tools stay dicts: client tools (a name and an input_schema),
    Anthropic's own server tools (a `type` such as web_search_20250305) and whatever comes
    next are sorted out by the handler, which maps or drops them (never a 400)."""

    model: str = ""
    max_tokens: Int | None = None
    messages: list[AnthropicMessage] = []
    system: str | list[dict[str, Any]] | None = None
    stream: bool = False
    temperature: float | None = None
    top_p: float | None = None
    top_k: Int | None = None
    stop_sequences: list[str] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None
    output_config: dict[str, Any] | None = None
    output_format: dict[str, Any] | None = None


class ResponsesRequest(msgspec.Struct):
    model: str = ""
    input: str | list[dict[str, Any]] = ""
    instructions: str | None = None
    max_output_tokens: Int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stream: bool = False
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    text: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    previous_response_id: str | None = None
    store: bool | None = None
    parallel_tool_calls: bool | None = None
    metadata: dict[str, Any] | None = None
    include: list[str] | None = None
