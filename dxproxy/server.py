"""Runs DX: binds the port, starts the engines, serves, and shuts down in order.

Shutdown order: stop accepting connections, let in-flight requests finish (bounded by
server.shutdown_timeout), then stop the engines. A second SIGINT/SIGTERM exits at once; the
engines die with DX anyway (they are spawned with PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable

import psutil
from aiohttp import web

from dxproxy import banner, door
from dxproxy.app import make_app
from dxproxy.auth import KeyFile
from dxproxy.config import Config
from dxproxy.keys import SUPERVISOR
from dxproxy.loader import LOADER
from dxproxy.metrics import count_reload
from dxproxy.reload import RELOADER, Reloader, config_path_from
from dxproxy.sdnotify import Notifier

log = logging.getLogger("dx.server")


class Server:
    def __init__(
        self,
        config: Config,
        key: KeyFile | None,
        out: Callable[[str], None] = print,
        config_path: str | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path_from(config_path)
        self.reloader: Reloader | None = None
        self.key = key
        self.out = out
        self.should_exit = asyncio.Event()
        self._background: set[asyncio.Task[object]] = set()
        # systemd's Type=notify (a no-op outside systemd); reloads call notifier.reloading()
        # and notifier.ready() around their work.
        self.notifier = Notifier.from_environ()

    def handle_exit(self, sig: signal.Signals) -> None:
        if self.should_exit.is_set():
            log.warning("second %s: exiting now", sig.name)
            os._exit(1)
        log.info("%s received: shutting down", sig.name)
        self.should_exit.set()

    def handle_hup(self) -> None:
        if self.reloader is None:
            log.warning("SIGHUP received while starting: reload again once DX is ready")
            return
        log.info("SIGHUP received: reloading %s", self.config_path or "the config")
        task = asyncio.get_running_loop().create_task(self.reloader.reload("SIGHUP"))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def serve(self) -> int:
        # "ready in" counts from the process start, Python's own start-up included.
        t0 = psutil.Process().create_time()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.handle_exit, sig)
        # SIGHUP's default action would kill DX (and, through PDEATHSIG, its engines).
        loop.add_signal_handler(signal.SIGHUP, self.handle_hup)
        watchdog = asyncio.create_task(self.notifier.run_watchdog())
        keys = tuple(self.config.auth.keys) + ((self.key.key,) if self.key else ())
        app = make_app(self.config, api_keys=keys, key_file=self.key.path if self.key else None)
        reloader = Reloader(
            app,
            self.config_path,
            on_reloading=self.notifier.reloading,
            on_reloaded=self.notifier.ready,
            on_counted=count_reload,
        )
        app[RELOADER] = reloader
        runner = web.AppRunner(
            app,
            handler_cancellation=True,  # a client that leaves cancels its engine request
            access_log=None,
            shutdown_timeout=self.config.server.shutdown_timeout,
            **door.runner_options(self.config.server),  # keep-alive timeout, head sizes
        )
        await runner.setup()
        listener: asyncio.Server | None = None
        try:
            host, port = self.config.server.host, self.config.server.port
            try:
                # The door's connection guard: connection limits and the header timeout.
                assert runner.server is not None
                listener = await door.listen(runner.server, self.config.server)
            except OSError as exc:
                self.out(
                    f"dx: cannot listen on {host}:{port}: {exc.strerror}. Is another "
                    "server (Ollama?) using the port? Stop it, or pick one with --port."
                )
                return 1
            supervisor = app[SUPERVISOR]
            # Returns at once; the engines start meanwhile.
            await supervisor.apply(app[LOADER].desired(self.config))
            # Start-up lasts until every engine settles: allow the slowest startup_timeout.
            slowest = max((m.startup_timeout for m in self.config.models), default=0.0)
            self.notifier.extend_timeout(slowest + 30)
            self.notifier.status(f"starting {len(supervisor.all_replicas())} engine(s)")
            settled = asyncio.create_task(supervisor.wait_settled())
            stop = asyncio.create_task(self.should_exit.wait())
            progress = asyncio.create_task(banner.show_progress(self.config, supervisor))
            await asyncio.wait({settled, stop}, return_when=asyncio.FIRST_COMPLETED)
            progress.cancel()
            await asyncio.gather(progress, return_exceptions=True)
            # The banner in one block, once the engines settled (or a stop cut the start
            # short: the header still shows, with a new key's one showing).
            # The GPUs the supervisor placed engines on (read once, through NVML).
            hardware = banner.detect_hardware(await supervisor.inventory())
            for line in banner.header(self.config, hardware, self.key):
                self.out(line)
            if settled.done():
                replicas = {m.name: supervisor.replicas(m.name) for m in self.config.models}
                notes = supervisor.placement_notes
                for line in banner.model_lines(self.config, replicas, notes):
                    self.out(line)
                failed = sum(1 for r in supervisor.all_replicas() if r.error)
                verdict = f" ({failed} engine(s) FAILED, see above)" if failed else ""
                self.out(f"  ready in {time.time() - t0:.1f} s{verdict}")
                ready = len(supervisor.all_replicas()) - failed
                failures = f", {failed} FAILED" if failed else ""
                self.notifier.ready(f"serving on {host}:{port}; {ready} engine(s) ready{failures}")
            # Live config from here on: the file watched, SIGHUP and /admin/reload answered.
            self.reloader = reloader
            watcher = asyncio.create_task(reloader.watch())
            await stop
            settled.cancel()
            watcher.cancel()
        finally:
            # Draining requests, then stopping engines, each up to shutdown_timeout.
            self.notifier.stopping(timeout=2 * self.config.server.shutdown_timeout + 5)
            if listener is not None:
                listener.close()  # stop accepting; runner.cleanup() drains the connections
            await runner.cleanup()
            watchdog.cancel()  # pings go on while draining: the loop is still alive
            self.notifier.close()
            log.info("stopped")
        return 0
