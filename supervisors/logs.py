"""Engine output: a ring buffer per replica (for errors and the admin API) and rotated files
per replica in a folder (for `dx logs`), written by one background thread so that the event
loop never waits on a disk.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import queue
import re
import threading
from pathlib import Path

MAX_BYTES = 10 * 2**20  # per file; with BACKUPS, an engine keeps at most 40 MiB of logs
BACKUPS = 3
_UNSAFE = re.compile(r"[^A-Za-z0-9._:#@+=-]")


def log_file_name(replica_id: str) -> str:
    """`org/model:tag#0` -> `org_model:tag#0.log` (a file name, whatever the model name)."""
    return _UNSAFE.sub("_", replica_id) + ".log"


class LogFiles:
    """Appends engine lines to `folder/<replica>.log`, rotated at MAX_BYTES, keeping BACKUPS
    old files. `write` only queues; a daemon thread does the file I/O, writing whatever is
    queued by then for a replica at once (one write and flush per batch, not per line)."""

    def __init__(self, folder: Path, max_bytes: int = MAX_BYTES, backups: int = BACKUPS):
        self.folder = folder
        self._max_bytes = max_bytes
        self._backups = backups
        self._queue: queue.SimpleQueue[tuple[str, tuple[str, ...]] | None] = queue.SimpleQueue()
        self._handlers: dict[str, logging.Handler] = {}
        self._thread = threading.Thread(target=self._drain, name="dx engine logs", daemon=True)
        self._thread.start()

    def write(self, replica_id: str, lines: tuple[str, ...]) -> None:
        self._queue.put((replica_id, lines))

    def close(self) -> None:
        """Write what is queued, close the files (blocking: call it off the event loop)."""
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _drain(self) -> None:
        done = False
        while not done:
            batch: dict[str, list[str]] = {}
            item = self._queue.get()
            while item is not None:
                replica_id, lines = item
                batch.setdefault(replica_id, []).extend(lines)
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            done = item is None
            for replica_id, queued in batch.items():
                # A full or read-only disk must not stop the engines; the ring buffer has it.
                with contextlib.suppress(OSError):
                    record = logging.makeLogRecord({"msg": "\n".join(queued)})
                    self._handler(replica_id).emit(record)
        for handler in self._handlers.values():
            handler.close()

    def _handler(self, replica_id: str) -> logging.Handler:
        handler = self._handlers.get(replica_id)
        if handler is None:
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            handler = logging.handlers.RotatingFileHandler(
                self.folder / log_file_name(replica_id),
                maxBytes=self._max_bytes,
                backupCount=self._backups,
                encoding="utf-8",
            )
            handler.setFormatter(logging.Formatter("%(message)s"))
            self._handlers[replica_id] = handler
        return handler
