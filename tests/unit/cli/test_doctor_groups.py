"""`dx doctor` checks a multi-machine group's interface and leader on this machine."""

from __future__ import annotations

from dxproxy.cli.doctor import Report, check_groups
from dxproxy.config import load_config


def _report(interface: str, leader: str, rank: int = 1) -> tuple[str, str]:
    config = load_config(
        "models:\n  big:\n    engine: vllm\n    model: org/big\n"
        f"    group: {{size: 2, rank: {rank}, leader: {leader}, interface: {interface}, "
        "port: 29600}\n"
    )
    report = Report()
    check_groups(report, config)
    (check,) = report.checks
    assert (check.section, check.name) == ("groups", "big")
    return check.status, check.detail


def test_a_group_that_can_form_here() -> None:
    status, detail = _report("lo", "localhost")
    assert status == "ok", detail
    assert detail == (
        "rank 1 of 2, leader localhost:29600; DX's group link on port 29601; talks over lo "
        "(127.0.0.1)"
    )


def test_a_missing_interface_and_an_unknown_leader_are_errors() -> None:
    status, detail = _report("nothere0", "leader.invalid", rank=0)
    assert status == "error"
    assert "no network interface 'nothere0' on this machine (it has: " in detail
    assert "fix models.<name>.group.interface" in detail
    assert "the leader 'leader.invalid' does not resolve here (" in detail
    assert "fix models.big.group.leader, or this machine's DNS" in detail
