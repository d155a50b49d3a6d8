"""What systemd does with $NOTIFY_SOCKET, for the tests of dxproxy/server/sdnotify.py: a
datagram socket (a path, or an abstract name) that reads the messages DX sends."""

from __future__ import annotations

import secrets
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


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
