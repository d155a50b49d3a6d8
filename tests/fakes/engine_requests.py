"""What the fake engines behind a running DX were asked: each keeps its last request body
(GET /last), so tests can check how DX translated a client's request."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import httpx
import psutil

from tests.conftest import DxProcess


def last_request(dx: DxProcess, model: str) -> dict[str, Any]:
    """The last body any fake engine behind `dx` received for `model`."""
    for pid in dx.engine_pids():
        for conn in psutil.Process(pid).net_connections("tcp"):
            if conn.status == psutil.CONN_LISTEN:
                body = httpx.get(f"http://127.0.0.1:{conn.laddr.port}/last").json()
                if body.get("model") == model:
                    return dict(body)
    raise AssertionError(f"no engine saw a request for {model}")


def write_gguf(path: Path, meta: dict[str, str | int]) -> Path:
    """A GGUF file with these key-values and no tensors: enough for DX's header reader."""
    out = [b"GGUF", struct.pack("<IQQ", 3, 0, len(meta))]
    for key, value in meta.items():
        out.append(struct.pack("<Q", len(key.encode())) + key.encode())
        if isinstance(value, int):
            out.append(struct.pack("<II", 4, value))  # uint32
        else:
            out.append(struct.pack("<IQ", 8, len(value.encode())) + value.encode())
    path.write_bytes(b"".join(out))
    return path
