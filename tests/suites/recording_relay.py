"""A recording relay: an aiohttp pass-through on loopback that a client (Open WebUI) is pointed
at instead of DX. Every request goes on to DX unchanged and its answer comes back as it streams;
meanwhile one JSON line per request is appended to a file as it arrives (method, path, query,
the headers less credentials, the JSON body, a sequence number), and one more line with the same
number once DX's answer has ended (its status, how long it took, the end of an error body).
tests/suites/open_webui.py runs it with --record; the lines become the fixtures of
tests/data/openwebui/.

    python tests/suites/recording_relay.py --upstream http://127.0.0.1:11434 --port 11435 \
        --out requests.jsonl
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

from aiohttp import ClientSession, ClientTimeout, web

# Never written: credentials, and what names the browser's session or the connection.
DROPPED = {"authorization", "cookie", "x-api-key", "proxy-authorization"}
# Hop-by-hop, or recomputed by the client library on the way on.
NOT_FORWARDED = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}
NOT_RETURNED = {"content-length", "transfer-encoding", "connection", "content-encoding"}


def make_app(upstream: str, out: Path) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    session_key = web.AppKey("session", ClientSession)

    async def session_ctx(app: web.Application) -> Any:
        # No timeout: Open WebUI sets none on chat, and the tiny model on 2 cores may take minutes.
        async with ClientSession(timeout=ClientTimeout(total=None), auto_decompress=False) as s:
            app[session_key] = s
            yield

    app.cleanup_ctx.append(session_ctx)

    seq = iter(range(1, 1 << 62))

    def append(record: dict[str, Any]) -> None:
        with out.open("a") as f:
            f.write(json.dumps(record) + "\n")

    async def relay(request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = {"_not_json": raw[:200].decode("utf-8", "replace")}
        record: dict[str, Any] = {
            "seq": next(seq),
            "time": time.time(),
            "method": request.method,
            "path": request.path,
            "query": dict(request.query),
            "headers": {k.lower(): v for k, v in request.headers.items()
                        if k.lower() not in DROPPED | NOT_FORWARDED},
            "body": body,
        }
        append(record)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in NOT_FORWARDED}
        started = time.monotonic()
        async with app[session_key].request(request.method, upstream + request.path_qs,
                                            headers=headers, data=raw or None) as up:
            resp = web.StreamResponse(status=up.status, headers={
                k: v for k, v in up.headers.items() if k.lower() not in NOT_RETURNED})
            await resp.prepare(request)
            tail = b""
            async for chunk in up.content.iter_any():
                await resp.write(chunk)
                tail = (tail + chunk)[-2000:]
            await resp.write_eof()
        done: dict[str, Any] = {"seq": record["seq"], "status": up.status,
                                "seconds": round(time.monotonic() - started, 2)}
        if "X-DX-Trimmed-Tokens" in up.headers:  # DX trimmed a chat that outgrew the context
            done["trimmed_tokens"] = int(up.headers["X-DX-Trimmed-Tokens"])
        if up.status >= 400:
            done["error"] = tail.decode("utf-8", "replace")[-500:]
        append(done)
        return resp

    app.router.add_route("*", "/{tail:.*}", relay)
    return app


async def serve(upstream: str, port: int, out: Path) -> web.AppRunner:
    runner = web.AppRunner(make_app(upstream.rstrip("/"), out), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", required=True, help="DX's URL")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True, help="JSON lines, appended")
    args = parser.parse_args()

    async def run() -> None:
        runner = await serve(args.upstream, args.port, args.out)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    asyncio.run(run())


if __name__ == "__main__":
    main()
