"""A model's `chat_template:`: a template DX ships (by name) or a Jinja file, handed to the
engine (llama-server's --chat-template-file, vLLM's --chat-template) and read by the
catalog, whose capabilities then say whether the model takes tools. The embedded default
serves SmolLM2's whole context with the template DX ships for it."""

from __future__ import annotations

from pathlib import Path

import pytest

from dxproxy.config import ConfigError, load_config, load_default_config
from dxproxy.config.load import TEMPLATES
from dxproxy.models.catalog import build_catalog, no_tools_advice
from tests.conftest import smollm2_path

SHIPPED = TEMPLATES / "smollm2-tools.jinja"


def one(engine: str, template: str, tmp_path: Path) -> tuple[str, ...]:
    text = (
        f"models:\n  m:\n    engine: {engine}\n    model: {smollm2_path()}\n"
        f"    chat_template: {template}\n"
    )
    return load_config(text, source=str(tmp_path / "dx.yaml")).models[0].args


def test_a_shipped_template_by_name_becomes_the_engine_flag(tmp_path: Path) -> None:
    assert one("llamacpp", "smollm2-tools", tmp_path) == ("--chat-template-file", str(SHIPPED))


def test_a_file_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "mine.jinja").write_text("{{ messages }}")
    args = one("llamacpp", "mine.jinja", tmp_path)
    assert args == ("--chat-template-file", str(tmp_path / "mine.jinja"))


def test_vllm_gets_its_own_flag(tmp_path: Path) -> None:
    (tmp_path / "t.jinja").write_text("x")
    text = (
        "models:\n  m:\n    engine: vllm\n    model: Qwen/Qwen2.5-0.5B\n"
        f"    chat_template: {tmp_path}/t.jinja\n"
    )
    assert load_config(text).models[0].args == ("--chat-template", f"{tmp_path}/t.jinja")


def test_a_missing_template_names_those_dx_ships(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        one("llamacpp", "nope", tmp_path)
    (problem,) = err.value.problems
    assert problem.startswith("models.m.chat_template: no such file: ")
    assert "or one DX ships: smollm2-tools" in problem


def test_llama_cpp_python_takes_none(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        one("llama-cpp-python", "smollm2-tools", tmp_path)
    assert "only for engine llamacpp or vllm" in err.value.problems[0]


def test_the_template_decides_whether_tools_are_taken(tmp_path: Path) -> None:
    own = load_config(f"models:\n  m:\n    engine: llamacpp\n    model: {smollm2_path()}\n")
    assert "tools" not in build_catalog(own).models[0].capabilities  # SmolLM2's own: none
    advice = no_tools_advice(own.models[0])
    assert "set models.m.chat_template to a Jinja chat template file" in advice
    text = (
        f"models:\n  m:\n    engine: llamacpp\n    model: {smollm2_path()}\n"
        "    chat_template: smollm2-tools\n"
    )
    assert "tools" in build_catalog(load_config(text)).models[0].capabilities


def test_the_embedded_default_serves_the_whole_context_with_tools() -> None:
    cfg = load_default_config(env={"HOME": "/h"})
    (m,) = cfg.models
    assert (m.context, m.parallel) == (8192, 8)  # SmolLM2's trained context, 8 slots of it
    assert m.args == ("--chat-template-file", str(SHIPPED))
    info = build_catalog(cfg).models[0]
    assert "tools" in info.capabilities and info.template == SHIPPED.read_text()
    assert m.embeddings and m.pooling == "mean"  # chat and embeddings from one entry
