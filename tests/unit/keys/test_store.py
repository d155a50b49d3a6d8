"""The key store and the server's key ring, on files in a temporary state folder."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from dxproxy.keys.store import KeyRing, builtin_record, create_key, read_usage


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
