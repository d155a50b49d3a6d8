"""`dx ps` and `dx models` against a real `dx serve` with the fake engine."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from tests.conftest import DX, fake_model, start_dx


def dx_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*DX, *args], capture_output=True, text=True, timeout=60, env=env)


def test_ps_and_models(tmp_path: Path) -> None:
    dx = start_dx(tmp_path, {"fake": fake_model(aliases=["fk"], replicas=2)})
    config = str(tmp_path / "dx.yaml")
    try:
        ps = dx_cli("ps", "--config", config)  # the key from the state directory
        assert ps.returncode == 0, ps.stderr
        header, *rows = ps.stdout.splitlines()
        assert header.split()[:4] == ["MODEL", "REPLICA", "STATE", "ENGINE"]
        assert len(rows) == 2
        cores = sorted(os.sched_getaffinity(0))
        for i, row in enumerate(rows):
            cols = row.split()
            assert cols[:5] == ["fake:latest", f"fake#{i}", "ready", "llama-server", "cpu"]
            # Its share of the CPU (supervisors/cpus.py): two replicas, half the cores each.
            assert cols[6:8] == [f"({max(1, len(cores) // 2)}", "thr)"], cols
            assert cols[8] != "-" and cols[9] == "MiB"  # the engine's RSS, read with psutil
            assert cols[10:] == ["0/1", "0", "0", "never"]  # loaded at start: no expiry

        models = dx_cli("models", "--config", config)
        assert models.returncode == 0, models.stderr
        lines = models.stdout.splitlines()
        assert lines[0].split() == ["NAME", "ALIASES", "ENGINE", "DEVICE", "CONTEXT", "STATE"]
        assert lines[1].split() == ["fake:latest", "fk", "llama-server", "cpu", "4096",
                                    "ready", "2/2"]

        wrong = dx_cli("ps", "--config", config, "--key", "dx-wrong")
        assert wrong.returncode == 1 and "refused the key (HTTP 401)" in wrong.stderr

        watch = subprocess.Popen([*DX, "ps", "--watch", "--interval", "0.3", "--config", config],
                                 stdout=subprocess.PIPE, text=True)
        time.sleep(3)
        watch.terminate()
        out, _ = watch.communicate(timeout=10)
        assert out.count("fake#1") >= 2, out  # refreshed
    finally:
        dx.stop()
    gone = dx_cli("ps", "--config", config)
    assert gone.returncode == 1 and "is `dx serve` running?" in gone.stderr
    offline = dx_cli("models", "--config", config)
    assert offline.returncode == 0 and "not running" in offline.stdout
