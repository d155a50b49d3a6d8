"""A minimal, fast OpenAI-compatible engine for measuring what a proxy in front costs.

    python bench/fake_openai_engine.py --port P [--model NAME] [--interval-ms MS] [--write-batch N]

It answers at once, with no model behind it, so that a benchmark through it measures the
proxy and not the engine:

- ``GET /v1/models`` and ``GET /health``: 200.
- ``POST /v1/chat/completions`` and ``POST /v1/completions``: ``max_tokens`` tokens (default
  16), one per SSE ``chat.completion.chunk`` when ``stream`` is true (then a finish chunk, an
  optional usage chunk with ``stream_options.include_usage``, and ``data: [DONE]``), or one
  JSON body when it is false.

Tokens are written back to back by default. ``--interval-ms`` waits that long between
tokens, so that each token reaches the proxy on its own, as it does from a real engine.
``--write-batch N`` (default 1, or ``$FAKE_ENGINE_WRITE_BATCH``) gathers N back-to-back events
into one write: the engine then spends far less CPU per token (one send for N), so that a
benchmark of how many chunks a proxy relays per second measures the proxy, not this engine
(bench/relay_throughput.py sets the variable; `dx serve` passes its environment to engines).

It is separate from tests/fakes/fake_engine.py (the fault-injecting engine of the test suite) on
purpose: this one stays small and fast, and the benchmark does not move when the tests do.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from typing import Any

import orjson
from aiohttp import web

WORDS = ("The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog", ".")
DEFAULT_MAX_TOKENS = 16
MAX_TOKENS_CAP = 100_000  # a bound on one answer, whatever the request asks

INTERVAL = web.AppKey("interval", float)
WRITE_BATCH = web.AppKey("write_batch", int)
WRITE_BATCH_ENV = "FAKE_ENGINE_WRITE_BATCH"
MODEL = web.AppKey("model", str)


def token(i: int) -> str:
    return WORDS[i % len(WORDS)]


async def models(request: web.Request) -> web.Response:
    name = request.app[MODEL]
    data = [{"id": name, "object": "model", "created": 0, "owned_by": "fake"}]
    return web.json_response({"object": "list", "data": data})


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def _max_tokens(body: dict[str, Any]) -> int:
    n = body.get("max_tokens")
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        return DEFAULT_MAX_TOKENS
    return min(n, MAX_TOKENS_CAP)


async def _read_body(request: web.Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise web.HTTPBadRequest(text="invalid JSON") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="expected a JSON object")
    return body


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _complete(request, chat=True)


async def completions(request: web.Request) -> web.StreamResponse:
    return await _complete(request, chat=False)


async def _complete(request: web.Request, *, chat: bool) -> web.StreamResponse:
    body = await _read_body(request)
    n = _max_tokens(body)
    interval = request.app[INTERVAL]
    model = str(body.get("model") or request.app[MODEL])
    ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
    created = int(time.time())
    usage = {"prompt_tokens": 8, "completion_tokens": n, "total_tokens": 8 + n}
    finish = "length" if n else "stop"

    if not body.get("stream"):
        text = "".join(token(i) for i in range(n))
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        answer = {
            "id": ident,
            "object": "chat.completion" if chat else "text_completion",
            "created": created,
            "model": model,
            "choices": [choice],
            "usage": usage,
        }
        return web.Response(body=orjson.dumps(answer), content_type="application/json")

    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await resp.prepare(request)
    kind = "chat.completion.chunk" if chat else "text_completion"

    def event(choice: dict[str, Any], extra: dict[str, Any] | None = None) -> bytes:
        chunk: dict[str, Any] = {
            "id": ident,
            "object": kind,
            "created": created,
            "model": model,
            "choices": [choice] if choice else [],
        }
        if extra:
            chunk.update(extra)
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    batch = 1 if interval else request.app[WRITE_BATCH]  # paced tokens go one by one
    pending: list[bytes] = []

    async def send(data: bytes) -> None:
        pending.append(data)
        if len(pending) >= batch:
            await resp.write(b"".join(pending))
            pending.clear()

    if chat:
        role = {"role": "assistant", "content": ""}
        await send(event({"index": 0, "delta": role, "finish_reason": None}))
    for i in range(n):
        if interval and i:
            await asyncio.sleep(interval)
        piece: dict[str, Any] = {"index": 0, "finish_reason": None}
        if chat:
            piece["delta"] = {"content": token(i)}
        else:
            piece["text"] = token(i)
        await send(event(piece))
    if pending:
        await resp.write(b"".join(pending))
    last: dict[str, Any] = {"index": 0, "finish_reason": finish}
    if chat:
        last["delta"] = {}
    else:
        last["text"] = ""
    await resp.write(event(last))
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage"):
        await resp.write(event({}, {"usage": usage}))
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


def make_app(model: str, interval_ms: float, write_batch: int = 1) -> web.Application:
    app = web.Application()
    app[MODEL] = model
    app[INTERVAL] = max(interval_ms, 0.0) / 1000.0
    app[WRITE_BATCH] = max(write_batch, 1)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="fake", help="the id /v1/models reports")
    parser.add_argument(
        "--interval-ms", type=float, default=0.0, help="pause between tokens (default none)"
    )
    parser.add_argument(
        "--write-batch",
        type=int,
        default=int(os.environ.get(WRITE_BATCH_ENV) or 1),
        help=f"back-to-back events per write (default ${WRITE_BATCH_ENV} or 1)",
    )
    args = parser.parse_args()
    app = make_app(args.model, args.interval_ms, args.write_batch)
    try:
        import uvloop
    except ImportError:  # the engine still works, only slower
        loop_factory = None
    else:
        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve(app, args.host, args.port))


async def _serve(app: web.Application, host: str, port: int) -> None:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    try:
        await asyncio.Event().wait()  # until SIGTERM / SIGINT ends the process
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    main()
