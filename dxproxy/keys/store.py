"""API key records: `dx keys create|list|revoke` write them, the server reads them.

The store is `keys.json` in the state directory (0600, written to a temporary file and renamed
into place, so a reader never sees half a file). It holds a SHA-256 digest of each key, never
the key: a key is 256 random bits, so nobody can search for one whose digest matches, and a
slow password hash (bcrypt, argon2) would only add CPU time per request. Those exist to
protect guessable human passwords, which keys are not.

Last-used times live in a second file, `keys-usage.json`, written only by the server (every
10 s at most, off the event loop), so the server and the CLI never overwrite each other.
The server re-reads `keys.json` when its stat changes (checked twice a second, off the loop):
a revoked key stops working within a second, with no restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import hmac
import logging
import os
import re
import secrets
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import orjson

from dxproxy.config import KeyLimits

log = logging.getLogger("dx.keys")

STORE_FILE = "keys.json"
USAGE_FILE = "keys-usage.json"
_LOCK_FILE = ".keys.lock"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
RESERVED = ("api-key", "config-")  # names of the keys that do not come from the store
RELOAD_EVERY = 0.5  # seconds between stat checks of keys.json
FLUSH_EVERY = 10.0  # seconds between writes of last-used times

Source = Literal["store", "state", "config", "anonymous"]


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One API key, without the key: what the server needs to decide about a request."""

    name: str
    digest: str  # sha256 of the key, hex
    prefix: str = ""  # the key's first characters, to recognise it in a list
    admin: bool = False
    models: tuple[str, ...] | None = None  # None: every model
    rpm: int | None = None
    tpm: int | None = None
    concurrency: int | None = None
    created: float = 0.0
    expires: float | None = None
    source: Source = "store"

    def limits(self, defaults: KeyLimits) -> KeyLimits:
        """This key's limits; the ones it does not set come from `limits.per_key`."""
        return KeyLimits(
            rpm=self.rpm if self.rpm is not None else defaults.rpm,
            tpm=self.tpm if self.tpm is not None else defaults.tpm,
            concurrency=self.concurrency if self.concurrency is not None else defaults.concurrency,
        )

    def expired(self, now: float) -> bool:
        return self.expires is not None and now >= self.expires

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["models"] = list(self.models) if self.models is not None else None
        del data["source"]
        return data

    @staticmethod
    def from_json(data: dict[str, Any]) -> KeyRecord:
        models = data.get("models")
        return KeyRecord(
            name=str(data["name"]),
            digest=str(data["digest"]),
            prefix=str(data.get("prefix", "")),
            admin=bool(data.get("admin", False)),
            models=tuple(str(m) for m in models) if isinstance(models, list) else None,
            rpm=_opt_int(data.get("rpm")),
            tpm=_opt_int(data.get("tpm")),
            concurrency=_opt_int(data.get("concurrency")),
            created=float(data.get("created") or 0.0),
            expires=float(data["expires"]) if data.get("expires") is not None else None,
        )


def _opt_int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def digest(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()


def new_key() -> str:
    return "dx-" + secrets.token_urlsafe(32)


def builtin_record(name: str, key: str, source: Source) -> KeyRecord:
    """An admin record for the first-start key or a key from the config."""
    return KeyRecord(
        name=name, digest=digest(key.encode()), prefix=key[:7], admin=True, source=source
    )


# --- the store file (blocking; the CLI calls these directly, the server from a thread) ---


class KeyStoreError(Exception):
    pass


def read_store(state_dir: Path) -> list[KeyRecord]:
    path = state_dir / STORE_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise KeyStoreError(
            f"cannot read {path}: {exc.strerror}; run `dx keys` as the user dx serves as "
            "(e.g. sudo -u dx dx keys ...)"
        ) from None
    try:
        data = orjson.loads(raw)
        return [KeyRecord.from_json(k) for k in data["keys"]]
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise KeyStoreError(f"{path} is damaged ({exc}); fix or remove it") from None


def _write_json(path: Path, data: Any) -> None:
    """Atomic, private write: a temporary 0600 file in the same folder, fsynced, renamed."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        _same_owner(fd, path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _same_owner(fd: int, state_dir: Path) -> None:
    """Files root writes (`sudo dx keys create`) belong to the state directory's owner, the
    user dx serves as under systemd: a root-owned 0600 store would lock the server out."""
    if os.geteuid() == 0:
        st = os.stat(state_dir)
        os.fchown(fd, st.st_uid, st.st_gid)


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    """Serialises writers (two `dx keys` at once) so that neither loses the other's change."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(state_dir / _LOCK_FILE, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        _same_owner(fd, state_dir)
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def create_key(
    state_dir: Path,
    name: str,
    *,
    models: tuple[str, ...] | None = None,
    rpm: int | None = None,
    tpm: int | None = None,
    concurrency: int | None = None,
    admin: bool = False,
    expires: float | None = None,
) -> tuple[str, KeyRecord]:
    """A new key and its stored record. The key itself is returned once and kept nowhere."""
    if not NAME.match(name) or name.startswith(RESERVED):
        raise KeyStoreError(
            f"invalid key name {name!r}: use 1-64 letters, digits and . _ @ - "
            "(not 'api-key' or 'config-...', which name the built-in keys)"
        )
    with _locked(state_dir):
        records = read_store(state_dir)
        if any(r.name == name for r in records):
            raise KeyStoreError(f"a key named {name!r} exists; revoke it first or pick a name")
        key = new_key()
        record = KeyRecord(
            name=name,
            digest=digest(key.encode()),
            prefix=key[:7],
            admin=admin,
            models=models,
            rpm=rpm,
            tpm=tpm,
            concurrency=concurrency,
            created=time.time(),
            expires=expires,
        )
        _write_json(
            state_dir / STORE_FILE,
            {"version": 1, "keys": [r.to_json() for r in [*records, record]]},
        )
    return key, record


def revoke_key(state_dir: Path, name: str) -> KeyRecord:
    with _locked(state_dir):
        records = read_store(state_dir)
        gone = next((r for r in records if r.name == name), None)
        if gone is None:
            known = ", ".join(r.name for r in records) or "none"
            raise KeyStoreError(f"no key named {name!r} (keys: {known})")
        _write_json(
            state_dir / STORE_FILE,
            {"version": 1, "keys": [r.to_json() for r in records if r.name != name]},
        )
    return gone


def read_usage(state_dir: Path) -> dict[str, float]:
    try:
        data = orjson.loads((state_dir / USAGE_FILE).read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): float(v) for k, v in data.items() if isinstance(v, int | float)}


# --- the server's view ---


def _stamp(path: Path) -> tuple[int, ...] | None:
    """What changes when the store does: a rename (a new inode), an edit (mtime, size), or a
    chown/chmod (ctime) that makes an unreadable store readable."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)


class KeyRing:
    """The keys a running server accepts: the store's, the first-start key and the config's.

    `lookup` is synchronous and cheap (one SHA-256 and a dict lookup); `run()` keeps the store
    fresh and writes last-used times, both from threads so the event loop never waits on disk.
    """

    def __init__(self, state_dir: Path, builtin: tuple[KeyRecord, ...]) -> None:
        self.state_dir = state_dir
        self._builtin = builtin
        self._by_digest: dict[str, KeyRecord] = {}
        self._stamp: tuple[int, ...] | None = None
        self._used: dict[str, float] = {}
        self._dirty = False
        self._index(())

    def set_builtin(self, builtin: tuple[KeyRecord, ...]) -> None:
        """New keys from the config (a reload): in effect at once, the store's kept."""
        stored = [r for r in self._by_digest.values() if r not in self._builtin]
        self._builtin = builtin
        self._index(stored)

    def _index(self, stored: tuple[KeyRecord, ...] | list[KeyRecord]) -> None:
        by_digest = {r.digest: r for r in stored}
        by_digest.update({r.digest: r for r in self._builtin})  # built-ins win a collision
        self._by_digest = by_digest

    def load(self) -> None:
        """Blocking first load (at start-up, before serving)."""
        stamp = _stamp(self.state_dir / STORE_FILE)
        self._index(read_store(self.state_dir))
        self._stamp = stamp  # only once read: an unreadable store is retried when it changes

    @property
    def records(self) -> list[KeyRecord]:
        return list(self._by_digest.values())

    def lookup(self, key: bytes) -> KeyRecord | None:
        d = digest(key)
        record = self._by_digest.get(d)
        # The dict finds the candidate by its digest; the final check is constant-time.
        if record is None or not hmac.compare_digest(record.digest, d):
            return None
        return record

    def touch(self, record: KeyRecord) -> None:
        self._used[record.name] = time.time()
        self._dirty = True

    async def refresh(self) -> bool:
        """Re-read the store if it changed on disk; True if it did."""
        stamp = await asyncio.to_thread(_stamp, self.state_dir / STORE_FILE)
        if stamp == self._stamp:
            return False
        try:
            stored = await asyncio.to_thread(read_store, self.state_dir)
        except KeyStoreError as exc:
            # Keep serving with the keys we had; a damaged file must not lock everyone out.
            log.error("%s; keeping the keys loaded before", exc)
            self._stamp = stamp
            return False
        self._stamp = stamp
        before = {r.name for r in self._by_digest.values()}
        self._index(stored)
        after = {r.name for r in self._by_digest.values()}
        if before - after:
            log.info("keys revoked: %s", ", ".join(sorted(before - after)))
        if after - before:
            log.info("keys added: %s", ", ".join(sorted(after - before)))
        return True

    async def flush(self) -> None:
        if not self._dirty:
            return
        self._dirty = False
        used = dict(self._used)

        def write() -> None:
            merged = {**read_usage(self.state_dir), **used}
            _write_json(self.state_dir / USAGE_FILE, merged)

        try:
            await asyncio.to_thread(write)
        except OSError as exc:
            log.warning("cannot record when keys were last used: %s", exc)

    async def run(self) -> None:
        """Forever: watch the store, flush last-used times. Cancel to stop (flushes first)."""
        loop = asyncio.get_running_loop()
        next_flush = loop.time() + FLUSH_EVERY
        try:
            while True:
                await asyncio.sleep(RELOAD_EVERY)
                try:
                    await self.refresh()
                    if loop.time() >= next_flush:
                        next_flush = loop.time() + FLUSH_EVERY
                        await self.flush()
                except Exception:  # a bug here must not stop revocations from applying
                    log.exception("watching the key store failed; trying again")
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.flush())


def anonymous(client: str) -> KeyRecord:
    """The record of a request when auth is off: limits then apply per client address."""
    return KeyRecord(name=f"anonymous@{client}", digest="", source="anonymous")


__all__ = [
    "KeyRecord",
    "KeyRing",
    "KeyStoreError",
    "anonymous",
    "builtin_record",
    "create_key",
    "digest",
    "read_store",
    "read_usage",
    "revoke_key",
]
