"""POST /api/embed (current) and /api/embeddings (legacy, one prompt)."""

from __future__ import annotations

import time

from aiohttp import web

from dxproxy.api.embeddings import check_embeddings, embed
from dxproxy.api.request import resolve_model
from dxproxy.api.schemas import EmbeddingsRequest, EmbedRequest, decode
from dxproxy.http.errors import json_response
from dxproxy.models.catalog import display_name

routes = web.RouteTableDef()


@routes.post("/api/embed")
async def embed_many(request: web.Request) -> web.Response:
    started = time.monotonic_ns()
    req = decode(await request.read(), EmbedRequest)
    model = resolve_model(request, req.model)
    check_embeddings(model)
    inputs = [req.input] if isinstance(req.input, str) else list(req.input or ())
    inputs = [text for text in inputs if text] if isinstance(req.input, str) else inputs
    if not inputs:  # an empty input loads the model, as in Ollama
        return json_response({"model": display_name(model.name), "embeddings": []})
    # `truncate` (default true) asks Ollama to cut inputs to the context; DX's engines
    # refuse an input longer than the context instead, which is what `truncate: false` asks.
    # Ollama L2-normalises /api/embed vectors (and again after `dimensions`).
    result = await embed(request, model, inputs, started, normalize=True,
                         dimensions=req.dimensions)  # fmt: skip
    reply = {
        "model": display_name(model.name),
        "embeddings": result.vectors,
        "total_duration": result.total_ns,
        "load_duration": result.queued_ns,
    }
    if result.prompt_tokens is not None:
        reply["prompt_eval_count"] = result.prompt_tokens
    return json_response(reply)


@routes.post("/api/embeddings")
async def embed_one(request: web.Request) -> web.Response:
    started = time.monotonic_ns()
    req = decode(await request.read(), EmbeddingsRequest)
    model = resolve_model(request, req.model)
    check_embeddings(model)
    if not req.prompt:
        return json_response({"embedding": []})
    # The legacy endpoint returns the model's vector as it is (Ollama does not normalise it).
    result = await embed(request, model, [req.prompt], started, normalize=False)
    return json_response({"embedding": result.vectors[0]})
