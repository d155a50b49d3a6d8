"""Fake DX nodes at several addresses, and a gateway's Membership watching a DNS name.

    python -m tests.fakes.fleet_watch --name nodes.fleet.test --port 8000 \
        --refresh 1 --serve 127.0.0.2 127.0.0.3 ::1

Each address in --serve gets a tiny node answering GET /fleet/state (serving model "qwen") on
--port. Membership resolves --name with the system resolver (the production path: getaddrinfo,
so /etc/resolv.conf decides) every --refresh seconds; each time the set of nodes serving
"qwen" changes, one JSON line {"t": unix time, "nodes": [ids]} goes to stdout. Run inside a
network namespace whose resolv.conf points at a test's DNS server (tests/e2e/test_fleet_dns.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time

import aiohttp
from aiohttp import web

from dxproxy.fleet.members import Membership

STATE = {
    "node": "fake",
    "generation": 1,
    "draining": False,
    "models": {
        "qwen": {"state": "ready", "ready": 1, "in_flight": 0, "capacity": 1, "queued": 0,
                 "kv_cache": None},
    },
}  # fmt: skip


async def state(request: web.Request) -> web.Response:
    return web.json_response(STATE)


async def main(args: argparse.Namespace) -> None:
    app = web.Application()
    app.router.add_get("/fleet/state", state)
    runner = web.AppRunner(app)
    await runner.setup()
    for address in args.serve:
        await web.TCPSite(runner, address, args.port).start()
    async with aiohttp.ClientSession() as session:
        members = Membership(urls=[], dns=[(args.name, args.port)], refresh=args.refresh,
                             node_key=None, session=session)  # fmt: skip
        await members.start()
        last: list[str] | None = None
        try:
            while True:
                now = sorted(v.id for v in members.nodes_for("qwen"))
                if now != last:
                    print(json.dumps({"t": time.time(), "nodes": now}), flush=True)
                    last = now
                await asyncio.sleep(0.02)
        finally:
            await members.close()
            await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--refresh", type=float, default=1.0)
    parser.add_argument("--serve", nargs="+", required=True)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(message)s")
    asyncio.run(main(parser.parse_args()))
