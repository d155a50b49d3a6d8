"""The /fleet/state answer's parser (dxproxy/fleet/state.py)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from dxproxy.fleet.state import ModelState, NodeState, parse_state

GOOD: dict[str, Any] = {
    "node": "gpu-07",
    "generation": 3,
    "draining": False,
    "models": {
        "qwen": {"state": "ready", "ready": 1, "in_flight": 2, "capacity": 8, "queued": 1,
                 "kv_cache": 0.5},
        "small": {"state": "idle", "ready": 0, "in_flight": 0, "capacity": 0, "queued": 0,
                  "kv_cache": None},
        "broken": {"state": "failed", "ready": 0, "in_flight": 0, "capacity": 4, "queued": 0,
                   "kv_cache": None, "reason": "a newer node's extra key"},
    },
    "extra": "ignored",
}  # fmt: skip


def test_parse_and_round_trip() -> None:
    state = parse_state(GOOD)
    assert state.node == "gpu-07" and state.generation == 3 and not state.draining
    qwen = state.models["qwen"]
    assert qwen == ModelState("ready", 1, 2, 8, 1, 0.5)
    assert qwen.load == 3.0 and qwen.servable
    assert state.models["small"].servable and state.models["small"].kv_cache is None
    assert not state.models["broken"].servable
    assert parse_state(state.to_json()) == state
    assert isinstance(state, NodeState)


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("node",), 7, "node must be of type str"),
        (("generation",), True, "generation must be of type int"),
        (("draining",), "no", "draining must be of type bool"),
        (("models",), [], "models must be of type dict"),
        (("models", "qwen", "in_flight"), -1, "models.qwen.in_flight must not be negative"),
        (("models", "qwen", "queued"), 1.5, "models.qwen.queued must be of type int"),
        (("models", "qwen", "kv_cache"), "high", "models.qwen.kv_cache must be a number"),
        (("models", "qwen"), 3, "models.qwen is not an object"),
    ],
)
def test_invalid_answers_say_what_is_wrong(
    path: tuple[str, ...], value: object, message: str
) -> None:
    bad = copy.deepcopy(GOOD)
    target = bad
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(ValueError, match=message):
        parse_state(bad)
    with pytest.raises(ValueError, match="expected a JSON object"):
        parse_state([GOOD])
