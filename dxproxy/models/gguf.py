"""The GGUF header reader, which lives in the config layer (dxproxy/config/gguf.py): the
config reads a model's pooling type for its defaults. Re-exported for the model catalog."""

from __future__ import annotations

from dxproxy.config.gguf import FILE_TYPES, GGUFError, read_metadata, read_partial_metadata

__all__ = ["FILE_TYPES", "GGUFError", "read_metadata", "read_partial_metadata"]
