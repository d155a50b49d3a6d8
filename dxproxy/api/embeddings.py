"""Embeddings from the engine's /v1/embeddings, shared by Ollama's /api/embed and
/api/embeddings and OpenAI's /v1/embeddings.

Engines disagree on the details (llama-server L2-normalises, llama-cpp-python does not; none
of the llama.cpp ones know `dimensions`), so DX asks for plain float vectors and does the
rest itself: normalising where the dialect promises it, truncating to `dimensions` (and
normalising again, as Ollama does), base64 for OpenAI's `encoding_format`.
"""

from __future__ import annotations

import asyncio
import base64
import math
import struct
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from dxproxy.api.engine import call_engine
from dxproxy.config import ModelConfig
from dxproxy.http.errors import ApiError
from dxproxy.http.usage import report_usage
from dxproxy.models.catalog import serves_embeddings

# Past this many numbers, normalising runs in a thread: the event loop serves other requests.
_INLINE_FLOATS = 50_000


@dataclass(slots=True)
class Embeddings:
    vectors: list[list[float]]
    prompt_tokens: int | None
    queued_ns: int
    total_ns: int


def check_embeddings(model: ModelConfig) -> None:
    if not serves_embeddings(model):
        raise ApiError(
            400,
            f"model {model.name} does not serve embeddings; set models.{model.name}."
            "embeddings: true in the DX config",
            param="model",
        )


async def embed(
    request: web.Request,
    model: ModelConfig,
    inputs: list[Any],
    started: int,
    *,
    normalize: bool,
    dimensions: int | None = None,
) -> Embeddings:
    check_embeddings(model)
    if dimensions is not None and dimensions < 1:
        raise ApiError(400, "dimensions: expected a positive integer", param="dimensions")
    payload = {"model": model.name, "input": inputs, "encoding_format": "float"}
    async with call_engine(request, model, "/v1/embeddings", payload, started) as call:
        try:
            data = orjson.loads(await call.response.read())
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as exc:
            raise ApiError(502, f"the engine of '{model.name}' failed: {exc}") from None
    rows = data.get("data") if isinstance(data, dict) else None
    if not isinstance(rows, list) or len(rows) != len(inputs):
        raise ApiError(502, f"the engine of '{model.name}' sent a malformed embeddings reply")
    rows = sorted(rows, key=lambda r: r.get("index", 0) if isinstance(r, dict) else 0)
    vectors = [r.get("embedding") if isinstance(r, dict) else None for r in rows]
    if not all(isinstance(v, list) for v in vectors):
        raise ApiError(502, f"the engine of '{model.name}' sent a malformed embeddings reply")
    out: list[list[float]] = vectors  # type: ignore[assignment]
    if dimensions is not None:
        out = [v[:dimensions] for v in out]
    if normalize or dimensions is not None:
        if sum(len(v) for v in out) > _INLINE_FLOATS:
            out = await asyncio.to_thread(_normalize_all, out)
        else:
            out = _normalize_all(out)
    usage = data.get("usage") if isinstance(data, dict) else None
    prompt = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    report_usage(request, prompt, 0)
    return Embeddings(out, prompt, call.queued_ns, time.monotonic_ns() - started)


def _normalize_all(vectors: list[list[float]]) -> list[list[float]]:
    out = []
    for v in vectors:
        norm = math.sqrt(math.fsum(x * x for x in v))
        out.append([x / norm for x in v] if norm > 0 else v)
    return out


def to_base64(vector: list[float]) -> str:
    """OpenAI's `encoding_format: base64`: little-endian float32s."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
