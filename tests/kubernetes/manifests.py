"""The Kubernetes manifests of kubernetes/, rendered as `kubectl kustomize` renders them, and the
schemas they are checked against: Kubernetes' own (PyPI kubernetes-validate, bundled, strict)
and the custom resources' CRDs (tests/data/crds/, vendored; README.md there says from where).

No cluster runs here: what a cluster would add (admission, CEL rules of the CRDs, controllers)
is not checked. kubectl must be on the machine (the image ships 1.32): missing, it fails.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT

KUBERNETES = ROOT / "kubernetes"
CRDS = ROOT / "tests" / "data" / "crds"
# Every kustomization a user may apply, by the name the docs give it.
LAYOUTS = {
    "base": KUBERNETES / "base",
    "inference-gateway": KUBERNETES / "overlays" / "inference-gateway",
    "multinode": KUBERNETES / "overlays" / "multinode",
}
# The Kubernetes version the built-in kinds are validated against: kubectl's on the image.
KUBERNETES_VERSION = "1.32.0"
# apiVersion/kind -> the vendored CRD schema that validates it.
CUSTOM = {
    ("inference.networking.k8s.io/v1", "InferencePool"): "inferencepool.v1.json",
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): "httproute.v1.json",
    ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet"): "leaderworkerset.v1.json",
    ("monitoring.coreos.com/v1", "PodMonitor"): "podmonitor.v1.json",
}

Doc = dict[str, Any]


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.fail(
            "kubectl is missing: the machine image ships kubectl 1.32 (with kustomize); "
            "install it (https://kubernetes.io/docs/tasks/tools/) to check kubernetes/"
        )
    return path


@functools.cache
def _render(layout: str) -> tuple[Doc, ...]:
    out = subprocess.run(
        [kubectl(), "kustomize", str(LAYOUTS[layout])],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, f"kubectl kustomize {layout} failed:\n{out.stderr}"
    assert not out.stderr.strip(), f"kubectl kustomize {layout} warns:\n{out.stderr}"
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def render(layout: str) -> list[Doc]:
    """The resources `kubectl apply -k` would send, fresh copies (tests may mutate them)."""
    return copy.deepcopy(list(_render(layout)))


def find(docs: list[Doc], kind: str, name: str | None = None) -> list[Doc]:
    return [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]


def one(docs: list[Doc], kind: str, name: str) -> Doc:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_templates(docs: list[Doc]) -> Iterator[tuple[str, Doc]]:
    """(where, pod template) of every workload, the LeaderWorkerSet's leader and worker too."""
    for d in docs:
        where = f"{d['kind']}/{d['metadata']['name']}"
        if d["kind"] in ("Deployment", "DaemonSet", "StatefulSet", "Job"):
            yield where, d["spec"]["template"]
        elif d["kind"] == "LeaderWorkerSet":
            lwt = d["spec"]["leaderWorkerTemplate"]
            if "leaderTemplate" in lwt:
                yield f"{where} leader", lwt["leaderTemplate"]
            yield f"{where} worker", lwt["workerTemplate"]


def is_dx(container: Doc) -> bool:
    """A container that runs DX (DX's node image, or the one built FROM vLLM's)."""
    return str(container["image"]).startswith(("localhost/dx:", "localhost/dx-vllm:"))


def dx_config_of(docs: list[Doc], template: Doc) -> tuple[str, dict[str, Any]]:
    """(ConfigMap name, parsed DX config) a DX pod runs: the ConfigMap volume mounted where
    its `--config` argument points."""
    (container,) = [c for c in template["spec"]["containers"] if is_dx(c)]
    args = container["args"]
    config_path = Path(args[args.index("--config") + 1])
    mount = next(m for m in container["volumeMounts"] if Path(m["mountPath"]) == config_path.parent)
    volume = next(v for v in template["spec"]["volumes"] if v["name"] == mount["name"])
    name = volume["configMap"]["name"]
    text = one(docs, "ConfigMap", name)["data"][config_path.name]
    return name, yaml.safe_load(text)


def walk(node: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    """Every (path, key, value) of a nested document."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield path, k, v
            yield from walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, f"{path}[{i}]")


def selects(selector: Doc, labels: dict[str, str]) -> bool:
    """Whether a label selector ({matchLabels, matchExpressions} or a Service's plain map)
    selects pods with these labels."""
    match = selector.get("matchLabels", selector if "matchExpressions" not in selector else {})
    if any(labels.get(k) != v for k, v in match.items() if k != "matchExpressions"):
        return False
    for e in selector.get("matchExpressions", []):
        value = labels.get(e["key"])
        if e["operator"] == "In" and value not in e["values"]:
            return False
        if e["operator"] == "NotIn" and value in e["values"]:
            return False
        if e["operator"] == "Exists" and value is None:
            return False
        if e["operator"] == "DoesNotExist" and value is not None:
            return False
    return True


@functools.cache
def _crd(filename: str) -> Doc:
    return json.loads((CRDS / filename).read_text())


def crd_schema(api_version: str, kind: str) -> Doc:
    """The CRD's openAPIV3Schema made strict the way the API server is with
    `fieldValidation=Strict`: an object that lists its properties accepts no others (unless
    it says x-kubernetes-preserve-unknown-fields)."""
    filename = CUSTOM.get((api_version, kind))
    assert filename is not None, (
        f"no vendored CRD for {api_version} {kind}: add it to tests/data/crds"
    )
    schema = copy.deepcopy(_crd(filename)["openAPIV3Schema"])

    def strict(node: Any) -> None:
        if isinstance(node, dict):
            if (
                node.get("type") == "object"
                and "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for v in node.values():
                strict(v)
        elif isinstance(node, list):
            for v in node:
                strict(v)

    strict(schema)
    # The top level's metadata is the API server's ObjectMeta, which the CRD leaves open.
    return schema


def crd_source(api_version: str, kind: str) -> Doc:
    return dict(_crd(CUSTOM[(api_version, kind)])["source"])


HASH_SUFFIX = re.compile(r"-[bcdfghkmt2-9]{10}$")  # what kustomize's name hash looks like
