"""What DX tells clients about each configured model (for /api/tags and /v1/models).

Built once per config, off the event loop (it reads file headers), then only read.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from dxproxy.config import Config, ModelConfig
from dxproxy.gguf import FILE_TYPES, GGUFError, read_metadata

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

    def tags_entry(self) -> dict[str, Any]:
        return {
            "name": self.display,
            "model": self.display,
            "modified_at": self.modified_at,
            "size": self.size,
            "digest": self.digest,
            "details": self.details,
        }


@dataclass(frozen=True, slots=True)
class Catalog:
    models: tuple[ModelInfo, ...] = ()

    def get(self, name: str) -> ModelInfo | None:
        return next((m for m in self.models if m.name == name), None)


def build_catalog(config: Config) -> Catalog:
    return Catalog(tuple(_describe(m) for m in config.models))


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
    try:
        st = os.stat(model.model)
        size, mtime_ns = st.st_size, st.st_mtime_ns
    except OSError:
        pass  # a Hugging Face id (vLLM): nothing on disk to describe
    if model.model.endswith(".gguf") and size:
        details["format"] = "gguf"
        try:
            meta = read_metadata(model.model)
        except (OSError, GGUFError, ValueError) as exc:
            log.warning("%s: cannot read GGUF metadata: %s", model.name, exc)
        else:
            family = str(meta.get("general.architecture", ""))
            details.update(
                family=family,
                families=[family] if family else None,
                parameter_size=str(meta.get("general.size_label", "")),
                quantization_level=FILE_TYPES.get(meta.get("general.file_type", -1), ""),
            )
    elif os.path.isdir(model.model):
        details["format"] = "safetensors"  # a Hugging Face folder
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
    )
