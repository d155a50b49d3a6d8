"""Time from `dx serve` to ready, as a user sees it: exec of the command until the banner's
"ready in" line, with the embedded default (SmolLM2 on llama.cpp, CPU).

    .venv/bin/python bench/startup_time.py [--runs 5]

Each run uses a fresh state directory and a free loopback port, and is stopped with SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DX = str(Path(sys.executable).with_name("dx"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def one_run(state: str) -> tuple[float, str]:
    env = {"XDG_DATA_HOME": state, "PATH": "/usr/bin:/bin", "HOME": state}
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [DX, "serve", "--port", str(free_port())],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("  ready in"):
                return time.monotonic() - t0, line.strip()
        raise SystemExit(f"dx exited with {proc.wait()} before it was ready")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    walls = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory() as state:
            wall, banner = one_run(state)
        walls.append(wall)
        print(f"run {i + 1}: {wall:.2f} s from exec to ready (banner: {banner})")
    print(
        f"median {statistics.median(walls):.2f} s, min {min(walls):.2f} s, "
        f"max {max(walls):.2f} s over {len(walls)} runs"
    )


if __name__ == "__main__":
    main()
