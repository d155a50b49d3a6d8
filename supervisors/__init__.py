"""The engines: one OS process per replica, owned by a state machine, reconciled from config.

This is the engine layer's one public face: the front (dxproxy) imports only the names below,
never a module inside (import-linter checks it; tests/unit/supervisors/test_public.py pins the
list). The layer knows nothing of HTTP clients or of the front's config.

- `spec`: `EngineSpec`, what to run (the front translates its config into one)
- `supervisor`: `Supervisor.apply(specs)` reconciles running engines with the specs
- `process`: `Replica`, one engine process and its state machine
- `states`: `EngineState` and the transition table
- `adapters`: per engine kind, the command line, probes and capacity
- `gpus`: the one NVML reader; `placement`: which GPUs each replica gets; `cpus`: which
  cores and how many threads each CPU replica gets, one plan across models
- `logs`: per-engine log files; `reaper`: kills engines' process groups if DX dies
"""

from supervisors.adapters import ADAPTERS, find_llama_server
from supervisors.cpus import CpuShare, cgroup_quota, parse_cpu_list, usable_cpus
from supervisors.cpus import plan as plan_cpus
from supervisors.gpus import Gpu, Inventory, read_gpus
from supervisors.group import GroupError, interface_address
from supervisors.logs import log_file_name
from supervisors.placement import PlacementError, place
from supervisors.process import TAIL_LINES, Replica
from supervisors.spec import GROUP_LAUNCHERS, EngineKind, EngineSpec, GroupSpec, device_label
from supervisors.states import ASLEEP, EngineState, StateChange
from supervisors.supervisor import Supervisor

__all__ = [
    "ADAPTERS",
    "ASLEEP",
    "GROUP_LAUNCHERS",
    "TAIL_LINES",
    "CpuShare",
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
    "cgroup_quota",
    "device_label",
    "find_llama_server",
    "interface_address",
    "log_file_name",
    "parse_cpu_list",
    "place",
    "plan_cpus",
    "read_gpus",
    "usable_cpus",
]
