"""Which GPUs each replica gets (GPUs as supervisors/gpus.py reads them; none means CPU).

Rules, per model:
- `gpus: [0, 1]` with one replica: that replica sees both (vLLM runs tensor parallel over
  them). With several replicas, the list is split evenly when it divides (4 GPUs, 2 replicas
  -> [0, 1] and [2, 3]); otherwise every replica sees the whole list.
- `gpus: auto` (or `auto:N`): each replica gets N GPUs, picked by most free memory, spreading
  replicas over different GPUs while there are enough.
- No NVIDIA driver (or no GPU): every replica runs on the CPU, and the banner says so.
"""

from __future__ import annotations

from collections.abc import Sequence

from supervisors.gpus import Gpu, Inventory
from supervisors.spec import EngineSpec


class PlacementError(ValueError):
    pass


def place(spec: EngineSpec, inventory: Inventory) -> list[tuple[int, ...]]:
    """The GPUs of each replica of `spec` (`()` = CPU)."""
    cpu: list[tuple[int, ...]] = [() for _ in range(spec.replicas)]
    if not inventory.gpus or not (spec.gpus or spec.gpu_auto):
        return cpu
    if spec.gpu_auto:
        return _auto(spec.replicas, spec.gpu_auto, inventory.gpus)
    known = {g.index for g in inventory.gpus}
    missing = [i for i in spec.gpus if i not in known]
    if missing:
        raise PlacementError(
            f"GPU {', '.join(map(str, missing))} requested, but this machine has GPU "
            f"{', '.join(map(str, sorted(known)))} (numbered as nvidia-smi does)"
        )
    n, k = len(spec.gpus), spec.replicas
    if k > 1 and n >= k and n % k == 0:
        size = n // k
        return [spec.gpus[i * size : (i + 1) * size] for i in range(k)]
    return [spec.gpus for _ in range(k)]


def _auto(replicas: int, per_replica: int, gpus: Sequence[Gpu]) -> list[tuple[int, ...]]:
    by_free = sorted(gpus, key=lambda g: (-g.free, g.index))
    out = []
    for r in range(replicas):
        # Round-robin over the GPUs by free memory: replicas land on different GPUs first.
        picked = {by_free[(r * per_replica + j) % len(by_free)].index for j in range(per_replica)}
        out.append(tuple(sorted(picked)))
    return out
