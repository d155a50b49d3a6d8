"""Removes server file paths from text that goes to clients (engine errors, tracebacks).

A path tells an attacker the user name, the install layout and the versions in use; the file
name alone is what a human needs to recognise the problem, so it is kept: `…/app.py`.
"""

from __future__ import annotations

import re

# An absolute POSIX path with at least two segments, a home-relative one, or a Windows one.
# The look-behind keeps URLs (`http://host/a/b`) and words like `and/or` intact.
_PATH = re.compile(
    r"""(?<![\w.:/~-])(?:~|[A-Za-z]:)?(?:[/\\][\w.@+,=-]+){2,}[/\\]?""",
)
# API routes are not server files: an engine saying "POST /v1/chat/completions" stays readable.
_API_PREFIXES = ("/v1/", "/api/", "/health", "/admin/", "/metrics", "/ready")


def scrub_paths(text: str) -> str:
    """`text` with every absolute file path cut down to `…/<file name>`."""

    def cut(match: re.Match[str]) -> str:
        path = match.group(0)
        if path.startswith(_API_PREFIXES):
            return path
        name = re.split(r"[/\\]", path.rstrip("/\\"))[-1]
        return f"…/{name}"

    return _PATH.sub(cut, text)
