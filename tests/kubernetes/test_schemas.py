"""kubernetes/ renders (`kubectl kustomize`) and every resource it renders is valid: built-in
kinds against Kubernetes 1.32's schemas in strict mode (kubernetes-validate, bundled, no
cluster), custom resources against their CRD's openAPIV3Schema (jsonschema, unknown fields
refused). About 3 s for the three layouts."""

from __future__ import annotations

import copy

import jsonschema
import kubernetes_validate
import pytest

from tests.kubernetes.manifests import (
    CUSTOM,
    KUBERNETES_VERSION,
    LAYOUTS,
    Doc,
    crd_schema,
    crd_source,
    one,
    render,
)


def validate(doc: Doc) -> None:
    """Raises on any schema violation; no resource is left unvalidated."""
    key = (doc["apiVersion"], doc["kind"])
    if key in CUSTOM:
        jsonschema.Draft7Validator(crd_schema(*key)).validate(doc)
    else:
        # SchemaNotFoundError for a kind it does not know: a failure too, never a warning.
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_resource_validates(layout: str) -> None:
    docs = render(layout)
    assert docs, f"{layout} renders nothing"
    failures = []
    for doc in docs:
        try:
            validate(doc)
        except Exception as exc:  # collected: every failure reported at once
            failures.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc}")
    assert not failures, "\n\n".join(failures)


def test_the_layouts_use_every_vendored_crd() -> None:
    """Each vendored schema is needed, and each custom kind rendered has one."""
    used = {(d["apiVersion"], d["kind"]) for layout in LAYOUTS for d in render(layout)}
    assert set(CUSTOM) <= used
    for key in CUSTOM:
        source = crd_source(*key)
        assert len(source["commit"]) == 40 and source["tag"], source


def test_validation_is_strict() -> None:
    """The checks refuse what a cluster would refuse: a misspelt field of a built-in kind and
    of each custom kind, and a wrong type."""
    base = render("base")
    daemonset = copy.deepcopy(one(base, "DaemonSet", "dx-node"))
    daemonset["spec"]["template"]["spec"]["terminationGracePeriodSecond"] = 30
    with pytest.raises(kubernetes_validate.ValidationError, match="terminationGracePeriodSecond"):
        validate(daemonset)
    daemonset = copy.deepcopy(one(base, "DaemonSet", "dx-node"))
    daemonset["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "http"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(daemonset)

    customs = [
        d for layout in LAYOUTS for d in render(layout) if (d["apiVersion"], d["kind"]) in CUSTOM
    ]
    for doc in customs:
        bad = copy.deepcopy(doc)
        bad["spec"]["unknownField"] = 1
        with pytest.raises(jsonschema.ValidationError, match="unknownField"):
            validate(bad)
    pool = copy.deepcopy(one(render("inference-gateway"), "InferencePool", "dx-qwen"))
    pool["spec"]["targetPorts"][0]["number"] = 70000
    with pytest.raises(jsonschema.ValidationError):
        validate(pool)
    for role in ("leaderTemplate", "workerTemplate"):
        lws = copy.deepcopy(one(render("multinode"), "LeaderWorkerSet", "dx-group"))
        # Deep inside the embedded pod templates: the CRD carries the whole PodSpec schema.
        container = lws["spec"]["leaderWorkerTemplate"][role]["spec"]["containers"][0]
        container["readinessProbe"]["httpGet"]["paht"] = "/ready"
        with pytest.raises(jsonschema.ValidationError, match="paht"):
            validate(lws)
        del container["readinessProbe"]["httpGet"]["paht"]
        container["ports"][0]["containerPort"] = "http"
        with pytest.raises(jsonschema.ValidationError, match="http"):
            validate(lws)
