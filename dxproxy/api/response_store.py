"""Stored Responses (`store`, `previous_response_id`, GET/DELETE /v1/responses/{id}): each
response with the conversation that led to it, so a follow-up need send only what is new.

Kept in memory, bounded by count, bytes and age (the oldest go first), or in Redis when
`limits.redis_url` is set, so a follow-up works through any DX instance sharing it.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from aiohttp import web

from dxproxy.http.state import LIVE

log = logging.getLogger("dx.responses")

MAX_COUNT = 1000  # stored responses, in memory
MAX_BYTES = 256 * 2**20  # their total size, in memory
MAX_AGE = 24 * 3600.0  # seconds a stored response is kept (memory and Redis)
_PREFIX = "dx:response:"


@dataclass(frozen=True, slots=True)
class Stored:
    response: dict[str, Any]  # the Response object, as returned
    items: list[dict[str, Any]]  # every input item of the conversation up to this response

    def encode(self) -> bytes:
        return orjson.dumps({"response": self.response, "items": self.items})

    @staticmethod
    def decode(raw: bytes) -> Stored:
        data = orjson.loads(raw)
        return Stored(data["response"], data["items"])


class ResponseStore(Protocol):
    async def get(self, response_id: str) -> Stored | None: ...

    async def put(self, response_id: str, stored: Stored) -> None: ...

    async def delete(self, response_id: str) -> bool: ...


class MemoryStore:
    def __init__(
        self, max_count: int = MAX_COUNT, max_bytes: int = MAX_BYTES, max_age: float = MAX_AGE
    ) -> None:
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.max_age = max_age
        self._entries: OrderedDict[str, tuple[float, int, bytes]] = OrderedDict()
        self._bytes = 0

    async def get(self, response_id: str) -> Stored | None:
        self._expire()
        entry = self._entries.get(response_id)
        return Stored.decode(entry[2]) if entry else None

    async def put(self, response_id: str, stored: Stored) -> None:
        raw = stored.encode()  # kept encoded: its size is known, and no one can change it
        await self.delete(response_id)
        self._entries[response_id] = (time.monotonic(), len(raw), raw)
        self._bytes += len(raw)
        self._expire()
        while self._entries and (
            len(self._entries) > self.max_count or self._bytes > self.max_bytes
        ):
            self._pop_oldest()

    async def delete(self, response_id: str) -> bool:
        entry = self._entries.pop(response_id, None)
        if entry is None:
            return False
        self._bytes -= entry[1]
        return True

    def _expire(self) -> None:
        limit = time.monotonic() - self.max_age
        while self._entries and next(iter(self._entries.values()))[0] < limit:
            self._pop_oldest()

    def _pop_oldest(self) -> None:
        _, (_, size, _) = self._entries.popitem(last=False)
        self._bytes -= size


class RedisStore:
    def __init__(self, url: str, max_age: float = MAX_AGE) -> None:
        import redis.asyncio as redis

        self.client = redis.Redis.from_url(url)
        self.max_age = max_age

    async def get(self, response_id: str) -> Stored | None:
        raw = await self.client.get(_PREFIX + response_id)
        if not raw:
            return None
        return Stored.decode(raw if isinstance(raw, bytes) else raw.encode())

    async def put(self, response_id: str, stored: Stored) -> None:
        await self.client.set(_PREFIX + response_id, stored.encode(), ex=int(self.max_age))

    async def delete(self, response_id: str) -> bool:
        return bool(await self.client.delete(_PREFIX + response_id))


async def stored_responses(app: web.Application) -> AsyncIterator[None]:
    """The app's store, for its life (a `cleanup_ctx`): in Redis when `limits.redis_url` is
    set (shared by every DX behind one endpoint), else in memory. Like the limiter's
    backend, it stays until a restart; Redis's connections are closed at shutdown."""
    url = app[LIVE].config.limits.redis_url
    store: MemoryStore | RedisStore = RedisStore(url) if url else MemoryStore()
    log.info("stored responses: %s", "in Redis" if url else "in memory")
    app[RESPONSES] = store
    try:
        yield
    finally:
        if isinstance(store, RedisStore):
            await store.client.aclose()


# Here, not in dxproxy/http/state.py: the store is the API layer's, below which state.py sits.
RESPONSES = web.AppKey("dx.responses", ResponseStore)
