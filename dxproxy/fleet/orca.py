"""The `endpoint-load-metrics` response header: ORCA's load report in its text form.

A request that carries `endpoint-load-metrics-format: text` is answered with, e.g.,

    endpoint-load-metrics: TEXT named_metrics.num_requests_waiting=0.0,
        named_metrics.kv_cache_usage_perc=0.3          (one line)

as vLLM 0.32 sends it (vllm/entrypoints/serve/utils/orca_metrics.py: "TEXT " then
`named_metrics.NAME=VALUE` joined by ", "; only on non-streamed answers), so a gateway reads
a plain vLLM upstream's load and a DX node's alike, and an Envoy in front of DX nodes can
balance on it. DX nodes send the same names vLLM does, plus the running count.
"""

from __future__ import annotations

import math

import orjson

HEADER = "endpoint-load-metrics"
FORMAT_HEADER = "endpoint-load-metrics-format"  # what a gateway sends to ask for it

# The named metrics, under vLLM's names (its Prometheus gauges without the "vllm:" prefix).
WAITING = "num_requests_waiting"
RUNNING = "num_requests_running"  # DX only: vLLM's header leaves it out
KV_CACHE = "kv_cache_usage_perc"  # 0..1, despite the name

# ORCA's own top-level fields (xds/data/orca/v3/orca_load_report.proto): kept under their
# names; every other field must be a map entry (named_metrics.X, request_cost.X, utilization.X).
_TOP_LEVEL = frozenset(
    {"cpu_utilization", "mem_utilization", "application_utilization", "rps_fractional", "eps"}
)
_NAMED = "named_metrics."


def format_orca(named_metrics: dict[str, float]) -> str:
    """The header's value for these named metrics, in vLLM's exact form."""
    fields = ", ".join(f"{_NAMED}{name}={float(value)}" for name, value in named_metrics.items())
    return f"TEXT {fields}"


def parse_orca(value: str) -> dict[str, float]:
    """The metrics in a header value, text or JSON form: named metrics by their bare name
    (the inverse of format_orca), ORCA's top-level fields by theirs, and request_cost.X and
    utilization.X as written. A malformed field is skipped rather than failing the whole
    report (the header is advisory); ValueError only when the value is not ORCA at all."""
    kind, _, body = value.strip().partition(" ")
    kind = kind.upper()
    if kind == "JSON":
        return _from_json(body)
    if kind != "TEXT":
        raise ValueError(f"{HEADER}: expected 'TEXT ...' or 'JSON ...', got {value[:40]!r}")
    out: dict[str, float] = {}
    for field in body.split(","):
        name, eq, raw = field.strip().partition("=")
        number = _number(raw) if eq else None
        if number is None:
            continue
        if name.startswith(_NAMED):
            if name[len(_NAMED) :]:
                out[name[len(_NAMED) :]] = number
        elif name in _TOP_LEVEL or name.startswith(("request_cost.", "utilization.")):
            out[name] = number
    return out


def _number(raw: str) -> float | None:
    try:
        number = float(raw.strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _from_json(body: str) -> dict[str, float]:
    try:
        report = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise ValueError(f"{HEADER}: invalid JSON ({e})") from None
    if not isinstance(report, dict):
        raise ValueError(f"{HEADER}: JSON form must be an object")
    out: dict[str, float] = {}
    for name, value in report.items():
        if isinstance(value, dict) and name in ("named_metrics", "request_cost", "utilization"):
            prefix = "" if name == "named_metrics" else f"{name}."
            for sub, v in value.items():
                if _is_number(v):
                    out[f"{prefix}{sub}"] = float(v)
        elif name in _TOP_LEVEL and _is_number(value):
            out[name] = float(value)
    return out


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
