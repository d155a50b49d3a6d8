"""The translated dialects' mapping, in-process: what Claude Code and Codex send, as the engine
gets it (dxproxy/api/anthropic.py, responses.py, chatcall.fit_template), and the stored
responses' bounds (dxproxy/api/response_store.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from dxproxy.api import anthropic, responses
from dxproxy.api.chatcall import fit_template
from dxproxy.api.response_store import MemoryStore, Stored
from dxproxy.config import ModelConfig

MODEL = ModelConfig(name="m", engine="llamacpp", model="/m.gguf")


def test_one_system_prompt_first_and_turns_alternate() -> None:
    sent = [
        {"role": "system", "content": "A"},
        {"role": "user", "content": "u1"},
        {"role": "system", "content": [{"type": "text", "text": "B"}]},
        {"role": "user", "content": "u2"},
        {"role": "assistant", "content": "a1"},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "c"}]},
        {"role": "tool", "tool_call_id": "c", "content": "r"},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:x"}}]},
        {"role": "user", "content": "u3"},
    ]
    assert fit_template(sent) == [
        {"role": "system", "content": "A\n\nB"},
        {"role": "user", "content": "u1\n\nu2"},
        {"role": "assistant", "content": "a1", "tool_calls": [{"id": "c"}]},
        {"role": "tool", "tool_call_id": "c", "content": "r"},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:x"}},
                                     {"type": "text", "text": "u3"}]},
    ]  # fmt: skip


def test_fit_template_without_system() -> None:
    assert fit_template([{"role": "user", "content": "hi"}]) == [{"role": "user", "content": "hi"}]


def test_anthropic_blocks_mapped_or_dropped() -> None:
    content: list[dict[str, Any]] = [
        {"type": "text", "text": "look: "},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "x"}},
        {"type": "document", "source": {"type": "text", "data": "doc"}, "title": "T"},
        {"type": "document", "source": {"type": "file", "file_id": "f"}},
        {"type": "search_result", "content": [{"type": "text", "text": "found"}]},
        {"type": "server_tool_use", "id": "s", "name": "web_search"},
        {"type": "container_upload", "file_id": "f"},
    ]
    # A model without a projector: the image is dropped, not refused.
    assert anthropic._message("user", content, 0, MODEL) == [
        {"role": "user", "content": "look: T\n\ndocfound"}
    ]


def test_anthropic_tools_for_a_model_without_tools_become_text() -> None:
    turn = [{"type": "tool_use", "id": "t", "name": "f", "input": {"a": 1}}]
    assert anthropic._message("assistant", turn, 0, MODEL, tools_ok=False) == [
        {"role": "assistant", "content": '[called tool f with {"a":1}]'}
    ]
    result = [{"type": "tool_result", "tool_use_id": "t", "content": "ok", "is_error": True}]
    assert anthropic._message("user", result, 1, MODEL, tools_ok=False) == [
        {"role": "user", "content": "[tool result]\nError: ok"}
    ]


def test_anthropic_tool_kinds() -> None:
    tools = anthropic._tools(
        [
            {"name": "Read", "input_schema": {"type": "object"}},
            {"type": "custom", "name": "Write", "description": "w"},
            {"name": "Later", "defer_loading": True},
            {"type": "web_search_20250305", "name": "web_search"},
            {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"},
            {"description": "no name"},
        ],
        MODEL,
    )
    assert [(t.function.name, t.function.parameters) for t in tools] == [
        ("Read", {"type": "object"}),
        ("Write", None),
    ]


@pytest.mark.parametrize(
    ("choice", "mapped"),
    [
        ({"type": "auto", "disable_parallel_tool_use": True}, "auto"),
        ({"type": "any"}, "required"),
        ({"type": "none"}, "none"),
        ({"type": "tool", "name": "f"}, {"type": "function", "function": {"name": "f"}}),
        ({"type": "something_new"}, None),  # the model chooses
    ],
)
def test_anthropic_tool_choice(choice: dict[str, Any], mapped: Any) -> None:
    assert anthropic._tool_choice(choice) == mapped


def test_codex_tool_kinds() -> None:
    tools, kinds = responses._tools(
        [
            {"type": "function", "name": "exec_command", "parameters": {"type": "object"}},
            {"type": "namespace", "name": "agents", "tools": [
                {"type": "function", "name": "spawn", "parameters": {"type": "object"}},
                {"type": "function", "name": "exec_command"}]},  # a duplicate: the first wins
            {"type": "custom", "name": "apply_patch", "description": "Patch.",
             "format": {"type": "grammar", "syntax": "lark", "definition": "start: x"}},
            {"type": "web_search", "external_web_access": False},
            {"type": "local_shell"},
            {"type": "image_generation"},
        ]
    )  # fmt: skip
    assert [t.function.name for t in tools] == ["exec_command", "spawn", "apply_patch"]
    assert kinds == {
        "exec_command": ("function", None),
        "spawn": ("function", "agents"),
        "apply_patch": ("custom", None),
    }
    patch = tools[2].function
    assert patch.parameters and patch.parameters["required"] == ["input"]
    assert patch.description == "Patch.\n\nThe input follows this lark grammar:\nstart: x"


def test_codex_calls_come_back_in_their_kind() -> None:
    kinds = {"spawn": ("function", "agents"), "apply_patch": ("custom", None)}
    fn = responses._call_item({"id": "c1", "name": "spawn", "arguments": "{}"}, kinds)
    assert fn["type"] == "function_call" and fn["namespace"] == "agents"
    custom = responses._call_item(
        {"id": "c2", "name": "apply_patch", "arguments": '{"input": "*** Begin"}'}, kinds
    )
    assert custom == {
        "type": "custom_tool_call",
        "id": "ctc_c2",
        "call_id": "c2",
        "name": "apply_patch",
        "input": "*** Begin",
        "status": "completed",
    }
    plain = responses._call_item({"id": "c3", "name": "other", "arguments": "{}"}, kinds)
    assert plain["type"] == "function_call" and "namespace" not in plain


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ({"type": "message", "role": "developer", "content": "d"},
         [{"role": "system", "content": "d"}]),
        ({"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "a"}, {"type": "input_file", "file_id": "f"},
            {"type": "refusal", "refusal": "no"}]},
         [{"role": "user", "content": "ano"}]),
        ({"type": "reasoning", "summary": []}, []),
        ({"type": "web_search_call", "id": "w"}, []),
        ({"type": "item_reference", "id": "x"}, []),
        ({"type": "function_call_output", "call_id": "c",
          "output": [{"type": "input_text", "text": "out"}]},
         [{"role": "tool", "tool_call_id": "c", "content": "out"}]),
    ],
)  # fmt: skip
def test_codex_input_items(item: dict[str, Any], expected: list[dict[str, Any]]) -> None:
    out: list[dict[str, Any]] = []
    responses._item(item, 0, out, MODEL)
    assert out == expected


def test_memory_store_is_bounded_by_count_bytes_and_age() -> None:
    async def scenario() -> None:
        def one(n: int, size: int = 10) -> Stored:
            return Stored({"id": f"r{n}", "output": []}, [{"text": "x" * size}])

        store = MemoryStore(max_count=3, max_bytes=10_000, max_age=3600)
        for n in range(5):
            await store.put(f"r{n}", one(n))
        assert [await store.get(f"r{n}") is not None for n in range(5)] == [
            False, False, True, True, True]  # fmt: skip
        assert (await store.get("r4")) == one(4)
        await store.put("big", one(9, size=9_000))
        await store.put("big2", one(9, size=2_000))  # over the bytes: the oldest go
        assert await store.get("big") is None and await store.get("big2") is not None
        assert await store.delete("big2") and not await store.delete("big2")
        old = MemoryStore(max_age=-1)  # everything is already too old
        await old.put("r", one(0))
        assert await old.get("r") is None

    asyncio.run(scenario())
