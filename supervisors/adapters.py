"""What differs between engine kinds: the command line, the readiness probe, the concurrency.

Everything else (spawning, probing, stopping, restarting) is shared in `process.py`.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from dxproxy.config import EngineKind, ModelConfig

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class EngineAdapter:
    kind: str
    # Path that answers 200 once the engine can serve (connection refused = still starting).
    ready_path: str
    # Requests one replica takes at once unless `parallel` is set in the config.
    default_parallel: int
    module: str  # python -m MODULE
    model_flags: tuple[str, ...]  # how this engine spells model, served name, context

    def argv(self, model: ModelConfig, port: int) -> list[str]:
        if model.command:
            # An operator-given command line (a native llama-server, a wrapper script...).
            # Plain replace, not str.format: engine args may contain JSON braces.
            values = {
                "{port}": str(port),
                "{host}": LOOPBACK,
                "{model}": model.model,
                "{name}": model.name,
                "{context}": str(model.context),
            }
            out = []
            for arg in model.command:
                for placeholder, value in values.items():
                    arg = arg.replace(placeholder, value)
                out.append(arg)
            return out + list(model.args)
        flag_model, flag_name, flag_ctx = self.model_flags
        return [
            model.python or sys.executable,
            "-m",
            self.module,
            flag_model,
            model.model,
            flag_name,
            model.name,
            "--host",
            LOOPBACK,
            "--port",
            str(port),
            flag_ctx,
            str(model.context),
            *self.extra_flags(model),
            *model.args,
        ]

    def extra_flags(self, model: ModelConfig) -> list[str]:
        if self.kind == "llamacpp":
            # llama-cpp-python serves one request at a time behind a global lock; with the
            # default interrupt_requests=True a queued request cuts the running stream short.
            # DX queues instead, so the engine must never interrupt.
            layers = "-1" if model.gpus else "0"
            return ["--n_gpu_layers", layers, "--interrupt_requests", "false"]
        return []

    def env(self, model: ModelConfig) -> dict[str, str]:
        env = dict(os.environ)
        # Pin the engine to its GPUs; an empty list hides every GPU (a CPU model).
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, model.gpus))
        # Number GPUs as nvidia-smi and the banner do (CUDA's default is fastest first).
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        # DX promises no telemetry: vLLM reports usage statistics unless told not to.
        env["VLLM_NO_USAGE_STATS"] = "1"
        env["DO_NOT_TRACK"] = "1"
        env.update(model.env)
        return env

    def cancels_only_streams(self, model: ModelConfig) -> bool:
        """True when the engine stops generating for a client that left only if it was
        streaming: llama-cpp-python checks for a disconnect between streamed tokens, but runs
        a non-streamed request to its end, holding its one slot all the while."""
        return self.kind == "llamacpp" and model.command is None

    def parallel(self, model: ModelConfig) -> int:
        return model.parallel or self.default_parallel


ADAPTERS: dict[EngineKind, EngineAdapter] = {
    "llamacpp": EngineAdapter(
        kind="llamacpp",
        ready_path="/v1/models",  # llama-cpp-python has no /health; llama-server answers both
        default_parallel=1,
        module="llama_cpp.server",
        model_flags=("--model", "--model_alias", "--n_ctx"),
    ),
    "vllm": EngineAdapter(
        kind="vllm",
        ready_path="/health",
        default_parallel=64,  # continuous batching: the engine schedules, DX only caps
        module="vllm.entrypoints.openai.api_server",
        model_flags=("--model", "--served-model-name", "--max-model-len"),
    ),
}
