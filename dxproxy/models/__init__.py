"""What DX knows about model files without running them.

- `catalog`: per model, what `/api/tags` and `/api/show` report (family, size, quantisation,
  capabilities, template), read once per config
- `gguf`: a GGUF file's metadata, read from its header
- `memory`: the memory one replica needs (weights + KV cache + overhead), estimated
- `ollama_store`: the models of an existing Ollama store, read in place
- `hub`: GGUF models from the Hugging Face Hub: the quant chosen for the hardware (pure),
  downloaded and checked (`dx pull`, `/api/pull`)
- `pulled`: a pulled model's config entry, written and removed with its files
"""
