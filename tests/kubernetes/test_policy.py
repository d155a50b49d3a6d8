"""What kubernetes/ promises beyond schema validity, checked on what `kubectl kustomize` renders:
probes on DX's real paths and patient enough, a grace period that covers DX's shutdown, the
config mounted as a directory with a stable name (live reload), two gateways and a disruption
budget, NetworkPolicies that admit only who should come in, pinned images, non-root pods.
Under a second."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from dxproxy.config.schema import DEFAULT_SHUTDOWN, DEFAULT_STARTUP_TIMEOUT
from tests.kubernetes.manifests import (
    HASH_SUFFIX,
    KUBERNETES,
    LAYOUTS,
    Doc,
    dx_config_of,
    find,
    is_dx,
    one,
    pod_templates,
    render,
    selects,
    walk,
)

DX_PORT = 11434
NODE = {"app.kubernetes.io/name": "dx", "app.kubernetes.io/component": "node"}
GATEWAY = {"app.kubernetes.io/name": "dx", "app.kubernetes.io/component": "gateway"}
REDIS = {"app.kubernetes.io/name": "dx", "app.kubernetes.io/component": "redis"}
EPP = {"app.kubernetes.io/name": "dx", "app.kubernetes.io/component": "epp"}
WORKER = {"app.kubernetes.io/name": "dx", "app.kubernetes.io/component": "group-worker"}


def dx_pods(docs: list[Doc]) -> list[tuple[str, Doc, Doc]]:
    """(where, pod template, DX container) of every pod that runs DX."""
    found = []
    for where, template in pod_templates(docs):
        for c in template["spec"]["containers"]:
            if is_dx(c):
                found.append((where, template, c))
    return found


def probe_window(probe: Doc) -> int:
    """Seconds a probe tolerates failing before Kubernetes acts."""
    return int(probe.get("periodSeconds", 10)) * int(probe.get("failureThreshold", 3))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_probes_are_dx_s_and_patient(layout: str) -> None:
    docs = render(layout)
    pods = dx_pods(docs)
    assert pods, f"{layout}: no pod runs DX"
    for where, template, c in pods:
        assert c["livenessProbe"]["httpGet"]["path"] == "/health", where
        # A group worker's /ready says its part runs; it gets no requests all the same.
        assert c["readinessProbe"]["httpGet"]["path"] == "/ready", where
        startup = c["startupProbe"]
        _, config = dx_config_of(docs, template)
        engines = [m for m in config.get("models", {}).values() if "upstream" not in m]
        if engines:
            # Waits on /ready longer than DX gives each engine to start (vLLM: minutes).
            assert startup["httpGet"]["path"] == "/ready", where
            longest = max(float(m.get("startup_timeout", DEFAULT_STARTUP_TIMEOUT)) for m in engines)
            assert probe_window(startup) > longest >= 120, where
        for probe in (c["startupProbe"], c["readinessProbe"], c["livenessProbe"]):
            assert probe["httpGet"]["port"] == "http", where
        assert {"name": "http", "containerPort": DX_PORT, "protocol": "TCP"} in c["ports"], where


@pytest.mark.parametrize("layout", LAYOUTS)
def test_grace_period_covers_dx_shutdown(layout: str) -> None:
    """DX drains for shutdown_timeout, then stops its engines for as long again (+ 5 s of
    margin, as its systemd notice says); a preStop pause comes first."""
    docs = render(layout)
    for where, template, c in dx_pods(docs):
        _, config = dx_config_of(docs, template)
        shutdown = float(config.get("server", {}).get("shutdown_timeout", DEFAULT_SHUTDOWN))
        pause = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        grace = template["spec"]["terminationGracePeriodSeconds"]
        assert grace >= 2 * shutdown + 5 + pause, (where, grace, shutdown, pause)
    # The default the configs rely on is DX's actual one.
    assert DEFAULT_SHUTDOWN == 10.0


@pytest.mark.parametrize("layout", LAYOUTS)
def test_config_is_a_live_directory_mount(layout: str) -> None:
    """The kubelet swaps a ConfigMap volume's `..data` link atomically, and DX's watcher follows
    it: only a directory mount gets that (a subPath mount never changes), and only a stable
    name (no hash suffix) lets an edit reach running pods instead of rolling them."""
    docs = render(layout)
    subpaths = [p for p, k, _ in walk(docs) if k in ("subPath", "subPathExpr")]
    assert not subpaths, subpaths
    for where, template, c in dx_pods(docs):
        name, config = dx_config_of(docs, template)
        assert not HASH_SUFFIX.search(name), (where, name)
        assert config, where
        mount = next(m for m in c["volumeMounts"] if m["mountPath"] == "/etc/dx")
        assert mount.get("readOnly") is True, where
    for cm in find(docs, "ConfigMap"):
        assert not HASH_SUFFIX.search(cm["metadata"]["name"]), cm["metadata"]["name"]
    # The generators say so themselves (else a suffix comes back with the next generator).
    for kustomization in KUBERNETES.rglob("kustomization.yaml"):
        for generator in yaml.safe_load(kustomization.read_text()).get("configMapGenerator", []):
            assert generator["options"]["disableNameSuffixHash"] is True, kustomization


@pytest.mark.parametrize("layout", ["base", "multinode"])
def test_gateways_survive_a_drain(layout: str) -> None:
    docs = render(layout)
    gateway = one(docs, "Deployment", "dx-gateway")
    assert gateway["spec"]["replicas"] >= 2
    labels = gateway["spec"]["template"]["metadata"]["labels"]
    assert labels == GATEWAY
    (pdb,) = [
        p for p in find(docs, "PodDisruptionBudget") if selects(p["spec"]["selector"], labels)
    ]
    assert pdb["spec"].get("minAvailable", 0) >= 1 or pdb["spec"].get("maxUnavailable") == 1
    anti = gateway["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    term = anti["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert selects(term["labelSelector"], labels)


def test_inference_gateway_has_no_dx_gateway() -> None:
    docs = render("inference-gateway")
    assert not [
        d
        for d in docs
        if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "gateway"
    ]
    assert not find(docs, "ConfigMap", "dx-gateway-config")


def admitted(docs: list[Doc], labels: dict[str, str]) -> list[tuple[Any, Any]]:
    """(from, ports) of every ingress rule that applies to pods with these labels; [] means no
    one gets in (a deny-all must select them, or everyone would)."""
    policies = [p for p in find(docs, "NetworkPolicy") if selects(p["spec"]["podSelector"], labels)]
    assert any(p["spec"]["podSelector"] == {} and not p["spec"].get("ingress") for p in policies), (
        "no default deny-all ingress policy selects",
        labels,
    )
    return [(r.get("from"), r.get("ports")) for p in policies for r in p["spec"].get("ingress", [])]


def peers(rules: list[tuple[Any, Any]], port: int) -> list[Doc]:
    """The `from` peers admitted to a port ({} for 'anyone')."""
    found: list[Doc] = []
    for sources, ports in rules:
        if ports is None or any(p.get("port") == port for p in ports):
            found.extend(sources if sources is not None else [{}])
    return found


@pytest.mark.parametrize("layout", LAYOUTS)
def test_network_policies(layout: str) -> None:
    docs = render(layout)
    monitoring = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    }
    node_rules = admitted(docs, NODE)
    node_peers = peers(node_rules, DX_PORT)
    # Nodes: never open to anyone; every rule names its port, DX's only (a group's members
    # talk among themselves on any port, and only among themselves).
    assert {} not in node_peers
    for sources, ports in node_rules:
        if ports is None:
            assert sources == [
                {"podSelector": {"matchLabels": {"leaderworkerset.sigs.k8s.io/name": "dx-group"}}}
            ]
        else:
            assert [p["port"] for p in ports] == [DX_PORT]
    assert monitoring in node_peers
    redis_peers = peers(admitted(docs, REDIS), 6379)
    if layout == "inference-gateway":
        # The nodes take clients directly: the Gateway's proxies and the picker reach them.
        assert {"podSelector": {"matchLabels": EPP}} in node_peers
        assert {
            "namespaceSelector": {"matchLabels": {"dx.kubernetes.io/gateway-proxies": "true"}}
        } in node_peers
        assert len(node_peers) == 3
        assert redis_peers == [{"podSelector": {"matchLabels": NODE}}]
        assert peers(admitted(docs, EPP), 9002) == [
            {"namespaceSelector": {"matchLabels": {"dx.kubernetes.io/gateway-proxies": "true"}}}
        ]
    else:
        assert node_peers == [{"podSelector": {"matchLabels": GATEWAY}}, monitoring]
        assert redis_peers == [{"podSelector": {"matchLabels": GATEWAY}}]
        # The gateways are the clients' door: DX's port, open.
        assert peers(admitted(docs, GATEWAY), DX_PORT) == [{}]
        assert peers(admitted(docs, GATEWAY), 8080) == []
    if layout == "multinode":
        assert peers(admitted(docs, WORKER), DX_PORT) == [monitoring]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_nodes_are_found_through_a_headless_service_of_ready_pods(layout: str) -> None:
    docs = render(layout)
    service = one(docs, "Service", "dx-nodes")
    namespace = service["metadata"]["namespace"]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is False
    port = service["spec"]["ports"][0]
    assert (port["port"], port["targetPort"]) == (DX_PORT, "http")
    served = [
        where
        for where, t, _ in dx_pods(docs)
        if selects(service["spec"]["selector"], t["metadata"]["labels"])
    ]
    # The DaemonSet's pods, or a group's leaders only (workers are never routed to).
    assert (
        served
        == {
            "base": ["DaemonSet/dx-node"],
            "inference-gateway": ["DaemonSet/dx-node"],
            "multinode": ["LeaderWorkerSet/dx-group leader"],
        }[layout]
    )
    for _, template, _ in dx_pods(docs):
        _, config = dx_config_of(docs, template)
        if "fleet" in config:
            assert config["fleet"]["nodes"] == [
                {"dns": f"dx-nodes.{namespace}.svc.cluster.local", "port": DX_PORT}
            ]
            assert config["fleet"]["node_key"] == "${DX_FLEET_KEY}"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_images_pinned_and_pods_hardened(layout: str) -> None:
    docs = render(layout)
    for where, template in pod_templates(docs):
        spec = template["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        for c in spec["containers"]:
            image = c["image"]
            name, _, tag = image.rpartition(":")
            assert name and tag and "@" not in image, (where, image)
            if tag == "latest":
                # Only DX's own image, built on the machine (scripts/container), which must
                # then never be pulled: `latest` alone would make the kubelet pull Always.
                assert name.startswith("localhost/dx"), (where, image)
                assert c["imagePullPolicy"] == "IfNotPresent", where
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["capabilities"] == {"drop": ["ALL"]}, where
            assert "memory" in c["resources"]["limits"], where
            assert c["resources"]["requests"], where
            if is_dx(c):
                # The image's user; DX writes only in its state_dir, a volume.
                assert spec["securityContext"]["runAsUser"] == 10001, where
                assert spec["securityContext"]["runAsGroup"] == 10001, where
                _, config = dx_config_of(docs, template)
                state = config["server"]["state_dir"]
                mount = next(m for m in c["volumeMounts"] if m["mountPath"] == state)
                volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
                assert "emptyDir" in volume and not mount.get("readOnly"), where
                assert c["args"][:3] == ["serve", "--host", "0.0.0.0"], where
                assert spec["automountServiceAccountToken"] is False, where


@pytest.mark.parametrize("layout", LAYOUTS)
def test_engines_run_on_gpu_machines(layout: str) -> None:
    docs = render(layout)
    for where, template, c in dx_pods(docs):
        if template["metadata"]["labels"].get("app.kubernetes.io/component") == "gateway":
            assert "nvidia.com/gpu" not in c["resources"]["limits"], where
            continue
        spec = template["spec"]
        assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}, where
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
            "tolerations"
        ]
        gpus = c["resources"]["limits"]["nvidia.com/gpu"]
        assert int(gpus) >= 1 and c["resources"]["requests"]["nvidia.com/gpu"] == gpus, where


@pytest.mark.parametrize("layout", LAYOUTS)
def test_secrets_come_from_the_documented_secrets(layout: str) -> None:
    """Pods read keys from Secrets the example file shows (and kustomize does not apply, so that a
    re-apply never overwrites real keys with placeholders)."""
    docs = render(layout)
    assert not find(docs, "Secret")
    example = {
        (d["metadata"]["name"], k)
        for d in yaml.safe_load_all((KUBERNETES / "base" / "secrets.example.yaml").read_text())
        for k in d["stringData"]
    }
    refs = {(v["name"], v["key"]) for _, k, v in walk(docs) if k == "secretKeyRef"}
    assert refs and refs <= example, refs - example


@pytest.mark.parametrize("layout", LAYOUTS)
def test_pod_monitor_scrapes_dx_port(layout: str) -> None:
    docs = render(layout)
    monitor = one(docs, "PodMonitor", "dx")
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("http", "/metrics")
    scraped = [
        where
        for where, t, _ in dx_pods(docs)
        if selects(monitor["spec"]["selector"], t["metadata"]["labels"])
    ]
    assert scraped == [where for where, _, _ in dx_pods(docs)], scraped
    for _, template, _ in dx_pods(docs):
        _, config = dx_config_of(docs, template)
        # Prometheus sends no key: /metrics is open on these pods, the policies fence the port.
        assert config["server"]["metrics_open"] is True


@pytest.mark.parametrize("layout", LAYOUTS)
def test_volumes_pod_security_restricted_allows(layout: str) -> None:
    """Pod Security's `restricted` volume types only, but the models' hostPath, mounted
    read-only (kubernetes/README.md says so, and how to do without it)."""
    allowed = {
        "configMap",
        "emptyDir",
        "secret",
        "persistentVolumeClaim",
        "projected",
        "downwardAPI",
    }
    for where, template in pod_templates(render(layout)):
        spec = template["spec"]
        for volume in spec.get("volumes", []):
            kinds = set(volume) - {"name"}
            if kinds == {"hostPath"}:
                assert volume["name"] == "models", where
                mounts = [
                    m
                    for c in spec["containers"]
                    for m in c["volumeMounts"]
                    if m["name"] == "models"
                ]
                assert mounts and all(m.get("readOnly") is True for m in mounts), where
            else:
                assert kinds <= allowed, (where, volume)
        assert (
            not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")
        ), where
