"""The embedded default's slots against its KV cache (issue 22): 8 concurrent short chats
through DX, setups measured in alternating rounds so that a busy machine weighs on each alike.

    .venv/bin/python bench/default_context.py                     # 5 rounds
    .venv/bin/python bench/default_context.py --rounds 3 --setups before,default-8k

Setups (SmolLM2-135M-Instruct on llama-server, DX's own command line, embeddings on):

  before          16 slots x 2048 tokens (the default until issue 22): a 32768-token KV pool
  default-8k      8 slots x 8192 tokens (the default now): a 65536-token pool
  default-8k-16   16 slots x 8192 tokens: a 131072-token pool
  default-8k-4    4 slots x 8192 tokens: DX's own sizing for 8192 (32768 / context)

Every setup's dx runs for the whole bench (idle engines cost no CPU). A round sends the same
streamed requests (64 tokens asked, distinct prompts, 3 per client by default) to each setup
in turn, the order rotating from round to round. Reported per setup: the median aggregate completion
tokens/s and TTFT p50 over the rounds, its ratio to `before` round by round (median), and the
engine's resident memory. Run `uptime` beside it: the numbers are only as quiet as the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from concurrency import SMOLLM2, Dx, Engine, level_run, pct, run_dx

SETUPS: dict[str, dict[str, Any]] = {
    "before": {"engine": "llamacpp", "model": SMOLLM2, "context": 2048, "parallel": 16},
    "default-8k": {"engine": "llamacpp", "model": SMOLLM2, "context": 8192, "parallel": 8},
    "default-8k-16": {"engine": "llamacpp", "model": SMOLLM2, "context": 8192, "parallel": 16},
    "default-8k-4": {"engine": "llamacpp", "model": SMOLLM2, "context": 8192, "parallel": 4},
}


def engine_rss(dx: Dx) -> int:
    return sum(
        c.memory_info().rss
        for c in psutil.Process(dx.proc.pid).children()
        if "--port" in c.cmdline()
    )


async def bench(
    names: list[str], rounds: int, clients: int, per_client: int
) -> list[dict[str, Any]]:
    with contextlib.ExitStack() as stack:
        dxs = {n: stack.enter_context(run_dx(n, SETUPS[n], timeout=900)) for n in names}
        for dx in dxs.values():  # warm: the first requests fill caches
            await level_run([Engine(dx.url, dx.key)], 2, 2, 8)
        tok_s: dict[str, list[float]] = {n: [] for n in names}
        ttft: dict[str, list[float]] = {n: [] for n in names}
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for n in order:
                dx = dxs[n]
                out = await level_run([Engine(dx.url, dx.key)], clients, clients * per_client, 64)
                if out.failures:
                    raise SystemExit(f"{n}: {out.failures} failed: {out.errors}")
                tok_s[n].append(out.tok_s)
                ttft[n].append(pct(out.ttft, 0.5))
                print(json.dumps({"round": r, "setup": n, "tok_s": round(out.tok_s, 1)}),
                      flush=True)  # fmt: skip
        rows = []
        base = tok_s[names[0]]
        for n in names:
            rows.append({
                "setup": n,
                "slots": SETUPS[n]["parallel"],
                "context": SETUPS[n]["context"],
                "kv_pool_tokens": SETUPS[n]["parallel"] * SETUPS[n]["context"],
                "engine_rss_mib": round(engine_rss(dxs[n]) / 2**20),
                "tok_s_median": round(statistics.median(tok_s[n]), 1),
                "tok_s_rounds": [round(x, 1) for x in tok_s[n]],
                "ratio_to_first_median": round(
                    statistics.median(a / b for a, b in zip(tok_s[n], base, strict=True)), 3
                ),
                "ttft_p50_ms_median": round(statistics.median(ttft[n]) * 1000),
            })  # fmt: skip
        return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--setups", default="before,default-8k,default-8k-16")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--per-client", type=int, default=3, help="requests per client per round")
    p.add_argument("--json", type=Path, help="write the rows here too")
    args = p.parse_args()
    names = args.setups.split(",")
    for n in names:
        if n not in SETUPS:
            raise SystemExit(f"unknown setup {n!r}; known: {', '.join(SETUPS)}")
    rows = asyncio.run(bench(names, args.rounds, args.clients, args.per_client))
    for row in rows:
        print(json.dumps(row))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
