"""Rate limits per key: requests/minute, tokens/minute, requests in flight.

The algorithm is a sliding window log, exact by construction: a request passes when fewer
than `rpm` requests passed in the 60 s before it, so 200 concurrent attempts against 10/min
give exactly 10 passes, never 11 at a window edge as fixed windows do. Tokens are charged
after a request, from the engine's real usage (`charge_tokens`), into one-second buckets; a
key whose last 60 s used `tpm` tokens or more is refused until enough of them age out.

Two backends behind one interface: in memory (one process; checks are synchronous, so the
event loop makes them atomic) and Redis, where one Lua script checks and records everything
in one round trip, atomically, on Redis's clock, so several DX instances share one limit
exactly. Revoked key digests live in a Redis set the same script consults.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from dxproxy.config import KeyLimits, LimitsConfig

log = logging.getLogger("dx.limits")

WINDOW = 60.0  # seconds: the "minute" of rpm and tpm
LEASE_TTL = 3600.0  # a concurrency slot held by a crashed instance frees itself after this
REDIS_PREFIX = "dx:"
REVOKED_SET = REDIS_PREFIX + "revoked"
_RETRY_REDIS = 1.0  # seconds to skip Redis after it failed, so requests don't each time out


@dataclass(slots=True)
class Decision:
    """The verdict on one request, with what the x-ratelimit-* headers report."""

    allowed: bool
    limits: KeyLimits
    reason: str = ""  # requests | tokens | concurrency | revoked | unavailable
    requests_used: int = 0  # in the window, this request included when allowed
    tokens_used: int = 0
    reset_requests: float = 0.0  # seconds until one more request is possible
    reset_tokens: float = 0.0
    lease: str = ""  # the concurrency slot to give back
    degraded: bool = False  # limits were not checked (Redis down, failing open)

    @property
    def retry_after(self) -> float:
        if self.reason == "tokens":
            return self.reset_tokens
        if self.reason == "concurrency":
            return 1.0
        return self.reset_requests

    def headers(self) -> dict[str, str]:
        h: dict[str, str] = {}
        if self.degraded:
            return h
        rpm, tpm = self.limits.rpm, self.limits.tpm
        if rpm:
            h["x-ratelimit-limit-requests"] = str(rpm)
            h["x-ratelimit-remaining-requests"] = str(max(0, rpm - self.requests_used))
            h["x-ratelimit-reset-requests"] = _duration(self.reset_requests)
        if tpm:
            h["x-ratelimit-limit-tokens"] = str(tpm)
            h["x-ratelimit-remaining-tokens"] = str(max(0, tpm - self.tokens_used))
            h["x-ratelimit-reset-tokens"] = _duration(self.reset_tokens)
        if not self.allowed:
            h["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
        return h

    def message(self, key: str) -> str:
        if self.reason == "requests":
            return (
                f"rate limit reached for key '{key}': {self.limits.rpm} requests per minute; "
                f"retry in {self.retry_after:.1f} s"
            )
        if self.reason == "tokens":
            return (
                f"rate limit reached for key '{key}': {self.limits.tpm} tokens per minute; "
                f"retry in {self.retry_after:.1f} s"
            )
        if self.reason == "concurrency":
            return (
                f"too many requests in flight for key '{key}' (limit "
                f"{self.limits.concurrency}); wait for one to finish"
            )
        if self.reason == "revoked":
            return "this API key was revoked"
        return "rate limits cannot be checked now (Redis is unreachable); try again shortly"


def _duration(seconds: float) -> str:
    """OpenAI's reset format: "20ms", "1.5s", "6m0s"."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs}s"


def _any(limits: KeyLimits) -> bool:
    return bool(limits.rpm or limits.tpm or limits.concurrency)


class Limiter(ABC):
    @abstractmethod
    async def acquire(self, bucket: str, limits: KeyLimits, digest: str = "") -> Decision:
        """Check and, if allowed, record one request of `bucket` (a key name)."""

    @abstractmethod
    async def release(self, bucket: str, decision: Decision) -> None:
        """The request is over: free its concurrency slot."""

    @abstractmethod
    def charge(self, bucket: str, tokens: int) -> None:
        """Add tokens a finished request used (synchronous: handlers call it inline)."""

    async def close(self) -> None:  # noqa: B027 - most backends hold nothing
        pass


@dataclass(slots=True)
class _Bucket:
    requests: deque[float] = field(default_factory=deque)
    tokens: deque[tuple[float, int]] = field(default_factory=deque)
    token_sum: int = 0
    in_flight: int = 0

    def prune(self, now: float) -> None:
        cutoff = now - WINDOW
        while self.requests and self.requests[0] <= cutoff:
            self.requests.popleft()
        while self.tokens and self.tokens[0][0] <= cutoff:
            self.token_sum -= self.tokens.popleft()[1]

    @property
    def empty(self) -> bool:
        return not self.requests and not self.tokens and not self.in_flight


class MemoryLimiter(Limiter):
    """One process's limits. Every method runs without awaiting, hence atomically."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._last_sweep = 0.0

    def _bucket(self, name: str, now: float) -> _Bucket:
        if now - self._last_sweep > WINDOW:  # forget idle buckets (anonymous addresses)
            self._last_sweep = now
            for key, old in list(self._buckets.items()):
                old.prune(now)
                if old.empty:
                    del self._buckets[key]
        b = self._buckets.get(name)
        if b is None:
            b = self._buckets[name] = _Bucket()
        b.prune(now)
        return b

    async def acquire(self, bucket: str, limits: KeyLimits, digest: str = "") -> Decision:
        return self.acquire_now(bucket, limits)

    def acquire_now(self, bucket: str, limits: KeyLimits) -> Decision:
        if not _any(limits):
            return Decision(True, limits)
        now = self._clock()
        b = self._bucket(bucket, now)
        d = Decision(True, limits, requests_used=len(b.requests), tokens_used=b.token_sum)
        if b.requests:
            d.reset_requests = b.requests[0] + WINDOW - now
        if b.tokens:
            d.reset_tokens = b.tokens[0][0] + WINDOW - now
        if limits.concurrency and b.in_flight >= limits.concurrency:
            d.allowed, d.reason = False, "concurrency"
        elif limits.rpm and len(b.requests) >= limits.rpm:
            d.allowed, d.reason = False, "requests"
        elif limits.tpm and b.token_sum >= limits.tpm:
            d.allowed, d.reason = False, "tokens"
            d.reset_tokens = self._tokens_free_in(b, limits.tpm, now)
        if not d.allowed:
            return d
        b.requests.append(now)
        d.requests_used += 1
        if len(b.requests) == 1:
            d.reset_requests = WINDOW
        if limits.concurrency:
            b.in_flight += 1
            d.lease = "1"
        return d

    @staticmethod
    def _tokens_free_in(b: _Bucket, tpm: int, now: float) -> float:
        """Seconds until the window's token sum drops below `tpm`."""
        total = b.token_sum
        for t, n in b.tokens:
            total -= n
            if total < tpm:
                return t + WINDOW - now
        return WINDOW

    async def release(self, bucket: str, decision: Decision) -> None:
        if decision.lease:
            b = self._buckets.get(bucket)
            if b is not None and b.in_flight > 0:
                b.in_flight -= 1

    def charge(self, bucket: str, tokens: int) -> None:
        if tokens <= 0:
            return
        now = self._clock()
        b = self._bucket(bucket, now)
        b.tokens.append((now, tokens))
        b.token_sum += tokens


# One round trip decides and records. KEYS: requests zset, tokens hash, leases zset, revoked
# set. ARGV: digest, rpm, tpm, concurrency, request id, window ms, lease ttl ms.
# Returns {code, requests used, tokens used, ms until a request frees, ms until tokens free};
# code 0 allowed, 1 requests, 2 tokens, 3 concurrency, 4 revoked.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[1] ~= '' and redis.call('SISMEMBER', KEYS[4], ARGV[1]) == 1 then
  return {4, 0, 0, 0, 0}
end
local rpm, tpm, conc = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local window, ttl = tonumber(ARGV[6]), tonumber(ARGV[7])
local count, reset_req, used, reset_tok = 0, 0, 0, 0
if rpm > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
  count = redis.call('ZCARD', KEYS[1])
  if count > 0 then
    local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    reset_req = tonumber(oldest[2]) + window - now
  end
end
if tpm > 0 then
  local cutoff = math.floor((now - window) / 1000)
  local fields = redis.call('HGETALL', KEYS[2])
  local secs = {}
  for i = 1, #fields, 2 do
    local sec = tonumber(fields[i])
    if sec <= cutoff then
      redis.call('HDEL', KEYS[2], fields[i])
    else
      used = used + tonumber(fields[i + 1])
      table.insert(secs, {sec, tonumber(fields[i + 1])})
    end
  end
  table.sort(secs, function(a, b) return a[1] < b[1] end)
  local left = used
  for _, s in ipairs(secs) do
    reset_tok = (s[1] + 1) * 1000 + window - now
    left = left - s[2]
    if left < tpm then break end
  end
end
if conc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if redis.call('ZCARD', KEYS[3]) >= conc then
    return {3, count, used, reset_req, reset_tok}
  end
end
if rpm > 0 and count >= rpm then return {1, count, used, reset_req, reset_tok} end
if tpm > 0 and used >= tpm then return {2, count, used, reset_req, reset_tok} end
if rpm > 0 then
  redis.call('ZADD', KEYS[1], now, ARGV[5])
  redis.call('PEXPIRE', KEYS[1], window)
  count = count + 1
  if count == 1 then reset_req = window end
end
if conc > 0 then
  redis.call('ZADD', KEYS[3], now + ttl, ARGV[5])
  redis.call('PEXPIRE', KEYS[3], ttl)
end
return {0, count, used, reset_req, reset_tok}
"""
_CHARGE = """
local t = redis.call('TIME')
redis.call('HINCRBY', KEYS[1], t[1], tonumber(ARGV[1]))
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2]) / 1000) + 2)
return 0
"""
_REASONS = {1: "requests", 2: "tokens", 3: "concurrency", 4: "revoked"}


class RedisLimiter(Limiter):
    """Limits shared by every DX instance on one Redis. While Redis is unreachable, requests
    are served without limits (`limits.redis_failure: open`) or refused with a 503 (`closed`);
    either way one line is logged when it goes away and one when it is back."""

    def __init__(self, url: str, *, fail_open: bool = True) -> None:
        import redis.asyncio as aioredis  # imported only when configured

        self.url = url
        self.fail_open = fail_open
        self._redis = aioredis.Redis.from_url(
            url, socket_timeout=0.5, socket_connect_timeout=0.5, health_check_interval=10
        )
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._charge = self._redis.register_script(_CHARGE)
        self._down_until = 0.0
        self._down = False
        self._tasks: set[asyncio.Task[Any]] = set()

    @staticmethod
    def _keys(bucket: str) -> list[str]:
        base = f"{REDIS_PREFIX}rl:{bucket}:"
        return [base + "req", base + "tok", base + "lease", REVOKED_SET]

    def _failed(self, exc: BaseException) -> None:
        self._down_until = time.monotonic() + _RETRY_REDIS
        if not self._down:
            self._down = True
            choice = (
                "serving WITHOUT rate limits until it is back (limits.redis_failure: open)"
                if self.fail_open
                else "refusing requests with 503 until it is back (limits.redis_failure: closed)"
            )
            log.error("Redis at %s is unreachable (%s): %s", self._safe_url, exc, choice)

    def _ok(self) -> None:
        if self._down:
            self._down = False
            log.warning("Redis at %s is back: rate limits apply again", self._safe_url)

    @property
    def _safe_url(self) -> str:
        return self.url.split("@")[-1]  # no password in the log

    def _unavailable(self, limits: KeyLimits) -> Decision:
        if self.fail_open:
            return Decision(True, limits, degraded=True)
        return Decision(False, limits, reason="unavailable")

    async def acquire(self, bucket: str, limits: KeyLimits, digest: str = "") -> Decision:
        if not _any(limits) and not digest:
            return Decision(True, limits)
        if time.monotonic() < self._down_until:
            return self._unavailable(limits)
        rid = secrets.token_hex(8)
        args: list[str | int] = [
            digest,
            limits.rpm or 0,
            limits.tpm or 0,
            limits.concurrency or 0,
            rid,
            int(WINDOW * 1000),
            int(LEASE_TTL * 1000),
        ]
        import redis.exceptions

        try:
            code, count, used, reset_req, reset_tok = await self._acquire(
                keys=self._keys(bucket), args=args
            )
        except (redis.exceptions.RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)
            return self._unavailable(limits)
        self._ok()
        d = Decision(
            code == 0,
            limits,
            reason=_REASONS.get(int(code), ""),
            requests_used=int(count),
            tokens_used=int(used),
            reset_requests=int(reset_req) / 1000,
            reset_tokens=int(reset_tok) / 1000,
            lease=rid if code == 0 and limits.concurrency else "",
        )
        return d

    async def release(self, bucket: str, decision: Decision) -> None:
        if not decision.lease:
            return
        import redis.exceptions

        try:
            await self._redis.zrem(self._keys(bucket)[2], decision.lease)
        except (redis.exceptions.RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)  # the lease expires by itself after LEASE_TTL

    def charge(self, bucket: str, tokens: int) -> None:
        if tokens <= 0 or time.monotonic() < self._down_until:
            return
        task = asyncio.get_running_loop().create_task(self._charge_later(bucket, tokens))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _charge_later(self, bucket: str, tokens: int) -> None:
        import redis.exceptions

        try:
            await self._charge(keys=self._keys(bucket)[1:2], args=[tokens, int(WINDOW * 1000)])
        except (redis.exceptions.RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)

    async def close(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._redis.aclose()


def make_limiter(limits: LimitsConfig) -> Limiter:
    if limits.redis_url:
        return RedisLimiter(limits.redis_url, fail_open=limits.redis_failure == "open")
    return MemoryLimiter()


async def revoke_everywhere(url: str, digest: str) -> None:
    """Adds a revoked key's digest to the shared set every DX instance checks."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        await client.sadd(REVOKED_SET, digest)
    finally:
        await client.aclose()
