"""The group link: DX's own heartbeat between a group's leader and its workers.

Measured with vLLM 0.32 (CPU) over two network namespaces: when a headless worker dies, the
leader's vLLM does NOT exit; its pipeline worker logs gloo's "Connection closed by peer", but
its server keeps answering /health 200 and a request then hangs. So DX cannot rely on the
engine to tell it that the group broke; the members' DX processes tell each other:

- the leader's DX listens on the group port + 1 (`LeaderLink`); each worker's DX connects
  before it starts its engine (`WorkerLink`: it waits for its leader) and says its rank, and
  closes the link when its engine ends. One connection = one worker engine alive.
- both ends send a line every `BEAT` seconds; a connection that closes (a DX or its engine
  died: DX closes the link when its engine ends) or stays silent for `SILENCE` seconds (a
  machine or its network went) is a member lost.
- a lost worker fails the leader's engine, which DX kills and restarts; the leader closes every
  link when its engine ends, so the workers kill and restart theirs too, and all rejoin the new
  rendezvous. The leader starts its engine only once every worker linked again (`all_linked`):
  a worker links only after its old engine is reaped, so no engine of an earlier rendezvous can
  join the new one and then leave it broken.

It carries nothing but ranks and heartbeats: no model data, no keys. Anyone who can reach the
port can make the group restart, so keep it on the group's network (`interface`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from supervisors.spec import GroupSpec

log = logging.getLogger("dx.group")

BEAT = 1.0  # seconds between heartbeats, each way
SILENCE = 5.0  # seconds without a line before the other end counts as gone
RECONNECT = 0.5  # seconds between a worker's tries to reach the leader's DX


async def _beat(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):  # the reading side says what happened
        while True:
            writer.write(b"beat\n")
            await writer.drain()
            await asyncio.sleep(BEAT)


async def _until_gone(reader: asyncio.StreamReader) -> str:
    """Read heartbeats until the other end closes or goes silent; say which."""
    while True:
        try:
            line = await asyncio.wait_for(reader.readline(), SILENCE)
        except TimeoutError:
            return f"no heartbeat for {SILENCE:.0f} s"
        except ConnectionError as exc:
            return f"connection lost ({exc})"
        if not line:
            return "it closed the group link"


class LeaderLink:
    """Rank 0's end. `joined` (and the event `all_linked`) says whether every worker is
    linked; `lost` is set, with `why`, when one that was linked goes."""

    def __init__(self, group: GroupSpec, host: str = "0.0.0.0") -> None:
        self.group = group
        self.host = host
        self.port = group.link_port
        self.members: dict[int, asyncio.StreamWriter] = {}
        self.lost = asyncio.Event()
        self.all_linked = asyncio.Event()
        self.why = ""
        self._server: asyncio.Server | None = None

    @property
    def is_open(self) -> bool:
        return self._server is not None

    @property
    def joined(self) -> bool:
        return len(self.members) >= self.group.size - 1

    def waiting_for(self) -> list[int]:
        return [r for r in range(1, self.group.size) if r not in self.members]

    async def start(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._member, self.host, self.port)

    def reset(self) -> None:
        """The leader's engine ended: drop every worker (they restart theirs and link again)."""
        for writer in self.members.values():
            writer.close()
        self.members.clear()
        self.all_linked.clear()
        self.lost.clear()
        self.why = ""

    async def close(self) -> None:
        self.reset()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def _member(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        try:
            hello = await asyncio.wait_for(reader.readline(), SILENCE)
            rank = int(hello.split()[1]) if hello.startswith(b"rank ") else -1
        except (TimeoutError, ValueError, IndexError, ConnectionError):
            rank = -1
        if not 0 < rank < self.group.size:
            writer.close()
            return
        old = self.members.get(rank)
        if old is not None:
            old.close()  # the same rank again: its DX restarted its engine
        self.members[rank] = writer
        if self.joined:
            self.all_linked.set()
        log.info("group link: rank %d linked from %s", rank, peer[0] if peer else "?")
        beats = asyncio.ensure_future(_beat(writer))
        try:
            why = await _until_gone(reader)
        finally:
            beats.cancel()
            writer.close()
        if self.members.get(rank) is writer:  # not replaced, not reset meanwhile
            del self.members[rank]
            self.all_linked.clear()
            self.why = f"group member rank {rank} ({peer[0] if peer else '?'}) left: {why}"
            log.warning("group link: %s", self.why)
            self.lost.set()


class WorkerLink:
    """A worker's end. `connect` waits until the leader's DX answers (before the worker's
    engine starts: an engine started without a leader would only burn restarts waiting for
    it); `hold` heartbeats for as long as the engine runs and returns why the link ended."""

    def __init__(self, group: GroupSpec) -> None:
        self.group = group
        self.where = f"{group.leader}:{group.link_port}"
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        while True:
            try:
                reader, writer = await asyncio.open_connection(
                    self.group.leader, self.group.link_port
                )
                break
            except OSError:
                await asyncio.sleep(RECONNECT)
        writer.write(f"rank {self.group.rank}\n".encode())
        self._reader, self._writer = reader, writer
        with contextlib.suppress(ConnectionError):
            await writer.drain()

    async def hold(self) -> str:
        assert self._reader is not None and self._writer is not None
        beats = asyncio.ensure_future(_beat(self._writer))
        try:
            why = await _until_gone(self._reader)
        finally:
            beats.cancel()
            self.close()
        return f"the group link to the leader ({self.where}) ended: {why}"

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


async def worker_link(group: GroupSpec) -> str:
    """`WorkerLink` from connecting to the end: returns why the link ended."""
    link = WorkerLink(group)
    try:
        await link.connect()
        return await link.hold()
    finally:
        link.close()
