"""dxproxy/config/edit.py: one `models:` entry added to or removed from a config's text, the
rest of the file (comments, order, indentation) kept as written."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dxproxy.config import ConfigError
from dxproxy.config.edit import add_model, remove_model, write_config

BODY = ["# pulled", "engine: llamacpp", "model: /m.gguf", "context: 2048"]
ENTRY = {"engine": "llamacpp", "model": "/m.gguf", "context": 2048}


@pytest.mark.parametrize("text", ["", "models: {}\n", "models:\n", "server:\n  port: 1\n"])
def test_add_to_no_models(text: str) -> None:
    out = add_model(text, "hf.co/o/r:Q4_K_M", BODY)
    assert yaml.safe_load(out)["models"] == {"hf.co/o/r:Q4_K_M": ENTRY}
    assert remove_model(out, "hf.co/o/r:Q4_K_M").rstrip().endswith("models: {}")


def test_add_keeps_comments_order_and_indentation() -> None:
    text = (
        "# my config\n"
        "server:\n  port: 1  # the port\n"
        "models:\n"
        "    a:  # the first\n"
        "        engine: llamacpp\n"
        "        model: /a.gguf\n"
        "\n# about auth\n"
        "auth:\n  enabled: true\n"
    )
    out = add_model(text, "b", BODY)
    assert out.startswith("# my config\nserver:\n  port: 1  # the port\n")
    assert "    a:  # the first\n" in out
    assert '    "b":\n        # pulled\n        engine: llamacpp\n' in out
    assert out.endswith("\n# about auth\nauth:\n  enabled: true\n")
    data = yaml.safe_load(out)
    assert list(data["models"]) == ["a", "b"] and data["auth"] == {"enabled": True}
    assert remove_model(out, "b") == text


def test_remove_a_middle_entry() -> None:
    text = "models:\n  a:\n    model: /a\n  b:\n    model: /b\n  c: {model: /c}\n"
    assert remove_model(text, "b") == "models:\n  a:\n    model: /a\n  c: {model: /c}\n"
    with pytest.raises(ConfigError, match="no such entry"):
        remove_model(text, "x")


def test_write_config_validates_first(tmp_path: Path) -> None:
    path = tmp_path / "dx.yaml"
    path.write_text("models: {}\n")
    with pytest.raises(ConfigError):
        write_config(path, add_model("models: {}\n", "m", ["engine: nope", "model: /x"]))
    assert path.read_text() == "models: {}\n"  # untouched
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    config = write_config(path, add_model("", "m", ["engine: llamacpp", f"model: {gguf}"]))
    assert [m.name for m in config.models] == ["m"]
    assert "m" in yaml.safe_load(path.read_text())["models"]
