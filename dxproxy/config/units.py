"""Units in the config and in requests: durations (Go's syntax, as Ollama clients send them)
and sizes (powers of 1024)."""

from __future__ import annotations

import re
from typing import Any

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
# Go's time.ParseDuration syntax, as Ollama clients send it: "5m", "1h30m", "5m0s", "300ms".
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DURATION = re.compile(f"(?:{_DURATION_PART.pattern})+")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: Any) -> float | None:
    """Seconds from 30, 1.5, '30', '30s', '500ms', '5m', '1h30m', '-1m'; None if it is not
    a duration."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str):
        return None
    text = value.strip()
    sign = -1.0 if text.startswith("-") else 1.0
    text = text.removeprefix("-").removeprefix("+")
    if _NUMBER.fullmatch(text):
        return sign * float(text)
    if _DURATION.fullmatch(text):
        parts = _DURATION_PART.findall(text)
        return sign * sum(float(n) * _DURATION_UNITS[unit] for n, unit in parts)
    return None


def parse_size(value: Any) -> int | None:
    """Bytes from 1073741824, '1GiB', '512MiB', '8G', '2.5 GB' (powers of 1024); else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if not isinstance(value, str) or not (m := _SIZE.fullmatch(value.strip())):
        return None
    unit = (m.group(2) or "").upper()[:1]
    return int(float(m.group(1)) * _SIZE_UNITS[unit])
