"""vLLM 0.32's own ORCA header code (in .venvs/vllm, installed by scripts/setup) and DX's
codec (dxproxy/fleet/orca.py) agree: a gateway reads a plain vLLM upstream's load as it reads
a DX node's. Here, not in tests/unit, because importing vLLM takes about 10 s."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from dxproxy.fleet.orca import KV_CACHE, WAITING, format_orca, parse_orca

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
VLLM_PYTHON = ROOT / ".venvs" / "vllm" / "bin" / "python"


def test_vllm_builds_the_same_header() -> None:
    """vLLM's create_orca_header (installed by scripts/setup in .venvs/vllm) and format_orca
    agree byte for byte, and parse_orca reads what vLLM writes, both forms."""
    if not VLLM_PYTHON.exists():
        pytest.fail(f"{VLLM_PYTHON} is missing: run scripts/setup (it installs vLLM for tests)")
    code = (
        "from vllm.entrypoints.serve.utils.orca_metrics import create_orca_header as h\n"
        "m = [('num_requests_waiting', 3.0), ('kv_cache_usage_perc', 0.125)]\n"
        "print(h('TEXT', m)['endpoint-load-metrics'])\n"
        "print(h('json', m)['endpoint-load-metrics'])\n"
    )
    out = subprocess.run(
        [str(VLLM_PYTHON), "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout.splitlines()
    text, json_form = out[-2], out[-1]
    assert text == format_orca({WAITING: 3.0, KV_CACHE: 0.125})
    expected = {WAITING: 3.0, KV_CACHE: 0.125}
    assert parse_orca(text) == expected
    assert parse_orca(json_form) == expected
