"""Reads the header of a GGUF file (metadata and tensor shapes, never tensor data), for model
details in listings and /api/show, and for the config's defaults that depend on the model
(the pooling an embedding engine needs). In the config layer, the lowest that reads it."""

from __future__ import annotations

import io
import struct
from typing import IO, Any

# llama.cpp's `general.file_type` values (enum llama_ftype) as Ollama prints them.
FILE_TYPES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    36: "TQ1_0",
    37: "TQ2_0",
}
_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9
MAX_STRING = 2**24  # bytes: a longer key or value is a corrupt length, not a string to read


class GGUFError(ValueError):
    pass


def read_metadata(path: str, *, parameters: bool = False) -> dict[str, Any]:
    """Scalar and string key-values of a GGUF header; arrays (the vocabulary) are skipped.

    With `parameters`, also `general.parameter_count` (what Ollama shows) summed from the
    tensor shapes when the file does not say it: the tensor table follows the key-values.
    """
    try:
        return _read_metadata(path, parameters)
    except _Truncated:
        raise GGUFError(f"{path}: the GGUF header ends early (an unfinished download?)") from None


def read_partial_metadata(data: bytes) -> dict[str, Any]:
    """The key-values found in the first bytes of a GGUF file (a ranged download of its head):
    those that end before `data` does. Enough for the memory estimate, whose keys come before
    the vocabulary in the files llama.cpp's converters write."""
    f = io.BytesIO(data)
    if f.read(4) != b"GGUF":
        raise GGUFError("not a GGUF file")
    out: dict[str, Any] = {}
    try:
        _version, _tensors, count = _unpack(f, "<IQQ")
        for _ in range(count):
            key = _string(f)
            (kind,) = _unpack(f, "<I")
            value = _value(f, kind)
            if value is not None:
                out[key] = value
    except _Truncated:
        pass
    return out


class _Truncated(Exception):
    pass


def _read(f: IO[bytes], n: int) -> bytes:
    data = f.read(n)
    if len(data) < n:
        raise _Truncated
    return data


def _unpack(f: IO[bytes], fmt: str) -> tuple[Any, ...]:
    return struct.unpack(fmt, _read(f, struct.calcsize(fmt)))


def _read_metadata(path: str, parameters: bool) -> dict[str, Any]:
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise GGUFError(f"{path} is not a GGUF file")
        version, tensors, count = _unpack(f, "<IQQ")
        if version < 2:
            raise GGUFError(f"{path}: GGUF version {version} is too old")
        out: dict[str, Any] = {}
        for _ in range(count):
            key = _string(f)
            (kind,) = _unpack(f, "<I")
            value = _value(f, kind)
            if value is not None:
                out[key] = value
        if parameters and "general.parameter_count" not in out:
            total = 0
            for _ in range(tensors):
                _string(f)  # the tensor's name
                (dims,) = _unpack(f, "<I")
                if dims > 8:  # GGML tensors have at most 4
                    raise GGUFError(f"{path}: a tensor of {dims} dimensions: the file is corrupt")
                shape = _unpack(f, f"<{dims}Q")
                _read(f, 12)  # type and data offset
                n = 1
                for d in shape:
                    n *= d
                total += n
            out["general.parameter_count"] = total
        return out


def _string(f: IO[bytes]) -> str:
    (n,) = _unpack(f, "<Q")
    if n > MAX_STRING:
        raise GGUFError(f"a GGUF string of {n} bytes: the file is corrupt")
    return _read(f, n).decode("utf-8", errors="replace")


def _value(f: IO[bytes], kind: int) -> Any:
    if kind == _STRING:
        return _string(f)
    if kind == _ARRAY:
        item, n = _unpack(f, "<IQ")
        for _ in range(n):
            _value(f, item)
        return None
    fmt = _SCALARS.get(kind)
    if fmt is None:
        raise GGUFError(f"unknown GGUF value type {kind}")
    return _unpack(f, fmt)[0]
