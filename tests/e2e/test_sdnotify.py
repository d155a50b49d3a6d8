"""The systemd notify protocol, against a real NOTIFY_SOCKET listener (an AF_UNIX datagram
socket, as systemd opens one) and a real `dx serve` subprocess."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from dxproxy.server.sdnotify import Notifier
from tests.conftest import fake_model, start_dx


class Listener:
    """What systemd does with $NOTIFY_SOCKET: bind a datagram socket, read messages."""

    def __init__(self, address: str) -> None:
        self.env_value = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.messages: list[dict[str, str]] = []

    def wait_for(self, pred: Callable[[dict[str, str]], bool], timeout: float) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            for message in self.messages:
                if pred(message):
                    return message
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no such message within {timeout} s: {self.messages}")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            fields = (line.partition("=") for line in data.decode().splitlines())
            self.messages.append({k: v for k, _, v in fields})

    def drain(self, seconds: float) -> None:
        """Collect whatever arrives in the next `seconds`."""
        deadline = time.monotonic() + seconds
        with pytest.raises(AssertionError):
            self.wait_for(lambda m: False, max(deadline - time.monotonic(), 0.01))

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    lst = Listener(str(tmp_path / "notify.sock"))
    yield lst
    lst.close()


@pytest.fixture
def abstract_listener() -> Iterator[Listener]:
    lst = Listener(f"@dx-test-{secrets.token_hex(6)}")
    yield lst
    lst.close()


def test_ready_then_stopping_from_a_real_dx(tmp_path: Path, listener: Listener) -> None:
    model = fake_model(startup_timeout=120)
    dx = start_dx(tmp_path, {"fake": model}, env={"NOTIFY_SOCKET": listener.env_value})
    try:
        ready = listener.wait_for(lambda m: m.get("READY") == "1", 10)
        assert "serving on 127.0.0.1:" in ready["STATUS"] and "1 engine(s) ready" in ready["STATUS"]
        first = listener.messages[0]
        # Start-up may last as long as the slowest startup_timeout, plus 30 s.
        assert first["EXTEND_TIMEOUT_USEC"] == str(int((120 + 30) * 1e6))
        assert "STOPPING" not in str(listener.messages)
        # The engine is not told the socket: only dx speaks for the unit.
        children = dx.engine_pids()  # the engine, and any helper DX runs
        assert children
        assert not any("NOTIFY_SOCKET" in psutil.Process(p).environ() for p in children)
    finally:
        code = dx.stop(signal.SIGTERM)
    assert code == 0
    stopping = listener.wait_for(lambda m: m.get("STOPPING") == "1", 5)
    assert stopping["EXTEND_TIMEOUT_USEC"] == str(int((2 * 5 + 5) * 1e6))  # shutdown_timeout 5
    order = [k for m in listener.messages for k in m if k in ("READY", "STOPPING")]
    assert order == ["READY", "STOPPING"]
    assert not any("WATCHDOG" in m for m in listener.messages)  # no WATCHDOG_USEC given


def test_ready_counts_a_failed_engine_and_still_settles(tmp_path: Path, listener: Listener) -> None:
    models = {"fake": fake_model(), "broken": fake_model(engine_args=["--exit-at-start", "3"])}
    dx = start_dx(tmp_path, models, env={"NOTIFY_SOCKET": listener.env_value})
    try:
        ready = listener.wait_for(lambda m: m.get("READY") == "1", 10)
        assert "1 engine(s) ready, 1 FAILED" in ready["STATUS"]
    finally:
        dx.stop()


def test_watchdog_pings_on_an_abstract_socket(tmp_path: Path, abstract_listener: Listener) -> None:
    env = {"NOTIFY_SOCKET": abstract_listener.env_value, "WATCHDOG_USEC": "400000"}
    dx = start_dx(tmp_path, {"fake": fake_model()}, env=env)
    try:
        abstract_listener.wait_for(lambda m: m.get("READY") == "1", 10)
        abstract_listener.drain(1.5)
        children = dx.engine_pids()
        assert children
        assert not any("WATCHDOG_USEC" in psutil.Process(p).environ() for p in children)
    finally:
        dx.stop()
    pings = [m for m in abstract_listener.messages if m.get("WATCHDOG") == "1"]
    # Every 0.2 s (half of WatchdogSec) from start-up on: at least the 1.5 s drained above.
    assert len(pings) >= 6, abstract_listener.messages


def test_watchdog_for_another_pid_is_not_ours(abstract_listener: Listener) -> None:
    env = {
        "NOTIFY_SOCKET": abstract_listener.env_value,
        "WATCHDOG_USEC": "400000",
        "WATCHDOG_PID": str(os.getpid() + 1),
    }
    notifier = Notifier.from_environ(env)
    assert notifier.enabled and notifier.watchdog_interval is None
    assert env == {}  # all three read and removed, so children do not inherit them
    mine = Notifier.from_environ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())})
    assert mine.watchdog_interval == 15.0 and not mine.enabled
    notifier.close()


def test_reloading_then_ready(abstract_listener: Listener) -> None:
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": abstract_listener.env_value})
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.reloading()
    assert notifier.ready("reloaded")
    reloading = abstract_listener.wait_for(lambda m: "RELOADING" in m, 2)
    assert reloading["RELOADING"] == "1" and int(reloading["MONOTONIC_USEC"]) >= before
    ready = abstract_listener.wait_for(lambda m: "READY" in m, 2)
    assert ready == {"READY": "1", "STATUS": "reloaded"}
    notifier.close()


def test_sends_never_block_when_systemd_does_not_read(abstract_listener: Listener) -> None:
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": abstract_listener.env_value})
    t0 = time.monotonic()
    results = [notifier.status(f"message {i} " + "x" * 200) for i in range(5000)]
    assert time.monotonic() - t0 < 2
    assert results[0] and not all(results)  # the queue filled up; later messages were dropped
    notifier.close()


def test_without_systemd_everything_is_a_no_op() -> None:
    notifier = Notifier.from_environ({})
    assert not notifier.enabled
    assert notifier.ready("x") is False and notifier.stopping() is False
    gone = Notifier("/nonexistent/notify.sock")
    assert gone.watchdog() is False  # a vanished listener is not an error either
    gone.close()
    bad = Notifier.from_environ({"NOTIFY_SOCKET": "relative/path"})
    assert not bad.enabled
