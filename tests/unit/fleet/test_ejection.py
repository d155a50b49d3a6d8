"""A node's ejection, backoff and probe, on a fake clock (dxproxy/fleet/ejection.py)."""

from __future__ import annotations

import pytest

from dxproxy.fleet.ejection import Ejector


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(clock: Clock, **kw: float) -> Ejector:
    return Ejector(clock=clock, **kw)  # type: ignore[arg-type]


def fail(e: Ejector, n: int) -> None:
    for _ in range(n):
        e.failure()


def test_threshold_failures_in_a_row_eject() -> None:
    clock = Clock()
    e = make(clock)
    fail(e, 2)
    assert e.state == "healthy" and e.available()
    e.success()  # not in a row any more
    fail(e, 2)
    assert e.state == "healthy"
    e.failure()
    assert e.state == "ejected" and e.ejections == 1
    assert not e.available() and e.remaining() == 1.0
    fail(e, 10)  # the requests that were in flight: no longer ejection
    assert e.remaining() == 1.0 and e.ejections == 1
    e.success()  # a late success proves nothing while ejected
    assert e.state == "ejected"


def test_exactly_one_probe_when_the_time_is_up() -> None:
    clock = Clock()
    e = make(clock)
    fail(e, 3)
    clock.now += 0.999
    assert not e.available()
    clock.now += 0.001
    assert e.available()  # the probe
    assert e.state == "probing"
    assert not e.available() and not e.available(clock.now + 1)  # nobody else meanwhile
    e.success()
    assert e.state == "healthy" and e.available()


def test_a_lost_probe_frees_the_slot_after_probe_timeout() -> None:
    clock = Clock()
    e = make(clock, probe_timeout=5.0)
    fail(e, 3)
    clock.now += 1
    assert e.available()
    clock.now += 4.9
    assert not e.available()
    clock.now += 0.1
    assert e.available() and e.state == "probing"


def test_failed_probes_double_the_ejection_up_to_max() -> None:
    clock = Clock()
    e = make(clock, base=1.0, max=30.0)
    fail(e, 3)
    seen = []
    for _ in range(7):
        seen.append(e.remaining())
        clock.now += e.remaining()
        assert e.available()
        e.failure()  # one failed probe re-ejects at once, no threshold
        assert e.state == "ejected"
    assert seen == [1, 2, 4, 8, 16, 30, 30]
    assert e.ejections == 8


def test_good_probe_readmits_and_the_backoff_resets_only_after_staying_healthy() -> None:
    clock = Clock()
    e = make(clock, base=1.0, max=30.0, reset_after=10.0)
    fail(e, 3)  # 1 s
    clock.now += 1
    assert e.available()
    e.failure()  # 2 s
    clock.now += 2
    assert e.available()
    e.success()
    assert e.state == "healthy"
    # flaps again soon: the backoff keeps doubling
    clock.now += 5
    fail(e, 3)
    assert e.remaining() == 4.0
    clock.now += 4
    assert e.available()
    e.success()
    # stays healthy past reset_after: the next ejection starts at base again
    clock.now += 10
    fail(e, 3)
    assert e.remaining() == 1.0


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        Ejector(threshold=0)
    with pytest.raises(ValueError):
        Ejector(base=5, max=1)
