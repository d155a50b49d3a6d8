"""Open WebUI's real traffic, replayed against the embedded default (no config: SmolLM2 on a real
llama-server). The requests in tests/data/openwebui/ were recorded once between a real Open WebUI
driven in a real browser and DX (tests/suites/open_webui.py --record; the version and date are in
that folder's README): a browser chat with Open WebUI's built-in tools, the title / follow-up /
tags tasks it fires after a reply, a chat with `num_ctx` set, a long chat that outgrows the
context, and a document's chunks embedded for RAG (`/api/embed` with `truncate`), plus the model
list and ps calls of every page load. Measured 2026-12-07: 22 passed, 4 failed (the long-chat
and RAG chats: 400, Open WebUI's tools take ~7k of the 8192 tokens) in 3 min 22 s at load 1 to
4 (the first ~7k-token prompt 109 s; later chats reuse the engine's prompt cache of the tools),
27 min at load 8 to 20.

Each is sent as recorded (its model name swapped for the default's if it differs) and must be
answered 200 with a body Open WebUI can use: a streamed chat is pure NDJSON (no blank line, every
line JSON) ending with `done: true` and carrying text or a tool call; a non-streamed one is
`application/json`; embeddings come one per input, all of the model's dimension, finite.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, DxProcess
from tests.dx_default import start_dx_default

pytestmark = pytest.mark.integration

FIXTURES = ROOT / "tests" / "data" / "openwebui"
MODEL = "smollm2:latest"  # the embedded default's model, as Open WebUI names it from /api/tags
# A cap on the reply when Open WebUI set none, so that the tiny model's occasional ramble to the
# end of the context cannot make CI slow. For a chat with tools, 1024: the room DX keeps for a
# reply that names no length (1/8 of the 8192 context), so what is trimmed is what Open WebUI's
# own request gets. Its tasks (title, tags, follow-ups: a line of JSON) get 256.
REPLY_CAP, TASK_REPLY_CAP = 1024, 256
TIMEOUT = 600  # seconds a request may take: an 8k-token prompt on 2 busy cores


def fixtures() -> list[Path]:
    found = sorted(FIXTURES.glob("*.json"))
    assert found, f"no recorded requests in {FIXTURES}"
    return found


@pytest.fixture(scope="module")
def dx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DxProcess]:
    proc = start_dx_default(tmp_path_factory.mktemp("openwebui"))
    yield proc
    proc.stop()


def prepared(recorded: dict[str, Any]) -> dict[str, Any] | None:
    body = recorded.get("body")
    if not isinstance(body, dict):
        return body
    body = json.loads(json.dumps(body))
    if "model" in body:
        body["model"] = MODEL
    if recorded["path"] == "/api/chat":
        options = body.setdefault("options", {})
        options.setdefault("num_predict", REPLY_CAP if body.get("tools") else TASK_REPLY_CAP)
    return body


def check_chat(r: httpx.Response, body: dict[str, Any]) -> None:
    if body.get("stream", True):
        assert r.headers["content-type"].startswith("application/x-ndjson"), r.headers
        # Open WebUI splits on "\n" and json.loads every line, blank ones included.
        lines = r.text.removesuffix("\n").split("\n")
        chunks = [json.loads(line) for line in lines]
        assert not any("error" in c for c in chunks), chunks[-1]
        assert all(c["done"] is False for c in chunks[:-1]) and chunks[-1]["done"] is True
        content = "".join(c["message"].get("content", "") for c in chunks)
        calls = [t for c in chunks for t in c["message"].get("tool_calls", [])]
        final = chunks[-1]
    else:
        assert r.headers["content-type"].startswith("application/json"), r.headers
        final = r.json()
        assert final["done"] is True
        content = final["message"].get("content", "")
        calls = final["message"].get("tool_calls", [])
    assert content.strip() or calls, f"an empty reply: {final}"
    for call in calls:
        assert call["function"]["name"] and isinstance(call["function"]["arguments"], dict)
    assert final["done_reason"] in ("stop", "length")
    assert final["prompt_eval_count"] > 0 and final["eval_count"] > 0


def check_embed(r: httpx.Response, body: dict[str, Any]) -> None:
    assert r.headers["content-type"].startswith("application/json")
    inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
    vectors = r.json()["embeddings"]
    assert len(vectors) == len(inputs)
    dims = {len(v) for v in vectors}
    assert dims == {576}, dims  # SmolLM2-135M's hidden size
    for v in vectors:
        assert all(math.isfinite(x) for x in v) and any(x != 0 for x in v)


@pytest.mark.parametrize("path", fixtures(), ids=lambda p: p.stem)
def test_replay(dx: DxProcess, path: Path) -> None:
    recorded = json.loads(path.read_text())
    body = prepared(recorded)
    headers = {**recorded.get("headers", {}), **dx.auth}
    r = httpx.request(recorded["method"], dx.url + recorded["path"], params=recorded.get("query"),
                      headers=headers, json=body, timeout=TIMEOUT)
    assert r.status_code == 200, f"{recorded['what']}: {r.status_code} {r.text[:500]}"
    if recorded["path"] == "/api/chat":
        assert isinstance(body, dict)
        check_chat(r, body)
        if recorded.get("recorded_trimmed_tokens"):  # it outgrew the context when recorded
            # Fitted: its oldest turns dropped, or its tools when they left no room for the
            # latest message (Open WebUI's 36 take ~7k of the 8192 tokens).
            made_fit = int(r.headers.get("X-DX-Trimmed-Tokens", 0)) + int(
                r.headers.get("X-DX-Dropped-Tools", 0)
            )
            assert made_fit > 0, dict(r.headers)
    elif recorded["path"] == "/api/embed":
        assert isinstance(body, dict)
        check_embed(r, body)
    elif recorded["path"] == "/api/tags":
        names = [m["name"] for m in r.json()["models"]]
        assert MODEL in names and all("model" in m for m in r.json()["models"])
    elif recorded["path"] == "/api/version":
        # Open WebUI parses it as integers: a plain X.Y.Z
        assert all(p.isdigit() for p in r.json()["version"].split(".")), r.json()
    elif recorded["path"] == "/api/ps":
        assert isinstance(r.json()["models"], list)
    else:
        assert r.content, recorded["path"]
