"""Runs langchain-ollama's own integration suite, unmodified, against a real `dx serve`
(llama-server + SmolLM2), and prints its pass counts.

    python tests/suites/langchain_ollama.py --venv VENV --suite langchain_ollama-1.1.0

The suite runs in its own virtualenv (langchain-ollama, langchain-tests, pytest<9,
pytest-asyncio<1, syrupy, pytest-socket) from its source package
(`pip download --no-deps --no-binary :all: langchain-ollama==1.1.0`). The `ollama` client it
uses carries DX's address and key from OLLAMA_HOST and OLLAMA_API_KEY; the model names the
suite hard-codes (llama3.1, gpt-oss:20b, deepseek-r1:1.5b) are one DX model and its aliases.

It exits 0 when every failure is one of EXPECTED, the tests a 135M-parameter model cannot pass
(each with its reason); any other failure is a protocol failure and exits 1. Measured with
langchain-ollama 1.1.0 / langchain-tests 1.1.6 against the setup below (2026-12-07): 92
tests, 51 passed, 27 failed (all expected once the 4 that send tools to the default's
tool-less template were listed), 11 skipped, 3 xfailed, in 26 min 42 s on 2 cores held at load
9 by other work (the earlier setup, a 4096 context and a tool template: 2 min 15 s unloaded).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.conftest import smollm2_path, start_dx  # noqa: E402

THINKING = "SmolLM2 is no thinking model: DX answers 400 does not support thinking, as Ollama"
TOOLS = "the tiny model answers in prose instead of calling the tool"
JSON = "the tiny model rambles inside a JSON string until the length limit, or misses a key"
NO_TOOLS = ("SmolLM2's own template (this suite's setup) has no tool syntax: 400 does not support "
            "tools, as Ollama answers for smollm2 (--tools-template gives it one)")  # fmt: skip
EXPECTED = {
    "test_chat_models::test_structured_output[function_calling]": TOOLS,
    "test_chat_models::test_structured_output[json_schema]": JSON,
    "test_chat_models::test_response_format[json_object]": JSON,
    "test_chat_models::test_response_format[json_schema]": JSON,
    "test_chat_models::test_tool_streaming[llama3.1]": TOOLS,
    "test_chat_models::test_tool_astreaming[llama3.1]": TOOLS,
    "test_chat_models::test_agent_loop[gpt-oss:20b-None]": THINKING,
    "test_chat_models::test_agent_loop[gpt-oss:20b-v1]": THINKING,
    "test_chat_models_reasoning::test_reasoning_stream[False-deepseek-r1:1.5b]": THINKING,
    "test_chat_models_reasoning::test_reasoning_stream[True-deepseek-r1:1.5b]": THINKING,
    "test_chat_models_reasoning::test_reasoning_invoke[False-deepseek-r1:1.5b]": THINKING,
    "test_chat_models_reasoning::test_reasoning_invoke[True-deepseek-r1:1.5b]": THINKING,
    "test_chat_models_reasoning::test_reasoning_modes_behavior[deepseek-r1:1.5b]": THINKING,
    "test_chat_models_reasoning::test_reasoning_content_round_trip[False-deepseek-r1:1.5b]":
        THINKING,
    "test_chat_models_reasoning::test_reasoning_content_round_trip[True-deepseek-r1:1.5b]":
        THINKING,
    "TestChatOllama::test_bind_runnables_as_tools": TOOLS,
    "TestChatOllama::test_tool_message_histories_string_content": NO_TOOLS,
    "TestChatOllama::test_tool_message_histories_list_content": NO_TOOLS,
    "TestChatOllama::test_tool_message_error_status": NO_TOOLS,
    "TestChatOllama::test_structured_few_shot_examples": NO_TOOLS,
    "TestChatOllama::test_structured_output[pydantic]": TOOLS,
    "TestChatOllama::test_structured_output_async[pydantic]": TOOLS,
    "TestChatOllama::test_structured_output_pydantic_2_v1": TOOLS,
    "TestChatOllama::test_json_mode": JSON,
    "TestChatOllama::test_image_inputs": "it downloads an image from the internet (no network "
    "here); SmolLM2 has no vision projector either",
    "TestChatOllama::test_agent_loop[model0]": TOOLS,
    "TestChatOllama::test_agent_loop[model1]": TOOLS,
    "TestChatOllama::test_unicode_tool_call_integration": TOOLS,
    "test_llms::test__stream_with_reasoning[deepseek-r1:1.5b]": THINKING,
    "test_llms::test__astream_with_reasoning[deepseek-r1:1.5b]": THINKING,
}  # fmt: skip


def _results(junit: Path) -> tuple[dict[str, int], list[str]]:
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    failed = []
    for case in ET.parse(junit).iter("testcase"):
        name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            counts["failed"] += 1
            failed.append(name)
        elif case.find("skipped") is not None:
            counts["skipped"] += 1  # xfails included
        else:
            counts["passed"] += 1
    return counts, failed


def _expected(name: str) -> str | None:
    return EXPECTED.get(name)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--venv", required=True, type=Path)
    parser.add_argument("--suite", required=True, type=Path, help="the unpacked sdist")
    parser.add_argument(
        "--tools-template",
        action="store_true",
        help="give SmolLM2 a template with tool syntax (not the default's)",
    )
    parser.add_argument("pytest_args", nargs="*")
    args = parser.parse_args()
    # SmolLM2 as the embedded default serves it before issue 22 (dxproxy/config/default.yaml
    # now has an 8192 context, 8 slots and the smollm2-tools template): a 2048 context (the
    # suite's num_ctx 4096 is served with it, as Ollama caps it), embeddings on (every
    # llama-server model embeds), SmolLM2's own template (no tool syntax). Kept so that the
    # expected failures stay the model's, and the suite's time fits CI. Plus the
    # aliases for the names the suite hard-codes, and -n: a cap on reply length for requests
    # that set none, or the tiny model rambles to the end of its context (minutes a test).
    model: dict[str, Any] = {
        "engine": "llamacpp",
        "model": str(smollm2_path()),
        "context": 2048,
        "aliases": ["gpt-oss:20b", "deepseek-r1:1.5b"],
        "args": ["-n", "256"],
    }
    if args.tools_template:  # the earlier setup: a ChatML template with Hermes tool calls
        model["args"] += [
            "--chat-template-file",
            str(ROOT / "tests" / "data" / "chatml-tools.jinja"),
        ]
    with tempfile.TemporaryDirectory() as tmp:
        dx = start_dx(Path(tmp), {"llama3.1": model}, wait=180)
        try:
            env = {**os.environ, "OLLAMA_HOST": dx.url, "OLLAMA_API_KEY": dx.key,
                   "OLLAMA_TEST_MODEL": "llama3.1"}  # fmt: skip
            junit = Path(tmp) / "junit.xml"
            cmd = [str(args.venv / "bin" / "pytest"), "-p", "no:cacheprovider", "-q",
                   "-o", "addopts=", f"--junitxml={junit}", "tests/integration_tests",
                   *args.pytest_args]  # fmt: skip
            subprocess.run(cmd, cwd=args.suite, env=env, check=False)
        finally:
            dx.stop()
        counts, failed = _results(junit)
    unexpected = [name for name in failed if _expected(name) is None]
    print(f"langchain-ollama integration suite against DX: {counts}")
    for name in failed:
        print(f"  failed: {name}: {_expected(name) or 'UNEXPECTED (a protocol failure?)'}")
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
