"""DX's log output: readable lines on a terminal, JSON lines otherwise (journald, files).

`configure(level, fmt)` sets up the root logger once, for `dx serve`. With `fmt="auto"` the
format follows stderr: a terminal gets `time LEVEL logger: message`, anything else one JSON
object per line (`ts`, `level`, `logger`, `msg`, `exc`; access-log records carry their fields
instead of `msg`, see dxproxy/http/access.py), which journald, Loki or jq take as is.

On a terminal, the console handler can also keep a live status line at the bottom (the
engines' start-up progress, dxproxy/server/banner.py): a log line arriving meanwhile is printed
above it, and the line is redrawn below.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from datetime import UTC, datetime
from typing import Literal, TextIO

import orjson

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
LogFormat = Literal["auto", "text", "json"]


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        fields = getattr(record, "access", None)
        if isinstance(fields, dict):
            out.update(fields)
        else:
            out["msg"] = record.getMessage()
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


class ConsoleHandler(logging.StreamHandler[TextIO]):
    """stderr, with an optional live status line kept below the log lines (terminals only).

    Lines logged on the event loop are written together once per turn of the loop: under load
    that is one write for many access lines instead of a system call per request (the access
    log was a third of a request's CPU time). The write is scheduled with `call_soon`, so a
    line still leaves within the same turn; `flush()` (called by logging at exit) writes what
    is left. Lines from other threads, and everything on a terminal, are written at once.
    """

    def __init__(self, stream: TextIO, *, live: bool) -> None:
        super().__init__(stream)
        self.live = live  # a terminal: the status line is redrawn in place
        self._status = ""
        self._pending: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # another thread, or before the loop runs
            loop = None
        if loop is None or self.live:
            self._write_now(text)
            return
        self._pending.append(text)  # under the handler's lock (Handler.handle holds it)
        if len(self._pending) == 1:
            loop.call_soon(self.flush)

    def flush(self) -> None:
        with self.lock if self.lock is not None else contextlib.nullcontext():
            if self._pending:
                text, self._pending = "".join(self._pending), []
                self._write(text)

    def _write_now(self, text: str) -> None:
        if self._pending:
            self.flush()
        if self._status:
            self._write("\r\x1b[K" + text + self._status)
        else:
            self._write(text)

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass

    def status(self, text: str) -> None:
        """Show (or replace) the status line; "" removes it."""
        if not self.live:
            return
        self._write("\r\x1b[K" + text)
        self._status = text


console: ConsoleHandler | None = None


def configure(level: str, fmt: LogFormat = "auto", stream: TextIO | None = None) -> None:
    global console
    stream = stream or sys.stderr
    tty = stream.isatty()
    handler = ConsoleHandler(stream, live=tty)
    if fmt == "json" or (fmt == "auto" and not tty):
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    console = handler
