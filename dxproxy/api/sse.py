"""The engines' OpenAI-style server-sent events, decoded in batches for the relays."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

MAX_SSE_LINE = 2**24  # bytes: an engine line longer than this is an error, not a memory leak


async def sse_batches(resp: aiohttp.ClientResponse) -> AsyncIterator[list[dict[str, Any]]]:
    """Decoded `data:` events of an OpenAI-style SSE stream, up to `[DONE]`, in batches: each
    holds every event received so far, one when tokens arrive one by one, hundreds when the
    engine is faster than DX. Nothing waits for a batch to fill; a relay just writes each
    batch with one call instead of one per event.

    Raises EngineStreamError if the stream ends without `[DONE]` (the engine died), or on
    malformed JSON or an error event (after the batch of events before it).
    """
    content = resp.content
    pending = b""
    while True:
        data = await content.readany()
        eof = not data
        if not eof:
            data += content.read_nowait()  # the rest of what has arrived, without waiting
        lines = (pending + data).split(b"\n")
        pending = b"" if eof else lines.pop()
        if len(pending) > MAX_SSE_LINE:
            raise EngineStreamError(f"the engine sent a line of more than {MAX_SSE_LINE} bytes")
        batch: list[dict[str, Any]] = []
        for raw in lines:
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue  # blank separators, comments, `event:` lines
            body = line[5:].strip()
            if body == b"[DONE]":
                if batch:
                    yield batch
                return
            try:
                event = orjson.loads(body)
            except orjson.JSONDecodeError:
                if batch:
                    yield batch
                raise EngineStreamError(f"the engine sent malformed JSON: {body[:200]!r}") from None
            if isinstance(event, dict):
                if "error" in event:
                    if batch:
                        yield batch
                    raise EngineStreamError(f"the engine reported an error: {event['error']}")
                batch.append(event)
        if batch:
            yield batch
        if eof:
            raise EngineStreamError("the engine closed the stream before it finished")


async def sse_events(resp: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    """The events of `sse_batches`, one at a time."""
    async for batch in sse_batches(resp):
        for event in batch:
            yield event


class EngineStreamError(Exception):
    pass
