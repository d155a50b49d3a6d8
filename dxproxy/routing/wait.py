"""One wait that says it is still waiting: for a model to load, or for a free replica.

A streaming client, and any proxy in front of DX (Caddy, nginx: 60 s read timeouts by
default), would give up on a silent connection. So a wait of more than a moment calls
`notify(seconds waited)` after NOTICE_AFTER seconds and then every NOTICE_EVERY seconds; the
caller turns that into a harmless line of its stream (dxproxy.http.early).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import Any

NOTICE_AFTER = 1.0  # seconds of waiting before the first notice
NOTICE_EVERY = 5.0  # seconds between notices

Notify = Callable[[float], Awaitable[None]]


async def wait_with_notices(
    future: asyncio.Future[Any], within: float | None, notify: Notify | None
) -> bool:
    """Wait for `future` up to `within` seconds (None: as long as it takes), awaiting
    `notify` now and then. True when it is done; the future is never cancelled here."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    deadline = math.inf if within is None else start + within
    notice = start + NOTICE_AFTER
    while (now := loop.time()) < deadline:
        until = deadline if notify is None else min(deadline, notice)
        timeout = None if until == math.inf else until - now
        done, _ = await asyncio.wait({future}, timeout=timeout)
        if done:
            return True
        if notify is not None and loop.time() >= notice:
            await notify(loop.time() - start)
            notice += NOTICE_EVERY
    return future.done()
