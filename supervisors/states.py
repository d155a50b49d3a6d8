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


# Every allowed move. Anything else is a bug and raises, rather than being papered over.
TRANSITIONS: dict[EngineState, frozenset[EngineState]] = {
    EngineState.STOPPED: frozenset({EngineState.STARTING}),
    EngineState.STARTING: frozenset({EngineState.READY, EngineState.FAILED, EngineState.STOPPING}),
    EngineState.READY: frozenset({EngineState.DRAINING, EngineState.STOPPING, EngineState.FAILED}),
    EngineState.DRAINING: frozenset({EngineState.STOPPING, EngineState.FAILED}),
    EngineState.STOPPING: frozenset({EngineState.STOPPED}),
    EngineState.FAILED: frozenset({EngineState.STARTING, EngineState.STOPPED}),
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
