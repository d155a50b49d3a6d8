"""A pulled model in the config file: its entry written after a pull, and removed with its
files by `dx rm` / `DELETE /api/delete`. Shared by the command line and the API.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from dxproxy.config import Config, ConfigError, ModelConfig, load_config
from dxproxy.config.edit import add_model, remove_model, write_config
from dxproxy.models.hub import Pulled, is_cached_file, remove_cached, split_parts
from dxproxy.models.memory import gib

MARK = "pulled by dx pull"  # in the entry's first comment


def entry_lines(pulled: Pulled, entry: ModelConfig, endpoint: str) -> list[str]:
    """The lines of the config entry for a pulled model (unindented)."""
    q = pulled.choice.quant
    now = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    lines = [
        f"# {MARK} from {endpoint}/{pulled.ref.repo} on {now}",
        f"# (commit {pulled.revision[:12]}): {q.name}, {gib(q.size)} in {len(q.files)} "
        "file(s), sha256 checked",
        f"# {pulled.choice.why}",
        "engine: llamacpp",
        f"model: {json.dumps(str(pulled.model_path))}",
        f"context: {entry.context}",
    ]
    if entry.gpus:
        lines.append(f"gpus: [{', '.join(str(g) for g in entry.gpus)}]")
    if pulled.projector:
        lines.append("# its vision projector (mmproj), for images in chat requests")
        lines.append(f'args: ["--mmproj", {json.dumps(str(pulled.projector))}]')
    return lines


def read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8") if path.exists() else ""


def add_pulled(path: Path, name: str, lines: list[str]) -> tuple[Config, bool]:
    """Write the entry `name` into the config file at `path` (created if missing); an entry
    of that name already there is replaced. Returns (the new config, whether it replaced)."""
    text = read_text(path)
    replaced = False
    if text.strip():
        current = load_config(text, source=str(path))
        if current.model(name) is not None:
            text = remove_model(text, _key_of(text, current, name))
            replaced = True
    else:
        text = (
            "# Written by `dx pull`; `dx serve` uses this file when no --config is given.\n"
            "# Edit it freely: dx pull adds entries, dx rm removes them.\n"
        )
    return write_config(path, add_model(text, name, lines)), replaced


def files_of(model: ModelConfig) -> list[Path]:
    """The files a pulled model's entry uses: its GGUF (all parts) and its projector."""
    out = split_parts(Path(model.model))
    args = list(model.args)
    if "--mmproj" in args[:-1]:
        out.append(Path(args[args.index("--mmproj") + 1]))
    return out


def remove_pulled(path: Path, name: str) -> tuple[Config, list[Path]]:
    """Remove the model `name` (any spelling) from the config file and delete its files from
    the Hugging Face cache, unless another model still uses them. Only pulled models (files in
    huggingface_hub's cache) are removed; others raise ConfigError (their files are the
    operator's). Returns the new config and the files deleted."""
    text = read_text(path)
    current = load_config(text, source=str(path))
    model = current.model(name)
    if model is None:
        raise ConfigError(str(path), [f"no model {name!r} in the config"])
    if not is_cached_file(model.model):
        raise ConfigError(
            str(path),
            [
                f"models.{model.name} serves {model.model}, which dx pull did not download: "
                "remove it from the config by hand (its files are yours to keep or delete)"
            ],
        )
    new = write_config(path, remove_model(text, _key_of(text, current, model.name)))
    still = {str(p) for m in new.models for p in files_of(m)}
    deleted = []
    for p in files_of(model):
        if str(p) not in still and (p.exists() or p.is_symlink()):
            remove_cached(p)
            deleted.append(p)
    return new, deleted


def _key_of(text: str, config: Config, name: str) -> str:
    """The key as written in the file for the model `name` (the loader drops `:latest`)."""
    import yaml

    data = yaml.safe_load(text) or {}
    model = config.model(name)
    target = model.name if model else name
    for key in data.get("models") or {}:
        if str(key) == target or str(key).removesuffix(":latest") == target:
            return str(key)
    return target
