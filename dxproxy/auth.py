"""API keys: the one generated on first start, and the middleware that checks them."""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from dxproxy.errors import error_response

KEY_FILE_NAME = "api-key"
# Paths anyone may call: the liveness probes of Ollama clients and load balancers.
OPEN_PATHS = frozenset({"/", "/health"})


@dataclass(frozen=True, slots=True)
class KeyFile:
    path: Path
    key: str
    created: bool  # True on first start: the one time the key is printed


def ensure_api_key(state_dir: Path) -> KeyFile:
    """Read the key from `state_dir/api-key`, generating it (0600, dir 0700) on first start."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = state_dir / KEY_FILE_NAME
    try:
        key = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        key = ""
    if key:
        return KeyFile(path, key, created=False)
    key = "dx-" + secrets.token_urlsafe(32)
    # 0600 at creation: the key is never readable by others, not even briefly. An existing
    # empty file (a failed first start) is refilled, and made private if it was not.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(key + "\n")
    return KeyFile(path, key, created=True)


def presented_key(request: web.Request) -> str | None:
    """The key from `Authorization: Bearer KEY`, or Basic auth with the key as password
    (what LangChain sends for `http://user:KEY@host` URLs)."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        return value.strip() or None
    if scheme == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2] or None
    return None


def auth_middleware(*, keys: tuple[str, ...], key_file: Path | None) -> Middleware:
    """Checks every request but the open paths against `keys` (added only when auth is on)."""
    if not keys:
        raise ValueError("auth_middleware needs at least one key")
    accepted = tuple(k.encode() for k in keys)
    where = f"the key is in {key_file}" if key_file else "the key is in your dx config"

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS and request.method in ("GET", "HEAD"):
            return await handler(request)
        key = presented_key(request)
        if key is None:
            message = f"missing API key: send the header 'Authorization: Bearer <key>'; {where}"
        else:
            candidate = key.encode()
            # Compare with every key, in constant time, so timing reveals nothing.
            ok = False
            for k in accepted:
                ok |= hmac.compare_digest(candidate, k)
            if ok:
                return await handler(request)
            message = f"invalid API key; {where}"
        return error_response(
            request,
            401,
            message,
            code="invalid_api_key",
            headers={"WWW-Authenticate": 'Bearer realm="dx"'},
        )

    return check
