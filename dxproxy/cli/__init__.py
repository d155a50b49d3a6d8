"""The `dx` command line: one click group, one module per command.

- `main`: the `dx` group, `dx serve`, `dx config check`
- `options`: what several commands share (`--config`, `--url`/`--key`)
- `ps`: `dx ps` and `dx models` (asks a running DX over HTTP)
- `keys`: `dx keys` (named API keys in the state folder)
- `logs`: `dx logs MODEL` (an engine's output)
- `doctor`: `dx doctor` (the machine, the engines, the config, checked)
- `import_ollama`: `dx import-ollama` (config entries for an Ollama store's models)
- `pull`: `dx pull` and `dx rm` (GGUF models from Hugging Face into the config)

Only what a plain `pip install .` brings is imported here (tests/e2e/test_install.py proves
it in a fresh virtualenv).
"""
