"""How long a light user's single request waits while another key floods the same model.

    .venv/bin/python bench/fairness.py [--flood 32]

DX serves the fake engine (tests/fakes/fake_engine.py; each request takes about 0.3 s: six
chunks 50 ms apart) with one slot, so every request queues in DX. Two API keys (from
`auth.keys`). The light key's request is timed three ways:

  alone                  nothing else waits
  flooded, other key     a second key has `--flood` requests waiting: keys take turns
  flooded, same key      the flood comes from the light key itself: plain FIFO, which is
                         what any single-queue proxy gives two users
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from concurrency import run_dx

ROOT = Path(__file__).resolve().parent.parent
FLOOD_KEY = "flood-key-0123456789abcdef"
LIGHT_KEY = "light-key-0123456789abcdef"


async def ask(session: aiohttp.ClientSession, url: str, key: str) -> float:
    t0 = time.monotonic()
    body = {"model": "smollm2", "stream": False, "messages": [{"role": "user", "content": "PAUSE"}]}
    async with session.post(
        url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
    ) as resp:
        await resp.read()
        assert resp.status == 200, resp.status
    return time.monotonic() - t0


async def scenario(url: str, flood: int, flood_key: str | None) -> float:
    async with aiohttp.ClientSession() as session:
        floods = []
        if flood_key:
            floods = [asyncio.create_task(ask(session, url, flood_key)) for _ in range(flood)]
            await asyncio.sleep(0.2)  # the flood is queued first
        light = await ask(session, url, LIGHT_KEY)
        await asyncio.gather(*floods)
    return light


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--flood", type=int, default=32)
    args = p.parse_args(argv)
    fake = str(ROOT / "tests" / "fakes" / "fake_engine.py")
    model = {
        "engine": "llamacpp",
        "model": fake,
        "parallel": 1,
        "command": [sys.executable, fake, "--port", "{port}"],
    }
    extra = {"auth": {"keys": [FLOOD_KEY, LIGHT_KEY]}, "limits": {"queue_size": 1024}}
    with run_dx("fairness", model, timeout=60, extra=extra) as dx:
        alone = asyncio.run(scenario(dx.url, args.flood, None))
        other = asyncio.run(scenario(dx.url, args.flood, FLOOD_KEY))
        same = asyncio.run(scenario(dx.url, args.flood, LIGHT_KEY))
    print("| light key's request | time to answer |\n|---|---|")
    print(f"| alone | {alone:.2f} s |")
    print(f"| {args.flood} queued by another key (fair turns) | {other:.2f} s |")
    print(f"| {args.flood} queued by the same key (FIFO) | {same:.2f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
