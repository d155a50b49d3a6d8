"""Fleet membership by DNS with a real resolver: Debian's dnsmasq serving a name whose records
the test changes, read by Membership through the system resolver (getaddrinfo, as in
production) inside a network namespace whose /etc/resolv.conf points at dnsmasq
(`ip netns exec` binds /etc/netns/NAME/resolv.conf over it)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from queue import Empty, Queue

import pytest

from tests.conftest import ROOT

NAME = "nodes.fleet.test"
PORT = 8000  # inside the namespace: every address is free
REFRESH = 1.0


def run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.fail("this test makes a network namespace: run it as root (CI does)")
    if shutil.which("ip") is None:
        pytest.fail("`ip` (iproute2) is missing")
    ns = f"dxdns{os.getpid()}"
    etc = Path("/etc/netns") / ns
    run("ip", "netns", "add", ns)
    try:
        run("ip", "-n", ns, "link", "set", "lo", "up")
        etc.mkdir(parents=True, exist_ok=True)
        # one try, one second: a dead resolver must not stall a refresh for long
        (etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        yield ns
    finally:
        shutil.rmtree(etc, ignore_errors=True)
        subprocess.run(["ip", "netns", "del", ns], check=False, timeout=30)


class Dnsmasq:
    """dnsmasq in the namespace, answering NAME from a hosts file (and nothing else: the
    domain is local, so a missing AAAA is a clean NODATA, not a refusal)."""

    def __init__(self, ns: str, hosts: Path, *addresses: str) -> None:
        binary = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
        if not Path(binary).exists():
            pytest.fail("dnsmasq is missing: run scripts/setup (apt-get install dnsmasq-base)")
        self.hosts = hosts
        self.records(*addresses)
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, binary, "--keep-in-foreground", "--no-resolv",
             "--no-hosts", f"--addn-hosts={hosts}", "--local=/fleet.test/",
             "--listen-address=127.0.0.1", "--bind-interfaces", "--port=53", "--user=root",
             "--pid-file", "--log-facility=-"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.log: Queue[str] = Queue()
        self.readers = [threading.Thread(target=self._read, daemon=True)]
        self.readers[0].start()
        # SIGHUP before dnsmasq has set its handler would kill it: wait until it has read
        # the file (it logs that after setting its signal handlers)
        self.wait_for(f"read {hosts}")

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.put(line)

    def wait_for(self, text: str) -> None:
        deadline = time.monotonic() + 10
        lines = []
        while time.monotonic() < deadline:
            try:
                lines.append(self.log.get(timeout=0.1))
            except Empty:
                if self.proc.poll() is not None:
                    break
                continue
            if text in lines[-1]:
                return
        pytest.fail(f"dnsmasq did not log {text!r}: {''.join(lines)[-2000:]}")

    def records(self, *addresses: str) -> None:
        self.hosts.write_text("".join(f"{a} {NAME}\n" for a in addresses))

    def reload(self) -> None:
        self.proc.send_signal(signal.SIGHUP)  # dnsmasq re-reads --addn-hosts
        self.wait_for(f"read {self.hosts}")

    def stop(self) -> None:
        finish(self.proc, self.readers)


class Watcher:
    """tests/fakes/fleet_watch.py in the namespace; its JSON lines on a queue."""

    def __init__(self, ns: str, serve: list[str]) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "tests.fakes.fleet_watch",
             "--name", NAME, "--port", str(PORT), "--refresh", str(REFRESH), "--serve", *serve],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.lines: Queue[dict[str, object]] = Queue()
        self.stderr: list[str] = []
        self.readers = [
            threading.Thread(target=self._read, daemon=True),
            threading.Thread(target=self._read_err, daemon=True),
        ]
        for t in self.readers:
            t.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        self.stderr.extend(self.proc.stderr)

    def until(self, nodes: list[str], timeout: float) -> float:
        """The time the watched set became `nodes`; fails after `timeout` s."""
        deadline = time.monotonic() + timeout
        seen = []
        while True:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except Empty:
                pytest.fail(f"membership never became {nodes}; saw {seen}; "
                            f"stderr: {''.join(self.stderr)[-2000:]}")  # fmt: skip
            seen.append(line["nodes"])
            if line["nodes"] == nodes:
                return float(line["t"])  # type: ignore[arg-type]

    def stop(self) -> None:
        finish(self.proc, self.readers)


def finish(proc: subprocess.Popen[str], readers: list[threading.Thread]) -> None:
    """Stop a process, let its readers reach the end of its output, close its pipes."""
    if proc.poll() is None:
        proc.terminate()
    proc.wait(timeout=10)
    for t in readers:
        t.join(timeout=10)
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def url(address: str) -> str:
    return f"http://[{address}]:{PORT}" if ":" in address else f"http://{address}:{PORT}"


def test_membership_follows_the_dns_records(netns: str, tmp_path: Path) -> None:
    dns = Dnsmasq(netns, tmp_path / "hosts", "127.0.0.2", "127.0.0.3")
    watcher = None
    try:
        # a node that is in DNS but does not answer never joins; ::1 is an AAAA record
        watcher = Watcher(netns, ["127.0.0.2", "127.0.0.3", "127.0.0.4", "::1"])
        watcher.until(sorted([url("127.0.0.2"), url("127.0.0.3")]), timeout=30)

        # a node joins (an A and an AAAA record), one leaves: seen within 2 refreshes
        dns.records("127.0.0.3", "127.0.0.4", "::1")
        changed = time.time()
        dns.reload()
        seen = watcher.until(sorted([url("127.0.0.3"), url("127.0.0.4"), url("::1")]), 10)
        print(f"membership followed the DNS change in {seen - changed:.2f} s")
        assert seen - changed <= 2 * REFRESH + 0.5, seen - changed

        # the resolver goes away: the last good set stays, with one warning
        dns.stop()
        time.sleep(3 * REFRESH + 1)
        assert watcher.lines.empty(), watcher.lines.get()
        watcher.stop()
        warned = [line for line in watcher.stderr if f"cannot resolve {NAME}" in line]
        assert len(warned) == 1, watcher.stderr
        assert "keeping its last 3 node(s)" in warned[0]
    finally:
        if watcher is not None:
            watcher.stop()
        dns.stop()
