"""Which GPUs each replica gets."""

from __future__ import annotations

import pytest

from supervisors import Gpu, Inventory, PlacementError, place, read_gpus
from supervisors.spec import EngineSpec

GiB = 2**30
FOUR = Inventory(tuple(Gpu(i, "H100", 80 * GiB, free * GiB)
                       for i, free in enumerate([10, 70, 40, 75])))


def spec(**kw: object) -> EngineSpec:
    return EngineSpec(name="m", kind="vllm", model="org/m", **kw)  # type: ignore[arg-type]


def test_no_driver_means_cpu() -> None:
    assert place(spec(gpus=(0, 1), replicas=2), Inventory(note="no driver")) == [(), ()]
    assert place(spec(gpu_auto=1), Inventory()) == [()]


def test_cpu_models_stay_on_cpu() -> None:
    assert place(spec(replicas=3), FOUR) == [(), (), ()]


def test_listed_gpus_split_evenly_between_replicas() -> None:
    assert place(spec(gpus=(0, 1, 2, 3), replicas=2), FOUR) == [(0, 1), (2, 3)]
    assert place(spec(gpus=(0, 1)), FOUR) == [(0, 1)]  # one replica, tensor parallel
    assert place(spec(gpus=(0, 1, 2), replicas=2), FOUR) == [(0, 1, 2), (0, 1, 2)]


def test_auto_picks_the_most_free_memory_and_spreads_replicas() -> None:
    assert place(spec(gpu_auto=1), FOUR) == [(3,)]
    assert place(spec(gpu_auto=1, replicas=2), FOUR) == [(3,), (1,)]
    assert place(spec(gpu_auto=2), FOUR) == [(1, 3)]


def test_a_missing_gpu_is_an_error_not_a_silent_cpu_run() -> None:
    with pytest.raises(PlacementError, match="GPU 7 requested, but this machine has GPU 0, 1"):
        place(spec(gpus=(7,)), FOUR)


def test_read_gpus_here_says_why_there_are_none() -> None:
    inv = read_gpus()  # this machine has no NVIDIA driver; a GPU server lists its GPUs
    assert inv.gpus or inv.note
