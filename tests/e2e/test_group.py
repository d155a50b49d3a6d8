"""One model over two machines: a DX leader and a DX worker, each in its own network namespace,
run a fake multi-node engine (tests/fakes/group_launcher.py, vLLM's rendezvous in small).

    host ──(hostA)── netns A: DX rank 0, 10.77.0.1 on grp0 ──── grp0 10.77.0.2: DX rank 1 ── netns B
                                                                          (hostB)── host

The group talks over grp0 (`interface: grp0`); the test reaches each DX over its own host
link. One config file serves both, filled from the environment as LeaderWorkerSet would
(`rank: ${DX_GROUP_RANK}`). Needs root (ip netns); namespaces and links get unique names and
are deleted however the test ends. About 15 s.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.conftest import DX, ROOT

LAUNCHER = str(ROOT / "tests" / "fakes" / "group_launcher.py")
LEADER = "10.77.0.1"
CONFIG = f"""\
server:
  host: ${{DX_HOST}}
  port: 11434
  state_dir: ${{DX_STATE}}
  shutdown_timeout: 2
models:
  big:
    engine: vllm
    model: org/big
    startup_timeout: 60
    command: [{sys.executable}, {LAUNCHER}, --port, "{{port}}", --rank, "{{rank}}",
              --size, "{{size}}", --leader, "{{leader}}", --master-port, "{{group_port}}",
              --name, "{{name}}", --on-peer-loss, "${{PEER_LOSS}}"]
    group:
      size: ${{DX_GROUP_SIZE}}
      rank: ${{DX_GROUP_RANK}}
      leader: {LEADER}
      interface: grp0
      port: 29611
"""


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True, timeout=10)


@dataclass
class Net:
    a: str
    b: str
    url_a: str
    url_b: str


@pytest.fixture
def net() -> Iterator[Net]:
    if os.geteuid() != 0:
        pytest.fail("this test needs root for ip netns (CI runs as root; run it with sudo)")
    tag = uuid.uuid4().hex[:6]
    a, b = f"dx17a-{tag}", f"dx17b-{tag}"
    try:
        sh("ip", "netns", "add", a)
        sh("ip", "netns", "add", b)
        # The group's link, A <-> B, named grp0 on both sides.
        sh("ip", "link", "add", f"ga{tag}", "type", "veth", "peer", "name", f"gb{tag}")
        # A host link to each, for the test's HTTP calls.
        sh("ip", "link", "add", f"ha{tag}", "type", "veth", "peer", "name", f"xa{tag}")
        sh("ip", "link", "add", f"hb{tag}", "type", "veth", "peer", "name", f"xb{tag}")
        for ns, group_end, host_end, host_ip, ns_ip, group_ip in (
            (a, f"ga{tag}", f"xa{tag}", "10.78.1.1", "10.78.1.2", "10.77.0.1"),
            (b, f"gb{tag}", f"xb{tag}", "10.78.2.1", "10.78.2.2", "10.77.0.2"),
        ):
            sh("ip", "link", "set", group_end, "netns", ns)
            sh("ip", "-n", ns, "link", "set", group_end, "name", "grp0")
            sh("ip", "-n", ns, "addr", "add", f"{group_ip}/24", "dev", "grp0")
            sh("ip", "link", "set", host_end, "netns", ns)
            sh("ip", "-n", ns, "addr", "add", f"{ns_ip}/30", "dev", host_end)
            for dev in ("lo", "grp0", host_end):
                sh("ip", "-n", ns, "link", "set", dev, "up")
            host_side = "h" + host_end[1:]
            sh("ip", "addr", "add", f"{host_ip}/30", "dev", host_side)
            sh("ip", "link", "set", host_side, "up")
        yield Net(a, b, "http://10.78.1.2:11434", "http://10.78.2.2:11434")
    finally:
        for ns in (a, b):
            for pid in _pids(ns):
                os.kill(pid, signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
        # Their links go with them, but only once the kernel frees the namespace (a process
        # not yet reaped holds it): the host ends are deleted now, whatever is left.
        for link in (f"ha{tag}", f"hb{tag}", f"ga{tag}"):
            subprocess.run(["ip", "link", "del", link], capture_output=True, timeout=10)


def _pids(ns: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


@dataclass
class Node:
    proc: subprocess.Popen[str]
    url: str
    state: Path
    log: Path

    @property
    def engine_log(self) -> str:
        path = self.state / "logs" / "big#0.log"
        return path.read_text() if path.exists() else ""

    @property
    def key(self) -> str:
        return (self.state / "api-key").read_text().strip()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start(tmp: Path, ns: str, url: str, rank: int, peer_loss: str) -> Node:
    config = tmp / "dx.yaml"
    config.write_text(CONFIG)
    state = tmp / f"state{rank}"
    log = tmp / f"dx{rank}.log"
    env = {
        **os.environ,
        "DX_HOST": url.split("//")[1].split(":")[0],
        "DX_STATE": str(state),
        "DX_GROUP_SIZE": "2",
        "DX_GROUP_RANK": str(rank),
        "PEER_LOSS": peer_loss,
    }
    with log.open("w") as out:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *DX, "serve", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=tmp,
        )
    deadline = time.monotonic() + 30
    while not (state / "api-key").exists() or not _answers(url):
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    return Node(proc, url, state, log)


def _answers(url: str) -> bool:
    try:
        httpx.get(url + "/health", timeout=1)
        return True
    except httpx.TransportError:
        return False


def ready(node: Node) -> tuple[int, dict[str, Any]]:
    resp = httpx.get(node.url + "/ready", timeout=5)
    return resp.status_code, resp.json()


def wait_ready(node: Node, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        code, body = ready(node)
        if code == 200:
            return body
        assert time.monotonic() < deadline, (body, node.log.read_text()[-3000:])
        time.sleep(0.1)


def chat(node: Node) -> httpx.Response:
    return httpx.post(
        node.url + "/v1/chat/completions",
        timeout=10,
        headers={"Authorization": f"Bearer {node.key}"},
        json={"model": "big", "messages": [{"role": "user", "content": "hi"}]},
    )


def engine_pid(ns: str) -> int | None:
    for pid in _pids(ns):
        try:
            if LAUNCHER in psutil.Process(pid).cmdline():
                return pid
        except psutil.Error:
            continue
    return None


@pytest.mark.parametrize("peer_loss", ["hang", "exit"])
def test_a_group_over_two_namespaces(net: Net, tmp_path: Path, peer_loss: str) -> None:
    """`hang`: the engines go on after losing a peer, as vLLM 0.32 does (measured), so only
    DX's group link (supervisors/group_link.py) can see it; `exit`: they exit as well."""
    leader = start(tmp_path, net.a, net.url_a, 0, peer_loss)
    worker: Node | None = None
    try:
        # Alone, the leader's engine waits for rank 1: DX is not ready, and says why.
        time.sleep(1.5)
        code, body = ready(leader)
        assert code == 503 and body["status"] == "starting", body
        assert body["models"]["big"]["reason"] == (
            "engine starting; ready once all 2 group members joined"
        )
        worker = start(tmp_path, net.b, net.url_b, 1, peer_loss)
        body = wait_ready(leader)
        assert body["models"]["big"]["state"] == "ready"
        # The worker does its part, and is never a place to send requests.
        body = wait_ready(worker)
        assert body["models"]["big"]["state"] == "worker", body
        assert "rank 1 of 2, leader 10.77.0.1:29611" in body["models"]["big"]["reason"]
        deadline = time.monotonic() + 10
        while "  ready in" not in worker.log.read_text():  # the banner, once start-up is over
            assert time.monotonic() < deadline, worker.log.read_text()
            time.sleep(0.1)
        assert "group worker, rank 1 of 2, leader 10.77.0.1:29611 (pid" in worker.log.read_text()
        answer = chat(leader)
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["message"]["content"] == "Hello from a group of 2."
        refused = chat(worker)
        assert refused.status_code == 503
        assert "served by its group's leader, not by this node" in refused.text
        # The engines talked over grp0, as `interface` said (the variables vLLM, gloo and
        # NCCL read point at it).
        pid = engine_pid(net.b)
        assert pid is not None
        env = psutil.Process(pid).environ()
        assert env["GLOO_SOCKET_IFNAME"] == "grp0" and env["VLLM_HOST_IP"] == "10.77.0.2"
        assert "rank 1 joined from 10.77.0.2" in leader.engine_log

        # A worker's engine dies: the leader's engine exits with it, both are restarted, and
        # the group forms again.
        leader_pid = engine_pid(net.a)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while engine_pid(net.a) in (leader_pid, None) or engine_pid(net.b) in (pid, None):
            assert time.monotonic() < deadline, leader.log.read_text()[-3000:]
            time.sleep(0.1)
        wait_ready(leader)
        assert chat(leader).status_code == 200
        assert "a group restarts whole when a member leaves" in leader.log.read_text()
        if peer_loss == "hang":  # nothing but DX's link could have told
            assert "lost a group member: group member rank 1 (10.77.0.2) left" in (
                leader.log.read_text()
            )

        # The worker's whole machine goes (its DX killed, its engine with it): the model gets a
        # 503 with the reason while the group cannot form, and serves again once it does.
        worker.proc.kill()
        worker.proc.wait()
        deadline = time.monotonic() + 20
        while (refused := chat(leader)).status_code == 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert refused.status_code == 503, refused.text
        message = refused.json()["error"]["message"]
        assert message.startswith("model 'big' is unavailable: engine big#0 "), message
        assert "a group restarts whole when a member leaves" in message
        code, body = ready(leader)
        assert code == 503 and body["models"]["big"]["state"] in ("failed", "starting"), body
        worker = start(tmp_path, net.b, net.url_b, 1, peer_loss)
        wait_ready(leader)
        assert chat(leader).status_code == 200
    finally:
        if worker is not None:
            worker.stop()
        leader.stop()
