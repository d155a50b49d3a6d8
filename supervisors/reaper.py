"""No orphans, grandchildren included: a tiny process that outlives DX only to clean up.

Each engine runs in its own process group and gets PR_SET_PDEATHSIG, so it dies with DX. But
its own children (vLLM's engine-core and worker processes) do not: the kernel tells only the
direct child. So DX starts this reaper once, tells it every engine's process group on a pipe,
and if that pipe reaches end-of-file (DX is gone, however it died, SIGKILL included) the
reaper kills every group it was told about, then exits. A normal shutdown stops the engines
first and then closes the pipe, so the reaper finds nothing left to do.

Protocol on stdin, one line each: `+PGID` (an engine group to kill if DX dies), `-PGID` (it
was stopped). Run by path (`python .../supervisors/reaper.py`): it needs only the standard
library, so it starts without importing the engine layer.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys


def main() -> None:
    # Ctrl-C on a terminal goes to the whole foreground group; the reaper must outlive it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    groups: set[int] = set()
    for line in sys.stdin:
        line = line.strip()
        with contextlib.suppress(ValueError):
            if line.startswith("+"):
                groups.add(int(line[1:]))
            elif line.startswith("-"):
                groups.discard(int(line[1:]))
    for pgid in groups:  # DX is gone: nothing of its engines may survive it
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


if __name__ == "__main__":
    main()
