"""Builds a real Ollama model store (reference/OLLAMA-API.md §7) in a test folder: manifest
JSON as Ollama writes it, content-addressed blobs, and the real SmolLM2 GGUF as the model
blob (linked, not copied: it is 98 MB)."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from tests.conftest import smollm2_path

TEMPLATE = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
    "<|im_start|>assistant\n"
)


@functools.cache
def smollm2_digest() -> str:
    """sha256 of the real model file, computed once per test session."""
    h = hashlib.sha256()
    with smollm2_path().open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _blob(store: Path, data: bytes) -> dict[str, Any]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = store / "blobs" / digest.replace(":", "-")
    path.write_bytes(data)
    return {"digest": digest, "size": len(data)}


def build_store(
    store: Path,
    *,
    model: str = "smollm2",
    tag: str = "135m",
    namespace: str = "library",
    host: str = "registry.ollama.ai",
    params: dict[str, Any] | None = None,
    system: str | None = "You are a helpful assistant.",
    projector: bool = False,
) -> Path:
    """Add one model to the store at `store` (created if needed); returns its manifest."""
    (store / "blobs").mkdir(parents=True, exist_ok=True)
    digest = smollm2_digest()
    blob = store / "blobs" / digest.replace(":", "-")
    if not blob.exists():
        try:
            os.link(smollm2_path(), blob)  # a hard link is what a real blob would be
        except OSError:  # another file system
            blob.symlink_to(smollm2_path())
    layers = [
        {
            "mediaType": "application/vnd.ollama.image.model",
            "digest": digest,
            "size": smollm2_path().stat().st_size,
        },
        {"mediaType": "application/vnd.ollama.image.template", **_blob(store, TEMPLATE.encode())},
        {"mediaType": "application/vnd.ollama.image.license", **_blob(store, b"Apache-2.0\n")},
    ]
    if system is not None:
        layers.append(
            {"mediaType": "application/vnd.ollama.image.system", **_blob(store, system.encode())}
        )
    if params is not None:
        layers.append(
            {
                "mediaType": "application/vnd.ollama.image.params",
                **_blob(store, json.dumps(params).encode()),
            }
        )
    if projector:
        # Not a real projector; enough for the importer, which only names its path.
        layers.append(
            {
                "mediaType": "application/vnd.ollama.image.projector",
                **_blob(store, b"GGUF" + b"\0" * 60),
            }
        )
    config = {
        "model_format": "gguf",
        "model_family": "llama",
        "model_families": ["llama"],
        "model_type": "134.52M",
        "file_type": "Q4_1",
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": []},
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            **_blob(store, json.dumps(config).encode()),
        },
        "layers": layers,
    }
    path = store / "manifests" / host / namespace / model / tag
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest))
    return path


def snapshot(store: Path) -> dict[str, tuple[int, int, int, str]]:
    """Every entry of the store: size, mode, mtime (ns) and, for small files, a content hash
    (links not followed; the 98 MB model blob is covered by size and mtime)."""
    out = {}
    for p in [store, *sorted(store.rglob("*"))]:
        st = p.lstat()
        small = p.is_file() and not p.is_symlink() and st.st_size < 1 << 20
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if small else ""
        out[str(p.relative_to(store))] = (st.st_size, st.st_mode, st.st_mtime_ns, digest)
    return out
