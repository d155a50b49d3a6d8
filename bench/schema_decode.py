"""Decode + validate cost of one typical Ollama /api/chat body: msgspec vs pydantic (and
orjson.loads alone, the floor). Decides which library describes DX's request schemas.

    .venv/bin/python bench/schema_decode.py
"""

from __future__ import annotations

import timeit
from typing import Any, Literal

import msgspec
import orjson
import pydantic

BODY = orjson.dumps(
    {
        "model": "llama3.2",
        "stream": True,
        "keep_alive": "5m",
        "options": {"temperature": 0.7, "num_predict": 256, "top_k": 40, "stop": ["<|eot|>"]},
        "messages": [
            {"role": "system", "content": "You are a helpful assistant. " * 4},
            {"role": "user", "content": "What is the weather in Paris today?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
                ],
            },
            {"role": "tool", "content": '{"temp": 21}', "tool_name": "get_weather"},
            {"role": "user", "content": "And tomorrow? Answer briefly, please." * 3},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Weather for a city",
                    "parameters": {
                        "type": "object",
                        "properties": {"city": {"type": "string"}},
                        "required": ["city"],
                    },
                },
            }
        ],
    }
)


class MFunction(msgspec.Struct):
    name: str
    arguments: dict[str, Any] | str = {}


class MToolCall(msgspec.Struct):
    function: MFunction
    id: str | None = None


class MMessage(msgspec.Struct):
    role: str
    content: str = ""
    images: list[str] | None = None
    tool_calls: list[MToolCall] | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None


class MOptions(msgspec.Struct):
    temperature: float | None = None
    num_predict: int | float | None = None
    top_k: int | None = None
    stop: str | list[str] | None = None


class MChat(msgspec.Struct):
    model: str
    messages: list[MMessage] = []
    stream: bool = True
    keep_alive: str | float | None = None
    options: MOptions | None = None
    tools: list[dict[str, Any]] | None = None
    format: str | dict[str, Any] | None = None
    think: bool | Literal["low", "medium", "high", "max"] | None = None


class PFunction(pydantic.BaseModel):
    name: str
    arguments: dict[str, Any] | str = {}


class PToolCall(pydantic.BaseModel):
    function: PFunction
    id: str | None = None


class PMessage(pydantic.BaseModel):
    role: str
    content: str = ""
    images: list[str] | None = None
    tool_calls: list[PToolCall] | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None


class POptions(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(strict=True)
    temperature: float | None = None
    num_predict: int | float | None = None
    top_k: int | None = None
    stop: str | list[str] | None = None


class PChat(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(strict=True)
    model: str
    messages: list[PMessage] = []
    stream: bool = True
    keep_alive: str | float | None = None
    options: POptions | None = None
    tools: list[dict[str, Any]] | None = None
    format: str | dict[str, Any] | None = None
    think: bool | Literal["low", "medium", "high", "max"] | None = None


def main() -> None:
    decoder = msgspec.json.Decoder(MChat)
    cases = {
        "orjson.loads (no validation, the floor)": lambda: orjson.loads(BODY),
        "msgspec Decoder(Struct).decode": lambda: decoder.decode(BODY),
        "pydantic model_validate_json (strict)": lambda: PChat.model_validate_json(BODY),
        "orjson.loads + msgspec.convert": lambda: msgspec.convert(orjson.loads(BODY), MChat),
        "orjson.loads + pydantic model_validate": lambda: PChat.model_validate(orjson.loads(BODY)),
    }
    assert decoder.decode(BODY).messages[2].tool_calls
    assert PChat.model_validate_json(BODY).messages[2].tool_calls
    print(f"body: {len(BODY)} bytes, 5 messages, 1 tool")
    for name, fn in cases.items():
        n = 20000
        best = min(timeit.repeat(fn, number=n, repeat=5)) / n
        print(f"{best * 1e6:8.2f} us  {name}")


if __name__ == "__main__":
    main()
