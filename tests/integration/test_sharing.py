"""Two real models busy at once share the machine (supervisors/cpus.py): each llama-server
gets its own cores and as many threads, shown in the banner and /admin/models; both serve
their clients together, none starves. The throughput numbers are bench/sharing.py's."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import gemma_path, smollm2_path, start_dx

pytestmark = pytest.mark.integration

CLIENTS = 4  # per model (the slots: a power of two, see supervisors/adapters.py)
SECONDS = 12.0


def test_two_busy_models_get_their_own_cores(tmp_path: Path) -> None:
    cores = sorted(os.sched_getaffinity(0))
    common = {"engine": "llamacpp", "context": 1024, "parallel": CLIENTS}
    dx = start_dx(tmp_path, {
        "smollm2": {**common, "model": str(smollm2_path())},
        "gemma3": {**common, "model": str(gemma_path())},
    }, wait=120)  # fmt: skip
    try:
        models = httpx.get(dx.url + "/admin/models", headers=dx.auth, timeout=10).json()
        by_name = {m["name"].removesuffix(":latest"): m for m in models["models"]}
        shares = {}
        for name in ("smollm2", "gemma3"):
            (replica,) = by_name[name]["replicas"]
            settings = replica["settings"]
            shares[name] = settings["cpus"]
            # Each its own part of the machine, and threads to match (2 cores: one each).
            assert int(settings["threads"]) == max(1, len(cores) // 2), settings
        if len(cores) >= 2:
            assert shares["smollm2"] != shares["gemma3"], shares
        banner = "\n".join(dx.banner)
        assert "cpus " in banner and "threads " in banner, banner

        # The engines' processes (every thread) run where the plan says.
        pids = dx.engine_pids()
        assert len(pids) == 2
        affinities = [
            {frozenset(os.sched_getaffinity(t.id)) for t in psutil.Process(pid).threads()}
            for pid in pids
        ]
        assert all(len(a) == 1 for a in affinities), affinities  # all threads of one engine alike
        if len(cores) >= 2:
            assert affinities[0] != affinities[1] and not (
                next(iter(affinities[0])) & next(iter(affinities[1]))
            ), affinities

        # Both busy at once: every client of both models gets answers, none waits long.
        done: dict[str, list[float]] = {"smollm2": [], "gemma3": []}
        errors: list[str] = []
        stop = time.monotonic() + SECONDS

        def client(model: str) -> None:
            with httpx.Client(base_url=dx.url, headers=dx.auth, timeout=60) as http:
                while time.monotonic() < stop:
                    t0 = time.monotonic()
                    r = http.post("/v1/chat/completions", json={
                        "model": model, "max_tokens": 24, "temperature": 0,
                        "messages": [{"role": "user", "content": "Name three colours."}],
                    })  # fmt: skip
                    if r.status_code != 200:
                        errors.append(f"{model}: {r.status_code} {r.text[:200]}")
                        return
                    done[model].append(time.monotonic() - t0)

        threads = [threading.Thread(target=client, args=(m,)) for m in done for _ in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        for model, times in done.items():
            assert len(times) >= CLIENTS, (model, times)  # each client answered at least once
            assert max(times) < 30, (model, max(times))  # nobody starved (thrash: minutes)
    finally:
        dx.stop()
