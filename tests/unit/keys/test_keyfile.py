from __future__ import annotations

from pathlib import Path

from dxproxy.keys.keyfile import ensure_api_key


def test_key_is_generated_once_and_kept_private(tmp_path: Path) -> None:
    state = tmp_path / "a" / "dx"
    first = ensure_api_key(state)
    assert first.created and first.key.startswith("dx-") and len(first.key) > 40
    assert first.path.stat().st_mode & 0o777 == 0o600
    assert state.stat().st_mode & 0o777 == 0o700
    again = ensure_api_key(state)
    assert not again.created and again.key == first.key
    first.path.write_text("")  # an interrupted first start left an empty file
    first.path.chmod(0o644)
    refilled = ensure_api_key(state)
    assert refilled.created and refilled.key != first.key
    assert refilled.path.stat().st_mode & 0o777 == 0o600
