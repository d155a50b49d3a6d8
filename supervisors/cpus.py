"""Which CPU cores each CPU replica computes on, and with how many threads: one plan across
every model DX runs.

llama.cpp (and vLLM's CPU build) computes on all the cores it sees, and its threads wait for
each other at every step: two busy engines on the same cores thrash (measured on 2 cores: a
third of one model's throughput for both together; docs/PERFORMANCE.md, "Sharing the
machine"). So the cores DX may use are divided among the CPU replicas that run, each getting
its own core set (its affinity: every thread of its process) and as many threads as cores.

- `plan` is pure: replicas in a stable order (the order the supervisor lists them: a model's
  replicas together, models in the order they were started), cores split into contiguous runs
  as even as they divide; with more replicas than cores, replicas share cores one each,
  round-robin. A cgroup CPU quota (containers, systemd's CPUQuota) caps the threads.
- The supervisor re-plans whenever the set of running CPU replicas changes (a model loads,
  unloads, is rescaled or replaced). A running engine gets its new core set at once
  (`set_affinity`: every thread of it and of its children); its thread count is fixed at its
  start, so it follows at the next start. An engine whose new set has fewer cores than it
  has threads keeps its cores until then: its threads wait on each other at every step, and
  squeezed onto fewer cores they would spin against each other (worse than sharing).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


@dataclass(frozen=True, slots=True)
class CpuShare:
    cpus: tuple[int, ...]  # the logical CPUs the replica may run on
    threads: int  # compute threads it starts with

    @property
    def label(self) -> str:
        """`cpus 0-3, 4 threads` as the banner, /admin/models and `dx ps` show it."""
        return f"cpus {cpu_list(self.cpus)}, {self.threads} thread{'s' * (self.threads != 1)}"


def plan(
    replicas: Sequence[str], cpus: Sequence[int], quota: float | None = None
) -> dict[str, CpuShare]:
    """Each replica's share of `cpus` (and of a CPU `quota`, in cores, when one is set)."""
    n = len(replicas)
    if n == 0 or not cpus:
        return {}
    ordered = sorted(set(cpus))
    budget = len(ordered) if quota is None else max(1, min(len(ordered), math.floor(quota)))
    if n >= len(ordered):
        return {r: CpuShare((ordered[i % len(ordered)],), 1) for i, r in enumerate(replicas)}
    size, extra = divmod(len(ordered), n)
    shares: dict[str, CpuShare] = {}
    start = 0
    for i, replica in enumerate(replicas):
        chunk = tuple(ordered[start : start + size + (1 if i < extra else 0)])
        start += len(chunk)
        threads = max(1, min(len(chunk), budget // n + (1 if i < budget % n else 0)))
        shares[replica] = CpuShare(chunk, threads)
    return shares


def cpu_list(cpus: Sequence[int]) -> str:
    """`(0, 1, 2, 5)` -> `0-2,5` (the kernel's cpulist format, as taskset takes it)."""
    runs: list[str] = []
    ordered = sorted(set(cpus))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        runs.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(runs)


def parse_cpu_list(text: str) -> tuple[int, ...]:
    """`0-2,5` -> `(0, 1, 2, 5)`; ValueError with the reason for anything else."""
    cpus: set[int] = set()
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        low, dash, high = part.partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            raise ValueError(f"{text!r} is not a CPU list like 0-3,6")
        first, last = int(low), int(high) if dash else int(low)
        if last < first:
            raise ValueError(f"{part!r}: the range runs backwards")
        cpus.update(range(first, last + 1))
    if not cpus:
        raise ValueError("an empty CPU list")
    return tuple(sorted(cpus))


def usable_cpus(wanted: Sequence[int] | None = None) -> tuple[int, ...]:
    """The CPUs DX may run its engines on: its own affinity (taskset, systemd's CPUAffinity,
    a container's cpuset), narrowed to `wanted` (`server.cpus`) when given. Hyperthread
    siblings are left out when the machine has them: llama.cpp computes on physical cores."""
    allowed = sorted(os.sched_getaffinity(0))
    if wanted:
        allowed = [c for c in allowed if c in set(wanted)] or allowed
    physical = psutil.cpu_count(logical=False) or len(allowed)
    logical = psutil.cpu_count(logical=True) or len(allowed)
    if logical > physical and len(allowed) > 1:
        allowed = _one_per_core(allowed)
    return tuple(allowed)


def _one_per_core(cpus: list[int]) -> list[int]:
    seen: set[str] = set()
    out: list[int] = []
    for cpu in cpus:
        path = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        try:
            siblings = path.read_text().strip()
        except OSError:
            return cpus  # no topology to go by: all of them
        if siblings not in seen:
            seen.add(siblings)
            out.append(cpu)
    return out


def cgroup_quota(path: Path = CGROUP_CPU_MAX) -> float | None:
    """The cgroup v2 CPU quota in cores (`cpu.max`: "200000 100000" = 2.0), or None."""
    try:
        fields = path.read_text().split()
    except OSError:
        return None
    if len(fields) != 2 or not fields[0].isdigit() or not fields[1].isdigit():
        return None  # "max 100000": no quota
    quota, period = int(fields[0]), int(fields[1])
    return quota / period if period else None


AFFINITY_PASSES = 5  # a busy engine may still be starting threads: until a pass moves none


def set_affinity(pid: int, cpus: Sequence[int]) -> bool:
    """Move every thread of process `pid`, and of its children, to `cpus`. False when the
    process is gone or refuses (the plan then applies at its next start). A thread started
    while a pass ran, by one not moved yet, inherits the old cores: passes repeat until one
    finds every thread where it belongs."""
    wanted = set(cpus)
    moved = False
    for _ in range(AFFINITY_PASSES):
        try:
            procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
        except psutil.Error:
            return moved
        stray = False
        for proc in procs:
            with contextlib.suppress(psutil.Error, OSError):
                for thread in proc.threads():
                    with contextlib.suppress(OSError):  # a thread that just ended
                        if os.sched_getaffinity(thread.id) != wanted:
                            os.sched_setaffinity(thread.id, cpus)
                            stray = True
                        moved = True
        if not stray:
            break
    return moved
