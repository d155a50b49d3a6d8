"""The door: what every connection and request passes before any key is checked.

- a connection guard around aiohttp's protocol: at most `server.max_connections` connections
  (and `max_connections_per_client` from one address), and a request head must arrive within
  `server.header_timeout` (aiohttp has no header timeout of its own: a client that never ends
  its headers, a "slow loris", would hold its connection forever);
- `server.body_timeout` for reading a request body, which is read here, once, before the
  handler (aiohttp keeps it for `request.read()`), and `client_max_size` for its size;
- the Host guard against DNS rebinding when DX listens on loopback (as Ollama has);
- CORS: preflights answered without a key for allowed origins (local ones by default, as
  Ollama), other origins refused;
- the client address, from X-Forwarded-For only when the peer is a trusted proxy.
"""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import logging
import math
import resource
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, cast

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from dxproxy.config import ServerConfig
from dxproxy.errors import ApiError, error_response

log = logging.getLogger("dx.door")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
CLIENT = web.RequestKey("dx.client", str)
CORS = web.RequestKey("dx.cors", dict[str, str])

# Ollama's defaults (envconfig.AllowedOrigins): local web pages and desktop app shells.
LOCAL_ORIGINS = (
    *(
        f"{scheme}://{host}{port}"
        for host in ("localhost", "127.0.0.1", "0.0.0.0", "[::1]")
        for scheme in ("http", "https")
        for port in ("", ":*")
    ),
    "app://*",
    "file://*",
    "tauri://*",
    "vscode-webview://*",
    "vscode-file://*",
    "chrome-extension://*",
    "moz-extension://*",
)
# What a browser may send and read: the key headers, and the rate-limit headers of a 429.
_ALLOW_HEADERS = "Authorization, Content-Type, X-Api-Key, X-Requested-With, Accept"
_ALLOW_METHODS = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
_EXPOSE_HEADERS = ", ".join(
    [
        "Retry-After",
        *(
            f"x-ratelimit-{what}-{unit}"
            for unit in ("requests", "tokens")
            for what in ("limit", "remaining", "reset")
        ),
    ]
)


def parse_networks(items: Iterable[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(i, strict=False) for i in items)


def _ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None


def _trusted(ip: IPAddress | None, nets: tuple[IPNetwork, ...]) -> bool:
    return ip is not None and any(ip in n for n in nets)


def client_address(peer: str, forwarded_for: str | None, trusted: tuple[IPNetwork, ...]) -> str:
    """The client's address: the peer, or, when the peer is a trusted proxy, the right-most
    X-Forwarded-For entry that is not itself a trusted proxy (entries to its left were written
    by the client and prove nothing)."""
    if not forwarded_for or not _trusted(_ip(peer), trusted):
        return peer
    client = peer
    for part in reversed(forwarded_for.split(",")):
        ip = _ip(part)
        if ip is None:
            break  # garbage from the client: stop at the last address a proxy vouched for
        client = str(ip)
        if not _trusted(ip, trusted):
            break
    return client


def host_allowed(host_header: str, bound: str, extra: tuple[str, ...]) -> bool:
    """Whether a Host header names this machine (DNS-rebinding guard for loopback binds)."""
    host = host_header.strip().lower()
    if host.startswith("["):
        host = host[1 : host.find("]")] if "]" in host else host[1:]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    if host in ("", "localhost", bound.lower()) or host.endswith(".localhost"):
        return True
    ip = _ip(host)
    if ip is not None and (ip.is_loopback or ip.is_unspecified):
        return True
    return any(fnmatch.fnmatchcase(host, pattern.lower()) for pattern in extra)


def origin_allowed(origin: str, patterns: tuple[str, ...]) -> bool:
    origin = origin.strip().lower()
    return any(p == "*" or fnmatch.fnmatchcase(origin, p.lower()) for p in patterns)


def door_middleware(server: ServerConfig) -> Middleware:
    """Client address, Host guard, CORS: all decided from the request head alone."""
    trusted = parse_networks(server.trusted_proxies)
    origins = (*LOCAL_ORIGINS, *server.cors_origins)
    guard_host = server.is_loopback

    @web.middleware
    async def door(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await _door(request, handler)
        finally:
            # The next request head on this connection gets its own header_timeout, once
            # this request's body was read to the end (else aiohttp drains or closes it).
            transport = request.transport
            guard = transport.get_protocol() if transport is not None else None
            if isinstance(guard, _Guard) and request.content.is_eof():
                guard.expect_head()

    async def _door(request: web.Request, handler: Handler) -> web.StreamResponse:
        request[CLIENT] = client_address(
            request.remote or "", request.headers.get("X-Forwarded-For"), trusted
        )
        if guard_host and not host_allowed(
            request.headers.get("Host", ""), server.host, server.allowed_hosts
        ):
            return error_response(
                request,
                403,
                "this Host is not allowed: dx listens on loopback and answers only requests "
                "addressed to localhost (a guard against DNS rebinding); add the name to "
                "server.allowed_hosts to allow it",
            )
        origin = request.headers.get("Origin")
        if origin is not None:
            if not origin_allowed(origin, origins):
                return error_response(
                    request,
                    403,
                    "this browser origin is not allowed; add it to server.cors_origins",
                )
            cors = {
                "Access-Control-Allow-Origin": origin,
                "Access-Control-Expose-Headers": _EXPOSE_HEADERS,
                "Vary": "Origin",
            }
            if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
                # A preflight carries no credentials by design: answer it before the key check.
                cors["Access-Control-Allow-Methods"] = _ALLOW_METHODS
                cors["Access-Control-Allow-Headers"] = request.headers.get(
                    "Access-Control-Request-Headers", _ALLOW_HEADERS
                )
                cors["Access-Control-Max-Age"] = "600"
                return web.Response(status=204, headers=cors)
            # Added as the response is prepared (cors_headers): errors and streams too.
            request[CORS] = cors
        return await handler(request)

    return door


async def cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """An `on_response_prepare` hook: the allowed origin's CORS headers on every response,
    streams included (a stream's headers leave before its handler returns)."""
    cors = request.get(CORS)
    if cors is not None:
        response.headers.update(cors)


def body_middleware(server: ServerConfig) -> Middleware:
    """Reads the body, once, with a deadline (after the key check: strangers' bodies are
    never read). A client that trickles its body must not hold a handler; aiohttp keeps the
    bytes, so the handler's own read() returns them."""
    body_timeout = server.body_timeout

    @web.middleware
    async def body(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.body_exists:
            try:
                data = await asyncio.wait_for(request.read(), body_timeout)
            except TimeoutError:
                raise ApiError(
                    408,
                    f"the request body did not arrive within {body_timeout:g} s "
                    "(server.body_timeout)",
                ) from None
            if not _utf8_json(data):
                raise ApiError(400, "the request body is not valid UTF-8 (JSON must be UTF-8)")
        return await handler(request)

    return body


def _utf8_json(body: bytes) -> bool:
    """False for a JSON-looking body that is not UTF-8 (RFC 8259 requires it). Checked once
    here so that no decoder behind can fail on it with an encoding error (a 500). Other
    bodies (a blob upload) are left to their handler."""
    if body.isascii() or body.lstrip()[:1] not in (b"{", b"["):
        return True  # the common case costs one pass over the bytes, no copy
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


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
        elif self.per_client[peer] >= self.per_client_limit and not _trusted(
            _ip(peer), self.exempt
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


class _Guard(asyncio.Protocol):
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
        lambda: _Guard(protocol_factory(), conns),
        server.host,
        server.port,
        reuse_address=True,
        backlog=128,
    )
