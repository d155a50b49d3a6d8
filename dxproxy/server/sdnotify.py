"""The systemd notify protocol (sd_notify(3)), spoken over $NOTIFY_SOCKET without libsystemd.

Under `Type=notify` systemd waits for READY=1 before it calls the unit started (so units
ordered After=dx.service, and `systemctl start dx`, wait for the models, not just the port),
shows STATUS= in `systemctl status`, and kills DX if WATCHDOG=1 stops arriving within
WatchdogSec (the pings come from a task on DX's event loop, so they prove the loop turns).

Every message is one datagram on an AF_UNIX socket. Sends never block the event loop: the
socket is non-blocking, and a message that would block (systemd's queue is full) is dropped
with a debug line; systemd resends nothing either, and the next ping or state comes soon.
Outside systemd (no $NOTIFY_SOCKET) every call is a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Mapping, MutableMapping

log = logging.getLogger("dx.systemd")

# The variables systemd gives the main process. They are removed from DX's environment once
# read, so engines (DX's children) neither inherit them nor talk to systemd in DX's name.
ENV_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class Notifier:
    """Sends state changes to systemd. Create it with `from_environ()`; safe when disabled."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address = address  # a path, or "\0name" for an abstract socket; None = disabled
        self.watchdog_usec = watchdog_usec
        self._sock: socket.socket | None = None
        if address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)

    @classmethod
    def from_environ(
        cls, env: MutableMapping[str, str] | None = None, *, unset: bool = True
    ) -> Notifier:
        """Read $NOTIFY_SOCKET and the watchdog variables (and, with `unset`, remove them)."""
        env = os.environ if env is None else env
        values = {name: env.get(name, "") for name in ENV_VARS}
        if unset:
            for name in ENV_VARS:
                env.pop(name, None)
        return cls(_socket_address(values["NOTIFY_SOCKET"]), _watchdog_usec(values))

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between pings: half of WatchdogSec, as sd_watchdog_enabled(3) advises."""
        return self.watchdog_usec / 2e6 if self.watchdog_usec else None

    def send(self, *fields: str) -> bool:
        """Send one message of `KEY=value` fields; True if it left. Never blocks or raises."""
        if self._sock is None or self.address is None:
            return False
        message = "\n".join(fields).encode()
        try:
            self._sock.sendto(message, self.address)
        except BlockingIOError:
            log.debug("systemd's notify queue is full; dropped %r", message)
            return False
        except OSError as exc:
            # systemd gone (a stopped manager, a test listener closed): DX serves on regardless.
            log.debug("cannot notify systemd at %r: %s", self.address, exc)
            return False
        return True

    # -- the messages DX sends --------------------------------------------------------------

    def ready(self, status: str) -> bool:
        """Start-up (or a reload) is over: systemd marks the unit active."""
        return self.send("READY=1", f"STATUS={status}")

    def reloading(self, status: str = "reloading the config") -> bool:
        """A reload begins; follow it with `ready()`. MONOTONIC_USEC lets systemd (>= 253)
        tell this reload from an earlier one."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", f"STATUS={status}")

    def stopping(self, status: str = "stopping", timeout: float | None = None) -> bool:
        """Shutdown begins. `timeout`: seconds the stop may take from now, so a long
        server.shutdown_timeout does not need a matching TimeoutStopSec= edit."""
        fields = ["STOPPING=1", f"STATUS={status}"]
        if timeout is not None:
            fields.append(f"EXTEND_TIMEOUT_USEC={int(timeout * 1e6)}")
        return self.send(*fields)

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def extend_timeout(self, seconds: float) -> bool:
        """Give the current phase (start-up, here) `seconds` more than TimeoutStartSec=."""
        return self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    async def run_watchdog(self) -> None:
        """Ping every WatchdogSec/2 until cancelled (returns at once without a watchdog)."""
        interval = self.watchdog_interval
        if interval is None or not self.enabled:
            return
        log.debug("systemd watchdog: pinging every %.1f s", interval)
        while True:
            self.watchdog()
            await asyncio.sleep(interval)

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None


def _socket_address(value: str) -> str | None:
    if not value:
        return None
    if value.startswith("@"):
        # An abstract socket: the name after the '@', with a leading NUL, not a file.
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    log.warning("ignoring NOTIFY_SOCKET=%r: expected an absolute path or @name", value)
    return None


def _watchdog_usec(values: Mapping[str, str]) -> int | None:
    """WATCHDOG_USEC when it is meant for this process (WATCHDOG_PID is ours or unset)."""
    raw, pid = values["WATCHDOG_USEC"], values["WATCHDOG_PID"]
    if not raw:
        return None
    if pid and pid != str(os.getpid()):
        return None  # set for another process (DX was started by a wrapper that forked)
    try:
        usec = int(raw)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not a number of microseconds", raw)
        return None
    return usec if usec > 0 else None
