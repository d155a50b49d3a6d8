"""Chats that outgrow the context (dxproxy/api/fit.py) through a real `dx serve`, in every
dialect, against the fake engine, whose /apply-template and /tokenize count a token per word
(the real engine's counts: tests/integration/test_long_chats.py). What reaches the engine is
read back from its /last."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import DxProcess, fake_model, start_dx

CONTEXT = 4096


@pytest.fixture(scope="module")
def dx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DxProcess]:
    proc = start_dx(tmp_path_factory.mktemp("trim"), {"fake": fake_model(context=CONTEXT)})
    yield proc
    proc.stop()


def engine(dx: DxProcess, path: str) -> dict[str, Any]:
    (url,) = [f"http://127.0.0.1:{p}" for p in _engine_ports(dx)]
    return httpx.get(url + path, timeout=10).json()


def _engine_ports(dx: DxProcess) -> list[str]:
    import psutil

    out = []
    for child in psutil.Process(dx.proc.pid).children():
        cmd = child.cmdline()
        if "--port" in cmd:
            out.append(cmd[cmd.index("--port") + 1])
    return out


def long_chat(turns: int = 10, words: int = 500) -> list[dict[str, str]]:
    out = [{"role": "system", "content": "Be brief."}]
    for t in range(turns):
        out += [
            {"role": "user", "content": " ".join(f"w{t}x{i}" for i in range(words))},
            {"role": "assistant", "content": f"Noted part {t}."},
        ]
    out.append({"role": "user", "content": "And now?"})
    return out


def check_trimmed(dx: DxProcess, r: httpx.Response, sent: list[dict[str, str]]) -> None:
    assert r.status_code == 200, r.text
    tokens, dropped = int(r.headers["x-dx-trimmed-tokens"]), int(r.headers["x-dx-trimmed-messages"])
    kept = engine(dx, "/last")["messages"]
    assert len(kept) == len(sent) - dropped and dropped % 2 == 0 and dropped > 0
    assert kept[0]["content"] == "Be brief." and kept[-1]["content"] == "And now?"
    assert kept[1]["role"] == "user"  # whole turns went, the oldest first
    assert kept[1]["content"] == sent[1 + dropped]["content"]
    # Each turn is 500 + 3 words and 2 lines: exactly the turns that had to go.
    assert tokens == dropped // 2 * 505


def test_a_short_chat_is_not_counted(dx: DxProcess) -> None:
    before = engine(dx, "/stats")["tokenized"]
    body = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "stream": False}
    r = httpx.post(dx.url + "/api/chat", json=body, headers=dx.auth, timeout=30)
    assert r.status_code == 200 and "x-dx-trimmed-tokens" not in r.headers
    assert engine(dx, "/stats")["tokenized"] == before


def test_a_chat_that_fits_after_a_count_is_sent_whole(dx: DxProcess) -> None:
    sent = long_chat(turns=2)  # ~1,000 tokens: past the byte bound, within the context
    r = httpx.post(dx.url + "/v1/chat/completions", headers=dx.auth, timeout=30,
                   json={"model": "fake", "messages": sent})  # fmt: skip
    assert r.status_code == 200 and "x-dx-trimmed-tokens" not in r.headers
    assert len(engine(dx, "/last")["messages"]) == len(sent)


@pytest.mark.parametrize("stream", [False, True])
def test_ollama_chat(dx: DxProcess, stream: bool) -> None:
    sent = long_chat()
    body = {"model": "fake", "messages": sent, "stream": stream}
    r = httpx.post(dx.url + "/api/chat", json=body, headers=dx.auth, timeout=30)
    check_trimmed(dx, r, sent)
    assert any("chat trimmed to fit the context" in line for line in dx.lines)


@pytest.mark.parametrize("stream", [False, True])
def test_openai_chat(dx: DxProcess, stream: bool) -> None:
    sent = long_chat()
    body = {"model": "fake", "messages": sent, "stream": stream, "max_tokens": 10}
    r = httpx.post(dx.url + "/v1/chat/completions", json=body, headers=dx.auth, timeout=30)
    check_trimmed(dx, r, sent)


def test_anthropic_messages(dx: DxProcess) -> None:
    sent = long_chat()
    body = {"model": "fake", "max_tokens": 10, "system": sent[0]["content"], "messages": sent[1:]}
    r = httpx.post(dx.url + "/v1/messages", json=body, headers=dx.auth, timeout=30)
    check_trimmed(dx, r, sent)


def test_ollama_truncate_false_sends_the_chat_whole(dx: DxProcess) -> None:
    sent = long_chat()
    before = engine(dx, "/stats")["tokenized"]
    body = {"model": "fake", "messages": sent, "stream": False, "truncate": False}
    r = httpx.post(dx.url + "/api/chat", json=body, headers=dx.auth, timeout=30)
    assert r.status_code == 200 and "x-dx-trimmed-tokens" not in r.headers
    assert len(engine(dx, "/last")["messages"]) == len(sent)
    assert engine(dx, "/stats")["tokenized"] == before


def test_one_message_too_long_is_a_400_with_the_sizes(dx: DxProcess) -> None:
    huge = [{"role": "user", "content": "word " * 5000}]
    r = httpx.post(dx.url + "/api/chat", headers=dx.auth, timeout=30,
                   json={"model": "fake", "messages": huge, "stream": False})  # fmt: skip
    assert r.status_code == 400
    assert r.json()["error"] == (
        "the latest message is too long for fake:latest: with the system prompt it takes "
        "5001 tokens, and the model's context of 4096 tokens holds 3584 besides the 512 kept "
        "for the reply. Shorten the message (or lower max_tokens), or serve the model with a "
        "larger context (models.fake.context in the DX config)"
    )
    r = httpx.post(dx.url + "/v1/chat/completions", headers=dx.auth, timeout=30,
                   json={"model": "fake", "messages": huge, "max_tokens": 100})  # fmt: skip
    error = r.json()["error"]
    assert r.status_code == 400 and error["param"] == "messages"
    assert "holds 3996 besides the 100 kept for the reply" in error["message"]
    r = httpx.post(dx.url + "/v1/messages", headers=dx.auth, timeout=30,
                   json={"model": "fake", "max_tokens": 10, "messages": huge})  # fmt: skip
    assert r.status_code == 400 and r.json()["type"] == "error"
    assert "it takes 5001 tokens" in r.json()["error"]["message"]


def test_tool_results_stay_with_their_call(dx: DxProcess, tmp_path: Path) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    sent: list[dict[str, Any]] = [
        {"role": "user", "content": "old " * 3000},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "result " * 500},
        {"role": "user", "content": "now"},
        {"role": "assistant", "content": None, "tool_calls": [{**call, "id": "c2"}]},
        {"role": "tool", "tool_call_id": "c2", "content": "fresh " * 800},
    ]
    r = httpx.post(dx.url + "/v1/chat/completions", headers=dx.auth, timeout=30,
                   json={"model": "fake", "messages": sent})  # fmt: skip
    assert r.status_code == 200 and r.headers["x-dx-trimmed-messages"] == "3"
    assert engine(dx, "/last")["messages"] == sent[3:]


def test_tools_that_do_not_fit_are_dropped_and_the_chat_served(dx: DxProcess) -> None:
    # Open WebUI's built-in tools take ~7k of the embedded default's 8192 tokens: with a
    # long latest message they cannot fit, and the chat is served without them.
    tool = {"type": "function", "function": {"name": "lookup", "description": "word " * 400,
                                             "parameters": {"type": "object"}}}  # fmt: skip
    sent = long_chat(turns=2, words=300)
    sent[-1] = {"role": "user", "content": "question " * 1500}
    body = {"model": "fake", "messages": sent, "tools": [tool] * 8, "tool_choice": "auto"}
    r = httpx.post(dx.url + "/v1/chat/completions", json=body, headers=dx.auth, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["x-dx-dropped-tools"] == "8"
    last = engine(dx, "/last")
    assert "tools" not in last and "tool_choice" not in last
    # Without the tools the whole chat fits: no turn had to go.
    assert "x-dx-trimmed-tokens" not in r.headers and last["messages"] == sent
    # Too long even without the tools: the 400 says so.
    body["messages"] = [{"role": "user", "content": "word " * 5000}]
    r = httpx.post(dx.url + "/v1/chat/completions", json=body, headers=dx.auth, timeout=30)
    assert r.status_code == 400
    assert "with the system prompt (and without the tools) it takes 5001 tokens" in (
        r.json()["error"]["message"]
    )
