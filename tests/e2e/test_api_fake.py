"""The HTTP surface against the fake engine: fast, and able to inject faults.

Every API behaviour here is also proven against real llama.cpp in tests/integration.
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
import time
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from tests.conftest import DxProcess, fake_model, start_dx

TEXT = "Hello from the fake engine."


def ollama_client(dx: DxProcess) -> ollama.Client:
    return ollama.Client(host=dx.url, headers=dx.auth)


def ndjson_lines(resp: httpx.Response) -> list[dict[str, object]]:
    raw = resp.text
    assert raw.endswith("\n")
    lines = raw[:-1].split("\n")
    assert all(line.strip() for line in lines), "no blank lines in NDJSON"
    return [json.loads(line) for line in lines]


# -- Ollama API through the official client -------------------------------------------------


def test_ollama_chat_stream(dx_fake: DxProcess) -> None:
    chunks = list(ollama_client(dx_fake).chat(
        model="fake", messages=[{"role": "user", "content": "hi"}], stream=True))
    assert "".join(c.message.content or "" for c in chunks) == TEXT
    assert all(not c.done for c in chunks[:-1])
    final = chunks[-1]
    assert final.done is True and final.done_reason == "stop"
    assert final.model == "fake:latest"
    assert final.prompt_eval_count == 1 and final.eval_count == 6  # the engine's usage
    for name in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        value = getattr(final, name)
        assert isinstance(value, int) and value >= 0, name
    assert final.total_duration >= final.eval_duration


def test_ollama_chat_non_stream_and_alias(dx_fake: DxProcess) -> None:
    reply = ollama_client(dx_fake).chat(
        model="fk:latest", messages=[{"role": "user", "content": "hi"}],
        options={"num_predict": 2, "temperature": 0})
    assert reply.message.role == "assistant"
    assert reply.message.content == "Hello from"
    assert reply.done and reply.done_reason == "length"
    assert reply.eval_count == 2


def test_ollama_generate_stream_and_not(dx_fake: DxProcess) -> None:
    client = ollama_client(dx_fake)
    chunks = list(client.generate(model="fake", prompt="hi", stream=True))
    assert "".join(c.response for c in chunks) == TEXT
    assert chunks[-1].done and chunks[-1].response == ""
    reply = client.generate(model="fake", prompt="hi", system="be brief")
    assert reply.response == TEXT and reply.done
    raw = client.generate(model="fake", prompt="hi", raw=True)
    assert raw.response == TEXT


def test_ollama_list_and_version(dx_fake: DxProcess) -> None:
    models = ollama_client(dx_fake).list().models
    assert [m.model for m in models] == ["fake:latest"]
    assert isinstance(models[0].size, int) and models[0].size > 0
    version = httpx.get(dx_fake.url + "/api/version", headers=dx_fake.auth).json()
    assert [int(p) for p in version["version"].split(".")]  # plain X.Y.Z, no suffix


def test_ollama_tool_call_is_translated(dx_fake: DxProcess) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    client = ollama_client(dx_fake)
    reply = client.chat(model="fake", messages=[{"role": "user", "content": "TOOL"}],
                        tools=tools)
    call = reply.message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert call.function.arguments == {"city": "Paris"}  # an object, not a JSON string
    chunks = list(client.chat(model="fake", messages=[{"role": "user", "content": "TOOL"}],
                              tools=tools, stream=True))
    calls = [c.message.tool_calls for c in chunks if c.message.tool_calls]
    assert calls and calls[0][0].function.arguments == {"city": "Paris"}


def test_ollama_load_and_unload_replies(dx_fake: DxProcess) -> None:
    load = httpx.post(dx_fake.url + "/api/generate", headers=dx_fake.auth,
                      json={"model": "fake"})
    assert load.status_code == 200 and load.json()["done_reason"] == "load"
    unload = httpx.post(dx_fake.url + "/api/chat", headers=dx_fake.auth,
                        json={"model": "fake", "messages": [], "keep_alive": 0})
    assert unload.json()["done_reason"] == "unload"
    assert unload.json()["message"] == {"role": "assistant", "content": ""}
    # The Go client (`ollama stop`) sends Go durations: "0s" unloads, "5m0s" is five minutes.
    stop = httpx.post(dx_fake.url + "/api/generate", headers=dx_fake.auth,
                      json={"model": "fake", "prompt": "", "keep_alive": "0s"})
    assert stop.json()["done_reason"] == "unload"
    chat = httpx.post(dx_fake.url + "/api/chat", headers=dx_fake.auth, json={
        "model": "fake", "stream": False, "keep_alive": "5m0s",
        "messages": [{"role": "user", "content": "x"}]})
    assert chat.status_code == 200, chat.text  # the unloaded model loads again


def test_wire_format(dx_fake: DxProcess) -> None:
    stream = httpx.post(dx_fake.url + "/api/chat", headers=dx_fake.auth,
                        json={"model": "fake", "messages": [{"role": "user", "content": "x"}]})
    assert stream.headers["content-type"] == "application/x-ndjson"
    lines = ndjson_lines(stream)
    assert lines[-1]["done"] is True
    assert str(lines[0]["created_at"]).endswith("Z")
    single = httpx.post(dx_fake.url + "/api/chat", headers=dx_fake.auth,
                        json={"model": "fake", "stream": False,
                              "messages": [{"role": "user", "content": "x"}]})
    assert single.headers["content-type"].startswith("application/json")
    root = httpx.get(dx_fake.url + "/")
    assert root.text == "Ollama is running"
    assert httpx.head(dx_fake.url + "/").status_code == 200


# -- OpenAI API through the official client -------------------------------------------------


def test_openai_chat_and_stream(dx_fake: DxProcess) -> None:
    client = openai.OpenAI(base_url=dx_fake.url + "/v1", api_key=dx_fake.key)
    reply = client.chat.completions.create(
        model="fake", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == TEXT
    stream = client.chat.completions.create(
        model="fake", messages=[{"role": "user", "content": "hi"}], stream=True)
    parts = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(parts) == TEXT
    assert [m.id for m in client.models.list()] == ["fake"]


def test_openai_errors_are_openai_shaped(dx_fake: DxProcess) -> None:
    client = openai.OpenAI(base_url=dx_fake.url + "/v1", api_key=dx_fake.key, max_retries=0)
    with pytest.raises(openai.NotFoundError) as nf:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert "fake:latest" in nf.value.message and nf.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="fake", messages=[])
    with pytest.raises(openai.BadRequestError) as rejected:
        client.chat.completions.create(model="fake",
                                       messages=[{"role": "user", "content": "REJECT"}])
    assert "fake engine rejects this" in rejected.value.message
    bad = openai.OpenAI(base_url=dx_fake.url + "/v1", api_key="wrong-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


# -- auth --------------------------------------------------------------------------------


def test_auth_is_required_and_explains_itself(dx_fake: DxProcess) -> None:
    for path in ("/api/tags", "/api/version", "/v1/models"):
        resp = httpx.get(dx_fake.url + path)
        assert resp.status_code == 401, path
        # Where the key is, without the server's file paths (test_door.py has more).
        assert "dx state directory" in resp.text and str(dx_fake.state_dir) not in resp.text
    ollama_err = httpx.get(dx_fake.url + "/api/tags").json()
    assert isinstance(ollama_err["error"], str) and "Authorization: Bearer" in ollama_err["error"]
    openai_err = httpx.get(dx_fake.url + "/v1/models").json()
    assert openai_err["error"]["type"] == "authentication_error"
    wrong = httpx.get(dx_fake.url + "/api/tags", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "invalid API key" in wrong.json()["error"]
    with pytest.raises(ollama.ResponseError) as err:
        ollama.Client(host=dx_fake.url).list()
    assert err.value.status_code == 401
    # LangChain puts the key in the URL (http://user:KEY@host): Basic auth, key as password.
    basic = base64.b64encode(f"user:{dx_fake.key}".encode()).decode()
    ok = httpx.get(dx_fake.url + "/api/tags", headers={"Authorization": f"Basic {basic}"})
    assert ok.status_code == 200
    assert httpx.get(dx_fake.url + "/health").json() == {"status": "ok"}


def test_key_file_is_private(dx_fake: DxProcess) -> None:
    assert (dx_fake.state_dir / "api-key").stat().st_mode & 0o777 == 0o600
    assert dx_fake.state_dir.stat().st_mode & 0o777 == 0o700
    assert any(dx_fake.key in line for line in dx_fake.banner), "first start prints the key"


# -- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "status", "needle"),
    [
        ("/api/chat", b"{not json", 400, "invalid JSON"),
        ("/api/chat", b"", 400, "missing request body"),
        ("/api/chat", b"[1, 2]", 400, "JSON object"),
        ("/api/chat", b'{"messages": []}', 400, "model is required"),
        ("/api/chat", b'{"model": "nope", "messages": []}', 404, "available models: fake:latest"),
        ("/api/chat", b'{"model": "fake", "messages": "hi"}', 400, "messages: expected an array"),
        ("/api/chat", b'{"model": "fake", "messages": [{"role": "robot"}]}', 400, "role"),
        ("/api/chat", b'{"model": "fake", "messages": [], "stream": "yes"}', 400, "stream"),
        ("/api/chat", b'{"model": "fake", "messages": [], "keep_alive": "soon"}', 400,
         "keep_alive"),
        ("/api/generate", b'{"model": "fake", "prompt": 5}', 400, "prompt: expected a string"),
        ("/api/generate", b'{"model": "fake", "prompt": "x", "options": {"top_k": "many"}}',
         400, "options.top_k"),
        ("/api/generate", b'{"model": "fake", "prompt": "x", "options": {"top_p": "hi"}}',
         400, "options.top_p: expected a number, got a string"),
        ("/api/generate", b'{"model": "fake", "prompt": "x", "format": 3}', 400,
         "invalid format"),
        ("/api/generate", b'{"model": "fake", "prompt": "x", "suffix": "y"}', 400,
         "does not support insert"),
        ("/v1/chat/completions", b"{", 400, "invalid JSON"),
        ("/v1/chat/completions", b'{"model": "fake", "messages": [{"role": "user"}], '
         b'"max_tokens": "10"}', 400, "max_tokens"),
    ],
)
def test_bad_requests_get_clear_4xx(dx_fake: DxProcess, path: str, body: bytes, status: int,
                                    needle: str) -> None:
    resp = httpx.post(dx_fake.url + path, headers=dx_fake.auth, content=body)
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    error = resp.json()["error"]
    message = error["message"] if path.startswith("/v1/") else error
    assert needle in message


def test_unknown_routes_and_methods(dx_fake: DxProcess) -> None:
    missing = httpx.get(dx_fake.url + "/api/nothing", headers=dx_fake.auth)
    assert missing.status_code == 404 and "no such endpoint" in missing.json()["error"]
    wrong = httpx.get(dx_fake.url + "/api/chat", headers=dx_fake.auth)
    assert wrong.status_code == 405 and "not allowed" in wrong.json()["error"]


def test_huge_body_is_413(tmp_path: Path) -> None:
    dx = start_dx(tmp_path, {"fake": fake_model()}, extra={"server": {"max_body_bytes": 1000}})
    try:
        big = b'{"model": "fake", "prompt": "' + b"x" * 5000 + b'"}'
        resp = httpx.post(dx.url + "/api/generate", headers=dx.auth, content=big, timeout=30)
        assert resp.status_code == 413 and "max_body_bytes" in resp.json()["error"]
        assert httpx.get(dx.url + "/api/tags", headers=dx.auth).status_code == 200
    finally:
        dx.stop()


# -- faults --------------------------------------------------------------------------------


def test_engine_death_mid_stream(dx_fake: DxProcess) -> None:
    resp = httpx.post(dx_fake.url + "/api/chat", headers=dx_fake.auth, timeout=30,
                      json={"model": "fake", "messages": [{"role": "user", "content": "DIE"}]})
    lines = ndjson_lines(resp)
    assert "the engine serving 'fake' stopped unexpectedly (it exited); DX is restarting it" in str(
        lines[-1]["error"])
    assert not any(line.get("done") for line in lines)
    # DX keeps serving, restarts the engine, and the model answers again.
    deadline = time.monotonic() + 20
    while True:
        ok = httpx.post(dx_fake.url + "/api/chat", headers=dx_fake.auth, timeout=30, json={
            "model": "fake", "stream": False, "messages": [{"role": "user", "content": "x"}]})
        if ok.status_code == 200:
            break
        assert ok.status_code == 503, ok.text  # while the engine restarts
        assert time.monotonic() < deadline, "the engine was not restarted"
        time.sleep(0.3)
    assert ok.json()["message"]["content"] == TEXT


def test_engine_death_mid_stream_openai(dx_fake: DxProcess) -> None:
    resp = httpx.post(dx_fake.url + "/v1/chat/completions", headers=dx_fake.auth, timeout=30,
                      json={"model": "fake", "stream": True,
                            "messages": [{"role": "user", "content": "DIE"}]})
    events = [line[6:] for line in resp.text.splitlines() if line.startswith("data: ")]
    assert "error" in json.loads(events[-1])
    assert "[DONE]" not in events


def test_client_disconnect_cancels_the_engine_request(dx_fake: DxProcess) -> None:
    body = {"model": "fake", "messages": [{"role": "user", "content": "SLOW"}]}
    with httpx.stream("POST", dx_fake.url + "/api/chat", headers=dx_fake.auth, json=body) as r:
        lines = r.iter_lines()
        next(lines)
        next(lines)
    engine = f"http://127.0.0.1:{dx_fake.engine_port()}/stats"
    deadline = time.monotonic() + 5
    while (stats := httpx.get(engine).json())["cancelled"] < 1:
        assert time.monotonic() < deadline, stats
        time.sleep(0.05)
    assert stats["completed"] == 0


def test_client_timeout_cancels_a_non_streamed_request(dx_fake: DxProcess) -> None:
    body = {"model": "fake", "stream": False, "messages": [{"role": "user", "content": "SLOW"}]}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(dx_fake.url + "/api/chat", headers=dx_fake.auth, json=body, timeout=0.5)
    engine = f"http://127.0.0.1:{dx_fake.engine_port()}/stats"
    deadline = time.monotonic() + 5
    while (stats := httpx.get(engine).json())["cancelled"] < 1:
        assert time.monotonic() < deadline, stats
        time.sleep(0.05)
    assert stats["completed"] == 0 and stats["in_flight"] == 0


def test_requests_queue_for_a_one_at_a_time_engine(dx_fake: DxProcess) -> None:
    body = {"model": "fake", "stream": False, "messages": [{"role": "user", "content": "PAUSE"}]}

    def one(_: int) -> int:
        return httpx.post(dx_fake.url + "/api/chat", headers=dx_fake.auth, json=body,
                          timeout=60).status_code

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        assert list(pool.map(one, range(4))) == [200] * 4
    stats = httpx.get(f"http://127.0.0.1:{dx_fake.engine_port()}/stats").json()
    assert stats["completed"] == 4 and stats["max_in_flight"] == 1  # llamacpp takes one


def test_full_queue_is_503(tmp_path: Path) -> None:
    dx = start_dx(tmp_path, {"fake": fake_model()}, extra={"limits": {"queue_size": 1}})
    body = {"model": "fake", "stream": False, "messages": [{"role": "user", "content": "PAUSE"}]}

    def one(_: int) -> httpx.Response:
        return httpx.post(dx.url + "/api/chat", headers=dx.auth, json=body, timeout=60)

    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            replies = list(pool.map(one, range(4)))
        busy = [r for r in replies if r.status_code == 503]
        assert busy and "server busy" in busy[0].json()["error"]
        assert any(r.status_code == 200 for r in replies)
    finally:
        dx.stop()


def test_engine_that_cannot_start(tmp_path: Path) -> None:
    broken = fake_model(engine_args=["--exit-at-start", "3"])
    dx = start_dx(tmp_path, {"fake": fake_model(), "broken": broken}, wait=90)
    try:
        banner = "\n".join(dx.banner)
        assert "broken:latest" in banner and "FAILED" in banner
        assert "      | fake engine: cannot load model (as asked)" in banner
        resp = httpx.post(dx.url + "/api/generate", headers=dx.auth,
                          json={"model": "broken", "prompt": "x"})
        assert resp.status_code == 503
        assert "cannot load model (as asked)" in resp.json()["error"]  # the engine's own words
        ok = httpx.post(dx.url + "/api/generate", headers=dx.auth,
                        json={"model": "fake", "prompt": "x", "stream": False})
        assert ok.status_code == 200  # the other model keeps serving
    finally:
        dx.stop()


def test_sighup_is_harmless_and_ctrl_c_stops_dx_and_its_engines(tmp_path: Path) -> None:
    import signal

    import psutil

    dx = start_dx(tmp_path, {"fake": fake_model(), "other": fake_model(replicas=2)})
    engines = dx.engine_pids()
    assert len(engines) == 3
    dx.proc.send_signal(signal.SIGHUP)  # reload is not built yet: logged, and nothing dies
    time.sleep(0.3)
    assert httpx.get(dx.url + "/api/tags", headers=dx.auth).status_code == 200
    assert any("SIGHUP received" in line for line in dx.lines)
    assert dx.stop(signal.SIGINT) == 0
    assert not any(psutil.pid_exists(p) for p in engines)
    stopped = [line for line in dx.lines if "-> stopped" in line]
    assert len(stopped) == 3, dx.lines
