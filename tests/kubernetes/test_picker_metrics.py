"""The endpoint picker of the inference-gateway overlay can read DX: each metric spec of its
config (epp-config.yaml: queued, running, KV-cache use where on) selects a series that a real
DX node exports: DX in front of a real llama-server serving SmolLM2 under the pool's model
name, scraped as the picker does (server.metrics_open, no key). About 20 s under load."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import smollm2_path, start_dx
from tests.kubernetes.manifests import one, render

SPEC = re.compile(r'(?P<family>[a-zA-Z_:][a-zA-Z0-9_:]*)\{(?P<label>[a-z_]+)="(?P<value>[^"]+)"\}')


@pytest.mark.integration
def test_picker_specs_select_a_real_node_s_gauges(tmp_path: Path) -> None:
    docs = render("inference-gateway")
    epp = yaml.safe_load(one(docs, "ConfigMap", "dx-epp-config")["data"]["epp.yaml"])
    (extractor,) = [p for p in epp["plugins"] if p["type"] == "core-metrics-extractor"]
    (engine,) = extractor["parameters"]["engineConfigs"]
    # KV-cache use may be off (llama-server reports none); queue and running never.
    specs = [engine[k] for k in ("queuedRequestsSpec", "runningRequestsSpec", "kvUsageSpec")]
    specs = [s for s in specs if s]
    assert len(specs) >= 2, engine
    parsed = [SPEC.fullmatch(s) for s in specs]
    assert all(parsed), specs
    models = {m["value"] for m in parsed if m}
    assert len(models) == 1, models
    (model,) = models
    node = yaml.safe_load(one(docs, "ConfigMap", "dx-node-config")["data"]["dx.yaml"])
    assert model in node["models"]
    assert node["server"]["metrics_open"] is True

    real = {"engine": "llamacpp", "model": str(smollm2_path()), "context": 2048}
    dx = start_dx(tmp_path, {model: real}, extra={"server": {"metrics_open": True}}, wait=120)
    try:
        # The picker sends no key; a chat first, so that the engine has used its KV cache.
        body = {"model": model, "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]}
        chat = urllib.request.Request(
            f"{dx.url}/v1/chat/completions",
            data=json.dumps(body).encode(),
            headers={**dx.auth, "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(chat, timeout=60) as r:
            assert r.status == 200
        with urllib.request.urlopen(f"{dx.url}/metrics", timeout=30) as r:
            text = r.read().decode()
    finally:
        dx.stop()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    missing = []
    for m in parsed:
        assert m is not None
        key = (m["family"], ((m["label"], m["value"]),))
        if key not in samples:
            missing.append(m.group(0))
    assert not missing, (
        f"a real DX node exports no {missing}: the picker would score its pods blind. "
        "dxproxy/http/fleet_metrics.py (issue 16) and kubernetes/overlays/inference-gateway/"
        "epp-config.yaml must name the same gauges"
    )
