"""`models.X.group`: one model over several machines, filled from the environment as
LeaderWorkerSet sets it (LWS_LEADER_ADDRESS, LWS_WORKER_INDEX, LWS_GROUP_SIZE)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dxproxy.config import ConfigError, load_config
from supervisors import GroupSpec

LWS = {"LWS_LEADER_ADDRESS": "big-0.big.default", "LWS_WORKER_INDEX": "1", "LWS_GROUP_SIZE": "2"}

GROUP = """\
models:
  big:
    engine: vllm
    model: org/big
    group:
      size: ${LWS_GROUP_SIZE}
      rank: ${LWS_WORKER_INDEX}
      leader: ${LWS_LEADER_ADDRESS}
      interface: eth1
      port: ${DX_GROUP_PORT:-29600}
"""


def problems(text: str, env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load_config(text, env=env)
    return err.value.problems


def test_a_group_from_the_environment_reaches_the_engine_spec() -> None:
    cfg = load_config(GROUP, env=LWS)
    group = GroupSpec(
        size=2, rank=1, leader="big-0.big.default", launcher="vllm", interface="eth1", port=29600
    )
    assert cfg.models[0].group == group
    assert cfg.models[0].spec().group == group
    assert not group.is_leader and group.master_port == 29600


def test_defaults_launcher_vllm_and_its_port() -> None:
    text = "models:\n  big:\n    engine: vllm\n    model: org/big\n"
    text += "    group:\n      size: 2\n      rank: 0\n      leader: 10.0.0.1\n"
    group = load_config(text, env={}).models[0].group
    assert group is not None and group.launcher == "vllm" and group.interface is None
    assert group.is_leader and group.master_port == 29501  # vLLM's own --master-port default
    ray = load_config(text + "      launcher: ray\n", env={}).models[0].group
    assert ray is not None and ray.master_port == 6379  # Ray's GCS port


def test_integers_from_variables_elsewhere_too() -> None:
    cfg = load_config("server:\n  port: ${PORT}\n  shutdown_timeout: 5\n", env={"PORT": "8081"})
    assert cfg.server.port == 8081


def test_a_variable_that_is_no_number_is_named() -> None:
    env = {**LWS, "LWS_GROUP_SIZE": "two"}
    assert problems(GROUP, env) == [
        "models.big.group.size: expected an integer, got 'two' from ${LWS_GROUP_SIZE}: "
        "set the variable to a number"
    ]


def test_an_unset_variable_is_named() -> None:
    env = {k: v for k, v in LWS.items() if k != "LWS_WORKER_INDEX"}
    found = problems(GROUP, env)
    assert any("environment variable LWS_WORKER_INDEX is not set" in p for p in found), found


@pytest.mark.parametrize(
    ("group", "expected"),
    [
        ("{size: 0, rank: 0, leader: a}", "models.big.group.size: expected 1 or more machines"),
        ("{size: 2, rank: 2, leader: a}", "models.big.group.rank: expected 0 to 1 (size is 2)"),
        ("{size: 2, rank: -1, leader: a}", "models.big.group.rank: expected 0 to 1"),
        ("{size: 2, leader: a}", "models.big.group.rank: required"),
        ("{rank: 0, leader: a}", "models.big.group.size: required"),
        ("{size: 2, rank: 0}", "models.big.group.leader: required"),
        ("{size: 2, rank: 0, leader: 'a b'}", "models.big.group.leader: expected a host name"),
        ("{size: 2, rank: 0, leader: a, launcher: mpi}", "launcher: expected one of vllm, ray"),
        ("{size: 2, rank: 0, leader: a, port: 0}", "group.port: expected a port number"),
        ("{size: 2, rank: 0, leader: a, interface: 'e th'}", "group.interface: expected a"),
        ("{size: 2, rank: 0, leader: a, nodes: 2}", "models.big.group.nodes: unknown key"),
        ("[2, 0]", "models.big.group: expected a mapping"),
    ],
)
def test_mistakes_say_what_is_expected(group: str, expected: str) -> None:
    text = f"models:\n  big:\n    engine: vllm\n    model: org/big\n    group: {group}\n"
    found = problems(text, {})
    assert any(p.startswith(expected) or expected in p for p in found), found


def test_leaders_by_address() -> None:
    for leader in ("10.1.2.3", "'fd00::1'", "big-0.big.default.svc.cluster.local"):
        text = "models:\n  big:\n    engine: vllm\n    model: org/big\n"
        text += f"    group: {{size: 2, rank: 0, leader: {leader}}}\n"
        group = load_config(text, env={}).models[0].group
        assert group is not None and group.leader == leader.strip("'")


def test_only_engines_that_span_machines(tmp_path: Path) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    text = f"models:\n  big:\n    engine: llamacpp\n    model: {gguf}\n"
    text += "    replicas: 2\n    load: on_demand\n    group: {size: 2, rank: 0, leader: a}\n"
    found = problems(text, {})
    assert "models.big.group: only for engine: vllm (or an engine with command:)" in found[0]
    assert any(p.startswith("models.big.replicas: a model with group:") for p in found)
    assert any(p.startswith("models.big.load: a model with group:") for p in found)
    # A `command:` engine may span machines: it gets the group's placeholders.
    text = f"models:\n  big:\n    engine: llamacpp\n    model: {gguf}\n"
    text += "    command: [my-launcher, '{port}']\n    group: {size: 2, rank: 1, leader: a}\n"
    assert load_config(text, env={}).models[0].group is not None


def test_unquoted_variables_in_braces_get_a_hint() -> None:
    # YAML reads `{rank: ${R}}` as nested braces: the issue's own one-line example fails so.
    text = "models:\n  big:\n    engine: vllm\n    model: org/big\n"
    text += "    group: {size: 2, rank: ${R}, leader: a}\n"
    (problem,) = problems(text, {"R": "1"})
    assert 'quote a variable: rank: "${VAR}"' in problem
    quoted = text.replace("${R}", '"${R}"')
    group = load_config(quoted, env={"R": "1"}).models[0].group
    assert group is not None and group.rank == 1


def test_dx_config_check_accepts_a_group_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "dx.yaml"
    path.write_text(GROUP)
    run = [sys.executable, "-m", "dxproxy", "config", "check", str(path)]
    ok = subprocess.run(run, capture_output=True, text=True, env={**os.environ, **LWS}, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "OK (1 model(s): big)" in ok.stdout
    bad = {**os.environ, **LWS, "LWS_WORKER_INDEX": "x"}
    fail = subprocess.run(run, capture_output=True, text=True, env=bad, timeout=60)
    assert fail.returncode == 1
    assert "models.big.group.rank: expected an integer, got 'x' from ${LWS_WORKER_INDEX}" in (
        fail.stderr
    )
