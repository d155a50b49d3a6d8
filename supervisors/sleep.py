"""vLLM sleep mode, the half of `Replica` that puts its engine to sleep and wakes it.

Sleep (level 1) moves the weights to CPU memory and drops the KV cache; the engine process
stays up and wakes in about a second. vLLM serves the calls on its dev-mode API (started with
--enable-sleep-mode and VLLM_SERVER_DEV_MODE=1), with the engine's key. A sleeping engine
must get no request (vLLM dies on one): the state is SLEEPING before anything is awaited, and
the router sends only to READY replicas.

`SleepMode` is mixed into `Replica` (supervisors/process.py), which owns the state machine
and the process; the attributes declared below are Replica's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping

import aiohttp

from supervisors.spec import EngineSpec
from supervisors.states import EngineState

log = logging.getLogger("dx.engine")

# After /wake_up, /is_sleeping is asked this often until it says awake.
WAKE_POLL = 0.05


def _why(exc: BaseException) -> str:
    if isinstance(exc, DevCallFailed):
        return str(exc)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class DevCallFailed(RuntimeError):
    """A sleep-mode call (/sleep, /wake_up, /is_sleeping) did not get the answer it needs."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status  # the engine's HTTP status, when it answered with one


def _answer(value: bool) -> asyncio.Future[bool]:
    done = asyncio.get_running_loop().create_future()
    done.set_result(value)
    return done


def _outcome(op: asyncio.Task[bool]) -> asyncio.Future[bool]:
    """A sleep's or wake's answer for one caller. A caller that leaves (is cancelled) leaves
    the engine's sleep or wake running; one cancelled by `stop()` answers False, so that
    the caller is not handed a cancellation it did not ask for."""
    answer = asyncio.get_running_loop().create_future()

    def settle(task: asyncio.Task[bool]) -> None:
        if answer.done():
            return
        if task.cancelled():
            answer.set_result(False)
        elif (error := task.exception()) is not None:
            answer.set_exception(error)
        else:
            answer.set_result(task.result())

    op.add_done_callback(settle)
    return answer


class SleepMode:
    # Replica's, used here.
    id: str
    spec: EngineSpec
    state: EngineState
    in_flight: int
    headers: dict[str, str]
    can_sleep: bool
    sleep_level: int
    asleep_since: float
    last_sleep_s: float
    last_wake_s: float
    sleeps: int
    wakes: int
    wake_error: str
    _stopping: bool
    _proc: asyncio.subprocess.Process | None
    _session: aiohttp.ClientSession
    _op: asyncio.Task[bool] | None
    _wedged: asyncio.Event
    _wedged_why: str
    _set_state: Callable[[EngineState, str], None]

    @property
    def base_url(self) -> str:
        raise NotImplementedError  # Replica's

    def sleep(self, level: int = 1) -> asyncio.Future[bool]:
        """Put the engine to sleep: POST /sleep?level=1 with the engine's key (vLLM sleep
        mode: the weights move to CPU memory, the KV cache is dropped), then GET /is_sleeping
        to confirm. Only a ready replica with nothing in flight whose engine can sleep.

        The state is SLEEPING when this returns, before anything is awaited: the router sends
        only to ready replicas, so no request can reach the engine from then on (vLLM dies
        on one). The future is True once the engine sleeps; False if it was not put to
        sleep: not ready, requests in flight, no sleep mode, or the engine refused (it then
        serves on, or, when it does not say it is awake, is killed and restarted like a
        crash). Already asleep or falling asleep: that sleep's answer."""
        if level != 1:
            # Level 2 drops the weights: a woken engine would need them reloaded (vLLM's
            # RLHF use), which serving after a wake does not do.
            raise ValueError(f"only sleep level 1 can be woken to serve again, not {level}")
        op = self._op
        if op is not None and not op.done():
            # Falling asleep already (True when it does), or waking: a request wants it.
            return _outcome(op) if self.state is EngineState.SLEEPING else _answer(False)
        if self.state is EngineState.SLEEPING:
            return _answer(True)
        if (
            not self.can_sleep
            or self._stopping
            or self.state is not EngineState.READY
            or self.in_flight
        ):
            return _answer(False)
        self._set_state(EngineState.SLEEPING, f"falling asleep (level {level})")
        self._op = asyncio.create_task(self._fall_asleep(level), name=f"sleep {self.id}")
        return _outcome(self._op)

    def wake(self) -> asyncio.Future[bool]:
        """Wake a sleeping engine: POST /wake_up, then GET /is_sleeping until it says awake,
        all within the model's `startup_timeout`; then READY. A wake asked while the engine
        falls asleep follows that sleep; asked while it wakes, it joins that wake.

        The future is True when the replica is ready at the end, False when it is not: the
        wake failed (the engine is killed and restarted like a crash; `error` says why), or it
        was not asleep and is not ready (starting, failed, stopping: nothing to wake; a stop
        during the wake too)."""
        op = self._op
        if op is not None and not op.done():
            if self.state is EngineState.WAKING:
                return _outcome(op)
            return asyncio.ensure_future(self._wake_after(op))
        if self.state is EngineState.READY:
            return _answer(True)
        if self.state is not EngineState.SLEEPING or self._stopping:
            return _answer(False)
        self._set_state(EngineState.WAKING, "waking up")
        self._op = asyncio.create_task(self._wake_up(), name=f"wake {self.id}")
        return _outcome(self._op)

    async def _wake_after(self, falling_asleep: asyncio.Task[bool]) -> bool:
        await asyncio.wait({falling_asleep})  # not `await` it: our caller's cancel would stop it
        return await self.wake()

    async def _fall_asleep(self, level: int) -> bool:
        proc = self._proc
        t0 = time.monotonic()
        try:
            await self._dev_post("/sleep", {"level": str(level)})
            # vLLM answers /sleep once the weights are off the GPU. Ask all the same: a
            # `command:` engine may answer 200 to anything.
            if not await self._is_sleeping():
                raise DevCallFailed("/sleep answered, but /is_sleeping says it is awake")
        except Exception as exc:  # every way this can fail ends the same: find out, settle
            why = _why(exc)
            if not self._current(proc, EngineState.SLEEPING):
                return False  # it crashed (the run task restarts it) or is being stopped
            status = exc.status if isinstance(exc, DevCallFailed) else None
            if status == 404:
                # No dev-mode endpoints: a `command:` vLLM without --enable-sleep-mode and
                # VLLM_SERVER_DEV_MODE=1. Not asked again; the loader stops it instead.
                self.can_sleep = False
                why += " (start vLLM with --enable-sleep-mode and VLLM_SERVER_DEV_MODE=1)"
            if status is not None and 400 <= status < 500:
                awake = True  # refused before doing anything
            else:
                try:
                    awake = not await self._is_sleeping()
                except Exception:
                    awake = False
            if awake and self._current(proc, EngineState.SLEEPING):
                log.warning("%s: could not be put to sleep (%s); it serves on", self.id, why)
                self._set_state(EngineState.READY, f"could not sleep: {why}")
            else:
                self._wedge(f"could not be put to sleep ({why}) and does not say it is awake")
            return False
        self.sleep_level = level
        self.asleep_since = time.time()
        self.last_sleep_s = time.monotonic() - t0
        self.sleeps += 1
        log.info("%s: asleep (level %d) in %.2f s", self.id, level, self.last_sleep_s)
        return True

    async def _wake_up(self) -> bool:
        proc = self._proc
        t0 = time.monotonic()
        timeout = self.spec.startup_timeout
        self.wake_error = ""
        try:
            async with asyncio.timeout(timeout):
                await self._dev_post("/wake_up")  # no tags: everything (weights, KV cache)
                # /wake_up answers once it is done on vLLM; ask until it says so anyway.
                while await self._is_sleeping():  # noqa: ASYNC110 (polling the engine)
                    await asyncio.sleep(WAKE_POLL)
        except Exception as exc:
            why = f"not awake after {timeout:.0f} s" if isinstance(exc, TimeoutError) else _why(exc)
            if self._current(proc, EngineState.WAKING):
                self._wedge(f"did not wake up ({why})")
            elif not self._stopping:
                why = f"the engine exited while waking ({why})"
            self.wake_error = why
            return False
        if not self._current(proc, EngineState.WAKING):
            self.wake_error = "the engine exited or was stopped while waking"
            return False
        self.last_wake_s = time.monotonic() - t0
        self.wakes += 1
        self.sleep_level = 0
        self.asleep_since = 0.0
        self._set_state(EngineState.READY, f"awake in {self.last_wake_s:.2f} s")
        return True

    def _current(self, proc: asyncio.subprocess.Process | None, state: EngineState) -> bool:
        """Still the same live engine process, in `state`, and not being stopped."""
        return (
            not self._stopping
            and proc is not None
            and self._proc is proc
            and proc.returncode is None
            and self.state is state
        )

    def _wedge(self, why: str) -> None:
        log.error("%s: %s; restarting it", self.id, why)
        self._wedged_why = why + ": killed it"
        self._wedged.set()

    async def _dev_call(
        self, method: str, path: str, params: Mapping[str, str] | None = None
    ) -> object:
        """One call to vLLM's dev-mode API with the engine's key: its JSON answer (None
        for a POST), or DevCallFailed with the status and the start of the body."""
        async with self._session.request(
            method,
            self.base_url + path,
            params=params,  # vLLM reads the sleep level from the query string only
            headers=self.headers,
            timeout=aiohttp.ClientTimeout(total=self.spec.startup_timeout),
        ) as resp:
            if resp.status != 200:
                text = (await resp.text(errors="replace")).strip()[:200]
                raise DevCallFailed(f"{path} answered {resp.status}: {text}", resp.status)
            return await resp.json(content_type=None) if method == "GET" else None

    async def _dev_post(self, path: str, params: Mapping[str, str] | None = None) -> None:
        await self._dev_call("POST", path, params)

    async def _is_sleeping(self) -> bool:
        data = await self._dev_call("GET", "/is_sleeping")
        value = data.get("is_sleeping") if isinstance(data, dict) else None
        if not isinstance(value, bool):
            raise DevCallFailed(f"/is_sleeping answered {str(data)[:200]}")
        return value
