"""The in-memory rate limiter, with a clock the test moves."""

from __future__ import annotations

import pytest

from dxproxy.config import KeyLimits
from dxproxy.keys.limits import MemoryLimiter


def test_sliding_window_is_exact_at_the_edges() -> None:
    now = [0.0]
    lim = MemoryLimiter(clock=lambda: now[0])
    limits = KeyLimits(rpm=3)
    for t in (0.0, 10.0, 20.0):
        now[0] = t
        assert lim.acquire_now("k", limits).allowed
    now[0] = 59.9
    d = lim.acquire_now("k", limits)
    assert not d.allowed and d.reason == "requests" and d.retry_after == pytest.approx(0.1)
    now[0] = 60.0  # the request of t=0 has left the window: one more, not a new batch of 3
    assert lim.acquire_now("k", limits).allowed
    assert not lim.acquire_now("k", limits).allowed
    now[0] = 70.0
    assert lim.acquire_now("k", limits).allowed
    assert not lim.acquire_now("k", limits).allowed


def test_tokens_free_up_as_they_age() -> None:
    now = [0.0]
    lim = MemoryLimiter(clock=lambda: now[0])
    limits = KeyLimits(tpm=100)
    assert lim.acquire_now("k", limits).allowed
    lim.charge("k", 60)
    now[0] = 30.0
    assert lim.acquire_now("k", limits).allowed
    lim.charge("k", 50)
    now[0] = 31.0
    d = lim.acquire_now("k", limits)
    assert not d.allowed and d.reason == "tokens"
    assert d.reset_tokens == pytest.approx(29.0)  # when the 60 of t=0 leave, 50 < 100
    assert d.headers()["x-ratelimit-remaining-tokens"] == "0"
    now[0] = 60.0
    assert lim.acquire_now("k", limits).allowed


def test_idle_buckets_are_forgotten() -> None:
    now = [0.0]
    lim = MemoryLimiter(clock=lambda: now[0])
    for i in range(1000):
        lim.acquire_now(f"anonymous@10.0.{i // 256}.{i % 256}", KeyLimits(rpm=5))
    now[0] = 200.0
    lim.acquire_now("k", KeyLimits(rpm=5))
    assert len(lim._buckets) == 1
