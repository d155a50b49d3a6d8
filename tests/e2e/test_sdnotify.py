"""The systemd notify protocol, against a real NOTIFY_SOCKET listener (an AF_UNIX datagram
socket, as systemd opens one) and a real `dx serve` subprocess."""

from __future__ import annotations

import signal
from pathlib import Path

import psutil

from tests.conftest import fake_model, start_dx
from tests.fakes.notify import Listener


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


