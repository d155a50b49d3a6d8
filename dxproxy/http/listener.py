"""The connection guard: what every connection passes before aiohttp parses a request.

A raw asyncio protocol around aiohttp's own: at most `server.max_connections` connections
(and `max_connections_per_client` from one address), and a request head must arrive within
`server.header_timeout` (aiohttp has no header timeout of its own: a client that never ends
its headers, a "slow loris", would hold its connection forever). Refusals are canned HTTP
answers written straight to the socket (503 busy, 408 too slow).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import resource
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, cast

from dxproxy.config import ServerConfig

log = logging.getLogger("dx.door")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_networks(items: Iterable[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(i, strict=False) for i in items)


def ip_of(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None


def is_trusted(ip: IPAddress | None, nets: tuple[IPNetwork, ...]) -> bool:
    return ip is not None and any(ip in n for n in nets)


def runner_options(server: ServerConfig) -> dict[str, Any]:
    """aiohttp's own connection limits: the keep-alive idle timeout and the head's sizes."""
    return {
        "keepalive_timeout": server.keepalive_timeout,
        "max_line_size": 8190,
        "max_field_size": 8190,
    }


_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Connection: close\r\nRetry-After: 1\r\nContent-Length: %d\r\n\r\n%s"
)
_SLOW = (
    b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
    b"Connection: close\r\nContent-Length: %d\r\n\r\n%s"
)


def _canned(template: bytes, message: str) -> bytes:
    body = b'{"error":"' + message.encode() + b'"}'
    return template % (len(body), body)


class _Connections:
    """Live connection counts, shared by every guard of one listener."""

    def __init__(self, server: ServerConfig) -> None:
        self.total = 0
        self.per_client: Counter[str] = Counter()
        self.limit = server.max_connections
        self.per_client_limit = server.max_connections_per_client
        self.header_timeout = server.header_timeout
        self.exempt = parse_networks(server.trusted_proxies)  # a proxy carries many clients
        self.busy = _canned(_BUSY, "too many connections; try again shortly")
        self.slow = _canned(_SLOW, f"request headers not received within {self.header_timeout:g} s")
        self.lingering = 0  # refused connections waiting for their answer to leave
        self._said = -math.inf  # when the last refusal was logged (at most once a minute)

    def refuse_reason(self, peer: str) -> str | None:
        """Why a new connection from `peer` is refused, or None to accept it."""
        if self.total >= self.limit:
            why = f"{self.total} connections are open (server.max_connections)"
        elif self.per_client[peer] >= self.per_client_limit and not is_trusted(
            ip_of(peer), self.exempt
        ):
            why = (
                f"{self.per_client[peer]} connections from {peer} are open "
                "(server.max_connections_per_client; if it is a proxy, list it in "
                "server.trusted_proxies)"
            )
        else:
            return None
        now = time.monotonic()
        if now - self._said > 60:
            self._said = now
            log.warning("refusing connections with 503: %s", why)
        return why


class Guard(asyncio.Protocol):
    """Wraps aiohttp's per-connection protocol: refuses connections over the limits and cuts
    those whose request head does not arrive within `header_timeout`: the first head from the
    connection's start, later ones from their first byte (the door tells the guard when a
    request is over). The idle time between requests is aiohttp's keep-alive timer's."""

    def __init__(self, inner: asyncio.Protocol, conns: _Connections) -> None:
        self._inner = inner
        self._conns = conns
        self._peer = ""
        self._counted = False
        self._timer: asyncio.TimerHandle | None = None
        self._tail = b""
        self._transport: asyncio.Transport | None = None
        self._done = False  # refused or cut: incoming bytes are dropped
        self._between = False  # a request ended; the next byte starts a new head

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        conns = self._conns
        peer = transport.get_extra_info("peername")
        self._peer = str(peer[0]) if peer else ""
        if conns.refuse_reason(self._peer) is not None:
            self._hang_up(conns.busy)
            return
        self._counted = True
        conns.total += 1
        conns.per_client[self._peer] += 1
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(conns.header_timeout, self._too_slow)
        self._inner.connection_made(transport)

    def _too_slow(self) -> None:
        self._timer = None
        if self._transport is not None and not self._transport.is_closing():
            log.debug("closing a connection from %s: no request head in time", self._peer)
            self._hang_up(self._conns.slow)

    def _hang_up(self, answer: bytes) -> None:
        """Answer and close. Closing a socket with unread input sends a reset that can destroy
        the answer in flight, so the write side is shut first and the close follows a moment
        later (at once when many refused connections are already lingering)."""
        transport = self._transport
        assert transport is not None
        self._done = True
        transport.write(answer)
        conns = self._conns
        if conns.lingering >= 256 or not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        conns.lingering += 1

        def close() -> None:
            conns.lingering -= 1
            transport.close()

        asyncio.get_running_loop().call_later(1.0, close)

    def expect_head(self) -> None:
        if self._timer is None and not self._done:
            self._between = True
            self._tail = b""

    def data_received(self, data: bytes) -> None:
        if self._done:
            return
        if self._between:
            self._between = False
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._conns.header_timeout, self._too_slow)
        if self._timer is not None:
            seen = self._tail + data
            if b"\r\n\r\n" in seen or b"\n\n" in seen:
                self._timer.cancel()
                self._timer = None
                self._tail = b""
            else:
                self._tail = seen[-3:]
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self._done or not self._counted:
            return None
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._counted:
            return
        self._counted = False
        conns = self._conns
        conns.total -= 1
        conns.per_client[self._peer] -= 1
        if conns.per_client[self._peer] <= 0:
            del conns.per_client[self._peer]  # bounded: only live peers are kept
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


def _raise_file_limit(max_connections: int) -> None:
    """Each connection is a file descriptor; the usual soft limit (1024) would stop accepting
    (EMFILE) before max_connections does. Raise it towards the hard limit, as Go servers do."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2 * max_connections + 256  # engine connections, logs, the state files
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        if new < want:
            log.warning(
                "open files are limited to %d (ulimit -n); server.max_connections %d may hit "
                "it: raise LimitNOFILE= (systemd) or lower max_connections",
                new,
                max_connections,
            )


async def listen(
    protocol_factory: Callable[[], asyncio.Protocol], server: ServerConfig
) -> asyncio.Server:
    """Listen on server.host:port with the connection guard around `protocol_factory`
    (an aiohttp `runner.server`). Close the returned server before `runner.cleanup()`."""
    conns = _Connections(server)
    _raise_file_limit(server.max_connections)
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: Guard(protocol_factory(), conns),
        server.host,
        server.port,
        reuse_address=True,
        backlog=128,
    )
