"""The key DX generates on its first start: `STATE_DIR/api-key`, mode 0600 in a 0700 folder.

Later starts read the same file. The banner shows the key once, when it was just made.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dxproxy.keys.store import new_key

KEY_FILE_NAME = "api-key"


@dataclass(frozen=True, slots=True)
class KeyFile:
    path: Path
    key: str
    created: bool  # True on first start: the one time the key is printed


def ensure_api_key(state_dir: Path) -> KeyFile:
    """Read the key from `state_dir/api-key`, generating it (0600, dir 0700) on first start."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = state_dir / KEY_FILE_NAME
    try:
        key = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        key = ""
    if key:
        return KeyFile(path, key, created=False)
    key = new_key()
    # 0600 at creation: the key is never readable by others, not even briefly. An existing
    # empty file (a failed first start) is refilled, and made private if it was not.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(key + "\n")
    return KeyFile(path, key, created=True)
