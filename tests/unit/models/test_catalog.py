"""dxproxy/models/catalog.py: what /api/tags and /api/show report for each configured model,
from its GGUF header or Hugging Face folder, its chat template and its config."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from dxproxy.config import Config, ModelConfig, load_config
from dxproxy.models.catalog import (
    Catalog,
    ModelInfo,
    build_catalog,
    capabilities,
    display_name,
    has_vision,
    serves_embeddings,
)
from dxproxy.models.catalog import _size_label as size_label
from tests.conftest import smollm2_path
from tests.fakes.engine_requests import write_gguf

TOOLS_TEMPLATE = "{% if tools %}{{ tools | tojson }}{% endif %}{{ messages }}"
PLAIN_TEMPLATE = "{% for m in messages %}{{ m.content }}{% endfor %}"


def config(tmp_path: Path, models: dict[str, dict[str, Any]]) -> Config:
    text = yaml.safe_dump({"models": models})
    return load_config(text, source=str(tmp_path / "dx.yaml"), env={})


def one(tmp_path: Path, **spec: Any) -> ModelConfig:
    spec.setdefault("engine", "llamacpp")
    spec.setdefault("embeddings", False)  # on by default for llama-server: see test_config
    if "model" not in spec:
        spec["model"] = str(write_gguf(tmp_path / "m.gguf", {"general.architecture": "llama"}))
    (model,) = config(tmp_path, {"m": spec}).models
    return model


def describe(tmp_path: Path, **spec: Any) -> ModelInfo:
    spec.setdefault("engine", "llamacpp")
    spec.setdefault("embeddings", False)
    info = build_catalog(config(tmp_path, {"m": spec})).get("m")
    assert info is not None
    return info


# -- names ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("smollm2", "smollm2:latest"),
        ("qwen3:8b", "qwen3:8b"),
        ("qwen3:latest", "qwen3:latest"),
        ("org/model", "org/model:latest"),
        ("hf.co/org/model:Q4_K_M", "hf.co/org/model:Q4_K_M"),
        # Only the last path part can carry a tag.
        ("host:5000/org/model", "host:5000/org/model:latest"),
    ],
)
def test_display_name_always_has_a_tag(name: str, shown: str) -> None:
    assert display_name(name) == shown


@pytest.mark.parametrize(
    ("count", "label"),
    [
        (134_515_008, "135M"),
        (7_241_732_096, "7.2B"),
        (1_500_000_000, "1.5B"),
        (123_456_789_012, "123B"),
        (2_000_000_000_000, "2.0T"),
        (360_000_000, "360M"),
        (1_500, "1.5K"),
        (999, "999"),
        (0, ""),
        (-5, ""),
        (None, ""),
        (1.5e9, ""),  # only integers are counts
    ],
)
def test_size_label_is_ollamas_parameter_size(count: Any, label: str) -> None:
    assert size_label(count) == label


# -- a real model --------------------------------------------------------------------------------


def test_real_smollm2_entry(tmp_path: Path) -> None:
    path = smollm2_path()
    cfg = config(tmp_path, {"smollm2": {"engine": "llamacpp", "model": str(path), "context": 2048}})
    catalog = build_catalog(cfg)
    info = catalog.get("smollm2")
    assert info is not None and catalog.models == (info,)
    st = os.stat(path)
    assert info.name == "smollm2" and info.display == "smollm2:latest"
    assert info.size == st.st_size
    assert info.modified_unix == st.st_mtime_ns // 1_000_000_000
    modified = datetime.fromisoformat(info.modified_at)
    assert modified.tzinfo is not None  # RFC 3339 with the local offset
    assert modified.timestamp() == pytest.approx(st.st_mtime_ns / 1e9, abs=1e-5)
    assert info.details == {
        "parent_model": "",
        "format": "gguf",
        "family": "llama",
        "families": ["llama"],
        "parameter_size": "135M",
        "quantization_level": "Q4_1",
        "context_length": 2048,
        "embedding_length": 576,
    }
    assert info.context == 2048
    # /api/show: the GGUF key-values, with the context DX serves (not the trained 8192) and
    # without the name and the template (which has its own field).
    assert info.model_info["general.architecture"] == "llama"
    assert info.model_info["llama.context_length"] == 2048
    assert info.model_info["llama.block_count"] == 30
    assert info.model_info["general.parameter_count"] == 134_515_008
    assert "general.name" not in info.model_info
    assert "tokenizer.chat_template" not in info.model_info
    assert "<|im_start|>" in info.template
    assert info.license == "apache-2.0"
    # Its template never mentions tools: llama-server would drop them without a word. It
    # embeds, as every llama-server model does, but is listed (as Ollama lists it) as a chat
    # model.
    assert info.capabilities == ("completion",)
    assert cfg.models[0].embeddings and cfg.models[0].pooling == "mean"


def test_tags_entry_is_what_api_tags_lists(tmp_path: Path) -> None:
    path = write_gguf(
        tmp_path / "q.gguf",
        {"general.architecture": "qwen2", "general.size_label": "7B", "general.file_type": 15},
    )
    info = describe(tmp_path, model=str(path), context=8192)
    entry = info.tags_entry()
    assert entry == {
        "name": "m:latest",
        "model": "m:latest",
        "modified_at": info.modified_at,
        "size": path.stat().st_size,
        "digest": info.digest,
        "details": info.details,
        "capabilities": ["completion", "tools"],
    }
    assert isinstance(entry["capabilities"], list)
    json.dumps(entry)  # served as JSON as it is
    assert entry["details"]["quantization_level"] == "Q4_K_M"
    assert entry["details"]["parameter_size"] == "7B"  # the file's label wins over a count


def test_catalog_get_by_canonical_name_in_config_order(tmp_path: Path) -> None:
    gguf = str(write_gguf(tmp_path / "m.gguf", {"general.architecture": "llama"}))
    cfg = config(
        tmp_path,
        {
            "zeta": {"engine": "llamacpp", "model": gguf, "aliases": ["z"]},
            "alpha:q4": {"engine": "llamacpp", "model": gguf},
        },
    )
    catalog = build_catalog(cfg)
    assert [m.name for m in catalog.models] == [m.name for m in cfg.models] == ["alpha:q4", "zeta"]
    assert [m.display for m in catalog.models] == ["alpha:q4", "zeta:latest"]
    zeta = catalog.get("zeta")
    assert zeta is not None and zeta.name == "zeta"
    assert catalog.get("z") is None  # aliases are the config's business, not the catalog's
    assert catalog.get("zeta:latest") is None
    assert Catalog().get("zeta") is None


# -- GGUF details --------------------------------------------------------------------------------


def test_gguf_details_and_model_info(tmp_path: Path) -> None:
    path = write_gguf(
        tmp_path / "m.gguf",
        {
            "general.architecture": "qwen2",
            "general.name": "Qwen2.5 7B Instruct",
            "general.license": "apache-2.0",
            "general.file_type": 7,
            "qwen2.context_length": 32768,
            "qwen2.embedding_length": 3584,
            "tokenizer.chat_template": PLAIN_TEMPLATE,
        },
    )
    info = describe(tmp_path, model=str(path), context=4096)
    assert info.details["format"] == "gguf"
    assert info.details["family"] == "qwen2" and info.details["families"] == ["qwen2"]
    assert info.details["quantization_level"] == "Q8_0"
    assert info.details["parameter_size"] == ""  # no label, no tensors: nothing to say
    assert info.details["embedding_length"] == 3584
    assert info.details["context_length"] == 4096
    assert info.license == "apache-2.0"
    assert info.template == PLAIN_TEMPLATE
    assert info.model_info == {
        "general.architecture": "qwen2",
        "general.license": "apache-2.0",
        "general.file_type": 7,
        "general.parameter_count": 0,
        "qwen2.context_length": 4096,
        "qwen2.embedding_length": 3584,
    }


def test_unknown_file_type_leaves_the_quantization_empty(tmp_path: Path) -> None:
    path = write_gguf(
        tmp_path / "m.gguf", {"general.architecture": "llama", "general.file_type": 99}
    )
    assert describe(tmp_path, model=str(path)).details["quantization_level"] == ""


def test_gguf_without_architecture_has_no_family(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "m.gguf", {"general.name": "x"})
    info = describe(tmp_path, model=str(path), context=1024)
    assert info.details["format"] == "gguf"
    assert info.details["family"] == "" and info.details["families"] is None
    assert info.details["context_length"] == 1024
    assert "embedding_length" not in info.details
    assert info.model_info == {"general.parameter_count": 0}


def test_unreadable_gguf_is_logged_and_listed_without_details(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(b"NOPE" + bytes(60))
    with caplog.at_level(logging.WARNING, logger="dx.catalog"):
        info = describe(tmp_path, model=str(path))
    assert "m: cannot read GGUF metadata" in caplog.text and "is not a GGUF file" in caplog.text
    assert info.size == 64
    assert info.details["format"] == "gguf" and info.details["family"] == ""
    assert info.model_info == {} and info.template == ""


def test_truncated_gguf_is_logged_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "cut.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<I", 3))  # cut inside the header's counts
    info = describe(tmp_path, model=str(path))
    assert info.details["format"] == "gguf" and info.details["family"] == ""


def test_digest_identifies_name_path_size_and_mtime(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "m.gguf", {"general.architecture": "llama"})
    os.utime(path, ns=(1_700_000_000_000_000_000, 1_700_000_000_123_456_789))
    info = describe(tmp_path, model=str(path))
    st = path.stat()
    ident = f"m\0{path}\0{st.st_size}\0{st.st_mtime_ns}".encode()
    assert info.digest == hashlib.sha256(ident).hexdigest()
    assert info.modified_unix == 1_700_000_000
    assert describe(tmp_path, model=str(path)).digest == info.digest  # stable
    os.utime(path, ns=(1_700_000_000_000_000_000, 1_700_000_001_000_000_000))
    assert describe(tmp_path, model=str(path)).digest != info.digest


# -- Hugging Face models (vLLM) ------------------------------------------------------------------


def hf_folder(tmp_path: Path, config_json: Any, tokenizer: Any = None) -> Path:
    folder = tmp_path / "hf"
    folder.mkdir()
    if config_json is not None:
        text = config_json if isinstance(config_json, str) else json.dumps(config_json)
        (folder / "config.json").write_text(text)
    if tokenizer is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer))
    return folder


def test_hugging_face_folder_reads_like_gguf(tmp_path: Path) -> None:
    folder = hf_folder(
        tmp_path,
        {
            "model_type": "qwen2",
            "hidden_size": 896,
            "num_hidden_layers": 24,
            "intermediate_size": 4864,
            "num_attention_heads": 14,
            "num_key_value_heads": 2,
            "max_position_embeddings": 32768,
            "vocab_size": 151936,
            "rope_theta": 1000000.0,  # not an integer, not one of the mapped keys
            "torch_dtype": "bfloat16",
        },
        {"chat_template": TOOLS_TEMPLATE + "<think>"},
    )
    info = describe(tmp_path, engine="vllm", model=str(folder), context=8192)
    assert info.details == {
        "parent_model": "",
        "format": "safetensors",
        "family": "qwen2",
        "families": ["qwen2"],
        "parameter_size": "",
        "quantization_level": "BF16",
        "context_length": 8192,
        "embedding_length": 896,
    }
    assert info.model_info == {
        "general.architecture": "qwen2",
        "qwen2.context_length": 8192,  # served, not max_position_embeddings
        "qwen2.embedding_length": 896,
        "qwen2.block_count": 24,
        "qwen2.feed_forward_length": 4864,
        "qwen2.attention.head_count": 14,
        "qwen2.attention.head_count_kv": 2,
        "qwen2.vocab_size": 151936,
    }
    assert info.template == TOOLS_TEMPLATE + "<think>"
    assert info.capabilities == ("completion", "tools", "thinking", "vision")


@pytest.mark.parametrize(
    ("key", "dtype", "level"),
    [
        ("torch_dtype", "bfloat16", "BF16"),
        ("torch_dtype", "float16", "F16"),
        ("torch_dtype", "float32", "FLOAT32"),
        ("dtype", "bfloat16", "BF16"),  # newer transformers write `dtype`
    ],
)
def test_hugging_face_dtype_is_the_quantization(
    tmp_path: Path, key: str, dtype: str, level: str
) -> None:
    folder = hf_folder(tmp_path, {"model_type": "llama", key: dtype})
    info = describe(tmp_path, engine="vllm", model=str(folder))
    assert info.details["quantization_level"] == level
    assert "dx.dtype" not in info.model_info


def test_hugging_face_folder_without_model_type_is_unknown(tmp_path: Path) -> None:
    folder = hf_folder(tmp_path, {"hidden_size": 64})
    info = describe(tmp_path, engine="vllm", model=str(folder))
    assert info.details["family"] == "unknown"
    assert info.model_info["unknown.embedding_length"] == 64


@pytest.mark.parametrize("config_json", [None, "{not json", "[]", "42"])
def test_hugging_face_folder_without_a_readable_config(tmp_path: Path, config_json: Any) -> None:
    folder = hf_folder(tmp_path, config_json, {"chat_template": PLAIN_TEMPLATE})
    info = describe(tmp_path, engine="vllm", model=str(folder))
    assert info.details["format"] == "safetensors" and info.details["family"] == ""
    assert info.model_info == {}
    assert info.template == ""  # the tokenizer config is only read with a model config


def test_hugging_face_template_that_is_not_a_string_is_ignored(tmp_path: Path) -> None:
    # Some tokenizers carry a list of named templates.
    folder = hf_folder(
        tmp_path, {"model_type": "llama"}, {"chat_template": [{"name": "default", "template": ""}]}
    )
    info = describe(tmp_path, engine="vllm", model=str(folder))
    assert info.template == ""
    assert info.details["family"] == "llama"


def test_hugging_face_id_has_nothing_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    info = describe(tmp_path, engine="vllm", model="Qwen/Qwen2.5-0.5B-Instruct", context=2048)
    assert info.size == 0 and info.modified_unix == 0
    assert info.modified_at == "1970-01-01T00:00:00Z"
    assert info.details["format"] == "" and info.details["family"] == ""
    assert info.details["context_length"] == 2048
    assert info.model_info == {} and info.template == ""
    # An unknown template gets the benefit of the doubt; vLLM loads a multimodal model whole.
    assert info.capabilities == ("completion", "tools", "vision")


# -- capabilities --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "caps"),
    [
        (TOOLS_TEMPLATE, ("completion", "tools")),
        (PLAIN_TEMPLATE, ("completion",)),
        ("", ("completion", "tools")),  # unknown: the benefit of the doubt
        (PLAIN_TEMPLATE + "<think>", ("completion", "thinking")),
        ("{% if enable_thinking %}{% endif %}", ("completion", "thinking")),
        ("{{ m.reasoning_content }}{{ tools }}", ("completion", "tools", "thinking")),
    ],
)
def test_capabilities_from_the_chat_template(
    tmp_path: Path, template: str, caps: tuple[str, ...]
) -> None:
    assert capabilities(one(tmp_path), template) == caps


@pytest.mark.parametrize("template", [TOOLS_TEMPLATE, ""])
def test_llama_cpp_python_never_offers_tools(tmp_path: Path, template: str) -> None:
    model = one(tmp_path, engine="llama-cpp-python")
    assert capabilities(model, template) == ("completion",)


@pytest.mark.parametrize("flag", ["--mmproj", "-mm", "--mmproj-url", "-mmu"])
def test_a_projector_in_args_means_vision(tmp_path: Path, flag: str) -> None:
    projector = write_gguf(tmp_path / "mmproj.gguf", {"general.architecture": "clip"})
    model = one(tmp_path, args=[flag, str(projector)])
    assert has_vision(model)
    assert capabilities(model, TOOLS_TEMPLATE) == ("completion", "tools", "vision")


def test_no_projector_no_vision(tmp_path: Path) -> None:
    model = one(tmp_path, args=["--temp", "0.2", "--mmproj-offload"])
    assert not has_vision(model)
    assert "vision" not in capabilities(model, TOOLS_TEMPLATE)


def test_vllm_and_own_commands_are_trusted_with_images(tmp_path: Path) -> None:
    assert has_vision(one(tmp_path, engine="vllm", model="org/model"))
    own = one(tmp_path, command=["/usr/bin/my-engine", "--port", "{port}"])
    assert own.command is not None and has_vision(own)


def test_embeddings_with_llama_server_still_complete(tmp_path: Path) -> None:
    model = one(tmp_path, embeddings=True, args=["--pooling", "mean"])
    assert serves_embeddings(model)
    assert capabilities(model, PLAIN_TEMPLATE) == ("completion", "embedding")
    # A pooling DX chose (a chat model, embedding by default): listed as a chat model.
    assert capabilities(one(tmp_path, embeddings=True), PLAIN_TEMPLATE) == ("completion",)


def test_embeddings_with_vllm_do_not_complete(tmp_path: Path) -> None:
    model = one(tmp_path, engine="vllm", model="BAAI/bge-m3", embeddings=True)
    caps = capabilities(model, PLAIN_TEMPLATE)
    assert "completion" not in caps
    assert caps == ("vision", "embedding")


def test_not_an_embeddings_model(tmp_path: Path) -> None:
    model = one(tmp_path)
    assert not serves_embeddings(model)
    assert "embedding" not in capabilities(model, "")


def test_capabilities_through_the_catalog(tmp_path: Path) -> None:
    gguf = write_gguf(
        tmp_path / "q.gguf",
        {"general.architecture": "qwen3", "tokenizer.chat_template": TOOLS_TEMPLATE + "<think>"},
    )
    projector = write_gguf(tmp_path / "p.gguf", {"general.architecture": "clip"})
    info = describe(tmp_path, model=str(gguf), args=["--mmproj", str(projector), "--pooling",
                    "last"], embeddings=True)  # fmt: skip
    assert info.capabilities == ("completion", "tools", "thinking", "vision", "embedding")
    assert info.tags_entry()["capabilities"] == list(info.capabilities)


# -- the template the engine is told to use ------------------------------------------------------


def test_chat_template_file_in_args_overrides_the_models_own(tmp_path: Path) -> None:
    gguf = write_gguf(
        tmp_path / "m.gguf",
        {"general.architecture": "llama", "tokenizer.chat_template": TOOLS_TEMPLATE},
    )
    override = tmp_path / "plain.jinja"
    override.write_text(PLAIN_TEMPLATE)
    info = describe(tmp_path, model=str(gguf), args=["--chat-template-file", str(override)])
    assert info.template == PLAIN_TEMPLATE
    assert info.capabilities == ("completion",)  # what the engine really applies has no tools
    assert "tokenizer.chat_template" not in info.model_info


def test_llama_cpp_python_spelling_of_the_template_flag(tmp_path: Path) -> None:
    override = tmp_path / "t.jinja"
    override.write_text("<think>" + PLAIN_TEMPLATE)
    info = describe(
        tmp_path,
        engine="llama-cpp-python",
        model=str(write_gguf(tmp_path / "m.gguf", {"general.architecture": "llama"})),
        args=["--chat_template_file", str(override)],
    )
    assert info.template == "<think>" + PLAIN_TEMPLATE
    assert info.capabilities == ("completion", "thinking")


def test_unreadable_template_file_falls_back_to_the_models_own(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gguf = write_gguf(
        tmp_path / "m.gguf",
        {"general.architecture": "llama", "tokenizer.chat_template": TOOLS_TEMPLATE},
    )
    missing = tmp_path / "missing.jinja"
    with caplog.at_level(logging.WARNING, logger="dx.catalog"):
        info = describe(tmp_path, model=str(gguf), args=["--chat-template-file", str(missing)])
    assert f"m: cannot read --chat-template-file {missing}" in caplog.text
    assert info.template == TOOLS_TEMPLATE
    assert "tokenizer.chat_template" not in info.model_info


def test_template_flag_without_a_value_is_ignored(tmp_path: Path) -> None:
    gguf = write_gguf(
        tmp_path / "m.gguf",
        {"general.architecture": "llama", "tokenizer.chat_template": PLAIN_TEMPLATE},
    )
    info = describe(tmp_path, model=str(gguf), args=["--chat-template-file"])
    assert info.template == PLAIN_TEMPLATE


def test_a_gguf_named_like_an_ollama_blob_is_read(tmp_path: Path) -> None:
    """`dx import-ollama` serves blobs in place: `blobs/sha256-<hex>`, no .gguf suffix."""
    blob = tmp_path / "sha256-abc"
    blob.write_bytes(smollm2_path().read_bytes())
    info = describe(tmp_path, model=str(blob))
    assert info.details["format"] == "gguf" and info.details["family"] == "llama"
    assert info.template  # its chat template, so capabilities come from it
