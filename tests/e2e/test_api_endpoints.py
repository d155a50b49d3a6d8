"""The rest of Ollama's endpoints (show, ps, embed, embeddings, pull and the registry
operations), /v1/embeddings and /v1/models/{id}, and usage in OpenAI streams: against a real
`dx serve` in front of the fake engine, through the official clients.

The model `fake` names the real SmolLM2 GGUF file (its engine is still the fake one), so
/api/show reads a real header.
"""

from __future__ import annotations

import base64
import json
import math
import struct
from collections.abc import Iterator
from datetime import datetime

import httpx
import ollama
import openai
import pytest

from tests.conftest import DxProcess, fake_model, smollm2_path, start_dx
from tests.fakes.engine_requests import last_request
from tests.fakes.fake_engine import vector


@pytest.fixture(scope="module")
def dx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DxProcess]:
    models = {
        "fake": fake_model(model=str(smollm2_path()), context=2048, aliases=["fk"]),
        "emb": fake_model(embeddings=True),
    }
    proc = start_dx(tmp_path_factory.mktemp("endpoints"), models)
    yield proc
    proc.stop()


def client(dx: DxProcess) -> ollama.Client:
    return ollama.Client(host=dx.url, headers=dx.auth)


def post(dx: DxProcess, path: str, body: object) -> httpx.Response:
    return httpx.post(dx.url + path, headers=dx.auth, json=body, timeout=30)


def norm(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


# -- /api/show ---------------------------------------------------------------------------


def test_show_reads_the_gguf(dx: DxProcess) -> None:
    shown = client(dx).show("FAKE:Latest")  # with a tag or not, any case
    assert shown.details.family == "llama" and shown.details.format == "gguf"
    assert shown.details.parameter_size == "135M"
    assert shown.details.quantization_level == "Q4_1"
    info = shown.modelinfo or {}
    assert info["general.architecture"] == "llama"
    assert info["general.parameter_count"] == 134_515_008  # summed from the tensor shapes
    # The context DX serves, not the 8192 the model was trained for: what will fit.
    assert info["llama.context_length"] == 2048
    assert info["llama.embedding_length"] == 576
    assert "general.name" not in info and "tokenizer.chat_template" not in info
    assert shown.template and "<|im_start|>" in shown.template
    assert "completion" in (shown.capabilities or [])
    assert "embedding" not in (shown.capabilities or [])
    assert "FROM fake:latest" in (shown.modelfile or "")
    assert str(smollm2_path()) not in (shown.modelfile or "")  # no server paths
    assert shown.parameters and "num_ctx" in shown.parameters
    raw = post(dx, "/api/show", {"name": "fk"}).json()  # `name`, the old spelling
    assert raw["model_info"]["llama.context_length"] == 2048


def test_show_errors(dx: DxProcess) -> None:
    with pytest.raises(ollama.ResponseError) as nf:
        client(dx).show("llama3")
    assert nf.value.status_code == 404 and "fake:latest" in nf.value.error
    missing = post(dx, "/api/show", {})
    assert missing.status_code == 400 and missing.json() == {"error": "model is required"}
    # An unknown template (the fake engine's) gets tools; a command may add a projector.
    assert client(dx).show("emb").capabilities == ["completion", "tools", "vision", "embedding"]


def test_vscode_probe_order(dx: DxProcess) -> None:
    """VS Code's Copilot: /api/version, /api/tags, then /api/show for the context length."""
    assert httpx.get(dx.url + "/api/version", headers=dx.auth).json()["version"]
    names = [m["model"] for m in httpx.get(dx.url + "/api/tags", headers=dx.auth).json()["models"]]
    for name in names:
        info = post(dx, "/api/show", {"model": name}).json()["model_info"]
        arch = info.get("general.architecture")
        if arch:
            assert info[f"{arch}.context_length"] == 2048


# -- /api/ps -----------------------------------------------------------------------------


def test_ps_lists_running_models(dx: DxProcess) -> None:
    running = {m.model: m for m in client(dx).ps().models}
    assert set(running) == {"fake:latest", "emb:latest"}
    m = running["fake:latest"]
    assert m.size == smollm2_path().stat().st_size and m.size_vram == 0  # CPU
    assert m.context_length == 2048
    assert m.details and m.details.family == "llama"
    raw = httpx.get(dx.url + "/api/ps", headers=dx.auth).json()["models"]
    for entry in raw:  # Open WebUI parses expires_at with datetime.fromisoformat
        assert datetime.fromisoformat(entry["expires_at"]).year > 2200  # loaded for good


# -- embeddings ----------------------------------------------------------------------------


def test_embed(dx: DxProcess) -> None:
    reply = client(dx).embed(model="emb", input=["hello world", "bye"])
    assert len(reply.embeddings) == 2
    for text, v in zip(["hello world", "bye"], reply.embeddings, strict=True):
        assert len(v) == 8 and math.isclose(norm(list(v)), 1.0, rel_tol=1e-9)  # normalised
        expected = vector(text)
        assert math.isclose(v[0], expected[0] / norm(expected), rel_tol=1e-9)
    assert reply.prompt_eval_count == 3
    one = client(dx).embed(model="emb", input="hello world", dimensions=4)
    assert len(one.embeddings[0]) == 4 and math.isclose(norm(list(one.embeddings[0])), 1.0)
    empty = post(dx, "/api/embed", {"model": "emb"}).json()
    assert empty == {"model": "emb:latest", "embeddings": []}  # loads, as in Ollama
    legacy = client(dx).embeddings(model="emb", prompt="hello world")
    assert list(legacy.embedding) == vector("hello world")  # as the model gives it
    assert post(dx, "/api/embeddings", {"model": "emb", "prompt": ""}).json() == {"embedding": []}


def test_embeddings_need_the_config_flag(dx: DxProcess) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        client(dx).embed(model="fake", input="x")
    assert err.value.status_code == 400
    assert err.value.error == (
        "model fake does not serve embeddings; set models.fake.embeddings: true in the DX config"
    )
    bad = post(dx, "/api/embed", {"model": "emb", "input": 5})
    assert bad.status_code == 400 and bad.json()["error"].startswith("input: expected")


def test_openai_embeddings(dx: DxProcess) -> None:
    oa = openai.OpenAI(base_url=dx.url + "/v1", api_key=dx.key, max_retries=0)
    reply = oa.embeddings.create(model="emb", input=["hello world", "bye"])
    assert [d.index for d in reply.data] == [0, 1]
    # The client asks for base64 (float32) and decodes it: close to 1 in float32 terms.
    assert math.isclose(norm(reply.data[0].embedding), 1.0, rel_tol=1e-6)
    assert reply.usage.prompt_tokens == 3 and reply.model == "emb"
    raw = post(dx, "/v1/embeddings", {"model": "emb", "input": "bye", "encoding_format": "base64"})
    packed = base64.b64decode(raw.json()["data"][0]["embedding"])
    floats = struct.unpack("<8f", packed)
    expected = vector("bye")
    assert math.isclose(floats[0], expected[0] / norm(expected), rel_tol=1e-6)
    short = oa.embeddings.create(model="emb", input="bye", dimensions=3)
    assert len(short.data[0].embedding) == 3
    with pytest.raises(openai.BadRequestError) as err:
        oa.embeddings.create(model="fake", input="x")
    assert "embeddings: true" in err.value.message
    with pytest.raises(openai.BadRequestError):
        oa.embeddings.create(model="emb", input=[])


# -- pull and the registry operations --------------------------------------------------------


def test_pull_of_a_configured_model(dx: DxProcess) -> None:
    steps = list(client(dx).pull("fake", stream=True))
    assert steps[0].status == "pulling manifest" and steps[-1].status == "success"
    layer = steps[1]
    assert layer.total == layer.completed == smollm2_path().stat().st_size
    assert client(dx).pull("FK").status == "success"


def test_pull_of_anything_else_says_how_to_add_models(dx: DxProcess) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        client(dx).pull("llama3.2:3b")
    assert err.value.status_code == 404
    assert "models:" in err.value.error and "DX config" in err.value.error
    assert "llama3.2" in err.value.error


@pytest.mark.parametrize(
    ("method", "path", "body", "needle"),
    [
        ("POST", "/api/push", {"model": "fake"}, "DX cannot push"),
        ("POST", "/api/create", {"model": "mine", "from": "fake"}, "DX cannot create"),
        ("POST", "/api/copy", {"source": "fake", "destination": "x"}, "aliases"),
        ("DELETE", "/api/delete", {"model": "fake"}, "DX cannot delete"),
        ("POST", "/api/blobs/sha256:" + "a" * 64, None, "DX cannot store"),
        ("POST", "/api/blobs/nonsense", None, "invalid digest"),
    ],
)
def test_registry_operations_answer_clearly(
    dx: DxProcess, method: str, path: str, body: object, needle: str
) -> None:
    resp = httpx.request(
        method,
        dx.url + path,
        headers=dx.auth,
        timeout=30,
        **({"json": body} if body is not None else {"content": b"x"}),
    )
    assert resp.status_code == 400, resp.text
    assert needle in resp.json()["error"]


def test_registry_operations_through_the_client(dx: DxProcess) -> None:
    c = client(dx)
    for call in (
        lambda: c.copy("fake", "other"),
        lambda: c.delete("fake"),
        lambda: c.push("fake"),
        lambda: c.create("x", from_="fake"),
    ):
        with pytest.raises(ollama.ResponseError) as err:
            call()
        assert err.value.status_code == 400 and err.value.error.startswith("DX cannot")
    head = httpx.head(dx.url + "/api/blobs/sha256:" + "a" * 64, headers=dx.auth)
    assert head.status_code == 404  # no such blob: HEAD has no body


# -- OpenAI: one model, and usage in streams -------------------------------------------------


def test_openai_model_lookup(dx: DxProcess) -> None:
    oa = openai.OpenAI(base_url=dx.url + "/v1", api_key=dx.key, max_retries=0)
    assert oa.models.retrieve("fk").id == "fk"
    with pytest.raises(openai.NotFoundError):
        oa.models.retrieve("nope")


def _events(resp: httpx.Response) -> list[object]:
    lines = [line[5:].strip() for line in resp.text.splitlines() if line.startswith("data:")]
    return [line if line == "[DONE]" else json.loads(line) for line in lines]


def test_openai_stream_usage_only_when_asked(dx: DxProcess) -> None:
    body = {"model": "fake", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    plain = _events(post(dx, "/v1/chat/completions", body))
    assert plain[-1] == "[DONE]"
    assert not any(isinstance(e, dict) and "usage" in e for e in plain)
    engine = last_request(dx, "fake")
    assert engine["stream_options"] == {"include_usage": True}  # DX counts tokens anyway
    asked = _events(
        post(dx, "/v1/chat/completions", {**body, "stream_options": {"include_usage": True}})
    )
    usage = [e for e in asked if isinstance(e, dict) and e.get("usage")]
    assert usage and usage[0]["usage"]["completion_tokens"] == 6 and usage[0]["choices"] == []
    oa = openai.OpenAI(base_url=dx.url + "/v1", api_key=dx.key, max_retries=0)
    chunks = list(
        oa.chat.completions.create(
            model="fake",
            messages=body["messages"],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 7
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from the fake engine."
