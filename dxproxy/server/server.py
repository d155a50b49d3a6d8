"""Runs DX: binds the port, starts the engines, serves, and shuts down in order.

`serve` reads top to bottom as the process's life: `_start` (the app, the port, the
engines), `_announce` (the banner once the engines settled, systemd told), `_wait` (live
config until a stop signal), `_shutdown` (stop accepting, let in-flight requests finish,
bounded by server.shutdown_timeout, then stop the engines). A second SIGINT/SIGTERM exits at
once; the engines die with DX anyway (they are spawned with PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import time
from collections.abc import Callable

import psutil
from aiohttp import web

from dxproxy.config import Config
from dxproxy.http import listener
from dxproxy.http.state import GATEWAY, LOADER, RELOADER, ROUTER, SUPERVISOR
from dxproxy.keys.keyfile import KeyFile
from dxproxy.models.catalog import build_catalog
from dxproxy.routing.gateway import Gateway
from dxproxy.routing.router import Router
from dxproxy.server import banner
from dxproxy.server.app import make_app
from dxproxy.server.reload import config_path_from
from dxproxy.server.sdnotify import Notifier
from supervisors import Supervisor

log = logging.getLogger("dx.server")

DRAIN_POLL = 0.05  # seconds between looks at what a drain waits for


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
        self.key = key
        self.out = out
        self.should_exit = asyncio.Event()
        self.serving = False  # set once engines settled: SIGHUP reloads from then on
        self.app: web.Application | None = None
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
        if not self.serving or self.app is None:
            log.warning("SIGHUP received while starting: reload again once DX is ready")
            return
        log.info("SIGHUP received: reloading %s", self.config_path or "the config")
        task = asyncio.get_running_loop().create_task(self.app[RELOADER].reload("SIGHUP"))
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
        runner = await self._runner()
        accepting: asyncio.Server | None = None
        try:
            accepting = await self._listen(runner)
            if accepting is None:
                return 1
            settled = await self._start_engines(runner.app)
            await self._announce(runner.app, settled, t0)
            await self._wait(runner.app, settled)
        finally:
            await self._shutdown(runner, accepting)
            watchdog.cancel()  # pings go on while draining: the loop is still alive
            self.notifier.close()
            log.info("stopped")
        return 0

    # -- start -------------------------------------------------------------------------------

    async def _runner(self) -> web.AppRunner:
        """The app, set up (its services built), not yet listening."""
        keys = tuple(self.config.auth.keys) + ((self.key.key,) if self.key else ())
        catalog = await asyncio.to_thread(build_catalog, self.config)  # reads model files
        self.app = make_app(
            self.config,
            catalog,
            api_keys=keys,
            config_path=self.config_path,
            on_reloading=self.notifier.reloading,
            on_reloaded=self.notifier.ready,
        )
        runner = web.AppRunner(
            self.app,
            handler_cancellation=True,  # a client that leaves cancels its engine request
            access_log=None,
            shutdown_timeout=self.config.server.shutdown_timeout,
            **listener.runner_options(self.config.server),  # keep-alive timeout, head sizes
        )
        await runner.setup()
        return runner

    async def _listen(self, runner: web.AppRunner) -> asyncio.Server | None:
        """The port, bound before any engine starts (a busy port costs no engine start)."""
        host, port = self.config.server.host, self.config.server.port
        try:
            # The door's connection guard: connection limits and the header timeout.
            assert runner.server is not None
            return await listener.listen(runner.server, self.config.server)
        except OSError as exc:
            self.out(
                f"dx: cannot listen on {host}:{port}: {exc.strerror}. Is another "
                "server (Ollama?) using the port? Stop it, or pick one with --port."
            )
            return None

    async def _start_engines(self, app: web.Application) -> asyncio.Task[None]:
        """Starts the engines; the returned task ends once every one settled (ready or
        failed). The banner shows progress meanwhile."""
        supervisor = app[SUPERVISOR]
        await supervisor.apply(app[LOADER].desired(self.config))  # returns at once
        # Start-up lasts until every engine settles: allow the slowest startup_timeout.
        slowest = max((m.startup_timeout for m in self.config.models), default=0.0)
        self.notifier.extend_timeout(slowest + 30)
        self.notifier.status(f"starting {len(supervisor.all_replicas())} engine(s)")
        settled = asyncio.create_task(supervisor.wait_settled())
        stop = asyncio.create_task(self.should_exit.wait())
        progress = asyncio.create_task(banner.show_progress(self.config, supervisor))
        await asyncio.wait({settled, stop}, return_when=asyncio.FIRST_COMPLETED)
        progress.cancel()
        stop.cancel()
        await asyncio.gather(progress, stop, return_exceptions=True)
        return settled

    # -- announce ----------------------------------------------------------------------------

    async def _announce(self, app: web.Application, settled: asyncio.Task[None], t0: float) -> None:
        """The banner in one block, once the engines settled (or a stop cut the start short:
        the header still shows, with a new key's one showing)."""
        supervisor = app[SUPERVISOR]
        # The GPUs the supervisor placed engines on (read once, through NVML).
        hardware = banner.detect_hardware(await supervisor.inventory())
        for line in banner.header(self.config, hardware, self.key):
            self.out(line)
        if not settled.done():
            return
        self._models_banner(supervisor, t0)

    def _models_banner(self, supervisor: Supervisor, t0: float) -> None:
        replicas = {m.name: supervisor.replicas(m.name) for m in self.config.models}
        for line in banner.model_lines(self.config, replicas, supervisor.placement_notes):
            self.out(line)
        failed = sum(1 for r in supervisor.all_replicas() if r.error)
        verdict = f" ({failed} engine(s) FAILED, see above)" if failed else ""
        self.out(f"  ready in {time.time() - t0:.1f} s{verdict}")
        ready = len(supervisor.all_replicas()) - failed
        failures = f", {failed} FAILED" if failed else ""
        host, port = self.config.server.host, self.config.server.port
        self.notifier.ready(f"serving on {host}:{port}; {ready} engine(s) ready{failures}")

    # -- serve -------------------------------------------------------------------------------

    async def _wait(self, app: web.Application, settled: asyncio.Task[None]) -> None:
        """Live config from here on (the file watched, SIGHUP and /admin/reload answered),
        until a stop signal."""
        self.serving = True
        # What start-up made (modules, config, app) lives as long as DX: moved out of the
        # collector's sight, so its full collections, paid by requests, stop re-scanning it.
        gc.collect()
        gc.freeze()
        watcher = asyncio.create_task(app[RELOADER].watch())
        try:
            await self.should_exit.wait()
        finally:
            settled.cancel()
            watcher.cancel()

    # -- shutdown ----------------------------------------------------------------------------

    async def _drain(self, router: Router, gateway: Gateway | None) -> None:
        """Draining, still listening: /ready says 503 and /fleet/state `draining`, so load
        balancers and gateways stop sending; a new request gets a 503 its gateway retries
        elsewhere; the requests running finish (within shutdown_timeout). With none running
        (a standalone DX, mostly) this returns at once."""
        router.drain()
        deadline = time.monotonic() + self.config.server.shutdown_timeout

        def busy() -> int:  # on engines here, and relayed to a fleet's nodes
            return router.busy() + (gateway.in_flight if gateway is not None else 0)

        if busy():
            log.info("draining: %d request(s) running; taking no new ones", busy())
        # The router and the gateway own the counts; a look every 50 ms is all a drain needs.
        while busy() and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(DRAIN_POLL)

    async def _shutdown(self, runner: web.AppRunner, accepting: asyncio.Server | None) -> None:
        """Draining requests, then stopping engines (the app's cleanup), each up to
        shutdown_timeout."""
        self.serving = False
        self.notifier.stopping(timeout=2 * self.config.server.shutdown_timeout + 5)
        if self.app is not None and ROUTER in self.app:
            await self._drain(self.app[ROUTER], self.app.get(GATEWAY))
        if accepting is not None:
            accepting.close()  # stop accepting; runner.cleanup() drains the connections
        await runner.cleanup()
