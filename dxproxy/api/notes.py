"""What a translated request carried that the engine cannot do: dropped or mapped, and said
so in the log (once per kind of note, so a client that sends the same thing on every turn
does not flood it), never refused with a 400 the real service would not give."""

from __future__ import annotations

import logging

log = logging.getLogger("dx.api")

_SEEN: set[str] = set()
_MAX_SEEN = 1024  # distinct notes remembered; past that, notes are logged again


def note(dialect: str, message: str) -> None:
    """Log `message` (what was dropped or mapped, and why) the first time it is seen."""
    key = f"{dialect}: {message}"
    if key in _SEEN:
        return
    if len(_SEEN) >= _MAX_SEEN:
        _SEEN.clear()
    _SEEN.add(key)
    log.info("%s", key)
