"""`dx logs MODEL [--follow]`: what a model's engines printed, from their log files.

The supervisor writes each replica's output to `STATE_DIR/logs/<model>#<replica>.log`
(rotated at 10 MiB, 3 old files kept), so this works whether or not DX is running, and
needs no key: only users who can read the state directory (mode 0700) can read the logs.
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from pathlib import Path

import click

from dxproxy.cli.options import config_option, load
from supervisors import log_file_name

POLL = 0.2  # seconds between looks at a followed file


@click.command("logs")
@click.argument("model")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines as they come.")
@click.option("--lines", "-n", default=100, show_default=True, help="Lines to show first.")
@config_option("The config dx serves (it names the state directory). Default: the embedded one.")
def logs(model: str, follow: bool, lines: int, config_path: str | None) -> None:
    """Show the engine output of MODEL (every replica; new lines with --follow).

    \b
    Examples:
      dx logs smollm2                 the last 100 lines
      dx logs smollm2 -f              and then whatever comes, until Ctrl-C
      dx logs qwen --config /etc/dx/dx.yaml
    """
    config = load(config_path)
    m = config.model(model)
    name = m.name if m else model
    folder = config.server.state_dir / "logs"
    files = sorted(folder.glob(log_file_name(f"{name}#").removesuffix(".log") + "*.log"))
    if not files:
        known = ", ".join(x.name for x in config.models) or "none"
        raise click.ClickException(
            f"no engine logs for '{model}' in {folder} (models in this config: {known}; "
            "has dx served it yet?)"
        )
    several = len(files) > 1
    for path in files:
        prefix = f"{path.stem}| " if several else ""
        with path.open(encoding="utf-8", errors="replace") as f:
            for line in deque(f, maxlen=lines):
                click.echo(prefix + line.rstrip("\n"))
    if follow:
        _follow(files, several)


def _follow(files: list[Path], prefixed: bool) -> None:
    """Print lines appended to `files`, reopening a file when it is rotated."""
    handles = {}
    for path in files:
        f = path.open(encoding="utf-8", errors="replace")
        f.seek(0, os.SEEK_END)
        handles[path] = (f, os.fstat(f.fileno()).st_ino)
    try:
        while True:
            for path, (f, inode) in list(handles.items()):
                for line in f:
                    click.echo((f"{path.stem}| " if prefixed else "") + line.rstrip("\n"))
                try:
                    if os.stat(path).st_ino != inode:  # rotated: the new file, from its start
                        f.close()
                        new = path.open(encoding="utf-8", errors="replace")
                        handles[path] = (new, os.fstat(new.fileno()).st_ino)
                except FileNotFoundError:
                    pass
            sys.stdout.flush()
            time.sleep(POLL)
    except KeyboardInterrupt:
        pass
