"""Engine command lines: what DX asks of llama-server, llama-cpp-python and vLLM."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from supervisors import adapters
from supervisors.adapters import ADAPTERS, KV_TOKENS, Launch
from supervisors.spec import EngineSpec

CPU = Launch(port=4242, api_key="k3y", gpus=())


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_llama_server_fast_defaults_on_cpu() -> None:
    spec = EngineSpec(name="smol", kind="llama-server", model="/m/smol.gguf", context=2048,
                      program="/opt/llama-server", args=("--threads", "2"))
    adapter = ADAPTERS["llama-server"]
    argv = adapter.argv(spec, CPU)
    assert argv[0] == "/opt/llama-server"
    assert flag(argv, "--host") == "127.0.0.1"  # engines never listen outside
    assert flag(argv, "--port") == "4242"
    # The engine's own key, in its environment: a local user cannot read it in /proc and
    # bypass DX's auth on the loopback port.
    assert "k3y" not in " ".join(argv) and adapter.env(spec, CPU)["LLAMA_API_KEY"] == "k3y"
    slots = adapter.parallel(spec)
    assert slots == KV_TOKENS // 2048 and flag(argv, "--parallel") == str(slots)
    # One unified KV cache of slots x context; each request may use its context of it.
    assert "--kv-unified" in argv and flag(argv, "--kv-unified-per-slot") == "2048"
    assert flag(argv, "--ctx-size") == str(slots * 2048)
    assert "--metrics" in argv and "--cache-prompt" in argv
    assert flag(argv, "--n-gpu-layers") == "0"
    assert argv[-2:] == ["--threads", "2"]  # the operator's args come last and win
    assert adapter.env(spec, CPU)["CUDA_VISIBLE_DEVICES"] == ""
    assert adapter.settings(spec, CPU)["slots"] == str(slots)


def test_llama_server_on_a_gpu_offloads_everything_and_quantizes_the_cache() -> None:
    spec = EngineSpec(name="q", kind="llama-server", model="/m/q.gguf", context=8192,
                      program="/bin/ls", parallel=4, embeddings=True)
    adapter = ADAPTERS["llama-server"]
    gpu = Launch(1, "k", (1,))
    argv = adapter.argv(spec, gpu)
    assert flag(argv, "--n-gpu-layers") == "999"
    assert flag(argv, "--flash-attn") == "on"
    assert flag(argv, "--cache-type-k") == flag(argv, "--cache-type-v") == "q8_0"
    assert flag(argv, "--parallel") == "4" and "--embeddings" in argv
    assert adapter.env(spec, gpu)["CUDA_VISIBLE_DEVICES"] == "1"


def test_cpu_replicas_share_the_cores_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each process computing on every core thrashes as soon as two replicas work at once
    (measured: 30 s instead of 0.7 s per answer), so replicas on the CPU split the cores."""
    monkeypatch.setattr(adapters, "usable_cores", lambda: 8)
    server = ADAPTERS["llama-server"]

    def spec(kind: str, replicas: int) -> EngineSpec:
        return EngineSpec(name="m", kind=kind, model="/m.gguf", replicas=replicas,  # type: ignore[arg-type]
                          program="/bin/ls")

    assert flag(server.argv(spec("llama-server", 1), CPU), "--threads") == "8"
    assert flag(server.argv(spec("llama-server", 2), CPU), "--threads") == "4"
    assert flag(server.argv(spec("llama-server", 16), CPU), "--threads") == "1"
    assert server.settings(spec("llama-server", 2), CPU)["threads"] == "4"
    assert "--threads" not in server.argv(spec("llama-server", 2), Launch(1, "k", (0,)))
    py = ADAPTERS["llama-cpp-python"]
    assert "--n_threads" not in py.argv(spec("llama-cpp-python", 1), CPU)  # its own choice
    argv = py.argv(spec("llama-cpp-python", 4), CPU)
    assert flag(argv, "--n_threads") == flag(argv, "--n_threads_batch") == "2"


def test_slots_are_sized_from_the_context() -> None:
    adapter = ADAPTERS["llama-server"]

    def slots(context: int) -> int:
        return adapter.parallel(EngineSpec(name="m", kind="llama-server", model="/m",
                                           context=context))

    assert slots(2048) > slots(8192) > slots(32768) == 1
    assert slots(128) == 16  # capped


def test_llama_cpp_python_one_request_at_a_time() -> None:
    spec = EngineSpec(name="smol", kind="llama-cpp-python", model="/m/smol.gguf")
    adapter = ADAPTERS["llama-cpp-python"]
    argv = adapter.argv(spec, CPU)
    assert argv[:3] == [sys.executable, "-m", "llama_cpp.server"]
    assert flag(argv, "--interrupt_requests") == "false"
    assert adapter.env(spec, CPU)["API_KEY"] == "k3y" and "k3y" not in argv
    assert adapter.parallel(spec) == 1 and adapter.cancels_only_streams(spec)


def test_vllm_tensor_parallel_and_sleep_mode() -> None:
    spec = EngineSpec(name="big", kind="vllm", model="org/model", program="/opt/v/py",
                      sleep_mode=True)
    adapter = ADAPTERS["vllm"]
    two = Launch(1, "k", (2, 3))
    argv = adapter.argv(spec, two)
    assert argv[:3] == ["/opt/v/py", "-m", "vllm.entrypoints.openai.api_server"]
    assert flag(argv, "--served-model-name") == "big"
    assert flag(argv, "--tensor-parallel-size") == "2"
    assert "--enable-sleep-mode" in argv and "k" not in argv
    env = adapter.env(spec, two)
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3" and env["VLLM_SERVER_DEV_MODE"] == "1"
    assert env["VLLM_NO_USAGE_STATS"] == "1"  # no telemetry
    assert env["VLLM_API_KEY"] == "k"
    # The engine key on every route, not just /v1 (vLLM's own check): DX's middleware.
    assert flag(argv, "--middleware") == "dx_key_guard.KeyGuard"
    plugins = Path(env["PYTHONPATH"].split(os.pathsep)[0])
    # Nothing of DX lands in vLLM's interpreter besides the guard and dx_vllm_cli (the CLI for
    # a group worker's --headless, supervisors/group.py), both standard library only.
    assert (plugins / "dx_key_guard.py").is_file() and sorted(plugins.glob("*.py")) == [
        plugins / "dx_key_guard.py", plugins / "dx_vllm_cli.py"]
    for module in plugins.glob("*.py"):
        assert "dxproxy" not in module.read_text() and "import supervisors" not in (
            module.read_text())
    assert adapter.parallel(spec) > 1
    one = adapter.argv(EngineSpec(name="s", kind="vllm", model="org/s"), Launch(1, "k", (0,)))
    assert "--tensor-parallel-size" not in one and "--enable-sleep-mode" not in one


def test_custom_command_placeholders() -> None:
    spec = EngineSpec(name="n", kind="llama-server", model="/m.gguf", context=512,
                      command=("my-server", "-m", "{model}", "--port", "{port}", "-c",
                               "{context}", "--key", "{api_key}", '--json={"a": 1}'))
    adapter = ADAPTERS["llama-server"]
    assert adapter.argv(spec, CPU) == ["my-server", "-m", "/m.gguf", "--port", "4242", "-c",
                                       "512", "--key", "k3y", '--json={"a": 1}']
    assert adapter.parallel(spec) == 1  # an unknown engine: one at a time unless told


def test_embedding_llama_server_gets_a_power_of_two_slots() -> None:
    # llama.cpp (b11434) aborts at start serving embeddings with 3, 5, 6 or 12 slots.
    server = ADAPTERS["llama-server"]
    for asked, slots in [(1, 1), (2, 2), (3, 2), (6, 4), (12, 8), (16, 16)]:
        spec = EngineSpec(name="m", kind="llama-server", model="m.gguf", parallel=asked,
                          embeddings=True)
        assert server.parallel(spec) == slots, asked
        argv = server.argv(spec, CPU)
        assert argv[argv.index("--parallel") + 1] == str(slots)
    plain = EngineSpec(name="m", kind="llama-server", model="m.gguf", parallel=3)
    assert server.parallel(plain) == 3  # no embeddings: as asked
