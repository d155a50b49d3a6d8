"""GPU metrics from the one NVML reader, on a stand-in pynvml."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families


def value(samples: dict[tuple[str, frozenset], float], metric: str, /, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == metric and want <= ls)


def test_gpu_metrics_from_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    """NVML's answers become dx_gpu_* gauges (pynvml replaced: this machine has no GPU)."""
    import sys
    from types import SimpleNamespace

    from prometheus_client import generate_latest

    from dxproxy.http.metrics import Metrics
    from supervisors.gpus import NvmlReader

    fake = SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlDeviceGetCount=lambda: 2,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetName=lambda h: "NVIDIA H100 80GB HBM3",
        nvmlDeviceGetMemoryInfo=lambda h: SimpleNamespace(
            free=(80 - h - 1) * 2**30, total=80 * 2**30
        ),
        nvmlDeviceGetUtilizationRates=lambda h: SimpleNamespace(gpu=50 * h),
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    m = Metrics()
    m.live.gpus = NvmlReader().read().gpus  # the one NVML reader, on the fake NVML
    samples = {}
    for fam in text_string_to_metric_families(generate_latest(m.registry).decode()):
        for s in fam.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    one = {"gpu": "1", "name": "NVIDIA H100 80GB HBM3"}
    assert value(samples, "dx_gpu_memory_used_bytes", **one) == 2 * 2**30
    assert value(samples, "dx_gpu_memory_total_bytes", **one) == 80 * 2**30
    assert value(samples, "dx_gpu_utilization_ratio", **one) == 0.5
    assert value(samples, "dx_gpu_utilization_ratio", gpu="0") == 0
