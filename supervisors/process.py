"""One engine replica: one OS process, owned by one task, moved through `EngineState`.

The `run()` task is the only writer of the state. It spawns the engine in its own process
group (so stopping it stops its children too), asks the kernel to kill it if DX dies (even by
SIGKILL), probes it until it answers, watches it, and restarts it with exponential backoff
when it crashes, giving up after `MAX_FAILURES` failures within `FAILURE_WINDOW`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import logging
import os
import signal
import socket
import time
from collections.abc import Callable

import aiohttp

from dxproxy.config import ModelConfig
from supervisors.adapters import LOOPBACK, EngineAdapter
from supervisors.states import EngineState, StateChange, check_transition

log = logging.getLogger("dx.engine")

MAX_FAILURES = 5  # in FAILURE_WINDOW seconds, then give up until the config changes
FAILURE_WINDOW = 600.0
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
TAIL_LINES = 40
PR_SET_PDEATHSIG = 1

_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent(parent: int) -> Callable[[], None]:
    def preexec() -> None:  # runs in the child between fork and exec
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # DX died before prctl took effect
            os._exit(1)

    return preexec


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


class EngineStartError(RuntimeError):
    pass


class Replica:
    """One engine process serving one model. Read `state`; never set it from outside."""

    def __init__(
        self,
        model: ModelConfig,
        index: int,
        adapter: EngineAdapter,
        session: aiohttp.ClientSession,
        on_change: Callable[[Replica, StateChange], None],
        grace: float = 10.0,
    ) -> None:
        self.model = model
        self.index = index
        self.adapter = adapter
        self.id = f"{model.name}#{index}"
        self.capacity = adapter.parallel(model)
        self.in_flight = 0  # maintained by the router
        self.state = EngineState.STOPPED
        self.error = ""  # why the last start or run failed, with the engine's last lines
        self.port = 0
        self.pid: int | None = None
        self.started_at = 0.0
        self.ready_in = 0.0  # seconds from spawn to ready, last start
        self.gave_up = False
        self._session = session
        self._on_change = on_change
        self._grace = grace
        self._proc: asyncio.subprocess.Process | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._settled = asyncio.Event()  # set while ready, failed or stopped

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def may_become_ready(self) -> bool:
        """True while waiting for this replica makes sense. Not between restarts: a crashed
        engine's callers get a 503 with the reason at once rather than wait out a backoff."""
        if self._stopping or self.gave_up:
            return False
        return self.state in (EngineState.STARTING, EngineState.READY)

    def failure(self, lines: int) -> tuple[str, list[str]]:
        """Why the replica is down: the headline of `error`, and the engine's last `lines`
        non-blank output lines, where the real reason usually is."""
        head, *output = self.error.splitlines() or [""]
        return head, [line.strip() for line in output if line.strip()][-lines:]

    def _set_state(self, new: EngineState, reason: str = "") -> None:
        old = self.state
        if old is new:
            return
        check_transition(self.id, old, new)
        self.state = new
        if new in (EngineState.READY, EngineState.FAILED, EngineState.STOPPED):
            self._settled.set()
        elif new is EngineState.STARTING:
            self._settled.clear()
        self._on_change(self, StateChange(self.id, old, new, reason))

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Begin running (idempotent). Returns at once; watch the state or `wait_settled`."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"engine {self.id}")

    async def wait_settled(self) -> None:
        """Wait until the replica is ready, has failed (it may still be retried) or stopped."""
        await self._settled.wait()

    async def stop(self) -> None:
        """Stop the engine and its process group (idempotent; aborts a start in progress)."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        # Leave READY before the grace period, so the router sends it nothing more.
        if self.state in (EngineState.STARTING, EngineState.READY, EngineState.DRAINING):
            self._set_state(EngineState.STOPPING, "stop requested")
        await self._kill()
        if self.state in (EngineState.STOPPING, EngineState.FAILED):
            self._set_state(EngineState.STOPPED, "stopped")

    async def _run(self) -> None:
        # Failures count within a sliding window, so an engine that crashes every few minutes
        # after serving is still given up on, and one that crashed once last week is not.
        recent: collections.deque[float] = collections.deque()
        while True:
            try:
                await self._spawn_and_wait_ready()
            except EngineStartError as exc:
                self.error = str(exc)
                await self._kill()
                self._set_state(EngineState.FAILED, self.error)
            else:
                code = await self._wait_exit()
                self.error = self._explain(f"exited unexpectedly with code {code}")
                self._set_state(EngineState.FAILED, self.error)
            now = time.monotonic()
            recent.append(now)
            while recent[0] < now - FAILURE_WINDOW:
                recent.popleft()
            failures = len(recent)
            if failures >= MAX_FAILURES:
                self.gave_up = True
                log.error(
                    "%s: giving up after %d failures in %.0f minutes",
                    self.id,
                    failures,
                    FAILURE_WINDOW / 60,
                )
                self._on_change(self, StateChange(self.id, self.state, self.state, "gave up"))
                return
            delay = min(BACKOFF_FIRST * 2 ** (failures - 1), BACKOFF_MAX)
            log.warning(
                "%s: restarting in %.0f s (failure %d of %d)",
                self.id,
                delay,
                failures,
                MAX_FAILURES,
            )
            await asyncio.sleep(delay)

    async def _spawn_and_wait_ready(self) -> None:
        self._set_state(EngineState.STARTING, "spawning")
        self.port = free_port()
        argv = self.adapter.argv(self.model, self.port)
        self._tail.clear()
        log.info("%s: starting: %s", self.id, " ".join(argv))
        t0 = time.monotonic()
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=self.adapter.env(self.model),
                start_new_session=True,  # own process group: SIGTERM reaches its children
                preexec_fn=_die_with_parent(os.getpid()),
            )
        except OSError as exc:
            raise EngineStartError(f"cannot run {argv[0]}: {exc.strerror}") from None
        self.pid = self._proc.pid
        self.started_at = time.time()
        reader = asyncio.create_task(self._read_output(self._proc))
        reader.add_done_callback(lambda _: None)
        deadline = t0 + self.model.startup_timeout
        url = self.base_url + self.adapter.ready_path
        while True:
            if self._proc.returncode is not None:
                await asyncio.wait_for(reader, 2.0)  # collect its last words
                raise EngineStartError(
                    self._explain(f"exited with code {self._proc.returncode} before it was ready")
                )
            if await self._probe(url):
                break
            if time.monotonic() > deadline:
                raise EngineStartError(
                    self._explain(
                        f"not ready after {self.model.startup_timeout:.0f} s "
                        "(raise models.<name>.startup_timeout if it is just slow)"
                    )
                )
            await asyncio.sleep(0.1)
        self.ready_in = time.monotonic() - t0
        self.error = ""
        self._set_state(EngineState.READY, f"ready in {self.ready_in:.1f} s on port {self.port}")

    async def _probe(self, url: str) -> bool:
        try:
            async with self._session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def _wait_exit(self) -> int:
        assert self._proc is not None
        return await self._proc.wait()

    async def _read_output(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while True:
            try:
                line = await proc.stdout.readline()
            except ValueError:  # a line longer than the stream limit: take what is there
                line = await proc.stdout.read(65536)
            if not line:
                return
            text = line.decode(errors="replace").rstrip()
            self._tail.append(text)
            log.debug("%s| %s", self.id, text)

    def _explain(self, what: str) -> str:
        lines = "\n  ".join(self._tail) or "(no output)"
        return f"engine {self.id} {what}; its last output:\n  {lines}"

    async def _kill(self) -> None:
        """SIGTERM the process group, SIGKILL it after the grace period, always reap."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), self._grace)
            except TimeoutError:
                log.warning(
                    "%s: no exit %.0f s after SIGTERM, sending SIGKILL", self.id, self._grace
                )
        # SIGKILL the group even after a clean exit: children the engine left behind die too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        self.pid = None
