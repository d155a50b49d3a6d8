"""The CPU plan (supervisors/cpus.py): pure functions, and the supervisor re-planning as
models come and go."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import psutil
import pytest

from supervisors.cpus import CpuShare, cgroup_quota, cpu_list, parse_cpu_list, plan, set_affinity
from supervisors.gpus import Inventory
from supervisors.supervisor import Supervisor
from tests.unit.supervisors.conftest import fake


def test_one_replica_gets_every_core() -> None:
    assert plan(["a#0"], range(8)) == {"a#0": CpuShare(tuple(range(8)), 8)}


def test_cores_are_split_in_runs_as_even_as_they_divide() -> None:
    shares = plan(["a#0", "b#0", "c#0"], range(8))
    assert [s.cpus for s in shares.values()] == [(0, 1, 2), (3, 4, 5), (6, 7)]
    assert [s.threads for s in shares.values()] == [3, 3, 2]
    every = [c for s in shares.values() for c in s.cpus]
    assert sorted(every) == list(range(8))  # no core given twice, none left out


def test_more_replicas_than_cores_share_one_core_each() -> None:
    shares = plan(["a#0", "a#1", "b#0"], (4, 5))
    assert shares == {
        "a#0": CpuShare((4,), 1),
        "a#1": CpuShare((5,), 1),
        "b#0": CpuShare((4,), 1),
    }


def test_a_cgroup_quota_caps_the_threads_not_the_cores() -> None:
    # 16 CPUs visible, 2.5 cores of quota: two replicas, one thread each, on half the CPUs.
    shares = plan(["a#0", "b#0"], range(16), quota=2.5)
    assert [len(s.cpus) for s in shares.values()] == [8, 8]
    assert [s.threads for s in shares.values()] == [1, 1]
    assert plan(["a#0"], range(16), quota=0.5)["a#0"].threads == 1  # never zero


def test_nothing_to_plan() -> None:
    assert plan([], range(4)) == {}
    assert plan(["a#0"], ()) == {}


def test_a_model_coming_and_going_moves_the_others() -> None:
    two = plan(["a#0", "b#0"], range(4))
    three = plan(["a#0", "b#0", "c#0"], range(4))
    back = plan(["a#0", "c#0"], range(4))
    assert two["a#0"].cpus == (0, 1) and three["a#0"].cpus == (0, 1)
    assert three["c#0"].cpus == (3,)
    assert back["c#0"].cpus == (2, 3)


def test_cpu_lists_both_ways() -> None:
    assert cpu_list((0, 1, 2, 5, 7, 8)) == "0-2,5,7-8"
    assert parse_cpu_list("0-2, 5,7-8") == (0, 1, 2, 5, 7, 8)
    assert parse_cpu_list("3") == (3,)
    for bad in ("", "a", "3-1", "1-", "-2"):
        with pytest.raises(ValueError):
            parse_cpu_list(bad)
    assert CpuShare((0, 1), 2).label == "cpus 0-1, 2 threads"


def test_cgroup_quota(tmp_path: Path) -> None:
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("250000 100000\n")
    assert cgroup_quota(cpu_max) == 2.5
    cpu_max.write_text("max 100000\n")
    assert cgroup_quota(cpu_max) is None
    assert cgroup_quota(tmp_path / "missing") is None


def test_set_affinity_moves_every_thread_of_a_running_process() -> None:
    # A process with a second thread, started before the move: both threads move.
    code = (
        "import threading, time; "
        "threading.Thread(target=time.sleep, args=(30,)).start(); time.sleep(30)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        cpu = min(os.sched_getaffinity(0))
        deadline = time.monotonic() + 10
        while len(psutil.Process(proc.pid).threads()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert set_affinity(proc.pid, [cpu])
        threads = psutil.Process(proc.pid).threads()
        assert len(threads) >= 2
        assert all(os.sched_getaffinity(t.id) == {cpu} for t in threads)
    finally:
        proc.kill()
        proc.wait()
    assert not set_affinity(proc.pid, [cpu])  # gone: nothing to move


def test_set_affinity_catches_threads_started_during_the_move() -> None:
    """A busy engine still starting threads: one started by a thread not moved yet inherits
    the old cores, so the move repeats until no thread is left behind."""
    code = (
        "import threading, time\n"
        "def spawn():\n"
        "    while True:\n"
        "        threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
        "        time.sleep(0.001)\n"
        "threading.Thread(target=spawn, daemon=True).start()\n"
        "time.sleep(30)\n"
    )
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.fail("this test needs 2 CPUs")
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 10
        while len(psutil.Process(proc.pid).threads()) < 50 and time.monotonic() < deadline:
            time.sleep(0.05)
        for cpu in cpus[:2]:  # each move, with threads being started all along
            assert set_affinity(proc.pid, [cpu])
            left = {t.id for t in psutil.Process(proc.pid).threads()
                    if os.sched_getaffinity(t.id) != {cpu}}  # fmt: skip
            assert not left, f"{len(left)} thread(s) not moved to CPU {cpu}"
    finally:
        proc.kill()
        proc.wait()


def test_an_engine_starts_on_its_cores() -> None:
    """The engine's process is on its share before exec (supervisors/process.py): every thread
    it ever starts inherits it, however loaded the machine."""
    from supervisors.process import _child_setup

    cpu = max(os.sched_getaffinity(0))
    code = "import os; print(sorted(os.sched_getaffinity(0)))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        preexec_fn=_child_setup(os.getpid(), [cpu]),
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert out.stdout.strip() == f"[{cpu}]"


# -- the supervisor's plan, with fake engines ---------------------------------------------


async def test_the_supervisor_replans_as_models_load_and_unload(
    session: aiohttp.ClientSession,
) -> None:
    """Two cores. Two models started together get one core and one thread each; when one
    goes, the other's running engine gets both cores at once. A model loading beside one
    that computes with two threads takes a core, but the running engine keeps both until its
    next start (two threads on one core would wait on each other at every step)."""
    cores = (0, 1)
    if not set(cores) <= os.sched_getaffinity(0):
        pytest.fail(f"this test needs CPUs {cores}; DX may use {sorted(os.sched_getaffinity(0))}")
    a, b = (dataclasses.replace(fake(), name=n) for n in ("a", "b"))
    sup = Supervisor(session, grace=2, inventory=Inventory(), drain_timeout=2, cpus=cores)
    try:
        await sup.apply([a, b], wait=True)
        await sup.wait_settled()
        (ra,), (rb,) = sup.replicas("a"), sup.replicas("b")
        assert (ra.cpu, rb.cpu) == (CpuShare((0,), 1), CpuShare((1,), 1))
        assert ra.pid is not None and rb.pid is not None
        assert os.sched_getaffinity(ra.pid) == {0} and os.sched_getaffinity(rb.pid) == {1}
        assert ra.settings()["threads"] == "1" and ra.settings()["cpus"] == "0"

        await sup.apply([a], wait=True)  # b goes: a widens at once, without a restart
        assert ra.cpu == CpuShare(cores, 2)
        assert os.sched_getaffinity(ra.pid) == set(cores)
        assert sup.replicas("a") == [ra] and ra.restarts == 0
    finally:
        await sup.close()

    sup = Supervisor(session, grace=2, inventory=Inventory(), drain_timeout=2, cpus=cores)
    try:
        await sup.apply([a], wait=True)
        await sup.wait_settled()
        (ra,) = sup.replicas("a")
        assert ra.cpu == CpuShare(cores, 2) and ra.pid is not None
        await sup.apply([a, b], wait=True)
        await sup.wait_settled()
        (rb,) = sup.replicas("b")
        assert (ra.cpu, rb.cpu) == (CpuShare((0,), 1), CpuShare((1,), 1))
        assert os.sched_getaffinity(ra.pid) == set(cores)  # 2 threads: kept until restarted
        assert rb.pid is not None and os.sched_getaffinity(rb.pid) == {1}
    finally:
        await sup.close()
