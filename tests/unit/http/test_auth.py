"""The key gate's rules on their own: the brute-force guard, model scopes."""

from __future__ import annotations

from dxproxy.http.auth import FailureGuard
from tests.conftest import fake_model


def test_failure_guard_window_and_memory_bound() -> None:
    now = [1000.0]
    guard = FailureGuard(3, clock=lambda: now[0])
    for _ in range(3):
        assert guard.blocked_for("10.0.0.1") == 0
        guard.failed("10.0.0.1")
    assert 59 < guard.blocked_for("10.0.0.1") <= 60
    # One IPv6 host rotating through its /64 counts as one client.
    for i in range(3):
        guard.failed(f"2001:db8::{i + 1}")
    assert guard.blocked_for("2001:db8::ffff") > 0
    now[0] += 61
    assert guard.blocked_for("10.0.0.1") == 0
    for i in range(20_000):
        guard.failed(f"10.1.{i // 256}.{i % 256}")
    assert len(guard._failures) <= 10_000


def test_may_use_resolves_every_spelling() -> None:
    import yaml

    from dxproxy.config import load_config
    from dxproxy.http.auth import may_use
    from dxproxy.keys.store import KeyRecord

    models = {"fake": fake_model(aliases=["fk"]), "other": fake_model()}
    config = load_config(yaml.safe_dump({"models": models}))
    scoped = KeyRecord(name="a", digest="", models=("fk",))  # scoped by an alias
    assert may_use(config, None, "anything")  # auth off, or an open path
    assert may_use(config, KeyRecord(name="b", digest=""), "other")  # not scoped
    for spelling in ("fake", "FAKE", "fake:latest", "fk", "Fk:latest"):
        assert may_use(config, scoped, spelling), spelling
    for spelling in ("other", "Other:latest", "nothing"):
        assert not may_use(config, scoped, spelling), spelling
