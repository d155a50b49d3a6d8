"""How Ollama requests reach the engine: every option with an engine equivalent mapped,
formats, tools both ways, think, logprobs; and what cannot be honoured refused with a 400
that says why. Checked on the body the fake engine received (GET /last).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest

from tests.conftest import DxProcess, fake_model, start_dx
from tests.fakes.engine_requests import last_request, write_gguf

USER = [{"role": "user", "content": "hi"}]
THINKING_TEMPLATE = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}<think>"


@pytest.fixture(scope="module")
def dx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DxProcess]:
    tmp = tmp_path_factory.mktemp("mapping")
    thinker = write_gguf(
        Path(tmp) / "thinker.gguf",
        {"general.architecture": "qwen3", "tokenizer.chat_template": THINKING_TEMPLATE},
    )
    models = {
        "fake": fake_model(context=2048),
        "thinker": fake_model(model=str(thinker)),
    }
    proc = start_dx(tmp, models)
    yield proc
    proc.stop()


def client(dx: DxProcess) -> ollama.Client:
    return ollama.Client(host=dx.url, headers=dx.auth)


def post(dx: DxProcess, path: str, body: object) -> httpx.Response:
    return httpx.post(dx.url + path, headers=dx.auth, json=body, timeout=30)


def ndjson(resp: httpx.Response) -> list[dict[str, object]]:
    return [json.loads(line) for line in resp.text.splitlines()]


def test_options_reach_the_engine(dx: DxProcess) -> None:
    options = {
        "num_predict": 3.0,  # JSON floats for integer options are truncated, as in Ollama
        "temperature": 0.2,
        "top_k": 40.7,
        "top_p": 0.9,
        "min_p": 0.05,
        "typical_p": 0.8,
        "repeat_penalty": 1.1,
        "repeat_last_n": 32,
        "presence_penalty": 0.1,
        "frequency_penalty": 0.2,
        "seed": 42,
        "stop": "x",
        "num_keep": 5,
        "num_ctx": 2048,
        "num_thread": 4,
        "num_gpu": 99,
        "mirostat": 2,  # dropped by Ollama itself: ignored
        "penalize_newline": True,
        "made_up": "x",  # unknown: ignored, as Ollama does
    }
    reply = client(dx).chat(model="fake", messages=USER, options=options)
    assert reply.message.content == "Hello from the"
    sent = last_request(dx, "fake")
    expected = {
        "max_tokens": 3,
        "temperature": 0.2,
        "top_k": 40,
        "top_p": 0.9,
        "min_p": 0.05,
        "typical_p": 0.8,
        "repeat_penalty": 1.1,
        "repeat_last_n": 32,
        "presence_penalty": 0.1,
        "frequency_penalty": 0.2,
        "seed": 42,
        "stop": ["x"],
        "n_keep": 5,
    }
    assert {k: sent.get(k) for k in expected} == expected
    for key in ("num_ctx", "num_thread", "num_gpu", "mirostat", "made_up", "options"):
        assert key not in sent
    unlimited = client(dx).generate(model="fake", prompt="hi", options={"num_predict": -1})
    assert unlimited.response == "Hello from the fake engine."
    assert "max_tokens" not in last_request(dx, "fake")


def test_num_ctx_larger_than_the_served_context(dx: DxProcess) -> None:
    """Served with the context DX has, as Ollama caps num_ctx; the log says so, once."""
    for _ in range(2):
        reply = client(dx).chat(model="fake", messages=USER, options={"num_ctx": 8192})
        assert reply.message.content
    said = [line for line in dx.lines if "options.num_ctx 8192" in line]
    assert len(said) == 1 and "served with 2048 tokens" in said[0]


def test_format_becomes_constrained_output(dx: DxProcess) -> None:
    client(dx).chat(model="fake", messages=USER, format="json")
    assert last_request(dx, "fake")["response_format"] == {"type": "json_object"}
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    client(dx).generate(model="fake", prompt="hi", format=schema)
    fmt = last_request(dx, "fake")["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["schema"] == schema
    bad = post(dx, "/api/chat", {"model": "fake", "messages": USER, "format": "yaml"})
    assert bad.status_code == 400 and bad.json()["error"].startswith('invalid format: "yaml"')


def test_tools_both_ways(dx: DxProcess) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    reply = client(dx).chat(model="fake", messages=[{"role": "user", "content": "TOOL"}],
                            tools=tools)  # fmt: skip
    assert last_request(dx, "fake")["tools"] == tools
    (call,) = reply.message.tool_calls or []
    assert call.function.name == "get_weather" and call.function.arguments == {"city": "Paris"}
    stream = post(
        dx,
        "/api/chat",
        {"model": "fake", "tools": tools, "messages": [{"role": "user", "content": "TOOL"}]},
    )
    calls = [c["message"]["tool_calls"] for c in ndjson(stream) if c["message"].get("tool_calls")]
    assert calls == [[{"id": "call_fake1", "function": {
        "index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}}]]  # fmt: skip


def test_tool_result_without_id_gets_one(dx: DxProcess) -> None:
    """LangChain's agent loop and the official Python client send tool results without
    tool_call_id: valid Ollama, refused by OpenAI engines (it was a 502)."""
    messages = [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
            {"function": {"name": "get_time", "arguments": {"city": "Rome"}}}]},
        {"role": "tool", "content": "10:00", "tool_name": "get_time"},
        {"role": "tool", "content": "sunny"},
        {"role": "user", "content": "thanks"},
    ]  # fmt: skip
    reply = client(dx).chat(model="fake", messages=messages)
    assert reply.message.content == "Hello from the fake engine."
    sent = last_request(dx, "fake")["messages"]
    calls = sent[1]["tool_calls"]
    assert [c["id"] for c in calls] == ["call_1_0", "call_1_1"]
    assert calls[0]["function"] == {"name": "get_weather", "arguments": '{"city":"Paris"}'}
    assert sent[2] == {"role": "tool", "content": "10:00", "tool_call_id": "call_1_1",
                       "name": "get_time"}  # fmt: skip
    assert sent[3] == {"role": "tool", "content": "sunny", "tool_call_id": "call_1_0"}


def test_think(dx: DxProcess) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        client(dx).chat(model="fake", messages=USER, think=True)
    assert (
        err.value.status_code == 400
        and err.value.error == '"fake:latest" does not support thinking'
    )
    assert client(dx).chat(model="fake", messages=USER, think=False).done
    assert "chat_template_kwargs" not in last_request(dx, "fake")
    think = [{"role": "user", "content": "THINK"}]
    reply = client(dx).chat(model="thinker", messages=think, think="low")
    assert reply.message.thinking == "Let me think."
    assert reply.message.content == "Hello from the fake engine."
    sent = last_request(dx, "thinker")
    assert sent["chat_template_kwargs"] == {"enable_thinking": True, "reasoning_effort": "low"}
    chunks = list(client(dx).chat(model="thinker", messages=think, think=True, stream=True))
    assert "".join(c.message.thinking or "" for c in chunks) == "Let me think."
    gen = client(dx).generate(model="thinker", prompt="THINK", think=True)
    assert gen.thinking == "Let me think."
    client(dx).chat(model="thinker", messages=USER, think=False)
    assert last_request(dx, "thinker")["chat_template_kwargs"] == {"enable_thinking": False}
    assert "thinking" in (client(dx).show("thinker").capabilities or [])
    bad = post(dx, "/api/chat", {"model": "thinker", "messages": USER, "think": "hard"})
    assert bad.status_code == 400 and bad.json()["error"].startswith("think: invalid value")


def test_logprobs(dx: DxProcess) -> None:
    reply = client(dx).chat(model="fake", messages=USER, logprobs=True, top_logprobs=2)
    sent = last_request(dx, "fake")
    assert sent["logprobs"] is True and sent["top_logprobs"] == 2
    lp = reply.logprobs or []
    assert [p.token for p in lp] == ["Hello", " from", " the", " fake", " engine", "."]
    assert lp[0].logprob == -0.25 and len(lp[0].top_logprobs or []) == 2
    chunks = ndjson(post(dx, "/api/generate", {"model": "fake", "prompt": "hi", "logprobs": True}))
    assert all(len(c["logprobs"]) == 1 for c in chunks if not c["done"])  # type: ignore[arg-type]
    too_many = post(dx, "/api/chat", {"model": "fake", "messages": USER, "top_logprobs": 21})
    assert too_many.status_code == 400
    assert too_many.json()["error"] == "top_logprobs must be between 0 and 20"


def test_defaults_that_change_nothing_are_accepted(dx: DxProcess) -> None:
    for flags in ({"truncate": True, "shift": True}, {"truncate": False, "shift": False}):
        resp = post(dx, "/api/chat", {"model": "fake", "messages": USER, "stream": False, **flags})
        assert resp.status_code == 200, resp.text


@pytest.mark.parametrize(
    ("path", "body", "needle"),
    [
        ("/api/generate", {"prompt": "x", "context": [1, 2]}, "context is not supported"),
        ("/api/generate", {"prompt": "x", "_debug_render_only": True}, "_debug_render_only"),
        ("/api/generate", {"prompt": "x", "template": "{{ .Prompt }}"}, "template overrides"),
        (
            "/api/chat",
            {"messages": [{"role": "user", "content": 5}]},
            "messages[0].content: expected a string, got an integer",
        ),
        (
            "/api/chat",
            {"messages": [{"content": "x"}]},
            "messages[0]: missing required field `role`",
        ),
        (
            "/api/chat",
            {"messages": USER, "options": {"temperature": "hot"}},
            "options.temperature: expected a number, got a string",
        ),
        (
            "/api/chat",
            {"messages": USER, "options": {"stop": [1]}},
            "options.stop[0]: expected a string, got an integer",
        ),
        (
            "/api/chat",
            {"messages": USER, "tools": [{"function": {}}]},
            "tools[0].function: missing required field `name`",
        ),
        ("/api/chat", {"messages": USER, "think": 5}, "think: expected"),
        ("/api/chat", {"messages": USER, "keep_alive": [1]}, "keep_alive: expected"),
    ],
)
def test_refused_clearly(dx: DxProcess, path: str, body: dict[str, object], needle: str) -> None:
    resp = post(dx, path, {"model": "fake", **body})
    assert resp.status_code == 400, resp.text
    assert needle in resp.json()["error"]


def test_integers_past_64_bits_are_not_a_500(dx: DxProcess) -> None:
    huge = 2**70
    schema = {"type": "object", "properties": {"a": {"type": "integer", "maximum": huge}}}
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"x": huge}}}]
    calls = [{"function": {"name": "f", "arguments": {"x": huge}}}]
    for body in (
        {"messages": USER, "format": schema},
        {"messages": USER, "tools": tools},
        {"messages": [*USER, {"role": "assistant", "content": "", "tool_calls": calls}]},
    ):
        resp = post(dx, "/api/chat", {"model": "fake", "stream": False, **body})
        assert resp.status_code == 200, resp.text
    bad = post(dx, "/api/chat", {"model": "fake", "messages": USER, "format": huge})
    assert bad.status_code == 400 and str(huge) in bad.json()["error"]
    big = post(dx, "/api/chat", {"model": "fake", "messages": USER, "options": {"top_k": huge}})
    assert big.status_code == 400 and big.json()["error"].startswith("options.top_k: expected")
