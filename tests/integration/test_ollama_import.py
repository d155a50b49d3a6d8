"""An Ollama store, imported with `dx import-ollama`, served by a real `dx serve` with the
real llama.cpp engine of `engine: llamacpp`: the blob answers in place through DX."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import ollama
import psutil
import pytest
import yaml

from tests.conftest import DX, start_dx
from tests.ollama_store import build_store, smollm2_digest, snapshot

pytestmark = pytest.mark.integration


def test_an_imported_ollama_model_answers_through_dx(tmp_path: Path) -> None:
    store = tmp_path / "ollama" / "models"
    build_store(store, params={"num_ctx": 2048, "temperature": 0.0, "top_k": 1, "stop": ["x"]})
    before = snapshot(store)
    out = tmp_path / "imported.yaml"
    imported = subprocess.run(
        [*DX, "import-ollama", "--store", str(store), "--write", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert imported.returncode == 0, imported.stderr
    models = yaml.safe_load(out.read_text())["models"]
    blob = store / "blobs" / smollm2_digest().replace(":", "-")

    (tmp_path / "dx").mkdir()
    dx = start_dx(tmp_path / "dx", models, wait=120)
    try:
        # The engine opened the blob where it is, with the params mapped to its flags.
        cmdlines = [psutil.Process(pid).cmdline() for pid in dx.engine_pids()]
        (cmdline,) = [c for c in cmdlines if str(blob) in c]
        assert cmdline[cmdline.index("--temp") + 1] == "0.0"
        assert cmdline[cmdline.index("--top-k") + 1] == "1"
        tags = httpx.get(dx.url + "/api/tags", headers=dx.auth, timeout=10).json()
        assert [m["name"] for m in tags["models"]] == ["smollm2:135m"]
        client = ollama.Client(host=dx.url, headers=dx.auth, timeout=120)
        reply = client.chat(
            model="smollm2:135m",
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            options={"num_predict": 16},
        )
        assert reply.message.role == "assistant"
        assert reply.message.content.strip()
        assert reply.done is True and 0 < (reply.eval_count or 0) <= 16
    finally:
        dx.stop()
    assert snapshot(store) == before  # served in place; the store is as it was
