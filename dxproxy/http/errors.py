"""Errors in the caller's dialect: Ollama `{"error": "..."}`, OpenAI `{"error": {...}}`.

Handlers raise `ApiError`; the error middleware renders it (and aiohttp's own HTTP errors such
as 404, 405 and 413) for the API the request was made to, with a `Retry-After` header when the
error says when to retry (every 503: the model is restarting, the queue is full). Bad input
never becomes a 500; only a bug in DX does, answered with an error id to find in the log.
"""

from __future__ import annotations

import logging
import math
import secrets
from typing import Any, Literal

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from dxproxy.http.state import EARLY

log = logging.getLogger("dx.http")

Dialect = Literal["ollama", "openai", "anthropic"]

_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


_ANTHROPIC_TYPES = {
    **_OPENAI_TYPES,
    413: "request_too_large",
    503: "overloaded_error",
}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.retry_after = retry_after  # seconds; sent as Retry-After (whole, at least 1)


def dialect_of(request: web.Request) -> Dialect:
    if request.path.startswith("/v1/"):
        # Anthropic's Messages API (Claude Code) sits among OpenAI's paths, as in Ollama.
        return "anthropic" if request.path.startswith("/v1/messages") else "openai"
    return "ollama"


def error_body(
    dialect: Dialect, status: int, message: str, param: str | None = None, code: str | None = None
) -> bytes:
    if dialect == "anthropic":
        kind = _ANTHROPIC_TYPES.get(status, "api_error")
        return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})
    if dialect == "openai":
        kind = _OPENAI_TYPES.get(status, "api_error")
        return orjson.dumps(
            {"error": {"message": message, "type": kind, "param": param, "code": code}}
        )
    return orjson.dumps({"error": message})


def json_response(obj: Any, status: int = 200) -> web.Response:
    """Compact JSON as `application/json` (what Ollama clients insist on for non-streams)."""
    return web.Response(status=status, body=orjson.dumps(obj), content_type="application/json")


def error_response(
    request: web.Request,
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body = error_body(dialect_of(request), status, message, param, code)
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        headers = None
        if exc.retry_after is not None:
            headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
        return await _answer(
            request, exc.status, exc.message, param=exc.param, code=exc.code, headers=headers
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = {
            404: f"no such endpoint: {request.method} {request.path}",
            405: f"method {request.method} is not allowed on {request.path}",
            413: f"request body too large (limit {request.client_max_size} bytes; "
            "raise server.max_body_bytes to allow more)",
        }.get(exc.status, exc.reason)
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return await _answer(request, exc.status, message, headers=headers)
    except Exception as exc:
        early = request.get(EARLY)
        if isinstance(exc, ConnectionResetError) and early is not None and early.started:
            return early.out  # the client left mid-stream: nobody to tell, nothing wrong
        # A bug in DX. Say so plainly, with an id to find the traceback in the log.
        rid = secrets.token_hex(6)
        log.exception("error %s: %s %s failed", rid, request.method, request.path)
        message = f"internal error in dx (error id {rid}); the dx log has the details"
        return await _answer(request, 500, message)


async def _answer(
    request: web.Request,
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.StreamResponse:
    """The error as the reply, or, once a streamed reply has begun (its status line is
    sent), as the stream's last line: a second HTTP head inside a body would break it."""
    early = request.get(EARLY)
    if early is not None and early.started:
        try:
            return await early.fail(status, message)
        except ConnectionResetError:  # the client left: nobody to tell
            return early.out
    return error_response(request, status, message, param=param, code=code, headers=headers)
