"""Anthropic's Messages API (/v1/messages) and OpenAI's Responses API (/v1/responses),
translated to chat completions: through the official `anthropic` and `openai` clients, in
front of the fake engine, streamed and not, with tools and usage."""

from __future__ import annotations

import json
from collections.abc import Iterator

import anthropic
import httpx
import openai
import pytest

from tests.conftest import DxProcess, fake_model, start_dx
from tests.fakes.engine_requests import last_request

TEXT = "Hello from the fake engine."
WEATHER = {
    "name": "get_weather",
    "description": "Weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}


@pytest.fixture(scope="module")
def dx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DxProcess]:
    proc = start_dx(tmp_path_factory.mktemp("translated"), {"fake": fake_model(aliases=["fk"])})
    yield proc
    proc.stop()


def claude(dx: DxProcess) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=dx.url, api_key=dx.key, max_retries=0)  # x-api-key


def oa(dx: DxProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=dx.url + "/v1", api_key=dx.key, max_retries=0)


# -- /v1/messages --------------------------------------------------------------------------


def test_messages(dx: DxProcess) -> None:
    reply = claude(dx).messages.create(
        model="fake", max_tokens=100, system="Be brief.",
        messages=[{"role": "user", "content": "hi there"}],
    )  # fmt: skip
    assert reply.content[0].type == "text" and reply.content[0].text == TEXT
    assert reply.stop_reason == "end_turn" and reply.role == "assistant"
    assert reply.usage.input_tokens == 2 and reply.usage.output_tokens == 6
    sent = last_request(dx, "fake")
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
    assert sent["max_tokens"] == 100
    short = claude(dx).messages.create(
        model="fk", max_tokens=2, messages=[{"role": "user", "content": "hi"}]
    )
    assert short.stop_reason == "max_tokens" and short.usage.output_tokens == 2


def test_messages_stream(dx: DxProcess) -> None:
    with claude(dx).messages.stream(
        model="fake", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == TEXT and final.content[0].text == TEXT  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 6


def test_messages_tools(dx: DxProcess) -> None:
    ask = [{"role": "user", "content": "TOOL"}]
    reply = claude(dx).messages.create(model="fake", max_tokens=100, messages=ask, tools=[WEATHER])  # type: ignore[list-item]
    (use,) = [b for b in reply.content if b.type == "tool_use"]
    assert use.name == "get_weather" and use.input == {"city": "Paris"}
    assert reply.stop_reason == "tool_use"
    assert last_request(dx, "fake")["tools"][0]["function"]["parameters"] == WEATHER["input_schema"]
    with claude(dx).messages.stream(
        model="fake", max_tokens=100, messages=ask, tools=[WEATHER]
    ) as stream:  # type: ignore[list-item]
        final = stream.get_final_message()
    (use,) = [b for b in final.content if b.type == "tool_use"]
    assert use.input == {"city": "Paris"} and final.stop_reason == "tool_use"
    turns = [
        *ask,
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1",
                                           "name": "get_weather", "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                      "content": "sunny"}, {"type": "text", "text": "and?"}]},
    ]  # fmt: skip
    answer = claude(dx).messages.create(model="fake", max_tokens=100, messages=turns)
    assert answer.content[0].text == TEXT  # type: ignore[union-attr]
    sent = last_request(dx, "fake")["messages"]
    assert sent[1]["tool_calls"][0]["id"] == "toolu_1"
    assert sent[2] == {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"}
    assert sent[3] == {"role": "user", "content": "and?"}


def test_messages_errors_are_anthropic_shaped(dx: DxProcess) -> None:
    with pytest.raises(anthropic.NotFoundError) as nf:
        claude(dx).messages.create(
            model="nope", max_tokens=10, messages=[{"role": "user", "content": "x"}]
        )
    assert "fake:latest" in str(nf.value)
    bad = httpx.post(
        dx.url + "/v1/messages",
        headers=dx.auth,
        json={"model": "fake", "messages": [{"role": "robot", "content": "x"}]},
    )
    assert bad.status_code == 400
    body = bad.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"].startswith("messages[0].role")
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=dx.url, api_key="wrong-key", max_retries=0).messages.create(
            model="fake", max_tokens=10, messages=[{"role": "user", "content": "x"}]
        )


# -- /v1/responses -------------------------------------------------------------------------


def test_responses(dx: DxProcess) -> None:
    reply = oa(dx).responses.create(model="fake", input="hi there", instructions="Be brief.")
    assert reply.output_text == TEXT and reply.status == "completed"
    assert reply.usage and reply.usage.input_tokens == 2 and reply.usage.output_tokens == 6
    assert last_request(dx, "fake")["messages"][0] == {"role": "system", "content": "Be brief."}
    cut = oa(dx).responses.create(model="fake", input="hi", max_output_tokens=2)
    assert cut.status == "incomplete" and cut.incomplete_details
    assert cut.incomplete_details.reason == "max_output_tokens"


def test_responses_stream(dx: DxProcess) -> None:
    stream = oa(dx).responses.create(model="fake", input="hi", stream=True)
    events = list(stream)
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == TEXT
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    done = events[-1].response  # type: ignore[union-attr]
    assert done.output_text == TEXT and done.usage and done.usage.output_tokens == 6


def test_responses_function_calls(dx: DxProcess) -> None:
    tools = [
        {
            "type": "function",
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ]
    reply = oa(dx).responses.create(model="fake", input="TOOL", tools=tools)  # type: ignore[arg-type]
    (call,) = [o for o in reply.output if o.type == "function_call"]
    assert call.name == "get_weather" and call.arguments == '{"city": "Paris"}'
    events = list(
        oa(dx).responses.create(
            model="fake",
            input="TOOL",
            tools=tools,  # type: ignore[arg-type]
            stream=True,
        )
    )
    args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert args == '{"city": "Paris"}'
    followup = oa(dx).responses.create(model="fake", input=[
        {"role": "user", "content": "weather in Paris?"},
        {"type": "function_call", "call_id": call.call_id, "name": "get_weather",
         "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
    ])  # fmt: skip
    assert followup.output_text == TEXT
    sent = last_request(dx, "fake")["messages"]
    assert sent[1]["tool_calls"][0]["id"] == call.call_id
    assert sent[2] == {"role": "tool", "tool_call_id": call.call_id, "content": "sunny"}


def test_responses_refusals(dx: DxProcess) -> None:
    with pytest.raises(openai.BadRequestError) as unknown:
        oa(dx).responses.create(model="fake", input="hi", previous_response_id="resp_1")
    assert "resp_1' not found" in unknown.value.message
    with pytest.raises(openai.NotFoundError):
        oa(dx).responses.create(model="nope", input="hi")
    with pytest.raises(openai.NotFoundError):
        oa(dx).responses.retrieve("resp_nope")


# -- what Claude Code and Codex send (reference/AGENTS.md), with the fake engine -------------

CLAUDE_CODE = {
    "model": "fake",
    "max_tokens": 32000,
    "stream": True,
    "system": [
        {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.332;"},
        {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}},
    ],
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "<system-reminder>be nice</system-reminder>\n"},
                {"type": "text", "text": "TOOL please", "cache_control": {"type": "ephemeral"}},
            ],
        },
        {
            "role": "system",
            "content": [
                {
                    "type": "text",
                    "text": "# Environment\nlinux",
                    "cache_control": {"type": "ephemeral"},
                }
            ],
        },
    ],
    "tools": [
        {**WEATHER, "cache_control": {"type": "ephemeral"}},
        {
            "name": "Later",
            "description": "d",
            "input_schema": {"type": "object"},
            "defer_loading": True,
        },
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 3},
        {"type": "bash_20250124", "name": "bash"},
    ],
    "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
    "metadata": {"user_id": '{"device_id":"d","session_id":"s"}'},
    "thinking": {"type": "adaptive", "display": "omitted"},
    "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
    "output_config": {"effort": "high"},
}
BETA = {"anthropic-version": "2023-06-01", "anthropic-beta": "claude-code-20250219,"
        "interleaved-thinking-2025-05-14,context-management-2025-06-27"}  # fmt: skip


def sse(text: str) -> list[tuple[str, dict[str, object]]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def test_claude_code_request(dx: DxProcess) -> None:
    """Its first request, as sent: served, streamed in Anthropic's order, with the tool call
    back; the system-role message joins the system prompt; server tools, deferred tools and
    the fields an engine has no use for are dropped, not refused."""
    r = httpx.post(dx.url + "/v1/messages?beta=true", json=CLAUDE_CODE,
                   headers={**dx.auth, **BETA}, timeout=30)  # fmt: skip
    assert r.status_code == 200, r.text
    events = sse(r.text)
    names = [e for e, _ in events]
    assert names[:2] == ["message_start", "ping"] and names[-2:] == [
        "message_delta",
        "message_stop",
    ]
    assert names.count("content_block_start") == names.count("content_block_stop") == 1
    start = next(d for e, d in events if e == "content_block_start")
    assert start["content_block"]["type"] == "tool_use"  # type: ignore[index]
    partial = "".join(d["delta"]["partial_json"] for e, d in events  # type: ignore[index]
                      if e == "content_block_delta")  # fmt: skip
    assert json.loads(partial) == {"city": "Paris"}
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"  # type: ignore[index]
    sent = last_request(dx, "fake")
    assert sent["messages"] == [
        {"role": "system",
         "content": "x-anthropic-billing-header: cc_version=2.1.332;\nYou are Claude Code."
                    "\n\n# Environment\nlinux"},
        {"role": "user", "content": "<system-reminder>be nice</system-reminder>\nTOOL please"},
    ]  # fmt: skip
    assert [t["function"]["name"] for t in sent["tools"]] == ["get_weather"]
    assert sent["max_tokens"] == 32000 and "chat_template_kwargs" not in sent
    assert "thinking" not in sent and "metadata" not in sent


def test_claude_code_tool_round_trip(dx: DxProcess) -> None:
    """tool_use -> tool_result, with the blocks a later turn carries (thinking, an image
    inside the result, a document): mapped or dropped, and the engine gets tool messages."""
    body = {
        **CLAUDE_CODE,
        "stream": False,
        "messages": [
            *CLAUDE_CODE["messages"],  # type: ignore[misc]
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                 "input": {"city": "Paris"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [
                    {"type": "text", "text": "sunny"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                 "data": "aGk="}}]},
                {"type": "document", "source": {"type": "text", "media_type": "text/plain",
                                                "data": "notes"}, "title": "n.txt"},
                {"type": "document", "source": {"type": "base64",
                                                "media_type": "application/pdf", "data": "aGk="}},
                {"type": "text", "text": "thanks"}]},
        ],
    }  # fmt: skip
    r = httpx.post(dx.url + "/v1/messages?beta=true", json=body, headers={**dx.auth, **BETA})
    assert r.status_code == 200, r.text
    assert r.json()["content"][0] == {"type": "text", "text": TEXT}
    sent = last_request(dx, "fake")["messages"]
    assert sent[2]["tool_calls"][0]["id"] == "toolu_1" and sent[2]["content"] == ""
    assert sent[3] == {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"}
    assert sent[4] == {"role": "user", "content": "n.txt\n\nnotesthanks"}


def test_count_tokens_fallback(dx: DxProcess) -> None:
    """The fake engine has no tokenizer: an estimate, never an error."""
    counted = claude(dx).messages.count_tokens(
        model="fake", messages=[{"role": "user", "content": "hello there"}]
    )
    assert counted.input_tokens > 0


CODEX_TOOLS = [
    {"type": "function", "name": "exec_command", "description": "Run a command",
     "strict": False, "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}}},
    {"type": "namespace", "name": "multi_agent_v1", "description": "agents", "tools": [
        {"type": "function", "name": "get_weather", "description": "Weather",
         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]},
    {"type": "custom", "name": "apply_patch", "description": "Patch files",
     "format": {"type": "grammar", "syntax": "lark", "definition": "start: /.+/"}},
    {"type": "web_search", "external_web_access": False},
    {"type": "local_shell"},
]  # fmt: skip


def codex_body(text: str, **extra: object) -> dict[str, object]:
    return {
        "model": "fake", "stream": True, "tools": CODEX_TOOLS, "tool_choice": "auto",
        "parallel_tool_calls": True, "reasoning": {"summary": "auto"}, "store": False,
        "include": ["reasoning.encrypted_content"], "prompt_cache_key": "k",
        "client_metadata": {"x": "y"},
        "input": [
            {"type": "message", "role": "developer",
             "content": [{"type": "input_text", "text": "<permissions>none</permissions>"}]},
            {"type": "message", "role": "user",
             "content": [{"type": "input_text", "text": "<environment_context/>"}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]},
        ],
        **extra,
    }  # fmt: skip


def test_codex_request(dx: DxProcess) -> None:
    """Codex's request as sent: the namespace's function called back with its namespace,
    the custom tool a function of one string, the hosted tools dropped."""
    r = httpx.post(dx.url + "/v1/responses", json=codex_body("TOOL"), headers=dx.auth,
                   timeout=30)  # fmt: skip
    assert r.status_code == 200, r.text
    events = sse(r.text)
    assert events[-1][0] == "response.completed"
    (call,) = events[-1][1]["response"]["output"]  # type: ignore[index]
    assert call["type"] == "function_call" and call["name"] == "get_weather"
    assert call["namespace"] == "multi_agent_v1" and json.loads(call["arguments"])
    sent = last_request(dx, "fake")
    assert [t["function"]["name"] for t in sent["tools"]] == [
        "exec_command", "get_weather", "apply_patch"]  # fmt: skip
    assert sent["tools"][2]["function"]["parameters"]["required"] == ["input"]
    assert "lark grammar" in sent["tools"][2]["function"]["description"]
    assert sent["messages"][0] == {"role": "system", "content": "<permissions>none</permissions>"}
    assert sent["messages"][1]["content"] == "<environment_context/>\n\nTOOL"
    # The next turn: the call and its output, a custom tool's call and output, reasoning.
    turn = codex_body("thanks", stream=False)
    turn["input"] = [*turn["input"],  # type: ignore[misc]
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "x"},
        {k: call[k] for k in ("type", "call_id", "name", "arguments")},
        {"type": "function_call_output", "call_id": call["call_id"], "output": "sunny"},
        {"type": "custom_tool_call", "call_id": "c2", "name": "apply_patch", "input": "*** x"},
        {"type": "custom_tool_call_output", "call_id": "c2", "output": "done"},
        {"type": "web_search_call", "id": "ws_1", "status": "completed"},
    ]  # fmt: skip
    r = httpx.post(dx.url + "/v1/responses", json=turn, headers=dx.auth)
    assert r.status_code == 200, r.text
    assert r.json()["output"][0]["content"][0]["text"] == TEXT
    sent = last_request(dx, "fake")["messages"]
    assert sent[2]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert sent[3]["role"] == "tool" and sent[3]["content"] == "sunny"
    assert json.loads(sent[4]["tool_calls"][0]["function"]["arguments"]) == {"input": "*** x"}
    assert sent[5] == {"role": "tool", "tool_call_id": "c2", "content": "done"}


def test_custom_tool_call_back(dx: DxProcess) -> None:
    tools = [{"type": "custom", "name": "get_weather", "description": "freeform"}]
    reply = oa(dx).responses.create(model="fake", input="TOOL", tools=tools)  # type: ignore[list-item]
    (call,) = reply.output
    assert call.type == "custom_tool_call" and call.name == "get_weather"
    assert json.loads(call.input) == {"city": "Paris"}  # no `input` key: the text as sent
    events = list(oa(dx).responses.create(model="fake", input="TOOL", tools=tools, stream=True))  # type: ignore[list-item]
    kinds = [e.type for e in events]
    assert "response.custom_tool_call_input.done" in kinds
    assert "response.function_call_arguments.delta" not in kinds


def test_stored_responses(dx: DxProcess) -> None:
    o = oa(dx)
    first = o.responses.create(model="fake", input="hi there", instructions="Be brief.")
    assert first.store is True
    follow = o.responses.create(model="fake", input="and?", previous_response_id=first.id)
    sent = last_request(dx, "fake")["messages"]
    assert sent == [
        {"role": "user", "content": "hi there"},
        {"role": "assistant", "content": TEXT},
        {"role": "user", "content": "and?"},
    ]  # instructions are not carried over, as in OpenAI's API
    assert o.responses.retrieve(follow.id).output_text == TEXT
    items = o.responses.input_items.list(follow.id)
    assert [i.type for i in items.data] == ["message", "message", "message"]
    assert items.data[0].content[0].text == "and?"  # type: ignore[union-attr]  # newest first
    streamed = list(o.responses.create(model="fake", input="more", stream=True,
                                       previous_response_id=follow.id))  # fmt: skip
    assert len(last_request(dx, "fake")["messages"]) == 5
    done = streamed[-1].response  # type: ignore[union-attr]
    assert o.responses.retrieve(done.id).id == done.id
    deleted = o.responses.delete(follow.id)
    assert deleted is None or getattr(deleted, "deleted", True)
    with pytest.raises(openai.NotFoundError):
        o.responses.retrieve(follow.id)
    with pytest.raises(openai.NotFoundError):
        o.responses.delete(follow.id)
    gone = o.responses.create(model="fake", input="x", store=False)
    with pytest.raises(openai.BadRequestError):
        o.responses.create(model="fake", input="y", previous_response_id=gone.id)
