"""`dx doctor` says which models accept tools, and for the others what to set."""

from __future__ import annotations

from dxproxy.cli.doctor import Report, check_tools
from dxproxy.config import load_config
from tests.conftest import smollm2_path


def test_doctor_lists_which_models_accept_tools() -> None:
    gguf = smollm2_path()
    config = load_config(
        f"models:\n"
        f"  plain:\n    engine: llamacpp\n    model: {gguf}\n"
        f"  tools:\n    engine: llamacpp\n    model: {gguf}\n    chat_template: smollm2-tools\n"
        f"  python:\n    engine: llama-cpp-python\n    model: {gguf}\n"
    )
    report = Report()
    check_tools(report, config)
    found = {c.name: (c.section, c.status, c.detail) for c in report.checks}
    assert found["tools"] == ("tools", "ok", "accepts tools (its chat template has tool syntax)")
    section, status, detail = found["plain"]
    assert (section, status) == ("tools", "info")
    assert detail.startswith("refuses tools: its chat template has no tool syntax. In the DX ")
    assert "set models.plain.chat_template to a Jinja chat template file" in detail
    assert "serve the model with engine: llamacpp" in found["python"][2]
