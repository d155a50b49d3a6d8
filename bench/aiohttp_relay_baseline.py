"""The floor under DX: the CPU cost of a bare aiohttp relay, measured as DX's is.

    .venv/bin/python bench/aiohttp_relay_baseline.py [--streams 20] [--tokens 1000]

proxy_overhead.py reports what dx costs per streamed chunk. This tells how much of that is
DX's own code and how much is Python, aiohttp and uvloop: it runs a relay of a few lines (the
same stack and settings as DX's OpenAI relay, without auth, validation, routing or queueing)
in front of the same fake engines, back to back and paced 15 ms apart, and measures the
relay's CPU time with the same function. Everything runs on loopback and is stopped at the
end; exit status 1 on any failure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import psutil
import uvloop
from aiohttp import web
from proxy_overhead import (
    FAKE_ENGINE,
    LOOPBACK,
    MODEL_NAME,
    PACED_INTERVAL_MS,
    PACED_MODEL,
    PACED_TOKENS,
    BenchError,
    Per,
    Sample,
    Target,
    client,
    cpu_table,
    free_port,
    measure_cpu,
)

SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAMS = web.AppKey("upstreams", dict[str, str])
START_TIMEOUT_S = 30.0


# -- the relay (runs in its own process: `--serve PORT MODEL=URL ...`) -----------------------


async def relay(request: web.Request) -> web.StreamResponse:
    body = await request.json()  # DX parses the body too, to route by model
    upstream = request.app[UPSTREAMS][body["model"]]
    try:
        resp = await request.app[SESSION].post(
            upstream + "/v1/chat/completions",
            json=body,
            headers={"Authorization": request.headers.get("Authorization", "")},
            timeout=aiohttp.ClientTimeout(total=None, sock_read=600),
        )
    except aiohttp.ClientError as exc:  # the engine is still starting
        return web.Response(status=502, text=str(exc))
    async with resp:
        if not body.get("stream"):
            return web.Response(body=await resp.read(), content_type="application/json")
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        while chunk := await resp.content.readany():
            await out.write(chunk)
        return out


async def serve(port: int, upstreams: dict[str, str]) -> None:
    app = web.Application()
    app[UPSTREAMS] = upstreams
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=75)  # as DX's
    app[SESSION] = aiohttp.ClientSession(connector=connector, auto_decompress=False)
    app.router.add_post("/v1/chat/completions", relay)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, LOOPBACK, port).start()
    await asyncio.Event().wait()  # until SIGTERM


# -- the measurement -------------------------------------------------------------------------


@contextlib.contextmanager
def spawned(argv: list[str], **kwargs: Any) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, **kwargs)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def wait_ready(
    session: aiohttp.ClientSession,
    url: str,
    model: str,
    proc: subprocess.Popen[bytes],
    headers: dict[str, str] | None = None,
) -> None:
    """Until a request for `model` through the relay succeeds (the engine is up too)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"the relay exited with code {proc.returncode}")
        with contextlib.suppress(aiohttp.ClientError):
            body = {
                "model": model,
                "max_tokens": 1,
                "messages": [{"role": "user", "content": "hi"}],
            }
            async with session.post(url, json=body, headers=headers) as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(0.1)
    raise BenchError(f"nothing answers at {url} after {START_TIMEOUT_S:.0f} s")


async def measure(streams: int, tokens: int, requests: int, paced_streams: int) -> str:
    python = sys.executable
    engine_port, paced_port, relay_port = free_port(), free_port(), free_port()
    engine = [python, str(FAKE_ENGINE), "--model", MODEL_NAME, "--port"]
    paced = [python, str(FAKE_ENGINE), "--model", PACED_MODEL,
             "--interval-ms", str(PACED_INTERVAL_MS), "--port"]  # fmt: skip
    upstreams = [
        f"{MODEL_NAME}=http://{LOOPBACK}:{engine_port}",
        f"{PACED_MODEL}=http://{LOOPBACK}:{paced_port}",
    ]
    with (
        spawned([*engine, str(engine_port)]),
        spawned([*paced, str(paced_port)]),
        spawned([python, __file__, "--serve", str(relay_port), *upstreams]) as relay_proc,
    ):
        async with client() as s:
            base = f"http://{LOOPBACK}:{relay_port}"
            for model in (MODEL_NAME, PACED_MODEL):
                await wait_ready(s, base + "/v1/chat/completions", model, relay_proc)
            target = Target("relay", "aiohttp relay", base, "openai")
            paced_target = Target("relay", "aiohttp relay", base, "openai", model=PACED_MODEL)

            def stream(t: Target, n: int) -> Callable[[], Awaitable[Sample]]:
                return lambda: t.ask(s, stream=True, max_tokens=n)

            runs: list[tuple[str, int, Callable[[], Awaitable[Sample]], Per]] = [
                (f"OpenAI stream, {tokens} tokens, back to back", streams,
                 stream(target, tokens), "chunk"),
                (f"OpenAI stream, {PACED_TOKENS} tokens {PACED_INTERVAL_MS} ms apart",
                 paced_streams, stream(paced_target, PACED_TOKENS), "chunk"),
                ("OpenAI non-stream, 32 tokens", requests,
                 lambda: target.ask(s, stream=False, max_tokens=32), "request"),
            ]  # fmt: skip
            proc = psutil.Process(relay_proc.pid)
            results = [await measure_cpu(proc, *run) for run in runs]
    return cpu_table("bare aiohttp relay CPU (user+system)", results)


def main() -> int:
    if sys.argv[1:2] == ["--serve"]:
        port, *pairs = sys.argv[2:]
        upstreams = dict(pair.split("=", 1) for pair in pairs)
        uvloop.run(serve(int(port), upstreams))
        return 0
    parser = argparse.ArgumentParser(description="CPU per chunk of a bare aiohttp relay.")
    parser.add_argument("--streams", type=int, default=20, help="back-to-back streams")
    parser.add_argument("--tokens", type=int, default=1000, help="tokens per back-to-back stream")
    parser.add_argument("--paced-streams", type=int, default=5, help="paced streams")
    parser.add_argument("--requests", type=int, default=1000, help="non-stream requests")
    args = parser.parse_args()
    try:
        table = uvloop.run(measure(args.streams, args.tokens, args.requests, args.paced_streams))
    except (BenchError, aiohttp.ClientError, TimeoutError, psutil.Error) as exc:
        print(f"FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
