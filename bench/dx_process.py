"""A whole `dx serve` process for a bench: the one way the benches start, await and stop it.

Several benches (bench/concurrency.py's run_dx and those that import it, bench/fleet.py's
nodes and gateway) drive dx as a user would: a config file, `python -m dxproxy serve`, its
"ready in" banner. They differ only in the config and in how much they say when dx fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

LOOPBACK = "127.0.0.1"
STOP_GRACE_S = 30


@dataclass
class Serving:
    """A dx that said it is ready: its process, its base URL and the API key it made."""

    proc: subprocess.Popen[str]
    url: str
    key: str


def free_port() -> int:
    """A loopback port nobody listens on now (the kernel's pick), for dx to bind."""
    import socket

    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def spawn(path: Path) -> subprocess.Popen[str]:
    """`dx serve --config path`, its output on a pipe, in a session of its own: stopping the
    group stops the engines dx started too."""
    return subprocess.Popen(
        [sys.executable, "-m", "dxproxy", "serve", "--config", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def await_ready(proc: subprocess.Popen[str], name: str, timeout: float, verbose: bool) -> None:
    """Read dx's output up to its "  ready in" banner; SystemExit if an engine FAILED, dx
    exited or `timeout` passed first. `verbose` adds dx's output so far to the failure."""
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("  ready in"):
            if "FAILED" in line:
                raise SystemExit(f"{name}: an engine failed to start{said(lines, verbose)}")
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"{name}: dx not ready after {timeout:.0f} s")
    raise SystemExit(f"{name}: dx exited with {proc.wait()}{said(lines, verbose)}")


def said(lines: list[str], verbose: bool) -> str:
    """dx's output, as a failure message's tail (nothing unless `verbose`)."""
    return f":\n{''.join(lines)}" if verbose else ""


def stop(proc: subprocess.Popen[str]) -> None:
    """SIGTERM to dx's whole group (dx and its engines), SIGKILL after a grace period."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def serve(
    name: str,
    config: dict[str, Any],
    timeout: float,
    *,
    server: dict[str, Any] | None = None,
    prefix: str = "dx-bench-",
    verbose: bool = False,
) -> Iterator[Serving]:
    """`dx serve` on a free loopback port, its state in a temporary directory, with `config`
    (models and the rest) and a queue of 1024; `server` adds server settings. Ready when
    yielded, stopped (with everything it started) on leaving, also on error."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        port = free_port()
        state = f"{tmp}/state"
        config = {
            "server": {"host": LOOPBACK, "port": port, "state_dir": state, **(server or {})},
            "limits": {"queue_size": 1024},
            **config,
        }
        path = Path(tmp) / "dx.yaml"
        path.write_text(yaml.safe_dump(config))
        proc = spawn(path)
        try:
            await_ready(proc, name, timeout, verbose)
            assert proc.stdout is not None
            # Keep reading dx's output so that it never blocks on a full pipe.
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            key = (Path(state) / "api-key").read_text().strip()
            yield Serving(proc, f"http://{LOOPBACK}:{port}", key)
        finally:
            stop(proc)
