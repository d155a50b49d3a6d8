"""The Ollama API, translated to the engines' OpenAI API and back.

Where things are:

- `meta`: `/`, /api/version, /api/status (what clients probe first)
- `generate`: /api/chat and /api/generate handlers
- `request`: an Ollama request as the engine's request (options, format, think, tools,
  messages), refusing clearly what the engine cannot do
- `reply`: the engine's reply as Ollama's, streamed (SSE -> NDJSON) or in one object, with
  the engine's own token counts and timings
- `embed`: /api/embed and /api/embeddings
- `models`: /api/tags, /api/show, /api/ps, and the registry operations DX answers without a
  registry (pull, push, create, copy, delete, blobs)
- `pull`: /api/pull and /api/delete of `hf.co/...` models (downloaded from Hugging Face)

Request bodies are typed in `dxproxy.api.schemas`.
"""

from __future__ import annotations

from aiohttp.web import AbstractRouteDef

from dxproxy.api.ollama import embed, generate, meta, models

routes: list[AbstractRouteDef] = [
    *meta.routes,
    *generate.routes,
    *embed.routes,
    *models.routes,
]
