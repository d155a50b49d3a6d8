"""dxproxy/api/trim.py: the oldest turns go first, system prompts and the latest user
message (with a tool call in progress) stay, tool results stay with their call, and only
what must stay and does not fit is refused. The counter is a fake: one token per word plus
4 per message (a template's markers), counting the calls it gets."""

from __future__ import annotations

from typing import Any

import pytest

from dxproxy.api.trim import MAX_COUNTS, TooLong, trim, turns


class Words:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, messages: list[dict[str, Any]]) -> int:
        self.calls += 1
        return sum(4 + len(str(m.get("content") or "").split()) for m in messages)


def msg(role: str, words: int, tag: str = "", **extra: Any) -> dict[str, Any]:
    return {"role": role, "content": " ".join([tag or role] * words), **extra}


def chat(turns_: int, words: int = 96) -> list[dict[str, Any]]:
    out = [msg("system", 20, "rules")]
    for i in range(turns_):
        out += [msg("user", words, f"q{i}"), msg("assistant", words, f"a{i}")]
    out.append(msg("user", 10, "latest"))
    return out


async def test_a_chat_that_fits_is_untouched_and_counted_once() -> None:
    counter = Words()
    messages = chat(3)
    out = await trim(messages, counter, 10_000)
    assert out.messages is messages
    assert (out.dropped_messages, out.dropped_tokens) == (0, 0)
    assert out.prompt_tokens == await Words()(messages)
    assert counter.calls == 1


async def test_oldest_turns_go_first_system_and_latest_stay() -> None:
    messages = chat(20)  # 1 + 40 + 1 messages, 4,072 tokens
    total = await Words()(messages)
    counter = Words()
    out = await trim(messages, counter, 1000)
    assert out.messages[0] == messages[0]  # the system prompt
    assert out.messages[-1] == messages[-1]  # the latest user message
    kept = out.messages[1:-1]
    assert kept == messages[len(messages) - 1 - len(kept) : -1]  # a suffix: oldest gone
    assert kept[0]["role"] == "user"  # whole turns dropped
    assert out.prompt_tokens <= 1000
    # As few dropped as fits: one more turn would not have fitted.
    one_more = messages[len(messages) - 3 - len(kept) : -1]
    assert await Words()([messages[0], *one_more, messages[-1]]) > 1000
    assert out.dropped_messages == len(messages) - len(out.messages)
    assert out.dropped_tokens == total - out.prompt_tokens
    # The total, what must stay, the interpolated guess and the turn before it.
    assert counter.calls <= 4


async def test_every_system_message_stays_wherever_it_is() -> None:
    messages = chat(10)
    messages.insert(9, msg("developer", 5, "mid"))
    out = await trim(messages, Words(), 600)
    assert [m for m in out.messages if m["role"] in ("system", "developer")] == [
        messages[0],
        messages[9],
    ]


async def test_tool_results_stay_with_their_call_and_a_call_in_progress_stays() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    old = [
        msg("user", 200, "old"),
        msg("assistant", 1, "", tool_calls=[call]),
        msg("tool", 200, "result", tool_call_id="c1"),
        msg("assistant", 50, "answer"),
    ]
    latest = [
        msg("user", 20, "latest"),
        msg("assistant", 1, "", tool_calls=[{**call, "id": "c2"}]),
        msg("tool", 100, "now", tool_call_id="c2"),
    ]
    out = await trim([msg("system", 5), *old, *latest], Words(), 300)
    assert out.messages == [msg("system", 5), *latest]
    assert out.dropped_messages == 4


async def test_what_must_stay_but_cannot_fit_is_refused_with_its_size() -> None:
    messages = [msg("system", 50), msg("user", 100), msg("assistant", 100), msg("user", 900)]
    with pytest.raises(TooLong) as info:
        await trim(messages, Words(), 800)
    assert (info.value.needed, info.value.budget) == (4 + 50 + 4 + 900, 800)


async def test_a_single_message_too_long_is_refused() -> None:
    with pytest.raises(TooLong) as info:
        await trim([msg("user", 5000)], Words(), 2000)
    assert info.value.needed == 5004


async def test_uneven_turns_take_more_counts_but_a_bounded_number() -> None:
    # The early turns weigh little in bytes but much in tokens, the late ones the reverse:
    # the first guesses by bytes are far off, and the counts that follow correct them.
    messages = [msg("system", 1)]
    for i in range(10):
        dense = {"role": "user", "content": " ".join(["x"] * 300)}
        messages += [dense, msg("assistant", 1, f"a{i}")]
    for i in range(10):
        messages += [msg("user", 2, "w" * 200), msg("assistant", 1, f"b{i}")]
    messages.append(msg("user", 3))
    counter = Words()
    out = await trim(messages, counter, 400)
    assert out.prompt_tokens <= 400
    assert out.messages[-1] == messages[-1]
    assert counter.calls <= 2 + MAX_COUNTS
    # The dense turns are gone (20 messages); of the light ones (all fit) at most one.
    assert out.dropped_messages in (20, 22)


def test_turns_group_a_user_message_with_what_follows() -> None:
    messages = [
        msg("assistant", 1),  # before any user message: a turn of its own
        msg("system", 1),
        msg("user", 1),
        msg("assistant", 1),
        msg("tool", 1),
        msg("user", 1),
        msg("assistant", 1),
        msg("user", 1),  # the latest: stays, with what follows
        msg("assistant", 1),
    ]
    assert turns(messages) == ([[0], [2, 3, 4], [5, 6]], 7)


def test_without_a_user_message_the_last_stays() -> None:
    assert turns([msg("system", 1), msg("assistant", 1), msg("assistant", 1)]) == ([[1]], 2)
