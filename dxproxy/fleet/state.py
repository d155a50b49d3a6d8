"""What a node answers at `GET /fleet/state` (fleet or admin key), and the gateway's parser.

The shape, agreed between the node side (dxproxy/api) and the gateway (dxproxy/fleet/members):

    {
      "node": "gpu-07",            # the node's own name for itself (informative: the gateway
                                   # names a node by the base URL it reaches it at)
      "generation": 3,             # the node's config generation (bumped on each reload)
      "draining": false,           # true after SIGTERM: no new work, streams finishing
      "models": {
        "qwen": {
          "state": "ready",        # see SERVABLE below
          "ready": 1,              # replicas ready now
          "in_flight": 2,          # requests running in its engines
          "capacity": 8,           # requests it can run at once (slots; 0 = unknown)
          "queued": 0,             # requests waiting in DX for a slot or for the engine to load
          "kv_cache": 0.31         # KV-cache use 0..1, or null when the engine does not say
        }
      }
    }

It is built from DX's own counters, never by scraping the engines, so it is cheap to poll.
Unknown keys are ignored (a newer node may add some); a missing or mistyped known key makes
the whole answer invalid (`ValueError`), which the gateway counts as a failed probe.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# A model in one of these states takes requests: "ready" serves now, "loading" is starting,
# "idle" is configured to load on its first request, "sleeping" (vLLM sleep mode) wakes on it.
# Anything else ("failed", "stopped", "draining"...) does not.
SERVABLE = frozenset({"ready", "loading", "idle", "sleeping"})


@dataclass(frozen=True, slots=True)
class ModelState:
    state: str
    ready: int
    in_flight: int
    capacity: int
    queued: int
    kv_cache: float | None

    @property
    def servable(self) -> bool:
        return self.state in SERVABLE

    @property
    def load(self) -> float:
        """What the node reports as its load for this model: running plus waiting."""
        return float(self.in_flight + self.queued)


@dataclass(frozen=True, slots=True)
class NodeState:
    node: str
    generation: int
    draining: bool
    models: Mapping[str, ModelState]

    def to_json(self) -> dict[str, Any]:
        """The JSON form above (the node side may build its answer with it)."""
        return {
            "node": self.node,
            "generation": self.generation,
            "draining": self.draining,
            "models": {
                name: {
                    "state": m.state,
                    "ready": m.ready,
                    "in_flight": m.in_flight,
                    "capacity": m.capacity,
                    "queued": m.queued,
                    "kv_cache": m.kv_cache,
                }
                for name, m in self.models.items()
            },
        }


def parse_state(obj: object) -> NodeState:
    """A decoded /fleet/state answer as a NodeState; ValueError saying what is wrong."""
    if not isinstance(obj, dict):
        raise ValueError("fleet state: expected a JSON object")
    node = _field(obj, "node", str, "")
    generation = _field(obj, "generation", int, "")
    draining = _field(obj, "draining", bool, "")
    raw_models = _field(obj, "models", dict, "")
    models: dict[str, ModelState] = {}
    for name, m in raw_models.items():
        where = f"models.{name}."
        if not isinstance(m, dict):
            raise ValueError(f"fleet state: {where[:-1]} is not an object")
        kv = m.get("kv_cache")
        if kv is not None and (isinstance(kv, bool) or not isinstance(kv, int | float)):
            raise ValueError(f"fleet state: {where}kv_cache must be a number or null")
        models[name] = ModelState(
            state=_field(m, "state", str, where),
            ready=_count(m, "ready", where),
            in_flight=_count(m, "in_flight", where),
            capacity=_count(m, "capacity", where),
            queued=_count(m, "queued", where),
            kv_cache=None if kv is None else float(kv),
        )
    return NodeState(node=node, generation=generation, draining=draining, models=models)


def _field(obj: dict[str, Any], key: str, kind: type, where: str) -> Any:
    value = obj.get(key)
    # bool is an int in Python: a count of True is a bug on the other side, not a 1.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"fleet state: {where}{key} must be of type {kind.__name__}")
    return value


def _count(obj: dict[str, Any], key: str, where: str) -> int:
    value: int = _field(obj, key, int, where)
    if value < 0:
        raise ValueError(f"fleet state: {where}{key} must not be negative")
    return value
