"""A chat that outgrew the model's context, trimmed as Ollama trims it: the oldest turns go
first; the system prompt(s) and the latest user message (with everything after it: a tool
call in progress and its results) always stay. Only when what must stay does not fit by
itself is the chat refused (`TooLong`, with the sizes).

A pure function over OpenAI-style messages and a token counter (the engine's own template
and tokenizer, `dxproxy/api/fit.py`), so it is tested without an engine. Turns are dropped
whole: a turn is a user message and the assistant replies, tool calls and tool results that
follow it. That keeps every tool result beside the call it answers, and the kept chat still
starts with a user message (templates such as Gemma's and Mistral's insist on alternation).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

Message = dict[str, Any]
Counter = Callable[[list[Message]], Awaitable[int]]

# Roles that are never dropped (Codex and Claude Code send them mid-conversation too).
SYSTEM_ROLES = frozenset({"system", "developer"})
# How many times the kept turns are counted, at most, after the whole chat and what must
# stay (each count is an engine round trip; turns of even size need two).
MAX_COUNTS = 6


@dataclass(frozen=True, slots=True)
class Trimmed:
    messages: list[Message]
    dropped_messages: int
    dropped_tokens: int
    prompt_tokens: int  # of the messages kept, as the counter counted them


class TooLong(Exception):
    """What must stay (system prompts, the latest user message and what follows it) does
    not fit by itself."""

    def __init__(self, needed: int, budget: int) -> None:
        super().__init__(f"{needed} tokens needed, {budget} available")
        self.needed = needed
        self.budget = budget


def turns(messages: Sequence[Message]) -> tuple[list[list[int]], int]:
    """(the droppable turns, oldest first, each a list of message indexes; the index from
    which every message stays). System messages are in no turn: they always stay."""
    last_user = -1
    for i, m in enumerate(messages):
        if m.get("role") == "user":
            last_user = i
    if last_user < 0:  # no user message: only the last one is sure to stay
        last_user = len(messages) - 1
    groups: list[list[int]] = []
    for i in range(last_user):
        role = messages[i].get("role")
        if role in SYSTEM_ROLES:
            continue
        if role == "user" or not groups:
            groups.append([i])
        else:
            groups[-1].append(i)
    return groups, last_user


async def trim(messages: list[Message], count: Counter, budget: int) -> Trimmed:
    """`messages` as they are when they fit `budget` tokens; else without their oldest
    turns, as few dropped as the counter allows. Raises TooLong."""
    total = await count(messages)
    if total <= budget:
        return Trimmed(messages, 0, 0, total)
    groups, _ = turns(messages)

    def kept(k: int) -> list[Message]:
        gone = {i for group in groups[:k] for i in group}
        return [m for i, m in enumerate(messages) if i not in gone]

    fewest = kept(len(groups))
    minimal = total if not groups else await count(fewest)
    if minimal > budget:
        raise TooLong(minimal, budget)
    # Fewest turns dropped that fit: between `lo` (known not to fit) and `hi` (known to
    # fit), each guess interpolated by bytes between the two counts, so that turns of even
    # size take one or two counts; uneven ones a few more, at most MAX_COUNTS.
    sizes = [sum(len(orjson.dumps(messages[i])) for i in group) for group in groups]
    lo, hi, t_lo, t_hi = 0, len(groups), total, minimal
    for _ in range(MAX_COUNTS):
        if hi - lo <= 1:
            break
        per_byte = (t_lo - t_hi) / max(sum(sizes[lo:hi]), 1)
        k, tokens_at = lo, float(t_lo)
        while k < hi - 1 and tokens_at > budget:
            tokens_at -= sizes[k] * per_byte
            k += 1
        k = max(k, lo + 1)
        tokens = await count(kept(k))
        if tokens <= budget:
            hi, t_hi = k, tokens
        else:
            lo, t_lo = k, tokens
    out = kept(hi)
    return Trimmed(out, len(messages) - len(out), total - t_hi, t_hi)
