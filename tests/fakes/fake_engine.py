"""A fake OpenAI-speaking engine, run as a subprocess, for fast tests and fault injection.

    python tests/fakes/fake_engine.py --port P [--startup-delay S] [--exit-at-start CODE]
                                [--sleep-delay S] [--wake-delay S] [--sleep-fails] [--wake-fails]
                                [--no-dev-mode] [--close-after-stream] [--drop-reused]

Its answer is fixed ("Hello from the fake engine."), one token per SSE chunk. Words in the
last user message inject faults:

- ``DIE`` : send three chunks, then exit the process (an engine crash mid-stream)
- ``HANG``: send three chunks, then hang: the whole process freezes, answering nothing (not
  even /health), sending nothing and using no CPU (a deadlocked engine), for an hour
- ``BUSY``: send three chunks, then compute for 4 s without answering anything (the process
  spins on the CPU: an engine busy with a long prompt on a saturated machine, whose health
  check answers late), then finish the reply as usual
- ``SLOW``: 200 chunks, 20 ms apart (long enough to disconnect in the middle)
- ``PAUSE``: the usual six chunks, 50 ms apart (long enough to overlap with other requests)
- ``REJECT``: answer 400 with an OpenAI error
- ``TOOL``: answer with a streamed tool call ``get_weather({"city": "Paris"})``
- ``THINK``: stream ``reasoning_content`` ("Let me think.") before the answer

``--tag NAME`` tags every reply with the engine's identity: ``system_fingerprint`` in each
chat chunk and answer (OpenAI's field for "which backend served this"), so a fleet test sees
which node generated a reply through any number of hops.

``POST /apply-template`` and ``POST /tokenize`` count a chat as llama-server's do, simply: a
line per message, a token per word (``GET /stats`` counts the /tokenize calls: "tokenized").

``POST /v1/embeddings`` answers an unnormalised 8-number vector per input, derived from the
text (the same text gives the same vector). Every request body is kept: ``GET /last`` returns
the last one, so tests can check what DX asked the engine for.

``GET /stats`` tells what happened: requests started, completed, cancelled (the client went
away mid-stream), dropped (below), and the highest number in flight at once.

Keep-alive, as real engines do it: ``--close-after-stream`` closes a connection after a
streamed reply without saying ``Connection: close`` (llama-server does), and
``--drop-reused`` closes every kept-alive connection before its next request (an engine's
idle timeout). The close is made deterministic: the connection stays open, and the next
request on it is dropped unread and unanswered, exactly what a client sees when it reuses a
connection whose close it has not noticed yet. A dropped request never reaches a handler.

vLLM's sleep-mode endpoints (dev mode), as vLLM has them: ``POST /sleep?level=N`` (level 1 or
2, read from the query string only; stricter than vLLM, a missing level is a 400, so tests
prove DX sends it), ``POST /wake_up``, ``GET /is_sleeping`` -> ``{"is_sleeping": bool}``. When
``DX_ENGINE_API_KEY`` is set (DX sets it for every engine) they want ``Authorization: Bearer
<key>`` (401 otherwise). ``--sleep-delay``/``--wake-delay`` make them take that long;
``--sleep-fails`` answers /sleep with a 500 and stays awake, ``--wake-fails`` answers /wake_up
with a 500 and stays asleep; ``--no-dev-mode`` leaves them out (404), as vLLM does without
``VLLM_SERVER_DEV_MODE=1``. Each call is recorded: ``GET /dev_calls`` lists them (path, query,
whether the key was right). /health, /v1/models and /stats answer while asleep, as vLLM's do;
a completion, chat or embedding request while asleep (or falling asleep, or waking) CRASHES the
engine (exit code 66, with a line saying so), as vLLM may: tests prove none is ever sent.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import os
import sys
import time
import weakref
from typing import Any

from aiohttp import web

TOKENS = ["Hello", " from", " the", " fake", " engine", "."]
stats = {"requests": 0, "completed": 0, "cancelled": 0, "in_flight": 0, "max_in_flight": 0,
         "dropped": 0, "tokenized": 0}
# Connections (their transports) whose next request is dropped: see the docstring.
closed_after_stream: weakref.WeakSet[object] = weakref.WeakSet()
served: weakref.WeakSet[object] = weakref.WeakSet()
last_body: dict[str, Any] = {}
# "awake", "falling asleep", "asleep" or "waking": only "awake" may serve.
sleep_state = {"now": "awake", "level": 0}
dev_calls: list[dict[str, Any]] = []
options = argparse.Namespace(tag=None, sleep_delay=0.0, wake_delay=0.0, sleep_fails=False,
                             wake_fails=False, close_after_stream=False, drop_reused=False)


@web.middleware
async def keep_alive(request: web.Request, handler: Any) -> web.StreamResponse:
    conn = request.transport
    # Only API calls: DX's probes (GET /health) must not fail for the fault a test injects.
    stale = conn in closed_after_stream or (options.drop_reused and conn in served)
    if stale and request.method == "POST":
        stats["dropped"] += 1
        assert request.transport is not None
        request.transport.close()  # the engine closed it: no answer, nothing read
        raise web.HTTPServiceUnavailable()  # never written: the connection is gone
    served.add(conn)
    resp = await handler(request)
    if options.close_after_stream and isinstance(resp, web.StreamResponse) and not isinstance(
            resp, web.Response):
        closed_after_stream.add(conn)
    return resp


def _chunk(name: str, delta: dict[str, Any], finish: str | None = None,
           logprobs: dict[str, Any] | None = None) -> bytes:
    choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
    if logprobs:
        choice["logprobs"] = logprobs
    event = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()),
             "model": name, "choices": [choice]}
    if options.tag:
        event["system_fingerprint"] = options.tag
    return b"data: " + json.dumps(event).encode() + b"\n\n"


def _logprobs(body: dict[str, Any], tokens: list[str]) -> dict[str, Any] | None:
    """OpenAI's chat logprobs, when asked for: every token at -0.25."""
    if not body.get("logprobs"):
        return None
    n = int(body.get("top_logprobs") or 0)
    entries = [{"token": t, "logprob": -0.25, "bytes": list(t.encode()),
                "top_logprobs": [{"token": t, "logprob": -0.25, "bytes": list(t.encode())}] * n}
               for t in tokens]
    return {"content": entries}


def _last_user_text(body: dict[str, Any]) -> str:
    if "prompt" in body:
        return str(body["prompt"])
    messages = body.get("messages")
    for m in reversed(messages if isinstance(messages, list) else []):
        if isinstance(m, dict) and m.get("role") == "user":
            c = m.get("content")
            return c if isinstance(c, str) else json.dumps(c)
    return ""


async def models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [{"id": "fake", "object": "model"}]})


async def get_stats(request: web.Request) -> web.Response:
    return web.json_response(stats)


async def apply_template(request: web.Request) -> web.Response:
    """llama-server's /apply-template, simply: a line per message ("role: content"), the
    tools' JSON first."""
    body = await request.json()
    lines = [json.dumps(body["tools"])] if body.get("tools") else []
    lines += [f"{m.get('role')}: {m.get('content') or ''}" for m in body.get("messages") or ()]
    return web.json_response({"prompt": "\n".join(lines)})


async def tokenize(request: web.Request) -> web.Response:
    """llama-server's /tokenize, simply: a token per word."""
    stats["tokenized"] += 1
    content = (await request.json()).get("content", "")
    return web.json_response({"tokens": list(range(len(str(content).split())))})


async def get_last(request: web.Request) -> web.Response:
    return web.json_response(last_body)


def vector(text: str) -> list[float]:
    data = text.encode() or b"-"
    return [float(sum(data[i::8]) % 97 + i + 1) for i in range(8)]


def _crash_if_asleep(request: web.Request) -> None:
    if sleep_state["now"] != "awake":
        print(f"fake engine: CRASH: {request.method} {request.path} reached a sleeping engine "
              f"({sleep_state['now']}); vLLM dies on this", file=sys.stderr, flush=True)
        os._exit(66)


def _dev_call(request: web.Request) -> web.Response | None:
    """Record a sleep-mode call; a 401 if it lacks the engine's key."""
    key = os.environ.get("DX_ENGINE_API_KEY", "")
    given = request.headers.get("Authorization", "")
    key_ok = not key or hmac.compare_digest(given.encode(), f"Bearer {key}".encode())
    dev_calls.append({"method": request.method, "path": request.path,
                      "query": request.query_string, "key_ok": key_ok,
                      "state": sleep_state["now"]})
    if not key_ok:
        return web.json_response({"error": "Unauthorized"}, status=401)
    return None


async def sleep(request: web.Request) -> web.Response:
    if (refused := _dev_call(request)) is not None:
        return refused
    level = request.query.get("level")
    if level not in ("1", "2"):
        return web.json_response({"error": f"level must be 1 or 2 in the query string, "
                                           f"got {level!r}"}, status=400)
    if options.sleep_fails:
        return web.json_response({"error": "fake engine cannot sleep (as asked)"}, status=500)
    sleep_state["now"] = "falling asleep"
    await asyncio.sleep(options.sleep_delay)
    sleep_state.update(now="asleep", level=int(level))
    print(f"fake engine: asleep (level {level})", flush=True)
    return web.json_response({"status": "sleeping", "level": int(level)})


async def wake_up(request: web.Request) -> web.Response:
    if (refused := _dev_call(request)) is not None:
        return refused
    if options.wake_fails:
        return web.json_response({"error": "fake engine cannot wake up (as asked)"}, status=500)
    if sleep_state["now"] != "awake":
        sleep_state["now"] = "waking"
        await asyncio.sleep(options.wake_delay)
        sleep_state.update(now="awake", level=0)
        print("fake engine: awake", flush=True)
    return web.json_response({"status": "awake", "tags": None})


async def is_sleeping(request: web.Request) -> web.Response:
    if (refused := _dev_call(request)) is not None:
        return refused
    return web.json_response({"is_sleeping": sleep_state["now"] != "awake"})


async def get_dev_calls(request: web.Request) -> web.Response:
    return web.json_response(dev_calls)


async def embeddings(request: web.Request) -> web.Response:
    _crash_if_asleep(request)
    body = await request.json()
    last_body.clear()
    last_body.update(body)
    inputs = body.get("input")
    inputs = [inputs] if isinstance(inputs, str) else inputs
    if not isinstance(inputs, list) or not inputs:
        return web.json_response({"error": {"message": "input must be a non-empty list",
                                            "type": "invalid_request_error"}}, status=400)
    tokens = sum(len(str(t).split()) for t in inputs)
    data = [{"object": "embedding", "index": i, "embedding": vector(str(t))}
            for i, t in enumerate(inputs)]
    return web.json_response({"object": "list", "data": data, "model": body.get("model"),
                              "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


async def completions(request: web.Request) -> web.StreamResponse:
    _crash_if_asleep(request)
    body = await request.json()
    last_body.clear()
    last_body.update(body)
    text = _last_user_text(body)
    name = body.get("model", "fake")
    chat = request.path.endswith("/chat/completions")
    if "REJECT" in text:
        return web.json_response({"error": {"message": "fake engine rejects this",
                                            "type": "invalid_request_error"}}, status=400)
    tokens = TOKENS * 34 if "SLOW" in text else TOKENS
    limit = body.get("max_tokens")
    if isinstance(limit, int):
        tokens = tokens[:limit]
    finish = "length" if isinstance(limit, int) and limit < len(TOKENS) else "stop"
    usage = {"prompt_tokens": len(text.split()), "completion_tokens": len(tokens),
             "total_tokens": len(text.split()) + len(tokens)}
    delay = 0.02 if "SLOW" in text else 0.05 if "PAUSE" in text else 0.0
    if not body.get("stream"):
        stats["requests"] += 1
        stats["in_flight"] += 1
        stats["max_in_flight"] = max(stats["max_in_flight"], stats["in_flight"])
        try:
            await asyncio.sleep(delay * len(tokens))  # as long as it would take to stream
        except asyncio.CancelledError:
            stats["cancelled"] += 1
            raise
        finally:
            stats["in_flight"] -= 1
        stats["completed"] += 1
        content = "".join(tokens)
        choice: dict[str, Any] = (
            {"index": 0, "message": {"role": "assistant", "content": content},
             "finish_reason": finish} if chat else
            {"index": 0, "text": content, "finish_reason": finish})
        if "THINK" in text and chat:
            choice["message"]["reasoning_content"] = "Let me think."
        if chat and body.get("logprobs"):
            choice["logprobs"] = _logprobs(body, tokens)
        if "TOOL" in text and chat:
            choice["message"] = {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_fake1", "type": "function", "function": {
                    "name": "get_weather", "arguments": '{"city": "Paris"}'}}]}
            choice["finish_reason"] = "tool_calls"
        answer = {"id": "chatcmpl-fake", "object": "chat.completion",
                  "created": int(time.time()), "model": name, "choices": [choice], "usage": usage}
        if options.tag:
            answer["system_fingerprint"] = options.tag
        return web.json_response(answer)

    stats["requests"] += 1
    stats["in_flight"] += 1
    stats["max_in_flight"] = max(stats["max_in_flight"], stats["in_flight"])
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    try:
        if chat:
            await resp.write(_chunk(name, {"role": "assistant"}))
        if "TOOL" in text and chat:
            call = {"index": 0, "id": "call_fake1", "type": "function",
                    "function": {"name": "get_weather", "arguments": ""}}
            await resp.write(_chunk(name, {"tool_calls": [call]}))
            for part in ('{"city": ', '"Paris"}'):
                await resp.write(_chunk(name, {"tool_calls": [
                    {"index": 0, "function": {"arguments": part}}]}))
            await resp.write(_chunk(name, {}, "tool_calls"))
        else:
            if "THINK" in text and chat:
                for part in ("Let me", " think."):
                    await resp.write(_chunk(name, {"reasoning_content": part}))
            for i, tok in enumerate(tokens):
                if "DIE" in text and i == 3:
                    os._exit(17)  # a crash: no [DONE], the connection just drops
                if "HANG" in text and i == 3:
                    print("fake engine: hanging (as asked)", flush=True)
                    time.sleep(3600)  # noqa: ASYNC251 - blocks everything, as a deadlock does
                if "BUSY" in text and i == 3:
                    print("fake engine: busy for 4 s (as asked)", flush=True)
                    end = time.monotonic() + 4
                    while time.monotonic() < end:  # blocks everything, computing
                        pass
                if chat:
                    await resp.write(_chunk(name, {"content": tok},
                                            logprobs=_logprobs(body, [tok])))
                else:
                    event = {"id": "cmpl-fake", "object": "text_completion", "model": name,
                             "choices": [{"index": 0, "text": tok, "finish_reason": None}]}
                    await resp.write(b"data: " + json.dumps(event).encode() + b"\n\n")
                await asyncio.sleep(delay)
            await resp.write(_chunk(name, {}, finish))
        if (body.get("stream_options") or {}).get("include_usage"):
            event = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": name,
                     "choices": [], "usage": usage}
            await resp.write(b"data: " + json.dumps(event).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        stats["completed"] += 1
    except (ConnectionResetError, asyncio.CancelledError):
        stats["cancelled"] += 1
        raise
    finally:
        stats["in_flight"] -= 1
    return resp


async def get_metrics(request: web.Request) -> web.Response:
    text = ("# HELP fake:requests_total Requests started.\n# TYPE fake:requests_total counter\n"
            f"fake:requests_total {stats['requests']}\n"
            "# HELP process_cpu_seconds_total Not re-exported (no namespace).\n"
            "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 1.0\n")
    return web.Response(text=text, content_type="text/plain")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--startup-delay", type=float, default=0.0)
    parser.add_argument("--exit-at-start", type=int, default=None)
    parser.add_argument("--sleep-delay", type=float, default=0.0)
    parser.add_argument("--wake-delay", type=float, default=0.0)
    parser.add_argument("--sleep-fails", action="store_true")
    parser.add_argument("--wake-fails", action="store_true")
    parser.add_argument("--no-dev-mode", action="store_true")
    parser.add_argument("--close-after-stream", action="store_true")
    parser.add_argument("--drop-reused", action="store_true")
    parser.add_argument("--tag", default=None)
    args, _ = parser.parse_known_args()
    vars(options).update(tag=args.tag, sleep_delay=args.sleep_delay, wake_delay=args.wake_delay,
                         sleep_fails=args.sleep_fails, wake_fails=args.wake_fails,
                         close_after_stream=args.close_after_stream,
                         drop_reused=args.drop_reused)
    print(f"fake engine starting on port {args.port}", flush=True)
    if args.exit_at_start is not None:
        print("fake engine: cannot load model (as asked)", flush=True)
        sys.exit(args.exit_at_start)
    time.sleep(args.startup_delay)
    app = web.Application(middlewares=[keep_alive])
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", models)  # what DX probes on llama-server and vLLM
    app.router.add_get("/stats", get_stats)
    app.router.add_get("/metrics", get_metrics)  # as llama-server's --metrics, for DX to re-export
    app.router.add_post("/v1/chat/completions", completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_post("/apply-template", apply_template)
    app.router.add_post("/tokenize", tokenize)
    app.router.add_get("/last", get_last)
    if not args.no_dev_mode:  # vLLM has these only with VLLM_SERVER_DEV_MODE=1
        app.router.add_post("/sleep", sleep)
        app.router.add_post("/wake_up", wake_up)
        app.router.add_get("/is_sleeping", is_sleeping)
    app.router.add_get("/dev_calls", get_dev_calls)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, handler_cancellation=True)


if __name__ == "__main__":
    main()
