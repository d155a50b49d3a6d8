"""systemd/dx.service as systemd itself reads it: `systemd-analyze verify`, from Debian's
systemd package (scripts/setup installs it). Missing means the setup is incomplete: the test
fails, it never skips."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "dx.service"
DROP_IN = ROOT / "systemd" / "dx.service.d" / "override.conf.example"


def analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.fail("systemd-analyze is missing: run scripts/setup (apt-get install systemd)")
    return tool


def directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def verify(tmp_path: Path, unit_text: str) -> subprocess.CompletedProcess[str]:
    # verify checks that ExecStart's program exists: point it at this checkout's real `dx`.
    dx = Path(sys.executable).parent / "dx"
    assert dx.is_file(), dx
    text = unit_text.replace("/opt/dx/venv/bin/dx", str(dx))
    unit = tmp_path / "dx.service"
    unit.write_text(text)
    return subprocess.run(
        [analyze(), "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_unit_verifies_cleanly(tmp_path: Path) -> None:
    result = verify(tmp_path, UNIT.read_text())
    # verify exits 0 even for unknown keys or bad values ("ignoring"): any output is a defect.
    assert result.returncode == 0 and not result.stderr.strip() and not result.stdout.strip(), (
        result.stdout + result.stderr
    )


def test_hardening_keeps_its_exposure_score(tmp_path: Path) -> None:
    """systemd's own rating of the sandbox (0 = locked down, 10 = none): 3.2 "OK" when this
    was written. A change that loosens it past 4.0 fails here."""
    unit = tmp_path / "dx.service"
    unit.write_text(UNIT.read_text().replace("/opt/dx/venv/bin/dx", str(Path(sys.executable))))
    result = subprocess.run(
        [analyze(), "security", "--offline=true", "--threshold=40", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    score = re.search(r"Overall exposure level for dx.service: ([\d.]+)", result.stdout)
    assert score is not None and float(score.group(1)) <= 4.0, result.stdout[-300:]


def test_verify_would_catch_a_typo(tmp_path: Path) -> None:
    """The clean verdict above means something: the same check flags a broken line."""
    broken = UNIT.read_text().replace("Type=notify", "Type=notifyy")
    result = verify(tmp_path, broken)
    assert "Failed to parse service type" in result.stderr


def test_unit_says_what_issue_9_asks() -> None:
    d = directives(UNIT.read_text())
    assert d["Type"] == ["notify"] and d["NotifyAccess"] == ["main"]
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert d["WatchdogSec"] == ["30s"]
    assert d["Restart"] == ["on-failure"]
    assert d["User"] == ["dx"] and d["Group"] == ["dx"]
    assert d["NoNewPrivileges"] == ["yes"] and d["ProtectSystem"] == ["strict"]
    assert d["StateDirectory"] == ["dx"] and d["PrivateTmp"] == ["yes"]
    assert d["ProtectHome"] == ["yes"]
    assert d["DevicePolicy"] == ["closed"] and d["DeviceAllow"] == ["char-nvidia* rw"]
    assert d["LimitNOFILE"] == ["65536"]
    assert d["KillMode"] == ["mixed"]


def test_drop_in_example_verifies_with_the_unit(tmp_path: Path) -> None:
    """Every line of the example drop-in, uncommented, is still a valid unit."""
    lines = []
    for line in DROP_IN.read_text().splitlines():
        # Uncomment `#Key=value` lines (not prose), as someone copying them would.
        if line.startswith("#") and "=" in line.split()[0] and " " not in line.split("=")[0]:
            line = line[1:]
        lines.append(line)
    # Its ExecStart= lines name another install location, which does not exist here.
    text = (
        UNIT.read_text()
        + "\n"
        + "\n".join(line for line in lines if not line.startswith("ExecStart"))
    )
    result = verify(tmp_path, text)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
