"""The real llama-server's own metrics (`llamacpp:*`) re-exported by DX's /metrics with DX's
model and replica labels, moving with a real generation."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import smollm2_path, start_dx

pytestmark = pytest.mark.integration


def llamacpp_samples(url: str, auth: dict[str, str]) -> dict[str, float]:
    r = httpx.get(url + "/metrics", headers=auth, timeout=30)
    assert r.status_code == 200, r.text
    out = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            if s.name.startswith("llamacpp:"):
                assert s.labels["model"] == "smollm2" and s.labels["replica"] == "smollm2#0"
                out[s.name] = s.value
    return out


def test_llama_server_metrics_reexported(tmp_path: Path) -> None:
    model = {"engine": "llamacpp", "model": str(smollm2_path()), "context": 2048}
    dx = start_dx(tmp_path, {"smollm2": model}, wait=120)
    try:
        before = llamacpp_samples(dx.url, dx.auth)
        assert "llamacpp:prompt_tokens_total" in before, sorted(before)
        r = httpx.post(dx.url + "/v1/chat/completions", headers=dx.auth, timeout=120, json={
            "model": "smollm2", "max_tokens": 8,
            "messages": [{"role": "user", "content": "Say hello."}]})
        assert r.status_code == 200, r.text
        after = llamacpp_samples(dx.url, dx.auth)
        assert after["llamacpp:prompt_tokens_total"] > before["llamacpp:prompt_tokens_total"]
        assert after["llamacpp:tokens_predicted_total"] > before["llamacpp:tokens_predicted_total"]
    finally:
        dx.stop()
