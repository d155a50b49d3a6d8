"""Every DX config that kubernetes/ puts in a ConfigMap is one DX accepts: `dx config check`
(the real command, as an operator would run it) on each, with the environment the pods give
it (keys from the Secrets, LeaderWorkerSet's variables for each rank). And the inference
pool's wiring: pool, picker, route, labels. About 25 s on a loaded 2-core machine (each check
is a new Python process)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, smollm2_path
from tests.kubernetes.manifests import (
    LAYOUTS,
    dx_config_of,
    is_dx,
    one,
    pod_templates,
    render,
    walk,
)

DX = [sys.executable, "-m", "dxproxy"]
# What the pods' Secrets hold (any value of the right shape: DX wants keys of 16+ characters).
SECRETS = {
    "DX_FLEET_KEY": "dx-fleet-0123456789abcdef",
    "DX_API_KEY": "dx-client-0123456789abcdef",
    "DX_REDIS_PASSWORD": "0123456789abcdef",
}
# LeaderWorkerSet's variables for a group of 2 (subdomainPolicy Shared): rank 0 and rank 1.
LWS_RANKS = [
    {
        "LWS_GROUP_SIZE": "2",
        "LWS_WORKER_INDEX": str(rank),
        "LWS_LEADER_ADDRESS": "dx-group-0.dx-group.dx",
    }
    for rank in (0, 1)
]


def configs() -> list[tuple[str, str, str, dict[str, str]]]:
    """(layout, ConfigMap, text, env) of every DX config a DX pod runs, once per environment."""
    found = []
    for layout in LAYOUTS:
        docs = render(layout)
        seen = set()
        for _, template in pod_templates(docs):
            if not any(is_dx(c) for c in template["spec"]["containers"]):
                continue
            name, _ = dx_config_of(docs, template)
            if name in seen:
                continue
            seen.add(name)
            text = one(docs, "ConfigMap", name)["data"]["dx.yaml"]
            names = {e["name"] for c in template["spec"]["containers"] for e in c.get("env", [])}
            env = {k: v for k, v in SECRETS.items() if k in names}
            for extra in LWS_RANKS if "${LWS_" in text else [{}]:
                found.append((layout, name, text, env | extra))
    return found


CONFIGS = configs()


def test_every_dx_config_is_found() -> None:
    # base: node + gateway; inference-gateway: node; multinode: gateway + group (2 ranks).
    assert [(layout, name) for layout, name, _, _ in CONFIGS] == [
        ("base", "dx-gateway-config"),
        ("base", "dx-node-config"),
        ("inference-gateway", "dx-node-config"),
        ("multinode", "dx-gateway-config"),
        ("multinode", "dx-group-config"),
        ("multinode", "dx-group-config"),
    ]


def stage_models(text: str, root: Path) -> str:
    """The config with its /models/... files staged under `root`: the node's disk, which no
    test machine has. A GGUF is the bundled SmolLM2 (DX reads its header), a vLLM model a
    folder."""
    config = yaml.safe_load(text)
    for model in config.get("models", {}).values():
        path = model.get("model", "")
        if not path.startswith("/models/"):
            continue
        staged = root / path.removeprefix("/")
        staged.parent.mkdir(parents=True, exist_ok=True)
        if path.endswith(".gguf"):
            staged.symlink_to(smollm2_path())
        else:
            staged.mkdir()
            (staged / "config.json").write_text("{}")
    return text.replace("/models/", f"{root}/models/")


def config_check(
    text: str, env: dict[str, str], tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    """`dx config check` of `text` (its model paths staged under tmp_path), with only `env`
    (and PATH, HOME) in its environment, as a pod has."""
    path = tmp_path / "dx.yaml"
    path.write_text(stage_models(text, tmp_path))
    return subprocess.run(
        [*DX, "config", "check", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **env},
        cwd=ROOT,
    )


@pytest.mark.parametrize(
    ("layout", "name", "text", "env"),
    CONFIGS,
    ids=[f"{c[0]}-{c[1]}-{c[3].get('LWS_WORKER_INDEX', '')}".rstrip("-") for c in CONFIGS],
)
def test_dx_config_check_accepts(
    layout: str, name: str, text: str, env: dict[str, str], tmp_path: Path
) -> None:
    out = config_check(text, env, tmp_path)
    assert out.returncode == 0, f"{layout} {name} with {env}:\n{out.stdout}\n{out.stderr}"


def test_dx_config_check_refuses_a_missing_secret(tmp_path: Path) -> None:
    """The check is not a rubber stamp: without the Secret's variable, the node's config fails
    and says which variable."""
    text = next(c[2] for c in CONFIGS if c[1] == "dx-node-config")
    out = config_check(text, {}, tmp_path)
    assert out.returncode == 1
    assert "DX_FLEET_KEY" in out.stdout + out.stderr


def test_group_config_reads_leaderworkerset_variables() -> None:
    text = one(render("multinode"), "ConfigMap", "dx-group-config")["data"]["dx.yaml"]
    (group,) = [m["group"] for m in yaml.safe_load(text)["models"].values()]
    assert group["size"] == "${LWS_GROUP_SIZE}"
    assert group["rank"] == "${LWS_WORKER_INDEX}"
    assert group["leader"] == "${LWS_LEADER_ADDRESS}"


def test_inference_pool_wiring() -> None:
    """The pool selects DX's node pods on DX's port, names the picker's Service and port, the
    route sends to the pool, the pods carry the engine label the picker's extractor keys on."""
    docs = render("inference-gateway")
    epp = yaml.safe_load(one(docs, "ConfigMap", "dx-epp-config")["data"]["epp.yaml"])
    (extractor,) = [p for p in epp["plugins"] if p["type"] == "core-metrics-extractor"]
    pool = one(docs, "InferencePool", "dx-qwen")
    labels = one(docs, "DaemonSet", "dx-node")["spec"]["template"]["metadata"]["labels"]
    assert labels[extractor["parameters"]["engineLabelKey"]] == "dx"
    assert pool["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pool["spec"]["targetPorts"] == [{"number": 11434}]
    picker = one(docs, "Service", pool["spec"]["endpointPickerRef"]["name"])
    assert pool["spec"]["endpointPickerRef"]["port"]["number"] in [
        p["port"] for p in picker["spec"]["ports"]
    ]
    route = one(docs, "HTTPRoute", "dx-qwen")
    backends = [b for _, k, v in walk(route) if k == "backendRefs" for b in v]
    assert backends == [
        {"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": "dx-qwen"}
    ]
    deployment = one(docs, "Deployment", "dx-epp")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--pool-name") + 1] == "dx-qwen"
    # v1.5.0's picker refuses its old metric flags (engineConfigs replaced them).
    assert not [a for a in args if a.endswith("-metric") or "-metric=" in a]
