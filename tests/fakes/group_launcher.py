"""A fake multi-node engine imitating vLLM's rendezvous, run as a DX `command:` engine.

    python tests/fakes/group_launcher.py --port {port} --rank {rank} --size {size}
                                         --leader {leader} --master-port {group_port}

Rank 0 listens on the master port (all addresses) and waits until every other rank has
connected and said its rank; only then does it serve a tiny OpenAI API on 127.0.0.1:PORT
(/health, /v1/models, /v1/chat/completions), as vLLM's server answers only once its whole
process group formed. Ranks > 0 connect to LEADER:MASTER_PORT (retrying while the leader is
not up yet), say their rank and serve nothing. All-or-nothing, as a torch.distributed group:
when a peer's connection ends (it died, or its machine did) every member exits with code 3
and says which peer it lost. The answer names the group: "Hello from a group of N."
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

from aiohttp import web

JOIN_TIMEOUT = 120.0  # a worker gives up on a leader that never comes


def lost(who: str) -> None:
    print(f"group: lost {who}; exiting as every member does", flush=True)
    sys.exit(3)


async def watch(reader: asyncio.StreamReader, who: str, done: asyncio.Future[str]) -> None:
    await reader.read()  # EOF when the peer's process ends
    if not done.done():
        done.set_result(who)


async def leader(args: argparse.Namespace) -> None:
    joined: dict[int, asyncio.StreamWriter] = {}
    all_joined = asyncio.Event()
    gone: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def member(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        rank = int(line.split()[1]) if line.startswith(b"rank ") else -1
        if not 0 < rank < args.size or rank in joined:
            writer.close()
            return
        joined[rank] = writer
        print(
            f"group: rank {rank} joined from {writer.get_extra_info('peername')[0]} "
            f"({len(joined) + 1} of {args.size})",
            flush=True,
        )
        if len(joined) == args.size - 1:
            all_joined.set()
        await watch(reader, f"rank {rank}", gone)

    server = await asyncio.start_server(member, "0.0.0.0", args.master_port)
    print(
        f"group: rank 0 waiting for {args.size - 1} member(s) on port {args.master_port}",
        flush=True,
    )
    if args.size > 1:
        waiting: set[asyncio.Future[Any]] = {asyncio.ensure_future(all_joined.wait()), gone}
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if gone.done():
            lost(gone.result())

    async def health(_: web.Request) -> web.Response:
        return web.json_response({})

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": args.name}]})

    async def completions(request: web.Request) -> web.Response:
        return await chat(request, args)

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", completions)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.port).start()
    print(f"group: all {args.size} joined; serving on 127.0.0.1:{args.port}", flush=True)
    lost(await gone)
    server.close()


async def chat(request: web.Request, args: argparse.Namespace) -> web.Response:
    body = await request.json()
    return web.json_response(
        {
            "id": "chatcmpl-group",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", args.name),
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {
                        "role": "assistant",
                        "content": f"Hello from a group of {args.size}.",
                    },
                }
            ],
            "usage": {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11},
        }
    )


async def worker(args: argparse.Namespace) -> None:
    deadline = time.monotonic() + JOIN_TIMEOUT
    while True:
        try:
            reader, writer = await asyncio.open_connection(args.leader, args.master_port)
            break
        except OSError:
            if time.monotonic() > deadline:
                print(f"group: no leader at {args.leader}:{args.master_port}", flush=True)
                sys.exit(4)
            await asyncio.sleep(0.2)
    writer.write(f"rank {args.rank}\n".encode())
    await writer.drain()
    print(
        f"group: rank {args.rank} joined the leader at {args.leader}:{args.master_port}", flush=True
    )
    gone: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    await watch(reader, "the leader", gone)
    lost(gone.result())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--leader", required=True)
    p.add_argument("--master-port", type=int, required=True)
    p.add_argument("--name", default="group")
    args = p.parse_args()
    asyncio.run(leader(args) if args.rank == 0 else worker(args))


if __name__ == "__main__":
    main()
