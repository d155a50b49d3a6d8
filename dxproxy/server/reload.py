"""Live configuration: the config file is applied while DX serves, without a restart.

Three triggers, one path (`Reloader.reload`), one reload at a time:
- the file changes on disk (watchfiles watches its folder, so editors' atomic renames and
  Kubernetes' ConfigMap symlink swaps are seen; a change is applied only when the file's
  content differs from what is running);
- SIGHUP (systemd's ExecReload);
- `POST /admin/reload` (admin key), which answers with the outcome.

A reload reads and validates the whole file first. An invalid one changes nothing: the
error (file, key, why) is logged, counted, and shown by `GET /admin/reload`. A valid one
swaps the routing table, keys and limits at once (the next request sees the new config),
then has the supervisor reconcile the engines: new models start, removed ones drain,
changed ones are replaced blue/green, unchanged ones are not touched.

What needs a restart is kept as it runs, with a warning: the `server:` section (address,
port, state directory, the door's limits) and `auth.enabled`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dxproxy.config import Config, ConfigError, load_config
from dxproxy.models.catalog import build_catalog
from dxproxy.routing.live import Live
from dxproxy.routing.loader import Loader
from dxproxy.routing.router import Router
from supervisors import Supervisor

log = logging.getLogger("dx.reload")


@dataclass
class ReloadStatus:
    """What `GET /admin/reload` shows."""

    ok: int = 0
    failed: int = 0
    last_trigger: str = ""
    last_at: float = 0.0  # unix time of the last attempt
    last_error: str = ""  # the last failed reload's problems ("" once one succeeds again)
    last_warnings: list[str] = field(default_factory=list)
    in_progress: bool = False

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Reloader:
    """Given what a reload changes: the live config and catalog, the router's limits, the
    loader (which models should run) and the supervisor (which runs them); `hooks` are called
    with each new config right after the switch (the auth gate's keys and limits)."""

    def __init__(
        self,
        path: Path | None,
        *,
        live: Live,
        router: Router,
        loader: Loader,
        supervisor: Supervisor,
        hooks: Sequence[Callable[[Config], object]] = (),
        on_reloading: Callable[[], object] = lambda: None,
        on_reloaded: Callable[[str], object] = lambda _: None,
    ) -> None:
        self.path = path
        self.live = live
        self.router = router
        self.loader = loader
        self.supervisor = supervisor
        self.hooks = tuple(hooks)
        self.status = ReloadStatus()
        self._lock = asyncio.Lock()
        self._digest = self._read_digest() if path else b""  # what runs
        self._refused = b""  # the last content that failed: not retried until it changes
        # The file's own server section (before --host/--port), to tell when it changes.
        self._file_server = self._server_in_file()
        self._on_reloading = on_reloading
        self._on_reloaded = on_reloaded

    def _server_in_file(self) -> Any:
        if self.path is None:
            return None
        try:  # at start-up, before serving: a blocking read is fine here
            return load_config(self.path.read_text(encoding="utf-8"), source=str(self.path)).server
        except (OSError, ConfigError):
            return None

    def _read_digest(self) -> bytes:
        assert self.path is not None
        try:
            return hashlib.sha256(self.path.read_bytes()).digest()
        except OSError:
            return b""

    async def reload(self, trigger: str) -> ReloadStatus:
        """Read, validate and apply the config file. Never raises for a bad config."""
        async with self._lock:
            self.status.in_progress = True
            self.status.last_trigger = trigger
            self.status.last_at = time.time()
            self._on_reloading()
            try:
                await self._reload(trigger)
            finally:
                self.status.in_progress = False
                self._on_reloaded(self.status.last_error or "config applied")
            return self.status

    async def _reload(self, trigger: str) -> None:
        if self.path is None:
            self._fail(trigger, ["dx serves the embedded default: there is no file to reload"])
            return
        digest = b""
        try:
            text, digest = await asyncio.to_thread(self._read)
            new = await asyncio.to_thread(load_config, text, source=str(self.path))
            check_not_truncated(text, str(self.path))
        except ConfigError as exc:
            self._refused = digest
            self._fail(trigger, [str(exc)])
            return
        except OSError as exc:
            self._fail(trigger, [f"{self.path}: cannot read the config: {exc.strerror}"])
            return
        self._digest = self._refused = digest
        old = self.live.config
        new, warnings = keep_what_needs_a_restart(old, new, self._file_server)
        for warning in warnings:
            log.warning("%s", warning)
        catalog = await asyncio.to_thread(build_catalog, new)
        # The switch: from here on every request sees the new models, names, keys, limits.
        self.live.swap(new, catalog)
        self.router.limits = new.limits
        for hook in self.hooks:
            hook(new)
        log.info(
            "%s: config %s applied (%d model(s)); reconciling engines",
            trigger,
            self.path,
            len(new.models),
        )
        specs = self.loader.desired(new)  # on-demand models only while loaded
        problems = await self.supervisor.apply(specs, wait=True)
        self.status.last_warnings = warnings + problems
        if problems:
            for problem in problems:
                log.error("%s", problem)
        self.status.ok += 1
        self.status.last_error = ""

    def _read(self) -> tuple[str, bytes]:
        assert self.path is not None
        data = self.path.read_bytes()
        return data.decode("utf-8", errors="replace"), hashlib.sha256(data).digest()

    def _fail(self, trigger: str, problems: list[str]) -> None:
        self.status.failed += 1
        self.status.last_error = "\n".join(problems)
        log.error(
            "%s: config not reloaded, the running one stays:\n%s", trigger, self.status.last_error
        )

    async def watch(self) -> None:
        """Reload whenever the file's content changes (runs until cancelled)."""
        if self.path is None:
            return
        from watchfiles import awatch

        path = self.path
        # The watch starts once the engines have settled (minutes for vLLM): an edit made
        # meanwhile (a ConfigMap swapped while the node starts) is applied now, not lost;
        # looked at again a moment later, once the watch below is surely armed.
        await self._apply_if_changed()
        again = asyncio.create_task(self._apply_if_changed(after=1.0))

        def concerns_the_config(change: object, changed: str) -> bool:
            # The file itself (edited in place, or renamed over), or a Kubernetes ConfigMap
            # swap: the mounted file is a symlink through `..data`, itself swapped atomically.
            name = os.path.basename(changed)
            return name == path.name or name.startswith("..")

        try:
            async for _ in awatch(
                path.parent,
                watch_filter=concerns_the_config,
                debounce=200,
                step=50,
                recursive=False,
            ):
                await self._apply_if_changed()
        finally:
            again.cancel()

    async def _apply_if_changed(self, after: float = 0.0) -> None:
        await asyncio.sleep(after)
        digest = await asyncio.to_thread(self._read_digest)
        if digest and digest not in (self._digest, self._refused):
            await self.reload("file changed")


def check_not_truncated(text: str, source: str) -> None:
    """An editor saving in place empties the file, then writes it: a file without its
    `models:` section is taken for a save in progress, not as "remove every model"
    (write `models: {}` for that)."""
    data = yaml.safe_load(text) if text.strip() else None
    if not isinstance(data, dict) or "models" not in data:
        raise ConfigError(
            source,
            [
                "no models: section (a save in progress?); the running config stays. To remove "
                "every model, write `models: {}`"
            ],
        )


def keep_what_needs_a_restart(
    old: Config, new: Config, file_server: Any
) -> tuple[Config, list[str]]:
    """`new`, with the settings that cannot change while serving taken from `old`
    (`file_server`: the server section the running config's file had)."""
    warnings = []
    if file_server is not None and new.server != file_server:
        warnings.append(
            "server: changes to the server section take effect at the next restart "
            "(address, port, state directory and connection limits are fixed while serving)"
        )
    if new.auth.enabled != old.auth.enabled:
        warnings.append("auth.enabled: takes effect at the next restart")
    auth = dataclasses.replace(new.auth, enabled=old.auth.enabled)
    return dataclasses.replace(new, server=old.server, auth=auth), warnings


def config_path_from(path: str | None) -> Path | None:
    return Path(os.path.abspath(path)) if path else None
