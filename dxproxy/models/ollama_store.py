"""An existing Ollama store, read in place (never written): its models and their GGUF blobs.

A store (reference/OLLAMA-API.md §7) is `manifests/<host>/<namespace>/<model>/<tag>`
(Docker-style JSON listing layers by media type) and `blobs/sha256-<hex>` (content-addressed
files). The model layer is a plain GGUF file, so llama.cpp can serve the blob where it is.
`dx import-ollama` (dxproxy/cli/import_ollama.py) writes config entries from what is read here;
`dx doctor` lists it.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MEDIA = "application/vnd.ollama.image."
MODEL = MEDIA + "model"
PARAMS = MEDIA + "params"
TEMPLATE = MEDIA + "template"
PROMPT = MEDIA + "prompt"  # the legacy name of the template layer
SYSTEM = MEDIA + "system"
PROJECTOR = MEDIA + "projector"
ADAPTER = MEDIA + "adapter"
LICENSE = MEDIA + "license"
MESSAGES = MEDIA + "messages"
DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"


@dataclass(frozen=True, slots=True)
class OllamaModel:
    """One manifest of the store, as DX will serve it."""

    name: str  # the DX model name: name:tag, ns/name:tag, or host/ns/name:tag
    ref: str  # host/namespace/model:tag, as Ollama knows it
    manifest: Path
    gguf: Path | None = None
    size: int = 0
    params: Mapping[str, Any] = field(default_factory=dict)
    projectors: tuple[Path, ...] = ()
    adapters: tuple[Path, ...] = ()
    unused: tuple[str, ...] = ()  # layers DX does not use (template, messages, ...)
    system: str = ""  # the system prompt layer, said in a comment
    details: Mapping[str, Any] = field(default_factory=dict)  # family, size, quantization
    problem: str = ""  # why it cannot be imported; "" = it can


def default_stores(env: Mapping[str, str] | None = None) -> list[Path]:
    """Where Ollama keeps models: $OLLAMA_MODELS, the user's, the Linux service's."""
    env = os.environ if env is None else env
    out: list[Path] = []
    if env.get("OLLAMA_MODELS"):
        out.append(Path(env["OLLAMA_MODELS"]).expanduser())
    out.append(Path(env.get("HOME", "~")).expanduser() / ".ollama" / "models")
    out.append(Path("/usr/share/ollama/.ollama/models"))
    return list(dict.fromkeys(out))


def manifests(store: Path) -> Iterator[Path]:
    """Every manifest: exactly manifests/<host>/<namespace>/<model>/<tag>, hidden files
    skipped, as Ollama itself reads the store."""
    for path in sorted((store / "manifests").glob("*/*/*/*")):
        parts = path.relative_to(store / "manifests").parts
        if path.is_file() and not any(p.startswith(".") for p in parts):
            yield path


def blob_path(store: Path, digest: str) -> Path:
    return store / "blobs" / digest.replace(":", "-", 1)


def dx_name(host: str, namespace: str, model: str, tag: str) -> str:
    name = f"{model}:{tag}"
    if namespace != DEFAULT_NAMESPACE or host != DEFAULT_HOST:
        name = f"{namespace}/{name}"
    if host != DEFAULT_HOST:
        name = f"{host}/{name}"
    return name


def read_manifest(store: Path, path: Path) -> OllamaModel:
    host, namespace, model, tag = path.relative_to(store / "manifests").parts
    name = dx_name(host, namespace, model, tag)
    ref = f"{host}/{namespace}/{model}:{tag}"
    base = OllamaModel(name=name, ref=ref, manifest=path)
    try:
        doc = json.loads(path.read_bytes())
        layers = [layer for layer in doc.get("layers", []) if isinstance(layer, dict)]
    except (ValueError, AttributeError) as exc:
        return _with(base, problem=f"the manifest is not valid JSON ({exc})")

    def blobs(media: str) -> list[Path]:
        return [
            blob_path(store, str(layer.get("digest", "")))
            for layer in layers
            if layer.get("mediaType") == media
        ]

    models = blobs(MODEL)
    if not models:
        kinds = sorted({str(layer.get("mediaType", "")).removeprefix(MEDIA) for layer in layers})
        return _with(base, problem=f"no GGUF model layer (layers: {', '.join(kinds)})")
    gguf = models[0]
    if not gguf.is_file():
        return _with(base, problem=f"its model blob is missing: {gguf}")
    with gguf.open("rb") as f:
        if f.read(4) != b"GGUF":
            return _with(base, problem=f"its model blob is not a GGUF file: {gguf}")
    params: dict[str, Any] = {}
    for p in blobs(PARAMS):
        try:
            loaded = json.loads(p.read_bytes())
        except (OSError, ValueError):
            continue
        if isinstance(loaded, dict):
            params.update(loaded)
    details: dict[str, Any] = {}
    config = doc.get("config")
    if isinstance(config, dict) and config.get("digest"):
        try:
            loaded = json.loads(blob_path(store, str(config["digest"])).read_bytes())
            if isinstance(loaded, dict):
                details = loaded
        except (OSError, ValueError):
            pass
    if details.get("remote_host"):
        return _with(base, problem="a cloud model (remote_host): there are no weights here")
    unused = sorted(
        {
            str(layer.get("mediaType")).removeprefix(MEDIA)
            for layer in layers
            if layer.get("mediaType") in (TEMPLATE, PROMPT, MESSAGES)
        }
    )
    system = ""
    for p in blobs(SYSTEM):
        with contextlib.suppress(OSError, UnicodeDecodeError):
            system = p.read_text(encoding="utf-8").strip()
    return OllamaModel(
        name=name,
        ref=ref,
        manifest=path,
        gguf=gguf,
        size=gguf.stat().st_size,
        params=params,
        projectors=tuple(p for p in blobs(PROJECTOR) if p.is_file()),
        adapters=tuple(p for p in blobs(ADAPTER) if p.is_file()),
        unused=tuple(unused),
        system=system,
        details=details,
    )


def _with(base: OllamaModel, *, problem: str) -> OllamaModel:
    return OllamaModel(name=base.name, ref=base.ref, manifest=base.manifest, problem=problem)


def read_store(store: Path) -> list[OllamaModel]:
    """Every model of the store; the ones that cannot be served carry a `problem`."""
    return [read_manifest(store, path) for path in manifests(store)]
