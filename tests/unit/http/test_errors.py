"""Errors in the caller's dialect (dxproxy/http/errors.py): the bodies of Ollama, OpenAI and
Anthropic, the dialect a path speaks, `json_response`, and the error middleware on a real
(in-process) aiohttp server: what a handler's ApiError, aiohttp's HTTP errors and a bug in DX
become, before and after a stream started early (dxproxy/http/early.py)."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request

from dxproxy.http.early import EarlyStream
from dxproxy.http.errors import (
    ApiError,
    dialect_of,
    error_body,
    error_middleware,
    error_response,
    json_response,
)
from dxproxy.http.state import EARLY

Client: TypeAlias = "TestClient[web.Request, web.Application]"

# -- ApiError --------------------------------------------------------------------------------


def test_api_error_carries_status_message_param_and_code() -> None:
    exc = ApiError(404, "model 'x' not found", param="model", code="model_not_found")
    assert isinstance(exc, Exception)
    assert (exc.status, exc.message, exc.param, exc.code) == (
        404,
        "model 'x' not found",
        "model",
        "model_not_found",
    )
    assert str(exc) == "model 'x' not found"


def test_api_error_param_and_code_default_to_none() -> None:
    exc = ApiError(400, "bad")
    assert exc.param is None
    assert exc.code is None


def test_api_error_param_and_code_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        ApiError(400, "bad", "param")  # type: ignore[call-arg]


# -- the dialect a request speaks ------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "dialect"),
    [
        ("/api/chat", "ollama"),
        ("/api/generate", "ollama"),
        ("/api/tags", "ollama"),
        ("/", "ollama"),
        ("/metrics", "ollama"),
        ("/v1", "ollama"),  # not under /v1/
        ("/v1/chat/completions", "openai"),
        ("/v1/completions", "openai"),
        ("/v1/embeddings", "openai"),
        ("/v1/models", "openai"),
        ("/v1/responses", "openai"),  # OpenAI's Responses API answers errors as OpenAI does
        ("/v1/nope", "openai"),
        ("/v1/messages", "anthropic"),
        ("/v1/messages/count_tokens", "anthropic"),
    ],
)
def test_dialect_of_follows_the_path(path: str, dialect: str) -> None:
    assert dialect_of(make_mocked_request("POST", path)) == dialect


def test_dialect_ignores_the_query_string() -> None:
    assert dialect_of(make_mocked_request("GET", "/api/tags?x=/v1/")) == "ollama"
    assert dialect_of(make_mocked_request("POST", "/v1/messages?beta=true")) == "anthropic"


# -- error bodies ----------------------------------------------------------------------------


def test_ollama_body_is_a_bare_string() -> None:
    body = error_body("ollama", 404, "model 'x' not found", param="model", code="c")
    assert orjson.loads(body) == {"error": "model 'x' not found"}  # no param or code in Ollama


def test_openai_body_has_message_type_param_and_code() -> None:
    body = error_body("openai", 400, "messages: missing", param="messages", code="bad")
    assert orjson.loads(body) == {
        "error": {
            "message": "messages: missing",
            "type": "invalid_request_error",
            "param": "messages",
            "code": "bad",
        }
    }


def test_openai_body_keeps_param_and_code_as_null() -> None:
    # The OpenAI clients read all four keys; absent ones are null, not missing.
    assert orjson.loads(error_body("openai", 401, "no key")) == {
        "error": {"message": "no key", "type": "authentication_error", "param": None, "code": None}
    }


def test_anthropic_body_is_typed_error_without_param_or_code() -> None:
    body = error_body("anthropic", 429, "slow down", param="x", code="y")
    assert orjson.loads(body) == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "slow down"},
    }


@pytest.mark.parametrize(
    ("status", "openai", "anthropic"),
    [
        (400, "invalid_request_error", "invalid_request_error"),
        (401, "authentication_error", "authentication_error"),
        (403, "permission_error", "permission_error"),
        (404, "not_found_error", "not_found_error"),
        (413, "invalid_request_error", "request_too_large"),
        (429, "rate_limit_error", "rate_limit_error"),
        (503, "api_error", "overloaded_error"),
        (500, "api_error", "api_error"),
        (502, "api_error", "api_error"),
        (405, "api_error", "api_error"),
        (418, "api_error", "api_error"),
    ],
)
def test_error_types_per_status(status: int, openai: str, anthropic: str) -> None:
    assert orjson.loads(error_body("openai", status, "m"))["error"]["type"] == openai
    assert orjson.loads(error_body("anthropic", status, "m"))["error"]["type"] == anthropic


def test_error_body_is_compact_utf8() -> None:
    body = error_body("ollama", 400, 'modèle "x"')
    assert body == '{"error":"modèle \\"x\\""}'.encode()


# -- json_response and error_response ---------------------------------------------------------


def test_json_response_is_compact_application_json() -> None:
    resp = json_response({"model": "é", "list": [1, 2], "ok": True})
    assert resp.status == 200
    assert resp.content_type == "application/json"
    assert resp.charset is None
    assert resp.body == '{"model":"é","list":[1,2],"ok":true}'.encode()


def test_json_response_takes_a_status() -> None:
    resp = json_response({"status": "gone"}, status=410)
    assert resp.status == 410
    assert resp.body == b'{"status":"gone"}'


def test_error_response_renders_in_the_dialect_of_the_request() -> None:
    ollama = error_response(make_mocked_request("POST", "/api/chat"), 404, "no model")
    assert ollama.status == 404
    assert ollama.content_type == "application/json"
    assert isinstance(ollama.body, bytes)
    assert orjson.loads(ollama.body) == {"error": "no model"}

    openai = error_response(
        make_mocked_request("POST", "/v1/chat/completions"), 400, "bad", param="n", code="c"
    )
    assert isinstance(openai.body, bytes)
    assert orjson.loads(openai.body)["error"] == {
        "message": "bad",
        "type": "invalid_request_error",
        "param": "n",
        "code": "c",
    }

    anthropic = error_response(make_mocked_request("POST", "/v1/messages"), 503, "busy")
    assert isinstance(anthropic.body, bytes)
    assert orjson.loads(anthropic.body)["error"] == {"type": "overloaded_error", "message": "busy"}


def test_error_response_sends_extra_headers() -> None:
    resp = error_response(
        make_mocked_request("GET", "/api/tags"), 429, "slow down", headers={"Retry-After": "3"}
    )
    assert resp.headers["Retry-After"] == "3"
    assert resp.content_type == "application/json"


# -- the middleware, on an in-process server ---------------------------------------------------


def _early(request: web.Request) -> EarlyStream:
    """An NDJSON stream started early, as the Ollama handlers make it."""

    def notice(seconds: float) -> bytes:
        return orjson.dumps({"done": False, "status": f"loading model ({seconds:.0f} s)"}) + b"\n"

    def error(status: int, message: str) -> bytes:
        return orjson.dumps({"error": message, "status": status}) + b"\n"

    return EarlyStream(request, "application/x-ndjson", notice, error)


class Bug(Exception):
    pass


async def ok(request: web.Request) -> web.Response:
    return json_response({"ok": True})


async def api_error(request: web.Request) -> web.Response:
    raise ApiError(422, "format: invalid schema", param="format", code="bad_format")


async def bug(request: web.Request) -> web.Response:
    raise Bug("a bug in dx")


async def read_body(request: web.Request) -> web.Response:
    return json_response({"size": len(await request.read())})


async def redirect(request: web.Request) -> web.Response:
    raise web.HTTPFound("/api/tags")


async def bad_request(request: web.Request) -> web.Response:
    raise web.HTTPBadRequest(reason="Custom Reason")


async def early_then_api_error(request: web.Request) -> web.StreamResponse:
    stream = _early(request)
    await stream.waiting(7.2)
    raise ApiError(503, "the model failed to load")


async def early_unstarted_then_api_error(request: web.Request) -> web.StreamResponse:
    stream = _early(request)
    assert request[EARLY] is stream
    raise ApiError(503, "the model failed to load")


async def early_then_bug(request: web.Request) -> web.StreamResponse:
    stream = _early(request)
    await stream.waiting(1.0)
    raise Bug("a bug in dx, mid-stream")


async def early_then_not_found(request: web.Request) -> web.StreamResponse:
    stream = _early(request)
    await stream.waiting(1.0)
    raise web.HTTPNotFound()


def _app() -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=64)
    for prefix in ("/api", "/v1", "/v1/messages"):
        app.router.add_get(f"{prefix}/ok", ok)
        app.router.add_post(f"{prefix}/api_error", api_error)
        app.router.add_post(f"{prefix}/bug", bug)
        app.router.add_post(f"{prefix}/read", read_body)
        app.router.add_get(f"{prefix}/redirect", redirect)
        app.router.add_get(f"{prefix}/bad", bad_request)
        app.router.add_post(f"{prefix}/early", early_then_api_error)
        app.router.add_post(f"{prefix}/unstarted", early_unstarted_then_api_error)
        app.router.add_post(f"{prefix}/early_bug", early_then_bug)
        app.router.add_post(f"{prefix}/early_404", early_then_not_found)
    return app


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    async with TestClient(TestServer(_app())) as c:
        yield c


async def _json(resp: Any) -> Any:
    assert resp.content_type == "application/json"
    return orjson.loads(await resp.read())


async def test_a_good_answer_passes_through(client: Client) -> None:
    resp = await client.get("/api/ok")
    assert resp.status == 200
    assert await _json(resp) == {"ok": True}


async def test_api_error_in_ollama_dialect(client: Client) -> None:
    resp = await client.post("/api/api_error")
    assert resp.status == 422
    assert await _json(resp) == {"error": "format: invalid schema"}


async def test_api_error_in_openai_dialect_keeps_param_and_code(
    client: Client,
) -> None:
    resp = await client.post("/v1/api_error")
    assert resp.status == 422
    assert await _json(resp) == {
        "error": {
            "message": "format: invalid schema",
            "type": "api_error",
            "param": "format",
            "code": "bad_format",
        }
    }


async def test_api_error_in_anthropic_dialect(
    client: Client,
) -> None:
    resp = await client.post("/v1/messages/api_error")
    assert resp.status == 422
    assert await _json(resp) == {
        "type": "error",
        "error": {"type": "api_error", "message": "format: invalid schema"},
    }


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/api/nope", {"error": "no such endpoint: GET /api/nope"}),
        (
            "/v1/nope",
            {
                "error": {
                    "message": "no such endpoint: GET /v1/nope",
                    "type": "not_found_error",
                    "param": None,
                    "code": None,
                }
            },
        ),
        (
            "/v1/messages/nope",
            {
                "type": "error",
                "error": {
                    "type": "not_found_error",
                    "message": "no such endpoint: GET /v1/messages/nope",
                },
            },
        ),
    ],
)
async def test_unknown_path_is_a_404_naming_it(
    client: Client, path: str, expected: dict[str, Any]
) -> None:
    resp = await client.get(path)
    assert resp.status == 404
    assert await _json(resp) == expected


async def test_wrong_method_is_a_405_with_allow(
    client: Client,
) -> None:
    resp = await client.post("/api/ok")
    assert resp.status == 405
    assert set(resp.headers["Allow"].split(",")) == {"GET", "HEAD"}
    assert await _json(resp) == {"error": "method POST is not allowed on /api/ok"}


async def test_a_body_over_the_limit_is_a_413_naming_the_limit_and_setting(
    client: Client,
) -> None:
    small = await client.post("/api/read", data=b"x" * 64)
    assert small.status == 200
    assert await _json(small) == {"size": 64}

    resp = await client.post("/v1/messages/read", data=b"x" * 65)
    assert resp.status == 413
    assert await _json(resp) == {
        "type": "error",
        "error": {
            "type": "request_too_large",
            "message": "request body too large (limit 64 bytes; "
            "raise server.max_body_bytes to allow more)",
        },
    }


async def test_other_http_errors_say_their_reason(
    client: Client,
) -> None:
    resp = await client.get("/v1/bad")
    assert resp.status == 400
    body = await _json(resp)
    assert body["error"]["message"] == "Custom Reason"
    assert body["error"]["type"] == "invalid_request_error"
    assert "Allow" not in resp.headers


async def test_a_redirect_is_not_an_error(
    client: Client,
) -> None:
    resp = await client.get("/api/redirect", allow_redirects=False)
    assert resp.status == 302
    assert resp.headers["Location"] == "/api/tags"


@pytest.mark.parametrize(
    ("path", "message_of"),
    [
        ("/api/bug", lambda body: body["error"]),
        ("/v1/bug", lambda body: body["error"]["message"]),
        ("/v1/messages/bug", lambda body: body["error"]["message"]),
    ],
)
async def test_a_bug_is_a_500_with_an_error_id_found_in_the_log(
    client: Client,
    caplog: pytest.LogCaptureFixture,
    path: str,
    message_of: Any,
) -> None:
    with caplog.at_level(logging.ERROR, logger="dx.http"):
        resp = await client.post(path)
    assert resp.status == 500
    message = message_of(await _json(resp))
    found = re.fullmatch(
        r"internal error in dx \(error id ([0-9a-f]{12})\); the dx log has the details", message
    )
    assert found, message
    assert "a bug in dx" not in message  # the exception's text stays in the log
    [record] = [r for r in caplog.records if r.name == "dx.http"]
    assert record.getMessage() == f"error {found[1]}: POST {path} failed"
    assert record.exc_info is not None
    assert record.exc_info[0] is Bug


async def test_each_bug_gets_its_own_error_id(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.CRITICAL + 1, logger="dx.http"):
        first = (await _json(await client.post("/api/bug")))["error"]
        second = (await _json(await client.post("/api/bug")))["error"]
    assert first != second


async def test_an_api_error_after_an_early_start_is_the_streams_last_line(
    client: Client,
) -> None:
    resp = await client.post("/api/early")
    assert resp.status == 200  # already sent when the wait began
    assert resp.content_type == "application/x-ndjson"
    assert resp.headers["Cache-Control"] == "no-cache"
    lines = [orjson.loads(line) for line in (await resp.read()).splitlines()]
    assert lines == [
        {"done": False, "status": "loading model (7 s)"},
        {"error": "the model failed to load", "status": 503},
    ]


async def test_an_api_error_before_the_early_stream_started_is_a_plain_error(
    client: Client,
) -> None:
    resp = await client.post("/v1/unstarted")
    assert resp.status == 503
    assert await _json(resp) == {
        "error": {
            "message": "the model failed to load",
            "type": "api_error",
            "param": None,
            "code": None,
        }
    }


async def test_a_bug_after_the_stream_began_ends_the_stream_with_an_error_line(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """Not a second HTTP head inside the body (which broke the client's chunk parsing)."""
    resp = await client.post("/api/early_bug")
    assert resp.status == 200
    lines = [orjson.loads(line) for line in (await resp.read()).splitlines()]
    assert lines[0] == {"done": False, "status": "loading model (1 s)"}
    assert lines[1]["status"] == 500 and "internal error in dx (error id" in lines[1]["error"]
    assert "a bug in dx, mid-stream" in caplog.text  # the traceback is in the log


async def test_an_http_error_after_the_stream_began_is_its_last_line(client: Client) -> None:
    resp = await client.post("/api/early_404")
    assert resp.status == 200
    lines = [orjson.loads(line) for line in (await resp.read()).splitlines()]
    assert lines[-1] == {"error": "no such endpoint: POST /api/early_404", "status": 404}
