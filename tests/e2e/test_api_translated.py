"""Anthropic's Messages API (/v1/messages) and OpenAI's Responses API (/v1/responses),
translated to chat completions: through the official `anthropic` and `openai` clients, in
front of the fake engine, streamed and not, with tools and usage."""

from __future__ import annotations

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
    with pytest.raises(openai.BadRequestError) as stateful:
        oa(dx).responses.create(model="fake", input="hi", previous_response_id="resp_1")
    assert "stateless" in stateful.value.message
    with pytest.raises(openai.BadRequestError) as tool:
        oa(dx).responses.create(model="fake", input="hi", tools=[{"type": "web_search"}])  # type: ignore[list-item]
    assert "only function tools" in tool.value.message
    with pytest.raises(openai.NotFoundError):
        oa(dx).responses.create(model="nope", input="hi")
