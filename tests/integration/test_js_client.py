"""The official `ollama` JavaScript client (npm, run with node) against a real `dx serve`
with llama-server and SmolLM2: tests/js/ollama_client.test.mjs, run with `node --test`.

The client is installed by scripts/setup (`npm ci --prefix tests/js`); missing, it fails
loudly with the command to run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from tests.conftest import ROOT, DxProcess, smollm2_path, start_dx

pytestmark = pytest.mark.integration

JS = ROOT / "tests" / "js"
TOOLS_TEMPLATE = ROOT / "tests" / "data" / "chatml-tools.jinja"


@pytest.fixture(scope="module")
def dx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DxProcess]:
    gguf = str(smollm2_path())
    models = {
        "smollm2": {"engine": "llamacpp", "model": gguf, "context": 2048},
        "smollm2-tools": {"engine": "llamacpp", "model": gguf, "context": 2048,
                          "args": ["--chat-template-file", str(TOOLS_TEMPLATE)]},
        "smollm2-embed": {"engine": "llamacpp", "model": gguf, "context": 512,
                          "embeddings": True, "args": ["--pooling", "mean"]},
    }  # fmt: skip
    proc = start_dx(tmp_path_factory.mktemp("js"), models, wait=180)
    yield proc
    proc.stop()


def test_official_javascript_client(dx: DxProcess) -> None:
    node = shutil.which("node")
    if node is None or not (JS / "node_modules" / "ollama").is_dir():
        pytest.fail("the ollama npm package is missing: run `npm ci --prefix tests/js`")
    result = subprocess.run(
        [node, "--test", "--test-reporter=tap", str(JS / "ollama_client.test.mjs")],
        env={**os.environ, "DX_URL": dx.url, "DX_KEY": dx.key},
        capture_output=True,
        text=True,
        timeout=300,
        cwd=JS,
    )
    out = result.stdout + result.stderr
    passed = re.search(r"^# pass (\d+)", out, re.M)
    failed = re.search(r"^# fail (\d+)", out, re.M)
    assert result.returncode == 0 and failed and failed.group(1) == "0", out
    assert passed and int(passed.group(1)) == 10, out
