"""A streamed reply that starts before the engine answers, while the model loads.

An on-demand model can take seconds (llama.cpp) to minutes (vLLM) to start. A streaming
client, and any proxy in front of DX (Caddy, nginx: 60 s read timeouts by default), would
give up on a silent connection. So once a request has waited a moment, its streamed reply
starts, and a harmless line goes out every few seconds until the engine answers (the
notices of dxproxy.routing.wait):

- OpenAI SSE: a comment line, `: loading model NAME (12 s)`, which SSE clients ignore;
- Ollama NDJSON: a chunk with empty content and `done: false`, as the engine sends between
  tokens, with a `status` saying the model is loading, which clients ignore.

If the wait ends in an error, the error is the stream's last line, in the caller's dialect.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from dxproxy.http.state import EARLY


class EarlyStream:
    def __init__(
        self,
        request: web.Request,
        content_type: str,
        notice: Callable[[float], bytes],
        error: Callable[[int, str], bytes],
    ) -> None:
        self.request = request
        self.out = web.StreamResponse(
            headers={"Content-Type": content_type, "Cache-Control": "no-cache"}
        )
        self._notice = notice
        self._error = error
        request[EARLY] = self

    @property
    def started(self) -> bool:
        return self.out.prepared

    async def response(self) -> web.StreamResponse:
        """The reply, started (now, if the wait did not start it)."""
        if not self.out.prepared:
            await self.out.prepare(self.request)
        return self.out

    async def waiting(self, seconds: float) -> None:
        await self.response()
        await self.out.write(self._notice(seconds))

    async def fail(self, status: int, message: str) -> web.StreamResponse:
        await self.out.write(self._error(status, message))
        return self.out
