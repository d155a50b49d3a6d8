"""A streaming client whose model is still loading is told so, and its real client library
keeps working: the reply starts early with notices (SSE comments; empty Ollama chunks with a
`status`), then the answer. A load that fails ends the stream with an error line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from tests.conftest import DxProcess, fake_model, start_dx

SLOW = 3.5  # seconds the fake engine takes to start: a few notices' worth


@pytest.fixture
def dx(tmp_path: Path) -> Iterator[DxProcess]:
    models = {
        "slow": fake_model(load="on_demand", engine_args=["--startup-delay", SLOW]),
        "broken": fake_model(load="on_demand", engine_args=["--exit-at-start", 3]),
    }
    dx = start_dx(tmp_path, models)
    yield dx
    dx.stop()


def test_ollama_stream_shows_the_load_then_answers(dx: DxProcess) -> None:
    body = {"model": "slow", "messages": [{"role": "user", "content": "hi"}]}
    with httpx.stream("POST", dx.url + "/api/chat", headers=dx.auth, json=body,
                      timeout=60) as resp:
        assert resp.status_code == 200
        parts = [json.loads(line) for line in resp.iter_lines() if line]
    loading = [p for p in parts if "status" in p]
    assert loading and loading[0]["status"].startswith("loading model")
    assert all(p["message"]["content"] == "" and p["done"] is False for p in loading)
    assert "".join(p["message"]["content"] for p in parts) == "Hello from the fake engine."
    assert parts[-1]["done"] is True


def test_the_official_clients_read_through_the_notices(dx: DxProcess) -> None:
    client = ollama.Client(host=dx.url, headers=dx.auth, timeout=60)
    text = "".join(part.message.content or "" for part in client.chat(
        model="slow", messages=[{"role": "user", "content": "hi"}], stream=True))
    assert text == "Hello from the fake engine."
    # Unloaded again, so that the OpenAI stream waits for a load too.
    client.generate(model="slow", keep_alive=0)
    oai = openai.OpenAI(base_url=dx.url + "/v1", api_key=dx.key, timeout=60)
    stream = oai.chat.completions.create(model="slow", stream=True,
                                         messages=[{"role": "user", "content": "hi"}])
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == \
        "Hello from the fake engine."
    client.generate(model="slow", keep_alive=0)
    with httpx.stream("POST", dx.url + "/v1/chat/completions", headers=dx.auth, timeout=60,
                      json={"model": "slow", "stream": True,
                            "messages": [{"role": "user", "content": "hi"}]}) as resp:
        lines = [line for line in resp.iter_lines() if line]
    assert lines[0].startswith(": loading model slow (")  # an SSE comment, skipped above
    assert lines[-1] == "data: [DONE]"


def test_a_failed_load_ends_the_stream_with_an_error_in_the_dialect(dx: DxProcess) -> None:
    # Before the reply starts, the failure is a plain 503; after, the stream's last line.
    body = {"model": "broken", "messages": [{"role": "user", "content": "hi"}]}
    with httpx.stream("POST", dx.url + "/api/chat", headers=dx.auth, json=body,
                      timeout=60) as resp:
        lines = [json.loads(line) for line in resp.iter_lines() if line]
    assert resp.status_code in (200, 503)
    assert "cannot load model (as asked)" in lines[-1]["error"]
    with httpx.stream("POST", dx.url + "/v1/chat/completions", headers=dx.auth, timeout=60,
                      json={"model": "broken", "stream": True,
                            "messages": [{"role": "user", "content": "hi"}]}) as resp:
        events = [line for line in resp.iter_lines() if line and not line.startswith(":")]
    error = json.loads(events[-1].removeprefix("data: "))["error"]
    assert "cannot load model (as asked)" in error["message"]
