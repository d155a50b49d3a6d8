"""The life of one engine replica as an explicit state machine."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum


class EngineState(StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPING = "stopping"
    FAILED = "failed"  # crashed or never became ready; retried with backoff, then given up
    # vLLM sleep mode: the process lives, its weights are off the GPU (level 1: in CPU memory),
    # and it must get no request (vLLM dies on one). Entered before /sleep is called, so the
    # router, which sends only to `ready` replicas, cannot pick it while it falls asleep.
    SLEEPING = "sleeping"
    WAKING = "waking"  # /wake_up called; ready once the engine says it is awake
    # A headless member (rank > 0) of a model spread over several machines: its process runs
    # its share of the model for the group's leader, which alone serves HTTP. Never routed to.
    WORKER = "worker"


# Asleep for a request's purposes: it must be woken (`Supervisor.wake`) before it serves.
ASLEEP = frozenset({EngineState.SLEEPING, EngineState.WAKING})


# Every allowed move. Anything else is a bug and raises, rather than being papered over.
TRANSITIONS: dict[EngineState, frozenset[EngineState]] = {
    EngineState.STOPPED: frozenset({EngineState.STARTING}),
    EngineState.STARTING: frozenset(
        {EngineState.READY, EngineState.WORKER, EngineState.FAILED, EngineState.STOPPING}
    ),
    EngineState.READY: frozenset(
        {EngineState.DRAINING, EngineState.STOPPING, EngineState.FAILED, EngineState.SLEEPING}
    ),
    EngineState.DRAINING: frozenset({EngineState.STOPPING, EngineState.FAILED}),
    EngineState.STOPPING: frozenset({EngineState.STOPPED}),
    EngineState.FAILED: frozenset({EngineState.STARTING, EngineState.STOPPED}),
    # Back to READY straight from SLEEPING only when /sleep failed and the engine says it is
    # still awake. Nothing is in flight while asleep, so stopping needs no DRAINING. A crash,
    # or a sleep or wake that leaves the engine in doubt, is FAILED: killed and restarted.
    EngineState.SLEEPING: frozenset(
        {EngineState.WAKING, EngineState.READY, EngineState.STOPPING, EngineState.FAILED}
    ),
    EngineState.WAKING: frozenset({EngineState.READY, EngineState.STOPPING, EngineState.FAILED}),
    EngineState.WORKER: frozenset({EngineState.STOPPING, EngineState.FAILED}),
}


class InvalidTransition(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class StateChange:
    """Emitted on every transition; logged, and what tests assert on."""

    replica: str
    old: EngineState
    new: EngineState
    reason: str = ""
    at: float = field(default_factory=time.time)


def check_transition(replica: str, old: EngineState, new: EngineState) -> None:
    if new not in TRANSITIONS[old]:
        raise InvalidTransition(f"{replica}: {old} -> {new} is not allowed")
