"""The start-up banner as one block, and the engines' start-up progress: a live line on a
terminal (a real pty), periodic log lines otherwise. Real `dx serve`, fake engine."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import time
from pathlib import Path

import yaml

from tests.conftest import DX, fake_model, free_port, start_dx


def contiguous_banner(lines: list[str]) -> list[str]:
    first = next(i for i, line in enumerate(lines) if line.startswith("dx "))
    last = next(i for i, line in enumerate(lines) if line.startswith("  ready in"))
    block = lines[first : last + 1]
    # Nothing else (no log line, JSON or text) between the banner's first and last lines.
    assert all(line.startswith(("dx ", "  ")) for line in block), block
    return block


def test_banner_is_one_block_with_progress_log_lines(tmp_path: Path) -> None:
    dx = start_dx(tmp_path, {"slow": fake_model(engine_args=["--startup-delay", "11"])},
                  wait=60)
    try:
        block = contiguous_banner(dx.lines)
        assert any(line.startswith("  auth:") for line in block)
        assert any(line.startswith("  models:") for line in block)
        progress = [line for line in dx.lines if "starting: slow:latest starting" in line]
        assert progress and progress[0].startswith("{"), dx.lines  # a JSON log line
    finally:
        dx.stop()


def test_live_progress_line_on_a_terminal(tmp_path: Path) -> None:
    port = free_port()
    config = {"server": {"port": port, "state_dir": str(tmp_path / "state"),
                         "shutdown_timeout": 5},
              "models": {"slow": fake_model(engine_args=["--startup-delay", "3"])}}
    path = tmp_path / "dx.yaml"
    path.write_text(yaml.safe_dump(config))
    main, child = pty.openpty()
    proc = subprocess.Popen([*DX, "serve", "--config", str(path)], stdin=child, stdout=child,
                            stderr=child, cwd=tmp_path)
    os.close(child)
    out = b""
    try:
        deadline = time.monotonic() + 60
        while b"\n  ready in" not in out and time.monotonic() < deadline:
            if select.select([main], [], [], 0.5)[0]:
                try:
                    out += os.read(main, 65536)
                except OSError:
                    break
    finally:
        proc.terminate()
        proc.wait(20)
        os.close(main)
    text = out.decode(errors="replace")
    # Redrawn in place at least twice (1 s apart), then removed before the banner.
    assert len(re.findall(r"\r\x1b\[Kstarting: slow:latest starting \d+ s", text)) >= 2, text
    lines = [line.split("\r\x1b[K")[-1] for line in text.replace("\r\n", "\n").split("\n")]
    block = contiguous_banner(lines)
    assert "starting:" not in "".join(block)
    # A terminal gets readable log lines, not JSON.
    assert re.search(r"INFO +dx\.supervisor: slow#0: ", text), text
