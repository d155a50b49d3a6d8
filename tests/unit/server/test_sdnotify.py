"""systemd's notify protocol in process: reloading, watchdog pings, never blocking."""

from __future__ import annotations

import os
import time

from dxproxy.server.sdnotify import Notifier
from tests.fakes.notify import Listener


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
