"""A hung llama-server, for real (SmolLM2): SIGSTOP mid-stream ends the client's stream within
5 s with one plain sentence and the model serves again within 10 s; SIGKILL as before (0.5 s
and 5 s). And no false alarm: 32 clients with ~4k-token prompts saturate the 2 cores (the
engine's streams fall silent for a long while) and the engine is never restarted.

Numbers and how they were measured: docs/PERFORMANCE.md ("A hung engine").
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

from tests.conftest import DxProcess, smollm2_path, start_dx

pytestmark = pytest.mark.integration
HUNG = (
    "the engine serving 'smollm2' stopped responding; DX is restarting it — retry in a few "
    "seconds"
)
DIED = (
    "the engine serving 'smollm2' stopped unexpectedly (it exited); DX is restarting it — retry "
    "in a few seconds"
)
# The engine starts in < 3 s here when the machine is otherwise idle (docs/TESTING.md); the
# 10 s target counts on that, so a start slowed by other work on the machine is added to it.
USUAL_START = 3.0


@pytest.fixture
def dx(tmp_path: Path) -> Iterator[DxProcess]:
    model = {"engine": "llamacpp", "model": str(smollm2_path()), "context": 2048}
    dx = start_dx(tmp_path, {"smollm2": model}, wait=120)
    yield dx
    dx.stop()


def engine_pid(dx: DxProcess) -> int:
    [pid] = [p for p in dx.engine_pids() if "llama-server" in psutil.Process(p).name()]
    return pid


async def replica(session: aiohttp.ClientSession, dx: DxProcess) -> dict[str, Any]:
    async with session.get(dx.url + "/admin/models", headers=dx.auth) as resp:
        models = (await resp.json())["models"]
    return dict(models[0]["replicas"][0])


async def serves(session: aiohttp.ClientSession, dx: DxProcess) -> bool:
    body = {"model": "smollm2", "stream": False, "options": {"num_predict": 1},
            "messages": [{"role": "user", "content": "Hi"}]}
    try:
        async with session.post(dx.url + "/api/chat", json=body, headers=dx.auth,
                                timeout=aiohttp.ClientTimeout(total=60)) as resp:
            await resp.read()
            return resp.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


@pytest.mark.parametrize("sig", [signal.SIGSTOP, signal.SIGKILL])
async def test_a_hung_or_killed_llama_server_mid_stream(dx: DxProcess, sig: int) -> None:
    pid = engine_pid(dx)
    body = {"model": "smollm2", "stream": True, "options": {"num_predict": 2000},
            "messages": [{"role": "user", "content": "Write a very long story about a dragon."}]}
    lines: list[bytes] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        async with session.post(dx.url + "/api/chat", json=body, headers=dx.auth) as resp:
            async for line in resp.content:
                if line.strip():
                    lines.append(line)
                if len(lines) == 5:
                    psutil.Process(pid).send_signal(sig)
                    signalled, signalled_at = time.monotonic(), time.time()
        ended = time.monotonic() - signalled
        while not await serves(session, dx):  # waits for the restart: no 503 meanwhile
            assert time.monotonic() - signalled < 60, "the model did not serve again"
            await asyncio.sleep(0.1)
        replied = time.monotonic() - signalled
        after = await replica(session, dx)
    name = signal.Signals(sig).name
    start = float(after["ready_in_s"])
    again = float(after["started_at"]) + start - signalled_at  # ready again, serving
    print(f"{name} mid-stream: the stream ended {ended:.2f} s after, the engine was ready "
          f"again {again:.2f} s after (its own start: {start:.2f} s), a new request was "
          f"answered {replied:.2f} s after")
    assert json.loads(lines[-1]) == {"error": HUNG if sig == signal.SIGSTOP else DIED}
    assert not any(b'"done":true' in line for line in lines)
    assert after["restarts"] == 1 and after["pid"] != pid
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    slow_start = max(0.0, start - USUAL_START)
    if sig == signal.SIGSTOP:
        assert ended <= 5
        assert again <= 10 + slow_start
    else:
        assert ended <= 0.5
        assert again <= 5 + slow_start


def prompt(i: int, words: int) -> str:
    """About `words` tokens, different from the first word on (no prompt cache helps)."""
    vocab = ["river", "mountain", "lantern", "copper", "violet", "orchard", "harbor", "meadow",
             "falcon", "quartz", "ember", "willow", "canyon", "glacier", "thunder", "marble"]
    return f"{i} Summarise in one line: " + " ".join(
        vocab[(i * 7 + k * 13 + k // 20) % len(vocab)] for k in range(words))


async def test_no_false_alarm_with_long_prompts_on_a_saturated_cpu(tmp_path: Path) -> None:
    """32 clients, ~4k-token prompts, context 8192 (4 slots), both cores busy, 90 s: prompt
    processing keeps the engine's streams silent for far longer than the hang detector's
    window, and /health is still answered, so the engine is never restarted."""
    model = {"engine": "llamacpp", "model": str(smollm2_path()), "context": 8192}
    dx = start_dx(tmp_path, {"smollm2": model}, wait=120)
    seconds, clients = 90.0, 32
    try:
        pid = engine_pid(dx)
        stop_at = time.monotonic() + seconds
        served, failed = 0, []
        counter = iter(range(10**9))

        async def client(session: aiohttp.ClientSession) -> None:
            nonlocal served
            while time.monotonic() < stop_at:
                body = {"model": "smollm2", "stream": True, "max_tokens": 8, "messages": [
                    {"role": "user", "content": prompt(next(counter), 3600)}]}
                async with session.post(dx.url + "/v1/chat/completions", json=body,
                                        headers=dx.auth) as resp:
                    text = await resp.read()
                if resp.status == 200 and text.rstrip().endswith(b"data: [DONE]"):
                    served += 1
                else:
                    failed.append(text[-300:].decode(errors="replace"))

        busiest = 0
        timeout = aiohttp.ClientTimeout(total=None, sock_read=600)
        async with aiohttp.ClientSession(timeout=timeout,
                                         connector=aiohttp.TCPConnector(limit=0)) as session:
            tasks = [asyncio.ensure_future(client(session)) for _ in range(clients)]
            while time.monotonic() < stop_at:
                await asyncio.sleep(2)
                r = await replica(session, dx)
                assert r["state"] == "ready" and r["restarts"] == 0, r
                busiest = max(busiest, int(r["in_flight"]))
            for t in tasks:  # those still in flight are cut: not counted
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            after = await replica(session, dx)
        print(f"{clients} clients, {seconds:.0f} s: {served} served, {len(failed)} failed, "
              f"up to {busiest} at once in the engine; restarts {after['restarts']}")
        assert after["restarts"] == 0 and after["pid"] == pid and after["state"] == "ready"
        assert not failed, failed[:3]
        assert busiest >= 4  # every slot busy: the engine was saturated
        assert not [line for line in dx.lines if "-> failed" in line]
    finally:
        dx.stop()
