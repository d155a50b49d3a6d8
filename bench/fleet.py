"""What a fleet costs and what affinity buys (issue 16).

    .venv/bin/python bench/fleet.py hops [--requests 300] [--clients 1,8,32]
    .venv/bin/python bench/fleet.py affinity [--chats 8]
    .venv/bin/python bench/fleet.py            # both

`hops` (fake engine, bench/fake_openai_engine.py, which answers at once: what remains is the
proxies): one DX node in front of the engine and one DX gateway (`fleet:` naming the node,
the model `upstream: fleet`) in front of the node. The same streamed chat goes, at 1, 8 and 32
concurrent clients, to three paths in turn: the engine directly, the node (one hop), the
gateway (two hops). It reports time to the first token (p50, p99) and what each hop adds to
the direct path, and the CPU time (user + system, psutil) of the node's and the gateway's dx
process per request. First, one client sends to the three paths interleaved, request by
request: the median of each hop's paired difference, which a loaded machine skews least.
The target (the issue's): a gateway hop adds <= 1 ms p50 and costs <= 1.2x a node's own CPU
per request.

`affinity` (real llama-server serving SmolLM2 on each of 2 nodes, a gateway in front): the
multi-turn chats of bench/affinity.py (a long system prompt of each chat's own, 4 turns, a
visitor's think time between them, 4 chats at a time), once through the gateway (rendezvous
affinity: each conversation's follow-ups go to its home node) and once with each turn sent
to a random node directly (what a balancer without affinity does; other chats, so the first
run's prompt caches do not help the second). It reports the affinity hit rate (follow-ups
served by the node that served the turn before, from X-DX-Upstream), the follow-ups' time to
first token, and how many the engine read mostly from its prompt cache.

Everything runs on this machine: client, proxies and engines share its cores, so compare
ratios and per-request CPU, and record the load average (printed) beside any number.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from affinity import QUESTIONS, read_reply, system, turn_body
from concurrency import SMOLLM2, find_engines, pct
from dx_process import serve

HERE = Path(__file__).resolve().parent
FAKE_ENGINE = HERE / "fake_openai_engine.py"
MODEL = "smollm2"
NODE_KEY = "bench-fleet-node-key"
MESSAGES = [{"role": "user", "content": "Tell me a story."}]


# -- processes -------------------------------------------------------------------------------


@dataclass
class Dx:
    proc: subprocess.Popen[str]
    url: str
    key: str

    @property
    def ps(self) -> psutil.Process:
        return psutil.Process(self.proc.pid)


@contextlib.contextmanager
def run_dx(name: str, config: dict[str, Any], timeout: float) -> Iterator[Dx]:
    """`dx serve` on a free loopback port with `config` (plus server settings), until exit."""
    server = {"max_connections_per_client": 1000, "shutdown_timeout": 5}
    prefix = f"dx-bench-{name}-"
    with serve(name, config, timeout, server=server, prefix=prefix, verbose=True) as dx:
        yield Dx(dx.proc, dx.url, dx.key)


def node_config(model: dict[str, Any]) -> dict[str, Any]:
    return {"auth": {"keys": [NODE_KEY]}, "models": {MODEL: model}}


def gateway_config(nodes: list[Dx]) -> dict[str, Any]:
    return {
        "fleet": {"nodes": [{"url": n.url} for n in nodes], "refresh": "1s", "node_key": NODE_KEY},
        "models": {MODEL: {"upstream": "fleet"}},
    }


def fake_engine() -> dict[str, Any]:
    # `model` must name an existing file; the fake engine ignores it
    return {
        "engine": "llamacpp",
        "model": str(FAKE_ENGINE),
        "parallel": 64,
        "command": [sys.executable, str(FAKE_ENGINE), "--port", "{port}", "--model", "{name}"],
    }


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# -- hops ------------------------------------------------------------------------------------


@dataclass
class Path_:
    name: str
    url: str
    key: str


@dataclass
class Run:
    ttft: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    upstreams: set[str] = field(default_factory=set)


async def stream(session: aiohttp.ClientSession, path: Path_, max_tokens: int, run: Run) -> None:
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": max_tokens, "stream": True}
    t0 = time.perf_counter()
    first = None
    try:
        async with session.post(
            path.url + "/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {path.key}"},
        ) as resp:
            if resp.status != 200:
                run.failures.append(f"HTTP {resp.status}: {(await resp.read())[:200]!r}")
                return
            if "X-DX-Upstream" in resp.headers:
                # "NODE-URL REPLICA": the node, then the node's own replica
                run.upstreams.add(resp.headers["X-DX-Upstream"].split()[0])
            done = False
            async for line in resp.content:
                if first is None and line.startswith(b'data: {"') and b'"content":"' in line:
                    first = time.perf_counter() - t0
                elif line.startswith(b"data: [DONE]"):
                    done = True
            if not done or first is None:
                run.failures.append("stream incomplete")
                return
    except (aiohttp.ClientError, TimeoutError) as e:
        run.failures.append(f"{type(e).__name__}: {e}")
        return
    run.ttft.append(first)


async def load(path: Path_, clients: int, requests: int, max_tokens: int) -> Run:
    run = Run()
    left = iter(range(requests))
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=120), connector=aiohttp.TCPConnector(limit=0)
    ) as session:

        async def client() -> None:
            for _ in left:
                await stream(session, path, max_tokens, run)

        await asyncio.gather(*(client() for _ in range(clients)))
    return run


def cpu(p: psutil.Process) -> float:
    t = p.cpu_times()
    return float(t.user + t.system)


async def paired(paths: list[Path_], rounds: int, max_tokens: int) -> dict[str, float]:
    """One client, the paths interleaved request by request in rotating order, so that the
    machine's load (other work on shared cores) weighs on each path alike: the median over
    rounds of each hop's added TTFT (node - direct, gateway - node), in ms."""
    run = {p.name: Run() for p in paths}
    added: dict[str, list[float]] = {"node_hop": [], "gateway_hop": []}
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=120), connector=aiohttp.TCPConnector(limit=0)
    ) as session:
        for i in range(rounds):
            for p in paths[i % 3 :] + paths[: i % 3]:
                await stream(session, p, max_tokens, run[p.name])
            failed = [f for r in run.values() for f in r.failures]
            if failed:
                raise SystemExit(f"paired run: {failed[:3]}")
            d, n, g = (run[name].ttft[-1] for name in ("direct", "node", "gateway"))
            added["node_hop"].append(n - d)
            added["gateway_hop"].append(g - n)
    return {k: round(pct(v, 0.5) * 1000, 3) for k, v in added.items()}


def bench_hops(requests: int, levels: list[int], max_tokens: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with run_dx("node", node_config(fake_engine()), 60) as node:
        engine = find_engines(node.proc.pid)[0]
        with run_dx("gateway", gateway_config([node]), 60) as gateway:
            paths = [
                Path_("direct", engine.url, engine.key),
                Path_("node", node.url, NODE_KEY),
                Path_("gateway", gateway.url, gateway.key),
            ]
            procs = {"node": node.ps, "gateway": gateway.ps}
            for p in paths:  # warm: connections, first-request costs
                warm = asyncio.run(load(p, 4, 40, max_tokens))
                if warm.failures:
                    raise SystemExit(f"{p.name}: {warm.failures[:3]}")
            hops = asyncio.run(paired(paths, requests, max_tokens))
            row = {"paired_rounds": requests, **hops, "load_average": load_average()}
            print(json.dumps(row), flush=True)
            rows.append(row)
            for i, clients in enumerate(levels):
                ordered = paths[i % 3 :] + paths[: i % 3]  # rotate who goes first
                direct_p50 = None
                results = {}
                for p in ordered:
                    before = {k: cpu(v) for k, v in procs.items()}
                    run = asyncio.run(load(p, clients, requests, max_tokens))
                    spent = {k: cpu(v) - before[k] for k, v in procs.items()}
                    if run.failures:
                        raise SystemExit(f"{p.name} at {clients}: {run.failures[:3]}")
                    if p.name == "gateway" and run.upstreams != {node.url}:
                        raise SystemExit(f"gateway answers named {run.upstreams}, not the node")
                    results[p.name] = (run, spent)
                direct_p50 = pct(results["direct"][0].ttft, 0.5)
                direct_p99 = pct(results["direct"][0].ttft, 0.99)
                for p in paths:
                    run, spent = results[p.name]
                    p50, p99 = pct(run.ttft, 0.5), pct(run.ttft, 0.99)
                    row = {
                        "clients": clients,
                        "path": p.name,
                        "requests": len(run.ttft),
                        "ttft_p50_ms": round(p50 * 1000, 2),
                        "ttft_p99_ms": round(p99 * 1000, 2),
                        "added_p50_ms": round((p50 - direct_p50) * 1000, 2),
                        "added_p99_ms": round((p99 - direct_p99) * 1000, 2),
                        "node_cpu_us_per_req": round(spent["node"] / requests * 1e6),
                        "gateway_cpu_us_per_req": round(spent["gateway"] / requests * 1e6),
                        "load_average": load_average(),
                    }
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    return rows


def hops_table(rows: list[dict[str, Any]]) -> str:
    out = [
        "| clients | path | TTFT p50 ms | p99 ms | added p50 ms | added p99 ms "
        "| node CPU µs/req | gateway CPU µs/req |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in (r for r in rows if "path" in r):
        out.append(
            f"| {r['clients']} | {r['path']} | {r['ttft_p50_ms']} | {r['ttft_p99_ms']} "
            f"| {r['added_p50_ms']} | {r['added_p99_ms']} | {r['node_cpu_us_per_req']} "
            f"| {r['gateway_cpu_us_per_req']} |"
        )
    by = {(r["clients"], r["path"]): r for r in rows if "path" in r}
    for r in (r for r in rows if "paired_rounds" in r):
        out.append(
            f"\nInterleaved, 1 client, median of {r['paired_rounds']} rounds: a node hop adds "
            f"{r['node_hop']} ms to the time to first token, the gateway hop {r['gateway_hop']} ms"
        )
    for clients in sorted({r["clients"] for r in rows if "clients" in r}):
        g, n = by[(clients, "gateway")], by[(clients, "node")]
        hop = g["ttft_p50_ms"] - n["ttft_p50_ms"]
        ratio = g["gateway_cpu_us_per_req"] / max(n["node_cpu_us_per_req"], 1)
        out.append(
            f"\n{clients} client(s): the gateway hop adds {hop:.2f} ms p50 (target <= 1); "
            f"its CPU per request is {ratio:.2f}x the node's (target <= 1.2)"
        )
    return "\n".join(out)


# -- affinity --------------------------------------------------------------------------------


@dataclass
class Turn:
    ttft: float
    node: str
    previous: str | None
    cached: bool


async def chat(
    session: aiohttp.ClientSession,
    n: int,
    pick: Any,
    headers_for: Any,
    gateway_url: str,
    turns: list[Turn],
) -> None:
    messages: list[dict[str, str]] = [{"role": "system", "content": system(n)}]
    think = random.Random(n)
    previous = None
    for turn, q in enumerate(QUESTIONS):
        if turn:
            await asyncio.sleep(think.uniform(0, 1.5))
        messages.append({"role": "user", "content": f"(visitor {n}) {q}"})
        body = turn_body(messages)
        url = pick(turn)
        t0 = time.monotonic()
        async with session.post(
            url + "/v1/chat/completions", json=body, headers=headers_for(url)
        ) as resp:
            if resp.status != 200:
                raise SystemExit(f"HTTP {resp.status}: {(await resp.read())[:300]!r}")
            # a gateway names the node ("NODE-URL REPLICA"); a node itself names its replica
            node = resp.headers["X-DX-Upstream"].split()[0] if url == gateway_url else url
            reply = await read_reply(resp, t0)
        if turn and reply.first is not None:
            turns.append(Turn(reply.first, node, previous, reply.cached))
        previous = node
        messages.append({"role": "assistant", "content": reply.text})


async def chats(
    first: int, count: int, pick_for: Any, headers_for: Any, gateway_url: str
) -> list[Turn]:
    turns: list[Turn] = []
    sem = asyncio.Semaphore(4)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=900)) as session:

        async def one(n: int) -> None:
            async with sem:
                await chat(session, n, pick_for(n), headers_for, gateway_url, turns)

        await asyncio.gather(*(one(n) for n in range(first, first + count)))
    return turns


async def fleet_metrics(gateway: Dx) -> dict[str, float]:
    """The gateway's affinity and ejection counters, from its /metrics."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            gateway.url + "/metrics", headers={"Authorization": f"Bearer {gateway.key}"}
        ) as resp,
    ):
        text = await resp.text()
    wanted = ("dx_fleet_affinity_total", "dx_fleet_upstream_ejections_total", "dx_fleet_retries")
    return {
        name: float(value)
        for name, _, value in (line.rpartition(" ") for line in text.splitlines())
        if name.startswith(wanted)
    }


def bench_affinity(count: int) -> list[dict[str, Any]]:
    model = {"engine": "llamacpp", "model": SMOLLM2, "context": 2048, "parallel": 4}
    rows = []
    with (
        run_dx("node-a", node_config(model), 300) as a,
        run_dx("node-b", node_config(model), 300) as b,
        run_dx("gateway", gateway_config([a, b]), 60) as gateway,
    ):
        nodes = [a.url, b.url]

        def headers_for(url: str) -> dict[str, str]:
            key = gateway.key if url == gateway.url else NODE_KEY
            return {"Authorization": f"Bearer {key}"}

        def via_gateway(n: int) -> Any:
            return lambda turn: gateway.url

        def random_node(n: int) -> Any:
            rng = random.Random(1000 + n)
            return lambda turn: rng.choice(nodes)

        runs = [
            ("gateway, affinity", 0, via_gateway),
            ("random node, no affinity", 100, random_node),
        ]
        for label, first, pick_for in runs:
            turns = asyncio.run(chats(first, count, pick_for, headers_for, gateway.url))
            ttft = [t.ttft for t in turns]
            same = sum(t.node == t.previous for t in turns)
            row = {
                "run": label,
                "follow_ups": len(turns),
                "same_node_as_before": f"{same} of {len(turns)}",
                "hit_rate": round(same / len(turns), 3),
                "ttft_mean_ms": round(sum(ttft) / len(ttft) * 1000),
                "ttft_p50_ms": round(pct(ttft, 0.5) * 1000),
                "ttft_p99_ms": round(pct(ttft, 0.99) * 1000),
                "read_from_cache": f"{sum(t.cached for t in turns)} of {len(turns)}",
                "nodes_used": len({t.node for t in turns}),
                "load_average": load_average(),
            }
            if pick_for is via_gateway:  # why a follow-up left home: spill, moved, ejections
                row["gateway_metrics"] = asyncio.run(fleet_metrics(gateway))
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("part", nargs="?", choices=["hops", "affinity", "all"], default="all")
    p.add_argument("--requests", type=int, default=300, help="streams per path and level")
    p.add_argument("--clients", default="1,8,32", help="concurrency levels")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--chats", type=int, default=8)
    args = p.parse_args(argv)
    print(f"load average before: {load_average()}", flush=True)
    if args.part in ("hops", "all"):
        levels = [int(c) for c in args.clients.split(",")]
        print(hops_table(bench_hops(args.requests, levels, args.max_tokens)), flush=True)
    if args.part in ("affinity", "all"):
        bench_affinity(args.chats)
    print(f"load average after: {load_average()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
