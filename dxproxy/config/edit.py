"""Adding and removing one `models:` entry in a config file's text, keeping everything else
(comments, order, quoting) as the operator wrote it: `dx pull`, `dx rm`, `/api/pull` and
`/api/delete` change the file a running DX watches, and its reload applies the change.

The edits are on text (located with PyYAML's node marks: a dump would drop the comments);
the result is validated by `load_config` before it replaces the file, atomically (a rename,
which the reloader's watcher sees as one change).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import yaml

from dxproxy.config.load import load_config
from dxproxy.config.schema import Config, ConfigError


def _models_node(text: str) -> tuple[yaml.MappingNode | None, yaml.Node | None]:
    """(the top-level mapping, the `models:` value node) of `text`."""
    root = yaml.compose(text) if text.strip() else None
    if not isinstance(root, yaml.MappingNode):
        return None, None
    for key, value in root.value:
        if isinstance(key, yaml.ScalarNode) and key.value == "models":
            return root, value
    return root, None


def add_model(text: str, name: str, body: list[str]) -> str:
    """`text` with a `models:` entry `name` whose lines (relative to the entry, unindented:
    `engine: llamacpp`, comments, ...) are `body`. A missing `models:` section is added."""
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    root, node = _models_node(text)
    if root is None and text.strip() and yaml.safe_load(text) is not None:
        raise ConfigError("<edit>", ["the config is not a mapping; cannot add a model"])
    indent = "  "
    if isinstance(node, yaml.MappingNode) and node.value and node.flow_style is False:
        indent = " " * node.value[0][0].start_mark.column
        sub = indent
    else:
        sub = "  "
    entry = [f"{indent}{json.dumps(name)}:\n", *(f"{indent}{sub}{b}\n" for b in body)]
    if node is None:
        return "".join(lines) + "models:\n" + "".join(entry)
    if isinstance(node, yaml.MappingNode) and node.flow_style is False and node.value:
        # Block style with entries: insert after its last entry.
        end = node.end_mark.line if node.end_mark.column == 0 else node.end_mark.line + 1
        # Trailing blank and comment lines before the next section stay after the new entry.
        while end > 0 and _blank_or_comment(lines[end - 1]) and end - 1 > node.start_mark.line:
            end -= 1
        return "".join(lines[:end] + entry + lines[end:])
    if (isinstance(node, yaml.MappingNode) and not node.value) or (
        isinstance(node, yaml.ScalarNode) and node.value in ("", "~", "null")
    ):
        # `models: {}` or `models:` with nothing: the value becomes a block with the entry.
        key_line = next(i for i, line in enumerate(lines) if line.startswith("models:"))
        last = max(key_line, node.end_mark.line - (1 if node.end_mark.column == 0 else 0))
        return "".join([*lines[:key_line], "models:\n", *entry, *lines[last + 1 :]])
    raise ConfigError("<edit>", ["models: is written in flow style; add the model by hand"])


def remove_model(text: str, name: str) -> str:
    """`text` without the `models:` entry whose key is `name` (exactly as written)."""
    _, node = _models_node(text)
    if not isinstance(node, yaml.MappingNode) or node.flow_style:
        raise ConfigError("<edit>", [f"models.{name}: not found in block style; remove it by hand"])
    lines = text.splitlines(keepends=True)
    for i, (key, value) in enumerate(node.value):
        if isinstance(key, yaml.ScalarNode) and key.value == name:
            start = key.start_mark.line
            if i + 1 < len(node.value):
                end = node.value[i + 1][0].start_mark.line
            else:
                end = value.end_mark.line if value.end_mark.column == 0 else value.end_mark.line + 1
                while end - 1 > start and _blank_or_comment(lines[end - 1]):
                    end -= 1
            out = lines[:start] + lines[end:]
            if len(node.value) == 1:  # the last model: keep the section (an empty one)
                k = node.start_mark.line - 1
                while k >= 0 and not lines[k].startswith("models:"):
                    k -= 1
                if k >= 0:
                    out[k] = "models: {}\n"
            return "".join(out)
    raise ConfigError("<edit>", [f"models.{name}: no such entry"])


def _blank_or_comment(line: str) -> bool:
    s = line.strip()
    return not s or s.startswith("#")


def write_config(path: Path, text: str) -> Config:
    """Validate `text` as the config at `path`, then replace the file with it atomically
    (same folder, same mode). Raises ConfigError and leaves the file as it was."""
    config = load_config(text, source=str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return config
