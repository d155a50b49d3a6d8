"""dxproxy/models/hub.py, its pure parts: Hub references, the quants of a repo's files, and the
quant chosen for the hardware (as functions of sizes and budgets, no network)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dxproxy.config import ModelConfig
from dxproxy.models.hub import (
    Budget,
    HubFile,
    HubRef,
    PullError,
    Quant,
    budget_from,
    choose_projector,
    choose_quant,
    entry_for,
    is_cached_file,
    is_hub_ref,
    list_quants,
    model_need,
    parse_ref,
    quant_of,
    split_parts,
)
from supervisors import Gpu

GiB = 2**30


def f(path: str, size: int = GiB) -> HubFile:
    return HubFile(path, size, "0" * 64)


def q(name: str, size: float) -> Quant:
    return Quant(name, (f(f"m-{name}.gguf", int(size * GiB)),))


# -- references -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ref"),
    [
        ("hf:org/Repo-GGUF", HubRef("org/Repo-GGUF", None)),
        ("hf:org/Repo-GGUF:Q4_K_M", HubRef("org/Repo-GGUF", "Q4_K_M")),
        ("hf.co/org/Repo-GGUF:q4_k_m", HubRef("org/Repo-GGUF", "q4_k_m")),
        ("hf.co/org/Repo-GGUF:latest", HubRef("org/Repo-GGUF", None)),
        ("https://huggingface.co/org/Repo-GGUF", HubRef("org/Repo-GGUF", None)),
        ("hf:org/Repo-GGUF@v2:Q8_0", HubRef("org/Repo-GGUF", "Q8_0", "v2")),
    ],
)
def test_parse_ref(text: str, ref: HubRef) -> None:
    assert is_hub_ref(text)
    assert parse_ref(text) == ref


def test_the_name_is_ollamas_spelling() -> None:
    assert parse_ref("hf:org/r:q4_k_m").name == "hf.co/org/r:Q4_K_M"
    assert parse_ref("hf:org/r").name == "hf.co/org/r"


@pytest.mark.parametrize("text", ["hf:", "hf:org", "hf:org/r/x", "hf:org/r:Q4 K", "llama3"])
def test_bad_refs_say_the_form(text: str) -> None:
    with pytest.raises(PullError, match="hf:ORG/REPO"):
        parse_ref(text)


# -- quants of a repo ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "quant"),
    [
        ("Llama-3.2-3B-Instruct-Q4_K_M.gguf", "Q4_K_M"),
        ("SmolLM2-135M-Instruct.Q4_1.gguf", "Q4_1"),
        ("gemma-3-270m-it-q8_0.gguf", "Q8_0"),
        ("Qwen3-30B-A3B-UD-Q4_K_XL.gguf", "UD-Q4_K_XL"),
        ("model-IQ4_XS.gguf", "IQ4_XS"),
        ("Q4_K_M/Big-Q4_K_M-00002-of-00003.gguf", "Q4_K_M"),
        ("model-bf16.gguf", "BF16"),
        ("model.gguf", None),
    ],
)
def test_quant_of(path: str, quant: str | None) -> None:
    assert quant_of(path) == quant


def test_list_quants_groups_splits_and_sets_projectors_apart() -> None:
    files = [
        f("Big-Q8_0.gguf", 8 * GiB),
        f("Q4_K_M/Big-Q4_K_M-00002-of-00002.gguf", 2 * GiB),
        f("Q4_K_M/Big-Q4_K_M-00001-of-00002.gguf", 3 * GiB),
        f("mmproj-Big-F16.gguf", GiB // 2),
        f("mmproj-Big-Q8_0.gguf", GiB // 4),
        f("README.md", 10),
    ]
    quants, projectors = list_quants(files)
    assert [x.name for x in quants] == ["Q4_K_M", "Q8_0"]  # smallest first
    split = quants[0]
    assert [x.path for x in split.files] == [
        "Q4_K_M/Big-Q4_K_M-00001-of-00002.gguf",  # the one llama-server loads comes first
        "Q4_K_M/Big-Q4_K_M-00002-of-00002.gguf",
    ]
    assert split.size == 5 * GiB
    assert [p.path for p in projectors] == ["mmproj-Big-F16.gguf", "mmproj-Big-Q8_0.gguf"]
    assert choose_projector(projectors) == projectors[0]  # F16 first
    assert choose_projector([]) is None


def test_split_parts_beside_the_first() -> None:
    first = Path("/c/snap/Big-Q4_K_M-00001-of-00003.gguf")
    assert [p.name for p in split_parts(first)] == [
        "Big-Q4_K_M-00001-of-00003.gguf",
        "Big-Q4_K_M-00002-of-00003.gguf",
        "Big-Q4_K_M-00003-of-00003.gguf",
    ]
    assert split_parts(Path("/a/m.gguf")) == [Path("/a/m.gguf")]


# -- the choice -----------------------------------------------------------------------------

QUANTS = [q("Q2_K", 3), q("Q4_K_M", 4.9), q("Q6_K", 6.6), q("Q8_0", 8.5), q("F16", 16)]


def need(quant: Quant) -> int:
    return quant.size + 2 * GiB  # weights + a KV cache of 2 GiB (the estimate's stand-in)


def budget(free: float, total: float = 16) -> Budget:
    return Budget("the CPU", int(free * GiB), int(total * GiB))


def test_the_largest_that_fits() -> None:
    # A 16 GB machine with 11 GiB free: Q8_0 needs 10.5 (fits); F16 is never automatic.
    choice = choose_quant("o/r", QUANTS, None, need, budget(11))
    assert choice.quant.name == "Q8_0"
    assert "largest quant that fits the CPU" in choice.why
    assert "F16 only when named" in choice.why
    # 8 GiB free: Q4_K_M (6.9) fits, Q6_K (8.6) does not, and the reason says so.
    choice = choose_quant("o/r", QUANTS, None, need, budget(8))
    assert choice.quant.name == "Q4_K_M"
    assert "Q6_K would need 8.6 GiB" in choice.why
    assert choice.need == need(QUANTS[1])


def test_nothing_fits_gives_the_sizes() -> None:
    with pytest.raises(PullError) as info:
        choose_quant("o/r", QUANTS, None, need, budget(4))
    text = str(info.value)
    assert "no quant of o/r fits the CPU (4.0 GiB free of 16.0 GiB)" in text
    assert "Q2_K needs 5.0 GiB" in text and "Q8_0 needs 10.5 GiB" in text
    assert "hf:o/r:Q2_K" in text  # how to pull one anyway


def test_asked_for_wins_and_says_when_it_does_not_fit() -> None:
    choice = choose_quant("o/r", QUANTS, "f16", need, budget(8))
    assert choice.quant.name == "F16"
    assert "as asked" in choice.why and "does NOT fit" in choice.why


def test_a_quant_it_does_not_have_lists_those_it_has() -> None:
    with pytest.raises(PullError, match=r"no quant Q5_K_M; it has: Q2_K \(3\.0 GiB\), Q4_K_M"):
        choose_quant("o/r", QUANTS, "Q5_K_M", need, budget(64))


def test_full_precision_only_repo_is_still_chosen() -> None:
    only = [q("F16", 1), q("F32", 2)]
    assert choose_quant("o/r", only, None, need, budget(64)).quant.name == "F32"


def test_no_gguf() -> None:
    with pytest.raises(PullError, match="no GGUF file"):
        choose_quant("o/r", [], None, need, budget(64))


def test_budget_is_the_gpu_with_most_free_memory_else_the_ram() -> None:
    gpus = [Gpu(0, "A", 24 * GiB, 3 * GiB), Gpu(1, "B", 24 * GiB, 20 * GiB)]
    b = budget_from(10 * GiB, 32 * GiB, gpus)
    assert (b.gpu, b.free, b.total, b.where) == (1, 20 * GiB, 24 * GiB, "GPU 1 (B)")
    b = budget_from(10 * GiB, 32 * GiB, [])
    assert (b.gpu, b.free, b.where) == (None, 10 * GiB, "the CPU")
    assert entry_for(parse_ref("hf:o/r"), 4096, budget_from(0, 0, gpus)).gpus == (1,)


def test_need_is_dxs_memory_estimate() -> None:
    # SmolLM2-135M's shape: 30 layers, 3 KV heads of 64 -> 11520 KV elements a token.
    meta = {
        "general.architecture": "llama",
        "llama.block_count": 30,
        "llama.embedding_length": 576,
        "llama.attention.head_count": 9,
        "llama.attention.head_count_kv": 3,
    }
    entry = ModelConfig(name="m", engine="llamacpp", model="", context=2048, parallel=1)
    quant = q("Q4_1", 0.1)
    kv = 30 * 3 * 128 * 2 * 2048  # f16 on the CPU, one slot of 2048 tokens
    weights = quant.size
    assert model_need(quant, None, meta, entry, False) == (
        weights + kv + int(weights * 0.10) + 256 * 2**20
    )
    projector = f("mmproj-F16.gguf", GiB)
    assert (
        model_need(quant, projector, meta, entry, False)
        > model_need(quant, None, meta, entry, False) + GiB
    )


def test_is_cached_file() -> None:
    assert is_cached_file("/h/hub/models--o--r/snapshots/abc/m.gguf")
    assert not is_cached_file("/models/m.gguf")
