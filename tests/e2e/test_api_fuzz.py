"""Random and malformed bodies at every endpoint (hypothesis): never a 5xx, never a crash,
and the server still serves afterwards. Bad input is the client's problem, said clearly."""

from __future__ import annotations

import json
import string
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import DxProcess, fake_model, start_dx

ENDPOINTS = [
    ("POST", "/api/chat"),
    ("POST", "/api/generate"),
    ("POST", "/api/embed"),
    ("POST", "/api/embeddings"),
    ("POST", "/api/show"),
    ("POST", "/api/pull"),
    ("POST", "/api/push"),
    ("POST", "/api/create"),
    ("POST", "/api/copy"),
    ("DELETE", "/api/delete"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/embeddings"),
    ("POST", "/v1/messages"),
    ("POST", "/v1/responses"),
]
# Field names the endpoints know, so random bodies reach past the first check.
KEYS = [
    "model", "messages", "prompt", "stream", "options", "format", "tools", "think", "images",
    "keep_alive", "raw", "system", "suffix", "template", "context", "input", "dimensions",
    "truncate", "shift", "logprobs", "top_logprobs", "role", "content", "tool_calls",
    "function", "name", "arguments", "tool_name", "tool_call_id", "num_predict", "num_ctx",
    "temperature", "top_k", "stop", "seed", "max_tokens", "stream_options", "include_usage",
    "encoding_format", "source", "destination", "verbose", "type", "text", "max_output_tokens",
    "instructions", "reasoning", "parameters", "thinking", "n",
]  # fmt: skip
# No upper case: the fake engine treats words like DIE as fault injections.
TEXT = st.text(alphabet=string.ascii_lowercase + string.digits + " :-_{}[]\"'é\u2028", max_size=12)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT
    | st.sampled_from(["fake", "emb", "fake:latest", "user", "assistant", "tool", "json", "0"])
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(KEYS) | TEXT, inner, max_size=4)
    ),
    max_leaves=12,
)
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system", "tool", "bot"])},
    optional={"content": VALUES, "images": VALUES, "tool_calls": VALUES, "tool_name": VALUES},
)
BODIES = st.one_of(
    st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=6),
    st.fixed_dictionaries(
        {"model": st.sampled_from(["fake", "emb", "FAKE:latest", "nope", ""])},
        optional={
            "messages": st.lists(MESSAGE, max_size=3) | VALUES,
            "prompt": TEXT | VALUES,
            "input": st.lists(TEXT, max_size=3) | VALUES,
            "options": st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=4),
            "stream": st.booleans() | VALUES,
            "format": VALUES,
            "think": VALUES,
            "keep_alive": VALUES,
            "max_tokens": VALUES,
        },
    ),
)


@pytest.fixture(scope="module")
def dx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DxProcess]:
    models = {"fake": fake_model(), "emb": fake_model(embeddings=True)}
    proc = start_dx(tmp_path_factory.mktemp("fuzz"), models)
    yield proc
    proc.stop()


def _send(dx: DxProcess, method: str, path: str, content: bytes) -> httpx.Response:
    headers = {**dx.auth, "Content-Type": "application/json"}
    return httpx.request(method, dx.url + path, headers=headers, content=content, timeout=30)


def _check(resp: httpx.Response, sent: Any) -> None:
    assert resp.status_code < 500, (sent, resp.status_code, resp.text)
    if resp.status_code >= 400:
        error = resp.json()["error"]
        assert error, sent  # a message, in the caller's dialect


SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
@SETTINGS
@given(body=BODIES)
def test_random_json_bodies(dx: DxProcess, method: str, path: str, body: dict[str, Any]) -> None:
    _check(_send(dx, method, path, json.dumps(body).encode()), body)


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
@SETTINGS
@given(raw=st.binary(max_size=40) | VALUES.map(lambda v: json.dumps(v).encode()))
def test_random_bytes(dx: DxProcess, method: str, path: str, raw: bytes) -> None:
    _check(_send(dx, method, path, raw), raw)


def test_still_serving_afterwards(dx: DxProcess) -> None:
    body = {"model": "fake", "stream": False, "messages": [{"role": "user", "content": "x"}]}
    resp = httpx.post(dx.url + "/api/chat", headers=dx.auth, json=body, timeout=30)
    assert resp.status_code == 200 and resp.json()["message"]["content"]
    assert dx.proc.poll() is None
    assert not any("Traceback" in line for line in dx.lines), "\n".join(dx.lines[-40:])
