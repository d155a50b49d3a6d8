"""Which node serves a request, in which order the others are tried: pure functions, no I/O.

A conversation goes to its home node by rendezvous (highest random weight) hashing, so that
every gateway replica, with no shared state, sends its follow-ups to the node whose prompt
cache holds its earlier turns, and removing one of N nodes moves only that node's
conversations. A home node that is much busier than the rest is skipped (bounded load:
Mirrokni, Thorup and Zadimoghaddam, "Consistent Hashing with Bounded Loads", 2018), so one
hot conversation cannot pile work onto one box. Requests without a conversation go to the
less loaded of two random nodes (power of two choices: Mitzenmacher, 2001), which balances
nearly as well as least-loaded without herding every gateway onto the same idle node.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

DEFAULT_SLACK = 0.25

_RNG = random.Random()


def _weight(key: str, node_id: str) -> int:
    # blake2b, never hash(): Python salts str hashes per process, and every gateway replica
    # must rank the nodes the same way.
    digest = hashlib.blake2b(f"{key}\0{node_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rendezvous_rank(key: str, node_ids: Iterable[str]) -> list[str]:
    """The node ids, highest random weight for `key` first (ties, vanishingly rare, by id)."""
    return sorted(set(node_ids), key=lambda n: (_weight(key, n), n), reverse=True)


@dataclass(frozen=True, slots=True)
class Candidate:
    id: str  # the node's base URL
    # In flight + queued as the node last reported it, plus this gateway's own requests in
    # flight to it (which the node's report may not show yet).
    load: float


@dataclass(frozen=True, slots=True)
class Choice:
    order: list[Candidate]  # every candidate once: the first, then the retry order
    home: str | None  # the conversation's home node among the candidates; None without a key
    spilled: bool  # the first is not the home node: the home node was over the load bound
    # The home node over every node serving the model, ejected ones included, is not among
    # the candidates (set by members.Membership.choose, which knows the ejected ones).
    moved: bool = False

    @property
    def first(self) -> Candidate | None:
        return self.order[0] if self.order else None


def load_bound(loads: Sequence[float], slack: float = DEFAULT_SLACK) -> float:
    """The most load a node may carry and still take a conversation it is home for:
    (1 + slack) x the mean + 1 (the + 1 lets an idle fleet put two requests on one node)."""
    mean = sum(loads) / len(loads) if loads else 0.0
    return (1.0 + slack) * mean + 1.0


def order(
    candidates: Sequence[Candidate],
    key: str | None,
    *,
    slack: float = DEFAULT_SLACK,
    rng: random.Random | None = None,
) -> Choice:
    """The order to try `candidates` in (see the module's docstring).

    With a key: rendezvous rank, except that each candidate over `load_bound` moves to the
    back (in rank order), so a spill goes to the next node in rank, the same one for every
    gateway. Without: two random candidates, the less loaded first, then the rest by load."""
    if slack < 0:
        raise ValueError("slack must not be negative")
    by_id = {c.id: c for c in candidates}
    if len(by_id) != len(candidates):
        raise ValueError("candidates must have distinct ids")
    if not candidates:
        return Choice(order=[], home=None, spilled=False)
    if key is not None:
        ranked = [by_id[n] for n in rendezvous_rank(key, by_id)]
        bound = load_bound([c.load for c in candidates], slack)
        within = [c for c in ranked if c.load <= bound]
        over = [c for c in ranked if c.load > bound]
        home = ranked[0].id
        result = within + over
        return Choice(order=result, home=home, spilled=result[0].id != home)
    rng = rng or _RNG
    if len(candidates) == 1:
        return Choice(order=list(candidates), home=None, spilled=False)
    a, b = rng.sample(list(candidates), 2)
    pair = [b, a] if b.load < a.load else [a, b]
    rest = sorted((c for c in candidates if c.id not in (a.id, b.id)), key=lambda c: c.load)
    return Choice(order=pair + rest, home=None, spilled=False)


def conversation_key(key_name: str, conversation: str) -> str:
    """The fleet's affinity key: DX's conversation key (dxproxy.api.engine.conversation_key,
    a hash of the leading messages) mixed with the API key's name, so that two tenants who
    share a system prompt and a first question are still spread over the fleet, while each
    one's follow-ups stay home. `key_name` is "" when the gateway has no keys."""
    return hashlib.blake2b(f"{key_name}\0{conversation}".encode(), digest_size=12).hexdigest()
