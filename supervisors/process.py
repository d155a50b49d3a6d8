"""One engine replica: one OS process, owned by one task, moved through `EngineState`.

The `run()` task is the only writer of the state. It spawns the engine in its own process
group (so stopping it stops its children too), asks the kernel to kill it if DX dies (even by
SIGKILL; the reaper takes care of its children), probes it until it answers, then keeps
probing it while it serves: an engine that exits, or stops answering (hung, or SIGSTOPped), is
killed and restarted with exponential backoff, giving up after `MAX_FAILURES` failures within
`FAILURE_WINDOW`.

A hang is told from a slow moment in seconds (`_liveness`): the engine's HTTP server answers
its probe even while the engine computes a long prompt on a saturated CPU, perhaps late, so an
unanswered probe alone is not a hang. It is one when, for `HANG_AFTER` seconds, the probe went
unanswered AND the engine sent nothing on any reply (the front reports what it hears through
`heard()`) AND its process used almost no CPU time: nothing answers, nothing flows, nothing
computes. An engine that computes but does not answer is killed only by the backstop, after
`UNANSWERED_BUSY` seconds without an answer. The numbers are measured in docs/PERFORMANCE.md.

Sleep mode (vLLM) is the one exception to "the run task moves the state": `sleep()` and
`wake()`, called by the supervisor, move a ready, idle engine to SLEEPING and back through
WAKING, each as one small task of its own. They never kill or restart anything: a sleep or
wake that leaves the engine in doubt tells the run task, which kills and restarts it as it
would a crash.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import logging
import os
import secrets
import signal
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import aiohttp
import psutil

from supervisors.adapters import LOOPBACK, EngineAdapter, EngineNotFound, Launch
from supervisors.cpus import CpuShare, set_affinity
from supervisors.group import RESTART_NOTE, GroupError, interface_address
from supervisors.group_link import LeaderLink, WorkerLink
from supervisors.logs import LogFiles
from supervisors.sleep import SleepMode
from supervisors.spec import EngineSpec, device_label
from supervisors.states import EngineState, StateChange, check_transition

log = logging.getLogger("dx.engine")

MAX_FAILURES = 5  # in FAILURE_WINDOW seconds, then give up until the config changes
FAILURE_WINDOW = 600.0
BACKOFF_FIRST = 1.0  # seconds before a restart, doubling after each failure (see _count_failure)
BACKOFF_MAX = 60.0
# While ready: a probe every LIVENESS_INTERVAL s, given LIVENESS_TIMEOUT s to answer.
LIVENESS_INTERVAL = 0.5
LIVENESS_TIMEOUT = 5.0
# A hang (module docstring): HANG_AFTER s with the probe unanswered, no reply bytes and less
# than HANG_CPU s of CPU time. Looked at every HANG_TICK s while a probe is out; a look more
# than HANG_LAG s late means DX itself was held up, and what it timed says nothing of the
# engine: the window starts again.
HANG_AFTER = 1.5
HANG_CPU = 0.02
HANG_TICK = 0.25
HANG_LAG = 0.5
# The backstop, for an engine that does not answer but computes (or whose CPU time cannot be
# read): no probe answered for this long, idle or with requests in flight.
UNANSWERED_IDLE = 10.0
UNANSWERED_BUSY = 20.0
TAIL_LINES = 50  # engine output lines kept with an error
FATES_KEPT = 8  # how the last engine processes ended, for requests that outlive them
OUTPUT_READ = 65536  # bytes of engine output read at once
RING_LINES = 2000  # engine output lines kept in memory (the admin API shows them)
PORT_RETRIES = 3  # another process took the port between DX choosing it and the engine
# A group worker has no HTTP to probe: it is a `worker` once its process has lived this long
# (a wrong flag or a missing model ends it sooner, reported as a failed start).
WORKER_SETTLE = 1.0
PR_SET_PDEATHSIG = 1
_PORT_TAKEN = ("address already in use", "couldn't bind", "failed to bind", "errno 98")

_libc = ctypes.CDLL(None, use_errno=True)


def _child_setup(parent: int, cpus: Sequence[int] | None) -> Callable[[], None]:
    """What the engine's process does before it becomes the engine: die with DX, and compute
    on its share of the cores from its first instruction (every thread it starts inherits
    them; moved after the start, a loaded machine let it start some threads first)."""

    def preexec() -> None:  # runs in the child between fork and exec
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # DX died before prctl took effect
            os._exit(1)
        if cpus is not None:
            os.sched_setaffinity(0, cpus)

    return preexec


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


class EngineStartError(RuntimeError):
    pass


class PortTaken(EngineStartError):
    pass


class GroupWatcher(Protocol):
    """Told about every engine process group (the reaper), so none outlives DX."""

    def add(self, pgid: int) -> None: ...

    def remove(self, pgid: int) -> None: ...


class Replica(SleepMode):
    """One engine process serving one model. Read `state`; never set it from outside."""

    def __init__(
        self,
        spec: EngineSpec,
        index: int,
        adapter: EngineAdapter,
        session: aiohttp.ClientSession,
        on_change: Callable[[Replica, StateChange], None],
        grace: float = 10.0,
        *,
        gpus: tuple[int, ...] = (),
        logs: LogFiles | None = None,
        groups: GroupWatcher | None = None,
        unplaceable: str = "",
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.index = index
        self.adapter = adapter
        self.gpus = gpus  # () = CPU
        # Its cores and threads when it runs on the CPU (the supervisor's plan, cpus.py), and
        # the threads its running process was started with.
        self.cpu: CpuShare | None = None
        self._threads_started = 0
        self.id = f"{spec.name}#{index}"
        self.capacity = adapter.parallel(spec)
        self.in_flight = 0  # maintained by the router
        self.restarts = 0  # starts after the first one
        # The engine's own key, new at every start: only DX can call it, even on loopback.
        self.api_key = ""
        self.headers: dict[str, str] = {}  # what every request to the engine carries
        self.state = EngineState.STOPPED
        self.error = ""  # why the last start or run failed, with the engine's last lines
        self.port = 0
        self.pid: int | None = None
        self.started_at = 0.0
        self.ready_in = 0.0  # seconds from spawn to ready, last start
        self.gave_up = False
        # Bumped at every spawn: which engine process served a request (`fate`).
        self.generation = 0
        # How the last engine process that served ended: "hung" (killed for not answering),
        # "exited" (it crashed or quit); "" while it serves, or when a start failed.
        self.ended = ""
        self._fates: collections.OrderedDict[int, str] = collections.OrderedDict()  # `fate`
        self.restart_at = 0.0  # monotonic time the pending restart begins (0: none pending)
        self.last_output = 0.0  # monotonic time the front last heard reply bytes (`heard`)
        # Sleep mode (vLLM): what the loader and the metrics report.
        self.can_sleep = adapter.can_sleep(spec)
        self.sleep_level = 0  # while asleep: 1 (weights in CPU memory); 0 while awake
        self.asleep_since = 0.0  # wall-clock time it fell asleep; 0 while awake
        self.last_sleep_s = 0.0  # how long the last /sleep took
        self.last_wake_s = 0.0  # the last wake: /wake_up until /is_sleeping says awake
        self.sleeps = 0
        self.wakes = 0
        self.wake_error = ""  # why the last wake failed ("" when it did not)
        self._session = session
        self._on_change = on_change
        self._grace = grace
        self._proc: asyncio.subprocess.Process | None = None
        self._logs = logs
        self._groups = groups
        self._unplaceable = unplaceable  # why it cannot run where it was asked to
        self._ring: collections.deque[str] = collections.deque(maxlen=RING_LINES)
        self._since_spawn = 0  # lines printed by the current process
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._settled = asyncio.Event()  # set while ready, asleep, failed or stopped
        self._op: asyncio.Task[bool] | None = None  # a sleep or a wake in progress
        # Set by a sleep or wake that left the engine in doubt: the run task kills it.
        self._wedged = asyncio.Event()
        self._wedged_why = ""
        # A multi-node group's leader: the DX-level link its workers' DX hold (group_link.py).
        group = spec.group
        self._link = LeaderLink(group) if group and group.is_leader and group.size > 1 else None
        self._worker_link: WorkerLink | None = None  # a worker's, while its engine runs

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def device(self) -> str:
        return device_label(self.gpus)

    def settings(self) -> dict[str, str]:
        """The engine's settings worth showing (banner, /api/ps)."""
        return self.adapter.settings(self.spec, Launch(self.port, "", self.gpus, self.cpu))

    def output(self, lines: int = RING_LINES) -> list[str]:
        """The engine's last `lines` output lines, across restarts."""
        return list(self._ring)[-lines:] if lines > 0 else []

    def set_cpu(self, share: CpuShare | None) -> None:
        """A new share of the CPU: the cores apply now to a running engine (every thread),
        the thread count at its next start. Fewer cores than the threads it computes with
        would make its threads wait on each other at every step (worse than sharing): such
        an engine keeps its cores until its next start."""
        if share == self.cpu:
            return
        self.cpu = share
        running = self._proc is not None and self._proc.returncode is None
        if share is None or not running or self._proc is None:
            return
        if len(share.cpus) < self._threads_started:
            log.info(
                "%s: keeps its cores until its next start (it computes with %d threads; its "
                "new share is %s)",
                self.id,
                self._threads_started,
                share.label,
            )
            return
        set_affinity(self._proc.pid, share.cpus)

    @property
    def may_become_ready(self) -> bool:
        """True while waiting for this replica makes sense: starting, serving, asleep, or
        being restarted after the engine that served hung or crashed. Not after a failed
        start: its callers get a 503 with the reason at once rather than wait out a backoff."""
        if self._stopping or self.gave_up:
            return False
        group = self.spec.group
        if (
            group is not None
            and self.state is not EngineState.READY
            and (not group.is_leader or self.ended or self.restarts)
        ):
            # A worker never serves here. A group that lost a member restarts whole: every
            # member's engine starts again and waits for the others (minutes for vLLM), so
            # callers get a 503 with the reason at once rather than wait for it.
            return False
        if self.state is EngineState.FAILED:
            return bool(self.ended)
        # A sleeping engine serves again once woken (the loader wakes it for a request).
        return self.state in (
            EngineState.STARTING,
            EngineState.READY,
            EngineState.SLEEPING,
            EngineState.WAKING,
        )

    def back_in(self) -> float | None:
        """About how many seconds until this replica serves again: 0 when it does; None
        when nobody can tell (stopped, given up, or a start failed)."""
        if self.state is EngineState.READY:
            return 0.0
        if not self.may_become_ready:
            return None
        now = time.monotonic()
        if self.state is EngineState.FAILED:
            return max(0.0, self.restart_at - now) + self.ready_in
        if self.state is EngineState.STARTING and self.started_at:
            return max(0.0, self.ready_in - (time.time() - self.started_at))
        return self.ready_in

    def heard(self) -> None:
        """The front received bytes of a reply from this engine: it is not silent."""
        self.last_output = time.monotonic()

    async def fate(self, generation: int, within: float = 1.0) -> str:
        """How the engine process of `generation` (read when the request was sent) ended:
        "hung" or "exited" (DX restarts it), "stopped" (DX stopped it: a reload, a removal,
        shutdown); "" when it still serves. The front asks when an engine connection broke,
        which it sees before the process's exit is noticed here: a dying process closes its
        sockets before the kernel reports it dead (and a big one takes a while to unmap its
        memory first), so this waits at most `within` seconds for the process to be seen
        gone; one still alive after that serves on."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while self.generation == generation and self.state in (
            EngineState.READY,
            EngineState.DRAINING,
        ):
            if loop.time() >= deadline:
                return ""
            await asyncio.sleep(0.02)
        if generation in self._fates:
            return self._fates[generation]
        if self._stopping or self.state in (EngineState.STOPPING, EngineState.STOPPED):
            return "stopped"
        return "exited"

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
        if new in (
            EngineState.READY,
            EngineState.WORKER,
            EngineState.SLEEPING,
            EngineState.FAILED,
            EngineState.STOPPED,
        ):
            self._settled.set()
        elif new in (EngineState.STARTING, EngineState.WAKING):
            self._settled.clear()
        self._on_change(self, StateChange(self.id, old, new, reason))

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Begin running (idempotent). Returns at once; watch the state or `wait_settled`."""
        if self._task is None:
            # Starting from now, not from when the task first runs: a request that arrives
            # in between waits for this replica instead of being told it is stopped.
            self._set_state(EngineState.STARTING, "starting")
            self._task = asyncio.create_task(self._run(), name=f"engine {self.id}")

    async def wait_settled(self) -> None:
        """Wait until the replica is ready, asleep, has failed (it may still be retried) or
        stopped."""
        await self._settled.wait()

    async def stop(self) -> None:
        """Stop the engine and its process group (idempotent; aborts a start in progress, and
        a sleep or wake)."""
        self._stopping = True
        op = self._op
        if op is not None and not op.done():
            op.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await op
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        # Leave READY before the grace period, so the router sends it nothing more.
        if self.state in (
            EngineState.STARTING,
            EngineState.READY,
            EngineState.DRAINING,
            EngineState.SLEEPING,
            EngineState.WAKING,
            EngineState.WORKER,
        ):
            self._set_state(EngineState.STOPPING, "stop requested")
        await self._kill()
        if self._link is not None:
            await self._link.close()
        if self.state in (EngineState.STOPPING, EngineState.FAILED):
            self._set_state(EngineState.STOPPED, "stopped")

    async def drain(self, within: float) -> None:
        """Take no new requests (the router sends only to `ready` replicas), let those in
        flight finish for at most `within` seconds, then stop."""
        self._stopping = True  # no restart from here on, and nobody waits for it
        if self.state is EngineState.READY:
            self._set_state(EngineState.DRAINING, "draining")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        # The router owns `in_flight`; a look every 50 ms is all a drain needs.
        while self.in_flight > 0 and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        if self.in_flight:
            log.warning(
                "%s: stopping with %d request(s) still in flight after %.0f s of draining",
                self.id,
                self.in_flight,
                within,
            )
        await self.stop()

    async def _run(self) -> None:
        # Failures count within a sliding window, so an engine that crashes every few minutes
        # after serving is still given up on, and one that crashed once last week is not.
        recent: collections.deque[float] = collections.deque()
        if self._unplaceable:
            self._set_state(EngineState.STARTING, "placing")
            self.error = f"engine {self.id} cannot start: {self._unplaceable}"
            self.gave_up = True
            self._set_state(EngineState.FAILED, self.error)
            return
        while True:
            try:
                await self._start_with_port_retries()
            except EngineStartError as exc:
                self.error = str(exc)
                self.ended = ""  # a start failed: nobody waits for the next one
                await self._kill(hard=True)
                delay = self._count_failure(recent)
                self._set_state(EngineState.FAILED, self.error)
            else:
                self.ended, why = await self._watch()
                self._fates[self.generation] = self.ended
                if len(self._fates) > FATES_KEPT:
                    self._fates.popitem(last=False)
                self.error = self._explain(why)
                delay = self._count_failure(recent)
                # FAILED before the kill: the router sends it nothing more, and the front,
                # whose connections the kill breaks, finds out why (`fate`).
                self._set_state(EngineState.FAILED, self.error)
                # A hung engine ignores SIGTERM (a SIGSTOPped one cannot even see it), and a
                # crashed one may have left children: kill the whole group at once.
                await self._kill(hard=True)
            if self.gave_up:
                log.error(
                    "%s: giving up after %d failures in %.0f minutes",
                    self.id,
                    len(recent),
                    FAILURE_WINDOW / 60,
                )
                self._on_change(self, StateChange(self.id, self.state, self.state, "gave up"))
                return
            log.warning(
                "%s: restarting in %.0f s (failure %d of %d)",
                self.id,
                delay,
                len(recent),
                MAX_FAILURES,
            )
            await asyncio.sleep(delay)
            self.restart_at = 0.0
            self.restarts += 1

    def _count_failure(self, recent: collections.deque[float]) -> float:
        """Count a failure in the window; set `gave_up`, or when the restart begins (before
        the FAILED transition, so that those who watch it know what comes next). Returns the
        backoff in seconds."""
        now = time.monotonic()
        recent.append(now)
        while recent[0] < now - FAILURE_WINDOW:
            recent.popleft()
        failures = len(recent)
        if failures >= MAX_FAILURES:
            self.gave_up = True
            return 0.0
        if failures == 1 and self.ended:
            delay = 0.0  # it served, then failed once: its clients wait for it, restart now
        else:
            delay = min(BACKOFF_FIRST * 2 ** (failures - 1), BACKOFF_MAX)
        self.restart_at = now + delay
        return delay

    async def _start_with_port_retries(self) -> None:
        for attempt in range(PORT_RETRIES):
            try:
                await self._spawn_and_wait_ready()
                return
            except PortTaken:
                # DX picked a free port, but something else bound it before the engine did.
                log.info("%s: port %d was taken meanwhile; trying another", self.id, self.port)
                await self._kill(hard=True)
                if attempt == PORT_RETRIES - 1:
                    raise

    async def _spawn_and_wait_ready(self) -> None:
        self._set_state(EngineState.STARTING, "spawning")
        self.port = free_port()
        self.sleep_level = 0  # a new engine starts awake
        self.generation += 1
        self.asleep_since = 0.0
        self._wedged.clear()
        self.api_key = secrets.token_urlsafe(24)
        self.headers = {
            "Authorization": f"Bearer {self.api_key}",
            "Content-Type": "application/json",
        }
        launch = Launch(self.port, self.api_key, self.gpus, self.cpu)
        try:
            argv = self.adapter.argv(self.spec, launch)
            env = self.adapter.env(self.spec, launch)
            await self._open_link()
        except (EngineNotFound, GroupError) as exc:
            raise EngineStartError(f"engine {self.id} cannot start: {exc}") from None
        await self._join_leader()
        await self._await_members()
        shown = " ".join(argv).replace(self.api_key, "***")  # the key stays out of the logs
        log.info("%s: starting on %s: %s", self.id, self.device, shown)
        self._since_spawn = 0
        self._remember(f"--- dx: starting {self.id} on {self.device}: {shown}")
        t0 = time.monotonic()
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                start_new_session=True,  # own process group: SIGTERM reaches its children
                preexec_fn=_child_setup(os.getpid(), self.cpu.cpus if self.cpu else None),
            )
        except OSError as exc:
            raise EngineStartError(f"cannot run {argv[0]}: {exc.strerror}") from None
        self.pid = self._proc.pid
        self._threads_started = launch.threads(self.spec)
        if self._groups is not None:
            self._groups.add(self.pid)  # its group id is its pid (a new session)
        self.started_at = time.time()
        reader = asyncio.create_task(self._read_output(self._proc))
        reader.add_done_callback(lambda _: None)
        deadline = t0 + self.spec.startup_timeout
        url = self.base_url + self.adapter.ready_path
        group = self.spec.group
        if group is not None and not group.is_leader:
            await self._settle_worker(reader, t0)
            return
        while True:
            if self._proc.returncode is not None:
                await asyncio.wait_for(reader, 2.0)  # collect its last words
                said = "\n".join(self.output(self._since_spawn)).lower()
                error = PortTaken if any(p in said for p in _PORT_TAKEN) else EngineStartError
                raise error(
                    self._explain(f"exited with code {self._proc.returncode} before it was ready")
                )
            if self._link is not None and self._link.lost.is_set():
                raise EngineStartError(self._explain(f"{self._link.why} ({RESTART_NOTE})"))
            if await self._probe(url, within=2.0) and (self._link is None or self._link.joined):
                break
            if time.monotonic() > deadline:
                raise EngineStartError(
                    self._explain(
                        f"not ready after {self.spec.startup_timeout:.0f} s "
                        f"(raise models.<name>.startup_timeout if it is just slow)"
                    )
                )
            await asyncio.sleep(0.1)
        self.ready_in = time.monotonic() - t0
        self.error = ""
        self.ended = ""
        self._set_state(EngineState.READY, f"ready in {self.ready_in:.1f} s on port {self.port}")

    async def _open_link(self) -> None:
        """A group leader's link port, open before its engine starts (workers link to it)."""
        if self._link is None:
            return
        if self._link.is_open:
            return
        group = self.spec.group
        assert group is not None
        if group.interface:
            self._link.host = interface_address(group.interface)
        try:
            await self._link.start()
        except OSError as exc:
            raise GroupError(
                f"cannot open the group link on {self._link.host}:{self._link.port}: "
                f"{exc.strerror} (the group's port + 1; set group.port to move both)"
            ) from None

    async def _join_leader(self) -> None:
        """A group worker links to its leader's DX before its engine starts, waiting for as
        long as it takes (the leader's machine may come later): its engine would only wait
        for the leader too, and fail, and be restarted, until DX gave up."""
        group = self.spec.group
        if group is None or group.is_leader:
            return
        link = WorkerLink(group)
        log.info("%s: waiting for the group's leader's DX at %s", self.id, link.where)
        await link.connect()
        self._worker_link = link

    async def _await_members(self) -> None:
        """A group leader starts its engine only once every worker's DX is linked, for as long
        as that takes (the workers wait for the leader the same way). A worker links only
        after its previous engine was reaped, so every worker engine that joins this
        rendezvous belongs to a live link: one left over from the last rendezvous could join,
        then die with its stale link, and leave the new engine hanging (as vLLM does) unseen."""
        if self._link is None:
            return
        if not self._link.joined:
            ranks = ", ".join(map(str, self._link.waiting_for()))
            log.info(
                "%s: waiting for the group's rank(s) %s to link on port %d",
                self.id,
                ranks,
                self._link.port,
            )
            await self._link.all_linked.wait()
        self._link.lost.clear()  # a member that came and went before the engine: no news

    async def _settle_worker(self, reader: asyncio.Task[None], t0: float) -> None:
        """A group worker: it serves nothing here, so it is a `worker` once its process
        lives (the leader is ready only when it joined)."""
        assert self._proc is not None and self.spec.group is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._proc.wait(), WORKER_SETTLE)
        if self._proc.returncode is not None:
            await asyncio.wait_for(reader, 2.0)
            raise EngineStartError(
                self._explain(f"exited with code {self._proc.returncode} as a group worker")
            )
        self.ready_in = time.monotonic() - t0
        self.error = ""
        self.ended = ""
        self._set_state(
            EngineState.WORKER,
            f"group worker, {self.spec.group.label}: serves through its leader",
        )

    async def _watch(self) -> tuple[str, str]:
        """While ready (or asleep): wait for the engine to exit, to hang, or for a sleep or
        wake to leave it in doubt; say which ("exited" or "hung") and why."""
        assert self._proc is not None
        exited = asyncio.ensure_future(self._proc.wait())
        wedged = asyncio.ensure_future(self._wedged.wait())
        # A group member also ends when its link to the others does (group_link.py).
        group = self.spec.group
        link: asyncio.Future[Any] | None = None
        if self._link is not None:
            link = asyncio.ensure_future(self._link.lost.wait())
        elif self._worker_link is not None:
            link = asyncio.ensure_future(self._worker_link.hold())
        url = self.base_url + self.adapter.live_path
        loop = asyncio.get_running_loop()
        answered = loop.time()
        try:
            while True:
                done, _ = await asyncio.wait(
                    {exited, wedged} | ({link} if link is not None else set()),
                    timeout=LIVENESS_INTERVAL,
                    return_when=asyncio.FIRST_COMPLETED,  # an exit is seen at once
                )
                if exited in done:
                    why = f"exited unexpectedly with code {exited.result()}"
                    if group is not None:
                        why += f" ({group.label}: {RESTART_NOTE})"
                    return "exited", why
                if link is not None and link in done:
                    if self._link is not None:
                        return "exited", f"lost a group member: {self._link.why} ({RESTART_NOTE})"
                    return "exited", f"{link.result()} ({RESTART_NOTE})"
                if done:
                    return "hung", self._wedged_why
                if self.state is EngineState.WORKER:
                    continue  # no HTTP to probe: its exit is all there is to see
                # vLLM answers /health while asleep (it only checks that its engine core
                # lives), so probing goes on; a crash while asleep is restarted as any other.
                answer = await self._liveness(url)
                if isinstance(answer, str):
                    return "hung", answer
                now = loop.time()
                if answer or self._busy_elsewhere():
                    answered = now
                    continue
                limit = UNANSWERED_BUSY if self.in_flight else UNANSWERED_IDLE
                if now - answered >= limit:
                    return "hung", (
                        f"stopped answering its health check ({self.adapter.live_path} "
                        f"unanswered for {now - answered:.0f} s): killed it"
                    )
        finally:
            exited.cancel()
            wedged.cancel()
            if link is not None:
                link.cancel()

    def _busy_elsewhere(self) -> bool:
        """A sleep or wake is under way (with a time limit of its own), or the engine died
        meanwhile (reported as an exit on the next turn): an unanswered probe says nothing."""
        if self._op is not None and not self._op.done():
            return True
        return self._proc is None or self._proc.returncode is not None

    async def _liveness(self, url: str) -> bool | str:
        """One probe: True when answered within LIVENESS_TIMEOUT, False when not, or why the
        engine hangs when, while the probe is out, it stays silent and idle for HANG_AFTER
        seconds (the module docstring)."""
        loop = asyncio.get_running_loop()
        probe = asyncio.ensure_future(self._probe(url, within=LIVENESS_TIMEOUT))
        # (when, CPU seconds, last_output) at each look, over the last HANG_AFTER seconds
        samples: collections.deque[tuple[float, float, float]] = collections.deque()
        last = loop.time()
        try:
            while True:
                cpu = self._cpu_seconds()
                now = loop.time()
                if now - last > HANG_TICK + HANG_LAG:
                    samples.clear()  # DX was held up: start the window again
                last = now
                if cpu is None or self._busy_elsewhere():
                    samples.clear()
                else:
                    samples.append((now, cpu, self.last_output))
                    while len(samples) > 1 and samples[1][0] <= now - HANG_AFTER:
                        samples.popleft()
                    since, cpu_then, heard_then = samples[0]
                    if (
                        now - since >= HANG_AFTER - HANG_TICK / 10  # timers may fire early
                        and cpu - cpu_then < HANG_CPU
                        and self.last_output == heard_then
                    ):
                        return (
                            f"stopped responding: {self.adapter.live_path} unanswered for "
                            f"{now - since:.1f} s while it sent nothing and used no CPU time"
                            f"{self._stopped_note()}: killed it"
                        )
                done, _ = await asyncio.wait({probe}, timeout=HANG_TICK)
                if done:
                    return probe.result()
        finally:
            probe.cancel()

    def _cpu_seconds(self) -> float | None:
        """CPU time the engine's main process (all its threads) has used; None if unknown."""
        if self.pid is None:
            return None
        try:
            t = psutil.Process(self.pid).cpu_times()
        except psutil.Error:
            return None
        return float(t.user + t.system)

    def _stopped_note(self) -> str:
        try:
            stopped = self.pid is not None and psutil.Process(self.pid).status() in (
                psutil.STATUS_STOPPED,
                psutil.STATUS_TRACING_STOP,
            )
        except psutil.Error:
            return ""
        return " (its process is stopped, as by SIGSTOP)" if stopped else ""

    async def _probe(self, url: str, within: float) -> bool:
        try:
            async with self._session.get(
                url, headers=self.headers, timeout=aiohttp.ClientTimeout(total=within)
            ) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def _read_output(self, proc: asyncio.subprocess.Process) -> None:
        """The engine's output, in large reads split into lines here (engines print a line
        per request: one await and one queue put per line cost every request its share)."""
        assert proc.stdout is not None
        partial = b""
        while chunk := await proc.stdout.read(OUTPUT_READ):
            *whole, partial = (partial + chunk).split(b"\n")
            if len(partial) >= OUTPUT_READ:  # a line longer than that is cut, not held
                whole.append(partial)
                partial = b""
            if whole:
                self._since_spawn += len(whole)
                self._remember(*(raw.decode(errors="replace").rstrip() for raw in whole))
        if partial:
            self._since_spawn += 1
            self._remember(partial.decode(errors="replace").rstrip())

    def _remember(self, *lines: str) -> None:
        self._ring.extend(lines)
        if self._logs is not None:
            self._logs.write(self.id, lines)
        if log.isEnabledFor(logging.DEBUG):
            for line in lines:
                log.debug("%s| %s", self.id, line)

    def _explain(self, what: str) -> str:
        lines = self.output(min(self._since_spawn, TAIL_LINES))
        shown = "\n  ".join(lines) or "(no output)"
        return f"engine {self.id} {what}; its last output:\n  {shown}"

    async def _kill(self, hard: bool = False) -> None:
        """SIGTERM the process group, SIGKILL it after the grace period (at once if `hard`),
        always reap."""
        if self._link is not None:
            self._link.reset()  # the workers restart their engines and link again
        if self._worker_link is not None:
            self._worker_link.close()  # the leader restarts its engine
            self._worker_link = None
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.returncode is None and not hard:
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
        if self._groups is not None:
            self._groups.remove(proc.pid)
        self.pid = None
