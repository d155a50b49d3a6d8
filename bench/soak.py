"""No request lost under ordinary load: many clients, streamed and plain requests, every
answer checked.

    .venv/bin/python bench/soak.py                                  # 32 clients x 100
    .venv/bin/python bench/soak.py --setups llama-server,llama-cpp-python,vllm --per-client 20
    .venv/bin/python bench/soak.py --clients 32 --per-client 6 --max-tokens 8   # CI's version
    .venv/bin/python bench/soak.py --kinds "openai stream" --per-client 6 --max-tokens 64

For each setup (bench/concurrency.py's: the real SmolLM2 on llama-server, llama-cpp-python or
vLLM's CPU build) it starts `dx serve`, then `--clients` clients each send `--per-client`
chat requests one after another through DX, taking `--kinds` in turn: by default streamed
and non-streamed, OpenAI (/v1/chat/completions) and Ollama (/api/chat). Each client keeps its
connection to DX alive, as SDKs do. An answer counts as served only when it is complete: a
200, and a stream that ends with `data: [DONE]` (OpenAI) or a `"done": true` line (Ollama),
or a body with the answer. Anything else is a failure, with its reason.

Exit status 0 when every request of every setup was served.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from concurrency import TOPICS, run_dx, setups


@dataclass
class Tally:
    served: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    reasons: list[str] = field(default_factory=list)  # the first few

    def fail(self, kind: str, why: str) -> None:
        self.failed[kind] += 1
        if len(self.reasons) < 10:
            self.reasons.append(f"{kind}: {why}")


def complete(kind: str, body: bytes) -> str:
    """'' when the answer is whole, else why not."""
    if kind == "openai stream":
        lines = [line for line in body.splitlines() if line.startswith(b"data: ")]
        if not lines or lines[-1] != b"data: [DONE]":
            return f"ended without [DONE]: {body[-200:]!r}"
        return ""
    if kind == "ollama stream":
        last = json.loads(body.splitlines()[-1]) if body.strip() else {}
        return "" if last.get("done") is True else f"ended without done: {body[-200:]!r}"
    data = json.loads(body)
    if kind == "openai":
        return "" if data.get("choices") else f"no choices: {body[:200]!r}"
    return "" if data.get("done") is True and "message" in data else f"not done: {body[:200]!r}"


KINDS = ("openai stream", "openai", "ollama stream", "ollama")


async def one(
    session: aiohttp.ClientSession, url: str, kind: str, i: int, tokens: int, t: Tally
) -> None:
    stream = kind.endswith("stream")
    openai = kind.startswith("openai")
    messages = [{"role": "user", "content": f"Tell a story about {TOPICS[i % 8]} (#{i})."}]
    if openai:
        path = "/v1/chat/completions"
        body: dict[str, Any] = {"max_tokens": tokens, "stream": stream}
    else:
        path = "/api/chat"
        body = {"options": {"num_predict": tokens}, "stream": stream}
    body.update(model="smollm2", messages=messages)
    try:
        async with session.post(url + path, json=body) as resp:
            data = await resp.read()
            if resp.status != 200:
                t.fail(kind, f"HTTP {resp.status}: {data[:300]!r}")
                return
    except (aiohttp.ClientError, TimeoutError) as exc:
        t.fail(kind, f"{type(exc).__name__}: {exc}")
        return
    why = complete(kind, data)
    if why:
        t.fail(kind, why)
    else:
        t.served[kind] += 1


async def soak(
    url: str, key: str, clients: int, per_client: int, tokens: int, kinds: tuple[str, ...] = KINDS
) -> Tally:
    tally = Tally()
    headers = {"Authorization": f"Bearer {key}"}
    timeout = aiohttp.ClientTimeout(total=600)

    async def client(c: int) -> None:
        # One keep-alive connection per client, as an SDK keeps its pool.
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(
            headers=headers, timeout=timeout, connector=connector
        ) as session:
            for n in range(per_client):  # each client starts at another kind of request
                i = c * per_client + n
                await one(session, url, kinds[(c + n) % len(kinds)], i, tokens, tally)

    await asyncio.gather(*(client(c) for c in range(clients)))
    return tally


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--setups", default="llama-server")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--per-client", type=int, default=100)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument(
        "--kinds",
        default=",".join(KINDS),
        help=f"which requests, taken in turn (default: all: {','.join(KINDS)})",
    )
    p.add_argument("--json", type=Path, help="write the results here too")
    args = p.parse_args(argv)
    known = setups()
    rows = []
    ok = True
    for name in args.setups.split(","):
        with run_dx(name, known[name], timeout=600) as dx:
            t0 = time.monotonic()
            tally = asyncio.run(
                soak(
                    dx.url,
                    dx.key,
                    args.clients,
                    args.per_client,
                    args.max_tokens,
                    tuple(args.kinds.split(",")),
                )
            )
            wall = time.monotonic() - t0
        served, failed = sum(tally.served.values()), sum(tally.failed.values())
        ok = ok and failed == 0
        rows.append(
            {
                "setup": name,
                "served": served,
                "failed": failed,
                "wall_s": round(wall, 1),
                "by_kind": dict(tally.served),
                "failed_by_kind": dict(tally.failed),
                "reasons": tally.reasons,
            }
        )
        print(
            f"{name}: {args.clients} clients x {args.per_client} requests: {served} served, "
            f"{failed} failed in {wall:.1f} s ({served / wall:.1f} req/s)",
            flush=True,
        )
        for kind in sorted(tally.served.keys() | tally.failed.keys()):
            print(f"  {kind:14} {tally.served[kind]:6} served {tally.failed[kind]:4} failed")
        for reason in tally.reasons:
            print(f"  failure: {reason}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
