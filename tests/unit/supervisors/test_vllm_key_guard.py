"""dx_key_guard, the middleware DX loads into vLLM: the engine key on every route but
/health (vLLM's own check covers only /v1 and a few prefixes). The real vLLM with it loaded
is tested in tests/integration/test_engines.py."""

from __future__ import annotations

from typing import Any

import pytest

from supervisors.vllm_plugins.dx_key_guard import KeyGuard


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def call(guard: KeyGuard, path: str, auth: bytes | None) -> int:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [(b"authorization", auth)] if auth is not None else []
    await guard({"type": "http", "path": path, "headers": headers}, None, send)
    return int(sent[0]["status"])


@pytest.mark.parametrize("path", ["/invocations", "/tokenize", "/sleep", "/wake_up",
                                  "/collective_rpc", "/v1/chat/completions", "/metrics"])
async def test_every_route_wants_the_key(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    monkeypatch.setenv("VLLM_API_KEY", "s3cret")
    guard = KeyGuard(app)
    assert await call(guard, path, None) == 401
    assert await call(guard, path, b"Bearer wrong") == 401
    assert await call(guard, path, b"Bearer s3cret\xff") == 401  # odd bytes: refused, no crash
    assert await call(guard, path, b"Bearer s3cret") == 200


async def test_health_stays_open_and_no_key_means_no_guard(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VLLM_API_KEY", "s3cret")
    assert await call(KeyGuard(app), "/health", None) == 200
    monkeypatch.delenv("VLLM_API_KEY")
    assert await call(KeyGuard(app), "/invocations", None) == 200  # vLLM run without DX's key
