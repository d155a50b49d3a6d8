"""Who may call DX, and how much: API keys, scopes, admin routes, the brute-force guard and
the per-key rate limits, as one middleware around the handlers (`Gate.middleware`).

Its steps, in a row (each only sees requests the step before let through):
    door (dxproxy/http/door.py: client address, Host guard, CORS)
    -> keys: which key, if any (401), brute-force guard (429), admin routes (403)
    -> body: read with a deadline (door.py)
    -> limits: model scope (403), rate limits (429), then the handler.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import ipaddress
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from dxproxy.config import Config
from dxproxy.http.door import Door, cors_headers
from dxproxy.http.errors import error_response
from dxproxy.http.state import API_KEY, CLIENT, DECISION, LIMITER, TOOLS_DROPPED, TRIMMED, USAGE
from dxproxy.keys.limits import Decision, Limiter, make_limiter
from dxproxy.keys.store import KeyRecord, KeyRing, KeyStoreError, anonymous, builtin_record

log = logging.getLogger("dx.auth")

# Paths anyone may call: the liveness probes of Ollama clients and load balancers, and the
# console's static page (it holds no data; what it shows needs an admin key: api/console.py).
OPEN_PATHS = frozenset({"/", "/health", "/ready", "/ui", "/ui/console.js", "/ui/console.css"})
ADMIN_PREFIX = "/admin"
# Admin keys only, like /admin (/metrics is open with server.metrics_open). /fleet/state is
# for gateways: they send fleet.node_key, which a node lists in auth.keys (admin keys).
ADMIN_PATHS = frozenset({"/metrics", "/fleet/state"})
WHERE = (
    "the first key is in the dx state directory (file api-key); "
    "more are made with: dx keys create NAME"
)
FAILURE_WINDOW = 60.0  # seconds over which auth.max_failures counts
_MAX_TRACKED = 10_000  # client addresses the brute-force guard remembers (oldest forgotten)


def _raw(value: str) -> bytes:
    # aiohttp decodes header bytes as UTF-8 with surrogateescape: this gives the bytes back
    # (a non-UTF-8 header is then just a wrong key, never an encoding error).
    return value.encode("utf-8", "surrogateescape")


def presented_key(request: web.Request) -> bytes | None:
    """The key from `Authorization: Bearer KEY`, `x-api-key: KEY`, or HTTP Basic with the key
    as the password (LangChain's `http://user:KEY@host`) or as the user name (`curl -u KEY:`)."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.strip().partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        return _raw(value.strip()) or None
    if scheme == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True)
        except ValueError:  # binascii.Error, or non-ASCII text
            return None
        user, _, password = decoded.partition(b":")
        return password or user or None
    api_key = request.headers.get("x-api-key", "").strip()
    return _raw(api_key) if api_key else None


def _group(address: str) -> str:
    """The unit the brute-force guard counts: one IPv4 address, or one IPv6 /64 (a single
    host usually has a whole /64 to rotate through)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return address


class FailureGuard:
    """Counts failed key checks per client address over a sliding minute; past the limit,
    the address gets 429s without its keys being checked. Memory stays bounded."""

    def __init__(self, max_failures: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_failures = max_failures
        self._clock = clock
        self._failures: collections.OrderedDict[str, collections.deque[float]] = (
            collections.OrderedDict()
        )

    def _now(self) -> float:
        return self._clock()

    def blocked_for(self, address: str) -> float:
        """Seconds this address must wait; 0 if it may try a key."""
        if not self._failures:  # the common case: no address parsed, no lookup
            return 0.0
        times = self._failures.get(_group(address))
        if not times:
            return 0.0
        now = self._now()
        while times and times[0] <= now - FAILURE_WINDOW:
            times.popleft()
        if len(times) < self.max_failures:
            return 0.0
        return times[0] + FAILURE_WINDOW - now

    def failed(self, address: str) -> None:
        group = _group(address)
        times = self._failures.pop(group, None) or collections.deque(maxlen=self.max_failures)
        times.append(self._now())
        self._failures[group] = times  # most recent last
        while len(self._failures) > _MAX_TRACKED:
            self._failures.popitem(last=False)


def _json_model(body: bytes) -> str | None:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    name = data.get("model") or data.get("name")  # Ollama's /api/show takes either
    return name if isinstance(name, str) else None


class Gate:
    """The key and limit checks of one app, and the resources they hold."""

    def __init__(self, config: Config, *, api_keys: tuple[str, ...]) -> None:
        self.config = config
        self.auth = config.auth.enabled
        self._state_keys = tuple(
            builtin_record("api-key", k, "state") for k in api_keys[len(config.auth.keys) :]
        )
        self.ring = KeyRing(config.server.state_dir, self._builtin(config))
        self.guard = FailureGuard(config.auth.max_failures)
        self.limiter: Limiter = make_limiter(config.limits)
        self.shared_revocations = bool(config.limits.redis_url)
        self.open_paths = OPEN_PATHS | (ADMIN_PATHS if config.server.metrics_open else set())
        self.door = Door(config.server)  # its settings stay until a restart

    def _builtin(self, config: Config) -> tuple[KeyRecord, ...]:
        from_config = tuple(
            builtin_record(f"config-{i + 1}", k, "config") for i, k in enumerate(config.auth.keys)
        )
        return self._state_keys + from_config

    def update(self, config: Config) -> None:
        """A reloaded config: its keys (auth.keys), scopes and per-key limits apply at once.
        The door's settings and the limiter's backend stay until a restart."""
        self.config = config
        self.ring.set_builtin(self._builtin(config))

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """The door, the key, the body, the limits: steps in a row in one middleware (a
        middleware per step cost every request a coroutine and an await per step)."""
        try:
            refused = self.door.admit(request) or self._key(request)
            if refused is not None:
                return refused
            if request.body_exists:
                await self.door.read_body(request)
            return await self._limited(request, handler)
        finally:
            self.door.done(request)

    def install(self, app: web.Application) -> None:
        app[LIMITER] = self.limiter
        app.cleanup_ctx.append(self._run)
        app.on_response_prepare.append(_gate_headers)

    async def _run(self, app: web.Application) -> AsyncIterator[None]:
        if self.auth:
            try:
                await asyncio.to_thread(self.ring.load)
            except KeyStoreError as exc:
                # The built-in keys still work; the store's keys do once it is readable.
                log.error("%s; serving with the built-in keys until it is fixed", exc)
            task = asyncio.create_task(self.ring.run())
        try:
            yield
        finally:
            if self.auth:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            await self.limiter.close()

    def _key(self, request: web.Request) -> web.StreamResponse | None:
        """Which key, if any (401), the brute-force guard (429), admin routes (403): None lets
        the request on, with its key record set (none on an open path)."""
        client = request.get(CLIENT) or request.remote or ""
        if not self.auth:
            request[API_KEY] = anonymous(client)
            return None
        if request.path in self.open_paths and request.method in ("GET", "HEAD"):
            return None
        wait = self.guard.blocked_for(client)
        if wait > 0:
            return error_response(
                request,
                429,
                f"too many failed API key attempts from {client}; retry in {math.ceil(wait)} s",
                code="too_many_auth_failures",
                headers={"Retry-After": str(math.ceil(wait))},
            )
        key = presented_key(request)
        record = self.ring.lookup(key) if key is not None else None
        if record is None or record.expired(time.time()):
            if key is None:
                message = (
                    "missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'; "
                    + WHERE
                )
            elif record is not None:
                when = datetime.fromtimestamp(record.expires or 0, UTC).strftime("%Y-%m-%d %H:%M")
                message = f"this API key expired on {when} UTC; ask for a new one"
                self.guard.failed(client)
            else:
                message = f"invalid API key; {WHERE}"
                self.guard.failed(client)
            return error_response(
                request,
                401,
                message,
                code="invalid_api_key",
                headers={"WWW-Authenticate": 'Bearer realm="dx"'},
            )
        admin_only = (
            request.path == ADMIN_PREFIX
            or request.path.startswith(ADMIN_PREFIX + "/")
            or request.path in ADMIN_PATHS
        )
        if admin_only and not record.admin:
            return error_response(
                request,
                403,
                f"the key '{record.name}' is not an admin key; admin routes need one "
                "(dx keys create NAME --admin)",
                code="permission_denied",
            )
        request[API_KEY] = record
        self.ring.touch(record)
        return None

    async def _limited(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Model scope (403) and rate limits (429), then the handler."""
        record = request.get(API_KEY)
        if record is None:  # an open path
            return await handler(request)
        if record.models is not None and request.body_exists:
            model = _json_model(await request.read())
            if model is not None and not may_use(self.config, record, model):
                allowed = ", ".join(record.models) or "none"
                return error_response(
                    request,
                    403,
                    f"the key '{record.name}' may not use the model '{model}' "
                    f"(it may use: {allowed})",
                    param="model",
                    code="model_not_allowed",
                )
        limits = record.limits(self.config.limits.per_key)
        digest = record.digest if self.shared_revocations else ""
        decision = await self.limiter.acquire(record.name, limits, digest)
        if not decision.allowed:
            status = {"revoked": 401, "unavailable": 503}.get(decision.reason, 429)
            return error_response(
                request,
                status,
                decision.message(record.name),
                code="rate_limit_exceeded" if status == 429 else None,
                headers=decision.headers(),
            )
        request[DECISION] = decision
        try:
            return await handler(request)
        finally:
            # Tokens/minute is charged with what the engine really counted, reported by the
            # handler (dxproxy/http/usage.py) once the reply or stream is complete.
            usage = request.get(USAGE)
            if usage is not None and limits.tpm:
                self.limiter.charge(record.name, usage.prompt + usage.completion)
            await self.limiter.release(record.name, decision)


def may_use(config: Config, record: KeyRecord | None, model: str) -> bool:
    """Whether a key's scope covers `model` (any spelling: alias, `:latest`, case). For
    handlers that list models (/api/tags, /v1/models) to show a key only its own."""
    if record is None or record.models is None:
        return True
    wanted = config.model(model)
    canonical = wanted.name if wanted else model
    for allowed in record.models:
        m = config.model(allowed)
        if (m.name if m else allowed) == canonical:
            return True
    return False


async def _gate_headers(request: web.Request, response: web.StreamResponse) -> None:
    """One `on_response_prepare` hook (each costs an await per response): CORS,
    X-DX-Trimmed-* on a trimmed chat, and x-ratelimit-* on every limited response, streams
    included (they are prepared before the handler ends, so a middleware could not add them
    afterwards)."""
    cors_headers(request, response)
    trimmed = request.get(TRIMMED)
    if trimmed is not None:  # a chat that outgrew the context (dxproxy/api/fit.py)
        response.headers["X-DX-Trimmed-Tokens"] = str(trimmed[0])
        response.headers["X-DX-Trimmed-Messages"] = str(trimmed[1])
    dropped = request.get(TOOLS_DROPPED)
    if dropped is not None:
        response.headers["X-DX-Dropped-Tools"] = str(dropped)
    decision: Decision | None = request.get(DECISION)
    if decision is not None:
        for name, value in decision.headers().items():
            response.headers.setdefault(name, value)
