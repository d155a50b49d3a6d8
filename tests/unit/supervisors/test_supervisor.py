"""Reconciling: unchanged models are untouched, changed ones are replaced blue/green, replica
counts change alone, removed models drain. The fake engine stands in for real ones (the
real-engine versions, under load, are in tests/integration/test_reload.py)."""

from __future__ import annotations

import asyncio
import dataclasses

import psutil

from supervisors.spec import EngineSpec
from supervisors.states import EngineState
from supervisors.supervisor import Supervisor
from tests.unit.supervisors.conftest import fake

S = EngineState


def pids(s: Supervisor, name: str = "fake") -> list[int | None]:
    return [r.pid for r in s.replicas(name)]


async def started(s: Supervisor, *specs: EngineSpec) -> None:
    await s.apply(list(specs), wait=True)
    await s.wait_settled()
    assert all(r.state is S.READY for r in s.all_replicas())


async def test_unchanged_models_keep_their_processes(sup: Supervisor) -> None:
    spec = fake()
    await started(sup, spec)
    before = pids(sup)
    assert await sup.apply([dataclasses.replace(spec)], wait=True) == []
    assert pids(sup) == before


async def test_a_changed_model_is_replaced_blue_green(sup: Supervisor) -> None:
    await started(sup, fake())
    old = sup.replicas("fake")[0]
    seen: list[tuple[S, int]] = []  # (old replica's state, ready replicas) while switching

    async def watch() -> None:
        while True:
            seen.append((old.state, len(sup.ready("fake"))))
            await asyncio.sleep(0.02)

    watcher = asyncio.create_task(watch())
    assert await sup.apply([fake("--startup-delay", "1")], wait=True) == []
    watcher.cancel()
    new = sup.replicas("fake")[0]
    assert new is not old and new.pid != old.pid and new.state is S.READY
    assert old.state is S.STOPPED and not psutil.pid_exists(old.pid or -1)
    # There was a ready replica at every moment: the old one served until the new was ready.
    assert all(ready >= 1 for _, ready in seen)
    assert any(state is S.READY for state, _ in seen[5:])  # the old one served meanwhile


async def test_a_failing_replacement_leaves_the_old_engine_serving(sup: Supervisor) -> None:
    await started(sup, fake())
    before = pids(sup)
    problems = await sup.apply([fake("--exit-at-start", "3")], wait=True)
    assert len(problems) == 1 and "not changed, the new engine failed" in problems[0]
    assert "cannot load model (as asked)" in problems[0]
    assert pids(sup) == before and sup.replicas("fake")[0].state is S.READY


async def test_replicas_are_added_and_drained_without_touching_the_others(
    sup: Supervisor,
) -> None:
    one = fake()
    await started(sup, one)
    first = pids(sup)[0]
    await sup.apply([dataclasses.replace(one, replicas=3)], wait=True)
    await sup.wait_settled()
    assert len(pids(sup)) == 3 and pids(sup)[0] == first
    third = sup.replicas("fake")[2]
    await sup.apply([dataclasses.replace(one, replicas=2)], wait=True)
    assert pids(sup)[0] == first and len(pids(sup)) == 2
    assert third.state is S.STOPPED


async def test_a_removed_model_drains_its_requests_first(sup: Supervisor) -> None:
    await started(sup, fake())
    replica = sup.replicas("fake")[0]
    replica.in_flight = 1  # a request in flight (the router's count)
    removal = asyncio.create_task(sup.apply([], wait=True))
    await asyncio.sleep(0.5)
    assert replica.state is S.DRAINING and not removal.done()
    assert sup.replicas("fake") == []  # no new request can reach it
    replica.in_flight = 0  # the request finished
    await asyncio.wait_for(removal, 5)
    assert replica.state is S.STOPPED


async def test_a_newer_change_replaces_an_unfinished_one(sup: Supervisor) -> None:
    await started(sup, fake())
    slow = asyncio.create_task(sup.apply([fake("--startup-delay", "30")], wait=True))
    await asyncio.sleep(0.5)
    await sup.apply([fake("--startup-delay", "0.2")], wait=True)
    await asyncio.wait_for(asyncio.gather(slow, return_exceptions=True), 5)
    await sup.settle()
    spec = sup.spec("fake")
    assert spec is not None and "0.2" in (spec.command or ())
    assert sup.replicas("fake")[0].state is S.READY
    # The half-started 30 s engine was stopped, not left behind.
    live = [p for p in psutil.Process().children(recursive=True) if "30" in p.cmdline()]
    assert not live
