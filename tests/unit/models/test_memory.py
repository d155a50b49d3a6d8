"""dxproxy/models/memory.py: the memory one replica needs, estimated before it starts:
weights + KV cache + buffers for llama.cpp, the folder's weights for vLLM, and a model's own
`memory:` over every estimate."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest
import yaml

from dxproxy.config import ModelConfig, load_config
from dxproxy.models.memory import (
    KV_BYTES,
    OVERHEAD_FIXED,
    OVERHEAD_FRACTION,
    VLLM_CPU_KV_DEFAULT,
    Estimate,
    GiB,
    MiB,
    estimate,
    gib,
)
from tests.conftest import smollm2_path
from tests.fakes.engine_requests import write_gguf

# A small llama: 2 layers, 4 heads of 16 (embedding 64), 2 KV heads.
# KV elements per token = layers x KV heads x (key + value width) = 2 x 2 x (16 + 16) = 128.
SMALL: dict[str, str | int] = {
    "general.architecture": "llama",
    "llama.block_count": 2,
    "llama.embedding_length": 64,
    "llama.attention.head_count": 4,
    "llama.attention.head_count_kv": 2,
}
SMALL_ELEMENTS = 2 * 2 * (16 + 16)


def model(tmp_path: Path, **spec: Any) -> ModelConfig:
    spec.setdefault("engine", "llamacpp")
    text = yaml.safe_dump({"models": {"m": spec}})
    (m,) = load_config(text, source=str(tmp_path / "dx.yaml"), env={}).models
    return m


def gguf(tmp_path: Path, meta: dict[str, str | int] = SMALL, size: int = GiB) -> Path:
    """A GGUF header padded (sparsely) to `size` bytes, as if the weights followed it."""
    path = write_gguf(tmp_path / "m.gguf", meta)
    with path.open("r+b") as f:
        f.truncate(size)
    return path


def overhead(weights: int) -> int:
    return int(weights * OVERHEAD_FRACTION) + OVERHEAD_FIXED


def known(value: Estimate | str) -> Estimate:
    assert isinstance(value, Estimate), value
    return value


# -- small pieces --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (GiB, "1.0 GiB"),
        (3 * GiB // 2, "1.5 GiB"),
        (80 * GiB, "80.0 GiB"),
        (GiB - 1, "1024 MiB"),
        (512 * MiB, "512 MiB"),
        (0, "0 MiB"),
    ],
)
def test_gib(n: int, text: str) -> None:
    assert gib(n) == text


def test_total_counts_shared_weights_once() -> None:
    e = Estimate(per_replica=3 * GiB, shared=2 * GiB, how="")
    assert e.total(1) == 5 * GiB
    assert e.total(4) == 14 * GiB
    assert e.total(0) == 2 * GiB


def test_kv_cache_element_sizes() -> None:
    # q8_0 and q4_0 store 32 values in 34 and 18 bytes.
    assert KV_BYTES == {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 1.0625, "q4_0": 0.5625}


# -- llama.cpp -----------------------------------------------------------------------------------


def test_llama_server_on_a_gpu(tmp_path: Path) -> None:
    m = model(tmp_path, model=str(gguf(tmp_path)), context=4096)
    e = known(estimate(m, on_gpu=True))
    # DX gives llama-server 32768 // 4096 = 8 slots of 4096 tokens; q8_0 on GPUs.
    kv = int(SMALL_ELEMENTS * 34 / 32 * 8 * 4096)
    assert kv == 4_456_448
    assert e == Estimate(
        per_replica=GiB + kv + overhead(GiB),
        shared=0,
        how="weights 1.0 GiB + KV cache 4 MiB (q8_0, 32768 tokens = 8 slot(s) x 4096) "
        "+ buffers 358 MiB",
    )
    assert e.total(2) == 2 * e.per_replica


def test_llama_server_on_the_cpu_shares_the_mapped_weights(tmp_path: Path) -> None:
    m = model(tmp_path, model=str(gguf(tmp_path)), context=4096)
    e = known(estimate(m, on_gpu=False))
    kv = SMALL_ELEMENTS * 2 * 8 * 4096  # f16 on the CPU
    assert e.per_replica == kv + overhead(GiB)
    assert e.shared == GiB
    assert "(f16, 32768 tokens = 8 slot(s) x 4096)" in e.how
    assert e.total(3) == GiB + 3 * (kv + overhead(GiB))


def test_real_smollm2(tmp_path: Path) -> None:
    path = smollm2_path()
    m = model(tmp_path, model=str(path), context=2048)
    weights = path.stat().st_size
    # 30 layers x 3 KV heads x (64 + 64): 576 / 9 heads = 64 wide; 16 slots of 2048 tokens.
    elements = 30 * 3 * (64 + 64)
    cpu = known(estimate(m, on_gpu=False))
    assert cpu == Estimate(
        int(elements * 2.0 * 16 * 2048) + overhead(weights),
        weights,
        f"weights {gib(weights)} + KV cache 720 MiB (f16, 32768 tokens = 16 slot(s) x 2048) "
        f"+ buffers {gib(overhead(weights))}",
    )
    gpu = known(estimate(m, on_gpu=True))
    assert gpu.per_replica == weights + int(elements * 34 / 32 * 16 * 2048) + overhead(weights)
    assert gpu.shared == 0


@pytest.mark.parametrize(
    ("extra", "tokens", "slots"),
    [
        ({"parallel": 2}, 2 * 4096, 2),
        ({"parallel": 1}, 4096, 1),
        ({"context": 65536}, 65536, 1),  # at least one slot
        ({"context": 1024}, 16 * 1024, 16),  # at most 16
        ({"context": 3000, "embeddings": False}, 10 * 3000, 10),
        # Serving embeddings (the default), llama-server gets a power of two (adapters.py).
        ({"context": 3000}, 8 * 3000, 8),
    ],
)
def test_llama_server_slots(
    tmp_path: Path, extra: dict[str, Any], tokens: int, slots: int
) -> None:
    spec: dict[str, Any] = {"model": str(gguf(tmp_path)), "context": 4096, **extra}
    m = model(tmp_path, **spec)
    e = known(estimate(m, on_gpu=False))
    assert e.per_replica == int(SMALL_ELEMENTS * 2.0 * tokens) + overhead(GiB)
    assert f"{tokens} tokens = {slots} slot(s) x {m.context})" in e.how


def test_an_own_command_holds_one_context(tmp_path: Path) -> None:
    m = model(
        tmp_path,
        model=str(gguf(tmp_path)),
        context=4096,
        command=["/opt/llama-server", "--port", "{port}"],
    )
    e = known(estimate(m, on_gpu=True))
    assert e.per_replica == GiB + int(SMALL_ELEMENTS * 34 / 32 * 4096) + overhead(GiB)
    assert "(q8_0, 4096 tokens = 1 slot(s) x 4096)" in e.how


@pytest.mark.parametrize("on_gpu", [True, False])
def test_llama_cpp_python_holds_one_f16_context(tmp_path: Path, on_gpu: bool) -> None:
    m = model(tmp_path, engine="llama-cpp-python", model=str(gguf(tmp_path)), context=4096)
    e = known(estimate(m, on_gpu=on_gpu))
    kv = SMALL_ELEMENTS * 2 * 4096
    assert e.per_replica == (GiB if on_gpu else 0) + kv + overhead(GiB)
    assert e.shared == (0 if on_gpu else GiB)
    assert "(f16, 4096 tokens = 1 slot(s) x 4096)" in e.how


@pytest.mark.parametrize(
    ("args", "kv_type", "per_element"),
    [
        (["--cache-type-k", "q4_0"], "q4_0", 18 / 32),
        (["-ctk", "f32"], "f32", 4.0),
        (["--cache-type-k", "bf16", "--cache-type-v", "bf16"], "bf16", 2.0),
        (["--cache-type-k", "q5_1"], "q5_1", 2.0),  # a type it has no size for: as f16
        (["--cache-type-k"], "q8_0", 34 / 32),  # no value: DX's GPU default
    ],
)
def test_kv_type_from_args(
    tmp_path: Path, args: list[str], kv_type: str, per_element: float
) -> None:
    m = model(tmp_path, model=str(gguf(tmp_path)), context=4096, parallel=1, args=args)
    e = known(estimate(m, on_gpu=True))
    assert e.per_replica == GiB + int(SMALL_ELEMENTS * per_element * 4096) + overhead(GiB)
    assert f"({kv_type}, 4096 tokens" in e.how


def test_key_and_value_widths_from_the_header(tmp_path: Path) -> None:
    # DeepSeek-style heads: keys 192 wide, values 128, independent of embedding / heads.
    meta: dict[str, str | int] = {
        **SMALL,
        "llama.attention.key_length": 192,
        "llama.attention.value_length": 128,
    }
    m = model(tmp_path, model=str(gguf(tmp_path, meta)), context=1000, parallel=1)
    e = known(estimate(m, on_gpu=False))
    assert e.per_replica == 2 * 2 * (192 + 128) * 2 * 1000 + overhead(GiB)


def test_keys_are_read_under_the_models_architecture(tmp_path: Path) -> None:
    meta: dict[str, str | int] = {
        "general.architecture": "qwen2",
        "qwen2.block_count": 4,
        "qwen2.embedding_length": 128,
        "qwen2.attention.head_count": 8,
        "qwen2.attention.head_count_kv": 1,
        # Another architecture's keys do not count.
        "llama.block_count": 1000,
        "llama.attention.head_count_kv": 1000,
    }
    m = model(tmp_path, model=str(gguf(tmp_path, meta)), context=1000, parallel=1)
    e = known(estimate(m, on_gpu=False))
    assert e.per_replica == 4 * 1 * (16 + 16) * 2 * 1000 + overhead(GiB)


def test_missing_kv_head_count_means_one_per_head(tmp_path: Path) -> None:
    meta = {k: v for k, v in SMALL.items() if k != "llama.attention.head_count_kv"}
    m = model(tmp_path, model=str(gguf(tmp_path, meta)), context=1000, parallel=1)
    e = known(estimate(m, on_gpu=False))
    assert e.per_replica == 2 * 4 * (16 + 16) * 2 * 1000 + overhead(GiB)


def test_a_header_without_shapes_is_taken_as_a_7b_llama(tmp_path: Path) -> None:
    # 32 layers x 32 KV heads x (128 + 128): llama 7B's shape.
    m = model(tmp_path, model=str(gguf(tmp_path, {"general.name": "x"})), context=100, parallel=1)
    e = known(estimate(m, on_gpu=False))
    assert e.per_replica == 32 * 32 * 256 * 2 * 100 + overhead(GiB)


def test_missing_file(tmp_path: Path) -> None:
    path = gguf(tmp_path)
    m = model(tmp_path, model=str(path))
    path.unlink()  # the config was valid when loaded; the file went away since
    for on_gpu in (True, False):
        assert estimate(m, on_gpu=on_gpu) == f"no file at {path}"


def test_not_a_gguf_file(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(b"PK\x03\x04" + bytes(100))
    m = model(tmp_path, model=str(path))
    result = estimate(m, on_gpu=True)
    assert isinstance(result, str)
    assert result == f"cannot read the GGUF header: {path} is not a GGUF file"


def test_truncated_gguf_is_reported_not_raised(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<I", 3))
    result = estimate(model(tmp_path, model=str(path)), on_gpu=True)
    assert isinstance(result, str) and result.startswith("cannot read the GGUF header")


# -- a model's own memory: -----------------------------------------------------------------------


@pytest.mark.parametrize("on_gpu", [True, False])
def test_explicit_memory_wins(tmp_path: Path, on_gpu: bool) -> None:
    m = model(tmp_path, model=str(gguf(tmp_path)), memory="6GiB")
    assert m.memory == 6 * GiB
    assert estimate(m, on_gpu=on_gpu) == Estimate(6 * GiB, 0, "memory: 6.0 GiB (from the config)")


def test_explicit_memory_wins_even_for_a_hugging_face_id(tmp_path: Path) -> None:
    m = model(tmp_path, engine="vllm", model="org/some-model", memory=512 * MiB)
    assert estimate(m, on_gpu=True) == Estimate(512 * MiB, 0, "memory: 512 MiB (from the config)")


# -- vLLM ----------------------------------------------------------------------------------------


def sparse(path: Path, size: int) -> None:
    with path.open("wb") as f:
        f.truncate(size)


@pytest.fixture
def hf_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "qwen"
    folder.mkdir()
    sparse(folder / "model-00001-of-00002.safetensors", 3 * GiB)
    sparse(folder / "model-00002-of-00002.safetensors", GiB)
    sparse(folder / "extra.bin", GiB // 4)
    sparse(folder / "old.pt", GiB // 4)
    # Not weights: other files, and anything below the top level.
    sparse(folder / "tokenizer.json", 50 * MiB)
    (folder / "config.json").write_text("{}")
    (folder / "sub").mkdir()
    sparse(folder / "sub" / "more.safetensors", 8 * GiB)
    return folder


def test_vllm_folder_on_a_gpu(tmp_path: Path, hf_folder: Path) -> None:
    m = model(tmp_path, engine="vllm", model=str(hf_folder))
    assert estimate(m, on_gpu=True) == Estimate(
        9 * GiB // 2, 0, "vLLM claims 90% of each GPU; weights 4.5 GiB"
    )


def test_vllm_folder_on_the_cpu_adds_the_default_kv_space(
    tmp_path: Path, hf_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    m = model(tmp_path, engine="vllm", model=str(hf_folder))
    assert 4 * GiB == VLLM_CPU_KV_DEFAULT
    assert estimate(m, on_gpu=False) == Estimate(
        9 * GiB // 2 + 4 * GiB, 0, "weights 4.5 GiB + KV cache space 4.0 GiB (vLLM on CPU)"
    )


@pytest.mark.parametrize(
    ("model_env", "process_env", "kv"),
    [
        ("8", None, 8 * GiB),
        (None, "2.5", 5 * GiB // 2),
        ("1", "16", GiB),  # the model's env wins
        ("lots", None, 4 * GiB),  # not a number: the default
        (None, "", 4 * GiB),
    ],
)
def test_vllm_cpu_kv_space_from_the_environment(
    tmp_path: Path,
    hf_folder: Path,
    monkeypatch: pytest.MonkeyPatch,
    model_env: str | None,
    process_env: str | None,
    kv: int,
) -> None:
    if process_env is None:
        monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    else:
        monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", process_env)
    spec: dict[str, Any] = {"engine": "vllm", "model": str(hf_folder)}
    if model_env is not None:
        spec["env"] = {"VLLM_CPU_KVCACHE_SPACE": model_env}
    e = known(estimate(model(tmp_path, **spec), on_gpu=False))
    assert e.per_replica == 9 * GiB // 2 + kv
    assert f"KV cache space {gib(kv)}" in e.how


def test_vllm_single_file_counts_the_file(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    sparse(path, 2 * GiB)
    m = model(tmp_path, engine="vllm", model=str(path))
    assert known(estimate(m, on_gpu=True)).per_replica == 2 * GiB


def test_vllm_hugging_face_id_is_unknown_until_downloaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the id is not a folder here
    m = model(tmp_path, engine="vllm", model="Qwen/Qwen2.5-0.5B-Instruct")
    for on_gpu in (True, False):
        assert estimate(m, on_gpu=on_gpu) == (
            "a Hugging Face id: its size is known once vLLM downloads it"
        )
