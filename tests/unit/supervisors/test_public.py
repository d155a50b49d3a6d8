"""The engine layer's public face: what `supervisors/__init__.py` exports is the whole contract
the front may use (import-linter forbids the front any module inside). A change to this list
is a change to that contract: make it on purpose."""

from __future__ import annotations

import subprocess
import sys

import supervisors

PUBLIC = {
    "ADAPTERS",
    "GROUP_LAUNCHERS",
    "ASLEEP",
    "CpuShare",
    "TAIL_LINES",
    "EngineKind",
    "EngineSpec",
    "EngineState",
    "Gpu",
    "GroupError",
    "GroupSpec",
    "Inventory",
    "PlacementError",
    "Replica",
    "StateChange",
    "Supervisor",
    "device_label",
    "find_llama_server",
    "interface_address",
    "log_file_name",
    "parse_cpu_list",
    "place",
    "read_gpus",
    "cgroup_quota",
    "plan_cpus",
    "usable_cpus",
}


def test_the_exported_names_are_the_contract() -> None:
    assert set(supervisors.__all__) == PUBLIC
    for name in PUBLIC:
        assert getattr(supervisors, name) is not None, name


def test_the_engine_layer_imports_nothing_of_the_front() -> None:
    code = "import sys, supervisors; print([m for m in sys.modules if m.startswith('dxproxy')])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
