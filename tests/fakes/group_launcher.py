"""A fake multi-node engine imitating vLLM's rendezvous, run as a DX `command:` engine.

    python tests/fakes/group_launcher.py --port {port} --rank {rank} --size {size}
                                         --leader {leader} --master-port {group_port}
                                         [--on-peer-loss exit|hang]

Rank 0 listens on the master port (all addresses) and waits until every other rank has
connected and said its rank (each is answered "ok"); only then does it serve a tiny OpenAI API
on 127.0.0.1:PORT (/health, /v1/models, /v1/chat/completions), as vLLM's server answers only
once its whole process group formed. Ranks > 0 connect to LEADER:MASTER_PORT (retrying while
no leader takes them: not up yet, or a group already formed), say their rank and serve nothing.
The answer names the group: "Hello from a group of N."

When a joined peer's connection ends (it died, or its machine did), what happens is
`--on-peer-loss`:
- `exit` (the default): every member exits with code 3, saying which peer it lost, as a
  torch.distributed job that fails fast;
- `hang`: as vLLM 0.32 does (measured: docs/FLEET.md): the member says it lost the peer and
  goes on running; the leader still answers /health, but a chat request never gets an answer.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

from aiohttp import web

JOIN_TIMEOUT = 120.0  # a worker gives up on a leader that never comes
broken = asyncio.Event()  # hang mode: a peer was lost, the group computes nothing any more


def lost(args: argparse.Namespace, who: str) -> None:
    if args.on_peer_loss == "exit":
        print(f"group: lost {who}; exiting as every member does", flush=True)
        sys.exit(3)
    print(f"group: lost {who}; hanging on, as vLLM does", flush=True)
    broken.set()


async def leader(args: argparse.Namespace) -> None:
    joined: dict[int, asyncio.StreamWriter] = {}
    all_joined = asyncio.Event()
    gone: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def member(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        rank = int(line.split()[1]) if line.startswith(b"rank ") else -1
        if not 0 < rank < args.size or rank in joined or all_joined.is_set():
            writer.close()  # the group formed already: a late joiner gets nothing
            return
        joined[rank] = writer
        writer.write(b"ok\n")
        print(
            f"group: rank {rank} joined from {writer.get_extra_info('peername')[0]} "
            f"({len(joined) + 1} of {args.size})",
            flush=True,
        )
        if len(joined) == args.size - 1:
            all_joined.set()
        await reader.read()  # EOF when the peer's process ends
        if not gone.done():
            gone.set_result(f"rank {rank}")

    await asyncio.start_server(member, "0.0.0.0", args.master_port)
    print(
        f"group: rank 0 waiting for {args.size - 1} member(s) on port {args.master_port}",
        flush=True,
    )
    if args.size > 1:
        waiting: set[asyncio.Future[Any]] = {asyncio.ensure_future(all_joined.wait()), gone}
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if gone.done():
            lost(args, gone.result())

    async def health(_: web.Request) -> web.Response:
        return web.json_response({})

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": args.name}]})

    async def completions(request: web.Request) -> web.Response:
        if broken.is_set():
            await asyncio.Event().wait()  # vLLM's engine waits on a peer that is gone
        return await chat(request, args)

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", completions)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.port).start()
    print(f"group: all {args.size} joined; serving on 127.0.0.1:{args.port}", flush=True)
    lost(args, await gone)
    await asyncio.Event().wait()


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
    while True:  # until a leader takes this rank
        try:
            reader, writer = await asyncio.open_connection(args.leader, args.master_port)
            writer.write(f"rank {args.rank}\n".encode())
            await writer.drain()
            if await reader.readline() == b"ok\n":
                break
            writer.close()
        except OSError:
            pass
        if time.monotonic() > deadline:
            print(f"group: no leader at {args.leader}:{args.master_port}", flush=True)
            sys.exit(4)
        await asyncio.sleep(0.2)
    print(
        f"group: rank {args.rank} joined the leader at {args.leader}:{args.master_port}",
        flush=True,
    )
    await reader.read()  # EOF when the leader's process ends
    lost(args, "the leader")
    await asyncio.Event().wait()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--leader", required=True)
    p.add_argument("--master-port", type=int, required=True)
    p.add_argument("--name", default="group")
    p.add_argument("--on-peer-loss", choices=("exit", "hang"), default="exit")
    args = p.parse_args()
    asyncio.run(leader(args) if args.rank == 0 else worker(args))


if __name__ == "__main__":
    main()
