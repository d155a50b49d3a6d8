"""CPU per chunk of DX's own work on a stream, without the sockets: Ollama translation (SSE
event -> NDJSON line, as dxproxy/api/ollama/reply.py does it) next to the OpenAI pass-through
(the line split and usage check of dxproxy/api/openai.py). The socket I/O, the same for both,
is measured end to end by bench/proxy_overhead.py.

    .venv/bin/python bench/translate_cost.py
"""

from __future__ import annotations

import timeit

import orjson

from dxproxy.api.ollama.reply import Reply

EVENT = (
    b'data: {"choices":[{"finish_reason":null,"index":0,"delta":{"content":" the"}}],'
    b'"created":1795530533,"id":"chatcmpl-x","model":"smollm2","system_fingerprint":"b0",'
    b'"object":"chat.completion.chunk"}\n\n'
)


def translate(reply: Reply) -> bytes:
    line = EVENT.strip()  # what sse_events does per line
    event = orjson.loads(line[5:].strip())
    text, thinking, _ = reply.take(event)
    return orjson.dumps(reply.chunk(text, done=False, thinking=thinking)) + b"\n"


def relay(state: list[bytes]) -> bytes:
    data = EVENT
    cut = data.rfind(b"\n") + 1  # whole lines only
    if b'"usage"' in data[:cut]:
        raise AssertionError("not on this chunk")
    state[0] = (state[0] + data)[-32:]  # the [DONE] check's tail
    return data


def main() -> None:
    n = 100_000
    reply = Reply(True, "smollm2:latest")
    state = [b""]
    t_translate = min(timeit.repeat(lambda: translate(reply), number=n, repeat=5)) / n
    t_relay = min(timeit.repeat(lambda: relay(state), number=n, repeat=5)) / n
    print(f"Ollama translation: {t_translate * 1e6:.2f} us/chunk ({1 / t_translate:,.0f} chunks/s)")
    print(f"OpenAI pass-through: {t_relay * 1e6:.2f} us/chunk ({1 / t_relay:,.0f} chunks/s)")


if __name__ == "__main__":
    main()
