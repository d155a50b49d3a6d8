"""Keys: `dx keys create|list|revoke`, scopes, admin routes, revocation on a running server,
the brute-force guard."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dxproxy.keys.store import create_key, read_usage
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


