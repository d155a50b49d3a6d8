"""The endpoint-load-metrics header (dxproxy/fleet/orca.py); vLLM's own code builds it in
tests/integration/test_fleet_orca_vllm.py."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dxproxy.fleet.orca import KV_CACHE, RUNNING, WAITING, format_orca, parse_orca


def test_format_is_vllms_exact_form() -> None:
    value = format_orca({WAITING: 2, KV_CACHE: 0.25})
    assert (
        value
        == "TEXT named_metrics.num_requests_waiting=2.0, named_metrics.kv_cache_usage_perc=0.25"
    )


@given(
    st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True),
        st.floats(allow_nan=False, allow_infinity=False, width=64),
        max_size=8,
    )
)
def test_round_trip(metrics: dict[str, float]) -> None:
    assert parse_orca(format_orca(metrics)) == metrics


def test_parse_other_orca_fields_and_tolerates_junk() -> None:
    value = (
        "text cpu_utilization=0.5, mem_utilization=0.25,named_metrics.num_requests_running=4,"
        " request_cost.tokens=12, utilization.gpu=0.9, bogus=1, named_metrics.x=nan,"
        " named_metrics.y=abc, noequals, named_metrics.=3"
    )
    assert parse_orca(value) == {
        "cpu_utilization": 0.5,
        "mem_utilization": 0.25,
        RUNNING: 4.0,
        "request_cost.tokens": 12.0,
        "utilization.gpu": 0.9,
    }
    assert parse_orca("TEXT ") == {}
    assert parse_orca('JSON {"cpu_utilization": 0.1, "named_metrics": {"a": 2, "b": "x"}}') == {
        "cpu_utilization": 0.1,
        "a": 2.0,
    }


@pytest.mark.parametrize("bad", ["", "42", "PROTO abc", "JSON [1]", "JSON {"])
def test_not_orca_at_all(bad: str) -> None:
    with pytest.raises(ValueError, match="endpoint-load-metrics"):
        parse_orca(bad)


def test_no_infinities_leak_in() -> None:
    assert parse_orca("TEXT named_metrics.a=inf") == {}
    assert all(math.isfinite(v) for v in parse_orca("TEXT named_metrics.a=1e308").values())
