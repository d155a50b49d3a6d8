"""The group link between a leader's DX and its workers' DX, on loopback."""

from __future__ import annotations

import asyncio

import pytest

from supervisors import group_link
from supervisors.group_link import LeaderLink, worker_link
from supervisors.spec import GroupSpec
from tests.conftest import free_port


async def until(check: object, within: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():  # type: ignore[operator]
        assert loop.time() < deadline
        await asyncio.sleep(0.02)


async def test_joined_lost_and_reset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(group_link, "BEAT", 0.05)
    monkeypatch.setattr(group_link, "SILENCE", 0.5)
    port = free_port() - 1  # the link is on the group port + 1
    leader = LeaderLink(GroupSpec(size=3, rank=0, leader="127.0.0.1", port=port), "127.0.0.1")
    await leader.start()
    try:
        w1 = asyncio.ensure_future(worker_link(GroupSpec(3, 1, "127.0.0.1", port=port)))
        w2 = asyncio.ensure_future(worker_link(GroupSpec(3, 2, "127.0.0.1", port=port)))
        # The leader's engine starts only once this is set (process.py, _await_members).
        await asyncio.wait_for(leader.all_linked.wait(), 5)
        assert leader.joined and leader.waiting_for() == [] and not leader.lost.is_set()
        await asyncio.sleep(1.0)  # heartbeats keep both ends content past SILENCE
        assert leader.joined and not w1.done() and not w2.done()
        # A worker's engine ends: its DX cancels the link, the leader loses rank 2.
        w2.cancel()
        await until(leader.lost.is_set)
        assert leader.why.startswith("group member rank 2 (127.0.0.1) left: ")
        assert leader.waiting_for() == [2] and not leader.all_linked.is_set()
        # The leader's engine ends: every worker is dropped, and hears it.
        leader.reset()
        why = await asyncio.wait_for(w1, 5)
        assert why.startswith(f"the group link to the leader (127.0.0.1:{port + 1}) ended: ")
        assert not leader.lost.is_set() and leader.waiting_for() == [1, 2]
        assert not leader.all_linked.is_set()
    finally:
        await leader.close()


async def test_a_worker_waits_for_the_leader_and_a_stranger_is_refused() -> None:
    port = free_port() - 1
    spec = GroupSpec(size=2, rank=0, leader="127.0.0.1", port=port)
    worker = asyncio.ensure_future(worker_link(GroupSpec(2, 1, "127.0.0.1", port=port)))
    await asyncio.sleep(0.3)  # no leader yet: it keeps trying
    assert not worker.done()
    leader = LeaderLink(spec, "127.0.0.1")
    await leader.start()
    try:
        await until(lambda: leader.joined)
        reader, writer = await asyncio.open_connection("127.0.0.1", port + 1)
        writer.write(b"rank 7\n")  # no such rank in a group of 2
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        assert leader.joined and not leader.lost.is_set()
    finally:
        worker.cancel()
        await leader.close()
