"""DX in front of real llama.cpp (native llama-server, the default) serving the real
SmolLM2-135M model, driven by the official `ollama` and `openai` clients.

SmolLM2 at temperature 0 gives odd but stable answers; the assertions check real content
(non-empty text, consistent token counts) and every field's type, not exact wording.
"""

from __future__ import annotations

import os
import signal
import time
from datetime import datetime
from pathlib import Path

import httpx
import ollama
import openai
import psutil
import pytest

from tests.conftest import DxProcess, smollm2_path, start_dx

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"temperature": 0, "num_predict": 24}

pytestmark = pytest.mark.integration


def client(dx: DxProcess) -> ollama.Client:
    return ollama.Client(host=dx.url, headers=dx.auth, timeout=120)


def check_final_stats(final: ollama.ChatResponse | ollama.GenerateResponse) -> None:
    """The statistics come from llama-server's own usage and timings: prompt and completion
    token counts, durations."""
    assert final.done is True
    assert final.done_reason in ("stop", "length")
    for name in ("total_duration", "load_duration", "prompt_eval_duration", "eval_count",
                 "eval_duration"):
        value = getattr(final, name)
        assert isinstance(value, int) and value >= 0, (name, value)
    assert final.prompt_eval_count is not None and final.prompt_eval_count > 0
    assert 0 < final.eval_count <= 24
    assert final.total_duration > final.eval_duration > 0
    assert datetime.fromisoformat(str(final.created_at).replace("Z", "+00:00"))


def test_banner_tells_the_truth(dx_real: DxProcess) -> None:
    banner = "\n".join(dx_real.banner)
    assert f"on {dx_real.url}" in banner
    assert "auth:     on" in banner
    assert "smollm2:latest  llama-server  cpu  context 2048  slots 16" in banner
    assert "ready in" in banner and "FAILED" not in banner
    assert "CPU cores" in banner and "GiB RAM" in banner
    assert dx_real.banner[-1].startswith("  ready in")


def test_ollama_chat_stream(dx_real: DxProcess) -> None:
    chunks = list(client(dx_real).chat(model="smollm2", messages=QUESTION, stream=True,
                                       options=GREEDY))
    deltas = [c for c in chunks if not c.done]
    assert len(deltas) >= 2, "streamed token by token"
    text = "".join(c.message.content or "" for c in deltas)
    assert text.strip()
    for c in deltas:
        assert c.model == "smollm2:latest" and c.message.role == "assistant"
        assert isinstance(c.message.content, str)
    final = chunks[-1]
    check_final_stats(final)
    assert final.eval_count == len(deltas)  # llama.cpp streams one token per chunk


def test_ollama_chat_non_stream_is_deterministic(dx_real: DxProcess) -> None:
    one = client(dx_real).chat(model="smollm2", messages=QUESTION, options=GREEDY)
    two = client(dx_real).chat(model="smol", messages=QUESTION, options=GREEDY)
    assert one.message.content and one.message.content == two.message.content
    check_final_stats(one)
    streamed = "".join(c.message.content or "" for c in client(dx_real).chat(
        model="smollm2", messages=QUESTION, options=GREEDY, stream=True))
    assert streamed == one.message.content


def test_ollama_generate(dx_real: DxProcess) -> None:
    c = client(dx_real)
    reply = c.generate(model="smollm2", prompt="What is the capital of France?",
                       options=GREEDY)
    assert reply.response.strip()
    check_final_stats(reply)
    chunks = list(c.generate(model="smollm2", prompt="What is the capital of France?",
                             options=GREEDY, stream=True))
    assert "".join(ch.response for ch in chunks) == reply.response
    check_final_stats(chunks[-1])
    raw = c.generate(model="smollm2", prompt="The capital of France is", raw=True,
                     options={"temperature": 0, "num_predict": 8})
    assert "Paris" in raw.response  # the plain completion knows its geography
    assert raw.eval_count == 8 and raw.done_reason == "length"


def test_ollama_list(dx_real: DxProcess) -> None:
    (m,) = client(dx_real).list().models
    assert m.model == "smollm2:latest"
    assert m.size == smollm2_path().stat().st_size
    assert m.details.format == "gguf" and m.details.family == "llama"
    assert m.details.parameter_size == "135M" and m.details.quantization_level == "Q4_1"
    assert isinstance(m.digest, str) and len(m.digest) == 64
    assert m.modified_at is not None


def test_openai_chat_and_stream(dx_real: DxProcess) -> None:
    oa = openai.OpenAI(base_url=dx_real.url + "/v1", api_key=dx_real.key)
    reply = oa.chat.completions.create(model="smollm2", messages=QUESTION, temperature=0,
                                       max_tokens=24)
    content = reply.choices[0].message.content
    assert content and content.strip()
    assert reply.usage is not None and reply.usage.completion_tokens <= 24
    assert reply.usage.prompt_tokens > 0
    stream = oa.chat.completions.create(model="smollm2", messages=QUESTION, temperature=0,
                                        max_tokens=24, stream=True)
    parts = [ch.choices[0].delta.content or "" for ch in stream if ch.choices]
    assert len(parts) > 2 and "".join(parts) == content
    assert [m.id for m in oa.models.list()] == ["smollm2"]


def test_refusals_with_the_real_engine(dx_real: DxProcess) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        ollama.Client(host=dx_real.url).chat(model="smollm2", messages=QUESTION)
    assert err.value.status_code == 401
    with pytest.raises(ollama.ResponseError) as nf:
        client(dx_real).chat(model="llama3", messages=QUESTION)
    assert nf.value.status_code == 404 and "smollm2:latest" in nf.value.error
    with pytest.raises(ollama.ResponseError) as vision:
        client(dx_real).chat(model="smollm2", messages=[
            {"role": "user", "content": "What is this?", "images": ["aGVsbG8="]}])
    assert vision.value.status_code == 400 and "does not support images" in vision.value.error
    oa = openai.OpenAI(base_url=dx_real.url + "/v1", api_key=dx_real.key, max_retries=0)
    with pytest.raises(openai.BadRequestError):
        oa.chat.completions.create(model="smollm2", messages=[{"role": "user"}],
                                   max_tokens="many")  # type: ignore[arg-type]


def test_disconnect_frees_the_engine(dx_real: DxProcess) -> None:
    """llama.cpp takes one request at a time: if a client leaving did not cancel its request,
    the next one would wait for the whole abandoned generation (1,500 tokens, many seconds)."""
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "Tell a long story."}],
            "options": {"temperature": 0, "num_predict": 1500}}
    with httpx.stream("POST", dx_real.url + "/api/chat", headers=dx_real.auth, json=body,
                      timeout=60) as r:
        lines = r.iter_lines()
        for _ in range(3):
            next(lines)
    t0 = time.monotonic()
    reply = client(dx_real).chat(model="smollm2", messages=QUESTION,
                                 options={"temperature": 0, "num_predict": 4})
    assert reply.done and time.monotonic() - t0 < 5


def test_sigkill_of_dx_leaves_no_engine(tmp_path: Path) -> None:
    model = {"engine": "llamacpp", "model": str(smollm2_path()), "context": 512}
    dx = start_dx(tmp_path, {"smollm2": model}, wait=120)
    engines = dx.engine_pids()
    assert engines, "dx started an engine"
    os.kill(dx.proc.pid, signal.SIGKILL)
    dx.proc.wait(10)
    deadline = time.monotonic() + 10
    while any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
              for p in engines):
        assert time.monotonic() < deadline, "an engine outlived dx"
        time.sleep(0.1)


def test_sigterm_stops_engines_and_exits_cleanly(tmp_path: Path) -> None:
    model = {"engine": "llamacpp", "model": str(smollm2_path()), "context": 512}
    dx = start_dx(tmp_path, {"smollm2": model}, wait=120)
    engines = dx.engine_pids()
    assert dx.stop(signal.SIGTERM) == 0
    assert not any(psutil.pid_exists(p) for p in engines)
    # Drained (no request in flight), then stopped.
    assert any("smollm2#0: ready -> draining" in line for line in dx.lines), dx.lines[-10:]
    # Second start: the key is kept, and only where it lives is printed.
    again = start_dx(tmp_path, {"smollm2": model}, wait=120)
    try:
        assert again.key == dx.key
        assert not any(dx.key in line for line in again.banner)
        assert any("the API key is in" in line for line in again.banner)
    finally:
        again.stop()


def test_prompt_longer_than_the_context(dx_real: DxProcess) -> None:
    """Refused with a 400 before generating, streamed or not, in every dialect: by DX, which
    counts a chat that might not fit (dxproxy/api/fit.py), or with Ollama's truncate: false
    by llama-server itself; and the next request works (no dead pooled connection is handed
    on)."""
    too_long = [{"role": "user", "content": "word " * 3000}]
    with pytest.raises(ollama.ResponseError) as err:
        client(dx_real).chat(model="smollm2", messages=too_long)
    assert err.value.status_code == 400 and "the latest message is too long" in err.value.error
    whole = httpx.post(dx_real.url + "/api/chat", headers=dx_real.auth, timeout=120,
                       json={"model": "smollm2", "messages": too_long, "stream": False,
                             "truncate": False})  # fmt: skip
    assert whole.status_code == 400
    assert "exceeds the available context size" in whole.json()["error"]
    oa_plain = openai.OpenAI(base_url=dx_real.url + "/v1", api_key=dx_real.key, max_retries=0)
    with pytest.raises(openai.BadRequestError) as refused:
        oa_plain.chat.completions.create(model="smollm2", messages=too_long)
    assert "the model's context of 2048 tokens" in refused.value.message
    with pytest.raises(ollama.ResponseError) as cut:
        list(client(dx_real).chat(model="smollm2", messages=too_long, stream=True))
    assert cut.value.status_code == 400
    oa = openai.OpenAI(base_url=dx_real.url + "/v1", api_key=dx_real.key, max_retries=0)
    for _ in range(3):
        with pytest.raises(openai.BadRequestError):
            list(oa.chat.completions.create(model="smollm2", messages=too_long, stream=True))
        reply = oa.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=4)
        assert reply.choices[0].message.content


def test_client_leaving_a_non_streamed_request_frees_the_engine(dx_real: DxProcess) -> None:
    """llama-cpp-python runs a non-streamed request to its end even when the client left, so
    DX streams from it and collects: a client that times out must not hold the engine."""
    body = {"model": "smollm2", "stream": False,
            "messages": [{"role": "user", "content": "Tell a long story."}],
            "options": {"temperature": 0, "num_predict": 1500}}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(dx_real.url + "/api/chat", headers=dx_real.auth, json=body, timeout=0.5)
    t0 = time.monotonic()
    reply = client(dx_real).chat(model="smollm2", messages=QUESTION,
                                 options={"temperature": 0, "num_predict": 4})
    assert reply.done and time.monotonic() - t0 < 5
