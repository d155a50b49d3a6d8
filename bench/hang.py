"""A hung or killed engine, as its clients and its operator see it; and no false alarm under load.

    .venv/bin/python bench/hang.py signal --rounds 3          # SIGKILL and SIGSTOP mid-stream
    .venv/bin/python bench/hang.py stress --seconds 120        # 32 clients, ~4k-token prompts

`signal`: DX serves the real SmolLM2 on llama-server (context 2048; a new DX for each
signal, so that every restart is a first one). A streamed Ollama `/api/chat` asks for 2,000
tokens; after its 5th line the engine gets the signal. Reported per signal, in seconds after
it: when the client's stream ended (and its last line), when the restarted engine was ready
(its spawn time plus its start, from /admin/models), and when a new 1-token chat sent right
after the stream ended was answered (it waits for the restart; retried every 0.1 s if not).

`stress`: DX serves SmolLM2 on llama-server with `--context` (8192: 4 slots) while `--clients`
clients each send one streamed chat after another, each with a distinct prompt of about
`--prompt-tokens` tokens and 16 tokens to generate, for `--seconds` (then the requests still in
flight are cut, and not counted). Both cores are saturated
(the engine's 2 threads, DX, the clients). Meanwhile a side prober asks the engine's /health
directly every 0.25 s (as DX's liveness probe does) and the bench records its latency, the
longest silence of any stream, and the engine's CPU use. Reported: requests served and
failed, the engine's restarts (must be 0: a restart is a false alarm), /health latency p50,
p99 and max.

Exit status 0 when every expectation held (stress: no restart, no failure).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from concurrency import SMOLLM2, run_dx

WORDS = [
    "river",
    "mountain",
    "lantern",
    "copper",
    "violet",
    "orchard",
    "harbor",
    "meadow",
    "falcon",
    "quartz",
    "ember",
    "willow",
    "canyon",
    "saffron",
    "glacier",
    "thunder",
    "marble",
    "velvet",
    "compass",
    "tundra",
]


def engine_pid(dx_pid: int) -> int:
    for child in psutil.Process(dx_pid).children():
        if "--port" in child.cmdline():
            return int(child.pid)
    raise SystemExit("no engine process under dx")


async def admin_replica(session: aiohttp.ClientSession, url: str, key: str) -> dict[str, Any]:
    async with session.get(url + "/admin/models", headers={"Authorization": f"Bearer {key}"}) as r:
        data = await r.json()
    entry = next(m for m in data["models"] if m["name"].startswith("smollm2"))
    return dict(entry["replicas"][0])


async def serves(session: aiohttp.ClientSession, url: str, key: str) -> bool:
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": "Hi"}],
        "stream": False,
        "options": {"num_predict": 1},
    }
    try:
        async with session.post(
            url + "/api/chat",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
            timeout=aiohttp.ClientTimeout(total=60),
        ) as r:
            await r.read()
            return r.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def one_signal(url: str, key: str, pid: int, sig: int) -> dict[str, Any]:
    body = {
        "model": "smollm2",
        "stream": True,
        "options": {"num_predict": 2000},
        "messages": [{"role": "user", "content": "Write a very long story about a dragon."}],
    }
    out: dict[str, Any] = {"signal": signal.Signals(sig).name}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        t_sig = t_sig_wall = 0.0
        lines = 0
        last = b""
        async with session.post(
            url + "/api/chat", json=body, headers={"Authorization": f"Bearer {key}"}
        ) as resp:
            try:
                async for line in resp.content:
                    if line.strip():
                        lines += 1
                        last = line.strip()
                    if lines == 5 and not t_sig:
                        psutil.Process(pid).send_signal(sig)
                        t_sig, t_sig_wall = time.monotonic(), time.time()
            except aiohttp.ClientError as exc:
                last = f"(client error) {type(exc).__name__}: {exc}".encode()
        out["stream_ended_s"] = round(time.monotonic() - t_sig, 2)
        out["last_line"] = last.decode(errors="replace")[:300]
        out["lines"] = lines
        while not await serves(session, url, key):
            if time.monotonic() - t_sig > 120:
                out["serves_again_s"] = None
                return out
            await asyncio.sleep(0.1)
        out["serves_again_s"] = round(time.monotonic() - t_sig, 2)
        after = await admin_replica(session, url, key)
        out["engine_ready_in_s"] = after["ready_in_s"]
        # The replica was ready again (serving) at its spawn time plus its start.
        ready = float(after["started_at"]) + float(after["ready_in_s"]) - t_sig_wall
        out["ready_again_s"] = round(ready, 2)
        # Let the restarted engine settle before the next round.
        await asyncio.sleep(1.0)
    return out


def run_signal(args: argparse.Namespace) -> int:
    model = {"engine": "llamacpp", "model": SMOLLM2, "context": 2048}
    results = []
    for _ in range(args.rounds):
        for sig in (signal.SIGKILL, signal.SIGSTOP):
            # A new DX each time: restarts back off more after each failure (1, 2, 4 s...).
            with run_dx("llama-server", model, timeout=120) as dx:
                pid = engine_pid(dx.proc.pid)
                r = asyncio.run(one_signal(dx.url, dx.key, pid, sig))
            print(json.dumps(r), flush=True)
            results.append(r)
    print(
        "\n| signal | client's stream ends | engine ready again | a new request answered "
        "| (the engine's own start) |"
    )
    print("|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['signal']} | {r['stream_ended_s']} s | {r.get('ready_again_s')} s "
            f"| {r['serves_again_s']} s | {r.get('engine_ready_in_s')} s |"
        )
    return 0


def prompt(i: int, tokens: int) -> str:
    # Roughly one token per word for these common words; distinct per request from the start,
    # so that no prompt cache helps.
    words = [f"{i}"] + [WORDS[(i * 7 + k * 13 + k // 20) % len(WORDS)] for k in range(tokens)]
    return "Summarise in one line: " + " ".join(words)


async def stress(
    url: str, key: str, engine: str, engine_key: str, pid: int, args: argparse.Namespace
) -> dict[str, Any]:
    stop_at = time.monotonic() + args.seconds
    served = failed = 0
    reasons: list[str] = []
    silences: list[float] = []
    health: list[float] = []
    prompt_tokens: list[int] = []
    counter = iter(range(10**9))

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal served, failed
        while time.monotonic() < stop_at:
            i = next(counter)
            body = {
                "model": "smollm2",
                "stream": True,
                "max_tokens": 16,
                "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": prompt(i, args.prompt_tokens)}],
            }
            last = time.monotonic()
            longest = 0.0
            text = b""
            try:
                async with session.post(
                    url + "/v1/chat/completions",
                    json=body,
                    headers={"Authorization": f"Bearer {key}"},
                ) as resp:
                    async for chunk in resp.content.iter_any():
                        now = time.monotonic()
                        longest = max(longest, now - last)
                        last = now
                        text += chunk
                ok = resp.status == 200 and b"data: [DONE]" in text and b'"error"' not in text
            except (aiohttp.ClientError, TimeoutError) as exc:
                ok = False
                text = f"{type(exc).__name__}: {exc}".encode()
            if ok:
                served += 1
                silences.append(longest)
                for line in text.splitlines():
                    if line.startswith(b"data: {") and b'"usage"' in line:
                        usage = json.loads(line[6:]).get("usage") or {}
                        prompt_tokens.append(int(usage.get("prompt_tokens") or 0))
            else:
                failed += 1
                if len(reasons) < 5:
                    reasons.append(text[-300:].decode(errors="replace"))

    async def prober(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < stop_at:
            t0 = time.monotonic()
            try:
                async with session.get(
                    engine + "/health",
                    headers={"Authorization": f"Bearer {engine_key}"},
                    timeout=aiohttp.ClientTimeout(total=30),
                ) as r:
                    await r.read()
                health.append(time.monotonic() - t0)
            except (aiohttp.ClientError, TimeoutError):
                health.append(float("inf"))
            await asyncio.sleep(0.25)

    proc = psutil.Process(pid)
    cpu0 = sum(proc.cpu_times()[:2])
    load0 = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=None, sock_read=600)
    async with aiohttp.ClientSession(
        timeout=timeout, connector=aiohttp.TCPConnector(limit=0)
    ) as session:
        tasks = [
            asyncio.ensure_future(c)
            for c in [prober(session), *(client(session) for _ in range(args.clients))]
        ]
        await asyncio.wait(tasks, timeout=args.seconds)
        for t in tasks:  # the requests still in flight at the end are cut, not counted
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        replica = await admin_replica(session, url, key)
    cpu = (sum(proc.cpu_times()[:2]) - cpu0) / (time.monotonic() - load0)
    health.sort()
    silences.sort()

    def pct(xs: list[float], p: float) -> float:
        return round(xs[min(len(xs) - 1, int(p * len(xs)))], 3) if xs else 0.0

    return {
        "served": served,
        "failed": failed,
        "reasons": reasons,
        "prompt_tokens_mean": round(sum(prompt_tokens) / len(prompt_tokens))
        if prompt_tokens
        else None,
        "restarts": replica.get("restarts"),
        "state": replica.get("state"),
        "engine_cpu_cores": round(cpu, 2),
        "health_probes": len(health),
        "health_p50_s": pct(health, 0.5),
        "health_p99_s": pct(health, 0.99),
        "health_max_s": round(health[-1], 3) if health else None,
        "stream_silence_p50_s": pct(silences, 0.5),
        "stream_silence_max_s": round(silences[-1], 2) if silences else None,
    }


def run_stress(args: argparse.Namespace) -> int:
    from concurrency import find_engines

    model = {"engine": "llamacpp", "model": SMOLLM2, "context": args.context}
    with run_dx("llama-server", model, timeout=120) as dx:
        engine = find_engines(dx.proc.pid)[0]
        pid = engine_pid(dx.proc.pid)
        r = asyncio.run(stress(dx.url, dx.key, engine.url, engine.key, pid, args))
    print(json.dumps(r, indent=1))
    return 0 if r["restarts"] == 0 and r["failed"] == 0 else 1


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="what", required=True)
    s = sub.add_parser("signal")
    s.add_argument("--rounds", type=int, default=3)
    t = sub.add_parser("stress")
    t.add_argument("--clients", type=int, default=32)
    t.add_argument("--seconds", type=float, default=120)
    t.add_argument("--prompt-tokens", type=int, default=4000)
    t.add_argument("--context", type=int, default=8192)
    args = parser.parse_args()
    return run_signal(args) if args.what == "signal" else run_stress(args)


if __name__ == "__main__":
    raise SystemExit(main())
