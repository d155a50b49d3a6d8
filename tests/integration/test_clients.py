"""The official `ollama` and `openai` Python clients against a real `dx serve` with native
llama-server serving the real SmolLM2-135M model: every call a user of those clients makes.

Token counts come from the engine (llama-server reports usage and timings), so they are
checked exactly where the engine fixes them and for consistency everywhere else.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import datetime

import httpx
import ollama
import openai
import pytest

from tests.conftest import ROOT, DxProcess, smollm2_path, start_dx

pytestmark = pytest.mark.integration

TOOLS_TEMPLATE = ROOT / "tests" / "data" / "chatml-tools.jinja"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"temperature": 0, "seed": 1, "num_predict": 24}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "The city"}},
            "required": ["city"],
        },
    },
}


@pytest.fixture(scope="module")
def dx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DxProcess]:
    gguf = str(smollm2_path())
    models = {
        "smollm2": {"engine": "llamacpp", "model": gguf, "context": 2048, "aliases": ["smol"]},
        # SmolLM2's own template has no tool syntax; a ChatML one with Hermes-style tool
        # calls (what llama-server parses) makes the same model a tool-calling one.
        "smollm2-tools": {"engine": "llamacpp", "model": gguf, "context": 2048,
                          "args": ["--chat-template-file", str(TOOLS_TEMPLATE)]},
        # llama-server serves embeddings of a chat model with a pooling type set.
        "smollm2-embed": {"engine": "llamacpp", "model": gguf, "context": 512,
                          "embeddings": True, "args": ["--pooling", "mean"]},
    }  # fmt: skip
    proc = start_dx(tmp_path_factory.mktemp("clients"), models, wait=180)
    yield proc
    proc.stop()


def client(dx: DxProcess) -> ollama.Client:
    return ollama.Client(host=dx.url, headers=dx.auth, timeout=120)


def oa(dx: DxProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=dx.url + "/v1", api_key=dx.key, max_retries=0, timeout=120)


def check_final(final: ollama.ChatResponse | ollama.GenerateResponse) -> None:
    assert final.done is True and final.done_reason in ("stop", "length")
    for name in ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration",
                 "eval_count", "eval_duration"):  # fmt: skip
        value = getattr(final, name)
        assert isinstance(value, int) and value >= 0, (name, value)
    assert final.prompt_eval_count and final.prompt_eval_count > 5  # the engine's own count
    assert 0 < (final.eval_count or 0) <= 24
    assert (final.total_duration or 0) > (final.eval_duration or 0) > 0
    assert datetime.fromisoformat(str(final.created_at).replace("Z", "+00:00"))


# -- ollama ------------------------------------------------------------------------------


def test_chat_streamed_and_not(dx: DxProcess) -> None:
    chunks = list(client(dx).chat(model="smollm2", messages=QUESTION, stream=True,
                                  options=GREEDY))  # fmt: skip
    deltas = [c for c in chunks if not c.done]
    assert len(deltas) >= 2 and all(c.model == "smollm2:latest" for c in chunks)
    streamed = "".join(c.message.content or "" for c in deltas)
    final = chunks[-1]
    check_final(final)
    one = client(dx).chat(model="SMOL:latest", messages=QUESTION, options=GREEDY)
    check_final(one)
    assert one.message.content == streamed and streamed.strip()
    assert one.prompt_eval_count == final.prompt_eval_count
    assert one.eval_count == final.eval_count


def test_generate(dx: DxProcess) -> None:
    reply = client(dx).generate(model="smollm2", prompt="What is the capital of France?",
                                options=GREEDY)  # fmt: skip
    check_final(reply)
    chunks = list(client(dx).generate(model="smollm2", prompt="What is the capital of France?",
                                      options=GREEDY, stream=True))  # fmt: skip
    assert "".join(c.response for c in chunks) == reply.response
    raw = client(dx).generate(model="smollm2", prompt="The capital of France is", raw=True,
                              options={"temperature": 0, "num_predict": 8})  # fmt: skip
    assert "Paris" in raw.response and raw.eval_count == 8 and raw.done_reason == "length"


def test_list_show_ps(dx: DxProcess) -> None:
    c = client(dx)
    names = sorted(m.model or "" for m in c.list().models)
    assert names == ["smollm2-embed:latest", "smollm2-tools:latest", "smollm2:latest"]
    shown = c.show("smollm2")
    assert (shown.modelinfo or {})["llama.context_length"] == 2048
    assert shown.details.parameter_size == "135M" and shown.details.quantization_level == "Q4_1"
    # Its template has no tool syntax. It embeds (every llama-server model does, as in
    # Ollama) but is listed as Ollama lists a chat model.
    assert shown.capabilities == ["completion"]
    assert c.show("smollm2-tools").capabilities == ["completion", "tools"]
    assert "<tool_call>" in (c.show("smollm2-tools").template or "")
    assert c.show("smollm2-embed").capabilities == ["completion", "embedding"]
    running = {m.model: m for m in c.ps().models}
    assert set(running) == {"smollm2:latest", "smollm2-embed:latest", "smollm2-tools:latest"}
    assert running["smollm2:latest"].context_length == 2048
    assert running["smollm2:latest"].size_vram == 0


def test_keep_alive_load_and_unload(dx: DxProcess) -> None:
    c = client(dx)
    assert c.generate(model="smollm2", prompt="", keep_alive="5m").done_reason == "load"
    assert c.generate(model="smollm2", prompt="", keep_alive=0).done_reason == "unload"
    assert c.chat(model="smollm2", messages=[], keep_alive=0).done_reason == "unload"
    # An unloaded model comes back at its next request.
    reply = c.chat(model="smollm2", messages=QUESTION, options=GREEDY, keep_alive="10m")
    assert reply.message.content


def test_embed(dx: DxProcess) -> None:
    c = client(dx)
    reply = c.embed(model="smollm2-embed", input=["The sky is blue.", "Paris is in France."])
    assert len(reply.embeddings) == 2 and all(len(v) == 576 for v in reply.embeddings)
    for v in reply.embeddings:
        assert math.isclose(math.sqrt(sum(x * x for x in v)), 1.0, rel_tol=1e-6)
    assert reply.embeddings[0] != reply.embeddings[1]
    assert reply.prompt_eval_count and reply.prompt_eval_count >= 8
    again = c.embed(model="smollm2-embed", input="The sky is blue.")
    assert again.embeddings[0] == pytest.approx(reply.embeddings[0], abs=1e-5)
    short = c.embed(model="smollm2-embed", input="The sky is blue.", dimensions=64)
    assert len(short.embeddings[0]) == 64
    legacy = c.embeddings(model="smollm2-embed", prompt="The sky is blue.")
    assert len(legacy.embedding) == 576
    # llama-server with --embeddings still generates: the model is listed with both.
    assert c.chat(model="smollm2-embed", messages=QUESTION, options=GREEDY).message.content
    # Any llama-server model embeds, as with Ollama (DX adds mean pooling to a chat model).
    chat_model = c.embed(model="smollm2", input="The sky is blue.")
    assert chat_model.embeddings[0] == pytest.approx(reply.embeddings[0], abs=1e-4)


def test_tools_reach_the_model(dx: DxProcess) -> None:
    """Tools are rendered into the prompt (they were silently dropped before): the same
    question costs more prompt tokens with a tool than without. A model whose template has
    no tool syntax says so instead of dropping them."""
    c = client(dx)
    question = [{"role": "user", "content": "What is the weather in Paris?"}]
    with pytest.raises(ollama.ResponseError) as err:
        c.chat(model="smollm2", messages=question, tools=[WEATHER_TOOL])
    assert err.value.status_code == 400 and "does not support tools" in err.value.error
    plain = c.chat(model="smollm2-tools", messages=question, options=GREEDY)
    with_tool = c.chat(model="smollm2-tools", messages=question, options=GREEDY,
                       tools=[WEATHER_TOOL])  # fmt: skip
    assert (with_tool.prompt_eval_count or 0) > (plain.prompt_eval_count or 0) + 50
    for call in with_tool.message.tool_calls or []:  # the tiny model may or may not call
        assert isinstance(call.function.arguments, dict)
    # A tool result without tool_call_id (LangChain, the official client): answered, not 502.
    turns = [
        *question,
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "Sunny, 24 degrees", "tool_name": "get_weather"},
    ]  # fmt: skip
    answer = c.chat(model="smollm2-tools", messages=turns, options=GREEDY, tools=[WEATHER_TOOL])
    assert answer.done and (answer.message.content or answer.message.tool_calls)


def test_structured_output(dx: DxProcess) -> None:
    """JSON mode and JSON-schema output are grammar-constrained by the engine: what comes
    back parses, and follows the schema. (How much the tiny model says is its own.)"""
    c = client(dx)
    ask = [{"role": "user", "content": "What is the capital of France? Answer as JSON."}]
    opts = {"temperature": 0, "num_predict": 128, "repeat_last_n": 128, "repeat_penalty": 1.5}
    as_json = c.chat(model="smollm2", messages=ask, format="json", options=opts)
    assert as_json.done_reason == "stop"
    assert isinstance(json.loads(as_json.message.content or ""), dict)
    schema = {
        "type": "object",
        "properties": {"capital": {"type": "string", "maxLength": 20},
                       "population": {"type": "integer"}},
        "required": ["capital", "population"],
        "additionalProperties": False,
    }  # fmt: skip
    reply = c.chat(model="smollm2", messages=ask, format=schema, options=opts)
    data = json.loads(reply.message.content or "")
    assert set(data) == {"capital", "population"}
    assert isinstance(data["capital"], str) and len(data["capital"]) <= 20
    assert isinstance(data["population"], int)
    gen = c.generate(model="smollm2", prompt="France as JSON", format=schema, options=opts)
    assert set(json.loads(gen.response)) == {"capital", "population"}
    o = oa(dx)
    for fmt in (
        {"type": "json_object"},
        {"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
    ):
        out = o.chat.completions.create(
            model="smollm2",
            messages=ask,
            temperature=0,
            max_tokens=128,
            response_format=fmt,  # type: ignore[arg-type]
            extra_body={"repeat_penalty": 1.5, "repeat_last_n": 128},
        )
        assert isinstance(json.loads(out.choices[0].message.content or ""), dict)


def test_logprobs(dx: DxProcess) -> None:
    reply = client(dx).chat(model="smollm2", messages=QUESTION, options=GREEDY, logprobs=True,
                            top_logprobs=2)  # fmt: skip
    lp = reply.logprobs or []
    assert len(lp) == reply.eval_count
    assert "".join(p.token for p in lp) == reply.message.content
    assert all(p.logprob <= 0 and len(p.top_logprobs or []) == 2 for p in lp)


def test_refusals(dx: DxProcess) -> None:
    c = client(dx)
    with pytest.raises(ollama.ResponseError) as think:
        c.chat(model="smollm2", messages=QUESTION, think=True)
    assert think.value.status_code == 400 and "does not support thinking" in think.value.error
    # num_ctx above the served context is served with it, as Ollama caps it; only a prompt
    # that does not fit is refused, with both sizes.
    assert c.chat(model="smollm2", messages=QUESTION, options={"num_ctx": 4096, **GREEDY}).done
    with pytest.raises(ollama.ResponseError) as ctx:
        c.generate(model="smollm2", prompt="word " * 3000, options={"num_ctx": 4096})
    assert ctx.value.status_code == 400 and "2048" in ctx.value.error
    with pytest.raises(ollama.ResponseError) as vision:
        c.chat(model="smollm2", messages=[{"role": "user", "content": "What is this?",
                                           "images": ["aGVsbG8="]}])  # fmt: skip
    assert vision.value.status_code == 400 and "does not support images" in vision.value.error
    with pytest.raises(ollama.ResponseError) as pull:
        c.pull("llama3.2")
    assert pull.value.status_code == 404 and "models:" in pull.value.error


# -- openai ------------------------------------------------------------------------------


def test_openai_chat_completions_embeddings(dx: DxProcess) -> None:
    o = oa(dx)
    reply = o.chat.completions.create(model="smollm2", messages=QUESTION, temperature=0,
                                      max_tokens=24)  # fmt: skip
    content = reply.choices[0].message.content
    assert content and reply.usage and reply.usage.prompt_tokens > 5
    stream = list(o.chat.completions.create(model="smollm2", messages=QUESTION, temperature=0,
                                            max_tokens=24, stream=True))  # fmt: skip
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == content
    assert all(c.usage is None for c in stream)  # not asked for: not sent
    counted = list(o.chat.completions.create(
        model="smollm2", messages=QUESTION, temperature=0, max_tokens=24, stream=True,
        stream_options={"include_usage": True}))  # fmt: skip
    assert counted[-1].usage is not None
    assert counted[-1].usage.completion_tokens == reply.usage.completion_tokens
    text = o.completions.create(model="smollm2", prompt="The capital of France is",
                                temperature=0, max_tokens=8)  # fmt: skip
    assert "Paris" in text.choices[0].text and text.usage and text.usage.completion_tokens == 8
    emb = o.embeddings.create(model="smollm2-embed", input=["a cat", "a dog"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == 576
    assert emb.usage.prompt_tokens > 0
    with pytest.raises(openai.BadRequestError):
        o.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens="many")  # type: ignore[arg-type]


def test_version_and_root(dx: DxProcess) -> None:
    assert httpx.get(dx.url + "/").text == "Ollama is running"
    version = httpx.get(dx.url + "/api/version", headers=dx.auth).json()["version"]
    assert all(part.isdigit() for part in version.split("."))


# -- translated dialects: Anthropic Messages, OpenAI Responses -------------------------------


def test_anthropic_messages(dx: DxProcess) -> None:
    import anthropic

    claude = anthropic.Anthropic(base_url=dx.url, api_key=dx.key, max_retries=0, timeout=120)
    ask = [{"role": "user", "content": "What is the capital of France?"}]
    # The current client has no sampling parameters any more; DX still takes Anthropic's.
    greedy = {"temperature": 0}
    reply = claude.messages.create(model="smollm2", max_tokens=24, messages=ask,
                                   extra_body=greedy)  # fmt: skip
    text = reply.content[0].text  # type: ignore[union-attr]
    assert text.strip() and reply.usage.input_tokens > 5
    assert 0 < reply.usage.output_tokens <= 24
    with claude.messages.stream(model="smollm2", max_tokens=24, messages=ask,
                                extra_body=greedy) as stream:  # fmt: skip
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == text and final.usage.output_tokens == reply.usage.output_tokens


def test_openai_responses(dx: DxProcess) -> None:
    o = oa(dx)
    reply = o.responses.create(model="smollm2", input="What is the capital of France?",
                               temperature=0, max_output_tokens=24)  # fmt: skip
    assert reply.output_text.strip() and reply.usage and reply.usage.input_tokens > 5
    events = list(o.responses.create(model="smollm2", input="What is the capital of France?",
                                     temperature=0, max_output_tokens=24, stream=True))  # fmt: skip
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == reply.output_text
    assert events[-1].type in ("response.completed", "response.incomplete")
