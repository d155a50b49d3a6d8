"""How much memory a model's engines need, estimated before they start: for `dx doctor`'s
"does it fit" and for the loader's budget (which models may be loaded at once).

An explicit `memory:` in the model's config wins over every estimate.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dxproxy.config import ModelConfig
from dxproxy.models.gguf import GGUFError, read_metadata
from supervisors import ADAPTERS

GiB = 2**30
MiB = 2**20

# The memory estimate for a llama.cpp model (said in every row that uses it):
# weights = the GGUF file; KV cache = layers x KV heads x (key + value width) x tokens x
# bytes per element; plus compute buffers, taken as 10 % of the weights + 256 MiB.
OVERHEAD_FRACTION = 0.10
OVERHEAD_FIXED = 256 * MiB
# KV cache element sizes by llama.cpp cache type (q8_0 and q4_0 store 32 values in 34 and
# 18 bytes).
KV_BYTES = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}
# vLLM takes this share of each GPU it is given (--gpu-memory-utilization) and refuses to
# start unless that much is free.
VLLM_GPU_SHARE = 0.9
VLLM_CPU_KV_DEFAULT = 4 * GiB  # VLLM_CPU_KVCACHE_SPACE when the model's env does not set it


def gib(n: int) -> str:
    return f"{n / GiB:.1f} GiB" if n >= GiB else f"{n / MiB:.0f} MiB"


@dataclass(frozen=True, slots=True)
class Estimate:
    per_replica: int  # bytes each replica needs on its device
    shared: int  # bytes all replicas share (weights mapped from one file on the CPU)
    how: str  # said to the user

    def total(self, replicas: int) -> int:
        return self.shared + self.per_replica * replicas


def estimate(model: ModelConfig, on_gpu: bool) -> Estimate | str:
    """Memory one replica needs on a GPU or on the CPU; a string says why it is unknown."""
    if model.memory:
        return Estimate(model.memory, 0, f"memory: {gib(model.memory)} (from the config)")
    kind = model.kind
    path = Path(model.model)
    if kind == "vllm":
        if not path.exists():
            return "a Hugging Face id: its size is known once vLLM downloads it"
        weights = _folder_weights(path)
        if on_gpu:
            return Estimate(weights, 0, f"vLLM claims 90% of each GPU; weights {gib(weights)}")
        kv = _envgib(model, "VLLM_CPU_KVCACHE_SPACE", VLLM_CPU_KV_DEFAULT)
        return Estimate(
            weights + kv, 0, f"weights {gib(weights)} + KV cache space {gib(kv)} (vLLM on CPU)"
        )
    if not path.is_file():
        return f"no file at {path}"
    weights = path.stat().st_size
    try:
        meta = read_metadata(str(path))
    except (OSError, GGUFError, ValueError) as exc:
        return f"cannot read the GGUF header: {exc}"
    return estimate_gguf(model, weights, meta, on_gpu)


def estimate_gguf(model: ModelConfig, weights: int, meta: dict[str, Any], on_gpu: bool) -> Estimate:
    """`estimate` for a llama.cpp model of `weights` bytes whose GGUF header is `meta`, with
    the model's KV cache type, slots and context (the file need not exist yet)."""
    _, slots = _kv_tokens(model)
    return gguf_estimate(weights, meta, _kv_type(model, on_gpu), model.context, slots, on_gpu)


def gguf_estimate(
    weights: int, meta: dict[str, Any], kv_type: str, context: int, slots: int, on_gpu: bool
) -> Estimate:
    """The llama.cpp estimate from a GGUF's size and header alone (no config, no file): also
    what `dx pull` weighs each quant of a Hugging Face repo with before downloading it."""
    per_token = _kv_bytes_per_token(meta) * KV_BYTES.get(kv_type, 2.0)
    tokens = slots * context
    kv = int(per_token * tokens)
    overhead = int(weights * OVERHEAD_FRACTION) + OVERHEAD_FIXED
    how = (
        f"weights {gib(weights)} + KV cache {gib(kv)} ({kv_type}, {tokens} tokens = "
        f"{slots} slot(s) x {context}) + buffers {gib(overhead)}"
    )
    # On the CPU llama.cpp maps the file: replicas share the weights' pages.
    if on_gpu:
        return Estimate(weights + kv + overhead, 0, how)
    return Estimate(kv + overhead, weights, how)


def _kv_type(model: ModelConfig, on_gpu: bool) -> str:
    """The KV cache type: a --cache-type-k in args, else DX's default (q8_0 on GPUs)."""
    args = list(model.args)
    for flag in ("--cache-type-k", "-ctk"):
        if flag in args[:-1]:
            return args[args.index(flag) + 1]
    if model.kind == "llama-server" and on_gpu:
        return "q8_0"
    return "f16"


def _kv_bytes_per_token(meta: dict[str, Any]) -> int:
    """KV cache elements per token: layers x KV heads x (key + value width)."""
    arch = meta.get("general.architecture", "llama")

    def num(key: str, default: int) -> int:
        value = meta.get(f"{arch}.{key}", default)
        return int(value) if isinstance(value, int | float) else default

    layers = num("block_count", 32)
    embd = num("embedding_length", 4096)
    heads = num("attention.head_count", 32) or 1
    kv_heads = num("attention.head_count_kv", heads)
    k_width = num("attention.key_length", embd // heads)
    v_width = num("attention.value_length", embd // heads)
    return layers * kv_heads * (k_width + v_width)


def _kv_tokens(model: ModelConfig) -> tuple[int, int]:
    """(KV cache tokens, slots): llama-server holds `context` tokens for each of the parallel
    slots DX gives it (the adapter's own rule); other engines one context."""
    spec = model.spec()
    if spec.kind == "llama-server" and not spec.command:
        slots = ADAPTERS[spec.kind].parallel(spec)
        return slots * model.context, slots
    return model.context, 1


def _folder_weights(folder: Path) -> int:
    if folder.is_file():
        return folder.stat().st_size
    return sum(
        p.stat().st_size for p in folder.glob("*") if p.suffix in (".safetensors", ".bin", ".pt")
    )


def _envgib(model: ModelConfig, name: str, default: int) -> int:
    value = dict(model.env).get(name) or os.environ.get(name)
    try:
        return int(float(value) * GiB) if value else default
    except ValueError:
        return default
