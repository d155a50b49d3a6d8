"""The door: what every request passes before any key is checked (the gate of
dxproxy/http/auth.py runs these steps in its one middleware).

- (before it, per connection: the guard of dxproxy/http/listener.py);
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
import logging

from aiohttp import web

from dxproxy.config import ServerConfig
from dxproxy.http.errors import ApiError, error_response
from dxproxy.http.listener import Guard, IPNetwork, ip_of, is_trusted, parse_networks
from dxproxy.http.state import CLIENT, CORS

log = logging.getLogger("dx.door")


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


def client_address(peer: str, forwarded_for: str | None, trusted: tuple[IPNetwork, ...]) -> str:
    """The client's address: the peer, or, when the peer is a trusted proxy, the right-most
    X-Forwarded-For entry that is not itself a trusted proxy (entries to its left were written
    by the client and prove nothing)."""
    if not forwarded_for or not is_trusted(ip_of(peer), trusted):
        return peer
    client = peer
    for part in reversed(forwarded_for.split(",")):
        ip = ip_of(part)
        if ip is None:
            break  # garbage from the client: stop at the last address a proxy vouched for
        client = str(ip)
        if not is_trusted(ip, trusted):
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
    ip = ip_of(host)
    if ip is not None and (ip.is_loopback or ip.is_unspecified):
        return True
    return any(fnmatch.fnmatchcase(host, pattern.lower()) for pattern in extra)


def origin_allowed(origin: str, patterns: tuple[str, ...]) -> bool:
    origin = origin.strip().lower()
    return any(p == "*" or fnmatch.fnmatchcase(origin, p.lower()) for p in patterns)


class Door:
    """The door's checks for one server config, as steps the gate (dxproxy/http/auth.py) runs
    in a row inside its one middleware."""

    def __init__(self, server: ServerConfig) -> None:
        self.server = server
        self.trusted = parse_networks(server.trusted_proxies)
        self.origins = (*LOCAL_ORIGINS, *server.cors_origins)
        self.guard_host = server.is_loopback

    def admit(self, request: web.Request) -> web.StreamResponse | None:
        """Client address, Host guard, CORS, decided from the request head alone: None lets
        the request on; a response (a refusal, a CORS preflight's answer) ends it here."""
        server = self.server
        request[CLIENT] = client_address(
            request.remote or "", request.headers.get("X-Forwarded-For"), self.trusted
        )
        if self.guard_host and not host_allowed(
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
        if origin is None:
            return None
        if not origin_allowed(origin, self.origins):
            return error_response(
                request, 403, "this browser origin is not allowed; add it to server.cors_origins"
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
        return None

    async def read_body(self, request: web.Request) -> None:
        """Reads the body, once, with a deadline (the gate calls it after the key check:
        strangers' bodies are never read). A client that trickles its body must not hold a
        handler; aiohttp keeps the bytes, so the handler's own read() returns them."""
        body_timeout = self.server.body_timeout
        try:
            if request.content.is_eof():  # it came with the head: no wait, no timer
                data = await request.read()
            else:
                async with asyncio.timeout(body_timeout):  # no task per request, as wait_for
                    data = await request.read()
        except TimeoutError:
            raise ApiError(
                408,
                f"the request body did not arrive within {body_timeout:g} s (server.body_timeout)",
            ) from None
        if not _utf8_json(data):
            raise ApiError(400, "the request body is not valid UTF-8 (JSON must be UTF-8)")

    @staticmethod
    def done(request: web.Request) -> None:
        """The next request head on this connection gets its own header_timeout, once this
        request's body was read to the end (else aiohttp drains or closes it)."""
        transport = request.transport
        guard = transport.get_protocol() if transport is not None else None
        if isinstance(guard, Guard) and request.content.is_eof():
            guard.expect_head()


def cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """The allowed origin's CORS headers, on every response as it is prepared (the gate's
    `on_response_prepare` hook calls this), streams included: a stream's headers leave
    before its handler returns."""
    cors = request.get(CORS)
    if cors is not None:
        response.headers.update(cors)


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
