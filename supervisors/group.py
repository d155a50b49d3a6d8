"""One model over several machines: how a group member's engine is started.

Each machine runs its own DX with the same model and its own `GroupSpec.rank`. The members form
the group through the engine's own rendezvous; DX adds the flags and variables for it:

- `launcher: vllm`: vLLM's multiprocessing multi-node mode. Every member gets `--nnodes SIZE
  --node-rank RANK --master-addr LEADER --master-port PORT`; the leader (rank 0) runs vLLM's
  OpenAI server, the others `vllm serve --headless` (no HTTP at all).
- `launcher: ray`: a Ray cluster under vLLM. The leader runs `ray start --head`, waits until
  SIZE nodes are in the cluster, then vLLM with `--distributed-executor-backend ray`
  (supervisors/ray_head.py, one process group, so DX stops both as one engine); the others run
  `ray start --address LEADER:PORT --block` as their engine.
- `interface`: the NIC the members talk over, for gloo, NCCL and vLLM (VLLM_HOST_IP is its
  address: vLLM would otherwise pick the interface of the default route).
- a `command:` engine gets the same as placeholders ({rank}, {size}, {leader}, {group_port})
  and variables (DX_GROUP_RANK, DX_GROUP_SIZE, DX_GROUP_LEADER, DX_GROUP_PORT).

Readiness: the leader's engine answers HTTP only once every rank joined (vLLM's server waits
for its engine core, which waits for the whole process group; the fake launcher in tests does
the same), and the leader's DX also wants every worker's DX linked (group_link.py). A worker
has nothing to probe: it is `worker` while its process runs. All-or-nothing: vLLM 0.32 does
not exit when a peer dies (measured: docs/FLEET.md), so the DX-level link tells each member's
DX, which kills and restarts its engine with the usual backoff, and the group forms again.
"""

from __future__ import annotations

import shutil
import socket
import sys
from pathlib import Path

import psutil

from supervisors.spec import GroupSpec

RAY_HEAD = Path(__file__).with_name("ray_head.py")
_VLLM_SERVER = ("-m", "vllm.entrypoints.openai.api_server")
_VLLM_CLI = ("-m", "dx_vllm_cli", "serve")  # vLLM's CLI, where --headless lives
# Flags a headless vLLM worker has no use for: it serves no HTTP.
_HTTP_ONLY = {"--host", "--port", "--served-model-name", "--middleware"}


# Said with every group failure: why the model is down although this member may be fine.
RESTART_NOTE = (
    "a group restarts whole when a member leaves; every member starts again and waits for "
    "the others"
)


class GroupError(RuntimeError):
    """A member cannot start as configured (a missing interface, no `ray` program)."""


def interface_address(name: str) -> str:
    """The IPv4 address of the network interface `name` (IPv6 when it has none)."""
    addrs = psutil.net_if_addrs()
    if name not in addrs:
        known = ", ".join(sorted(addrs)) or "none"
        raise GroupError(
            f"no network interface {name!r} on this machine (it has: {known}); "
            "fix models.<name>.group.interface"
        )
    for family in (socket.AF_INET, socket.AF_INET6):
        for addr in addrs[name]:
            if addr.family == family:
                return addr.address.split("%")[0]
    raise GroupError(f"network interface {name!r} has no IP address")


def group_env(group: GroupSpec) -> dict[str, str]:
    env = {
        "DX_GROUP_SIZE": str(group.size),
        "DX_GROUP_RANK": str(group.rank),
        "DX_GROUP_LEADER": group.leader,
        "DX_GROUP_PORT": str(group.master_port),
    }
    if group.interface:
        env["GLOO_SOCKET_IFNAME"] = group.interface
        env["NCCL_SOCKET_IFNAME"] = group.interface
        env["VLLM_HOST_IP"] = interface_address(group.interface)
    return env


def placeholders(group: GroupSpec | None) -> dict[str, str]:
    """A `command:` engine's group placeholders."""
    if group is None:
        return {}
    return {
        "{rank}": str(group.rank),
        "{size}": str(group.size),
        "{leader}": group.leader,
        "{group_port}": str(group.master_port),
    }


def vllm_argv(group: GroupSpec, argv: list[str], program: str | None) -> list[str]:
    """The vLLM command line `argv` (DX's own, for one machine) as this member runs it."""
    if group.launcher == "ray":
        if group.is_leader:
            backend = [*argv, "--distributed-executor-backend", "ray"]
            return [
                sys.executable, str(RAY_HEAD),
                "--ray", ray_program(program),
                "--port", str(group.master_port),
                "--size", str(group.size),
                *(["--node-ip-address", interface_address(group.interface)]
                  if group.interface else []),
                "--", *backend,
            ]  # fmt: skip
        return [
            ray_program(program), "start", "--block",
            "--address", f"{group.leader}:{group.master_port}",
            *(["--node-ip-address", interface_address(group.interface)]
              if group.interface else []),
        ]  # fmt: skip
    flags = [
        "--nnodes", str(group.size),
        "--node-rank", str(group.rank),
        "--master-addr", group.leader,
        "--master-port", str(group.master_port),
    ]  # fmt: skip
    if group.is_leader:
        return [*argv, *flags]
    return [*headless(argv), *flags, "--headless"]


def headless(argv: list[str]) -> list[str]:
    """vLLM's OpenAI server command line as `vllm serve --headless` takes it."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if tuple(argv[i : i + 2]) == _VLLM_SERVER:
            out += _VLLM_CLI
            i += 2
        elif argv[i] in _HTTP_ONLY:
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def ray_program(program: str | None) -> str:
    """`ray` from the engine's virtualenv (beside its python), else from PATH."""
    if program:
        candidate = Path(program).expanduser().parent / "ray"
        if candidate.exists():
            return str(candidate)
    found = shutil.which("ray")
    if found is None:
        raise GroupError(
            "launcher: ray needs Ray: pip install ray into the engine's virtualenv "
            "(models.<name>.python), or put `ray` on PATH"
        )
    return found
