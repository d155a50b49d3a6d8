"""A network partition between one gateway and one node, in network namespaces.

Two DX nodes (fake engines tagging their replies n0, n1) and two DX gateways, each in a
namespace of its own, joined by a bridge (the test process is on it too). nftables in gateway
A's namespace then silently drops everything to and from node n1, as a broken switch port or
firewall would: n1 keeps running and gateway B still reaches it. What must hold:

- through A, a conversation whose home is n1 keeps being answered (each request retried on n0
  before anything reached the client, then n1 ejected by A) and moves to n0 once;
- through B, the same conversation stays on n1 all along: each gateway routes on its own view,
  with nothing shared;
- once the partition heals, A's probe re-admits n1 and the conversation goes home.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import DX, DxProcess, fake_model

NODE_KEY = "fleet-partition-node-key-0123"
PORT = 11434  # every member has an address of its own
REFRESH = 0.5


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)


@dataclass
class Net:
    """A bridge in a namespace of its own, and members on it."""

    tag: str
    prefix: str  # "10.A.B."

    def __post_init__(self) -> None:
        self.hub = f"{self.tag}hub"
        self.namespaces: list[str] = [self.hub]
        self.root_links: list[str] = []
        sh("ip", "netns", "add", self.hub)
        sh("ip", "-n", self.hub, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.hub, "link", "set", "br0", "up")

    def join(self, i: int, ns: str | None) -> str:
        """Member i (namespace `ns`, None for the test's own) on the bridge: its address."""
        inner, outer = f"{self.tag}i{i}", f"{self.tag}o{i}"
        address = f"{self.prefix}{10 + i}"
        sh("ip", "link", "add", inner, "type", "veth", "peer", "name", outer)
        sh("ip", "link", "set", outer, "netns", self.hub)
        sh("ip", "-n", self.hub, "link", "set", outer, "master", "br0", "up")
        where: list[str] = []
        if ns is None:
            self.root_links.append(inner)
        else:
            sh("ip", "netns", "add", ns)
            self.namespaces.append(ns)
            sh("ip", "link", "set", inner, "netns", ns)
            where = ["-n", ns]
            sh("ip", *where, "link", "set", "lo", "up")  # the node's engine is on 127.0.0.1
        sh("ip", *where, "addr", "add", f"{address}/24", "dev", inner)
        sh("ip", *where, "link", "set", inner, "up")
        return address

    def close(self) -> None:
        for link in self.root_links:
            subprocess.run(["ip", "link", "del", link], check=False, capture_output=True)
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


def start_in(
    ns: str, tmp: Path, host: str, models: dict[str, object], extra: dict[str, object]
) -> DxProcess:
    tmp.mkdir()
    state = tmp / "state"
    config = {
        "server": {"host": host, "port": PORT, "state_dir": str(state), "shutdown_timeout": 5},
        "models": models,
        **extra,
    }
    (tmp / "dx.yaml").write_text(yaml.safe_dump(config))
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, *DX, "serve", "--config", str(tmp / "dx.yaml")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp,
    )
    dx = DxProcess(proc, f"http://{host}:{PORT}", "", state)
    threading.Thread(target=dx.read_output, daemon=True).start()
    if not dx.ready.wait(60) or proc.poll() is not None:
        proc.kill()
        proc.wait()
        pytest.fail(f"dx in {ns} did not become ready:\n" + "\n".join(dx.lines))
    dx.key = (state / "api-key").read_text().strip()
    return dx


@dataclass
class Fleet:
    nodes: list[DxProcess]
    gateways: list[DxProcess]
    namespaces: list[str]  # ga, gb, n0, n1


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    if os.geteuid() != 0:
        pytest.fail("this test makes network namespaces: run it as root (CI does)")
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            pytest.fail(f"`{tool}` is missing (iproute2, nftables)")
    pid = os.getpid()
    tag = f"dxp{pid % 100000}"
    net = Net(tag, f"10.{200 + pid % 50}.{pid // 50 % 250}.")
    procs: list[DxProcess] = []
    try:
        net.join(0, None)  # this test, as the clients
        names = [f"{tag}ga", f"{tag}gb", f"{tag}n0", f"{tag}n1"]
        address = {n: net.join(i + 1, n) for i, n in enumerate(names)}
        nodes = []
        for i in range(2):
            ns = names[2 + i]
            models = {"fake": fake_model(parallel=8, engine_args=["--tag", f"n{i}"])}
            nodes.append(
                start_in(
                    ns, tmp_path / f"n{i}", address[ns], models, {"auth": {"keys": [NODE_KEY]}}
                )
            )
            procs.append(nodes[-1])
        fleet_cfg = {
            "nodes": [{"url": n.url} for n in nodes],
            "refresh": f"{REFRESH}s",
            "node_key": NODE_KEY,
            "eject_after": 2,
            "eject_backoff": "0.5s",
            "eject_max": "1s",
        }
        gateways = []
        for ns in names[:2]:
            gateways.append(
                start_in(
                    ns,
                    tmp_path / ns,
                    address[ns],
                    {"fake": {"upstream": "fleet"}},
                    {"fleet": fleet_cfg},
                )
            )
            procs.append(gateways[-1])
        yield Fleet(nodes, gateways, names)
    finally:
        for p in procs:
            with contextlib.suppress(Exception):
                p.stop()
        net.close()


def ask(gateway: DxProcess, text: str) -> tuple[str, float]:
    """(the node that answered, seconds): a follow-up turn of conversation `text`."""
    body = {
        "model": "fake",
        "messages": [
            {"role": "user", "content": text},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "and then?"},
        ],
    }
    t0 = time.monotonic()
    r = httpx.post(
        gateway.url + "/v1/chat/completions", json=body, headers=gateway.auth, timeout=30
    )
    assert r.status_code == 200, r.text
    return r.headers["x-dx-upstream"].split(" ")[0], time.monotonic() - t0


def partition(ns: str, address: str, on: bool) -> None:
    """Drop every packet between namespace `ns` and `address`, silently (no reset, no ICMP)."""
    if on:
        rules = (
            f"table inet dxpartition {{\n"
            f"  chain in {{ type filter hook input priority 0; ip saddr {address} drop; }}\n"
            f"  chain out {{ type filter hook output priority 0; ip daddr {address} drop; }}\n"
            f"}}\n"
        )
        subprocess.run(
            ["ip", "netns", "exec", ns, "nft", "-f", "-"],
            input=rules,
            text=True,
            check=True,
            capture_output=True,
            timeout=30,
        )
    else:
        sh("ip", "netns", "exec", ns, "nft", "delete", "table", "inet", "dxpartition")


def test_a_partition_between_one_gateway_and_one_node(fleet: Fleet) -> None:
    ga, gb = fleet.gateways
    n0, n1 = (n.url for n in fleet.nodes)
    # a conversation whose home is n1, through both gateways
    text = next(t for t in (f"conversation {c}" for c in range(50)) if ask(ga, t)[0] == n1)
    assert ask(gb, text)[0] == n1

    partition(fleet.namespaces[0], n1.split("//")[1].split(":")[0], on=True)
    cut = time.monotonic()
    served_a, slowest = [], 0.0
    while time.monotonic() - cut < 15:
        node, took = ask(ga, text)  # every request answered: retried on n0 before any byte
        served_a.append(node)
        slowest = max(slowest, took)
        assert ask(gb, text)[0] == n1  # B still reaches n1: its own view, nothing shared
        if served_a[-3:] == [n0] * 3 and len(served_a) >= 3:
            break
    moved_after = time.monotonic() - cut
    # it moved once: n0 from the first answer on, and stayed there
    assert set(served_a) == {n0}, served_a
    print(
        f"partition: A moved the conversation to n0 ({len(served_a)} requests, slowest "
        f"{slowest:.2f} s, {moved_after:.2f} s in all)"
    )

    partition(fleet.namespaces[0], n1.split("//")[1].split(":")[0], on=False)
    healed = time.monotonic()
    while ask(ga, text)[0] != n1:
        assert time.monotonic() - healed < 15, "n1 never came back through gateway A"
        time.sleep(0.1)
    print(
        f"partition healed: the conversation was home again after {time.monotonic() - healed:.2f} s"
    )
    assert ask(gb, text)[0] == n1
