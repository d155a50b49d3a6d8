"""The tokens one request used, as the engine counted them: one place for every handler to
report them, and for rate limits (tokens per minute) and metrics to read them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from dxproxy.http.state import USAGE


@dataclass(frozen=True, slots=True)
class Usage:
    prompt: int
    completion: int


def report_usage(request: web.Request, prompt: Any, completion: Any) -> None:
    """Called once per generation, when the engine's counts are known (the end of a stream).
    Unknown counts (an engine that reports none) are 0."""
    p = prompt if isinstance(prompt, int) else 0
    c = completion if isinstance(completion, int) else 0
    request[USAGE] = Usage(p, c)


def usage_of(data: Any) -> tuple[Any, Any]:
    """(prompt_tokens, completion_tokens) of an OpenAI `usage` object, or (None, None)."""
    if not isinstance(data, dict):
        return None, None
    return data.get("prompt_tokens"), data.get("completion_tokens")
