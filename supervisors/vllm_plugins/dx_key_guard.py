"""The engine key on every vLLM route, loaded into vLLM with `--middleware
dx_key_guard.KeyGuard` (this directory on the engine's PYTHONPATH).

vLLM's `--api-key` guards only paths under /v1, /v2, /inference and /cohere. Its other routes
answer anyone who can reach the loopback port: `/invocations` (SageMaker's generate: chat and
completions, a full bypass of DX's keys and limits), `/tokenize`, `/pooling`, `/score`, and in
dev mode (sleep mode needs it) `/sleep`, `/wake_up` and `/collective_rpc`. This guard wants the
engine's own key (`VLLM_API_KEY`, which DX sets) on every path but `/health`.

It runs inside vLLM's interpreter, in its own virtualenv: standard library only, nothing of DX.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Any

OPEN = frozenset({"/health"})  # liveness only: says nothing, does nothing
DENIED = b'{"error": "Unauthorized: the engine key is required (this engine is run by DX)"}'


class KeyGuard:
    def __init__(self, app: Any) -> None:
        self.app = app
        key = os.environ.get("VLLM_API_KEY", "")
        # Compared as digests, in constant time, as vLLM does itself.
        self.expected = hashlib.sha256(b"Bearer " + key.encode()).digest() if key else None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket") or self.expected is None:
            await self.app(scope, receive, send)
            return
        path = scope["path"].removeprefix(scope.get("root_path", ""))
        if path in OPEN or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await send({
            "type": "http.response.start",
            "status": 401,
            "headers": [(b"content-type", b"application/json"),
                        (b"content-length", str(len(DENIED)).encode())],
        })  # fmt: skip
        await send({"type": "http.response.body", "body": DENIED})

    def _allowed(self, scope: dict[str, Any]) -> bool:
        given = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                given = value
                break
        assert self.expected is not None
        return hmac.compare_digest(hashlib.sha256(given).digest(), self.expected)
