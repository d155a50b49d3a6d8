"""The gateway's holder follows the config's `fleet:` section: built at start, kept when a
reload leaves it alone, replaced when it changes, gone when it is removed."""

from __future__ import annotations

from dxproxy.config import load_config
from dxproxy.routing.gateway import Gateway
from tests.conftest import free_port


def fleet_config(port: int, refresh: str = "5s") -> str:
    # A closed port: the first poll fails at once, the node stays a member.
    return f"fleet:\n  nodes: [{{url: 'http://127.0.0.1:{port}'}}]\n  refresh: {refresh}\n"


async def test_apply_follows_the_fleet_section() -> None:
    port = free_port()
    gateway = Gateway()
    try:
        await gateway.apply(load_config("models: {}", env={}))
        assert gateway.membership is None and gateway.implicit("qwen") is None
        await gateway.apply(load_config(fleet_config(port), env={}))
        first = gateway.membership
        assert first is not None
        assert [m.id for m in first.members()] == [f"http://127.0.0.1:{port}"]
        assert first.members()[0].error is not None  # it said why: nothing listens there
        await gateway.apply(load_config(fleet_config(port), env={}))  # a reload, unchanged
        assert gateway.membership is first
        await gateway.apply(load_config(fleet_config(port, "2s"), env={}))
        assert gateway.membership is not first and gateway.membership is not None
        assert gateway.membership.refresh == 2.0
        await gateway.apply(load_config("models: {}", env={}))
        assert gateway.membership is None
    finally:
        await gateway.close()
