"""The three real engines side by side behind one DX: native llama-server (the default),
llama-cpp-python with two replicas, and vLLM's CPU build, all serving the real SmolLM2-135M.

vLLM takes about two minutes to start here, so this module starts one DX for all its tests;
the last test SIGKILLs that DX and checks that nothing of any engine survives it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from tests.conftest import DX, ROOT, DxProcess, smollm2_path, start_dx

pytestmark = pytest.mark.integration
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def vllm_setup() -> tuple[str, str]:
    """The vLLM virtualenv and the HF-format SmolLM2 that scripts/setup makes. Missing means
    the setup is incomplete: fail loudly, never skip."""
    python = ROOT / ".venvs" / "vllm" / "bin" / "python"
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dx"
    model = cache / "smollm2-135m-hf"
    if not python.exists() or not (model / "config.json").exists():
        pytest.fail(f"vLLM is not set up ({python}, {model}): run scripts/setup")
    return str(python), str(model)


@pytest.fixture(scope="module")
def dx3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DxProcess]:
    python, hf = vllm_setup()
    gguf = str(smollm2_path())
    models = {
        "smollm2": {"engine": "llamacpp", "model": gguf, "context": 2048},
        "smollm2-py": {"engine": "llama-cpp-python", "model": gguf, "context": 2048,
                       "replicas": 2},
        "smollm2-vllm": {"engine": "vllm", "model": hf, "python": python, "context": 2048,
                         "env": {"VLLM_CPU_KVCACHE_SPACE": "1"}},
    }
    dx = start_dx(tmp_path_factory.mktemp("engines"), models, wait=900)
    yield dx
    dx.stop(timeout=60)


def oai(dx: DxProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=dx.url + "/v1", api_key=dx.key, timeout=300)


def admin_models(dx: DxProcess) -> dict[str, dict[str, object]]:
    resp = httpx.get(dx.url + "/admin/models", headers=dx.auth, timeout=30)
    assert resp.status_code == 200, resp.text
    return {m["name"]: m for m in resp.json()["models"]}


def test_banner_shows_each_engine_and_its_settings(dx3: DxProcess) -> None:
    banner = "\n".join(dx3.banner)
    assert "no NVIDIA GPU" in banner and "models run on the CPU" in banner
    line = next(x for x in dx3.banner if x.startswith("    smollm2:latest"))
    assert "llama-server  cpu  context 2048  slots 16" in line and "ready in" in line
    py = [x for x in dx3.banner if x.startswith("    smollm2-py:latest")]
    assert len(py) == 2 and all("llama-cpp-python  cpu" in x and "slots 1" in x for x in py)
    vl = next(x for x in dx3.banner if x.startswith("    smollm2-vllm:latest"))
    assert "vllm  cpu" in vl and "ready in" in vl
    assert "FAILED" not in banner


@pytest.mark.parametrize("model", ["smollm2", "smollm2-py", "smollm2-vllm"])
def test_each_engine_answers_with_usage_streamed_or_not(dx3: DxProcess, model: str) -> None:
    client = oai(dx3)
    reply = client.chat.completions.create(model=model, messages=QUESTION,  # type: ignore[arg-type]
                                           max_tokens=16, temperature=0)
    assert reply.choices[0].message.content
    assert reply.usage is not None and reply.usage.prompt_tokens > 0
    assert 0 < reply.usage.completion_tokens <= 16
    chunks = list(client.chat.completions.create(
        model=model, messages=QUESTION, max_tokens=16, temperature=0, stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reply.choices[0].message.content  # greedy: the same answer both ways
    usage = chunks[-1].usage
    if model == "smollm2-py":
        return  # llama-cpp-python sends no usage in streams (a reason llama-server is default)
    assert usage is not None and usage.completion_tokens == reply.usage.completion_tokens


def concurrent_chats(dx: DxProcess, model: str, n: int) -> tuple[list[str], int]:
    """n streamed chats at once; returns their texts and the most requests DX had in flight
    on one replica of `model` meanwhile (sampled from the admin API)."""
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            for r in admin_models(dx)[f"{model}:latest"]["replicas"]:  # type: ignore[union-attr]
                peak = max(peak, int(r["in_flight"]))  # type: ignore[index]
            time.sleep(0.05)

    async def run() -> list[str]:
        async with openai.AsyncOpenAI(base_url=dx.url + "/v1", api_key=dx.key,
                                      timeout=300) as client:

            async def one(i: int) -> str:
                stream = await client.chat.completions.create(
                    model=model, max_tokens=24, stream=True,
                    messages=[{"role": "user", "content": f"Count to ten, then say {i}."}])
                return "".join([c.choices[0].delta.content or "" async for c in stream
                                if c.choices])

            return list(await asyncio.gather(*(one(i) for i in range(n))))

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        texts = asyncio.run(run())
    finally:
        done.set()
        sampler.join()
    return texts, peak


def test_llama_server_serves_requests_in_parallel(dx3: DxProcess) -> None:
    texts, peak = concurrent_chats(dx3, "smollm2", 6)
    assert all(texts)
    assert peak >= 2  # DX hands llama-server several requests at once: its slots batch them


def test_llama_cpp_python_gets_one_request_per_replica(dx3: DxProcess) -> None:
    texts, peak = concurrent_chats(dx3, "smollm2-py", 4)
    assert all(texts)
    assert peak == 1  # never two at once on one llama-cpp-python: DX queues instead
    replicas = admin_models(dx3)["smollm2-py:latest"]["replicas"]
    assert [r["capacity"] for r in replicas] == [1, 1]  # type: ignore[index,union-attr]


def test_no_engine_answers_a_local_user_without_its_key(dx3: DxProcess) -> None:
    """Every engine has its own key, so no local user gets around DX's keys and limits on the
    engines' loopback ports: llama-server's and llama-cpp-python's own checks, and for vLLM
    (whose --api-key covers only /v1 and a few prefixes) DX's dx_key_guard middleware too."""
    chat = {"model": "x", "messages": QUESTION, "max_tokens": 1}
    for name in ["smollm2", "smollm2-py", "smollm2-vllm"]:
        port = admin_models(dx3)[f"{name}:latest"]["replicas"][0]["port"]  # type: ignore[index]
        url = f"http://127.0.0.1:{port}"
        resp = httpx.post(url + "/v1/chat/completions", json=chat, timeout=30)
        assert resp.status_code == 401, (name, resp.text)
    # vLLM's routes outside /v1: SageMaker's /invocations generates, /tokenize reads the model.
    assert httpx.post(url + "/invocations", json=chat, timeout=30).status_code == 401
    assert httpx.post(url + "/tokenize", json={"prompt": "hi"}, timeout=30).status_code == 401
    assert httpx.get(url + "/health", timeout=30).status_code == 200  # liveness stays open


def wait_ready_again(dx: DxProcess, model: str, old_pid: int, within: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < within:
        r = admin_models(dx)[f"{model}:latest"]["replicas"][0]  # type: ignore[index]
        if r["state"] == "ready" and r["pid"] not in (None, old_pid):  # type: ignore[index]
            return time.monotonic() - t0
        time.sleep(0.1)
    pytest.fail(f"{model} not serving again {within:.0f} s after its engine was stopped")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP])
def test_a_killed_or_hung_llama_server_is_back_in_seconds(dx3: DxProcess, sig: int) -> None:
    before = admin_models(dx3)["smollm2:latest"]["replicas"][0]  # type: ignore[index]
    pid = int(before["pid"])  # type: ignore[index]
    os.kill(pid, sig)
    took = wait_ready_again(dx3, "smollm2", pid, within=60)
    print(f"{signal.Signals(sig).name} of llama-server to serving again: {took:.1f} s")
    reply = oai(dx3).chat.completions.create(model="smollm2", messages=QUESTION,  # type: ignore[arg-type]
                                             max_tokens=8)
    assert reply.choices[0].message.content
    after = admin_models(dx3)["smollm2:latest"]["replicas"][0]  # type: ignore[index]
    assert after["restarts"] == before["restarts"] + 1  # type: ignore[index,operator]
    assert not psutil.pid_exists(pid)


def test_admin_api_shows_engine_output_and_dx_logs_reads_the_files(dx3: DxProcess) -> None:
    replica = admin_models(dx3)["smollm2:latest"]["replicas"][0]  # type: ignore[index]
    output = "\n".join(replica["output"])  # type: ignore[index,arg-type]
    assert "--- dx: starting smollm2#0" in output and "llama-server" in output
    assert "LLAMA_API_KEY" not in output and dx3.key not in output
    config = next(dx3.state_dir.parent.glob("dx.yaml"))
    logs = subprocess.run([*DX, "logs", "smollm2", "--config", str(config), "-n", "400"],
                          capture_output=True, text=True, timeout=30, check=True).stdout
    assert "--- dx: starting smollm2#0" in logs
    both = subprocess.run([*DX, "logs", "smollm2-py", "--config", str(config)],
                          capture_output=True, text=True, timeout=30, check=True).stdout
    assert "smollm2-py#0| " in both and "smollm2-py#1| " in both  # each replica, labelled
    missing = subprocess.run([*DX, "logs", "nope", "--config", str(config)],
                             capture_output=True, text=True, timeout=30)
    assert missing.returncode == 1 and "no engine logs for 'nope'" in missing.stderr


def test_sigkill_of_dx_leaves_no_engine_process_behind(dx3: DxProcess) -> None:
    tree = psutil.Process(dx3.proc.pid).children(recursive=True)
    names = " ".join(" ".join(p.cmdline()) for p in tree)
    assert "vllm" in names and "VLLM::EngineCore" in names  # vLLM's own children included
    assert "llama-server" in names and "llama_cpp.server" in names
    dx3.proc.send_signal(signal.SIGKILL)
    dx3.proc.wait(10)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 10:
        alive = [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not alive:
            break
        time.sleep(0.1)
    print(f"engine processes gone {time.monotonic() - t0:.1f} s after SIGKILL of dx")
    assert not alive, [p.cmdline()[:3] for p in alive]
