"""The connections to the engines: one pooled session for every engine call, and the one
safe retry.

Engines close keep-alive connections on their own: llama-server after every streamed reply,
without saying `Connection: close`, and every engine after an idle timeout. aiohttp puts a
connection back in the pool the moment it has read a reply's last byte, before the engine's
close arrives, so a pooled connection can be one the engine has already closed. Two rules
keep that from losing a request:

- A streamed request asks for `Connection: close`: its connection goes back to no pool.
- A request that fails on a *reused* connection before any answer (the engine closed it: the
  request never reached it) is sent once more, on a connection made for it alone. A request
  that fails on a new connection is not sent again here (`EngineDropped`): the engine may have
  started it, and no generation may run twice. The caller sends it again only once the engine
  is known dead (dxproxy/api/engine.py): then nothing of it runs any more.
"""

from __future__ import annotations

import contextvars
import weakref
from typing import TYPE_CHECKING

import aiohttp

from dxproxy.routing.router import EngineDropped, Unavailable
from supervisors import EngineState, Replica

if TYPE_CHECKING:
    from aiohttp.client_reqrep import ClientRequest
    from aiohttp.tracing import Trace

# Generation can pause for a long time (a long prompt before the first token), but an engine
# that sends nothing for this long is hung: give the client an error instead of waiting forever.
ENGINE_READ_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=600)
KEEPALIVE = 4.0  # seconds an idle pooled connection is kept (the engines close theirs at 5)
CLOSE = {"Connection": "close"}

# Whether the connection the current task's last engine call took had carried a request
# before. Set by the connector inside the call, in the caller's own context.
_reused: contextvars.ContextVar[bool] = contextvars.ContextVar("dx_reused", default=False)


class _Connector(aiohttp.TCPConnector):
    """The pool, remembering which connections have been handed out before."""

    def __init__(self) -> None:
        # limit=0: the engines' own slots limit concurrency, and the router before them.
        super().__init__(limit=0, keepalive_timeout=KEEPALIVE)
        self._used: weakref.WeakSet[object] = weakref.WeakSet()

    async def connect(
        self,
        req: ClientRequest,
        traces: list[Trace],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 - aiohttp's own signature
    ) -> aiohttp.connector.Connection:
        conn = await super().connect(req, traces, timeout)
        proto = conn.protocol
        _reused.set(proto in self._used)
        if proto is not None:
            self._used.add(proto)
        return conn


class Upstream:
    """DX's client side to its engines. `session` is the pool (probes and metrics use it
    too); `post` is an engine call with the retry rule above."""

    def __init__(self) -> None:
        self.session = aiohttp.ClientSession(connector=_Connector(), auto_decompress=False)
        # For the retry only: never pooled, so certainly a new connection.
        self._fresh = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=True), auto_decompress=False
        )

    async def post(
        self, replica: Replica, model: str, path: str, body: bytes, *, stream: bool
    ) -> aiohttp.ClientResponse:
        """POST `body` to the replica; the engine's response (any status). Unavailable (503)
        when the engine cannot be reached."""
        url = replica.base_url + path
        headers = {**replica.headers, **CLOSE} if stream else replica.headers
        _reused.set(False)
        try:
            return await self.session.post(
                url, data=body, headers=headers, timeout=ENGINE_READ_TIMEOUT
            )
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
            if not _reused.get() or replica.state is not EngineState.READY:
                raise _not_answering(model) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _unreachable(model, exc) from None
        try:  # the engine had closed that connection: the request never reached it
            return await self._fresh.post(
                url, data=body, headers=headers, timeout=ENGINE_READ_TIMEOUT
            )
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
            raise _not_answering(model) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _unreachable(model, exc) from None

    async def close(self) -> None:
        await self.session.close()
        await self._fresh.close()


def _not_answering(model: str) -> EngineDropped:
    return EngineDropped(
        f"the engine serving '{model}' closed the connection without answering; it may be "
        "restarting — retry in a few seconds",
        retry_after=2,
    )


def _unreachable(model: str, exc: BaseException) -> Unavailable:
    what = "did not answer in time" if isinstance(exc, TimeoutError) else "sent a broken reply"
    return Unavailable(
        f"the engine serving '{model}' {what}; it may be restarting — retry in a few seconds",
        retry_after=2,
    )
