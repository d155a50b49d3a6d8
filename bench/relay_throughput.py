"""How many streamed chunks one DX process relays per second, and its CPU per chunk, when the
engine streams as fast as it can: OpenAI pass-through and Ollama translation, next to the
engine read directly.

    .venv/bin/python bench/relay_throughput.py                      # ≈ 20 s
    .venv/bin/python bench/relay_throughput.py --tokens 20000 --reps 3 --streams 1 --write-batch 1

It starts `dx serve` on the fake engine of bench/proxy_overhead.py (bench/fake_openai_engine.py:
tokens back to back, one SSE `chat.completion.chunk` per token) and pins the processes so that
"one core" is honest: dx (every thread) on one CPU (`--dx-cpu`, default the last one), its
engines and this client on the others. Then, in rounds whose order rotates, each path streams
`--tokens` tokens (split over `--streams` concurrent streams):

1. **direct**: the engine's own `/v1/chat/completions`, no DX;
2. **openai**: DX's `/v1/chat/completions`, relayed byte for byte;
3. **ollama**: DX's `/api/chat`, each SSE event translated to an NDJSON line.

All of it twice (`--write-batch`), with a new dx each time: the engine writing each event on
its own (1; as llama-server and vLLM do) and 64 events per write (cheap for the engine, so
that the direct path is far faster than DX; and DX's pass-through then relays 64 events per
read, the best case for it).

The client counts `data:` marks (SSE events) or newlines (NDJSON lines) in what it reads and
parses nothing, so it costs far less per chunk than DX. Each stream is checked complete
(every chunk, then `[DONE]` or `"done":true`). Per path: chunks/s (tokens relayed / wall
time) and the CPU time of the dx process (all its threads), the engine and this client per
chunk, medians of the rounds. CPU times come from /proc/PID/task/*/schedstat, in
nanoseconds. Exit status 0 when every stream was complete; results also go to
bench/results/relay_throughput.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_openai_engine import MAX_TOKENS_CAP, WRITE_BATCH_ENV
from proxy_overhead import (
    MESSAGES,
    MODEL_NAME,
    BenchError,
    Dx,
    client,
    machine,
    markdown_table,
)

RESULTS = Path(__file__).resolve().parent / "results" / "relay_throughput.json"
PATHS = ("direct", "openai", "ollama")
LABELS = {
    "direct": "engine read directly",
    "openai": "DX OpenAI pass-through",
    "ollama": "DX Ollama translation",
}
TARGET_CHUNKS_S = 40_000  # translated chunks/s on one core (issue 7)
TARGET_CPU_RATIO = 2.0  # CPU per translated chunk over CPU per passed-through one
WARMUP_TOKENS = 2_000


@dataclass(frozen=True, slots=True)
class Route:
    """One way to stream a chat answer: URL, headers, body, and how to check the stream."""

    name: str
    url: str
    headers: dict[str, str]
    ndjson: bool  # Ollama NDJSON (one line per chunk) or OpenAI SSE (two per event)

    def body(self, tokens: int) -> bytes:
        if self.ndjson:
            body = {"model": MODEL_NAME, "messages": MESSAGES, "stream": True,
                    "options": {"num_predict": tokens}}  # fmt: skip
        else:
            body = {"model": MODEL_NAME, "messages": MESSAGES, "stream": True,
                    "max_tokens": tokens}  # fmt: skip
        return orjson.dumps(body)

    @property
    def mark(self) -> bytes:
        """What starts (NDJSON: ends) each chunk: counted, never parsed."""
        return b"\n" if self.ndjson else b"data:"

    def expected_marks(self, tokens: int) -> int:
        """Ollama: one line per token and the `done` line. OpenAI: the role event, one per
        token, the finish event and `[DONE]` (DX removes the usage event it asked for, as
        the client did not)."""
        return tokens + 1 if self.ndjson else tokens + 3


async def stream(session: aiohttp.ClientSession, path: Route, tokens: int) -> int:
    """One streamed answer, read as it comes; returns the bytes read. Counts chunk marks
    only: the client must cost far less per chunk than what it measures."""
    marks = size = 0
    tail = b""
    mark = path.mark
    carry = len(mark) - 1
    headers = {"Content-Type": "application/json", **path.headers}
    async with session.post(path.url, data=path.body(tokens), headers=headers) as resp:
        if resp.status != 200:
            text = (await resp.read()).decode(errors="replace")[:300]
            raise BenchError(f"{path.name}: HTTP {resp.status}: {text}")
        async for data in resp.content.iter_any():
            # A mark cut in two by a read is counted once: the tail carries its start.
            marks += (tail[len(tail) - carry :] + data).count(mark)
            size += len(data)
            tail = (tail + data)[-1024:]  # the last line, with Ollama's statistics
    expected = path.expected_marks(tokens)
    end = b'"done":true' if path.ndjson else b"data: [DONE]"
    if marks != expected or end not in tail:
        raise BenchError(
            f"{path.name}: incomplete stream: {marks} chunks (expected {expected}), "
            f"ends with {tail[-40:]!r}"
        )
    return size


@dataclass(slots=True)
class Round:
    write_batch: int  # the engine's events per write
    streams: int
    path: str
    chunks: int
    bytes: int
    wall_s: float
    dx_cpu_s: float
    dx_reads: int  # read and write system calls of dx: how many chunks each one carried
    dx_writes: int
    engine_cpu_s: float
    client_cpu_s: float

    @property
    def chunks_per_s(self) -> float:
        return self.chunks / self.wall_s


async def measure(
    session: aiohttp.ClientSession,
    route: Route,
    tokens: int,
    streams: int,
    dx: Dx,
    engine: psutil.Process,
    write_batch: int,
) -> Round:
    """`tokens` chunks over `streams` concurrent streams; wall and CPU times around them."""
    per_stream = tokens // streams
    dx0, eng0, cli0 = cpu_time(dx.process.pid), cpu_time(engine.pid), time.process_time()
    io0 = dx.process.io_counters()
    t0 = time.perf_counter()
    sizes = await asyncio.gather(*(stream(session, route, per_stream) for _ in range(streams)))
    wall = time.perf_counter() - t0
    io = dx.process.io_counters()
    return Round(
        write_batch=write_batch,
        streams=streams,
        path=route.name,
        chunks=per_stream * streams,
        bytes=sum(sizes),
        wall_s=wall,
        dx_cpu_s=cpu_time(dx.process.pid) - dx0,
        dx_reads=io.read_count - io0.read_count,
        dx_writes=io.write_count - io0.write_count,
        engine_cpu_s=cpu_time(engine.pid) - eng0,
        client_cpu_s=time.process_time() - cli0,
    )


def cpu_time(pid: int) -> float:
    """Seconds on a CPU of every thread of `pid` (user + system), from the scheduler's own
    nanosecond counters: psutil's 10 ms ticks would be too coarse for a pass-through that
    costs well under 1 µs per chunk. A thread that ends between two reads takes its time
    with it; dx's threads live as long as it does."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
    return total / 1e9


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of `pid` on `cpus` (threads started later inherit their creator's set)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):  # the thread ended meanwhile
            os.sched_setaffinity(int(tid), cpus)


def engine_process(dx: Dx) -> psutil.Process:
    """The child of dx that serves MODEL_NAME (the one the paths stream from)."""
    port = dx.engine_ports[MODEL_NAME]
    for child in dx.engines:
        try:
            conns = child.net_connections(kind="tcp")
        except psutil.Error:
            continue
        if any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in conns):
            return child
    raise BenchError(f"no child of dx listens on the engine's port {port}")


@dataclass(slots=True)
class Report:
    when: str
    command: str
    machine: dict[str, Any]
    settings: dict[str, Any]
    pinning: dict[str, Any]
    load_before: list[float]
    load_after: list[float] = field(default_factory=list)
    dx_ready: str = ""
    rounds: list[dict[str, Any]] = field(default_factory=list)
    summary: list[dict[str, Any]] = field(default_factory=list)
    verdicts: list[dict[str, Any]] = field(default_factory=list)


def summarise(rounds: list[Round]) -> list[dict[str, Any]]:
    """Per engine write mode, stream count and path: medians over the rounds."""
    out = []
    for key in dict.fromkeys((r.write_batch, r.streams) for r in rounds):
        direct = None
        for name in PATHS:
            rs = [r for r in rounds if (r.write_batch, r.streams) == key and r.path == name]
            rates = [r.chunks_per_s for r in rs]
            row: dict[str, Any] = {
                "write_batch": key[0],
                "streams": key[1],
                "path": name,
                "rounds": len(rs),
                "chunks_per_round": rs[0].chunks,
                "chunks_per_s": statistics.median(rates),
                "chunks_per_s_min": min(rates),
                "chunks_per_s_max": max(rates),
                "dx_cpu_us_per_chunk": statistics.median(r.dx_cpu_s / r.chunks * 1e6 for r in rs),
                "dx_cpu_share": statistics.median(r.dx_cpu_s / r.wall_s for r in rs),
                "chunks_per_dx_read": statistics.median(r.chunks / max(r.dx_reads, 1) for r in rs),
                "chunks_per_dx_write": statistics.median(
                    r.chunks / max(r.dx_writes, 1) for r in rs
                ),
                "engine_cpu_us_per_chunk": statistics.median(
                    r.engine_cpu_s / r.chunks * 1e6 for r in rs
                ),
                "client_cpu_us_per_chunk": statistics.median(
                    r.client_cpu_s / r.chunks * 1e6 for r in rs
                ),
                "bytes_per_chunk": rs[0].bytes / rs[0].chunks,
            }
            direct = direct or row
            row["vs_direct"] = row["chunks_per_s"] / direct["chunks_per_s"]
            out.append(row)
    return out


def verdicts(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 7's targets, per engine write mode and stream count."""
    by = {(s["write_batch"], s["streams"], s["path"]): s for s in summary}
    out = []
    for batch, streams in dict.fromkeys((s["write_batch"], s["streams"]) for s in summary):
        ollama, openai = by[batch, streams, "ollama"], by[batch, streams, "openai"]
        ratio = ollama["dx_cpu_us_per_chunk"] / openai["dx_cpu_us_per_chunk"]
        out.append(
            {
                "write_batch": batch,
                "streams": streams,
                "translated_chunks_per_s": ollama["chunks_per_s"],
                "chunks_per_s_met": ollama["chunks_per_s"] >= TARGET_CHUNKS_S,
                "cpu_ratio_translation_over_passthrough": ratio,
                "cpu_ratio_met": ratio <= TARGET_CPU_RATIO,
            }
        )
    return out


def render(report: Report) -> str:
    m, pin_, st = report.machine, report.pinning, report.settings
    lines = [
        f"# {report.command} ({report.when})",
        "",
        f"{st['tokens']:,} chunks per path and round, {st['reps']} rounds; dx on CPU "
        f"{pin_['dx']}, engine and client on CPU {pin_['others']} of {m['cpus']} "
        f"({m['cpu_model']}); load average {report.load_before} before, "
        f"{report.load_after} after",
        "",
    ]
    rows = []
    for s in report.summary:
        dx = s["path"] != "direct"
        rows.append(
            [
                str(s["write_batch"]),
                str(s["streams"]),
                LABELS[s["path"]],
                f"{s['chunks_per_s']:,.0f} ({s['chunks_per_s_min']:,.0f} to "
                f"{s['chunks_per_s_max']:,.0f})",
                f"{s['vs_direct']:.2f}",
                f"{s['dx_cpu_us_per_chunk']:.2f}" if dx else "",
                f"{s['dx_cpu_share']:.2f}" if dx else "",
                f"{s['chunks_per_dx_read']:.1f} / {s['chunks_per_dx_write']:.1f}" if dx else "",
                f"{s['engine_cpu_us_per_chunk']:.2f}",
                f"{s['client_cpu_us_per_chunk']:.2f}",
            ]
        )
    header = [
        "engine events/write",
        "streams",
        "path",
        "chunks/s, median (min to max)",
        "vs direct",
        "dx CPU µs/chunk",
        "dx CPU share of its core",
        "chunks per dx read / write",
        "engine CPU µs/chunk",
        "client CPU µs/chunk",
    ]
    lines += [markdown_table(header, rows), ""]
    for v in report.verdicts:
        chunks_ok = "met" if v["chunks_per_s_met"] else "MISSED"
        ratio_ok = "met" if v["cpu_ratio_met"] else "MISSED"
        lines.append(
            f"engine {v['write_batch']} event(s)/write, {v['streams']} stream(s): "
            f"{v['translated_chunks_per_s']:,.0f} translated chunks/s (target ≥ "
            f"{TARGET_CHUNKS_S:,}: {chunks_ok}); dx CPU per translated / passed-through chunk "
            f"{v['cpu_ratio_translation_over_passthrough']:.2f} (target ≤ {TARGET_CPU_RATIO}: "
            f"{ratio_ok})"
        )
    return "\n".join(lines)


async def run_mode(args: argparse.Namespace, report: Report, write_batch: int) -> list[Round]:
    """One dx, whose engine writes `write_batch` events per write; every path and level."""
    dx_cpu, others = report.pinning["dx"], set(report.pinning["others"])
    os.environ[WRITE_BATCH_ENV] = str(write_batch)  # dx passes it on to its engines
    rounds: list[Round] = []
    async with Dx(args.dx, "fake", args.startup_timeout, verbose=False) as dx, client() as s:
        report.dx_ready = dx.ready_line
        pin(dx.process.pid, {dx_cpu})
        for child in dx.engines:
            pin(child.pid, others)
        engine = engine_process(dx)
        auth = {"Authorization": f"Bearer {dx.key}"}
        routes = [
            Route("direct", dx.engine_url() + "/v1/chat/completions", {}, ndjson=False),
            Route("openai", dx.url + "/v1/chat/completions", auth, ndjson=False),
            Route("ollama", dx.url + "/api/chat", auth, ndjson=True),
        ]
        for route in routes:  # warm: connections, the first request's imports and caches
            await stream(s, route, WARMUP_TOKENS)
        for streams in args.streams:
            for i in range(args.reps):
                k = i % len(routes)  # rotate, so that drift hits every path alike
                for route in routes[k:] + routes[:k]:
                    r = await measure(s, route, args.tokens, streams, dx, engine, write_batch)
                    rounds.append(r)
                    print(f"  {write_batch} event(s)/write, {streams} stream(s), round "
                          f"{i + 1}/{args.reps}, {route.name}: {r.chunks_per_s:,.0f} chunks/s",
                          file=sys.stderr)  # fmt: skip
    return rounds


async def run(args: argparse.Namespace, report: Report) -> None:
    pin(os.getpid(), set(report.pinning["others"]))
    rounds: list[Round] = []
    for write_batch in args.write_batch:
        rounds += await run_mode(args, report, write_batch)
    report.rounds = [{**asdict(r), "chunks_per_s": r.chunks_per_s} for r in rounds]
    report.summary = summarise(rounds)
    report.verdicts = verdicts(report.summary)


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=40_000, help="chunks per path and round")
    p.add_argument("--reps", type=int, default=5, help="rounds per path (default 5)")
    p.add_argument(
        "--streams", type=int_list, default=[1, 4], help="concurrent streams (default 1,4)"
    )
    p.add_argument(
        "--write-batch",
        type=int_list,
        default=[1, 64],
        help="the engine's events per write, one dx run each (default 1,64)",
    )
    cpus = sorted(os.sched_getaffinity(0))
    p.add_argument("--dx-cpu", type=int, default=cpus[-1], help="the CPU dx runs on (last)")
    p.add_argument(
        "--dx",
        type=Path,
        default=Path(sys.executable).with_name("dx"),
        help="the dx executable (default: next to this Python)",
    )
    p.add_argument(
        "--json", type=Path, default=RESULTS, help="results file (default: bench/results/)"
    )
    p.add_argument("--startup-timeout", type=float, default=120.0)
    args = p.parse_args(argv)
    if len(cpus) < 2:
        p.error("needs at least 2 CPUs: one for dx, one for the engine and the client")
    if args.dx_cpu not in cpus:
        p.error(f"--dx-cpu {args.dx_cpu}: not one of this process's CPUs {cpus}")
    if min(args.tokens, args.reps, *args.write_batch, *args.streams) < 1:
        p.error("--tokens, --reps, --write-batch and --streams must be at least 1")
    if any(args.tokens % n for n in args.streams):
        p.error("--tokens must be a multiple of every --streams level")
    if args.tokens // min(args.streams) > MAX_TOKENS_CAP:
        p.error(f"at most {MAX_TOKENS_CAP} tokens per stream (the fake engine's cap)")
    if not args.dx.exists():
        p.error(f"no dx executable at {args.dx}; pass --dx PATH")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cpus = sorted(os.sched_getaffinity(0))
    report = Report(
        when=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        command=" ".join([".venv/bin/python", "bench/relay_throughput.py", *sys.argv[1:]]),
        machine=machine(),
        settings={
            "tokens": args.tokens,
            "reps": args.reps,
            "streams": args.streams,
            "write_batch": args.write_batch,
        },
        pinning={"dx": args.dx_cpu, "others": [c for c in cpus if c != args.dx_cpu]},
        load_before=[round(x, 2) for x in os.getloadavg()],
    )
    try:
        # uvloop, as dx itself runs: the client must stay cheap per chunk.
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(run(args, report))
    except (BenchError, aiohttp.ClientError, TimeoutError, psutil.Error) as exc:
        print(f"FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: dx and its engines were stopped", file=sys.stderr)
        return 130
    report.load_after = [round(x, 2) for x in os.getloadavg()]
    print(render(report))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(asdict(report), indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
