"""`dx import-ollama` on a real Ollama store layout built here around the real SmolLM2 GGUF.
The store must come out exactly as it went in; the output must be a config DX accepts."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import DX
from tests.fakes.ollama_store import build_store, smollm2_digest, snapshot

PARAMS = {
    "num_ctx": 4096,
    "temperature": 0.2,
    "top_k": 20,
    "repeat_penalty": 1.1,
    "stop": ["<|im_end|>"],
    "mirostat": 0,
}


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*DX, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def store_with_everything(store: Path) -> None:
    build_store(store, params=PARAMS, projector=True)
    build_store(store, tag="latest", namespace="someone", system=None)
    build_store(
        store, model="SmolLM2-135M-Instruct-GGUF", tag="Q4_1", namespace="bartowski", host="hf.co"
    )
    # Not importable: a safetensors model (tensor layers, no GGUF), a manifest whose blob is
    # gone, and what Ollama itself ignores (hidden files, deeper nesting).
    weird = store / "manifests" / "registry.ollama.ai" / "library"
    (weird / "tensors").mkdir()
    (weird / "tensors" / "latest").write_text(
        json.dumps(
            {
                "schemaVersion": 2,
                "layers": [
                    {
                        "mediaType": "application/vnd.ollama.image.tensor",
                        "digest": "sha256:" + "1" * 64,
                        "size": 1,
                        "name": "w",
                    }
                ],
            }
        )
    )
    gone = build_store(store, model="gone", tag="latest")
    doc = json.loads(gone.read_text())
    doc["layers"][0]["digest"] = "sha256:" + "0" * 64
    gone.write_text(json.dumps(doc))
    (weird / "smollm2" / ".hidden").write_text("{}")
    (weird / "smollm2" / "deeper").mkdir()
    (weird / "smollm2" / "deeper" / "tag").write_text("{}")


def test_import_serves_blobs_in_place_and_leaves_the_store_untouched(tmp_path: Path) -> None:
    store = tmp_path / "models"
    store_with_everything(store)
    before = snapshot(store)

    result = run("import-ollama", "--store", str(store))
    assert result.returncode == 0, result.stderr
    assert snapshot(store) == before  # nothing written, renamed, touched or added

    blob = str(store / "blobs" / smollm2_digest().replace(":", "-"))
    config = yaml.safe_load(result.stdout)
    models: dict[str, Any] = config["models"]
    assert sorted(models) == [
        "hf.co/bartowski/SmolLM2-135M-Instruct-GGUF:Q4_1",
        "smollm2:135m",
        "someone/smollm2:latest",
    ]
    smol = models["smollm2:135m"]
    assert smol["engine"] == "llamacpp" and smol["model"] == blob
    assert smol["context"] == 4096  # num_ctx
    args = smol["args"]
    assert args[:6] == ["--temp", "0.2", "--top-k", "20", "--repeat-penalty", "1.1"]
    projector = args[args.index("--mmproj") + 1]
    assert Path(projector).parent == store / "blobs" and Path(projector).is_file()
    assert models["someone/smollm2:latest"] == {"engine": "llamacpp", "model": blob}
    # What is not mapped is said, with why, next to the entry.
    text = result.stdout
    assert '# not mapped: stop ["<|im_end|>"] (llama-server has no default stop strings' in text
    assert "# not mapped: mirostat 0" in text
    assert '# Ollama\'s system prompt, not applied by DX: "You are a helpful assistant."' in text
    assert "# registry.ollama.ai/library/smollm2:135m: llama, 134.52M, Q4_1" in text
    # Progress and the summary go to stderr, so stdout is the config alone.
    err = result.stderr
    assert f"reading the Ollama store {store}" in err
    assert "skipped registry.ollama.ai/library/tensors:latest: no GGUF model layer" in err
    assert "skipped registry.ollama.ai/library/gone:latest: its model blob is missing" in err
    assert "3 model(s) imported, 2 skipped; printed the config above" in err
    assert "hidden" not in err and "deeper" not in err


def test_write_refuses_to_overwrite_and_dx_accepts_the_file(tmp_path: Path) -> None:
    store = tmp_path / "models"
    build_store(store, params=PARAMS)
    out = tmp_path / "imported.yaml"
    first = run("import-ollama", "--store", str(store), "--write", str(out))
    assert first.returncode == 0, first.stderr
    assert f"1 model(s) imported; wrote {out}" in first.stderr
    check = run("config", "check", str(out))
    assert check.returncode == 0, check.stderr
    assert "OK (1 model(s): smollm2:135m)" in check.stdout
    out.write_text("# mine\n")
    again = run("import-ollama", "--store", str(store), "--write", str(out))
    assert again.returncode == 1 and "exists; pass --force to replace it" in again.stderr
    assert out.read_text() == "# mine\n"
    forced = run("import-ollama", "--store", str(store), "--write", str(out), "--force")
    assert forced.returncode == 0 and "smollm2:135m" in out.read_text()


def test_the_default_store_is_found_and_a_missing_one_explained(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {"HOME": str(home), "OLLAMA_MODELS": ""}
    missing = run("import-ollama", env=env)
    assert missing.returncode == 1
    assert f"no Ollama store found (looked in {home}/.ollama/models" in missing.stderr
    assert "--store PATH" in missing.stderr
    build_store(home / ".ollama" / "models")
    found = run("import-ollama", env=env)
    assert found.returncode == 0, found.stderr
    assert "smollm2:135m" in yaml.safe_load(found.stdout)["models"]
    # $OLLAMA_MODELS wins, as it does for Ollama.
    other = tmp_path / "elsewhere"
    build_store(other, model="other", tag="latest")
    chosen = run("import-ollama", env={**env, "OLLAMA_MODELS": str(other)})
    assert list(yaml.safe_load(chosen.stdout)["models"]) == ["other:latest"]
    not_a_store = run("import-ollama", "--store", str(tmp_path))
    assert not_a_store.returncode == 1 and "is not an Ollama store" in not_a_store.stderr
