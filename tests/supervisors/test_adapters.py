from __future__ import annotations

import sys

from dxproxy.config import ModelConfig
from supervisors.adapters import ADAPTERS


def test_llamacpp_command_line() -> None:
    m = ModelConfig(name="smol", engine="llamacpp", model="/m/smol.gguf", context=2048,
                    args=("--n_threads", "2"))
    argv = ADAPTERS["llamacpp"].argv(m, 4242)
    assert argv[:3] == [sys.executable, "-m", "llama_cpp.server"]
    assert argv[argv.index("--model") + 1] == "/m/smol.gguf"
    assert argv[argv.index("--host") + 1] == "127.0.0.1"  # engines never listen outside
    assert argv[argv.index("--port") + 1] == "4242"
    assert argv[argv.index("--interrupt_requests") + 1] == "false"
    assert argv[argv.index("--n_gpu_layers") + 1] == "0"  # no GPUs listed: CPU
    assert argv[-2:] == ["--n_threads", "2"]
    assert ADAPTERS["llamacpp"].env(m)["CUDA_VISIBLE_DEVICES"] == ""


def test_gpu_pinning_and_engine_python() -> None:
    m = ModelConfig(name="big", engine="vllm", model="org/model", gpus=(2, 3), python="/opt/v/py")
    adapter = ADAPTERS["vllm"]
    argv = adapter.argv(m, 1)
    assert argv[:3] == ["/opt/v/py", "-m", "vllm.entrypoints.openai.api_server"]
    assert argv[argv.index("--served-model-name") + 1] == "big"
    assert adapter.env(m)["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert adapter.parallel(m) > 1


def test_custom_command_placeholders() -> None:
    m = ModelConfig(name="n", engine="llamacpp", model="/m.gguf", context=512,
                    command=("llama-server", "-m", "{model}", "--port", "{port}", "-c",
                             "{context}", '--json={"a": 1}'), parallel=8)
    argv = ADAPTERS["llamacpp"].argv(m, 99)
    assert argv == ["llama-server", "-m", "/m.gguf", "--port", "99", "-c", "512",
                    '--json={"a": 1}']
    assert ADAPTERS["llamacpp"].parallel(m) == 8
