"""The fleet's config surface: `fleet:`, `upstream:` and `fallbacks:` (issue 16)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dxproxy.config import ConfigError, load_config, load_config_file
from dxproxy.config.schema import FleetNode, RemoteUpstream

ROOT = Path(__file__).resolve().parents[3]
KEY = "fleet-key-0123456789"


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load_config(text, source="dx.yaml", env=env or {})
    return err.value.problems


def test_the_issue_example_is_accepted() -> None:
    cfg = load_config_file(
        ROOT / "config" / "fleet.example.yaml",
        env={"DX_FLEET_KEY": KEY, "OTHER_KEY": "sk-other", "HOME": "/h"},
    )
    assert cfg.fleet is not None
    assert cfg.fleet.nodes == (
        FleetNode(url="http://gpu-07.lan:11434"),
        FleetNode(dns="dx-nodes.dx.svc.cluster.local", port=11434),
    )
    assert cfg.fleet.refresh == 5.0 and cfg.fleet.node_key == KEY
    qwen, gpt, small = cfg.model("qwen"), cfg.model("gpt-x"), cfg.model("small")
    assert qwen and gpt and small
    assert qwen.upstream == "fleet" and qwen.remote
    assert gpt.upstream == RemoteUpstream(url="https://api.example.com/v1", api_key="sk-other")
    assert small.upstream is None and not small.remote and small.fallbacks == ("qwen",)


def test_no_fleet_section_is_no_gateway() -> None:
    assert load_config("models: {}", env={}).fleet is None


def test_fleet_mistakes_are_named() -> None:
    text = """
fleet:
  nodes:
    - {url: gpu-07:11434}
    - {dns: nodes.local, url: http://a:1}
    - {url: http://a:1, port: 5}
    - {dns: nodes.local, port: 70000}
    - {}
  refresh: never
  node_key: short
  slack: -1
  eject_after: 0
"""
    got = problems(text)
    assert (
        "fleet.nodes[0].url: expected http://host:port or https://host:port, got 'gpu-07:11434'"
        in got
    )
    assert any(p.startswith("fleet.nodes[1]: expected either url:") for p in got)
    assert "fleet.nodes[2].port: only with dns:; a url carries its own port" in got
    assert "fleet.nodes[3].port: expected a port number from 1 to 65535, got 70000" in got
    assert any(p.startswith("fleet.nodes[4]: expected either url:") for p in got)
    assert any(p.startswith("fleet.refresh: expected a duration") for p in got)
    assert any(p.startswith("fleet.node_key: expected an API key of at least 16") for p in got)
    assert any(p.startswith("fleet.slack: expected a number of 0 or more") for p in got)
    assert "fleet.eject_after: expected a number above 0, got 0" in got


def test_node_key_reads_the_environment() -> None:
    cfg = load_config("fleet:\n  nodes: []\n  node_key: ${K}\n", env={"K": KEY})
    assert cfg.fleet is not None and cfg.fleet.node_key == KEY
    assert problems("fleet:\n  node_key: ${K}\n") == [
        "fleet.node_key: environment variable K is not set (set it, or write ${K:-default})"
    ]


def test_upstream_fleet_needs_a_fleet() -> None:
    assert problems("models:\n  q: {upstream: fleet}\n") == [
        "models.q.upstream: fleet needs a fleet: section (fleet.nodes) naming the nodes "
        "that serve it"
    ]


def test_remote_upstream_mistakes() -> None:
    got = problems(
        "models:\n"
        "  a: {upstream: {url: api.example.com}}\n"
        "  b: {upstream: cloud}\n"
        "  c: {upstream: {url: 'http://x/v1', key: k}}\n"
        "  d: {upstream: {url: 'http://x/v1'}, engine: llamacpp}\n"
    )
    assert any(
        p.startswith("models.a.upstream.url: required: the endpoint's base URL") for p in got
    )
    assert (
        "models.b.upstream: expected fleet or a mapping {url, api_key}, got 'cloud' (a string)"
        in got
    )
    assert any(p.startswith("models.c.upstream.key: unknown key") for p in got)
    assert any(
        p.startswith("models.d.engine: a model with upstream: is served elsewhere") for p in got
    )


def test_fallbacks_must_exist_and_not_cycle() -> None:
    base = "models:\n  a: {upstream: {url: 'http://x/v1'}, fallbacks: [%s]}\n"
    base += "  b: {upstream: {url: 'http://y/v1'}, fallbacks: [%s]}\n"
    assert problems(base % ("nope", "")) == [
        "models.a.fallbacks[0]: no model named 'nope' (models: a, b)"
    ]
    assert problems(base % ("a", "")) == [
        "models.a.fallbacks[0]: a model cannot fall back to itself"
    ]
    got = problems(base % ("b", "a"))
    assert (
        "models.a.fallbacks: a cycle (a -> b -> a); a fallback may not lead back to the model"
        in got
    )
    assert (
        "models.b.fallbacks: a cycle (b -> a -> b); a fallback may not lead back to the model"
        in got
    )
    cfg = load_config(base % ("b", ""), env={})
    a = cfg.model("a")
    assert a is not None and a.fallbacks == ("b",)
