"""The embedded default (dxproxy/config/default.yaml: SmolLM2 on a real llama-server, 8192
tokens a request, the smollm2-tools template, embeddings on) as Open WebUI uses it (issue 22):

- a chat longer than the context is trimmed, oldest turns first, and answered (official
  `ollama` and `openai` clients, Anthropic's API), with X-DX-Trimmed-* headers and a log line;
- a single message too long for the context is a 400 giving the sizes;
- a request carrying ~25 KB of tools (Open WebUI's built-in ones: ~6k tokens) is served;
- /api/embed and chat are served by the same entry (a chat GGUF, no pooling of its own).

The model entry is the embedded default's own, read from the package; one dx for the module.
Measured on 2026-12-07 at load 12 to 30 (the machine ~30 times slower than quiet): the
~8k-token prefill of the first long chat 448 s, the tools request 432 s, the rest seconds
(the engine's prompt cache holds the trimmed chat); on a quiet machine, a few seconds each.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest
import yaml

from tests.conftest import DxProcess, start_dx

pytestmark = pytest.mark.integration

GREEDY = {"temperature": 0, "seed": 1, "num_predict": 8}


@pytest.fixture(scope="module")
def dx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DxProcess]:
    text = resources.files("dxproxy.config").joinpath("default.yaml").read_text()
    models = yaml.safe_load(text)["models"]
    assert models["smollm2"]["context"] == 8192
    proc = start_dx(tmp_path_factory.mktemp("long"), models, wait=180)
    yield proc
    proc.stop()


def long_chat(turns: int = 12) -> list[dict[str, str]]:
    """About 850 tokens a turn: 12 turns are past the 8192-token context."""
    out = [{"role": "system", "content": "You are a terse assistant. Answer in one sentence."}]
    for t in range(turns):
        notes = " ".join(f"Note {t}.{i}: the river passes mill {i} at dawn." for i in range(55))
        out += [
            {"role": "user", "content": f"Remember these notes. {notes}"},
            {"role": "assistant", "content": f"I will remember the notes of part {t}."},
        ]
    out.append({"role": "user", "content": "What is the capital of France?"})
    return out


def trimmed(headers: httpx.Headers | dict[str, str], sent: int) -> tuple[int, int]:
    tokens, messages = int(headers["x-dx-trimmed-tokens"]), int(headers["x-dx-trimmed-messages"])
    # Whole turns (a user message and its answer) of the oldest, never the latest or the system.
    assert tokens > 0 and 0 < messages < sent - 1 and messages % 2 == 0
    return tokens, messages


def test_ollama_long_chat_is_trimmed_and_answered(dx: DxProcess) -> None:
    seen: list[httpx.Response] = []
    client = ollama.Client(host=dx.url, headers=dx.auth, timeout=600,
                           event_hooks={"response": [seen.append]})  # fmt: skip
    messages = long_chat()
    reply = client.chat(model="smollm2", messages=messages, options=GREEDY)
    assert reply.message.content
    tokens, dropped = trimmed(seen[-1].headers, len(messages))
    # What was kept fits with the reply's room (num_predict), within a turn of filling it.
    assert 8192 - 8 - 900 < reply.prompt_eval_count <= 8192 - 8
    assert any(
        f"smollm2: chat trimmed to fit the context: dropped the {dropped} oldest messages "
        f"({tokens} tokens)" in line
        for line in dx.lines
    )
    # Streamed too: the headers leave before the first chunk.
    parts = list(client.chat(model="smollm2", messages=messages, options=GREEDY, stream=True))
    assert parts[-1].done and "".join(p.message.content for p in parts)
    assert trimmed(seen[-1].headers, len(messages)) == (tokens, dropped)


def test_openai_long_chat_is_trimmed_and_answered(dx: DxProcess) -> None:
    oa = openai.OpenAI(base_url=dx.url + "/v1", api_key=dx.key, max_retries=0, timeout=600)
    messages = long_chat()  # as above: the engine's prompt cache holds it
    raw = oa.chat.completions.with_raw_response.create(
        model="smollm2",
        messages=messages,
        max_tokens=8,
        temperature=0,  # type: ignore[arg-type]
    )
    trimmed(raw.headers, len(messages))
    completion = raw.parse()
    assert completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.prompt_tokens <= 8192 - 8


def test_anthropic_long_chat_is_trimmed(dx: DxProcess) -> None:
    messages = long_chat()
    body = {
        "model": "smollm2",
        "max_tokens": 8,
        "system": messages[0]["content"],
        "messages": messages[1:],
    }
    r = httpx.post(dx.url + "/v1/messages", json=body, timeout=600,
                   headers={"x-api-key": dx.key, "anthropic-version": "2023-06-01"})  # fmt: skip
    assert r.status_code == 200, r.text
    trimmed(r.headers, len(messages))
    assert r.json()["content"][0]["text"]


def test_a_message_too_long_by_itself_is_a_400_with_the_sizes(dx: DxProcess) -> None:
    huge = " ".join(f"word{i}" for i in range(9000))  # ~18k tokens
    oa = openai.OpenAI(base_url=dx.url + "/v1", api_key=dx.key, max_retries=0, timeout=600)
    with pytest.raises(openai.BadRequestError) as err:
        oa.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": huge}])
    message = str(err.value)
    assert "the latest message is too long for smollm2" in message
    assert "context of 8192 tokens holds 7168 besides the 1024 kept for the reply" in message
    needed = int(message.split(" it takes ")[1].split(" tokens")[0])
    assert needed > 8192
    client = ollama.Client(host=dx.url, headers=dx.auth, timeout=600)
    with pytest.raises(ollama.ResponseError) as oerr:
        client.chat(model="smollm2", messages=[{"role": "user", "content": huge}])
    assert oerr.value.status_code == 400 and f"it takes {needed} tokens" in oerr.value.error


def open_webui_tools() -> list[dict[str, Any]]:
    """Tools shaped as Open WebUI 0.12's built-in ones (names from its browser chat), with
    descriptions as long as theirs: ~25 KB in all."""
    names = ["get_current_timestamp", "calculate_timestamp", "search_web", "fetch_url",
             "search_knowledge_bases", "query_knowledge_bases", "search_knowledge_files",
             "view_knowledge_file", "search_notes", "view_note", "write_note", "replace_note",
             "search_chats", "view_chat", "search_memories", "add_memory", "replace_memory",
             "delete_memory", "list_memories", "generate_image", "edit_image",
             "execute_code", "view_skill", "list_channels"]  # fmt: skip
    tools = []
    for name in names:
        words = name.replace("_", " ")
        props = {
            f"{p}": {"type": "string", "description": f"The {p} for {words}. " * 4}
            for p in ("query", "scope", "format", "limit")
        }
        tools.append({
            "type": "function",
            "function": {
                "name": name,
                "description": f"Use this to {words} for the user when it helps. " * 5,
                "parameters": {"type": "object", "properties": props, "required": ["query"]},
            },
        })  # fmt: skip
    return tools


def test_open_webui_tools_are_accepted_and_answered(dx: DxProcess) -> None:
    tools = open_webui_tools()
    assert 20_000 < len(json.dumps(tools)) < 32_000
    body = {
        "model": "smollm2:latest",
        "messages": [{"role": "user", "content": "Say hello."}],
        "tools": tools,
        "stream": True,
        "options": {**GREEDY, "num_predict": 24},  # room for a whole call, if it makes one
    }
    with httpx.stream("POST", dx.url + "/api/chat", json=body, headers=dx.auth,
                      timeout=600) as r:  # fmt: skip
        assert r.status_code == 200, r.read()
        lines = [json.loads(x) for x in r.iter_lines() if x]
    assert lines[-1]["done"] is True
    assert lines[-1]["prompt_eval_count"] > 4000  # the tools reached the prompt
    said = "".join(x["message"].get("content", "") for x in lines)
    calls = [c for x in lines for c in x["message"].get("tool_calls") or ()]
    assert said or calls  # the model's text (or a call of one of the tools)


def test_embed_and_chat_from_the_same_entry(dx: DxProcess, tmp_path: Path) -> None:
    client = ollama.Client(host=dx.url, headers=dx.auth, timeout=600)
    vectors = client.embed(model="smollm2", input=["the river", "the mill"]).embeddings
    assert len(vectors) == 2 and len(vectors[0]) == 576 and vectors[0] != vectors[1]
    oa = openai.OpenAI(base_url=dx.url + "/v1", api_key=dx.key, max_retries=0, timeout=600)
    data = oa.embeddings.create(model="smollm2", input="the river").data
    assert len(data[0].embedding) == 576
    question = [{"role": "user", "content": "What is the capital of France?"}]
    reply = client.chat(model="smollm2", options=GREEDY, messages=question)
    assert reply.message.content
