"""CI's short soak (bench/soak.py): 32 clients through DX to the real llama-server, streamed
and plain requests in both APIs, every answer checked whole. The full run (32 x 100) and its
result are in docs/PERFORMANCE.md."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_32_clients_lose_no_request() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), "--clients", "32",
         "--per-client", "6", "--max-tokens", "8"],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "192 served, 0 failed" in out.stdout, out.stdout
