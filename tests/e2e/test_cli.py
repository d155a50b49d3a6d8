"""The command line, run as a user would run it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

DX = [sys.executable, "-m", "dxproxy"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*DX, *args], capture_output=True, text=True, timeout=60)


def test_help_teaches() -> None:
    out = run("--help").stdout
    assert "dx serve" in out and "config check" in out
    serve = run("serve", "--help").stdout
    assert "--config" in serve and "API key" in serve


def test_config_check(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    good.write_text(f"models:\n  m:\n    engine: llamacpp\n    model: {gguf}\n")
    ok = run("config", "check", str(good))
    assert ok.returncode == 0 and "OK (1 model(s): m)" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"models:\n  qwen:\n    engine: vlm\n    model: {gguf}\n")
    fail = run("config", "check", str(bad))
    assert fail.returncode == 1
    expected = "models.qwen.engine: expected one of llamacpp, llama-cpp-python, vllm; got 'vlm'"
    assert f"{bad}: {expected}" in fail.stderr
    missing = run("config", "check", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 1 and "cannot read the config" in missing.stderr


def test_serve_refuses_a_bad_config_and_a_public_bind_without_auth(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("server:\n  port: 0\n")
    fail = run("serve", "--config", str(bad))
    assert fail.returncode == 1 and "server.port: expected a port number" in fail.stderr
    open_cfg = tmp_path / "open.yaml"
    open_cfg.write_text("auth:\n  enabled: false\n")
    refused = run("serve", "--config", str(open_cfg), "--host", "0.0.0.0")
    assert refused.returncode == 1 and "refusing to listen on 0.0.0.0" in refused.stderr


def test_port_in_use_is_explained(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        cfg = tmp_path / "dx.yaml"
        cfg.write_text(f"server:\n  port: {port}\n  state_dir: {tmp_path / 'state'}\n")
        out = run("serve", "--config", str(cfg))
    assert out.returncode == 1 and "Is another server (Ollama?) using the port" in out.stdout
