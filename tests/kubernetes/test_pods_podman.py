"""The base's DX node and gateway pods, run for real: the DaemonSet's and the Deployment's pod
templates with their ConfigMaps, as `kubectl kustomize` renders them, played by podman
(`podman kube play`, the nearest thing to a kubelet on this machine) with DX's image built
from this tree (`scripts/container build`, as tests/e2e/test_container.py does) and a real
model (SmolLM2 under the file name the node config names, in the folder the hostPath names).

Changed from the manifest, because this machine has no GPU and podman 4.3 is not a kubelet: the
GPU scheduling (nodeSelector, tolerations, nvidia.com/gpu) is dropped, the Secret's key is a
literal env value, the preStop sleep is dropped (podman 4.3 does not know it), the port is
published on loopback. Everything else is the manifest's: the image, args, uid/gid 10001,
read-only root, dropped capabilities, the config directory, the emptyDir state, the probes'
paths. The gateway pod then reaches the node by the headless Service's name (an alias on a
podman network: aardvark's DNS stands in for the cluster's). About 30 s per test (load
average 15-23); the image build before them: 1.5 to 3.5 min here when DX changed since the
last build, seconds otherwise."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, free_port, http_call, smollm2_path
from tests.kubernetes.manifests import dx_config_of, one, render

KEY = "dx-fleet-0123456789abcdef"  # what the Secret dx-fleet-key would hold
CLIENT_KEY = "dx-client-0123456789abcdef"  # the Secret dx-api-key
REDIS_PASSWORD = "0123456789abcdef"  # the Secret dx-redis
NODES, NAMESPACE = "dx-nodes", "dx"  # the headless Service the gateways resolve
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dx"


def podman(*args: str, timeout: float = 120, check: bool = True) -> str:
    env = dict(os.environ)
    env.setdefault("CONTAINERS_CONF", str(CACHE / "containers.conf"))  # scripts/container's
    out = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, env=env
    )
    if check:
        assert out.returncode == 0, f"podman {' '.join(args)}\n{out.stdout}\n{out.stderr}"
    return out.stdout


def node_pod(tmp_path: Path, port: int) -> tuple[Path, dict[str, Any]]:
    """The kube YAML podman plays (ConfigMap + Pod) and the pod's DX config."""
    docs = render("base")
    template = one(docs, "DaemonSet", "dx-node")["spec"]["template"]
    _, config = dx_config_of(docs, template)
    configmap = one(docs, "ConfigMap", "dx-node-config")
    spec = template["spec"]
    spec.pop("nodeSelector")
    spec.pop("tolerations")
    (container,) = spec["containers"]
    for part in ("requests", "limits"):
        container["resources"][part].pop("nvidia.com/gpu")
    container.pop("lifecycle")
    container["env"] = [{"name": "DX_FLEET_KEY", "value": KEY}]
    container["ports"][0].update(hostPort=port, hostIP="127.0.0.1")
    models = next(v for v in spec["volumes"] if v["name"] == "models")["hostPath"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "models")["mountPath"]
    folder = tmp_path / "models"
    folder.mkdir()
    for model in config["models"].values():
        # The file the config names, under the folder the hostPath names (readable by 10001).
        name = Path(model["model"]).relative_to(mount)
        shutil.copyfile(smollm2_path(), folder / name)
        (folder / name).chmod(0o644)
    folder.chmod(0o755)
    tmp_path.chmod(0o755)
    models["path"] = str(folder)
    name = f"dx-node-test-{os.getpid()}"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": template["metadata"]["labels"]},
        "spec": spec,
    }
    configmap["metadata"].pop("namespace", None)
    path = tmp_path / "pod.yaml"
    path.write_text(yaml.safe_dump_all([configmap, pod]))
    return path, config


@pytest.fixture(scope="module")
def image() -> str:
    if shutil.which("podman") is None:
        pytest.fail("podman is missing: run scripts/setup (it installs podman, runc, debootstrap)")
    build = subprocess.run(
        [str(ROOT / "scripts" / "container"), "build", "-q"],
        capture_output=True,
        text=True,
        timeout=1500,
        cwd=ROOT,
    )
    assert build.returncode == 0, f"the image did not build:\n{build.stdout}\n{build.stderr}"
    return "localhost/dx:latest"


@pytest.fixture
def network(image: str) -> Iterator[str]:
    """A podman network whose DNS (aardvark) resolves the headless Service's name to the node
    pod, as cluster DNS would."""
    name = f"dx-k8s-test-{os.getpid()}"
    podman("network", "create", name)
    try:
        yield name
    finally:
        podman("network", "rm", "-f", name, check=False)


@pytest.fixture
def played(network: str, tmp_path: Path) -> Iterator[tuple[int, str, dict[str, Any]]]:
    port = free_port()
    path, config = node_pod(tmp_path, port)
    service = f"{NODES}.{NAMESPACE}.svc.cluster.local"
    podman("kube", "play", "--network", f"{network}:alias={service}", str(path))
    docs = yaml.safe_load_all(path.read_text())
    pod_name = next(d for d in docs if d["kind"] == "Pod")["metadata"]["name"]
    try:
        yield port, f"{pod_name}-dx", config
    finally:
        podman("kube", "down", str(path), check=False)


def test_the_node_pod_serves_as_the_manifest_says(played: tuple[int, str, dict[str, Any]]) -> None:
    port, container, config = played
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120  # well inside the startupProbe's 11 minutes
    while http_call(f"{url}/ready")[0] != 200:
        assert time.monotonic() < deadline, podman("logs", container, check=False)
        time.sleep(0.5)
    assert http_call(f"{url}/health")[0] == 200
    (model,) = config["models"]
    chat = {"model": model, "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]}
    # The gateways' key (the Secret's) is accepted; no key is refused.
    status, body = http_call(f"{url}/v1/chat/completions", KEY, chat)
    assert status == 200, body
    assert json.loads(body)["choices"][0]["message"]["content"]
    assert http_call(f"{url}/v1/chat/completions", None, chat)[0] == 401
    # /metrics without a key, for Prometheus and the endpoint picker (metrics_open).
    status, text = http_call(f"{url}/metrics")
    assert status == 200 and "dx_model_requests_running" in text

    def inside(script: str) -> str:
        return podman("exec", container, "python3", "-c", script)

    # The pod's security context holds: uid/gid 10001, root filesystem read-only, DX writes
    # only in its state_dir (the emptyDir).
    assert inside("import os; print(os.getuid(), os.getgid())").split() == ["10001", "10001"]
    assert "Read-only" in inside(
        "import os\ntry: open('/probe', 'w')\nexcept OSError as e: print(e.strerror)"
    )
    assert "api-key" in inside(f"import os; print(os.listdir({config['server']['state_dir']!r}))")
    # Nothing but DX's port listens beyond loopback: the engine is on 127.0.0.1, so no
    # Service or policy could expose it.
    listening = inside(
        "for f in ('/proc/net/tcp', '/proc/net/tcp6'):\n"
        "    for line in open(f).readlines()[1:]:\n"
        "        local, state = line.split()[1], line.split()[3]\n"
        "        if state == '0A': print(local)"
    ).split()
    addresses = {(a.split(":")[0], int(a.split(":")[1], 16)) for a in listening}
    public = {p for a, p in addresses if a not in ("0100007F", "00000000000000000000000001000000")}
    assert public == {11434}, addresses
    assert len(addresses) >= 2  # DX's port and at least one engine, on loopback


def gateway_pod(tmp_path: Path, port: int, redis_ip: str) -> Path:
    """The base's gateway pod (its Deployment's template and ConfigMap), Redis's Service name
    pointed at `redis_ip`. Changed as for the node: keys as literal env values, no preStop,
    no anti-affinity (one machine), the port published on loopback."""
    docs = render("base")
    template = one(docs, "Deployment", "dx-gateway")["spec"]["template"]
    configmap = one(docs, "ConfigMap", "dx-gateway-config")
    configmap["metadata"].pop("namespace", None)
    spec = template["spec"]
    spec.pop("affinity")
    spec["hostAliases"] = [
        {"ip": redis_ip, "hostnames": [f"dx-redis.{NAMESPACE}.svc.cluster.local"]}
    ]
    (container,) = spec["containers"]
    container.pop("lifecycle")
    values = {"DX_FLEET_KEY": KEY, "DX_API_KEY": CLIENT_KEY, "DX_REDIS_PASSWORD": REDIS_PASSWORD}
    assert {e["name"] for e in container["env"]} == set(values)
    container["env"] = [{"name": k, "value": v} for k, v in values.items()]
    container["ports"][0].update(hostPort=port, hostIP="127.0.0.1")
    name = f"dx-gateway-test-{os.getpid()}"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": template["metadata"]["labels"]},
        "spec": spec,
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump_all([configmap, pod]))
    return path


def test_a_gateway_pod_finds_the_node_by_its_service_name(
    played: tuple[int, str, dict[str, Any]], network: str, tmp_path: Path
) -> None:
    """The gateway's config as rendered: the node found through the headless Service's DNS
    name, the fleet key from the Secret accepted by the node, Redis by its Service name with
    the Secret's password (Debian's redis-server on the network's bridge address stands in
    for the Redis pod, whose image no registry here serves)."""
    node_port, _, config = played
    deadline = time.monotonic() + 120
    while http_call(f"http://127.0.0.1:{node_port}/ready")[0] != 200:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    bridge = podman(
        "network", "inspect", network, "--format", "{{range .Subnets}}{{.Gateway}}{{end}}"
    ).strip()
    redis = subprocess.Popen(
        ["redis-server", "--bind", bridge, "--port", "6379", "--save", "", "--appendonly", "no",
         "--requirepass", REDIS_PASSWORD],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    port = free_port()
    (tmp_path / "gw").mkdir()
    path = gateway_pod(tmp_path / "gw", port, bridge)
    podman("kube", "play", "--network", network, str(path))
    container = f"dx-gateway-test-{os.getpid()}-dx"
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while http_call(f"{url}/ready")[0] != 200:
            assert time.monotonic() < deadline, podman("logs", container, check=False)
            time.sleep(0.5)
        (model,) = config["models"]
        chat = {"model": model, "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]}
        deadline = time.monotonic() + 30  # the gateway's first DNS refresh and node poll
        while True:
            req = urllib.request.Request(
                f"{url}/v1/chat/completions", data=json.dumps(chat).encode(),
                headers={"Authorization": f"Bearer {CLIENT_KEY}"},
            )  # fmt: skip
            try:
                with urllib.request.urlopen(req, timeout=60) as resp:
                    upstream = resp.headers["X-DX-Upstream"]
                    assert json.load(resp)["choices"][0]["message"]["content"]
                    break
            except urllib.error.HTTPError as exc:
                assert time.monotonic() < deadline, exc.read().decode()
                time.sleep(1)
        # Served by the node pod, reached at its address on the pod network.
        service = f"{NODES}.{NAMESPACE}.svc.cluster.local"
        resolve = f"import socket; print(socket.gethostbyname({service!r}))"
        node_ip = podman("exec", container, "python3", "-c", resolve).strip()
        assert upstream.startswith(f"http://{node_ip}:11434"), upstream
        logs = podman("logs", container, check=False)
        assert "unreachable" not in logs, logs
        cli = ["redis-cli", "-h", bridge, "-a", REDIS_PASSWORD, "--no-auth-warning"]
        clients = subprocess.run(
            [*cli, "info", "clients"], capture_output=True, text=True, timeout=10
        ).stdout
        assert "connected_clients:" in clients
        connected = int(clients.split("connected_clients:")[1].split()[0])
        assert connected >= 2, clients  # the gateway and redis-cli itself
    finally:
        podman("kube", "down", str(path), check=False)
        redis.terminate()
        redis.wait(10)
