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

from dxproxy.cli.import_ollama import LLAMA_SERVER_FLAGS
from tests.conftest import DX, start_dx
from tests.fakes.ollama_store import build_store, smollm2_digest, snapshot

pytestmark = pytest.mark.integration


def test_an_imported_ollama_model_answers_through_dx(tmp_path: Path) -> None:
    store = tmp_path / "ollama" / "models"
    # Every param the importer maps, so the real engine proves it accepts each flag written.
    params = {
        "num_ctx": 2048,
        "temperature": 0.0,
        "top_k": 1,
        "top_p": 0.9,
        "min_p": 0.05,
        "typical_p": 1.0,
        "repeat_penalty": 1.0,
        "repeat_last_n": 64,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "seed": 42,
        "num_predict": 64,
        "num_keep": 4,
        "num_batch": 256,
        "num_thread": 2,
        "use_mmap": False,
        "stop": ["x"],
    }
    assert set(params) - {"num_ctx", "stop", "use_mmap"} == set(LLAMA_SERVER_FLAGS)
    build_store(store, params=params)
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
        assert cmdline[cmdline.index("--load-mode") + 1] == "none"
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
