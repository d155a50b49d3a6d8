"""What DX tells clients about each configured model (/api/tags, /api/show, /api/ps,
/v1/models): details from the GGUF header or the Hugging Face config, the chat template, and
what the model can do.

Built once per config, off the event loop (it reads file headers), then only read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from dxproxy.config import Config, ModelConfig
from dxproxy.models.gguf import FILE_TYPES, GGUFError, read_metadata

log = logging.getLogger("dx.catalog")


def display_name(name: str) -> str:
    """Ollama clients always see a tag: `smollm2` is listed as `smollm2:latest`."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str  # canonical config name
    display: str  # with a tag, as Ollama clients expect
    size: int
    modified_at: str  # RFC 3339 with the local offset, like Ollama's manifest mtimes
    modified_unix: int
    digest: str
    details: dict[str, Any] = field(default_factory=dict)
    # The GGUF key-values (or the Hugging Face config's, as <arch>.* keys), for /api/show.
    model_info: dict[str, Any] = field(default_factory=dict)
    template: str = ""  # the model's own chat template (Jinja), as the engine applies it
    license: str = ""
    capabilities: tuple[str, ...] = ()
    context: int = 0  # tokens one request may use: the context DX serves

    def tags_entry(self) -> dict[str, Any]:
        return {
            "name": self.display,
            "model": self.display,
            "modified_at": self.modified_at,
            "size": self.size,
            "digest": self.digest,
            "details": self.details,
            "capabilities": list(self.capabilities),
        }


@dataclass(frozen=True, slots=True)
class Catalog:
    models: tuple[ModelInfo, ...] = ()

    def get(self, name: str) -> ModelInfo | None:
        return next((m for m in self.models if m.name == name), None)


def build_catalog(config: Config) -> Catalog:
    return Catalog(tuple(_describe(m) for m in config.models))


def has_vision(model: ModelConfig) -> bool:
    """A vision projector is configured (llama.cpp: --mmproj in the model's args, as
    `dx import-ollama` writes it), or the engine reads images by itself (vLLM loads a
    multimodal model whole; an operator's own command may add a projector)."""
    projector = any(arg in ("--mmproj", "-mm", "--mmproj-url", "-mmu") for arg in model.args)
    return projector or model.engine == "vllm" or model.command is not None


def serves_embeddings(model: ModelConfig) -> bool:
    return model.embeddings


def capabilities(model: ModelConfig, template: str) -> tuple[str, ...]:
    """What Ollama's /api/show calls capabilities, from the config and the chat template."""
    # llama-server with --embeddings still generates (measured with this build), and so does
    # llama-cpp-python; vLLM's pooling runner does not.
    caps: list[str] = []
    if not (serves_embeddings(model) and model.kind == "vllm"):
        caps.append("completion")
    # Engines render tools through the chat template: one that never mentions them drops
    # them without a word (llama-server, vLLM), and llama-cpp-python ignores them. An unknown
    # template (an operator's own command, a hub id) is given the benefit of the doubt.
    if ("tools" in template or not template) and model.kind != "llama-cpp-python":
        caps.append("tools")
    if any(word in template for word in ("<think>", "enable_thinking", "reasoning")):
        caps.append("thinking")
    if has_vision(model):
        caps.append("vision")
    # A chat model DX gives a pooling to (every llama-server model embeds by default) is
    # listed as Ollama lists its chat models, by what it is for: completion, not embedding.
    if serves_embeddings(model) and model.pooling is None:
        caps.append("embedding")
    return tuple(caps)


def no_tools_advice(model: ModelConfig) -> str:
    """Why a model takes no tools, and what to set so that it does: for the 400 a client
    gets, the log, and `dx doctor`."""
    if model.kind == "llama-cpp-python":
        return (
            "the llama-cpp-python engine ignores tools; serve the model with engine: llamacpp "
            "(llama-server) or vllm in the DX config"
        )
    return (
        "its chat template has no tool syntax. In the DX config, set "
        f"models.{model.name}.chat_template to a Jinja chat template file that has (the "
        "model's own with tools added; DX ships smollm2-tools for SmolLM2), or serve a "
        "model whose template has tools"
    )


def _describe(model: ModelConfig) -> ModelInfo:
    details: dict[str, Any] = {
        "parent_model": "",
        "format": "",
        "family": "",
        "families": None,
        "parameter_size": "",
        "quantization_level": "",
    }
    size, mtime_ns = 0, 0
    meta: dict[str, Any] = {}
    try:
        st = os.stat(model.model)
        size, mtime_ns = st.st_size, st.st_mtime_ns
    except OSError:
        pass  # a Hugging Face id (vLLM): nothing on disk to describe
    if size and os.path.isfile(model.model):  # a GGUF, whatever its name (Ollama's blobs)
        details["format"] = "gguf"
        try:
            meta = read_metadata(model.model, parameters=True)
        except (OSError, GGUFError, ValueError) as exc:
            log.warning("%s: cannot read GGUF metadata: %s", model.name, exc)
    elif os.path.isdir(model.model):
        details["format"] = "safetensors"  # a Hugging Face folder
        meta = _hf_metadata(model.model)
    template = _template_override(model) or str(meta.pop("tokenizer.chat_template", ""))
    meta.pop("tokenizer.chat_template", None)
    family = str(meta.get("general.architecture", ""))
    if family:
        count = meta.get("general.parameter_count")
        details.update(
            family=family,
            families=[family],
            parameter_size=str(meta.get("general.size_label", "")) or _size_label(count),
            quantization_level=FILE_TYPES.get(meta.get("general.file_type", -1), "")
            or str(meta.pop("dx.dtype", "")),
        )
        # The context DX serves, not the one the model was trained for: DX's engines refuse
        # a longer prompt (Ollama would cut it), so clients that size prompts from this
        # (VS Code Copilot) must see what will fit.
        meta[f"{family}.context_length"] = model.context
    details["context_length"] = model.context
    if f"{family}.embedding_length" in meta:
        details["embedding_length"] = meta[f"{family}.embedding_length"]
    modified = datetime.fromtimestamp(mtime_ns / 1e9).astimezone() if mtime_ns else None
    # Ollama's digest hashes a small manifest; DX hashes what identifies the file, so a
    # listing never reads gigabytes.
    ident = f"{model.name}\0{model.model}\0{size}\0{mtime_ns}".encode()
    return ModelInfo(
        name=model.name,
        display=display_name(model.name),
        size=size,
        modified_at=modified.isoformat() if modified else "1970-01-01T00:00:00Z",
        modified_unix=int(mtime_ns // 1_000_000_000),
        digest=hashlib.sha256(ident).hexdigest(),
        details=details,
        # Ollama leaves these two out of model_info (the template has its own field).
        model_info={k: v for k, v in meta.items() if k != "general.name"},
        template=template,
        license=str(meta.get("general.license", "")),
        capabilities=capabilities(model, template),
        context=model.context,
    )


def _template_override(model: ModelConfig) -> str:
    """The chat template the engine is told to use instead of the model's own, if any
    (llama-server's --chat-template-file or vLLM's --chat-template in the model's args, as
    `chat_template:` sets them): what it really applies."""
    args = list(model.args)
    for flag in ("--chat-template-file", "--chat_template_file", "--chat-template"):
        if flag in args[:-1]:
            path = args[args.index(flag) + 1]
            try:
                with open(path, encoding="utf-8") as f:
                    return f.read()
            except OSError as exc:
                log.warning("%s: cannot read %s %s: %s", model.name, flag, path, exc)
    return ""


def _size_label(count: Any) -> str:
    """135M, 7.2B: Ollama's parameter_size from a parameter count."""
    if not isinstance(count, int) or count <= 0:
        return ""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            value = count / scale
            return f"{value:.0f}{unit}" if value >= 100 else f"{value:.1f}{unit}"
    return str(count)


def _hf_metadata(folder: str) -> dict[str, Any]:
    """A Hugging Face folder described with GGUF's key names, so /api/show reads the same."""
    meta: dict[str, Any] = {}
    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        return meta
    if not isinstance(config, dict):
        return meta
    arch = str(config.get("model_type", "")) or "unknown"
    meta["general.architecture"] = arch
    names = {
        "max_position_embeddings": "context_length",
        "hidden_size": "embedding_length",
        "num_hidden_layers": "block_count",
        "intermediate_size": "feed_forward_length",
        "num_attention_heads": "attention.head_count",
        "num_key_value_heads": "attention.head_count_kv",
        "vocab_size": "vocab_size",
    }
    for key, name in names.items():
        if isinstance(config.get(key), int):
            meta[f"{arch}.{name}"] = config[key]
    dtype = config.get("torch_dtype") or config.get("dtype")
    if isinstance(dtype, str):
        meta["dx.dtype"] = dtype.upper().replace("BFLOAT16", "BF16").replace("FLOAT16", "F16")
    try:
        with open(os.path.join(folder, "tokenizer_config.json"), encoding="utf-8") as f:
            template = json.load(f).get("chat_template")
        if isinstance(template, str):
            meta["tokenizer.chat_template"] = template
    except (OSError, ValueError, AttributeError):
        pass
    return meta
