"""What every handler does first: read the JSON body, find the configured model it names."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from dxproxy.config import ModelConfig
from dxproxy.http.errors import ApiError, dialect_of
from dxproxy.http.state import GATEWAY, LIVE, MODEL
from dxproxy.models.catalog import display_name


async def read_json(request: web.Request) -> dict[str, Any]:
    body = await request.read()  # over client_max_size: HTTPRequestEntityTooLarge -> 413
    if not body.strip():
        raise ApiError(400, "missing request body: send a JSON object")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"invalid JSON in request body: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return data


def resolve_model(request: web.Request, name: Any) -> ModelConfig:
    if name is None or name == "":
        raise ApiError(400, "model is required", param="model")
    if not isinstance(name, str):
        raise ApiError(400, "model: expected a string", param="model")
    config = request.app[LIVE].config
    model = config.model(name)
    if model is None and GATEWAY in request.app:  # a gateway: a model its fleet serves
        model = request.app[GATEWAY].implicit(name)
    if model is None:
        available = ", ".join(display_name(m.name) for m in config.models) or "none"
        if dialect_of(request) == "openai":
            raise ApiError(
                404,
                f"The model '{name}' does not exist; available models: {available}",
                param="model",
                code="model_not_found",
            )
        raise ApiError(404, f"model '{name}' not found; available models: {available}")
    request[MODEL] = model.name  # for the access log and metrics
    return model
