"""`dx serve` as a new user runs it: no config, so the embedded default
(dxproxy/config/default.yaml, SmolLM2 on a real llama-server), on a free port, with its state
and config folders in a temp dir so the machine's own ~/.config/dx/dx.yaml and key are never
read."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import pytest

from tests.conftest import DX, DxProcess, free_port


def start_dx_default(tmp: Path, wait: float = 180) -> DxProcess:
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "DX_CONFIG"}
    env |= {"XDG_DATA_HOME": str(tmp / "data"), "XDG_CONFIG_HOME": str(tmp / "config")}
    proc = subprocess.Popen([*DX, "serve", "--port", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=tmp, env=env)
    dx = DxProcess(proc, f"http://127.0.0.1:{port}", "", tmp / "data" / "dx")
    threading.Thread(target=dx.read_output, daemon=True).start()
    if not dx.ready.wait(wait) or proc.poll() is not None:
        proc.kill()
        proc.wait()
        pytest.fail("dx (embedded default) did not become ready:\n" + "\n".join(dx.lines))
    dx.key = (dx.state_dir / "api-key").read_text().strip()
    return dx
