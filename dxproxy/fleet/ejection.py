"""One node's health as the gateway sees it: failures in a row eject it, with a doubling
backoff, and one probe at a time decides when it comes back (the shape of Envoy's outlier
detection, kept to what a fleet of a few nodes needs).

    healthy --threshold failures in a row--> ejected --time up, available()--> probing
    probing --success--> healthy            probing --failure--> ejected (twice as long)

What counts as a failure is the caller's choice: members.Membership counts connect errors,
node-side 5xx and failed /fleet/state polls; a 4xx is the client's fault, not the node's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

State = Literal["healthy", "ejected", "probing"]


class Ejector:
    """Not thread-safe; one per node, used from the event loop."""

    __slots__ = (
        "_admitted_at",
        "_clock",
        "_failures",
        "_level",
        "_probe_started",
        "_until",
        "base",
        "ejections",
        "max",
        "probe_timeout",
        "reset_after",
        "state",
        "threshold",
    )

    def __init__(
        self,
        *,
        threshold: int = 3,
        base: float = 1.0,
        max: float = 30.0,  # the name for it (shadows the builtin only here)
        reset_after: float | None = None,
        probe_timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if threshold < 1 or base <= 0 or max < base or probe_timeout <= 0:
            raise ValueError("need threshold >= 1, 0 < base <= max, probe_timeout > 0")
        self.threshold = threshold
        self.base = base
        self.max = max
        # A node that stays healthy this long after coming back starts again at `base`;
        # one that flaps sooner keeps doubling.
        self.reset_after = max if reset_after is None else reset_after
        # A probe whose outcome never arrives (its request cancelled) frees the slot after this.
        self.probe_timeout = probe_timeout
        self._clock = clock
        self.state: State = "healthy"
        self.ejections = 0  # how many times this node was ejected, for metrics
        self._failures = 0  # in a row
        self._level = 0  # how many times the backoff has doubled
        self._until = 0.0
        self._probe_started = 0.0
        self._admitted_at = clock()

    @property
    def ejected_for(self) -> float:
        """The length of the current (or last) ejection, in seconds."""
        return min(self.base * 2 ** max(self._level - 1, 0), self.max)

    def remaining(self, now: float | None = None) -> float:
        """Seconds until the next probe is allowed (0 when healthy or probe due)."""
        if self.state != "ejected":
            return 0.0
        now = self._clock() if now is None else now
        return max(self._until - now, 0.0)

    def available(self, now: float | None = None) -> bool:
        """May a request (or poll) go to this node now? When an ejection is over, exactly one
        caller gets True (the probe) and the state becomes "probing"; the others get False
        until that probe reports through success() or failure()."""
        now = self._clock() if now is None else now
        if self.state == "healthy":
            return True
        if self.state == "ejected":
            if now < self._until:
                return False
            self.state = "probing"
            self._probe_started = now
            return True
        if now - self._probe_started >= self.probe_timeout:
            self._probe_started = now  # the last probe was lost: allow another
            return True
        return False

    def success(self) -> None:
        now = self._clock()
        if self.state == "probing":
            self.state = "healthy"
            self._admitted_at = now
        elif self.state == "ejected":
            return  # a request sent before the ejection finished: it proves nothing now
        self._failures = 0

    def failure(self) -> None:
        now = self._clock()
        if self.state == "ejected":
            return  # requests already in flight when it was ejected
        if self.state == "probing":
            self._eject(now)
            return
        self._failures += 1
        if self._failures >= self.threshold:
            if now - self._admitted_at >= self.reset_after:
                self._level = 0
            self._eject(now)

    def _eject(self, now: float) -> None:
        self._level += 1
        self.ejections += 1
        self.state = "ejected"
        self._failures = 0
        self._until = now + self.ejected_for
