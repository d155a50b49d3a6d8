"""A multi-node group member's engine: vLLM's flags, Ray's, the NIC variables, its state."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

from supervisors import group as group_mod
from supervisors.adapters import ADAPTERS, Launch
from supervisors.group import GroupError, headless
from supervisors.spec import EngineSpec, GroupSpec
from supervisors.states import TRANSITIONS, EngineState

CPU = Launch(port=4242, api_key="k3y", gpus=())


def spec(rank: int, **group: object) -> EngineSpec:
    g = GroupSpec(size=2, rank=rank, leader="10.0.0.1", **group)  # type: ignore[arg-type]
    return EngineSpec(
        name="big",
        kind="vllm",
        model="/m/big",
        program="/venv/bin/python",
        args=("--pipeline-parallel-size", "2"),
        group=g,
    )


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_vllm_leader_serves_with_the_multi_node_flags() -> None:
    argv = ADAPTERS["vllm"].argv(spec(0), CPU)
    assert argv[:3] == ["/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    assert flag(argv, "--nnodes") == "2" and flag(argv, "--node-rank") == "0"
    assert flag(argv, "--master-addr") == "10.0.0.1" and flag(argv, "--master-port") == "29501"
    assert flag(argv, "--port") == "4242" and "--headless" not in argv
    assert flag(argv, "--pipeline-parallel-size") == "2"  # the operator's args stay


def test_vllm_worker_runs_headless_without_http() -> None:
    argv = ADAPTERS["vllm"].argv(spec(1, port=29600), CPU)
    assert argv[:4] == ["/venv/bin/python", "-m", "dx_vllm_cli", "serve"]
    assert flag(argv, "--model") == "/m/big" and "--headless" in argv
    assert flag(argv, "--node-rank") == "1" and flag(argv, "--master-port") == "29600"
    for http in ("--port", "--host", "--served-model-name", "--middleware"):
        assert http not in argv
    assert flag(argv, "--pipeline-parallel-size") == "2"  # the model's split is the same


def test_headless_keeps_engine_flags() -> None:
    argv = [
        "py",
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        "m",
        "--port",
        "1",
        "--max-model-len",
        "2048",
    ]
    assert headless(argv) == [
        "py",
        "-m",
        "dx_vllm_cli",
        "serve",
        "--model",
        "m",
        "--max-model-len",
        "2048",
    ]


def test_ray_leader_starts_the_head_then_vllm_on_ray(tmp_path: Path) -> None:
    venv = tmp_path / "bin"
    venv.mkdir()
    (venv / "ray").write_text("")
    s = spec(0, launcher="ray")
    s = dataclasses.replace(s, program=str(venv / "python"))
    argv = ADAPTERS["vllm"].argv(s, CPU)
    assert argv[:2] == [sys.executable, str(group_mod.RAY_HEAD)]
    assert flag(argv, "--ray") == str(venv / "ray") and flag(argv, "--port") == "6379"
    assert flag(argv, "--size") == "2"
    engine = argv[argv.index("--") + 1 :]
    assert engine[0] == str(venv / "python")
    assert flag(engine, "--distributed-executor-backend") == "ray"
    assert "--nnodes" not in engine
    worker = ADAPTERS["vllm"].argv(
        dataclasses.replace(s, group=GroupSpec(2, 1, "lead", "ray")), CPU
    )
    assert worker == [str(venv / "ray"), "start", "--block", "--address", "lead:6379"]


def test_ray_missing_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(group_mod.shutil, "which", lambda _: None)
    with pytest.raises(GroupError, match="pip install ray"):
        ADAPTERS["vllm"].argv(spec(1, launcher="ray"), CPU)


def test_interface_sets_what_gloo_nccl_and_vllm_read() -> None:
    env = ADAPTERS["vllm"].env(spec(1, interface="lo"), CPU)
    assert env["GLOO_SOCKET_IFNAME"] == env["NCCL_SOCKET_IFNAME"] == "lo"
    assert env["VLLM_HOST_IP"] == "127.0.0.1"
    assert env["DX_GROUP_RANK"] == "1" and env["DX_GROUP_LEADER"] == "10.0.0.1"
    with pytest.raises(GroupError, match=r"no network interface 'eth9'.*it has: .*lo"):
        ADAPTERS["vllm"].env(spec(1, interface="eth9"), CPU)


def test_a_command_engine_gets_placeholders() -> None:
    s = EngineSpec(
        name="big",
        kind="vllm",
        model="m",
        group=GroupSpec(3, 2, "lead", port=7),
        command=("run", "{rank}/{size}", "{leader}:{group_port}", "{port}"),
    )
    assert ADAPTERS["vllm"].argv(s, CPU) == ["run", "2/3", "lead:7", "4242"]


def test_a_worker_is_its_own_state() -> None:
    assert EngineState.WORKER in TRANSITIONS[EngineState.STARTING]
    assert TRANSITIONS[EngineState.WORKER] == {EngineState.STOPPING, EngineState.FAILED}
