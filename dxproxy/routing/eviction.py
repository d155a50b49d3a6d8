"""The loader's arithmetic, as pure functions: does a model fit beside the ones loaded, and
if not, which to unload. No I/O, no clock, no state: the loader (dxproxy.routing.loader)
gathers the facts, these decide, and tests/unit/routing/test_eviction.py checks the rules.

The rules: a device has a memory budget and the config may cap how many models are loaded
at once. Only on-demand models are ever unloaded to make room, least recently used first,
and only as many as needed; if unloading every candidate would still not be enough, none is
unloaded (the model can never fit, and the caller says so).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Loaded:
    """A model holding memory on a device."""

    name: str
    need: int  # bytes, all its replicas
    on_demand: bool  # only these are unloaded to make room
    last_used: float = 0.0  # any clock; older first


@dataclass(frozen=True, slots=True)
class Shortfall:
    """Why a model does not fit now."""

    too_many: bool  # the cap on loaded models is reached
    missing: int  # bytes over the device's budget (0 when only the cap is in the way)


def shortfall(
    need: int, used: int, budget: float, loaded: int, max_loaded: int
) -> Shortfall | None:
    """None when a model needing `need` bytes fits: `used` bytes of `budget` are taken on its
    device, `loaded` models are loaded anywhere and at most `max_loaded` may be (0: no cap)."""
    too_many = bool(max_loaded) and loaded >= max_loaded
    missing = max(0, int(used + need - budget)) if used + need > budget else 0
    if not too_many and not missing:
        return None
    return Shortfall(too_many, missing)


def victims(target: str, pool: Iterable[Loaded], short: Shortfall) -> list[Loaded]:
    """The models to unload for `target`, least recently used first: one when the cap is in
    the way, else enough to free `short.missing` bytes; [] when that cannot be done."""
    candidates = sorted(
        (m for m in pool if m.on_demand and m.name != target), key=lambda m: m.last_used
    )
    chosen: list[Loaded] = []
    freed = 0
    for m in candidates:
        if (short.too_many and chosen) or (not short.too_many and freed >= short.missing):
            break
        chosen.append(m)
        freed += m.need
    if not short.too_many and freed < short.missing:
        return []  # unloading all of them would not be enough: it can never fit
    return chosen
