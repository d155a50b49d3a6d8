"""Rendezvous hashing with bounded load, and power of two choices (dxproxy/fleet/pick.py)."""

from __future__ import annotations

import random
import subprocess
import sys
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dxproxy.fleet.pick import (
    Candidate,
    conversation_key,
    load_bound,
    order,
    rendezvous_rank,
)

NODES = [f"http://10.0.0.{i}:11434" for i in range(1, 6)]
KEYS = [f"conversation-{i}" for i in range(2000)]


def test_rank_is_stable_across_processes() -> None:
    # Python salts str hashes per process: a second interpreter with another seed must rank
    # the same way, or gateway replicas would disagree about every conversation's home.
    code = (
        "from dxproxy.fleet.pick import rendezvous_rank\n"
        f"for k in {KEYS[:50]!r}: print(','.join(rendezvous_rank(k, {NODES!r})))\n"
    )
    other = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True, text=True, check=True, env={"PYTHONHASHSEED": "12345"},
    )  # fmt: skip
    here = [",".join(rendezvous_rank(k, NODES)) for k in KEYS[:50]]
    assert other.stdout.splitlines() == here
    # and a known value, so a change of hash (which would move every conversation home at
    # an upgrade, and split a fleet whose gateways run two versions) shows up here
    assert [n[14] for n in rendezvous_rank("conversation-0", NODES)] == list("15243")


def test_rank_is_a_permutation_independent_of_input_order() -> None:
    shuffled = NODES[::-1]
    for k in KEYS[:100]:
        r = rendezvous_rank(k, NODES)
        assert sorted(r) == sorted(NODES)
        assert r == rendezvous_rank(k, shuffled)


def test_keys_spread_evenly() -> None:
    homes = Counter(rendezvous_rank(k, NODES)[0] for k in KEYS)
    assert set(homes) == set(NODES)
    # 2000 keys over 5 nodes: 400 each expected; a fair hash stays well within +-25 %
    assert all(300 <= n <= 500 for n in homes.values()), homes


def test_removing_one_node_moves_only_its_keys() -> None:
    before = {k: rendezvous_rank(k, NODES)[0] for k in KEYS}
    gone = NODES[2]
    after = {k: rendezvous_rank(k, [n for n in NODES if n != gone])[0] for k in KEYS}
    moved = {k for k in KEYS if before[k] != after[k]}
    assert moved == {k for k in KEYS if before[k] == gone}
    # and each moved key goes to its second choice, which is where a spill would have gone
    for k in moved:
        assert after[k] == rendezvous_rank(k, NODES)[1]
    # adding the node back brings exactly those keys home
    assert {k: rendezvous_rank(k, NODES)[0] for k in KEYS} == before


def test_with_key_and_even_load_the_home_node_is_first_then_rank_order() -> None:
    cands = [Candidate(n, 1.0) for n in NODES]
    for k in KEYS[:100]:
        choice = order(cands, k)
        assert [c.id for c in choice.order] == rendezvous_rank(k, NODES)
        assert choice.home == choice.order[0].id
        assert not choice.spilled


def test_an_overloaded_home_spills_to_the_next_in_rank() -> None:
    for k in KEYS[:100]:
        rank = rendezvous_rank(k, NODES)
        # home has 10 in flight, the others 1: mean 2.8, bound 1.25 * 2.8 + 1 = 4.5
        cands = [Candidate(n, 10.0 if n == rank[0] else 1.0) for n in NODES]
        choice = order(cands, k)
        assert choice.home == rank[0]
        assert choice.spilled
        # every node within the bound in rank order, then the overloaded home last
        assert [c.id for c in choice.order] == rank[1:] + rank[:1]


def test_spills_skip_every_overloaded_node_in_rank_order() -> None:
    k = "a-conversation"
    rank = rendezvous_rank(k, NODES)
    hot = {rank[0]: 20.0, rank[1]: 20.0}  # mean (40 + 3) / 5 = 8.6, bound 11.75
    cands = [Candidate(n, hot.get(n, 1.0)) for n in NODES]
    choice = order(cands, k)
    assert [c.id for c in choice.order] == rank[2:] + rank[:2]
    assert choice.first is not None and choice.first.id == rank[2]


def test_load_at_the_bound_still_goes_home() -> None:
    bound = load_bound([4.0, 0.0], 0.25)  # mean 2 -> 3.5
    assert bound == 3.5
    k = "k"
    home = rendezvous_rank(k, ["x", "y"])[0]
    other = "y" if home == "x" else "x"
    # loads 3.5 and 0.5: mean 2, bound 3.5; the home node at exactly the bound is not over it
    choice = order([Candidate(home, 3.5), Candidate(other, 0.5)], k)
    assert choice.order[0].id == home and not choice.spilled


@settings(max_examples=300, deadline=None)
@given(
    loads=st.lists(st.floats(0, 1000, allow_nan=False), min_size=1, max_size=12),
    key=st.text(max_size=20),
    slack=st.floats(0, 2),
)
def test_the_first_choice_is_never_over_the_bound(
    loads: list[float], key: str, slack: float
) -> None:
    cands = [Candidate(f"n{i}", load) for i, load in enumerate(loads)]
    bound = load_bound(loads, slack)
    choice = order(cands, key, slack=slack)
    assert sorted(c.id for c in choice.order) == sorted(c.id for c in cands)  # each once
    # some candidate is always within the bound (the least loaded is <= the mean), so the
    # first never exceeds it
    assert any(c.load <= bound for c in cands)
    assert choice.order[0].load <= bound
    # within-bound candidates come first, each group in rank order
    rank = rendezvous_rank(key, [c.id for c in cands])
    within = [c.id for c in choice.order if c.load <= bound]
    assert [c.id for c in choice.order[: len(within)]] == within
    assert within == [n for n in rank if n in set(within)]
    assert choice.spilled == (choice.order[0].id != rank[0])


def test_without_key_power_of_two_choices() -> None:
    rng = random.Random(7)
    cands = [Candidate("idle", 0.0), Candidate("busy", 9.0), Candidate("mid", 4.0)]
    firsts = Counter()
    for _ in range(3000):
        choice = order(cands, None, rng=rng)
        assert choice.home is None and not choice.spilled
        assert sorted(c.id for c in choice.order) == ["busy", "idle", "mid"]
        a, b = choice.order[0], choice.order[1]
        assert a.load <= b.load  # the pair, less loaded first
        firsts[a.id] += 1
    # p2c over 3: the busiest is never first (it loses every pair); the idle one wins the 2
    # of 3 pairs it is in, the middle one the 1 of 3 with the busy one
    assert firsts["busy"] == 0
    assert 1800 <= firsts["idle"] <= 2200 and 800 <= firsts["mid"] <= 1200, firsts


def test_p2c_rest_by_load_and_edge_cases() -> None:
    rng = random.Random(1)
    cands = [Candidate(f"n{i}", float(i)) for i in range(6)]
    for _ in range(100):
        rest = order(cands, None, rng=rng).order[2:]
        assert [c.load for c in rest] == sorted(c.load for c in rest)
    assert order([], "k").order == [] and order([], None).first is None
    assert order([Candidate("a", 5.0)], None).order == [Candidate("a", 5.0)]
    with pytest.raises(ValueError, match="distinct"):
        order([Candidate("a", 0), Candidate("a", 1)], None)


def test_conversation_key_mixes_the_api_key_name() -> None:
    a = conversation_key("alice", "c0ffee")
    assert a == conversation_key("alice", "c0ffee")
    assert a != conversation_key("bob", "c0ffee")
    assert a != conversation_key("alice", "c0ffef")
    # no ambiguity between the two parts
    assert conversation_key("ab", "c") != conversation_key("a", "bc")


@settings(max_examples=200, deadline=None)
@given(
    nodes=st.sets(st.text(min_size=1, max_size=12), min_size=2, max_size=10),
    keys=st.lists(st.text(max_size=16), min_size=1, max_size=30),
    data=st.data(),
)
def test_any_removal_moves_only_the_removed_nodes_keys(
    nodes: set[str], keys: list[str], data: st.DataObject
) -> None:
    gone = data.draw(st.sampled_from(sorted(nodes)))
    left = nodes - {gone}
    for k in keys:
        before = rendezvous_rank(k, nodes)
        after = rendezvous_rank(k, left)
        # the others keep their relative order: a key's home changes only if it was `gone`,
        # and then to its second choice
        assert after == [n for n in before if n != gone]
