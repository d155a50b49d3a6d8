"""The request schemas (dxproxy/api/schemas.py): valid bodies decode, unknown fields are ignored,
and anything wrong is a 400 ApiError that says what and where (the field's path), never a 500."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from dxproxy.api.schemas import (
    AnthropicRequest,
    ChatRequest,
    CopyRequest,
    EmbeddingsRequest,
    EmbedRequest,
    GenerateRequest,
    ModelRequest,
    OpenAIChatRequest,
    OpenAICompletionRequest,
    OpenAIEmbeddingRequest,
    Options,
    ResponsesRequest,
    check,
    decode,
)
from dxproxy.http.errors import ApiError

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)


def bad(body: bytes, schema: type[Any]) -> ApiError:
    with pytest.raises(ApiError) as info:
        decode(body, schema)
    assert info.value.status == 400
    return info.value


def bad_dict(data: Any, schema: type[Any]) -> ApiError:
    with pytest.raises(ApiError) as info:
        check(data, schema)
    assert info.value.status == 400
    return info.value


# -- Ollama bodies that decode ---------------------------------------------------------------


def test_a_full_chat_body_decodes_into_typed_structs() -> None:
    body = orjson.dumps(
        {
            "model": "smollm2",
            "stream": False,
            "format": {"type": "object", "properties": {"a": {"type": "string"}}},
            "options": {"temperature": 0.2, "top_k": 40, "stop": ["\n"], "use_mmap": True},
            "keep_alive": "5m",
            "think": "high",
            "logprobs": True,
            "top_logprobs": 3,
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hi", "images": ["aGk="]},
                {
                    "role": "assistant",
                    "content": "",
                    "thinking": "hmm",
                    "tool_calls": [
                        {"function": {"name": "get", "arguments": {"city": "Paris"}, "index": 0}}
                    ],
                },
                {"role": "tool", "content": "12 C", "tool_name": "get", "tool_call_id": "c1"},
            ],
            "tools": [
                {
                    "type": "function",
                    "function": {"name": "get", "parameters": {"type": "object"}},
                }
            ],
        }
    )
    req = decode(body, ChatRequest)
    assert req.model == "smollm2"
    assert req.stream is False
    assert req.format == {"type": "object", "properties": {"a": {"type": "string"}}}
    assert req.options is not None
    assert req.options.temperature == 0.2
    assert req.options.top_k == 40
    assert req.options.stop == ["\n"]
    assert req.options.use_mmap is True
    assert req.keep_alive == "5m"
    assert req.think == "high"
    assert req.logprobs is True
    assert req.top_logprobs == 3
    assert req.messages is not None
    assert [m.role for m in req.messages] == ["system", "user", "assistant", "tool"]
    assert req.messages[1].images == ["aGk="]
    calls = req.messages[2].tool_calls
    assert calls is not None
    assert calls[0].function.name == "get"
    assert calls[0].function.arguments == {"city": "Paris"}
    assert calls[0].function.index == 0
    assert req.messages[2].thinking == "hmm"
    assert req.messages[3].tool_name == "get"
    assert req.messages[3].tool_call_id == "c1"
    assert req.tools is not None
    assert req.tools[0].function.name == "get"
    assert req.tools[0].function.parameters == {"type": "object"}


def test_an_empty_object_takes_the_defaults() -> None:
    req = decode(b"{}", ChatRequest)
    assert req.model == ""
    assert req.stream is True  # Ollama streams unless told not to
    assert req.options is None
    assert req.keep_alive is None
    assert req.think is None
    assert req.logprobs is False
    assert req.debug_render_only is False
    assert req.messages is None
    assert req.tools is None

    gen = decode(b"{}", GenerateRequest)
    assert gen.prompt is None
    assert gen.raw is False
    assert gen.context is None


def test_a_generate_body_decodes() -> None:
    body = (
        b'{"model":"m","prompt":"Why?","suffix":"end","system":"s","template":"{{ .Prompt }}",'
        b'"context":[1,2,3],"raw":true,"images":["aGk="],"format":"json","think":false}'
    )
    req = decode(body, GenerateRequest)
    assert (req.model, req.prompt, req.suffix, req.system) == ("m", "Why?", "end", "s")
    assert req.template == "{{ .Prompt }}"
    assert req.context == [1, 2, 3]
    assert req.raw is True
    assert req.images == ["aGk="]
    assert req.format == "json"
    assert req.think is False


def test_tool_call_arguments_may_be_an_object_or_a_string() -> None:
    body = (
        b'{"messages":[{"role":"assistant","tool_calls":['
        b'{"function":{"name":"a","arguments":{"x":1}}},'
        b'{"id":"c2","type":"function","function":{"name":"b","arguments":"{\\"x\\":1}"}}]}]}'
    )
    req = decode(body, ChatRequest)
    assert req.messages is not None
    calls = req.messages[0].tool_calls
    assert calls is not None
    assert calls[0].function.arguments == {"x": 1}
    assert calls[1].function.arguments == '{"x":1}'
    assert (calls[1].id, calls[1].type) == ("c2", "function")


def test_integer_options_accept_floats_as_ollama_does() -> None:
    options = decode(b'{"options":{"num_predict":40.7,"top_k":40,"seed":-1}}', ChatRequest).options
    assert options is not None
    assert options.num_predict == 40.7
    assert isinstance(options.num_predict, float)  # the caller truncates, as Go does
    assert options.top_k == 40
    assert isinstance(options.top_k, int)
    assert options.seed == -1


def test_float_options_accept_integers_as_floats() -> None:
    options = decode(b'{"options":{"temperature":1,"top_p":0}}', ChatRequest).options
    assert options is not None
    assert options.temperature == 1.0
    assert isinstance(options.temperature, float)
    assert options.top_p == 0.0


def test_stop_may_be_a_string_or_a_list() -> None:
    one = decode(b'{"options":{"stop":"END"}}', GenerateRequest).options
    many = decode(b'{"options":{"stop":["a","b"]}}', GenerateRequest).options
    assert one is not None
    assert many is not None
    assert one.stop == "END"
    assert many.stop == ["a", "b"]


def test_64_bit_integers_are_the_limit() -> None:
    body = orjson.dumps({"top_logprobs": INT64_MAX, "options": {"num_predict": INT64_MIN}})
    req = decode(body, ChatRequest)
    assert req.top_logprobs == INT64_MAX
    assert req.options is not None
    assert req.options.num_predict == INT64_MIN


@pytest.mark.parametrize(
    ("body", "message", "param"),
    [
        (
            b'{"top_logprobs":9223372036854775808}',
            "top_logprobs: expected an integer <= 9223372036854775807",
            "top_logprobs",
        ),
        (
            b'{"options":{"num_predict":99999999999999999999}}',
            "options.num_predict: expected an integer <= 9223372036854775807",
            "options",
        ),
        (
            b'{"options":{"seed":-9223372036854775809}}',
            "options.seed: expected an integer >= -9223372036854775808",
            "options",
        ),
        (
            b'{"context":[1,18446744073709551616]}',
            "context[1]: expected an integer <= 9223372036854775807",
            "context",
        ),
    ],
)
def test_integers_beyond_64_bits_are_refused(body: bytes, message: str, param: str) -> None:
    err = bad(body, GenerateRequest)
    assert err.message == message
    assert err.param == param


def test_debug_render_only_is_spelled_with_an_underscore() -> None:
    assert decode(b'{"_debug_render_only":true}', ChatRequest).debug_render_only is True
    # The attribute's own name is not a field of the body: ignored like any unknown field.
    assert decode(b'{"debug_render_only":true}', ChatRequest).debug_render_only is False


# -- unknown fields --------------------------------------------------------------------------


def test_unknown_fields_are_ignored_at_every_level() -> None:
    body = orjson.dumps(
        {
            "model": "m",
            "not_a_field": {"deep": [1, "x", None]},
            "options": {"mirostat": 2, "penalize_newline": True, "top_k": 5},
            "messages": [{"role": "user", "content": "hi", "name": "bob", "extra": 1}],
            "tools": [{"type": "function", "function": {"name": "f", "strict": True}, "x": 1}],
        }
    )
    req = decode(body, ChatRequest)
    assert req.model == "m"
    assert req.options == Options(top_k=5)
    assert req.messages is not None
    assert req.messages[0].content == "hi"
    assert req.tools is not None
    assert req.tools[0].function.name == "f"


def test_unknown_fields_with_any_type_are_ignored_in_every_schema() -> None:
    body = b'{"surprise":[{"a":1}],"x":null,"y":true}'
    for schema in (
        ChatRequest,
        GenerateRequest,
        EmbedRequest,
        EmbeddingsRequest,
        ModelRequest,
        CopyRequest,
        OpenAIChatRequest,
        OpenAICompletionRequest,
        OpenAIEmbeddingRequest,
        AnthropicRequest,
        ResponsesRequest,
    ):
        assert isinstance(decode(body, schema), schema)


def test_a_repeated_key_keeps_the_last_value() -> None:
    assert decode(b'{"model":"a","model":"b"}', ChatRequest).model == "b"


# -- wrong types: a 400 naming the field ------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "schema", "message", "param"),
    [
        # Ollama's integer options take numbers of either kind, so they expect "a number".
        (
            b'{"options":{"top_k":"40"}}',
            ChatRequest,
            "options.top_k: expected a number, got a string",
            "options",
        ),
        (
            b'{"options":{"top_k":true}}',
            ChatRequest,
            "options.top_k: expected a number, got true or false",
            "options",
        ),
        (
            b'{"options":{"temperature":"hot"}}',
            GenerateRequest,
            "options.temperature: expected a number, got a string",
            "options",
        ),
        (
            b'{"options":{"stop":5}}',
            ChatRequest,
            "options.stop: expected a string or an array, got an integer",
            "options",
        ),
        (
            b'{"options":{"stop":[1]}}',
            ChatRequest,
            "options.stop[0]: expected a string, got an integer",
            "options",
        ),
        (b'{"options":[]}', ChatRequest, "options: expected an object, got an array", "options"),
        (
            b'{"top_logprobs":"3"}',
            ChatRequest,
            "top_logprobs: expected an integer, got a string",
            "top_logprobs",
        ),
        (
            b'{"top_logprobs":1.5}',
            ChatRequest,
            "top_logprobs: expected an integer, got a number",
            "top_logprobs",
        ),
        (
            b'{"stream":"yes"}',
            ChatRequest,
            "stream: expected true or false, got a string",
            "stream",
        ),
        (b'{"stream":null}', ChatRequest, "stream: expected true or false, got null", "stream"),
        (b'{"model":7}', GenerateRequest, "model: expected a string, got an integer", "model"),
        (b'{"prompt":["a"]}', GenerateRequest, "prompt: expected a string, got an array", "prompt"),
        (
            b'{"context":[1,"a"]}',
            GenerateRequest,
            "context[1]: expected an integer, got a string",
            "context",
        ),
        (b'{"raw":1}', GenerateRequest, "raw: expected true or false, got an integer", "raw"),
        (
            b'{"messages":{"role":"user"}}',
            ChatRequest,
            "messages: expected an array, got an object",
            "messages",
        ),
        (
            b'{"messages":[{"role":"user","content":1}]}',
            ChatRequest,
            "messages[0].content: expected a string, got an integer",
            "messages",
        ),
        (
            b'{"messages":[{"role":"user"},{"role":"user","images":"aGk="}]}',
            ChatRequest,
            "messages[1].images: expected an array, got a string",
            "messages",
        ),
        (
            b'{"messages":[{"role":"assistant","tool_calls":[{"function":{"name":1}}]}]}',
            ChatRequest,
            "messages[0].tool_calls[0].function.name: expected a string, got an integer",
            "messages",
        ),
        (
            b'{"tools":[{"function":{"name":"f"},"type":3}]}',
            ChatRequest,
            "tools[0].type: expected a string, got an integer",
            "tools",
        ),
        (
            b'{"think":1}',
            ChatRequest,
            "think: expected true or false or a string, got an integer",
            "think",
        ),
        (
            b'{"input":{"a":1}}',
            EmbedRequest,
            "input: expected a string or an array, got an object",
            "input",
        ),
        (
            b'{"dimensions":"8"}',
            EmbedRequest,
            "dimensions: expected an integer, got a string",
            "dimensions",
        ),
        (b'{"prompt":1}', EmbeddingsRequest, "prompt: expected a string, got an integer", "prompt"),
        (
            b'{"verbose":"yes"}',
            ModelRequest,
            "verbose: expected true or false, got a string",
            "verbose",
        ),
        (b'{"source":1}', CopyRequest, "source: expected a string, got an integer", "source"),
    ],
)
def test_a_wrong_type_names_the_field(
    body: bytes, schema: type[Any], message: str, param: str
) -> None:
    err = bad(body, schema)
    assert err.message == message
    assert err.param == param
    assert err.code is None


@pytest.mark.parametrize(
    ("body", "schema", "message", "param"),
    [
        (
            b'{"messages":[{"content":"x"}]}',
            ChatRequest,
            "messages[0]: missing required field `role`",
            "messages",
        ),
        (
            b'{"tools":[{"function":{}}]}',
            ChatRequest,
            "tools[0].function: missing required field `name`",
            "tools",
        ),
        (
            b'{"tools":[{"type":"function"}]}',
            ChatRequest,
            "tools[0]: missing required field `function`",
            "tools",
        ),
        (
            b'{"messages":[{"role":"user"}]}',
            AnthropicRequest,
            "messages[0]: missing required field `content`",
            "messages",
        ),
        (
            b'{"messages":[{"content":"x"}]}',
            AnthropicRequest,
            "messages[0]: missing required field `role`",
            "messages",
        ),
    ],
)
def test_a_missing_required_field_is_named(
    body: bytes, schema: type[Any], message: str, param: str
) -> None:
    err = bad(body, schema)
    assert err.message == message
    assert err.param == param


def test_an_unknown_think_level_lists_the_ones_there_are() -> None:
    err = bad(b'{"think":"extreme"}', ChatRequest)
    assert err.message == (
        'think: invalid value \'extreme\' (expected true, false, "low", "medium", "high" or "max")'
    )
    assert err.param == "think"


@pytest.mark.parametrize("level", [True, False, "low", "medium", "high", "max"])
def test_every_think_level_decodes(level: bool | str) -> None:
    assert decode(orjson.dumps({"think": level}), GenerateRequest).think == level


def test_other_invalid_values_are_named_without_the_think_hint() -> None:
    err = bad(b'{"encoding_format":"hex"}', OpenAIEmbeddingRequest)
    assert err.message == "encoding_format: invalid value 'hex'"
    assert err.param == "encoding_format"

    err = bad(b'{"messages":[{"role":1,"content":"x"}]}', AnthropicRequest)
    assert err.message == "messages[0].role: expected a string, got an integer"
    assert err.param == "messages"
    # Claude Code sends system-role messages inside `messages`: they decode (and are mapped).
    ok = decode(b'{"messages":[{"role":"system","content":"x"}]}', AnthropicRequest)
    assert ok.messages[0].role == "system"


# -- bodies that are not a JSON object --------------------------------------------------------


@pytest.mark.parametrize("body", [b"", b" ", b"\n\t \r\n"])
def test_an_empty_body_asks_for_a_json_object(body: bytes) -> None:
    err = bad(body, ChatRequest)
    assert err.message == "missing request body: send a JSON object"
    assert err.param is None


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"not json", "JSON is malformed: invalid character (byte 4)"),
        (b'{"model": "m",}', "JSON is malformed: trailing comma in object (byte 14)"),
        (b'{"model": "m"', "Input data was truncated"),
        (b'{"model":"\xff"}', "Invalid UTF-8 encoded string"),
    ],
)
def test_invalid_json_is_a_400_saying_where(body: bytes, detail: str) -> None:
    err = bad(body, ChatRequest)
    assert err.message == f"invalid JSON in request body: {detail}"
    assert err.param is None


@pytest.mark.parametrize(
    "body", [b"[]", b'[{"model":"m"}]', b'"hi"', b"1", b"1.5", b"true", b"null"]
)
@pytest.mark.parametrize("schema", [ChatRequest, GenerateRequest, OpenAIChatRequest])
def test_a_body_that_is_not_an_object_is_refused(body: bytes, schema: type[Any]) -> None:
    err = bad(body, schema)
    assert err.message == "the request body must be a JSON object"
    assert err.param is None


def test_decode_never_raises_anything_but_api_error() -> None:
    bodies = [
        b"{",
        b"}",
        b"\x00",
        b'{"a":NaN}',
        b'{"options":{"top_k":Infinity}}',
        b"\xef\xbb\xbf{}",
    ]
    for body in bodies:
        for schema in (ChatRequest, GenerateRequest, AnthropicRequest, ResponsesRequest):
            err = bad(body, schema)
            assert err.message.startswith("invalid JSON in request body: "), err.message


# -- keep_alive ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["5m", "1h30m", "-1", "0", "300", 300, 0, -1, 1.5, -0.5, INT64_MAX, None]
)
@pytest.mark.parametrize("schema", [ChatRequest, GenerateRequest, EmbedRequest, EmbeddingsRequest])
def test_keep_alive_is_a_number_or_a_string_kept_as_sent(
    value: int | float | str | None, schema: type[Any]
) -> None:
    # The schema keeps the value as it came; dxproxy.api.ollama.request checks the duration.
    decoded = decode(orjson.dumps({"keep_alive": value}), schema).keep_alive
    assert decoded == value
    assert type(decoded) is type(value)


@pytest.mark.parametrize(
    ("value", "got"),
    [
        (True, "true or false"),
        (False, "true or false"),
        ([1], "an array"),
        ({"minutes": 5}, "an object"),
    ],
)
@pytest.mark.parametrize("schema", [ChatRequest, GenerateRequest, EmbedRequest, EmbeddingsRequest])
def test_keep_alive_of_another_type_is_refused(value: Any, got: str, schema: type[Any]) -> None:
    err = bad(orjson.dumps({"keep_alive": value}), schema)
    assert err.message == f"keep_alive: expected a number or a string, got {got}"
    assert err.param == "keep_alive"


# -- the other Ollama bodies -----------------------------------------------------------------


def test_embed_input_is_a_string_or_a_list_of_strings() -> None:
    one = decode(b'{"model":"e","input":"hi","truncate":false,"dimensions":8}', EmbedRequest)
    assert (one.model, one.input, one.truncate, one.dimensions) == ("e", "hi", False, 8)
    many = decode(b'{"model":"e","input":["a","b"]}', EmbedRequest)
    assert many.input == ["a", "b"]
    err = bad(b'{"input":["a",1]}', EmbedRequest)
    assert err.message == "input[1]: expected a string, got an integer"


def test_model_request_prefers_model_over_the_old_name() -> None:
    assert decode(b'{"model":"new","name":"old"}', ModelRequest).which == "new"
    assert decode(b'{"name":"old"}', ModelRequest).which == "old"
    assert decode(b"{}", ModelRequest).which == ""
    req = decode(b'{"model":"m","verbose":true,"stream":false}', ModelRequest)
    assert (req.verbose, req.stream) == (True, False)


def test_copy_request() -> None:
    req = decode(b'{"source":"a","destination":"b"}', CopyRequest)
    assert (req.source, req.destination) == ("a", "b")


# -- OpenAI bodies: decoded to a dict, then checked --------------------------------------------


def test_check_returns_the_struct_and_leaves_the_dict_as_sent() -> None:
    data: dict[str, Any] = {
        "model": "m",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 16,
        "temperature": 0,
        "stop": ["x"],
        "logit_bias": {"42": -100},  # unknown to the schema, relayed to the engine
    }
    sent = orjson.dumps(data)
    req = check(data, OpenAIChatRequest)
    assert isinstance(req, OpenAIChatRequest)
    assert req.model == "m"
    assert req.messages[0].role == "user"
    assert req.messages[0].content == [{"type": "text", "text": "hi"}]
    assert req.stream is True
    assert req.stream_options is not None
    assert req.stream_options.include_usage is True
    assert req.max_tokens == 16
    assert req.temperature == 0.0
    assert req.stop == ["x"]
    assert orjson.dumps(data) == sent  # not touched


def test_openai_defaults() -> None:
    req = check({}, OpenAIChatRequest)
    assert req.messages == []
    assert req.stream is None  # OpenAI does not stream unless asked; None tells "not said"
    completion = check({"prompt": ["a", 1]}, OpenAICompletionRequest)
    assert completion.prompt == ["a", 1]
    assert check({}, OpenAICompletionRequest).prompt == ""


@pytest.mark.parametrize(
    ("data", "schema", "message", "param"),
    [
        (
            {"max_tokens": "5"},
            OpenAIChatRequest,
            "max_tokens: expected an integer, got a string",
            "max_tokens",
        ),
        # OpenAI's integers are integers: unlike Ollama's options, no float and no bool.
        (
            {"max_tokens": 1.5},
            OpenAIChatRequest,
            "max_tokens: expected an integer, got a number",
            "max_tokens",
        ),
        ({"n": True}, OpenAIChatRequest, "n: expected an integer, got true or false", "n"),
        (
            {"max_completion_tokens": 2**64},
            OpenAIChatRequest,
            "max_completion_tokens: expected an integer <= 9223372036854775807",
            "max_completion_tokens",
        ),
        (
            {"messages": "hi"},
            OpenAIChatRequest,
            "messages: expected an array, got a string",
            "messages",
        ),
        (
            {"messages": [{"content": "hi"}]},
            OpenAIChatRequest,
            "messages[0]: missing required field `role`",
            "messages",
        ),
        (
            {"stream_options": {"include_usage": "y"}},
            OpenAIChatRequest,
            "stream_options.include_usage: expected true or false, got a string",
            "stream_options",
        ),
        (
            {"stop": [1]},
            OpenAIChatRequest,
            "stop[0]: expected a string, got an integer",
            "stop",
        ),
        (
            {"prompt": 5},
            OpenAICompletionRequest,
            "prompt: expected a string or an array, got an integer",
            "prompt",
        ),
        (
            {"seed": 1.0},
            OpenAICompletionRequest,
            "seed: expected an integer, got a number",
            "seed",
        ),
        (
            {"dimensions": "8"},
            OpenAIEmbeddingRequest,
            "dimensions: expected an integer, got a string",
            "dimensions",
        ),
    ],
)
def test_check_names_the_field(
    data: dict[str, Any], schema: type[Any], message: str, param: str
) -> None:
    err = bad_dict(data, schema)
    assert err.message == message
    assert err.param == param


@pytest.mark.parametrize("data", [[], [{"model": "m"}], "x", 1, None])
def test_check_refuses_what_is_not_an_object(data: Any) -> None:
    err = bad_dict(data, OpenAIChatRequest)
    assert err.message == "the request body must be a JSON object"
    assert err.param is None


def test_openai_embedding_request() -> None:
    req = decode(
        b'{"model":"e","input":["a",[1,2]],"encoding_format":"base64"}', OpenAIEmbeddingRequest
    )
    assert req.input == ["a", [1, 2]]
    assert req.encoding_format == "base64"


# -- Anthropic Messages and OpenAI Responses --------------------------------------------------


def test_an_anthropic_body_decodes() -> None:
    body = orjson.dumps(
        {
            "model": "claude",
            "max_tokens": 256,
            "system": [{"type": "text", "text": "be brief", "cache_control": {"type": "x"}}],
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": [{"type": "text", "text": "hello"}]},
            ],
            "stream": True,
            "top_k": 5,
            "stop_sequences": ["\n\nHuman:"],
            "tools": [{"name": "get", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "auto"},
            "thinking": {"type": "enabled", "budget_tokens": 1024},
            "metadata": {"user_id": "u"},  # unknown: ignored
        }
    )
    req = decode(body, AnthropicRequest)
    assert (req.model, req.max_tokens, req.stream, req.top_k) == ("claude", 256, True, 5)
    assert req.system == [{"type": "text", "text": "be brief", "cache_control": {"type": "x"}}]
    assert [m.role for m in req.messages] == ["user", "assistant"]
    assert req.messages[0].content == "hi"
    assert req.messages[1].content == [{"type": "text", "text": "hello"}]
    assert req.stop_sequences == ["\n\nHuman:"]
    assert req.tools == [{"name": "get", "input_schema": {"type": "object"}}]
    assert req.tool_choice == {"type": "auto"}
    assert req.thinking == {"type": "enabled", "budget_tokens": 1024}
    assert decode(b"{}", AnthropicRequest).stream is False


def test_anthropic_wrong_types_are_named() -> None:
    err = bad(b'{"max_tokens":"many"}', AnthropicRequest)
    assert err.message == "max_tokens: expected an integer, got a string"
    assert err.param == "max_tokens"
    err = bad(b'{"messages":[{"role":"user","content":5}]}', AnthropicRequest)
    assert err.message == "messages[0].content: expected a string or an array, got an integer"
    assert err.param == "messages"
    err = bad(b'{"system":5}', AnthropicRequest)
    assert err.message == "system: expected a string or an array, got an integer"


def test_a_responses_body_decodes() -> None:
    text = decode(
        b'{"model":"m","input":"hi","instructions":"be brief","store":false}', ResponsesRequest
    )
    assert (text.model, text.input, text.instructions, text.store) == ("m", "hi", "be brief", False)
    assert text.stream is False
    items = decode(
        orjson.dumps(
            {
                "input": [{"role": "user", "content": "hi"}],
                "max_output_tokens": 64,
                "tool_choice": "auto",
                "tools": [{"type": "function", "name": "f"}],
                "reasoning": {"effort": "low"},
                "previous_response_id": "resp_1",
            }
        ),
        ResponsesRequest,
    )
    assert items.input == [{"role": "user", "content": "hi"}]
    assert items.max_output_tokens == 64
    assert items.tool_choice == "auto"
    assert items.tools == [{"type": "function", "name": "f"}]
    assert items.reasoning == {"effort": "low"}
    assert items.previous_response_id == "resp_1"
    assert decode(
        b'{"tool_choice":{"type":"function","name":"f"}}', ResponsesRequest
    ).tool_choice == {"type": "function", "name": "f"}


def test_responses_wrong_types_are_named() -> None:
    err = bad(b'{"input":5}', ResponsesRequest)
    assert err.message == "input: expected a string or an array, got an integer"
    assert err.param == "input"
    err = bad(b'{"input":["hi"]}', ResponsesRequest)
    assert err.message == "input[0]: expected an object, got a string"
    assert err.param == "input"
