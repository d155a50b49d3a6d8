"""Keys: `dx keys create|list|revoke`, scopes, admin routes, revocation on a running server,
the brute-force guard."""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dxproxy.http.auth import FailureGuard
from dxproxy.keys.store import KeyRing, builtin_record, create_key, read_usage
from tests.conftest import DX, DxProcess, fake_model, start_dx


def dx_keys(*args: str, state: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*DX, "keys", *args, "--state-dir", str(state)], capture_output=True,
                          text=True, check=check, timeout=60)


def chat(dx: DxProcess, key: str, model: str = "fake", **headers: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": False}
    return httpx.post(dx.url + "/api/chat", json=body, timeout=30,
                      headers={"Authorization": f"Bearer {key}", **headers})


def test_cli_create_list_revoke(tmp_path: Path) -> None:
    state = tmp_path / "state"
    made = dx_keys("create", "alice", "--models", "fake,other", "--rpm", "60", "--tpm", "1000",
                   "--concurrency", "2", "--expires", "2099-01-01", state=state)
    key = made.stdout.strip()
    assert made.stdout == key + "\n" and key.startswith("dx-") and len(key) > 40  # key alone
    store = state / "keys.json"
    assert store.stat().st_mode & 0o777 == 0o600
    assert key not in store.read_text()  # only its digest is kept
    dx_keys("create", "ops", "--admin", state=state)
    again = dx_keys("create", "alice", state=state, check=False)
    assert again.returncode != 0 and "exists" in again.stderr
    listing = dx_keys("list", state=state).stdout
    assert "alice" in listing and "fake,other" in listing and "2099-01-01" in listing
    assert "ops" in listing and "+admin" in listing
    assert key not in listing and key[7:] not in listing and "digest" not in listing
    gone = dx_keys("revoke", "alice", state=state)
    assert "revoked key 'alice'" in gone.stdout
    assert "alice" not in dx_keys("list", state=state).stdout
    missing = dx_keys("revoke", "alice", state=state, check=False)
    assert missing.returncode != 0 and "no key named 'alice'" in missing.stderr
    bad = dx_keys("create", "api-key", state=state, check=False)
    assert bad.returncode != 0 and "invalid key name" in bad.stderr
    past = dx_keys("create", "late", "--expires", "2001-01-01", state=state, check=False)
    assert past.returncode != 0 and "in the past" in past.stderr


@pytest.fixture
def keyed(tmp_path: Path) -> Iterator[DxProcess]:
    models = {"fake": fake_model(aliases=["fk"]), "other": fake_model()}
    dx = start_dx(tmp_path, models, extra={
        "server": {"trusted_proxies": ["127.0.0.1"]},
        "auth": {"enabled": True, "max_failures": 5, "keys": ["config-key-0123456789"]}})
    yield dx
    dx.stop()  # a no-op if the test stopped it


def test_scope_admin_and_revocation_on_a_running_server(keyed: DxProcess) -> None:
    dx = keyed
    try:
        state = dx.state_dir
        scoped = dx_keys("create", "alice", "--models", "fake", state=state).stdout.strip()
        # A key made while dx runs works within a second (not polled: each early try would
        # count as a failed guess).
        time.sleep(1.0)
        assert chat(dx, scoped).status_code == 200
        assert chat(dx, scoped, model="fk:latest").status_code == 200  # an alias is the model
        denied = chat(dx, scoped, model="other")
        assert denied.status_code == 403
        assert "may not use the model 'other'" in denied.json()["error"]
        openai = httpx.post(dx.url + "/v1/chat/completions", timeout=30,
                            headers={"Authorization": f"Bearer {scoped}"},
                            json={"model": "other", "messages": [{"role": "user", "content": "x"}]})
        assert openai.status_code == 403 and openai.json()["error"]["type"] == "permission_error"
        # Admin routes need an admin key; the first-start key and config keys are admin keys.
        admin = httpx.get(dx.url + "/admin/models", headers={"Authorization": f"Bearer {scoped}"})
        assert admin.status_code == 403 and "admin key" in admin.json()["error"]
        for key in (dx.key, "config-key-0123456789"):
            passed = httpx.get(dx.url + "/admin/models", headers={"Authorization": f"Bearer {key}"})
            assert passed.status_code != 403  # past the key check (404 until admin routes exist)
            assert chat(dx, key, model="other").status_code == 200
        # Revoked while running: refused within a second, no restart.
        dx_keys("revoke", "alice", state=state)
        t0 = time.monotonic()
        while chat(dx, scoped).status_code == 200:
            assert time.monotonic() - t0 < 1.0, "a revoked key still worked after 1 s"
            time.sleep(0.05)
        assert chat(dx, scoped).status_code == 401
        assert chat(dx, dx.key).status_code == 200
    finally:
        dx.stop()
    # Last used is recorded (flushed at the latest when dx stops); never the key.
    usage = read_usage(dx.state_dir)
    assert "api-key" in usage and "alice" in usage
    listing = dx_keys("list", state=dx.state_dir).stdout
    api_key_row = listing.splitlines()[1]
    assert api_key_row.startswith("api-key")
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d", api_key_row)  # a last-used time


def test_expired_key_is_refused(keyed: DxProcess) -> None:
    dx = keyed
    try:
        key, _ = create_key(dx.state_dir, "brief", expires=time.time() + 3)
        time.sleep(1.0)  # the server notices the new store
        assert chat(dx, key).status_code == 200
        time.sleep(2.5)
        late = chat(dx, key)
        assert late.status_code == 401 and "expired" in late.json()["error"]
    finally:
        dx.stop()


def test_brute_force_guard(keyed: DxProcess) -> None:
    dx = keyed
    try:
        attacker = {"X-Forwarded-For": "203.0.113.66"}  # dx trusts 127.0.0.1 as a proxy here
        for i in range(5):
            assert chat(dx, f"dx-guess-{i}", **attacker).status_code == 401
        blocked = chat(dx, "dx-guess-5", **attacker)
        assert blocked.status_code == 429 and "too many failed API key attempts" in blocked.text
        assert 50 <= int(blocked.headers["Retry-After"]) <= 60
        # Even the right key is not checked from there while blocked: guessing is stopped.
        assert chat(dx, dx.key, **attacker).status_code == 429
        # Everyone else is served.
        assert chat(dx, dx.key, **{"X-Forwarded-For": "198.51.100.7"}).status_code == 200
        # A missing key is not a guess (a client's first try without one).
        for _ in range(10):
            assert httpx.get(dx.url + "/api/tags",
                             headers={"X-Forwarded-For": "198.51.100.8"}).status_code == 401
    finally:
        dx.stop()


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


async def test_key_ring_reloads_and_flushes(tmp_path: Path) -> None:
    ring = KeyRing(tmp_path, (builtin_record("api-key", "dx-builtin-key-000000", "state"),))
    ring.load()
    assert ring.lookup(b"dx-builtin-key-000000") is not None
    assert ring.lookup(b"dx-builtin-key-000001") is None
    assert ring.lookup("dx-\udcff".encode("utf-8", "surrogateescape")) is None
    key, _ = await asyncio.to_thread(create_key, tmp_path, "bob", rpm=5)
    assert ring.lookup(key.encode()) is None
    assert await ring.refresh()
    found = ring.lookup(key.encode())
    assert found is not None and found.name == "bob" and found.rpm == 5
    assert not await ring.refresh()  # unchanged: nothing re-read
    ring.touch(found)
    await ring.flush()
    assert "bob" in read_usage(tmp_path)
    (tmp_path / "keys.json").write_text("{broken")
    assert not await ring.refresh()  # a damaged store keeps the keys loaded before
    assert ring.lookup(key.encode()) is not None


def test_files_written_as_root_belong_to_the_state_directory_owner(tmp_path: Path) -> None:
    """`sudo dx keys create` on a systemd install (state dir owned by the dx user) must not
    leave a root-owned 0600 store the server cannot read."""
    import os

    if os.geteuid() != 0:
        pytest.skip("only root can give files away")  # CI and this machine run as root
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chown(state, 65534, 65534)
    create_key(state, "alice")
    for name in ("keys.json", ".keys.lock"):
        st = (state / name).stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (65534, 65534, 0o600), name


async def test_an_unreadable_store_keeps_the_builtin_keys_and_is_retried(tmp_path: Path) -> None:
    from dxproxy.keys.store import KeyStoreError

    (tmp_path / "keys.json").mkdir()  # unreadable as a file, even for root
    ring = KeyRing(tmp_path, (builtin_record("api-key", "dx-builtin-key-000000", "state"),))
    with pytest.raises(KeyStoreError, match="cannot read"):
        ring.load()
    assert ring.lookup(b"dx-builtin-key-000000") is not None
    (tmp_path / "keys.json").rmdir()
    key, _ = create_key(tmp_path, "bob")
    assert await ring.refresh()
    assert ring.lookup(key.encode()) is not None


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
