"""`dx doctor`'s CPU plan: how the cores will be divided, and a warning when threads pinned by
hand in `args` oversubscribe them; `server.cpus` as a list or a cpulist."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dxproxy.cli.doctor import Machine, Report, check_cpu_plan
from dxproxy.config import ConfigError, load_config


def config(tmp_path: Path, models: str, server: str = "") -> object:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    entries = models.replace("MODEL", f"{model}, engine: llamacpp")
    text = f"server:\n  state_dir: {tmp_path}\n{server}models:\n{entries}"
    return load_config(text, source=str(tmp_path / "dx.yaml"), env={})


def plan_check(cfg: object) -> tuple[str, str]:
    report = Report()
    check_cpu_plan(report, cfg, Machine())  # type: ignore[arg-type]
    (check,) = [c for c in report.checks if c.name == "cpu plan"]
    return check.status, check.detail


def test_the_plan_is_shown(tmp_path: Path) -> None:
    cores = sorted(os.sched_getaffinity(0))
    status, detail = plan_check(config(tmp_path, "  a: {model: MODEL}\n  b: {model: MODEL}\n"))
    assert status == "ok"
    assert "a#0 cpus" in detail and "b#0 cpus" in detail, detail
    if len(cores) >= 2:
        assert "1 thread" in detail


def test_threads_pinned_by_hand_that_oversubscribe_are_a_warning(tmp_path: Path) -> None:
    cores = len(os.sched_getaffinity(0))
    many = str(cores + 1)
    status, detail = plan_check(
        config(
            tmp_path, f"  a: {{model: MODEL, args: [--threads, '{many}']}}\n  b: {{model: MODEL}}\n"
        )
    )
    assert status == "warn"
    assert "remove --threads" in detail and "a set --threads by hand" in detail


def test_server_cpus_takes_a_list_or_a_cpulist(tmp_path: Path) -> None:
    one = min(os.sched_getaffinity(0))
    cfg = config(tmp_path, "  a: {model: MODEL}\n", f"  cpus: '{one}'\n")
    assert cfg.server.cpus == (one,)  # type: ignore[attr-defined]
    assert plan_check(cfg)[1].endswith(f"a#0 cpus {one}, 1 thread")
    cfg = config(tmp_path, "  a: {model: MODEL}\n", "  cpus: [0, 1, 2]\n")
    assert cfg.server.cpus == (0, 1, 2)  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match=r"server\.cpus"):
        config(tmp_path, "  a: {model: MODEL}\n", "  cpus: 3-1\n")
