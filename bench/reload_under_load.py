"""Failed requests while the config is reloaded again and again under load.

    .venv/bin/python bench/reload_under_load.py [--reloads 20] [--clients 4]

DX serves SmolLM2 through llama-server (4 slots). `--clients` clients loop on streamed chats
(Ollama and OpenAI alternately) while the bench rewrites the config `--reloads` times, each
time changing the model's engine args (so every reload replaces the engine blue/green: a
new llama-server starts, serves, the old one drains), and waits for each reload to finish
(`POST /admin/reload` answers when the engines are reconciled). Reported: requests served,
requests failed (target 0), and how long a blue/green reload took, p50 and max.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import aiohttp
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from concurrency import SMOLLM2, Dx, pct, run_dx


async def client(
    session: aiohttp.ClientSession,
    dx: Dx,
    n: int,
    stop: asyncio.Event,
    counts: dict[str, int],
    errors: list[str],
) -> None:
    i = 0
    while not stop.is_set():
        i += 1
        openai = (i + n) % 2 == 0
        path = "/v1/chat/completions" if openai else "/api/chat"
        body = {
            "model": "smollm2",
            "stream": True,
            "messages": [{"role": "user", "content": "Name a colour."}],
        }
        body.update({"max_tokens": 8} if openai else {"options": {"num_predict": 8}})
        status = 0
        try:
            async with session.post(
                dx.url + path, json=body, headers={"Authorization": f"Bearer {dx.key}"}
            ) as resp:
                status = resp.status
                lines = [line.strip() async for line in resp.content if line.strip()]
            ok = status == 200 and (
                lines[-1] == b"data: [DONE]" if openai else json.loads(lines[-1]).get("done")
            )
        except (aiohttp.ClientError, TimeoutError, ValueError, IndexError) as exc:
            ok, lines = False, [repr(exc).encode()]
        if ok:
            counts["ok"] += 1
        else:
            counts["failed"] += 1
            if len(errors) < 5:
                errors.append(f"HTTP {status}: {lines[-1][:200]!r}")


def rewrite(config: Path, args: list[str]) -> None:
    """Change the model's args, as an editor saves (the file watcher may start the reload;
    the admin call below then waits for it)."""
    data = yaml.safe_load(config.read_text())
    data["models"]["smollm2"]["args"] = args
    tmp = config.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(data))
    tmp.replace(config)


async def run(dx: Dx, config: Path, reloads: int, clients: int) -> int:
    stop = asyncio.Event()
    counts = {"ok": 0, "failed": 0}
    errors: list[str] = []
    took: list[float] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
        workers = [
            asyncio.create_task(client(session, dx, n, stop, counts, errors))
            for n in range(clients)
        ]
        await asyncio.sleep(2)
        for i in range(reloads):
            # A tiny file, and the bench's own: read and written in place on purpose.
            rewrite(config, ["--temp", f"0.{5 + i % 2}"])
            t0 = time.monotonic()
            async with session.post(
                dx.url + "/admin/reload", headers={"Authorization": f"Bearer {dx.key}"}
            ) as resp:
                status = await resp.json()
                assert resp.status == 200, status
            took.append(time.monotonic() - t0)
        await asyncio.sleep(2)
        stop.set()
        await asyncio.gather(*workers)
    print(
        f"| {reloads} blue/green reloads, {clients} clients looping | {counts['ok']} served "
        f"| {counts['failed']} failed | reload p50 {pct(took, 0.5):.1f} s, "
        f"max {max(took):.1f} s |"
    )
    for e in errors:
        print("  failed:", e)
    return 0 if counts["failed"] == 0 else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reloads", type=int, default=20)
    p.add_argument("--clients", type=int, default=4)
    args = p.parse_args(argv)
    model = {"engine": "llamacpp", "model": SMOLLM2, "context": 1024, "parallel": 4}
    with run_dx("reload", model, timeout=120) as dx:
        config = Path(dx.proc.args[-1])  # type: ignore[index]
        return asyncio.run(run(dx, config, args.reloads, args.clients))


if __name__ == "__main__":
    sys.exit(main())
