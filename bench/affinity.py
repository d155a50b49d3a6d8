"""Time to first token on multi-turn chats over 2 replicas, with and without DX's
conversation affinity.

    .venv/bin/python bench/affinity.py [--engine llamacpp|llama-cpp-python] [--chats 8]

A conversation's later turns repeat its earlier ones; the replica that served them still has
them in its prompt cache and reads only the new turn. Without affinity, least-busy routing
sends a follow-up to either replica, and the other one reads the whole conversation again.
The bench runs the same chats twice (`affinity: true`, then `affinity: false`), 4 at a time,
each turn streamed, each with a long system prompt of its own (what makes re-reading
expensive), and a visitor's think time between turns (0 to 1.5 s, the same seeded sequence in
both runs: without it the chats run in lockstep and least-busy routing happens to send every
follow-up back to the same replica). It reports time to first token of the follow-up turns
(mean, p50, p99; the first turn is the same in both runs) and how many of them the engine read
from its cache.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from concurrency import SMOLLM2, Dx, pct, run_dx


def system(n: int) -> str:
    """A long system prompt of its own for each conversation (its documents, say): what a
    replica that never saw the conversation must read again."""
    return f"You are a patient assistant for railway museum number {n}. " + " ".join(
        f"Fact {i}: museum {n}'s locomotive number {i} was built in {1850 + i + n} and ran "
        f"{100 + 7 * i + n} kilometres a day on the line to the coast."
        for i in range(24)
    )


QUESTIONS = [
    "Which locomotive is oldest?",
    "And the newest?",
    "How far did it run?",
    "Summarise in one line.",
]


def turn_body(messages: list[dict[str, str]]) -> dict[str, Any]:
    """A turn's request: 16 greedy tokens, streamed, with the usage (whose cached_tokens show
    the prompt cache at work)."""
    return {
        "model": "smollm2",
        "messages": messages,
        "max_tokens": 16,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0,
    }


@dataclass
class Reply:
    """A streamed answer: time to its first token (None: no content came), text and usage."""

    first: float | None
    text: str
    usage: dict[str, Any]

    @property
    def cached(self) -> bool:
        """Most of the conversation read from the engine's cache: it had the earlier turns."""
        hit = (self.usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
        return bool(hit > self.usage.get("prompt_tokens", 0) // 2)


async def read_reply(resp: aiohttp.ClientResponse, t0: float) -> Reply:
    """Read an OpenAI chat stream to its end: the first token's time since `t0` (monotonic),
    the text, and the usage of the chunk that carries it."""
    first = None
    text = []
    usage: dict[str, Any] = {}
    async for line in resp.content:
        if not line.startswith(b"data: {"):
            continue
        event = json.loads(line[6:])
        usage = event.get("usage") or usage
        delta = (event.get("choices") or [{}])[0].get("delta", {})
        if delta.get("content"):
            first = first or time.monotonic() - t0
            text.append(delta["content"])
    return Reply(first, "".join(text), usage)


async def chat(
    session: aiohttp.ClientSession, dx: Dx, n: int, out: list[float], cached: list[bool]
) -> None:
    messages: list[dict[str, str]] = [{"role": "system", "content": system(n)}]
    think = random.Random(n)  # the same pauses with and without affinity
    for turn, q in enumerate(QUESTIONS):
        if turn:
            await asyncio.sleep(think.uniform(0, 1.5))
        messages.append({"role": "user", "content": f"(visitor {n}) {q}"})
        body = turn_body(messages)
        t0 = time.monotonic()
        async with session.post(
            dx.url + "/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {dx.key}"},
        ) as resp:
            resp.raise_for_status()
            reply = await read_reply(resp, t0)
        if turn and reply.first is not None:
            out.append(reply.first)
            cached.append(reply.cached)
        messages.append({"role": "assistant", "content": reply.text})


async def run(dx: Dx, chats: int) -> tuple[list[float], list[bool]]:
    ttft: list[float] = []
    cached: list[bool] = []
    sem = asyncio.Semaphore(4)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:

        async def one(n: int) -> None:
            async with sem:
                await chat(session, dx, n, ttft, cached)

        await asyncio.gather(*(one(n) for n in range(chats)))
    return ttft, cached


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engine", default="llamacpp", choices=["llamacpp", "llama-cpp-python"])
    p.add_argument("--chats", type=int, default=8)
    args = p.parse_args(argv)
    rows = []
    for affinity in (True, False):
        model: dict[str, Any] = {
            "engine": args.engine,
            "model": SMOLLM2,
            "context": 2048,
            "replicas": 2,
            "affinity": affinity,
        }
        if args.engine == "llamacpp":
            model["parallel"] = 4
        with run_dx(f"affinity {affinity}", model, timeout=300) as dx:
            ttft, cached = asyncio.run(run(dx, args.chats))
        rows.append((affinity, ttft, cached))
        print(
            json.dumps(
                {
                    "affinity": affinity,
                    "follow_ups": len(ttft),
                    "ttft_mean_ms": round(sum(ttft) / len(ttft) * 1000),
                    "ttft_p50_ms": round(pct(ttft, 0.5) * 1000),
                    "ttft_p99_ms": round(pct(ttft, 0.99) * 1000),
                    "read_from_cache": f"{sum(cached)} of {len(cached)}",
                }
            ),
            flush=True,
        )
    (on, on_hits), (off, off_hits) = ((sum(t) / len(t), sum(c)) for _, t, c in rows)
    print(
        f"| {args.engine}, 2 replicas | follow-up TTFT mean with affinity {on * 1000:.0f} ms "
        f"({on_hits} of {len(rows[0][1])} from cache) | without {off * 1000:.0f} ms "
        f"({off_hits} from cache) | {off / on:.2f}x |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
